"""Data-path throughput: ``AVDataModule`` against two baselines, reported as ratios.

Absolute clips/s depend on the machine and on whatever else it is doing, so this script measures
every path in the same process, interleaved (the order rotates from repeat to repeat), and reports
the median of a few repeats; the ratios (medians of the per-repeat ratios) are what to look at.

Paths (all at the same clip geometry, the same batch size and the same number of worker processes):

- **datamodule**: ``avgen.data.AVDataModule`` (WebDataset shards, shuffle buffer, decode + random
  crop in the workers, collate) iterating its training loader, plus what the datamodule does after
  the loader: ``on_before_batch_transfer`` (pops ``_health``), the copy to ``--device`` and
  ``on_after_batch_transfer`` (uint8 → float in [-1, 1], (B, F, 3, H, W)).
- **(a) PyAV alone**, the lower bound of the work: the ``mp4`` and ``flac`` members of the same tar
  shards, read with ``tarfile``, every frame decoded to rgb24 numpy with PyAV and the flac read with
  soundfile, in a ``multiprocessing.Pool`` of the same size over shards. No resize, no crop, no
  batching, nothing sent back to the main process.
- **(b) per-file loading as in the papers' code** (TempoTokens / VTA-LDM style): one longer source
  mp4 (h264 + AAC) and one wav per clip; per clip: open the mp4, ``container.seek`` to the keyframe
  before the clip start and decode forward to the start frame (what decord / ``read_video`` with
  ``start_pts`` do), decode the clip's frames, ``cv2.resize`` each to the clip size, read the audio
  span with ``soundfile.read(start=, frames=)``; a map-style ``torch.utils.data.DataLoader`` with the
  default collate. Its uint8 batches then go through the same device copy and float conversion as
  the datamodule's, so the comparison is about loading only.
- [info] rows (``--no-info`` drops them): **datamodule loader only** (the same loader, batches counted
  as they arrive in the main process, no device copy or float conversion: what the datamodule costs
  when the conversion runs on a GPU) and **(b')**, as (b) but with the float conversion in the workers
  (``ToTensor``/``Normalize`` style), as the papers' datasets do it.

Fairness: every path runs one untimed warm-up pass first (DataLoader workers are persistent, the
pool is started, imports are done, files are in the page cache); each timed sample then covers
``--epochs`` full epochs. Decoders run single-threaded (PyAV ``thread_type="NONE"`` as in
``avgen.media.decode_video``, ``torch.set_num_threads(1)`` and ``cv2.setNumThreads(1)`` in the
workers and in the main process), so the worker processes are the only parallelism. The baselines'
``frame.to_ndarray(format="rgb24")`` calls pass ``threads=1`` (``--baseline-sws-threads``): PyAV 18's
default is 0 = one swscale thread per CPU, set up again for every frame, which is slow and very
sensitive to other load; the datamodule's own decoding is measured as it is.

Besides clips/s (wall clock), each path reports CPU ms per clip summed over the main process and
its workers (``/proc``), which other load on the machine disturbs much less; the ratio table shows
both.

Usage::

    .venv/bin/python benchmarks/data_throughput.py              # full default settings
    .venv/bin/python benchmarks/data_throughput.py --quick      # smoke test (seconds)
    .venv/bin/python benchmarks/data_throughput.py --profile    # + cProfile of the datamodule, num_workers=0

Exit status is 0 whether or not the targets are met (``--strict`` makes a missed target exit 1).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import av
import cv2
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from avgen.data import AVDataModule, ClipGeometry
from avgen.data.shards import MANIFEST, Manifest
from avgen.data.synthetic import generate_clip
from avgen.data.synthetic_prepare import prepare_synthetic_hits, seed_of
from avgen.media import frame_count, write_mp4, write_wav

TARGET_A = 0.8  # datamodule clips/s ÷ (a) clips/s
TARGET_B = 2.0  # datamodule clips/s ÷ (b) clips/s
DATASET = "synthetic_hits"


def _single_thread() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _worker_init(_: int) -> None:
    _single_thread()


# ----------------------------------------------------------------------------------------- setup
def _geometry(args) -> ClipGeometry:
    return ClipGeometry(seconds=args.seconds, fps=args.fps, height=args.height, width=args.width,
                        sample_rate=args.sample_rate)


def ensure_shards(root: Path, geo: ClipGeometry, clips: int, clips_per_shard: int, workers: int) -> Manifest:
    """``<root>/train`` shards from ``prepare_synthetic_hits``; reused when they match."""
    if (root / "train" / MANIFEST).exists():
        manifest = Manifest.load(root / "train")
        if manifest.clip == geo and manifest.num_clips == clips and all(
                s.clips == clips_per_shard for s in manifest.shards[:-1]):
            return manifest
        raise SystemExit(f"{root / 'train'} holds other shards ({manifest.num_clips} clips, {manifest.clip}); "
                         f"use another --data-dir")
    prepare_synthetic_hits(root=str(root), clip=geo.to_dict(), clips={"train": clips},
                           clips_per_shard=clips_per_shard, preview=0, workers=workers)
    return Manifest.load(root / "train")


def _make_source(job: tuple) -> tuple[str, str]:
    seed, src_geo, mp4, wav = job
    clip = generate_clip(seed, src_geo)
    write_mp4(mp4, clip.frames, src_geo.fps, audio=clip.audio, sample_rate=src_geo.sample_rate, overwrite=True)
    write_wav(wav, clip.audio, src_geo.sample_rate, overwrite=True)
    return mp4, wav


def ensure_sources(folder: Path, geo: ClipGeometry, n: int, seconds: float, size: tuple[int, int],
                   workers: int, fps: int, seed: int = 0) -> list[tuple[str, str, int]]:
    """``n`` source videos (``seconds`` long, h264 + AAC mp4, plus a wav each) of the same synthetic
    content as the shards (the same seeds, rendered longer), and for each one clip start frame drawn
    uniformly among the frames where the clip fits. Returns ``(mp4, wav, start_frame)`` per clip."""
    src_geo = ClipGeometry(seconds=seconds, fps=fps, height=size[0], width=size[1], sample_rate=geo.sample_rate)
    if seconds < geo.seconds:
        raise SystemExit(f"--source-seconds {seconds} is shorter than the clip ({geo.seconds} s)")
    index = folder / "sources.json"
    spec = {"geometry": src_geo.to_dict(), "n": n, "seed": seed}
    if index.exists():
        saved = json.loads(index.read_text())
        if saved["spec"] == spec:
            return [tuple(item) for item in saved["items"]]
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(seed_of(seed, "train", i), src_geo, str(folder / f"src{i:05d}.mp4"), str(folder / f"src{i:05d}.wav"))
            for i in range(n)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            paths = pool.map(_make_source, jobs, chunksize=2)
    else:
        paths = [_make_source(j) for j in jobs]
    rng = np.random.default_rng(seed)
    # start frame in clip-fps units (start time = start / geo.fps)
    starts = rng.integers(0, frame_count(seconds, geo.fps) - geo.num_frames + 1, size=n)
    items = [(mp4, wav, int(s)) for (mp4, wav), s in zip(paths, starts)]
    index.write_text(json.dumps({"spec": spec, "items": items}))
    return items


# ------------------------------------------------------------------------- (a) PyAV alone over tars
def decode_shard_plain(path: str, sws_threads: int = 1) -> tuple[int, int]:
    """Decode every mp4 (all frames, rgb24) and flac member of one tar; returns (clips, checksum)."""
    clips, check = 0, 0
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            if name.endswith(".mp4"):
                data = tar.extractfile(member).read()
                with av.open(io.BytesIO(data)) as container:
                    stream = container.streams.video[0]
                    stream.thread_type = "NONE"
                    for frame in container.decode(stream):
                        arr = frame.to_ndarray(format="rgb24", threads=sws_threads)
                        check += int(arr[0, 0, 0])
                clips += 1
            elif name.endswith(".flac"):
                audio, _ = sf.read(io.BytesIO(tar.extractfile(member).read()), dtype="float32")
                check += int(audio.shape[0])
    return clips, check


class PlainDecode:
    """(a): a pool of ``workers`` processes, each decoding whole shards."""

    def __init__(self, shard_paths: list[str], workers: int, sws_threads: int = 1):
        self.shard_paths = shard_paths
        self.fn = functools.partial(decode_shard_plain, sws_threads=sws_threads)
        self.pool = mp.get_context("fork").Pool(workers, initializer=_single_thread)

    def epoch(self) -> int:
        return sum(c for c, _ in self.pool.imap_unordered(self.fn, self.shard_paths, chunksize=1))

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


# --------------------------------------------------------------------- (b) per-file, seek + resize
def _nearest(times: list[float], targets: list[float]) -> list[int]:
    """Index of the decoded frame nearest to each target time (how the papers' loaders subsample
    a native-fps source to the training fps)."""
    t = np.asarray(times)
    return [int(np.argmin(np.abs(t - x))) for x in targets]


def read_clip_from_file(mp4: str, start_frame: int, geo: ClipGeometry, sws_threads: int = 1) -> np.ndarray:
    """Seek to the keyframe before the clip start, decode forward at the source's native frame rate
    until the clip's last frame time, keep the frames nearest to the clip's ``fps`` grid, convert
    and resize those (stretch, as the papers' transforms do)."""
    start_s = start_frame / geo.fps
    targets = [start_s + k / geo.fps for k in range(geo.num_frames)]
    kept: list = []
    times: list[float] = []
    with av.open(mp4) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        half = 0.5 / float(stream.average_rate)
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time < start_s - half:
                continue  # between the keyframe and the clip start
            kept.append(frame)
            times.append(frame.time)
            if frame.time >= targets[-1] - half:
                break
        if not kept or times[-1] < targets[-1] - half:
            raise RuntimeError(f"{mp4}: the source ends before the clip starting at frame {start_frame} does")
        frames = []
        for i in _nearest(times, targets):
            img = kept[i].to_ndarray(format="rgb24", threads=sws_threads)
            if img.shape[:2] != (geo.height, geo.width):
                img = cv2.resize(img, (geo.width, geo.height), interpolation=cv2.INTER_LINEAR)
            frames.append(img)
    return np.stack(frames)


class SourceClips(Dataset):
    """Map-style dataset over ``(mp4, wav, start_frame)`` items."""

    def __init__(self, items: list[tuple[str, str, int]], geo: ClipGeometry, float_in_worker: bool = False,
                 sws_threads: int = 1):
        self.items, self.geo, self.float_in_worker, self.sws_threads = items, geo, float_in_worker, sws_threads

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        mp4, wav, start_frame = self.items[i]
        geo = self.geo
        video = read_clip_from_file(mp4, start_frame, geo, self.sws_threads)
        a0 = int(round(start_frame / geo.fps * geo.sample_rate))
        audio, _ = sf.read(wav, start=a0, frames=geo.num_samples, dtype="float32", always_2d=False)
        if audio.shape[0] < geo.num_samples:
            audio = np.pad(audio, (0, geo.num_samples - audio.shape[0]))
        if self.float_in_worker:
            video = torch.from_numpy(video).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        return {"video": video, "audio": audio}


def check_seek(items: list[tuple[str, str, int]], geo: ClipGeometry, n: int = 2) -> None:
    """The seek path must return the same frames as a full decode sliced at the start frame."""
    for mp4, _, start in items[:n]:
        with av.open(mp4) as container:
            decoded = [(f.time, f.to_ndarray(format="rgb24", threads=1)) for f in container.decode(video=0)]
        targets = [start / geo.fps + k / geo.fps for k in range(geo.num_frames)]
        want = np.stack([decoded[i][1] for i in _nearest([t for t, _ in decoded], targets)])
        if want.shape[1:3] != (geo.height, geo.width):
            want = np.stack([cv2.resize(f, (geo.width, geo.height), interpolation=cv2.INTER_LINEAR) for f in want])
        got = read_clip_from_file(mp4, start, geo)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise SystemExit(f"seek check failed for {mp4} (start frame {start}): the (b) baseline reads wrong frames")


# ------------------------------------------------------------------------------------ measuring
def consume(batch: dict, device: torch.device, after: Callable[[dict], dict]) -> int:
    """Copy to ``device`` and apply ``after`` (the datamodule's float conversion); returns the clip count."""
    batch = dict(batch)
    for k in ("video", "audio"):
        batch[k] = batch[k].to(device, non_blocking=True)
    batch = after(batch)
    return int(batch["video"].shape[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (Linux ``/proc``); 0 when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _loader_pids(loader: DataLoader) -> list[int]:
    """Worker pids of a DataLoader with persistent workers (private attributes; empty if they change)."""
    workers = getattr(getattr(loader, "_iterator", None), "_workers", None) or []
    return [w.pid for w in workers if getattr(w, "pid", None)]


class Path_:
    """One measured path: wall-clock clips/s, and CPU ms per clip over the main process and its workers
    (CPU time is much less sensitive than wall time to other load on the machine)."""

    def __init__(self, key: str, label: str, run_epoch: Callable[[], int], device: torch.device,
                 pids: Callable[[], list[int]] = list):
        self.key, self.label, self.run_epoch, self.device, self.pids = key, label, run_epoch, device, pids
        self.samples: list[float] = []
        self.cpu_ms: list[float] = []

    def measure(self, epochs: int) -> float:
        pids = self.pids()
        _sync(self.device)
        c0 = time.process_time() + sum(_proc_cpu_s(p) for p in pids)
        t0 = time.perf_counter()
        clips = sum(self.run_epoch() for _ in range(epochs))
        _sync(self.device)
        wall = time.perf_counter() - t0
        cpu = time.process_time() + sum(_proc_cpu_s(p) for p in pids) - c0
        rate = clips / wall
        self.samples.append(rate)
        self.cpu_ms.append(1000 * cpu / clips)
        return rate

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms)


def per_clip_costs(shard_paths: list[str], items: list[tuple[str, str, int]], geo: ClipGeometry, batch_size: int,
                   device: torch.device, dm: AVDataModule, sws_threads: int = 1, n: int = 16) -> str:
    """Single-process CPU cost of each step, in ms per clip (best of 3), to see where the time goes."""
    from avgen.data.decode import collate, decode_sample
    from avgen.data.stream import Health, Shard, iter_shard

    def best(fn: Callable[[], Any], clips: int) -> float:
        times = []
        for _ in range(3):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return 1000 * min(times) / clips

    samples = list(iter_shard(Shard(shard_paths[0], 0), Health()))[:n]
    n = len(samples)
    rng = np.random.default_rng(0)
    clips = [decode_sample(s, geo, rng) for s in samples[:batch_size]]
    batch = collate(clips)
    source = SourceClips(items, geo, sws_threads=sws_threads)
    in_shard = sum(1 for _ in iter_shard(Shard(shard_paths[0], 0), Health()))

    def shared_collate():
        collate(clips)["video"].share_memory_()

    rows = [
        ("datamodule worker: decode_sample (PyAV decode + rgb24 + crop + flac + json)",
         best(lambda: [decode_sample(s, geo, rng) for s in samples], n)),
        ("datamodule worker: collate + move to shared memory (DataLoader IPC)", best(shared_collate, len(clips))),
        ("datamodule main: on_after_batch_transfer (uint8 -> float) on " + str(device),
         best(lambda: consume(dict(batch), device, lambda b: dm.on_after_batch_transfer(b, 0)), len(clips))),
        ("(a): tarfile + PyAV all frames rgb24 + soundfile, per clip",
         best(lambda: decode_shard_plain(shard_paths[0], sws_threads), in_shard)),
        ("(b): open + seek + decode forward + resize + wav span, per clip",
         best(lambda: [source[i] for i in range(n)], n)),
    ]
    mean_start = float(np.mean([it[2] for it in items]))
    out = ["single-process CPU cost per clip (ms, best of 3, in the main process, workers idle):"]
    out += [f"  {label:<78} {ms:7.2f}" for label, ms in rows]
    out.append(f"  ((b) decodes on average {mean_start:.1f} frames before the clip start, from the keyframe at frame 0)")
    return "\n".join(out)


def profile_datamodule(root: Path, geo: ClipGeometry, args, device: torch.device, top: int = 25) -> str:
    """cProfile of one datamodule epoch in the main process (num_workers=0), after a warm-up epoch."""
    dm = AVDataModule(name=DATASET, root=str(root), clip=geo.to_dict(), batch_size=args.batch_size,
                      num_workers=0, shuffle_buffer=args.shuffle_buffer, epoch_clips=args.clips)
    dm.setup("fit")
    loader = dm.train_dataloader()
    after = lambda b: dm.on_after_batch_transfer(b, 0)  # noqa: E731
    for batch in loader:  # warm-up
        consume(dm.on_before_batch_transfer(batch, 0), device, after)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    clips = 0
    for batch in loader:
        clips += consume(dm.on_before_batch_transfer(batch, 0), device, after)
    prof.disable()
    wall = time.perf_counter() - t0
    out = io.StringIO()
    out.write(f"cProfile, datamodule with num_workers=0 (main process), one warm epoch: {clips} clips in "
              f"{wall:.2f} s = {clips / wall:.1f} clips/s on one core (profiler overhead included)\n")
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke-test size: 32 clips of 1 s at 64×64, 2 s sources, batch 4, 1 repeat of 1 epoch "
                        "(explicit flags still win)")
    p.add_argument("--clips", type=int, default=None, help="training clips in the shards (default 96)")
    p.add_argument("--clips-per-shard", type=int, default=None, help="default 16 (8 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="clip seconds (default 4)")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--height", type=int, default=None, help="default 256")
    p.add_argument("--width", type=int, default=None, help="default 256")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--workers", type=int, default=2, help="worker processes for every path")
    p.add_argument("--shuffle-buffer", type=int, default=None, help="datamodule shuffle buffer (default 64)")
    p.add_argument("--source-seconds", type=float, default=None, help="length of the (b) source videos (default 10)")
    p.add_argument("--source-size", type=str, default=None,
                   help="HxW of the (b) source videos (default 360x640, the 360p of VGGSound/YouTube sources; "
                        "give the clip size to make (b) decode exactly the shard pixels)")
    p.add_argument("--source-fps", type=int, default=None,
                   help="frame rate of the (b) sources (default 24: native video, subsampled to the clip fps "
                        "by the loader as the papers' code does; give the clip fps to skip the subsampling)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per path (default 5)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per timed sample (default 1)")
    p.add_argument("--device", type=str, default=None, help="where the float conversion runs (default: cuda if available)")
    p.add_argument("--data-dir", type=str, default=None,
                   help="keep the shards and sources here (reused when they match); default: a temporary folder")
    p.add_argument("--no-info", action="store_true", help="skip the [info] rows (datamodule loader only, (b'))")
    p.add_argument("--baseline-sws-threads", type=int, default=1,
                   help="threads= for the baselines' frame.to_ndarray (swscale); 0 = PyAV's default (auto: one "
                        "thread per CPU, and a new SwsContext per frame), 1 = single-threaded like the decoders")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile one datamodule epoch with num_workers=0 and print the top functions")
    p.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "clips": 32 if quick else 96, "clips_per_shard": 8 if quick else 16, "seconds": 1.0 if quick else 4.0,
        "height": 64 if quick else 256, "width": 64 if quick else 256, "batch_size": 4 if quick else 8,
        "source_seconds": 2.0 if quick else 8.0, "source_fps": 16 if quick else 24, "shuffle_buffer": 16 if quick else 64,
        "repeats": 1 if quick else 5, "epochs": 1,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.source_size:
        h, w = (int(x) for x in args.source_size.lower().split("x"))
        args.source_hw = (h, w)
    else:
        args.source_hw = (96, 128) if quick else (360, 640)
    return args


def _fmt_rate(samples: list[float]) -> str:
    return ", ".join(f"{s:.1f}" for s in samples)


def run(args) -> dict:
    _single_thread()
    geo = _geometry(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tmp = None
    if args.data_dir:
        base = Path(args.data_dir).expanduser().absolute()
    else:
        tmp = tempfile.TemporaryDirectory(prefix="avgen-bench-")
        base = Path(tmp.name)
    root = base / DATASET
    t_setup = time.perf_counter()
    manifest = ensure_shards(root, geo, args.clips, args.clips_per_shard, args.workers)
    sh, sw = args.source_hw
    items = ensure_sources(
        base / f"sources_{args.source_seconds:g}s_{sh}x{sw}_{args.source_fps}fps_{geo.seconds:g}s_{args.clips}",
        geo, args.clips, args.source_seconds, args.source_hw, args.workers, args.source_fps)
    check_seek(items, geo)
    setup_s = time.perf_counter() - t_setup
    shard_paths = [str(root / "train" / s.name) for s in manifest.shards]

    paths: list[Path_] = []
    closers: list[Callable[[], None]] = []
    try:
        # datamodule
        dm = AVDataModule(name=DATASET, root=str(root), clip=geo.to_dict(), batch_size=args.batch_size,
                          num_workers=args.workers, shuffle_buffer=args.shuffle_buffer)
        dm.setup("fit")
        dm_loader = dm.train_dataloader()
        dm_after = lambda b: dm.on_after_batch_transfer(b, 0)  # noqa: E731

        def dm_epoch() -> int:
            return sum(consume(dm.on_before_batch_transfer(b, 0), device, dm_after) for b in dm_loader)

        def dm_loader_epoch() -> int:
            return sum(int(dm.on_before_batch_transfer(b, 0)["video"].shape[0]) for b in dm_loader)

        dm_pids = lambda: _loader_pids(dm_loader)  # noqa: E731
        paths.append(Path_("datamodule", "datamodule: AVDataModule train loader + on_after_batch_transfer",
                           dm_epoch, device, dm_pids))
        if not args.no_info:
            paths.append(Path_("datamodule_loader", "datamodule loader only, no device copy/float [info]",
                               dm_loader_epoch, device, dm_pids))

        # (a)
        plain = PlainDecode(shard_paths, args.workers, args.baseline_sws_threads)
        closers.append(plain.close)
        paths.append(Path_("a", f"(a) PyAV+soundfile alone: tarfile, Pool({args.workers}), no resize/crop/batch",
                           plain.epoch, device, lambda: [p.pid for p in plain.pool._pool]))

        # (b) and (b')
        def file_loader(float_in_worker: bool) -> DataLoader:
            return DataLoader(SourceClips(items, geo, float_in_worker, args.baseline_sws_threads), batch_size=args.batch_size, shuffle=True,
                              num_workers=args.workers, persistent_workers=args.workers > 0,
                              pin_memory=dm.pin_memory, worker_init_fn=_worker_init,
                              generator=torch.Generator().manual_seed(0))

        b_loader = file_loader(False)
        paths.append(Path_("b", "(b) per-file mp4 seek+decode+resize, wav span, DataLoader",
                           lambda: sum(consume(b, device, dm_after) for b in b_loader), device,
                           lambda: _loader_pids(b_loader)))
        if not args.no_info:
            bf_loader = file_loader(True)
            paths.append(Path_("b_float", "(b') as (b), float conversion in the workers [info]",
                               lambda: sum(consume(b, device, dm_after) for b in bf_loader), device,
                               lambda: _loader_pids(bf_loader)))

        # warm-up: one untimed epoch each (starts the persistent workers / the pool, fills the page cache)
        warm = {}
        for p in paths:
            t0 = time.perf_counter()
            p.run_epoch()
            warm[p.key] = time.perf_counter() - t0
        for r in range(args.repeats):
            k = r % len(paths)
            for p in paths[k:] + paths[:k]:
                p.measure(args.epochs)
        health = dm.health.get("train")
    finally:
        for close in closers:
            close()

    profile_text = None
    if args.profile:
        profile_text = (per_clip_costs(shard_paths, items, geo, args.batch_size, device, dm,
                                       args.baseline_sws_threads) + "\n\n"
                        + profile_datamodule(root, geo, args, device))
    if tmp is not None:
        tmp.cleanup()

    by = {p.key: p for p in paths}

    def paired(num: str, den: str) -> dict:
        """Median over repeats of the per-repeat ratio (the paths of one repeat run back to back, so
        slow drifts in machine load cancel), plus the ratio of CPU cost per clip (den ÷ num)."""
        ratios = [x / y for x, y in zip(by[num].samples, by[den].samples)]
        return {"value": statistics.median(ratios), "samples": ratios,
                "ratio_of_medians": by[num].median / by[den].median,
                "cpu_work_ratio": by[den].median_cpu_ms / by[num].median_cpu_ms}

    ratio_a, ratio_b = paired("datamodule", "a"), paired("datamodule", "b")
    ratio_a.update(target=TARGET_A, **{"pass": ratio_a["value"] >= TARGET_A})
    ratio_b.update(target=TARGET_B, **{"pass": ratio_b["value"] >= TARGET_B})
    info = {}
    if "datamodule_loader" in by:
        info["datamodule loader only / (a)"] = paired("datamodule_loader", "a")
    if "b_float" in by:
        info["datamodule / (b')"] = paired("datamodule", "b_float")
    return {
        "settings": {
            "clips": args.clips, "shards": len(shard_paths), "clips_per_shard": args.clips_per_shard,
            "clip": geo.to_dict(), "frames_per_clip": geo.num_frames, "batch_size": args.batch_size,
            "workers": args.workers, "shuffle_buffer": args.shuffle_buffer, "device": str(device),
            "source_seconds": args.source_seconds, "source_size": list(args.source_hw), "source_fps": args.source_fps,
            "repeats": args.repeats, "epochs_per_sample": args.epochs, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
            "setup_s": round(setup_s, 1), "baseline_sws_threads": args.baseline_sws_threads,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "paths": {p.key: {"label": p.label, "median_clips_per_s": p.median, "samples": p.samples,
                          "median_cpu_ms_per_clip": p.median_cpu_ms, "cpu_ms_per_clip": p.cpu_ms,
                          "warmup_s": warm[p.key]} for p in paths},
        "ratios": {
            "datamodule_over_a": ratio_a,
            "datamodule_over_b": ratio_b,
        },
        "info_ratios": info,
        "datamodule_health": None if health is None else {"seen": health.seen, "skipped": health.skipped},
        "profile": profile_text,
    }


def render(res: dict) -> str:
    s = res["settings"]
    c = s["clip"]
    lines = [
        "avgen data-path throughput (all paths in this one process, interleaved; median of "
        f"{s['repeats']} timed samples of {s['epochs_per_sample']} warm epoch(s) each)",
        f"  clips      : {s['clips']} training clips in {s['shards']} shards of <= {s['clips_per_shard']}; "
        f"{c['seconds']:g} s at {c['fps']} fps ({s['frames_per_clip']} frames), {c['height']}x{c['width']}, "
        f"{c['sample_rate']} Hz mono",
        f"  loading    : batch {s['batch_size']}, {s['workers']} worker processes per path, shuffle buffer "
        f"{s['shuffle_buffer']}, float conversion on {s['device']}; decoding single-threaded per process "
        f"(PyAV thread_type NONE, torch/cv2 1 thread)",
        f"  rgb24      : datamodule = avgen.media.decode_video as is; baselines frame.to_ndarray(format='rgb24', "
        f"threads={s['baseline_sws_threads']})" + (" (PyAV default: auto)" if s['baseline_sws_threads'] == 0 else ""),
        f"  (b) sources: {s['clips']} mp4 (h264 + AAC) of {s['source_seconds']:g} s at "
        f"{s['source_size'][0]}x{s['source_size'][1]} at {s['source_fps']} fps + one wav each; clip start uniform "
        f"inside; frames nearest the {s['fps'] if 'fps' in s else 'clip'} fps grid kept, resized",
        "  warm-up    : one untimed epoch per path first (persistent workers / pool started), so worker "
        "start-up is excluded everywhere",
        f"  machine    : {s['cpu_count']} CPUs, python {s['python']}, torch {s['torch']}, PyAV {s['av']}"
        + (f"; load average at the end {s['load_average'][0]:.1f} (other processes add noise)"
           if s.get("load_average") else ""),
        "",
        f"  {'path':<72} {'clips/s':>8} {'CPU ms/clip':>12}   clips/s samples",
    ]
    for p in res["paths"].values():
        lines.append(f"  {p['label']:<72} {p['median_clips_per_s']:>8.1f} {p['median_cpu_ms_per_clip']:>12.1f}   "
                     f"[{_fmt_rate(p['samples'])}]")
    lines += ["", f"  {'ratio (clips/s over clips/s)':<40} {'value':>6}  {'target':>7}  {'result':<6} "
                  f"{'CPU-work ratio':>14}   per-repeat values"]
    names = {"datamodule_over_a": "datamodule / (a)  PyAV alone",
             "datamodule_over_b": "datamodule / (b)  per-file, papers' way"}
    for k, r in res["ratios"].items():
        lines.append(f"  {names[k]:<40} {r['value']:>6.2f}  >= {r['target']:<4.2f}  {'PASS' if r['pass'] else 'MISS':<6} "
                     f"{r['cpu_work_ratio']:>14.2f}   [{', '.join(f'{x:.2f}' for x in r['samples'])}]")
    for name, r in res["info_ratios"].items():
        lines.append(f"  {name + ' [info]':<40} {r['value']:>6.2f}  {'':>7}  {'':<6} {r['cpu_work_ratio']:>14.2f}   "
                     f"[{', '.join(f'{x:.2f}' for x in r['samples'])}]")
    lines += ["  (value: median of the per-repeat ratios; CPU-work ratio: baseline CPU ms/clip ÷ datamodule CPU ms/clip,",
              "   over the main process and the workers; >1 means the datamodule spends less CPU per clip)"]
    h = res["datamodule_health"]
    if h is not None:
        lines.append(f"\n  datamodule health: {h['seen']} clips decoded, {h['skipped']} skipped")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(render(res), flush=True)
    if res["profile"]:
        print("\n" + res["profile"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    missed = not all(r["pass"] for r in res["ratios"].values())
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
