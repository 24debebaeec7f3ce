"""The sample-folder format, in one place: what ``sample`` writes and ``evaluate`` / ``filter`` read.

A folder of samples holds, per clip, ``<stem>.mp4`` (video with its sound, or silent with
``<stem>.wav`` beside it), ``<stem>.wav``, ``<stem>.txt`` (the prompt, the CLIPSIM/CLAP text) and
``<stem>.json`` (``prompt``, and ``source``: the key of the data clip it was made from, which ``kl``
pairs it with). This module writes such folders (:func:`write_sounding_videos`), finds and reads
their clips, prompts and source keys (:func:`find_clips`, :func:`load_clips`, :func:`clip_prompt`,
:func:`sample_source`), exports a prepared shard split in the same format
(:func:`export_split_clips`) and reads prompts from a prepared dataset (:func:`split_captions`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from avgen.errors import ConfigError
from avgen.media.core import MediaError, frame_count

if TYPE_CHECKING:
    import numpy as np
    import torch

    from avgen.data.geometry import ClipGeometry
    from avgen.media import Clip, MediaFolder

log = logging.getLogger("avgen")


def split_samples(root: str | None, n: int, splits: Sequence[str] = ("test", "val", "train")
                  ) -> list[tuple[str, dict[str, bytes]]]:
    """The first ``n`` samples (key, {extension: bytes}) of a prepared dataset, from the first split of
    ``splits`` that has shards; read straight from the tar files (no decoding pipeline needed)."""
    from avgen.data.shards import MANIFEST, read_split_samples

    if not root:
        return []
    for split in splits:
        folder = Path(root) / split
        if (folder / MANIFEST).is_file():
            samples = list(itertools.islice(read_split_samples(folder), n))
            if samples:
                return samples
    return []


def clip_caption(parts: Mapping[str, bytes]) -> str:
    """A sample's caption (or label) from its json."""
    meta = json.loads(parts.get("json", b"{}"))
    return meta.get("caption") or meta.get("label") or ""


def split_captions(root: str | None, n: int) -> list[tuple[str, str]]:
    """The first ``n`` (key, caption) of a prepared dataset (test, else val, else train split)."""
    return [(key, clip_caption(parts)) for key, parts in split_samples(root, n)]


def sample_name(index: int) -> str:
    """The stem of the ``index``-th sample's files: ``sample_0003``."""
    return f"sample_{index:04d}"


# what write_sounding_videos writes per sample; the mp4 first, as the one file that stands for the sample
SAMPLE_SUFFIXES = (".mp4", ".wav", ".txt", ".json")


@dataclass
class SampleReport:
    """What a sampling run produced; the ``sample`` command writes it as the run's ``samples.json``.

    ``written``: the mp4 of every sample written, in sample order; ``refused``: ``{"file", "reason"}``
    for each input refused before any model ran (undecodable, NaN/inf, too short, not media);
    ``failed``: ``{"sample", "reason"}`` for each generated sample that was not written (non-finite
    model output, encoder or disk error). Every input and every sample is in exactly one list.
    """

    written: list[Path] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def extend(self, other: SampleReport) -> None:
        self.written += other.written
        self.refused += other.refused
        self.failed += other.failed

    def to_json(self) -> dict[str, list]:
        return {"written": [p.stem for p in self.written], "refused": self.refused, "failed": self.failed}


def write_sounding_videos(out_dir: Path, prompts: Sequence[str], video: torch.Tensor, audio: torch.Tensor,
                          clip: ClipGeometry, *, overwrite: bool, first: int = 0,
                          sources: Sequence[str | None] | None = None) -> SampleReport:
    """``sample_NNNN.mp4`` (video + audio), ``.wav``, ``.txt`` (the prompt) and ``.json`` per clip,
    NNNN = ``first + i`` for clip i.

    video (B, F, 3, H, W) and audio (B, S) in [-1, 1], at ``clip.fps`` and ``clip.sample_rate``
    (a :class:`~avgen.data.geometry.ClipGeometry`).
    The json holds the prompt and ``source``: the key of the data clip the sample was made from (its
    caption or its audio), or the input file, or null. ``evaluate`` pairs a sample with its reference
    clip in a shard split by that key (``kl``).

    A sample is written whole or not at all, and one that fails never stops the others: its float
    video and audio are checked for NaN/inf before any conversion (the uint8 cast would turn a NaN
    video into arbitrary pixels), and a write error (:class:`~avgen.media.MediaError`, ``OSError``:
    encoder, disk full) removes the files of that sample written so far (with ``overwrite``, also
    the ones of an earlier run it was replacing). Returns the written mp4s and, in ``failed``, each
    lost sample's name and reason (also logged as a warning).
    """
    from avgen.media import MediaError, check_finite, unit_range_to_uint8, write_bytes_atomic, write_mp4, write_wav

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = SampleReport()
    for i, text in enumerate(prompts):
        name = sample_name(first + i)
        mp4, wav, txt, meta = (out_dir / f"{name}{suffix}" for suffix in SAMPLE_SUFFIXES)
        done: list[Path] = []
        try:
            frames = video[i].detach().cpu().float()
            wave = audio[i].detach().cpu().float().numpy()
            check_finite(frames.numpy(), name, what="video")
            check_finite(wave, name)
            done.append(write_mp4(mp4, unit_range_to_uint8(frames), clip.fps, audio=wave,
                                  sample_rate=clip.sample_rate, overwrite=overwrite))
            done.append(write_wav(wav, wave, clip.sample_rate, overwrite=overwrite))
            done.append(write_bytes_atomic(txt, text.encode(), overwrite=overwrite))
            info = {"prompt": text, "source": sources[i] if sources else None}
            done.append(write_bytes_atomic(meta, json.dumps(info, indent=1).encode(), overwrite=overwrite))
        except (MediaError, OSError) as exc:
            for path in ((mp4, wav, txt, meta) if overwrite else done):
                path.unlink(missing_ok=True)
            reason = str(exc).removeprefix(f"{name}: ")
            log.warning("%s not written: %s", name, reason)
            report.failed.append({"sample": name, "reason": reason})
        else:
            report.written.append(mp4)
    return report


def sample_source(path: Path) -> str | None:
    """The ``source`` recorded in ``<stem>.json`` beside a sample written by :func:`write_sounding_videos`."""
    meta = Path(path).with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("source")
    except (ValueError, AttributeError):
        return None


def refuse_existing(out_dir: Path, count: int, overwrite: bool) -> None:
    """Stop before generating when ``out_dir`` already holds ``sample_NNNN.*`` files that would be replaced."""
    existing = [p for i in range(count) for p in Path(out_dir).glob(f"{sample_name(i)}.*")]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds samples ({existing[0].name}, ...); pass "
                              f"sample.overwrite=true to replace them, or choose another run folder")


def export_concat_test(datamodule, out_dir: str | Path, overwrite: bool = False) -> SampleReport:
    """VTA-LDM's concatenated test set (``data.concat_test``, :class:`avgen.data.concat.ConcatTest`) as a sample
    folder: the joined clips of ``datamodule``'s test loader (an :class:`~avgen.data.datamodule.AVDataModule`
    set up for ``test``, one process), in the set's order, written by :func:`write_sounding_videos`
    (``sample_NNNN.mp4`` with the joined audio, ``.wav``, ``.txt`` the joined caption, ``.json`` ``source``: the
    joined key ``<key>+<partner key>@<cut frame>``). ``sample.video=<out_dir>`` dubs them and
    ``evaluate.ref_dir=<out_dir>`` scores against them (same stems).

    Raises:
        FileExistsError: ``out_dir`` holds samples and ``overwrite`` is false (before anything is written).
    """
    pairs = datamodule.concat_set()[0]
    refuse_existing(Path(out_dir), len(pairs), overwrite)
    report = SampleReport()
    for batch in datamodule.test_dataloader():
        batch = datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(batch, 0), 0)
        report.extend(write_sounding_videos(Path(out_dir), batch["caption"], batch["video"], batch["audio"],
                                            datamodule.clip, overwrite=True, first=len(report.written + report.failed),
                                            sources=batch["key"]))
    return report


def export_split_clips(split_dir: str | Path, out_dir: str | Path) -> Path:
    """The clips of a prepared shard split as files ``evaluate`` reads, in manifest order: for each sample
    ``<key with / as __>.mp4`` (the stored video bytes, not re-encoded), ``.wav`` (its flac audio,
    lossless), ``.txt`` (its caption or label, the CLIPSIM/CLAP prompt) and ``.json`` (``source``: its
    key, so ``kl`` against the same split pairs each clip with itself; its ``label`` and ``events`` when it has
    them, for ``per_label.csv`` and the onset scores). Scoring the data itself gives the
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
        meta = json.loads(parts.get("json", b"{}"))
        if prompt == "label":
            caption = meta.get("label") or caption
        write_bytes_atomic(stem.with_suffix(".txt"), caption.encode(), overwrite=True)
        known = {k: meta[k] for k in ("label", "events") if k in meta}  # per_label.csv, onset_acc / onset_ap
        write_bytes_atomic(stem.with_suffix(".json"), json.dumps({"prompt": caption, "source": key, **known}).encode(),
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


AUDIO_SOURCES = ("stream", "file")  # ``evaluate.audio``: see :func:`load_clips`


def load_clips(paths: list[Path], failures: list[dict], threads: int = 0, audio: str = "stream"
               ) -> Iterator[tuple[str, Clip]]:
    """(file name, :class:`~avgen.media.Clip`) of each clip in order, decoded as everywhere in avgen
    (:func:`avgen.media.read_clip`: frames upright, placed by their timestamps at the clip's own rate);
    unreadable clips go to ``failures``. ``audio`` (``evaluate.audio``): ``stream`` takes the clip's own audio
    stream, else the audio file of its stem beside it; ``file`` takes that file (``<stem>.wav``, ``.flac``, …: the
    raw generated audio the ``sample`` command writes beside each mp4, which av-benchmark scores) when there is
    one, else the stream: the mp4's AAC stream is lossy and carries encoder padding (2.048 s for 2 s of audio).
    ``threads`` decode ahead of the consumer (PyAV releases the GIL
    while decoding), so the feature extractors do not wait on the decoder; at most ``2 * threads`` decoded
    clips are held."""
    from concurrent.futures import ThreadPoolExecutor

    from avgen.media import audio_companion, read_clip

    if audio not in AUDIO_SOURCES:
        raise ValueError(f"audio={audio!r}: expected one of {AUDIO_SOURCES}")

    def load(path: Path):
        try:
            return read_clip(path, audio=audio_companion(path) if audio == "file" else None)
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


def clip_prompt(path: Path, default: str | None) -> str | None:
    """The prompt a clip was generated from: ``<stem>.txt`` beside it, else ``default``."""
    txt = path.with_suffix(".txt")
    return txt.read_text().strip() if txt.is_file() else default


# ------------------------------------------------------------------------------ video-to-audio inputs
def read_video_inputs(video: str | None, n: int, scratch: Path, clip: ClipGeometry, data_root: str | None
                      ) -> tuple[list[VideoInput], list[dict[str, str]]]:
    """The inputs of a video-to-audio ``sample`` (``sample.video``: a file or a folder of files of any container;
    unset: the first ``n`` clips of the prepared dataset at ``data_root``, written to ``scratch`` first), each
    decoded at ``clip``'s rate and size before any model runs; refused ones as ``{"file", "reason"}``.

    Raises:
        ConfigError: no such file or folder, an empty folder, or no readable data clips; naming ``sample.video``.
    """
    from avgen.media import scan_media

    if video is None:
        samples = split_samples(data_root, n)
        if not samples:
            raise ConfigError("sample.video is not set and the training data's test clips cannot be read; pass "
                              "sample.video=<video file (any container), or a folder of them>")
        files = []
        for key, parts in samples:
            path = scratch / f"{key.replace('/', '__')}.mp4"
            path.write_bytes(parts["mp4"])
            files.append((path, key, clip_caption(parts)))
        skipped: list[tuple[Path, str]] = []
    else:
        source = Path(video)
        if source.is_dir():
            found = scan_media(source, "video")
            if not found.files and not found.skipped:
                raise ConfigError(f"sample.video={video}: the folder is empty")
            files = [(p, str(p.resolve()), sidecar_caption(p)) for p in found.files]
            skipped = found.skipped
        elif source.is_file():
            files, skipped = [(source, str(source.resolve()), sidecar_caption(source))], []
        else:
            raise ConfigError(f"sample.video={video}: no such file or folder")
    stems = [p.stem for p, _, _ in files]
    usable, refused = [], [{"file": p.name, "reason": r} for p, r in skipped]
    for path, key, caption in files:
        stem = path.stem if stems.count(path.stem) == 1 else path.name.replace(".", "_")
        try:
            usable.append(VideoInput.read(path, key, caption, stem, clip))
        except MediaError as exc:
            refused.append({"file": path.name, "reason": " ".join(str(exc).split())})
    return usable, sorted(refused, key=lambda entry: entry["file"])


def sidecar_caption(path: Path) -> str:
    """The caption in ``<stem>.txt`` beside a media file (another system's sample: its prompt), or ``""``."""
    text = Path(path).with_suffix(".txt")
    try:
        return text.read_text(encoding="utf-8").strip() if text.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return ""


def window_overlap(clip: ClipGeometry) -> int:
    """Samples two generation windows share: 1 s (VTA-LDM's 10-s clips), at most a quarter of a clip."""
    return min(clip.sample_rate, clip.num_samples // 4)


@dataclass
class VideoInput:
    """One input of :meth:`VTALDM.sample_to_files`: its frames (F, H, W, 3) uint8 at ``clip.fps`` from the
    video stream's start, the audio length that covers the stream (samples), and the generation windows."""

    path: Path
    source: str
    caption: str
    stem: str
    frames: np.ndarray
    num_samples: int
    windows: list[tuple[int, int]]

    @classmethod
    def read(cls, path: Path, source: str, caption: str, stem: str, clip: ClipGeometry) -> "VideoInput":
        """Decode ``path`` (raises :class:`~avgen.media.MediaError` when it cannot be read)."""
        from avgen.media import crossfade_windows, decode_video, video_stream_duration

        duration = video_stream_duration(path)
        num_samples = frame_count(duration, clip.sample_rate)
        if num_samples < 1:
            raise MediaError(f"{path}: the video stream lasts {float(duration):.3f} s; nothing to generate")
        frames, _ = decode_video(path, fps=clip.fps, fit_to=(clip.height, clip.width))
        windows = crossfade_windows(num_samples, clip.num_samples, window_overlap(clip))
        return cls(path=path, source=source, caption=caption, stem=stem, frames=frames, num_samples=num_samples,
                   windows=windows)

    def outputs(self, out_dir: Path) -> list[Path]:
        """``<stem>.mp4``, ``.wav``, ``.txt``, ``.json`` in ``out_dir``."""
        return [out_dir / f"{self.stem}{suffix}" for suffix in (".mp4", ".wav", ".txt", ".json")]

    def window_frames(self, start: int, end: int, clip: ClipGeometry) -> np.ndarray:
        """The frames (F_w, H, W, 3) uint8 the window of samples [start, end) is conditioned on: at
        ``clip.fps`` from the window's own start, ``frame_count((end − start) / sr, fps)`` of them (at least
        one). A window that starts on the frame grid takes them from :attr:`frames`; any other (the
        end-aligned last window) is decoded from its start, so its frames and its audio share one clock."""
        from avgen.media import decode_video

        want = max(1, frame_count(Fraction(end - start, clip.sample_rate), clip.fps))
        slot = Fraction(start, clip.sample_rate) * clip.fps
        if slot.denominator == 1:
            first = min(int(slot), len(self.frames) - 1)
            return self.frames[first:first + want]
        frames, _ = decode_video(self.path, fps=clip.fps, start=start / clip.sample_rate,
                                 fit_to=(clip.height, clip.width))
        return frames[:want] if len(frames) else self.frames[-1:]


def refuse_existing_dubs(inputs: Sequence[VideoInput], out_dir: Path, overwrite: bool,
                         extra: Callable[[VideoInput], list[Path]] | None = None) -> None:
    """Before any model runs: stop when an output of ``inputs`` (:meth:`VideoInput.outputs`, plus ``extra(item)``)
    exists in ``out_dir`` and ``overwrite`` is false.

    Raises:
        FileExistsError: naming the first existing output and ``sample.overwrite=true``.
    """
    existing = [p for item in inputs for p in item.outputs(out_dir) + (extra(item) if extra else []) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass sample.overwrite=true to replace the samples, or choose "
                              f"another run folder")


def write_dubbed(out_dir: Path, item: VideoInput, wave: np.ndarray, sample_rate: int, caption: str,
                 generation: Mapping[str, object], overwrite: bool) -> SampleReport:
    """``<stem>.mp4/.wav/.txt/.json`` of one video-to-audio input (:meth:`VideoInput.outputs`), whole or not at all.

    ``wave`` (S,) float32 in [-1, 1] at ``sample_rate`` Hz is the audio generated for ``item``; the mp4 is the input's
    video stream with it (:func:`avgen.media.dub_video`: copied when its codec fits mp4, else h264), the txt the
    caption used, the json the source, the caption, how the video was carried, the windows (seconds) and
    ``generation`` (the sampler settings and the seed of the first window). A failure removes the files of this input
    written so far (with ``overwrite``, also the earlier ones it was replacing) and is returned in ``failed``; the
    caller's other inputs go on. Shared by VTA-LDM's and the joint model's ``sample.video``.
    """
    from avgen.media import dub_video, write_bytes_atomic, write_wav

    paths = item.outputs(out_dir)
    done: list[Path] = []
    try:
        info = dub_video(item.path, wave, sample_rate, paths[0], overwrite=overwrite)
        done.append(paths[0])
        done.append(write_wav(paths[1], wave, sample_rate, overwrite=overwrite))
        done.append(write_bytes_atomic(paths[2], caption.encode(), overwrite=overwrite))
        meta = {"source": item.source, "prompt": caption, "dub": {**info.to_json(), "path": paths[0].name},
                "windows_s": [[s / sample_rate, e / sample_rate] for s, e in item.windows],
                "generation": dict(generation)}
        done.append(write_bytes_atomic(paths[3], json.dumps(meta, indent=1).encode(), overwrite=overwrite))
    except (MediaError, OSError) as exc:
        for path in (paths if overwrite else done):
            path.unlink(missing_ok=True)
        reason = " ".join(str(exc).split())
        log.warning("%s not written: %s", item.stem, reason)
        return SampleReport(failed=[{"sample": item.stem, "reason": reason}])
    return SampleReport(written=[paths[0]])
