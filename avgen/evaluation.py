"""``python -m avgen evaluate``: score a folder of generated sounding videos.

Inputs: ``evaluate.pred_dir`` holds videos with an audio stream, or silent videos with a
``<stem>.wav`` (``.flac``, ...) beside them: any container and codec FFmpeg reads, any extension
case, any file name (:func:`avgen.media.scan_media`). Every other file is skipped and named with its
reason. Clips are scored in parallel worker processes; a clip that cannot be read is reported with
its reason and never stops the run. Outputs in the run folder:

- ``metrics.json``: value per metric and variant, number of clips scored, failures with reasons,
  skipped files with reasons, extractor weight hashes, library versions and the evaluate config;
- ``per_clip.csv``: one row per clip (AV-Align, CLIPSIM, CLAP, ImageBind and KL scores, onset and peak
  counts, video and audio durations in seconds with a note when they differ by more than one
  frame, and every metric's error for the clip);
- ``plots/<stem>.png`` for the first ``evaluate.plots`` clips (frames, flow magnitude with peaks,
  waveform with onsets, matches).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from avgen.errors import ConfigError
from avgen.parallel import worker_pool

if TYPE_CHECKING:
    from avgen.media import Clip, MediaFolder

log = logging.getLogger(__name__)

# Metrics the evaluate command can compute; the others named in configs are not built yet.
AVAILABLE = ("av_align", "fvd", "fad", "clipsim", "clap", "imagebind", "is", "kl", "is_video")
DISTRIBUTION = ("fvd", "fad")
SEMANTIC = ("clipsim", "clap")
AUDIO_VISUAL = ("imagebind",)
CLASSIFIER = ("is", "kl")  # audio classifier (PANNs CNN14)
VIDEO_CLASSIFIER = ("is_video",)  # video classifier (UCF-101 C3D)
NEEDS_REFERENCE = DISTRIBUTION + ("kl",)


def export_split_clips(split_dir: str | Path, out_dir: str | Path) -> Path:
    """The clips of a prepared shard split as files ``evaluate`` reads, in manifest order: for each sample
    ``<key with / as __>.mp4`` (the stored video bytes, not re-encoded), ``.wav`` (its flac audio,
    lossless), ``.txt`` (its caption or label, the CLIPSIM/CLAP prompt) and ``.json`` (``source``: its
    key, so ``kl`` against the same split pairs each clip with itself). Scoring the data itself gives the
    top line a paper reports next to its models (e.g. TempoTokens' AV-Align of the original videos)."""
    from avgen.data.shards import read_split_samples

    export_samples(read_split_samples(split_dir), out_dir)
    return Path(out_dir)


def export_samples(samples: Iterator[tuple[str, dict[str, bytes]]], out_dir: str | Path, prompt: str = "caption"
                   ) -> dict[str, Path]:
    """Write shard samples (``(key, {extension: bytes})``, e.g. from
    :func:`avgen.data.shards.read_shard_samples`) as clip files into ``out_dir`` (see
    :func:`export_split_clips`). ``prompt``: what ``<stem>.txt`` holds, ``caption`` (the caption, else
    the label) or ``label`` (the class label, else the caption). Returns ``{key: mp4 path}``; a sample
    without an mp4 is logged and left out."""
    if prompt not in ("caption", "label"):
        raise ValueError(f"prompt must be 'caption' or 'label', got {prompt!r}")
    from avgen.media import decode_flac, write_bytes_atomic, write_wav
    from avgen.systems.common import clip_caption

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for key, parts in samples:
        stem = out / key.replace("/", "__")
        if "mp4" not in parts:
            log.warning("split sample %s has no mp4; not exported", key)
            continue
        write_bytes_atomic(stem.with_suffix(".mp4"), parts["mp4"], overwrite=True)
        if "flac" in parts:
            audio, sr = decode_flac(parts["flac"])
            write_wav(stem.with_suffix(".wav"), audio, sr, overwrite=True)
        caption = clip_caption(parts)
        if prompt == "label":
            caption = json.loads(parts.get("json", b"{}")).get("label") or caption
        write_bytes_atomic(stem.with_suffix(".txt"), caption.encode(), overwrite=True)
        write_bytes_atomic(stem.with_suffix(".json"), json.dumps({"prompt": caption, "source": key}).encode(),
                           overwrite=True)
        written[key] = stem.with_suffix(".mp4")
    return written


def find_clips(folder: str | Path, config_key: str = "evaluate.pred_dir") -> MediaFolder:
    """The clips of ``folder`` (:func:`avgen.media.scan_media`): every file with a video stream, whatever
    its container, extension case or name, in name order; ``skipped`` names every other file with its
    reason (sidecar ``.txt``/``.json`` files and the audio of a silent video are not listed).

    Raises:
        ConfigError: ``folder`` (the value of ``config_key``) is not a folder or holds no clip.
    """
    from avgen.media import scan_media

    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"{config_key}={folder} is not a folder of clips (videos with sound, or silent videos with "
                          f"<stem>.wav beside them) or a prepared shard split (manifest.json)")
    found = scan_media(path, "video")
    if not found.files:
        skipped = "; ".join(f"{p.name}: {reason}" for p, reason in found.skipped)
        raise ConfigError(f"{config_key}={folder} holds no clip (a file with a video stream, any container)"
                          + (f"; skipped: {skipped}" if skipped else "; the folder is empty")
                          + f". Point {config_key} at a folder of videos")
    return found


def _score_clip(job: tuple[str, dict, str | None]) -> dict[str, Any]:
    """Worker: AV-Align of one clip (at its own frame rate) and its durations; errors become a row with
    the reason."""
    from avgen.media import read_clip
    from avgen.metrics.av_align import AVAlignConfig, align_clip, plot_alignment

    path, cfg_dict, plot_path = job
    row: dict[str, Any] = {"clip": Path(path).name}
    try:
        clip = read_clip(path)
        fps = float(clip.fps)
        result = align_clip(clip.frames, fps, clip.audio, clip.sample_rate, AVAlignConfig(**cfg_dict))
        row.update({f"av_align_{k}": float(v) for k, v in result.scores.items()})
        row.update(onsets=len(result.onsets), frames=int(clip.frames.shape[0]), fps=fps, **clip_durations(clip))
        row.update({f"peaks_{k}": len(v) for k, v in result.peaks.items()})
        if plot_path:
            plot_alignment(plot_path, clip.frames, fps, clip.audio, clip.sample_rate, result)
    except Exception as exc:  # one unreadable clip never stops an evaluation
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def clip_durations(clip: Clip) -> dict[str, Any]:
    """The per-clip CSV's duration columns: ``video_seconds`` (frames / fps), ``audio_seconds`` (samples /
    rate) and ``duration_note``, empty unless the two differ by more than one frame. AV-Align keeps its
    official definition over whatever each stream holds; the note says when they do not cover the same time."""
    return {"video_seconds": round(clip.video_seconds, 6), "audio_seconds": round(clip.audio_seconds, 6),
            "duration_note": clip.duration_mismatch() or ""}


def evaluate_folder(pred_dir: str | Path, out_dir: str | Path, *, metrics: list[str], workers: int = 2,
                    plots: int = 0, av_align: dict | None = None, ref_dir: str | Path | None = None,
                    fvd: dict | None = None, fad: dict | None = None, clipsim: dict | None = None,
                    clap: dict | None = None, panns: dict | None = None, is_video: dict | None = None,
                    imagebind: dict | None = None, prompt: str | None = None, decode_threads: int = 2,
                    cache_dir: str | Path | None = None, device: str = "auto", overwrite: bool = False,
                    config: dict | None = None) -> dict[str, Any]:
    """Score every clip of ``pred_dir``; write ``metrics.json`` and ``per_clip.csv`` to ``out_dir``.

    ``fvd`` / ``fad`` (Fréchet distances) compare ``pred_dir`` with ``ref_dir`` (a folder of clips or a
    shard split folder with ``manifest.json``); reference statistics are cached in ``cache_dir``.
    ``clipsim`` / ``clap`` score each clip against its prompt: ``<stem>.txt`` beside the clip, else
    ``prompt``. ``is`` (Inception Score) and ``kl`` (mean KL to the reference clip of the same stem
    in the folder ``ref_dir``, or to the shard split clip named as ``source`` in ``<stem>.json``) use the
    PANNs CNN14 of ``panns`` (``path``, ``splits``); ``is_video`` the C3D of ``is_video``; ``imagebind``
    the ImageBind file of ``imagebind``.

    AV-Align workers start from a fork server, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard (the command line has it).
    """
    from avgen._versions import library_versions
    from avgen.media import write_bytes_atomic

    unknown = [m for m in metrics if m not in AVAILABLE]
    if unknown:
        raise ConfigError(f"evaluate.metrics: unknown {unknown}; known: {list(AVAILABLE)}")
    wanted = [m for m in metrics if m in NEEDS_REFERENCE]
    if wanted and not ref_dir:
        raise ConfigError(f"evaluate.metrics {wanted} compare with reference clips: set evaluate.ref_dir=<folder of "
                          f"clips or a shard split folder> (kl: a folder with clips of the same stems)")
    out = Path(out_dir)
    if (out / "metrics.json").exists() and not overwrite:
        raise FileExistsError(f"{out / 'metrics.json'} exists; pass evaluate.overwrite=true or another run folder")
    from avgen.data.shards import MANIFEST
    from avgen.metrics.av_align import AVAlignConfig

    cfg = asdict(AVAlignConfig(**(av_align or {})))
    main_metrics = [m for m in metrics if m in DISTRIBUTION + SEMANTIC + AUDIO_VISUAL + CLASSIFIER + VIDEO_CLASSIFIER]
    procs = _Processes(device)
    try:
        requested = pred_dir
        if (Path(pred_dir) / MANIFEST).is_file():  # a shard split: its clips (ground truth) as files first
            if procs.rank == 0:
                export_split_clips(pred_dir, out / "clips")
            procs.gather(None)  # the others wait for the files
            pred_dir = out / "clips"
        found = find_clips(pred_dir)
        clips = found.files
        skipped = {"skipped": found.skipped_json()}
        if ref_dir and any(m in DISTRIBUTION for m in metrics) and not (Path(ref_dir) / MANIFEST).is_file():
            skipped["ref_skipped"] = find_clips(ref_dir, "evaluate.ref_dir").skipped_json()
        folders = {"skipped": "evaluate.pred_dir", "ref_skipped": "evaluate.ref_dir"}
        for key, entries in skipped.items():  # the command prints each reason; scripts get this and metrics.json
            if entries and procs.rank == 0:
                log.warning("%d files in %s skipped (reasons in metrics.json '%s'): %s", len(entries), folders[key],
                            key, ", ".join(e["file"] for e in entries))
        mine = clips[procs.rank::procs.world]  # this process's share (all of them without torchrun)
        with _AlignmentPool(workers if "av_align" in metrics else 0) as pool:
            pending = pool.submit([(str(p), cfg, None) for p in mine]) if "av_align" in metrics else None
            # With cores to spare, AV-Align runs in the worker processes while the main process decodes the
            # clips again for the feature-based metrics (on a GPU when there is one). Without (2 cores and 2
            # workers), overlapping only oversubscribes: measured 8.7-9.2 s vs 8.1 s sequential for 24 clips.
            rows = None
            if pending is not None and not (main_metrics and pool.spare_cores()):
                rows = pool.collect(pending)
            more_values, extractors, more, per_clip = score_in_main_process(
                main_metrics, mine, ref_dir=ref_dir,
                options={"fvd": fvd, "fad": fad, "clipsim": clipsim, "clap": clap, "panns": panns,
                         "is_video": is_video, "imagebind": imagebind},
                prompt=prompt, cache_dir=cache_dir or out / "refstats", device=device, procs=procs, all_clips=clips,
                decode_threads=decode_threads)
            if rows is None:
                rows = pool.collect(pending) if pending is not None else [{"clip": p.name} for p in mine]
            rows = sorted((r for part in procs.gather(rows) for r in part), key=lambda r: r["clip"])
            ok = [r for r in rows if "error" not in r]
            if plots and procs.rank == 0:  # the first readable clips; plotting re-runs their alignment
                plot_dir = out / "plots"
                plot_dir.mkdir(parents=True, exist_ok=True)
                chosen = [Path(pred_dir) / r["clip"] for r in ok[:plots]]
                pool.collect(pool.submit([(str(p), cfg, str(plot_dir / f"{p.stem}.png")) for p in chosen]), "plots")
    finally:
        procs.close()
    failures = [{"clip": r["clip"], "reason": r["error"]} for r in rows if "error" in r]
    variants = sorted({k for r in ok for k in r if k.startswith("av_align_")})
    values: dict[str, Any] = {}
    if variants and ok:
        values["av_align"] = {k.removeprefix("av_align_"): sum(r[k] for r in ok) / len(ok) for k in variants}
    values.update(more_values)
    failures += more
    # per-clip scores of the main-process metrics (clipsim, clap, imagebind, kl) and the durations join the CSV
    for row in rows:
        row.update(per_clip.get(row["clip"], {}))
    reasons: dict[str, list[str]] = {}
    for f in sorted(failures, key=lambda f: f["clip"]):  # one entry per clip, every metric's reason
        if f["reason"] not in reasons.setdefault(f["clip"], []):
            reasons[f["clip"]].append(f["reason"])
    for row in rows:  # the CSV's error column carries every metric's reason too
        if row["clip"] in reasons:
            row["error"] = "; ".join(reasons[row["clip"]])
    result = {
        "pred_dir": str(Path(requested).absolute()),
        "clips_dir": str(Path(pred_dir).absolute()),
        "ref_dir": str(Path(ref_dir).absolute()) if ref_dir else None,
        "metrics": values,
        "clips": len(clips) - len(reasons),
        "processes": procs.world,
        "failures": [{"clip": c, "reason": "; ".join(r)} for c, r in reasons.items()],
        **skipped,
        "splits": {key: info for key, info in (("pred_dir", split_list(requested)),
                                               ("ref_dir", split_list(ref_dir) if ref_dir else None)) if info},
        "extractors": extractors,
        "av_align_config": cfg,
        "versions": library_versions(),
        "config": config or {},
    }
    if procs.rank == 0:  # every process holds the same result; the first writes it
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / "metrics.json", json.dumps(result, indent=2).encode(), overwrite=True)
        _write_csv(out / "per_clip.csv", rows)
    return result


def _not_distributed() -> bool:
    return False


class _Processes:
    """The processes of one ``evaluate`` run. Started by torchrun (``WORLD_SIZE`` > 1, with ``RANK``,
    ``LOCAL_RANK`` and the rendezvous variables), they form a process group (NCCL on GPUs, else gloo):
    process ``r`` scores clips ``r, r + W, ...`` of the sorted list and its share of the reference clips,
    metric states are summed (tensors) or concatenated (lists) across processes, per-clip rows and
    failures are gathered, and every process ends with the same result, which process 0 writes.
    Without torchrun this is one process and every call is local."""

    def __init__(self, device: str = "auto"):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                cuda = torch.cuda.is_available() and device in ("auto", "cuda")
                if cuda:
                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                dist.init_process_group("nccl" if cuda else "gloo")
                self.started = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def reduce(self, metric) -> None:
        """Replace a metric's states by their sum (tensor states) or concatenation in rank order (list
        states) over the processes, in place (every avgen metric reduces that way). Its ``compute`` is then
        told that it runs alone (``distributed_available_fn``), so torchmetrics does not reduce again."""
        if self.world == 1:
            return
        import torch.distributed as dist

        metric.distributed_available_fn = _not_distributed

        for name, value in metric.metric_state.items():
            if isinstance(value, list):
                parts = self.gather([t.detach().cpu() for t in value])
                setattr(metric, name, [t.to(metric.device) for part in parts for t in part])
            else:
                total = value.detach().clone()
                dist.all_reduce(total)
                setattr(metric, name, total)

    def close(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()


class _AlignmentPool:
    """AV-Align jobs (:func:`_score_clip`) in ``workers`` processes (none for ``workers <= 1``: then
    :meth:`collect` runs them in this process). :meth:`submit` returns at once, so the main process can
    work while the pool does; :meth:`collect` waits with a progress bar."""

    def __init__(self, workers: int):
        self.workers, self.pool = int(workers), None

    def __enter__(self) -> _AlignmentPool:
        if self.workers > 1:
            # librosa and the metric are imported once by the fork server, not by every worker
            self.pool = worker_pool(self.workers, preload=("avgen.evaluation", "avgen.metrics.av_align",
                                                           "librosa.onset")).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.__exit__(*exc)

    def spare_cores(self) -> bool:
        """Whether the machine has cores beyond the workers' for the main process (two or more)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.pool is not None and cores >= self.workers + 2

    def submit(self, jobs: list) -> tuple[list, Any]:
        if self.pool is None or len(jobs) <= 1:
            return jobs, None
        return jobs, self.pool.imap(_score_clip, jobs, chunksize=1)

    def collect(self, pending: tuple[list, Any], desc: str = "av_align") -> list[dict]:
        from tqdm import tqdm

        jobs, results = pending
        progress = dict(total=len(jobs), desc=desc, unit="clip", file=sys.stderr, disable=None)
        if results is None:
            return [_score_clip(j) for j in tqdm(jobs, **progress)]
        return list(tqdm(results, **progress))


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["clip"] + sorted({k for r in rows for k in r} - {"clip", "error"}) + ["error"]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
    os.replace(tmp, path)


def split_list(folder: str | Path) -> dict[str, Any] | None:
    """What ``metrics.json`` records about a prepared shard split it scored (``None`` for a plain folder):
    dataset, split, clips, and for datasets defined by a clip list how many listed clips were present and
    the SHA-1 of the list, so two test sets can be compared at a glance."""
    from avgen.data.shards import MANIFEST, Manifest

    if not (Path(folder) / MANIFEST).is_file():
        return None
    manifest = Manifest.load(folder)
    return {"dataset": manifest.dataset, "split": manifest.split, "clips": manifest.num_clips,
            **({"list": manifest.prepare["list"]} if manifest.prepare.get("list") else {})}


# ------------------------------------------------------------------------------ Fréchet distances
def _reference_clips(ref_dir: str | Path, rank: int = 0, world: int = 1, decode_threads: int = 0
                     ) -> Iterator[tuple[str, np.ndarray, float, np.ndarray, int]]:
    """(name, frames (F, H, W, 3) uint8, fps, audio, sample rate) of each reference clip (process
    ``rank``'s share of them out of ``world``): a shard split folder (``manifest.json``) or a folder of clips."""
    from avgen.data.shards import MANIFEST, Manifest

    folder = Path(ref_dir)
    if (folder / MANIFEST).exists():
        from avgen.data.stream import EvalStream, Shard

        manifest = Manifest.load(folder)
        stream = EvalStream([Shard(str(folder / s.name), s.clips) for s in manifest.shards], manifest.clip, 1,
                            split=manifest.split, max_skip_fraction=1.0, rank=rank, world_size=world)
        for batch in stream:
            yield (batch["key"][0], batch["video"][0].numpy(), float(manifest.clip.fps), batch["audio"][0].numpy(),
                   manifest.clip.sample_rate)
        return
    unreadable: list[dict] = []
    for name, clip in _load_clips(find_clips(folder, "evaluate.ref_dir").files[rank::world], unreadable,
                                  decode_threads):
        yield name, clip.frames, float(clip.fps), clip.audio, clip.sample_rate
    for failure in unreadable:  # not counted, but never dropped without a word
        log.warning("evaluate.ref_dir: reference clip %s skipped: %s", failure["clip"], failure["reason"])


def _load_clips(paths: list[Path], failures: list[dict], threads: int = 0) -> Iterator[tuple[str, Clip]]:
    """(file name, :class:`~avgen.media.Clip`) of each clip in order, decoded as everywhere in avgen
    (:func:`avgen.media.read_clip`: frames upright, placed by their timestamps at the clip's own rate);
    unreadable clips go to ``failures``. ``threads`` decode ahead of the consumer (PyAV releases the GIL
    while decoding), so the feature extractors do not wait on the decoder; at most ``2 * threads`` decoded
    clips are held."""
    from concurrent.futures import ThreadPoolExecutor

    from avgen.media import read_clip

    def load(path: Path):
        try:
            return read_clip(path)
        except Exception as exc:  # reported, not fatal
            return exc

    def emit(path: Path, loaded):
        if isinstance(loaded, Exception):
            failures.append({"clip": path.name, "reason": f"{type(loaded).__name__}: {loaded}"})
            return None
        return path.name, loaded

    if threads <= 0:
        for path in paths:
            if (item := emit(path, load(path))) is not None:
                yield item
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="avgen-decode") as pool:
        pending = [(p, pool.submit(load, p)) for p in paths[:2 * threads]]
        queued = len(pending)
        while pending:
            path, future = pending.pop(0)
            if queued < len(paths):
                pending.append((paths[queued], pool.submit(load, paths[queued])))
                queued += 1
            if (item := emit(path, future.result())) is not None:
                yield item


def _reference_identity(ref_dir: str | Path) -> dict[str, Any]:
    """What the reference statistics depend on besides the extractor: the split manifest's hash, or
    the listing (names, sizes, mtimes) of a folder of clips."""
    from avgen.data.shards import MANIFEST
    from avgen.metrics.extractors import sha256_file

    folder = Path(ref_dir).absolute()
    if (folder / MANIFEST).exists():
        return {"manifest_sha256": sha256_file(folder / MANIFEST)}
    listing = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()]
    return {"folder": str(folder), "listing_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def _device(device: str):
    import torch

    if device == "auto":  # under torchrun, cuda is this process's GPU (LOCAL_RANK, set by _Processes)
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def video_tensor(frames: np.ndarray, dev):
    """Decoded frames (F, H, W, 3) uint8 → (1, F, 3, H, W) float in [-1, 1] on ``dev`` (an extractor's
    uint8 quantisation ``(x * 127.5 + 128)`` gives the decoded bytes back exactly)."""
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames)).to(dev)
    return video.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)[None]


def clip_prompt(path: Path, default: str | None) -> str | None:
    """The prompt a clip was generated from: ``<stem>.txt`` beside it, else ``default``."""
    txt = path.with_suffix(".txt")
    return txt.read_text().strip() if txt.is_file() else default


class _Scorer:
    """One main-process metric fed clip by clip: ``update`` returns the clip's own scores for the per-clip
    CSV (``{column: value}``, or None for set-level metrics) and raises ``ValueError`` for a clip it
    cannot score (reported per clip); ``result`` gives (value, description for metrics.json)."""

    name: str

    def update(self, path: Path, frames: np.ndarray, audio: np.ndarray, sr: int,
               fps: float | None = None) -> dict[str, float] | None:
        raise NotImplementedError

    def states(self) -> list:
        """The torchmetrics metrics whose states the processes of a distributed run reduce."""
        return [self.metric]

    def result(self) -> tuple[float | None, dict]:
        raise NotImplementedError


class _CosineScorer(_Scorer):
    """A :class:`~avgen.metrics.cosine.MeanCosine` metric: the mean of the clips it could score."""

    def result(self):
        scored = int(self.metric.count)
        return (float(self.metric.compute()) if scored else None), {**self.metric.describe(), "clips": scored}


class _SemanticScorer(_CosineScorer):
    """CLIPSIM (frames vs prompt) or CLAP score (audio vs prompt); the prompt is ``<stem>.txt``
    beside the clip, else ``evaluate.prompt``."""

    def __init__(self, name: str, options: dict, prompt: str | None, dev):
        from avgen.metrics.semantic import CLAPScore, CLIPSim

        options = dict(options)
        model_id = options.pop("model", None)
        self.name, self.prompt = name, prompt
        self.metric = (CLIPSim if name == "clipsim" else CLAPScore).from_pretrained(
            model_id, config_key=f"evaluate.{name}.model", **options).to(dev)

    def update(self, path, frames, audio, sr, fps=None):
        text = clip_prompt(path, self.prompt)
        if not text:
            raise ValueError(f"no prompt ({path.stem}.txt beside the clip, or evaluate.prompt)")
        if self.name == "clipsim":
            scores = self.metric.clip_scores([frames], [text])
        else:
            self.metric.sample_rate = sr  # the metric resamples to the model's rate
            scores = self.metric.clip_scores([np.ascontiguousarray(audio, dtype=np.float32)], [text])
        self.metric.add_scores(scores)
        return {self.name: float(scores[0])}


class _ImageBindScorer(_CosineScorer):
    """ImageBind audio-video score: cos(ImageBind audio embedding, vision embedding) per clip, at the
    clip's own frame rate (:mod:`avgen.metrics.imagebind`). ``evaluate.imagebind`` holds ``path`` and,
    for tests, :class:`~avgen.metrics.imagebind.ImageBindAV` sizes."""

    name = "imagebind"

    def __init__(self, options: dict, dev):
        from avgen.metrics.imagebind import ImageBindScore

        options = dict(options)
        self.metric = ImageBindScore.from_file(options.pop("path", None), config_key="evaluate.imagebind.path",
                                               sizes=options).to(dev)

    def update(self, path, frames, audio, sr, fps=None):
        scores = self.metric.clip_scores([frames], [np.ascontiguousarray(audio, dtype=np.float32)], sample_rate=sr,
                                         fps=fps)
        self.metric.add_scores(scores)
        return {self.name: float(scores[0])}


class _FrechetScorer(_Scorer):
    """FVD (I3D on video) or FAD (VGGish or PANNs CNN14's embedding on 16 kHz audio, or CLAP's embedding
    on 48 kHz audio) against reference statistics."""

    def __init__(self, name: str, options: dict, dev):
        import torch

        from avgen.metrics.extractors import build_extractor
        from avgen.metrics.frechet import FrechetDistance

        options = dict(options)
        self.name, self.dev, self.torch = name, dev, torch
        if name == "fvd":
            extractor = build_extractor("i3d", options.pop("i3d_path", None), config_key="evaluate.fvd.i3d_path",
                                        **options)
        else:
            self.sample_rate = int(options.pop("sample_rate", 16000))
            kind = options.pop("extractor", "vggish")
            panns_path = options.pop("panns_path", None)
            clap_model = options.pop("clap_model", None)
            if kind == "clap":
                from avgen.metrics.semantic import ClapEmbedding, CLAPScore

                clap_options = {k: options.pop(k) for k in list(options) if k not in ("vggish_path", "vggish_pca_path")}
                extractor = ClapEmbedding(CLAPScore.from_pretrained(clap_model, config_key="evaluate.fad.clap_model",
                                                                    **clap_options))
                self.sample_rate = extractor.sample_rate  # one resampling, straight to CLAP's rate
            elif kind == "panns":
                from avgen.metrics.panns import Cnn14Embedding, load_cnn14

                options.pop("vggish_path", None)
                options.pop("vggish_pca_path", None)
                extractor = Cnn14Embedding(load_cnn14(panns_path, config_key="evaluate.fad.panns_path", **options))
            elif kind == "vggish":
                extractor = build_extractor("vggish", options.pop("vggish_path", None),
                                            config_key="evaluate.fad.vggish_path",
                                            pca_config_key="evaluate.fad.vggish_pca_path",
                                            pca_path=options.pop("vggish_pca_path", None), **options)
            else:
                raise ConfigError(f"evaluate.fad.extractor={kind!r}: expected vggish, panns or clap")
        self.extractor = extractor.to(dev)
        self.reference_metric = FrechetDistance(self.extractor).to(dev)
        self.metric = None
        self.reference = None

    def model_input(self, frames: np.ndarray, audio: np.ndarray, sr: int):
        torch = self.torch
        if self.name == "fvd":
            return video_tensor(frames, self.dev)
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.dev)
        if sr != self.sample_rate:
            import torchaudio

            wave = torchaudio.functional.resample(wave, sr, self.sample_rate)
        return wave[None]

    def key(self, ref_dir) -> dict:
        return {"metric": self.name, "extractor": self.extractor.identity(), **_reference_identity(ref_dir)}

    def update_reference(self, frames, audio, sr) -> None:
        self.reference_metric.update(self.model_input(frames, audio, sr), real=True)

    def set_reference(self, stats) -> None:
        from avgen.metrics.frechet import FrechetDistance

        self.reference = stats
        self.metric = FrechetDistance(self.extractor, reference=stats).to(self.dev)

    def update(self, path, frames, audio, sr, fps=None):
        self.metric.update(self.model_input(frames, audio, sr), real=False)

    def result(self):
        return float(self.metric.compute()), {**self.extractor.describe(), "reference_clips": int(self.reference.count)}


def _set_references(scorers: list[_FrechetScorer], ref_dir, cache_dir, procs: _Processes,
                    decode_threads: int = 0) -> None:
    """Reference statistics from the cache, or from one shared pass over the reference clips (each
    process its share, the sums then reduced)."""
    from avgen.metrics.frechet import cached_reference_stats, reference_stats_path

    cached = [reference_stats_path(cache_dir, s.key(ref_dir)).is_file() for s in scorers]
    # one decision for all processes: a file another process writes meanwhile must not split them
    cached = [all(flags) for flags in zip(*procs.gather(cached))]
    missing = [s for s, hit in zip(scorers, cached) if not hit]
    if missing:
        used = {s.name: 0 for s in missing}
        skipped: dict[str, list[str]] = {s.name: [] for s in missing}
        for name, frames, _, audio, sr in _reference_clips(ref_dir, procs.rank, procs.world, decode_threads):
            for scorer in missing:
                try:
                    scorer.update_reference(frames, audio, sr)
                    used[scorer.name] += 1
                except ValueError as exc:  # a reference clip the extractor cannot take: skipped, logged
                    log.warning("%s reference clip %s skipped: %s", scorer.name, name, exc)
                    skipped[scorer.name].append(f"{name}: {exc}")
        for scorer in missing:
            procs.reduce(scorer.reference_metric)
        parts = procs.gather((used, skipped))
        for scorer in missing:  # fewer than 2 usable reference clips: say why, not "no covariance"
            total = sum(u[scorer.name] for u, _ in parts)
            reasons = [r for _, k in parts for r in k[scorer.name]]
            if total < 2:
                why = f"; the first skipped: {reasons[0]}" if reasons else ""
                raise ConfigError(f"{scorer.name}: {total} usable reference clips in evaluate.ref_dir={ref_dir} "
                                  f"({len(reasons)} skipped), at least 2 are needed{why}")
    for scorer, hit in zip(scorers, cached):
        key = scorer.key(ref_dir)
        if hit or procs.rank == 0:  # computed by this run: every process holds the same sums; the first writes
            stats = cached_reference_stats(cache_dir, key, partial(scorer.reference_metric.stats, real=True))
        else:
            stats = _stats_with_key(scorer.reference_metric.stats(real=True), key)
        scorer.set_reference(stats)


def _stats_with_key(stats, key: dict):
    from avgen.metrics.frechet import canonical_json

    stats.key = json.loads(canonical_json(key))
    return stats


# ------------------------------------------------------------------------------ classifier scores
class _PannsLogits:
    """The PANNs CNN14 shared by ``is`` and ``kl``: clips go in as audioldm_eval prepares them
    (:class:`~avgen.metrics.classifier_scores.ClassifierInput`), and the logits of the last generated
    clip are kept, so both metrics use one forward pass per clip. ``evaluate.panns`` holds ``path``,
    ``splits`` (for ``is``) and, for tests, :class:`~avgen.metrics.panns.Cnn14` arguments (``channels``, ...)."""

    def __init__(self, options: dict, dev):
        import inspect

        from avgen.metrics.classifier_scores import ClassifierInput
        from avgen.metrics.panns import Cnn14, load_cnn14

        architecture = {k: v for k, v in options.items() if k not in ("path", "splits", "shuffle_seed")}
        known = list(inspect.signature(Cnn14).parameters)
        unknown = sorted(set(architecture) - set(known))
        if unknown:
            raise ConfigError(f"evaluate.panns: unknown keys {unknown}; known: path, splits, shuffle_seed, "
                              f"{', '.join(known)}")
        self.model = load_cnn14(options.get("path"), config_key="evaluate.panns.path", **architecture).to(dev)
        self.prepare = ClassifierInput(sample_rate=self.model.sample_rate)
        self.dev = dev
        self._last: tuple[str, Any] | None = None

    def classify(self, audio: np.ndarray, sr: int):
        """Logits (1, classes) of one clip."""
        import torch

        with torch.no_grad():
            return self.model(self.prepare(audio, sr).to(self.dev)[None])["logits"]

    def generated(self, path: Path, audio: np.ndarray, sr: int):
        """Logits (1, classes) of a generated clip, computed once whichever metric asks first."""
        if self._last is None or self._last[0] != str(path):
            self._last = (str(path), self.classify(audio, sr))
        return self._last[1]

    def describe(self) -> dict:
        return {**self.model.describe(), "input": self.prepare.describe(), "output": "logits (fc_audioset, pre-sigmoid)"}


class _SplitInceptionScorer(_Scorer):
    """An Inception Score over the generated clips in file-name order (so the parts do not depend on how
    clips were spread over processes): ``splits`` parts after a ``RandomState(shuffle_seed)`` shuffle."""

    def __init__(self, splits: int, shuffle_seed: int | None, pred: list[Path], splits_key: str, convention: str):
        from avgen.metrics.classifier_scores import InceptionScore

        if len(pred) < int(splits):
            raise ConfigError(f"evaluate.metrics '{self.name}' with {splits_key}={splits} needs at least {splits} "
                              f"clips; evaluate.pred_dir holds {len(pred)}: lower {splits_key} ({convention} uses "
                              f"10) or score more clips")
        self.metric = InceptionScore(splits=int(splits), shuffle_seed=shuffle_seed)
        self.position = {p.name: i for i, p in enumerate(sorted(pred))}

    def add(self, path: Path, logits) -> None:
        import torch

        self.metric.update(logits, torch.tensor([self.position[path.name]]))

    def describe(self) -> dict:
        raise NotImplementedError

    def result(self):
        info = {**self.describe(), "splits": self.metric.splits, "shuffle_seed": self.metric.shuffle_seed,
                "clips": self.metric.num_clips()}
        if info["clips"] < self.metric.splits:  # fewer readable clips than splits: the other metrics still count
            return None, {**info, "error": f"{info['clips']} clips scored, fewer than splits={self.metric.splits}"}
        return {k: float(v) for k, v in self.metric.compute().items()}, info


class _InceptionScorer(_SplitInceptionScorer):
    """Audio Inception Score (audioldm_eval: PANNs CNN14 softmax, 10 splits, shuffle seed 2020)."""

    name = "is"

    def __init__(self, classifier: _PannsLogits, options: dict, pred: list[Path]):
        super().__init__(options.get("splits", 10), options.get("shuffle_seed", 2020), pred,
                         "evaluate.panns.splits", "audioldm_eval")
        self.classifier = classifier

    def update(self, path, frames, audio, sr, fps=None):
        self.add(path, self.classifier.generated(path, audio, sr))

    def describe(self) -> dict:
        return {**self.classifier.describe(), "posterior": "softmax over the logits"}


class _KLScorer(_Scorer):
    """Mean KL(reference || generated) of CNN14 outputs, each generated clip paired with its reference:

    - ``evaluate.ref_dir`` a folder: the file of the same stem, any video or audio extension in any case
      (``<stem>.mp4``, ``.MOV``, ``.wav``, ...); a video's sound is read as for a generated clip (its audio
      stream, else the audio file of its stem), and a video is taken before an audio file of the same stem;
    - ``evaluate.ref_dir`` a shard split (``manifest.json``): the clip whose key the ``sample`` command
      recorded as ``source`` in ``<stem>.json`` beside the generated clip (the data clip whose caption
      or audio it was made from), read in one pass over the split.

    A clip without its reference is reported, not fatal."""

    name = "kl"

    def __init__(self, classifier: _PannsLogits, ref_dir, pred: list[Path]):
        from avgen.data.shards import MANIFEST
        from avgen.metrics.classifier_scores import MeanKL

        self.folder = Path(ref_dir)
        if not self.folder.is_dir():
            raise ConfigError(f"evaluate.ref_dir={ref_dir} is not a folder of reference clips or a shard split "
                              f"for 'kl'")
        self.classifier, self.metric = classifier, MeanKL()
        self.split_audio: dict[str, tuple[np.ndarray, int]] | None = None
        if (self.folder / MANIFEST).exists():
            self.split_audio = self._read_split(pred)
        else:
            self.by_stem = self._index_folder()

    def _index_folder(self) -> dict[str, Path]:
        """The reference file of each stem in the folder (one listing, not one per generated clip)."""
        from avgen.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES

        media = [p for p in self.folder.iterdir()
                 if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES | AUDIO_SUFFIXES]
        by_stem: dict[str, Path] = {}
        for p in sorted(media, key=lambda p: (p.suffix.lower() not in VIDEO_SUFFIXES, p.name)):
            by_stem.setdefault(p.stem, p)
        return by_stem

    def _read_split(self, pred: list[Path]) -> dict[str, tuple[np.ndarray, int]]:
        """Audio of the split's clips whose keys the generated clips name as their source."""
        from avgen.systems.common import sample_source

        wanted = {s for s in (sample_source(p) for p in pred) if s}
        if not wanted:
            raise ConfigError(f"evaluate.metrics 'kl' with the shard split evaluate.ref_dir={self.folder} pairs each "
                              f"generated clip with the split's clip named as 'source' in <stem>.json beside it (the "
                              f"sample command writes it), but no clip in evaluate.pred_dir has one; set "
                              f"evaluate.ref_dir to a folder of references with the stems of the clips instead")
        from avgen.data.shards import read_split_samples
        from avgen.media import decode_flac

        # the audio straight from the tar files: no video decoding for an audio metric
        return {key: decode_flac(parts["flac"]) for key, parts in read_split_samples(self.folder, {"flac"})
                if key in wanted and "flac" in parts}

    def reference_audio(self, path: Path) -> tuple[np.ndarray, int]:
        """Audio of the reference of generated clip ``path`` (see the class docstring)."""
        from avgen.media import VIDEO_SUFFIXES, check_finite, read_audio, read_clip

        if self.split_audio is not None:
            from avgen.systems.common import sample_source

            key = sample_source(path)
            if not key:
                raise ValueError(f"no source key in {path.with_suffix('.json').name} to find its reference in the "
                                 f"shard split evaluate.ref_dir={self.folder}")
            if key not in self.split_audio:
                raise ValueError(f"source {key} is not a clip of the shard split evaluate.ref_dir={self.folder}")
            return self.split_audio[key]
        reference = self.by_stem.get(path.stem)
        if reference is None:
            raise ValueError(f"no reference {path.stem}.mp4 or {path.stem}.wav (or another video or audio file of that "
                             f"stem) in evaluate.ref_dir={self.folder}")
        try:
            if reference.suffix.lower() in VIDEO_SUFFIXES:
                clip = read_clip(reference)
                return clip.audio, clip.sample_rate
            audio, sr = read_audio(reference)
            check_finite(audio, str(reference))
            return audio, sr
        except Exception as exc:  # an unreadable reference fails its pair only
            raise ValueError(f"reference {reference.name}: {type(exc).__name__}: {exc}") from exc

    def update(self, path, frames, audio, sr, fps=None):
        reference = self.classifier.classify(*self.reference_audio(path))
        pair = self.metric.pair_divergences(self.classifier.generated(path, audio, sr), reference)
        self.metric.add_pairs(pair)
        return {f"kl_{variant}": float(value[0]) for variant, value in pair.items()}

    def result(self):
        pairs = int(self.metric.count)
        info = {**self.classifier.describe(), "pairs": pairs, "eps": self.metric.eps,
                "direction": "KL(reference || generated)", "ref_dir": str(self.folder.absolute())}
        return ({k: float(v) for k, v in self.metric.compute().items()} if pairs else None), info


class _VideoInceptionScorer(_SplitInceptionScorer):
    """Video Inception Score (TempoTokens' IS column): UCF-101 C3D posteriors of each clip's first 16
    frames, StyleGAN-V's 10 splits after ``RandomState(42)`` shuffling."""

    name = "is_video"

    def __init__(self, options: dict, pred: list[Path], dev):
        from avgen.metrics.extractors import build_extractor

        options = dict(options)
        super().__init__(options.pop("splits", 10), options.pop("shuffle_seed", 42), pred,
                         "evaluate.is_video.splits", "StyleGAN-V")
        self.extractor = build_extractor("c3d", options.pop("c3d_path", None), config_key="evaluate.is_video.c3d_path",
                                         **options).to(dev)
        self.dev = dev

    def update(self, path, frames, audio, sr, fps=None):
        import torch

        with torch.no_grad():
            probs = self.extractor(video_tensor(frames, self.dev))
        self.add(path, probs.log())  # log-probabilities as logits: the metric's softmax gives the posteriors back

    def describe(self) -> dict:
        return self.extractor.describe()


def score_in_main_process(metrics: list[str], pred: list[Path], *, ref_dir, options: dict[str, dict],
                          prompt: str | None, cache_dir, device: str, procs: _Processes | None = None,
                          all_clips: list[Path] | None = None, decode_threads: int = 0
                          ) -> tuple[dict, dict, list[dict], dict]:
    """FVD, FAD, CLIPSIM, CLAP, ImageBind, IS, KL and video IS over one decoding pass of ``pred``. Returns
    (values, extractor descriptions, failures, per-clip scores and durations (:func:`clip_durations`)
    ``{clip name: {column: value}}``).

    In a distributed run ``pred`` is this process's share of ``all_clips``; the values, failures and
    per-clip scores returned are those of all processes."""
    procs = procs or _Processes()
    all_clips = pred if all_clips is None else all_clips
    dev = _device(device)
    frechet = [_FrechetScorer(m, options.get(m) or {}, dev) for m in metrics if m in DISTRIBUTION]
    scorers: list[_Scorer] = frechet + per_clip_scorers(metrics, options, prompt, dev)
    if any(m in CLASSIFIER for m in metrics):
        panns = options.get("panns") or {}
        classifier = _PannsLogits(panns, dev)
        scorers += [_InceptionScorer(classifier, panns, all_clips) if m == "is" else
                    _KLScorer(classifier, ref_dir, pred) for m in metrics if m in CLASSIFIER]
    if "is_video" in metrics:
        scorers.append(_VideoInceptionScorer(options.get("is_video") or {}, all_clips, dev))
    if not scorers:
        return {}, {}, [], {}
    if frechet:
        _set_references(frechet, ref_dir, cache_dir, procs, decode_threads)
    failures: list[dict] = []
    per_clip = feed_scorers(scorers, pred, failures, decode_threads)
    for scorer in scorers:
        for metric in scorer.states():
            procs.reduce(metric)
    failures = [f for part in procs.gather(failures) for f in part]
    per_clip = {name: scores for part in procs.gather(per_clip) for name, scores in part.items()}
    values, info = {}, {}
    for scorer in scorers:
        values[scorer.name], info[scorer.name] = scorer.result()
    return values, info, failures, per_clip


def per_clip_scorers(metrics: list[str], options: dict[str, dict], prompt: str | None, dev) -> list[_Scorer]:
    """The scorers of the metrics in ``metrics`` that give each clip its own score: CLIPSIM and CLAP
    (against ``<stem>.txt`` beside the clip, else ``prompt``) and ImageBind, built from ``options``
    (``{metric: evaluate.<metric> block}``). AV-Align, the other per-clip metric, runs in worker
    processes (:func:`_score_clip`)."""
    scorers: list[_Scorer] = [_SemanticScorer(m, options.get(m) or {}, prompt, dev) for m in metrics if m in SEMANTIC]
    if "imagebind" in metrics:
        scorers.append(_ImageBindScorer(options.get("imagebind") or {}, dev))
    return scorers


def feed_scorers(scorers: list[_Scorer], paths: list[Path], failures: list[dict], decode_threads: int = 0
                 ) -> dict[str, dict[str, Any]]:
    """Decode each clip of ``paths`` once (:func:`_load_clips`) and update every scorer with it. Returns
    ``{clip file name: {column: value}}``: the durations (:func:`clip_durations`) and each scorer's
    per-clip scores. A clip a scorer cannot score (``ValueError``: too short, no prompt, ...) and an
    unreadable clip are appended to ``failures`` as ``{"clip", "reason"}``, never raised."""
    from tqdm import tqdm

    per_clip: dict[str, dict[str, Any]] = {}
    by_name = {p.name: p for p in paths}
    progress = dict(total=len(paths), desc="+".join(s.name for s in scorers), unit="clip", file=sys.stderr,
                    disable=None)
    for clip_name, clip in tqdm(_load_clips(paths, failures, decode_threads), **progress):
        per_clip[clip_name] = clip_durations(clip)
        for scorer in scorers:
            try:
                scores = scorer.update(by_name[clip_name], clip.frames, clip.audio, clip.sample_rate,
                                       fps=float(clip.fps))
                per_clip[clip_name].update(scores or {})
            except ValueError as exc:  # too short for the extractor, no prompt, ...: reported per clip
                failures.append({"clip": clip_name, "reason": f"{scorer.name}: {exc}"})
    return per_clip


PER_CLIP = ("av_align",) + SEMANTIC + AUDIO_VISUAL  # metrics that give every clip its own score


class ClipScorer:
    """Per-clip scores of clip files through ``evaluate``'s own code: AV-Align by :func:`_score_clip` in
    ``workers`` processes, CLIPSIM / CLAP / ImageBind by the scorers :func:`evaluate_folder` uses
    (:func:`per_clip_scorers`, :func:`feed_scorers`), each model loaded once for every :meth:`score` call.
    Used by ``python -m avgen filter`` so that a curation threshold and a reported metric are the same
    number.

    Args:
        metrics: a subset of :data:`PER_CLIP`.
        av_align: :class:`~avgen.metrics.av_align.AVAlignConfig` fields (``evaluate.av_align``).
        options: ``{metric: evaluate.<metric> block}`` (``clap``: ``model``; ``imagebind``: ``path``).
        prompt: the CLIPSIM/CLAP prompt of clips without a ``<stem>.txt``.
        device: the feature extractors' device (``auto``: CUDA when available).
        workers: AV-Align processes; decode_threads: clips decoded ahead of the extractors.

    Use as a context manager (the AV-Align worker pool lives inside the ``with`` block).

    Raises:
        ConfigError: a metric outside :data:`PER_CLIP`.
    """

    def __init__(self, metrics: list[str], *, av_align: dict | None = None, options: dict[str, dict] | None = None,
                 prompt: str | None = None, device: str = "auto", workers: int = 2, decode_threads: int = 2):
        from avgen.metrics.av_align import AVAlignConfig

        unknown = [m for m in metrics if m not in PER_CLIP]
        if unknown:
            raise ConfigError(f"{unknown}: not per-clip metrics; per-clip scores exist for {list(PER_CLIP)}")
        self.metrics = list(metrics)
        self.av_align = asdict(AVAlignConfig(**(av_align or {})))
        self.scorers = per_clip_scorers(self.metrics, options or {}, prompt, _device(device))
        self.workers, self.decode_threads = int(workers), int(decode_threads)
        self._pool: _AlignmentPool | None = None

    def __enter__(self) -> ClipScorer:
        self._pool = _AlignmentPool(self.workers if "av_align" in self.metrics else 0).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.__exit__(*exc)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        """``{metric: what scored it}``: the AV-Align config, each model's name, hashes and settings."""
        info: dict[str, Any] = {"av_align": {"config": self.av_align}} if "av_align" in self.metrics else {}
        for scorer in self.scorers:
            info[scorer.name] = {k: v for k, v in scorer.metric.describe().items() if k != "clips"}
        return info

    def score(self, paths: list[Path], metrics: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """``{clip file name: {column: value, "error": reasons, "errors": {metric: reason}}}`` for every
        clip of ``paths``, for ``metrics`` (default: all of this scorer's). A clip a metric could not score
        lacks that metric's column and has its reason in ``errors`` (an unreadable clip: every metric);
        ``error`` joins them, as in ``per_clip.csv``. Columns as in ``per_clip.csv``:
        ``av_align_<variant>``, ``clipsim``, ``clap``, ``imagebind``, plus AV-Align's onset/peak counts
        and the durations."""
        if self._pool is None:
            raise RuntimeError("ClipScorer.score runs inside `with ClipScorer(...) as scorer:`")
        wanted = self.metrics if metrics is None else [m for m in metrics if m in self.metrics]
        rows: dict[str, dict[str, Any]] = {p.name: {} for p in paths}
        errors: dict[str, dict[str, str]] = {}
        if "av_align" in wanted:
            pool = self._pool
            for row in pool.collect(pool.submit([(str(p), self.av_align, None) for p in paths])):
                name = row.pop("clip")
                if "error" in row:
                    errors.setdefault(name, {})["av_align"] = " ".join(row.pop("error").split())
                rows[name].update(row)
        scorers = [s for s in self.scorers if s.name in wanted]
        if scorers:
            failures: list[dict] = []
            for name, scores in feed_scorers(scorers, paths, failures, self.decode_threads).items():
                rows[name].update(scores)
            for failure in failures:  # "<metric>: reason" from a scorer; an unreadable clip fails them all
                reason = " ".join(failure["reason"].split())
                owner = next((s.name for s in scorers if reason.startswith(f"{s.name}: ")), None)
                for metric in [owner] if owner else [s.name for s in scorers]:
                    errors.setdefault(failure["clip"], {})[metric] = reason.removeprefix(f"{metric}: ")
        for name, reasons in errors.items():
            rows[name]["errors"] = reasons
            rows[name]["error"] = "; ".join(f"{m}: {r}" for m, r in reasons.items())
        return rows
