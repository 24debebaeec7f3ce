"""The prepare engine: source videos → WebDataset shards at the stored geometry (``data.store``).

A dataset source (``avgen/data/folder.py``, ``avgen/data/greatest_hits.py``) makes a :class:`Plan`:
the source videos of each split, in a fixed order, with their label, caption, the windows to cut
and any annotated events, plus the files it already leaves out (duplicate ids, files a split file
does not list). :func:`run_plan` then cuts every video into clips of ``store.seconds`` seconds
(window ``k`` starts at ``k · store.seconds`` in the video), decodes them at the stored rate and
size (:func:`avgen.media.decode_video`: frames by timestamp, short side ``store.short_side``) and
the audio at the stored sample rate (FFmpeg's swresample, mono), and writes the shards.

Guarantees:

- **Parallel**: ``workers`` processes decode and encode whole source videos; the main process
  writes the shards in plan order, so the shards do not depend on the worker count.
- **Resumable**: a split is built in ``<root>/.<split>.partial/``. A shard is renamed into place
  when complete and a record beside it (``shard-NNNNNN.json``) says where in the plan the next
  shard starts and which clips were left out before it. A prepare killed at any point and started
  again keeps the finished shards, redoes the partial one and continues; the result has the same
  keys, frames and audio as an uninterrupted run. The split appears at ``<root>/<split>/`` (with
  its ``manifest.json``) only when complete.
- **Accountable**: every source clip left out is listed with its reason in
  ``<root>/prepare_report.json`` (and per split in ``<root>/<split>/prepare_report.json``), with
  counts per split, reason and label.
- **Idempotent**: a split already made with the same config is kept; one made with another config
  is only replaced with ``overwrite=true``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from avgen.data.geometry import StoreGeometry, fps_json
from avgen.data.shards import MANIFEST, SPLITS, Manifest, ShardInfo, TarShardWriter, clip_key, encode_clip
from avgen.errors import ConfigError, NothingProduced, PrepareError
from avgen.media import (
    MediaError,
    audio_companion,
    decode_audio,
    decode_video,
    probe,
    replace_synced,
    write_text_atomic,
)

log = logging.getLogger(__name__)

REPORT = "prepare_report.json"
REPORT_FORMAT = "avgen-prepare-report/1"
#: why a source clip is left out (the codes of ``prepare_report.json``)
REASONS = {
    "undecodable": "FFmpeg cannot read the file, its video stream or its audio",
    "no_audio": "no audio stream (and no audio file of the same stem beside it)",
    "too_short": "shorter than one stored clip (data.store.seconds), or the window runs past the video's end",
    "silent": "digital silence: every sample is 0 at 16 bits",
    "non_finite": "audio with NaN or inf samples (e.g. written by a diverged model)",
    "duplicate_id": "another file has the same source id (the same path without its extension)",
    "not_in_split_file": "the split file does not list it",
    "missing": "the split file lists it but no such file was found",
    "ambiguous": "the split file's name matches several files (give the path relative to data.source)",
    "bad_annotation": "its annotation file cannot be read",
    "no_annotation": "no annotation file beside it",
    "excluded": "its id is in the exclusion list (data.prepare.exclude)",
    "small_class": "its class has fewer train clips than data.prepare.min_clips_per_class",
}
#: environment hook for the kill-and-restart tests: ``<split>:<n>`` SIGKILLs the process after the
#: n-th shard of ``split`` is complete and one clip of the next shard is written
KILL_HOOK = "AVGEN_TEST_KILL_PREPARE"
SILENCE = 2.0 ** -16  # below half a 16-bit step: every sample rounds to 0 in the flac


@dataclass(frozen=True)
class SourceVideo:
    """One source video of a plan.

    Args:
        source_id: id unique in the dataset (e.g. the path relative to the source folder without its
            extension); clip keys are ``<dataset>/<source_id>/<start ms>``.
        path: the video file (any container FFmpeg reads).
        split: ``train``, ``val`` or ``test``.
        label: the clip label (class name); with ``label_key`` the window's most frequent annotation value.
        caption: the caption; may hold ``{label}`` (filled with the clip's label).
        windows: the window indices ``k`` to cut (start ``k · store.seconds`` s); ``None``: every whole
            window of the video.
        window_captions: captions for given windows (e.g. the SVG code's per-segment file lists).
        events: annotated events, each a dict with ``time`` (seconds in the video) and labels
            (e.g. ``material``, ``action``); a clip's json gets ``events`` (times relative to the
            clip start, inside the clip) and ``event_labels`` (the other fields, aligned).
        label_key: the event field whose most frequent value in a window (else in the whole video)
            is the clip label.
        audio: an audio file to take the sound from instead of the video's own stream.
    """

    source_id: str
    path: str
    split: str
    label: str = ""
    caption: str = ""
    windows: tuple[int, ...] | None = None
    window_captions: Mapping[int, str] | None = None
    events: tuple[Mapping[str, Any], ...] = ()
    label_key: str | None = None
    audio: str | None = None


@dataclass
class Skip:
    """A source clip (``start`` set) or a whole source video (``start`` None) left out, and why."""

    split: str
    source_id: str
    path: str
    reason: str
    detail: str = ""
    start: float | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r}; known: {sorted(REASONS)}")


@dataclass
class Plan:
    """What a source hands to :func:`run_plan`.

    ``sources``: per split, the videos in the order they are written. ``skipped``: files left out
    while planning. ``config``: everything that defines the result (the source folder, options, the
    list of files with their sizes); a split made with another config is not reused.
    """

    dataset: str
    source: str
    sources: dict[str, list[SourceVideo]]
    skipped: list[Skip] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)  # per split: listed, present, sha1 of the list


# ------------------------------------------------------------------------------ one source video
@dataclass
class _Clip:
    window: int
    start: float
    mp4: bytes
    flac: bytes
    meta: dict[str, Any]


def _majority(values: Iterable[Any], prefer: str = "") -> str:
    """The most frequent value (``None``/empty ignored); a tie goes to ``prefer`` when it is tied, else
    to the alphabetically first, so the result never depends on order."""
    counts = Counter(str(v) for v in values if v not in (None, "", "None"))
    if not counts:
        return ""
    best = max(counts.values())
    tied = sorted(v for v, n in counts.items() if n == best)
    return prefer if prefer in tied else tied[0]


def cut_source(video: SourceVideo, store: StoreGeometry) -> list[_Clip | Skip]:
    """Cut one source video into clips at the stored geometry, in window order (run in a worker).

    Returns clips and skips ordered by window; a whole-source failure is one :class:`Skip` without
    ``start``. Never raises for a bad file."""
    def skip(reason: str, detail: str, start: float | None = None, label: str = "") -> Skip:
        return Skip(video.split, video.source_id, video.path, reason, detail, start, label or video.label)

    try:
        info = probe(video.path)
    except MediaError as exc:
        return [skip("undecodable", str(exc.__cause__ or exc))]
    if not info.has_video:
        return [skip("undecodable", "no video stream")]
    audio_path = video.audio
    if audio_path is None and not info.has_audio:
        companion = audio_companion(Path(video.path))
        if companion is None:
            return [skip("no_audio", "no audio stream")]
        audio_path = str(companion)
    duration = info.duration
    if duration is None or duration <= 0:
        duration = None
    try:
        audio = decode_audio(audio_path or video.path, store.sample_rate)
    except MediaError as exc:
        return [skip("undecodable", f"audio: {exc}")]
    if duration is None:
        duration = len(audio) / store.sample_rate
    # downloads are often a few ms short of their nominal length (a 10-s VGGSound clip of 9.98 s):
    # a window may end up to one stored frame after the video, whose last frame is then repeated
    tolerance = 1 / float(store.fps)
    whole = int(np.floor((duration + tolerance) / store.seconds + 1e-9))
    if whole < 1:
        return [skip("too_short", f"{duration:.3f} s, a clip is {store.seconds} s")]
    windows = range(whole) if video.windows is None else video.windows
    every = _decode_whole(video, store, whole, info)
    out: list[_Clip | Skip] = []
    video_label = _majority(e.get(video.label_key) for e in video.events) if video.label_key else video.label
    for k in windows:
        start = k * store.seconds
        end = start + store.seconds
        inside = [e for e in video.events if start <= float(e["time"]) < end]
        label = ((_majority((e.get(video.label_key) for e in inside), video_label) or video_label)
                 if video.label_key else video.label)
        if k >= whole:
            out.append(skip("too_short", f"window {start:g}-{end:g} s runs past the video's end ({duration:.3f} s)",
                            start, label))
            continue
        try:
            if every is not None:
                frames = every[k * store.num_frames:(k + 1) * store.num_frames]
            else:
                frames = _decode_window(video.path, store, start)
        except MediaError as exc:
            reason = "too_short" if "need" in str(exc) else "undecodable"
            out.append(skip(reason, f"window {start:g}-{end:g} s: {exc}", start, label))
            continue
        a0 = int(round(start * store.sample_rate))
        wave = audio[a0:a0 + store.num_samples]
        short = store.num_samples - wave.shape[0]
        if short > 0:
            if short > store.sample_rate / float(store.fps):  # more than one frame of audio missing
                out.append(skip("too_short", f"window {start:g}-{end:g} s: the audio ends at "
                                f"{len(audio) / store.sample_rate:.3f} s", start, label))
                continue
            wave = np.pad(wave, (0, short))
        if not np.isfinite(wave).all():
            out.append(skip("non_finite", f"window {start:g}-{end:g} s: audio has NaN or inf samples", start, label))
            continue
        if float(np.abs(wave).max(initial=0.0)) < SILENCE:
            out.append(skip("silent", f"window {start:g}-{end:g} s", start, label))
            continue
        caption = (video.window_captions or {}).get(k, video.caption)
        caption = caption.replace("{label}", label or "something") if "{label}" in caption else caption
        meta: dict[str, Any] = {"label": label, "caption": caption, "height": int(frames.shape[1]),
                                "width": int(frames.shape[2]), "source_path": video.path}
        if video.events or video.label_key:
            meta["events"] = [float(e["time"]) - start for e in inside]
            meta["event_labels"] = [{k2: v for k2, v in e.items() if k2 != "time"} for e in inside]
        mp4, flac = encode_clip(store, frames, wave.astype(np.float32), name=f"{video.source_id}@{start:g}s")
        out.append(_Clip(k, start, mp4, flac, meta))
    return out


def _decode_window(path: str, store: StoreGeometry, start: float) -> np.ndarray:
    """The ``store.num_frames`` frames of the window at ``start`` s; a window one frame longer than the
    video gets its last frame repeated (the tolerance of :func:`cut_source`).

    Raises:
        MediaError: undecodable, or more than one frame short (the message says ``need``).
    """
    try:
        frames, _ = decode_video(path, fps=store.fps, start=start, num_frames=store.num_frames, fit_to=store.frame_size)
        return frames
    except MediaError as exc:
        if "need" not in str(exc):
            raise
        frames, _ = decode_video(path, fps=store.fps, start=start, fit_to=store.frame_size)
        if store.num_frames - len(frames) > 1:
            raise
        return np.concatenate([frames, np.repeat(frames[-1:], store.num_frames - len(frames), axis=0)])


WHOLE_DECODE_BYTES = 512 << 20  # decode a source in one pass when its stored frames fit in this


def _decode_whole(video: SourceVideo, store: StoreGeometry, whole: int, info) -> np.ndarray | None:
    """Every window of ``video`` decoded in one pass (``(whole · F, H, W, 3)`` uint8), or None to
    decode window by window.

    One pass gives the same frames as one decode per window when the windows tile the stored frame
    grid (``seconds · fps`` a whole number of frames, windows 0, 1, 2, … from the start): frame ``j``
    of window ``k`` is then slot ``k·F + j`` of the whole video, placed by the same timestamp rule.
    It saves the seek back to the key frame before each window. Used when the frames fit in
    :data:`WHOLE_DECODE_BYTES`; a decode error falls back to per-window decoding, which then names
    the window that failed."""
    if video.windows is not None or Fraction(str(store.seconds)) * store.fps != store.num_frames or whole < 2:
        return None
    h, w = store.frame_size((info.height, info.width)) if info.height and info.width else (0, 0)
    if not h or whole * store.num_frames * h * w * 3 > WHOLE_DECODE_BYTES:
        return None
    try:
        frames, _ = decode_video(video.path, fps=store.fps, num_frames=whole * store.num_frames,
                                 fit_to=store.frame_size)
    except MediaError:
        return None
    return frames


def _cut(job: tuple[SourceVideo, StoreGeometry]) -> list[_Clip | Skip]:
    try:
        return cut_source(*job)
    except Exception as exc:  # a long prepare never dies on one file
        video = job[0]
        return [Skip(video.split, video.source_id, video.path, "undecodable", f"{type(exc).__name__}: {exc}",
                     None, video.label)]


# ------------------------------------------------------------------------------ writing a split
def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def _kill_hook(split: str, finished: int) -> bool:
    spec = os.environ.get(KILL_HOOK, "")
    if not spec:
        return False
    name, _, count = spec.partition(":")
    return name == split and count.isdigit() and finished == int(count)


class _SplitBuilder:
    """Shards of one split in ``<root>/.<split>.partial/``, resumable at shard boundaries (see the module doc)."""

    def __init__(self, root: Path, dataset: str, split: str, store: StoreGeometry, clips_per_shard: int,
                 digest: dict[str, Any]):
        self.root, self.dataset, self.split, self.store = root, dataset, split, store
        self.clips_per_shard = clips_per_shard
        self.folder = root / f".{split}.partial"
        self.records: list[dict] = []
        plan_file = self.folder / "plan.json"
        if self.folder.exists():
            try:
                same = json.loads(plan_file.read_text()) == digest
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:
                log.warning("%s: an interrupted prepare with another config; starting this split again", self.folder)
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not plan_file.exists():
            _write_json(plan_file, digest)
        index = 0
        while (self.folder / f"shard-{index:06d}.json").exists() and (self.folder / f"shard-{index:06d}.tar").exists():
            self.records.append(json.loads((self.folder / f"shard-{index:06d}.json").read_text()))
            index += 1
        for stray in self.folder.iterdir():  # the partial shard, and anything after it
            if stray.name == "plan.json" or stray.name in {f"shard-{i:06d}.{e}" for i in range(index)
                                                            for e in ("tar", "json")}:
                continue
            stray.unlink() if stray.is_file() else shutil.rmtree(stray)
        self.resumed = index
        # where this run starts: (source index, window) after the last finished shard
        self.resume_at = tuple(self.records[-1]["next"]) if self.records else (0, 0)
        self._tar = None
        self._keys: list[str] = []
        self._labels: Counter = Counter()
        self._skips: list[dict] = []

    def _open(self):
        if self._tar is None:
            name = f"shard-{len(self.records):06d}.tar"
            self._tar = TarShardWriter(self.folder / (name + ".tmp"))
        return self._tar

    def add_clip(self, video: SourceVideo, clip: _Clip, position: tuple[int, int]) -> None:
        key = clip_key(self.dataset, video.source_id, clip.start)
        record = {"dataset": self.dataset, "source_id": video.source_id, "start": float(clip.start),
                  "end": float(clip.start) + self.store.seconds, "split": self.split, "fps": fps_json(self.store.fps),
                  **clip.meta}
        self._open().write({"__key__": key, "mp4": clip.mp4, "flac": clip.flac, "json": json.dumps(record).encode()})
        self._keys.append(key)
        self._labels[record.get("label", "")] += 1
        if len(self._keys) == 1 and _kill_hook(self.split, len(self.records)):
            self._tar.close()  # the partial shard reaches the disk, as after a real crash mid-shard
            os.kill(os.getpid(), signal.SIGKILL)
        if len(self._keys) >= self.clips_per_shard:
            self.finish_shard((position[0], position[1] + 1))

    def add_skip(self, skip: Skip) -> None:
        self._skips.append(asdict(skip))

    def finish_shard(self, next_position: tuple[int, int]) -> None:
        """Close the open shard (if any) and record where the next one starts."""
        name = f"shard-{len(self.records):06d}"
        if self._tar is not None:
            self._tar.close()
            replace_synced(self.folder / f"{name}.tar.tmp", self.folder / f"{name}.tar")
        else:  # skipped clips after the last shard: an empty tar keeps the records contiguous
            TarShardWriter(self.folder / f"{name}.tar").close()
        record = {"clips": len(self._keys), "keys": self._keys, "labels": dict(self._labels),
                  "skipped": self._skips, "next": list(next_position)}
        _write_json(self.folder / f"{name}.json", record)
        self.records.append(record)
        self._tar, self._keys, self._labels, self._skips = None, [], Counter(), []

    def close(self, end: tuple[int, int], prepare: dict[str, Any], plan_skips: list[Skip], overwrite: bool
              ) -> dict[str, Any]:
        """Finish the split: manifest, per-split report, rename into place. Returns the split's report."""
        if self._tar is not None or self._skips:
            self.finish_shard(end)
        shards = [ShardInfo(f"shard-{i:06d}.tar", r["clips"]) for i, r in enumerate(self.records)]
        kept = [s for s in shards if s.clips > 0]
        for s in shards:
            if s.clips == 0:
                (self.folder / s.name).unlink()
        skipped = [s for r in self.records for s in r["skipped"]] + [asdict(s) for s in plan_skips]
        labels: Counter = Counter()
        for r in self.records:
            labels.update(r["labels"])
        report = split_report(self.split, sum(s.clips for s in kept), labels, skipped)
        manifest = Manifest(self.dataset, self.split, self.store, kept, prepare,
                            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        for extra in self.folder.glob("shard-*.json"):
            extra.unlink()
        (self.folder / "plan.json").unlink()
        _write_json(self.folder / REPORT, report)
        _write_json(self.folder / MANIFEST, manifest.to_json())
        final = self.root / self.split
        if final.exists():
            if not overwrite:  # checked before any work; a folder that appeared meanwhile is not replaced
                raise FileExistsError(f"{final} appeared while preparing; the new split is kept in {self.folder}")
            old = self.root / f".{self.split}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(self.folder, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.folder, final)
        return report


def split_report(split: str, clips: int, labels: Mapping[str, int], skipped: list[dict]) -> dict[str, Any]:
    """Counts of one split: clips written per label, clips / whole sources left out per reason and label."""
    by_reason = Counter(s["reason"] for s in skipped)
    by_label = Counter(s.get("label", "") for s in skipped)
    return {"split": split, "clips": clips, "clips_by_label": dict(sorted(labels.items())),
            "skipped": len(skipped), "skipped_sources": sum(1 for s in skipped if s.get("start") is None),
            "skipped_by_reason": dict(sorted(by_reason.items())), "skipped_by_label": dict(sorted(by_label.items())),
            "skipped_items": skipped}


# ------------------------------------------------------------------------------ the whole run
def command_line(command: str = "prepare") -> str:
    """The ``command`` as typed (its ``key=value`` arguments), for manifests and reports."""
    return " ".join([f"python -m avgen {command}"] + [shlex.quote(a) for a in sys.argv[1:]
                                                       if "=" in a and not a.startswith("command=")])


def run_plan(plan: Plan, root: str | Path, store: Mapping[str, Any] | StoreGeometry, *, clips_per_shard: int = 64,
             workers: int = 2, splits: Sequence[str] | None = None, overwrite: bool = False,
             progress: bool | None = None) -> dict[str, Any]:
    """Write the shards of ``plan`` under ``root`` and return the report (also ``<root>/prepare_report.json``).

    Args:
        plan: the source videos per split (from a dataset source).
        root: the dataset folder at this stored geometry (``data.root``).
        store: the stored geometry (``data.store``).
        clips_per_shard: clips per tar shard (the last one of a split may hold fewer).
        workers: processes cutting source videos (1: in this process).
        splits: only these splits (default: every split of the plan).
        overwrite: replace splits made with another config (otherwise that is an error, raised before any work).
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        FileExistsError: a split exists with another config (or a split folder without a manifest) and
            ``overwrite`` is false; with ``overwrite`` such splits are replaced, and those this config does
            not make are removed, only after the new splits are complete.
        ConfigError: a bad ``store``, ``clips_per_shard`` < 1 or ``workers`` < 1.
        PrepareError: a worker process died (e.g. out of memory); running the command again resumes.
    """

    try:
        store = StoreGeometry.from_config(store)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if clips_per_shard < 1:
        raise ConfigError(f"data.prepare.clips_per_shard={clips_per_shard}: expected >= 1")
    if workers < 1:
        raise ConfigError(f"data.prepare.workers={workers}: expected >= 1")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = {**plan.config, "store": store.to_dict(), "clips_per_shard": clips_per_shard}
    prepare = {"command": command_line(), "config": config}
    wanted = [s for s in SPLITS if s in plan.sources and (splits is None or s in splits)]
    todo: list[str] = []
    stale: list[str] = []
    for split in SPLITS:
        folder = root / split
        if folder.exists() and not (folder / MANIFEST).exists() and not overwrite:
            raise FileExistsError(f"{folder} exists but holds no {MANIFEST} (not made by prepare); move it away, or "
                                  f"pass overwrite=true to replace it")
        if split in plan.sources or (splits is not None and split not in splits) or not (folder / MANIFEST).exists():
            continue
        # a split this config does not make: left over from another config (e.g. an earlier seeded split)
        if Manifest.load(folder).prepare.get("config") != json.loads(json.dumps(config)):
            if not overwrite:
                raise FileExistsError(f"{folder} holds shards made with another config, and this config makes no "
                                      f"{split} split; pass overwrite=true to remove it, or choose another "
                                      f"paths.data_dir")
            stale.append(split)
    for split in wanted:
        manifest_path = root / split / MANIFEST
        if manifest_path.exists():
            existing = Manifest.load(root / split).prepare.get("config")
            if existing == json.loads(json.dumps(config)):
                log.info("%s is up to date", root / split)
                continue
            if not overwrite:
                raise FileExistsError(f"{root / split} holds shards made with another config; pass overwrite=true to "
                                      f"replace them, or choose another paths.data_dir")
        todo.append(split)
    plan_skips: dict[str, list[Skip]] = {}
    for s in plan.skipped:
        plan_skips.setdefault(s.split, []).append(s)
    for note in plan.notes:
        log.info("%s", note)
    total = sum(len(plan.sources[s]) for s in todo)
    bar = _Bar(total, progress)
    try:
        builders: dict[str, _SplitBuilder] = {}
        jobs: list[tuple[str, int]] = []  # (split, source index): one job queue for every split,
        for split in todo:                 # so no worker idles at a split boundary
            videos = plan.sources[split]
            digest = {"config": json.loads(json.dumps(config)), "sources": [v.source_id for v in videos]}
            builders[split] = builder = _SplitBuilder(root, plan.dataset, split, store, clips_per_shard, digest)
            first = builder.resume_at[0]
            if builder.resumed:
                log.info("%s: resuming after %d finished shard(s), at source %d of %d", split, builder.resumed,
                         first, len(videos))
            bar.update(first)
            jobs += [(split, i) for i in range(first, len(videos))]
        left = Counter(split for split, _ in jobs)
        for split in todo:
            if not left[split]:
                _close_split(builders[split], plan, plan_skips, prepare, overwrite, root)
        cut_jobs = [(plan.sources[split][i], store) for split, i in jobs]
        if workers > 1 and len(cut_jobs) > 1:
            from avgen.parallel import ordered_map

            results = ordered_map(_cut, cut_jobs, workers)
        else:
            results = map(_cut, cut_jobs)
        for (split, index), result in zip(jobs, _guard(results)):
            builder = builders[split]
            first, first_window = builder.resume_at
            video = plan.sources[split][index]
            for item in result:
                resumed_source = index == first and first_window > 0
                if isinstance(item, Skip):
                    if resumed_source and (item.start is None or round(item.start / store.seconds) < first_window):
                        continue  # reported before the interruption
                    builder.add_skip(item)
                    bar.skipped += 1
                else:
                    if resumed_source and item.window < first_window:
                        continue  # written before the interruption
                    builder.add_clip(video, item, (index, item.window))
                    bar.clips += 1
            bar.update(1)
            left[split] -= 1
            if not left[split]:
                _close_split(builder, plan, plan_skips, prepare, overwrite, root)
    finally:
        bar.close()
    for split in stale:
        old = root / f".{split}.old-{os.getpid()}"
        os.replace(root / split, old)
        shutil.rmtree(old, ignore_errors=True)
        log.info("%s: removed (made with another config, which had a %s split)", root / split, split)
    report = write_report(root, plan, store, config)
    if not any(report["splits"].get(s, {}).get("clips") for s in wanted):
        raise NothingProduced(f"prepare {plan.dataset}: no clip could be made from {plan.source}; the reasons are in "
                              f"{root / REPORT}")
    return report


def _guard(results: Iterator) -> Iterator:
    """Results of the worker processes; a worker that died becomes a :class:`PrepareError` saying how to resume."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield from results
    except BrokenProcessPool as exc:
        raise PrepareError("a prepare worker process died (killed, or out of memory: lower data.prepare.workers or "
                           "data.store); the finished shards are kept: run the same command again to resume") from exc


def _close_split(builder: "_SplitBuilder", plan: Plan, plan_skips: dict[str, list[Skip]], prepare: dict[str, Any],
                 overwrite: bool, root: Path) -> None:
    if builder.split in plan.lists:  # the split's list: how many of its clips are present, and its hash
        prepare = {**prepare, "list": plan.lists[builder.split]}
    report = builder.close((len(plan.sources[builder.split]), 0), prepare, plan_skips.get(builder.split, []),
                           overwrite)
    log.info("%s/%s: %d clips, %d left out (%s)", root, builder.split, report["clips"], report["skipped"],
             ", ".join(f"{k}: {n}" for k, n in report["skipped_by_reason"].items()) or "none")


def write_report(root: Path, plan: Plan, store: StoreGeometry, config: dict[str, Any]) -> dict[str, Any]:
    """``<root>/prepare_report.json``: every split's counts and left-out clips (from the split folders), and
    the files left out while planning that belong to no split made (``split`` empty when unknown)."""
    splits = {}
    for split in SPLITS:
        path = root / split / REPORT
        if path.exists():
            splits[split] = json.loads(path.read_text())
    skipped = [item for s in splits.values() for item in s["skipped_items"]]
    # left out while planning, in no split made here (unlisted files, split-file entries of a split without videos)
    skipped += [asdict(s) for s in plan.skipped if s.split not in splits]
    report = {
        "format": REPORT_FORMAT, "dataset": plan.dataset, "source": plan.source, "store": store.to_dict(),
        "command": command_line(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "clips": sum(s["clips"] for s in splits.values()), "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "reasons": REASONS,
        "splits": {k: {kk: vv for kk, vv in v.items() if kk != "skipped_items"} for k, v in splits.items()},
        "skipped_items": skipped, "notes": plan.notes, "config": config,
    }
    if plan.lists:
        report["lists"] = plan.lists
    _write_json(root / REPORT, report)
    return report


class _Bar:
    """tqdm over source videos with the clips written and left out; silent when disabled."""

    def __init__(self, total: int, enabled: bool | None):
        from tqdm import tqdm

        self.clips = self.skipped = 0
        self._bar = tqdm(total=total, unit="video", desc="prepare", file=sys.stderr, disable=enabled is False or
                         (enabled is None and not sys.stderr.isatty()), dynamic_ncols=True)

    def update(self, n: int) -> None:
        if n:
            self._bar.set_postfix(clips=self.clips, left_out=self.skipped, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
