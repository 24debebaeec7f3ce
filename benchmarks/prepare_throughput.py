"""Dataset preparation throughput: ``avgen.data.folder.prepare_folder`` against the ffmpeg command line.

Both paths cut the same folder of source videos into clips at the same stored geometry
(``--store-seconds`` s windows starting at ``k · seconds``, resampled to ``--store-fps``, short side
``--short-side`` keeping the aspect ratio, audio mono at ``--sample-rate``) and encode them the
same way (h264 with libx264, crf ``avgen.media.VIDEO_CRF``, preset fast, yuv420p, no audio in the
mp4; the audio as 16-bit flac):

- **avgen**: ``prepare_folder(out, store, source=src, workers=--workers, clips_per_shard=64)``, a
  fresh output folder per sample (the engine is idempotent and would otherwise skip the work);
  probing, the seeded train/val/test split, the worker pool start-up, decoding, encoding and the
  tar shards, manifests and report are all timed. Clips are counted from the returned report.
- **ffmpeg CLI, sequential**: how such datasets are usually prepared: for every video and every
  window, one ``ffmpeg`` process that seeks before opening the input (``-ss S -t T -i src``),
  resamples (``-vf fps=F,scale=-2:SHORT``) and writes both outputs of the clip (``clip.mp4`` and
  ``-map 0:a -ac 1 -ar SR -sample_fmt s16 clip.flac``); one process at a time, with ffmpeg's default threading
  (decoder and libx264 threads on auto, i.e. it may use every core by itself). The outputs are
  checked to exist and not be empty.

Source videos: ``--videos`` synthetic sounding videos (``tests/sources.py``'s ``write_video``, a
coloured background with a moving square and noise bursts) of ``--seconds`` s at 25 fps, ``--size``
(default 360x640, as VGGSound/YouTube sources), 44.1 kHz stereo AAC in mp4. They are written once
to a temporary folder (``--data-dir DIR`` keeps them and reuses them next time).

Timing: one untimed warm-up of each path on one video, then ``--repeats`` timed samples of each
path over the whole folder, interleaved (the order alternates from repeat to repeat). The printed
ratio is the median of the per-repeat ratios (avgen clips/s ÷ ffmpeg CLI clips/s); the target is
>= 2 (PASS/MISS). Wall-clock clips/s depend on the machine and on whatever else runs on it: compare
the ratio of one run, not absolute numbers across runs. The ffmpeg row also shows its CPU seconds
per wall second (how many cores the CLI used by itself).

The sequential CLI uses about one core, so another program busy on the machine barely slows it,
while avgen's two workers lose whatever the other program takes: on a shared machine the wall-clock
ratio understates avgen. The [info] rows (``--no-info`` drops them) are steadier: one sample of
avgen with ``workers=1`` (cutting in this process, no pool) and the CPU work per clip of both paths
(avgen: CPU time of that process, all its threads; ffmpeg: CPU time of its processes), whose ratio
is what two workers could at most add to on two idle cores.

Usage::

    .venv/bin/python benchmarks/prepare_throughput.py            # defaults, about 2.5 minutes on 2 cores
    .venv/bin/python benchmarks/prepare_throughput.py --quick    # smoke test (about 20 s)
    .venv/bin/python benchmarks/prepare_throughput.py --profile  # + worker start-up, cProfile of cut_source

Needs the ``ffmpeg`` executable (``apt-get install -y ffmpeg``); exits 2 without it. Exit status is
0 whether or not the target is met (``--strict`` makes a missed target exit 1).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# avgen and PyAV are imported inside the functions: worker processes (forkserver/spawn) re-import this
# module as ``__mp_main__``, and ``python -m avgen prepare``'s own main module imports nothing heavy
# either, so the workers' start-up cost here is the engine's, not this script's.

TARGET = 2.0


# ------------------------------------------------------------------------------ sources
def _write_one(job: tuple[str, float, tuple[int, int], int]) -> str:
    from tests.sources import write_video

    path, seconds, size, seed = job
    write_video(Path(path), seconds, fps=25, size=size, sr=44100, channels=2, seed=seed)
    return path


def make_sources(folder: Path, videos: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    """``videos`` mp4 files in ``folder`` (reused when a stamp says they were made with the same settings)."""
    stamp = folder / ".sources.json"
    spec = {"videos": videos, "seconds": seconds, "size": list(size), "fps": 25, "sr": 44100, "channels": 2}
    paths = [folder / f"video_{i:03d}.mp4" for i in range(videos)]
    if stamp.exists() and json.loads(stamp.read_text()) == spec and all(p.exists() for p in paths):
        return paths
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    jobs = [(str(p), seconds, size, i) for i, p in enumerate(paths)]
    with mp.get_context("spawn").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(_write_one, jobs)
    stamp.write_text(json.dumps(spec))
    return paths


# ------------------------------------------------------------------------------ the two paths
def run_avgen(src: Path, out: Path, store: dict, workers: int) -> tuple[int, float, float]:
    """(clips written, wall seconds, CPU seconds of this process) of one prepare of ``src`` into the fresh
    folder ``out``. The CPU time covers all the work only with ``workers=1`` (cutting in this process)."""
    from avgen.data.folder import prepare_folder

    if out.exists():
        shutil.rmtree(out)
    t, c = time.perf_counter(), time.process_time()
    report = prepare_folder(str(out), store, source=str(src), workers=workers, clips_per_shard=64, progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if report["skipped"]:
        raise RuntimeError(f"avgen left {report['skipped']} clips out: {report['skipped_by_reason']}")
    shutil.rmtree(out)
    return int(report["clips"]), wall, cpu


def ffmpeg_command(src: Path, start: float, store, source_hw: tuple[int, int], mp4: Path,
                   flac: Path, threads: int | None) -> list[str]:
    """One ffmpeg invocation cutting one clip: the video (mp4) and the audio (flac) outputs."""
    from avgen.media import VIDEO_CRF

    h, w = source_hw
    scale = f"scale=-2:{store.short_side}" if h <= w else f"scale={store.short_side}:-2"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if threads is not None:
        cmd += ["-threads", str(threads)]
    cmd += ["-ss", f"{start:g}", "-t", f"{store.seconds:g}", "-i", str(src),
            "-map", "0:v:0", "-vf", f"fps={store.fps},{scale}", "-c:v", "libx264", "-crf", str(VIDEO_CRF),
            "-preset", "fast", "-pix_fmt", "yuv420p", "-an", str(mp4),
            "-map", "0:a:0", "-ac", "1", "-ar", str(store.sample_rate), "-c:a", "flac", "-sample_fmt", "s16",
            str(flac)]
    return cmd


def ffmpeg_jobs(sources: list[Path], store) -> list[tuple[Path, float, tuple[int, int]]]:
    """(source, window start, source (h, w)) for every whole window of every source, in order."""
    from avgen.media import probe

    jobs = []
    for src in sources:
        info = probe(src)
        whole = int(math.floor(info.duration / store.seconds + 1e-9))  # as avgen.data.prepare.cut_source
        jobs += [(src, k * store.seconds, (info.height, info.width)) for k in range(whole)]
    return jobs


def run_ffmpeg(jobs, out: Path, store, threads: int | None) -> tuple[int, float, float]:
    """(clips written, wall seconds, CPU seconds of the ffmpeg processes): one ffmpeg per clip, in turn."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    outputs = []
    for src, start, hw in jobs:
        stem = out / f"{src.stem}_{int(round(start * 1000)):07d}"
        mp4, flac = stem.with_suffix(".mp4"), stem.with_suffix(".flac")
        subprocess.run(ffmpeg_command(src, start, store, hw, mp4, flac, threads), check=True)
        outputs.append((mp4, flac))
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    missing = [str(p) for pair in outputs for p in pair if not p.exists() or p.stat().st_size == 0]
    if missing:
        raise RuntimeError(f"ffmpeg wrote no (or empty) {missing[:3]} ({len(missing)} files)")
    shutil.rmtree(out)
    return len(outputs), wall, cpu


def check_ffmpeg_clip(jobs, out: Path, store, threads: int | None) -> str:
    """Cut one clip with the CLI and describe it (frames, size, audio samples), to show the geometry matches."""
    import av

    out.mkdir(parents=True, exist_ok=True)
    src, start, hw = jobs[min(1, len(jobs) - 1)]
    mp4, flac = out / "check.mp4", out / "check.flac"
    subprocess.run(ffmpeg_command(src, start, store, hw, mp4, flac, threads), check=True)
    with av.open(str(mp4)) as c:
        frames = [f for f in c.decode(video=0)]
        size = (frames[0].height, frames[0].width)
    with av.open(str(flac)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    shutil.rmtree(out)
    return (f"{len(frames)} frames of {size[0]}x{size[1]}, {samples} audio samples "
            f"(store: {store.num_frames} frames of {store.frame_size(hw)[0]}x{store.frame_size(hw)[1]}, "
            f"{store.num_samples} samples)")


# ------------------------------------------------------------------------------ --profile
def _import_engine(_: int) -> float:
    t = time.perf_counter()
    import avgen.data.prepare  # noqa: F401  (what a worker imports to run the engine's cut function)

    took = time.perf_counter() - t
    time.sleep(0.5)  # hold this worker so the next task goes to another one
    return took


def profile_avgen(src: Path, store, workers: int) -> None:
    """Where avgen's time goes: the fixed start-up of the worker pool, and cutting one source in-process."""
    import cProfile
    import io
    import pstats

    from avgen.data.prepare import SourceVideo, cut_source
    from avgen.parallel import worker_pool

    t = time.perf_counter()
    pool = worker_pool(workers)
    imports = pool.map(_import_engine, range(workers), chunksize=1)
    startup = time.perf_counter() - t - 0.5
    pool.close()
    pool.join()
    print(f"[profile] worker pool of {workers}: ready to cut after {startup:.2f} s (importing avgen.data.prepare "
          f"in each worker: {', '.join(f'{x:.2f}' for x in imports)} s); every prepare pays this once")
    video = SourceVideo(src.stem, str(src), "train")
    cut_source(video, store)  # warm
    t, c = time.perf_counter(), time.process_time()
    clips = cut_source(video, store)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"[profile] cut_source on one source in this process: {len(clips)} clips in {wall:.2f} s "
          f"({cpu:.2f} s CPU, all threads)")
    prof = cProfile.Profile()
    prof.enable()
    cut_source(video, store)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(14)
    print("\n".join(line for line in text.getvalue().splitlines()[6:] if line.strip()))


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12, help="source videos (default 12)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each source video (default 10)")
    parser.add_argument("--size", default="360x640", help="source frame size HxW (default 360x640)")
    parser.add_argument("--store-seconds", type=float, default=2.0)
    parser.add_argument("--store-fps", default="8")
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--workers", type=int, default=2, help="avgen worker processes (default 2)")
    parser.add_argument("--ffmpeg-threads", type=int, default=None,
                        help="pass -threads N to the ffmpeg CLI (default: not passed, ffmpeg's own choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 videos of 4 s at 180x320, 2 repeats")
    parser.add_argument("--data-dir", default=None, help="keep the source videos here and reuse them")
    parser.add_argument("--no-info", action="store_true", help="skip the [info] run of avgen with workers=1")
    parser.add_argument("--profile", action="store_true",
                        help="also: the worker pool's start-up and a cProfile of cut_source on one source video")
    parser.add_argument("--json", default=None, help="write every sample to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.seconds, args.size, args.repeats = 4, 4.0, "180x320", 2

    if shutil.which("ffmpeg") is None:
        print("prepare_throughput: the ffmpeg executable is not on PATH; install ffmpeg: apt-get install -y ffmpeg",
              file=sys.stderr)
        sys.exit(2)
    try:
        h, w = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r}: expected HxW, e.g. 360x640")
    store_cfg = {"seconds": args.store_seconds, "fps": args.store_fps, "short_side": args.short_side,
                 "sample_rate": args.sample_rate}
    import webdataset  # noqa: F401  (the engine imports it in this process on first use; not timed)

    from avgen.data.geometry import StoreGeometry

    store = StoreGeometry.from_config(store_cfg)

    tmp = tempfile.TemporaryDirectory(prefix="avgen-prepare-bench-")
    base = Path(tmp.name)
    data = Path(args.data_dir).expanduser() if args.data_dir else base / "sources"
    t = time.perf_counter()
    sources = make_sources(data, args.videos, args.seconds, (h, w))
    made = time.perf_counter() - t
    jobs = ffmpeg_jobs(sources, store)
    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; {ffmpeg_version}")
    print(f"sources: {len(sources)} videos of {args.seconds:g} s, {h}x{w} at 25 fps, h264 + 44.1 kHz stereo AAC "
          f"(mp4) in {data} ({made:.1f} s to make)")
    print(f"store:   {store.seconds:g} s clips at {store.fps} fps, short side {store.short_side}, "
          f"{store.sample_rate} Hz mono; {len(jobs)} clips in all")
    print(f"ffmpeg CLI check: {check_ffmpeg_clip(jobs, base / 'check', store, args.ffmpeg_threads)}")

    # warm-up (untimed): avgen on one video (the forkserver, imports in this process), ffmpeg on one clip
    warm = base / "warm-src"
    warm.mkdir()
    os.symlink(sources[0], warm / sources[0].name)
    run_avgen(warm, base / "warm-out", store_cfg, 1)
    run_avgen(warm, base / "warm-out", store_cfg, args.workers)
    run_ffmpeg(jobs[:1], base / "warm-ff", store, args.ffmpeg_threads)

    samples = []
    for r in range(args.repeats):
        sample = {}
        order = ("avgen", "ffmpeg") if r % 2 == 0 else ("ffmpeg", "avgen")
        for path in order:
            if path == "avgen":
                clips, wall, _ = run_avgen(data, base / "avgen-out", store_cfg, args.workers)
                sample["avgen"] = {"clips": clips, "seconds": wall}
            else:
                clips, wall, cpu = run_ffmpeg(jobs, base / "ffmpeg-out", store, args.ffmpeg_threads)
                sample["ffmpeg"] = {"clips": clips, "seconds": wall, "cpu_seconds": cpu}
        if sample["avgen"]["clips"] != sample["ffmpeg"]["clips"]:
            raise RuntimeError(f"the paths made different numbers of clips: {sample}")
        rate_a = sample["avgen"]["clips"] / sample["avgen"]["seconds"]
        rate_f = sample["ffmpeg"]["clips"] / sample["ffmpeg"]["seconds"]
        sample["ratio"] = rate_a / rate_f
        samples.append(sample)
        print(f"  repeat {r + 1}/{args.repeats} ({' first, '.join(order)} second): avgen {rate_a:6.2f} clips/s "
              f"({sample['avgen']['seconds']:.1f} s), ffmpeg CLI {rate_f:6.2f} clips/s "
              f"({sample['ffmpeg']['seconds']:.1f} s, {sample['ffmpeg']['cpu_seconds'] / sample['ffmpeg']['seconds']:.2f}"
              f" CPU s per s), ratio {sample['ratio']:.2f}")

    def median_rate(key: str) -> float:
        return statistics.median(s[key]["clips"] / s[key]["seconds"] for s in samples)

    ratio = statistics.median(s["ratio"] for s in samples)
    per_repeat = ", ".join(f"{s['ratio']:.2f}" for s in samples)
    ok = ratio >= TARGET
    threads = "default threads" if args.ffmpeg_threads is None else f"-threads {args.ffmpeg_threads}"
    print(f"medians over {args.repeats} repeats, {samples[0]['avgen']['clips']} clips each:")
    rows = [(f"avgen prepare_folder, {args.workers} workers", f"{median_rate('avgen'):7.2f} clips/s"),
            (f"ffmpeg CLI, sequential ({threads})", f"{median_rate('ffmpeg'):7.2f} clips/s"),
            ("ratio avgen / ffmpeg CLI", f"{ratio:7.2f}   target >= {TARGET:g}: {'PASS' if ok else 'MISS'}   "
                                         f"per repeat: {per_repeat}")]
    ff_cpu = statistics.median(s["ffmpeg"]["cpu_seconds"] / s["ffmpeg"]["clips"] for s in samples)
    one = None
    if not args.no_info:  # one sample: avgen in this process (no pool), CPU time of all its threads
        clips, wall, cpu = run_avgen(data, base / "avgen-out", store_cfg, 1)
        one = {"clips": clips, "seconds": wall, "cpu_seconds": cpu}
        rows += [("[info] avgen, workers=1 (one sample)", f"{clips / wall:7.2f} clips/s"),
                 ("[info] CPU ms per clip: ffmpeg CLI | avgen", f"{1000 * ff_cpu:7.0f} | {1000 * cpu / clips:.0f}   "
                                                                  f"ratio {ff_cpu / (cpu / clips):.2f}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if args.profile:
        profile_avgen(sources[0], store, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "samples": samples, "ratio": ratio,
                                              "avgen_workers_1": one}, indent=1))
    tmp.cleanup()
    if args.strict and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
