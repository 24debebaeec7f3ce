"""What the generating systems share: prompts from a prepared dataset, AV-Align of generated clips,
sending sounding videos to the loggers, and writing them to files."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
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
    from avgen.metrics.av_align import align_clip

    frames = to_uint8_frames(video)
    waves = audio.detach().cpu().float().numpy()
    totals: dict[str, list[float]] = {}
    for f, w in zip(frames, waves):
        result = align_clip(f, clip["fps"], w, clip["sample_rate"])
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
                    logger.experiment.add_video(f"val/sample_{i}", video, step, fps=int(fps))
        except Exception as exc:  # media logging is a convenience; the mp4s are on disk regardless
            log.warning("could not log validation samples to %s (%s); they are in %s", name, exc,
                        Path(paths[0]).parent if paths else "?")



def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(B, F, 3, H, W) in [-1, 1] → uint8 (B, F, H, W, 3)."""
    frames = ((video.detach().cpu().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return frames.permute(0, 1, 3, 4, 2).numpy()


def write_sounding_videos(out_dir: Path, prompts: Sequence[str], video: torch.Tensor, audio: torch.Tensor,
                          clip: Mapping[str, Any], *, overwrite: bool, first: int = 0,
                          sources: Sequence[str | None] | None = None) -> list[Path]:
    """``sample_NNNN.mp4`` (video + audio), ``.wav``, ``.txt`` (the prompt) and ``.json`` per clip.

    video (B, F, 3, H, W) and audio (B, S) in [-1, 1], at ``clip["fps"]`` and ``clip["sample_rate"]``.
    The json holds the prompt and ``source``: the key of the data clip the sample was made from (its
    caption or its audio), or the input file, or null. ``evaluate`` pairs a sample with its reference
    clip in a shard split by that key (``kl``).
    """
    from avgen.media import write_bytes_atomic, write_mp4, write_wav

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = to_uint8_frames(video)
    waves = audio.detach().cpu().float().numpy()
    paths = []
    for i, text in enumerate(prompts):
        stem = out_dir / f"sample_{first + i:04d}"
        paths.append(write_mp4(stem.with_suffix(".mp4"), frames[i], clip["fps"], audio=waves[i],
                               sample_rate=clip["sample_rate"], overwrite=overwrite))
        write_wav(stem.with_suffix(".wav"), waves[i], clip["sample_rate"], overwrite=overwrite)
        write_bytes_atomic(stem.with_suffix(".txt"), text.encode(), overwrite=overwrite)
        meta = {"prompt": text, "source": sources[i] if sources else None}
        write_bytes_atomic(stem.with_suffix(".json"), json.dumps(meta, indent=1).encode(), overwrite=overwrite)
    return paths


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
    existing = [p for i in range(count) for p in Path(out_dir).glob(f"sample_{i:04d}.*")]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds samples ({existing[0].name}, ...); pass "
                              f"sample.overwrite=true to replace them, or choose another run folder")
