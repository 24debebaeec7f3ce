"""What the generating systems share: prompts from a prepared dataset, AV-Align of generated clips,
sending sounding videos to the loggers, and writing them to files."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def av_align_scores(video: torch.Tensor, audio: torch.Tensor, clip: Mapping[str, Any]) -> dict[str, float]:
    """Mean AV-Align (official and pr variants) of generated clips; video (B, F, 3, H, W) in [-1, 1]."""
    from avgen.media import as_fps
    from avgen.metrics.av_align import align_clip

    frames = to_uint8_frames(video)
    waves = audio.detach().cpu().float().numpy()
    totals: dict[str, list[float]] = {}
    for f, w in zip(frames, waves):
        result = align_clip(f, float(as_fps(clip["fps"])), w, clip["sample_rate"])
        for variant, value in result.scores.items():
            totals.setdefault(variant, []).append(value)
    return {k: float(np.mean(v)) for k, v in totals.items()}


def log_sounding_videos(loggers: Sequence[Any], paths: Sequence[Path], clip: Mapping[str, Any], step: int) -> None:
    """Send validation samples to the loggers that can show media (TensorBoard audio, wandb video)."""
    from avgen.metrics.av_align import load_av

    for logger in loggers:
        name = type(logger).__name__
        try:
            if name == "WandbLogger":
                logger.log_video("val/samples", videos=[str(p) for p in paths], step=step)
            elif name == "TensorBoardLogger":
                for i, path in enumerate(paths):
                    frames, fps, audio, rate = load_av(path)
                    logger.experiment.add_audio(f"val/sample_{i}", torch.from_numpy(audio)[None], step, rate)
                    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]
                    logger.experiment.add_video(f"val/sample_{i}", video, step, fps=float(fps))
        except Exception as exc:  # media logging is a convenience; the mp4s are on disk regardless
            log.warning("could not log validation samples to %s (%s); they are in %s", name, exc,
                        Path(paths[0]).parent if paths else "?")



def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(B, F, 3, H, W) in [-1, 1] → uint8 (B, F, H, W, 3)."""
    frames = ((video.detach().cpu().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return frames.permute(0, 1, 3, 4, 2).numpy()


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
                          clip: Mapping[str, Any], *, overwrite: bool, first: int = 0,
                          sources: Sequence[str | None] | None = None) -> SampleReport:
    """``sample_NNNN.mp4`` (video + audio), ``.wav``, ``.txt`` (the prompt) and ``.json`` per clip,
    NNNN = ``first + i`` for clip i.

    video (B, F, 3, H, W) and audio (B, S) in [-1, 1], at ``clip["fps"]`` and ``clip["sample_rate"]``.
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
    from avgen.media import MediaError, check_finite, write_bytes_atomic, write_mp4, write_wav

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
            done.append(write_mp4(mp4, to_uint8_frames(frames[None])[0], clip["fps"], audio=wave,
                                  sample_rate=clip["sample_rate"], overwrite=overwrite))
            done.append(write_wav(wav, wave, clip["sample_rate"], overwrite=overwrite))
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
