"""Turning one shard sample (raw tar members) into a training clip, and clips into a batch.

Decoding happens in the DataLoader workers; the uint8 → float conversion of the frames happens
on the device (``AVDataModule.on_after_batch_transfer``), which keeps worker→main transfers and
host→device copies four times smaller.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from avgen.data.geometry import ClipGeometry
from avgen.media import MediaError, decode_flac, decode_video


class SampleError(RuntimeError):
    """One clip cannot be used; the message names the clip key and the shard."""


def decode_sample(sample: dict[str, Any], clip: ClipGeometry, rng: np.random.Generator | None) -> dict[str, Any]:
    """Decode a raw sample into a clip of geometry ``clip``.

    ``rng`` set (training): random temporal window and random spatial crop; ``rng=None``
    (evaluation): the window starts at 0 and the crop is centred.

    Returns ``video`` (F, H, W, 3) uint8, ``audio`` (S,) float32, ``caption``, ``label``, ``key``,
    ``events`` (onset seconds relative to the window start, inside the window).
    """
    key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
    missing = [m for m in ("mp4", "flac", "json") if m not in sample]
    if missing:
        raise SampleError(f"clip {key} in {url}: missing member(s) {missing}")
    try:
        meta = json.loads(sample["json"])
        stored_frames = int(round((float(meta["end"]) - float(meta["start"])) * int(meta["fps"])))
        if int(meta["fps"]) != clip.fps:
            raise SampleError(f"clip {key} in {url}: stored at {meta['fps']} fps, config asks for {clip.fps}")
        start = 0
        if rng is not None and stored_frames > clip.num_frames:
            start = int(rng.integers(0, stored_frames - clip.num_frames + 1))
        frames, _ = decode_video(sample["mp4"], start_frame=start, max_frames=clip.num_frames,
                                 resize_to=(clip.height, clip.width))
        audio, sr = decode_flac(sample["flac"])
    except (MediaError, KeyError, ValueError, TypeError) as exc:
        raise SampleError(f"clip {key} in {url}: {exc}") from exc
    if frames.shape[0] < clip.num_frames:
        raise SampleError(f"clip {key} in {url}: {frames.shape[0]} frames, need {clip.num_frames}")
    if sr != clip.sample_rate:
        raise SampleError(f"clip {key} in {url}: audio at {sr} Hz, config asks for {clip.sample_rate}")
    offset_s = start / clip.fps
    a0 = int(round(offset_s * sr))
    audio = audio[a0:a0 + clip.num_samples]
    if audio.shape[0] < clip.num_samples:
        # flac holds exactly seconds * sample_rate samples; tolerate a few samples of rounding.
        if clip.num_samples - audio.shape[0] > sr // clip.fps:
            raise SampleError(f"clip {key} in {url}: {audio.shape[0]} audio samples, need {clip.num_samples}")
        audio = np.pad(audio, (0, clip.num_samples - audio.shape[0]))
    frames = _crop(frames, clip.height, clip.width, rng)
    events = np.asarray(meta.get("events") or [], dtype=np.float32) - offset_s
    events = events[(events >= 0) & (events < clip.seconds)]
    return {
        "video": frames, "audio": audio.astype(np.float32, copy=False),
        "caption": str(meta.get("caption", "")), "label": str(meta.get("label", "")),
        "key": key, "events": events,
    }


def _crop(frames: np.ndarray, h: int, w: int, rng: np.random.Generator | None) -> np.ndarray:
    fh, fw = frames.shape[1:3]
    if rng is None:
        y, x = (fh - h) // 2, (fw - w) // 2
    else:
        y, x = int(rng.integers(0, fh - h + 1)), int(rng.integers(0, fw - w + 1))
    return np.ascontiguousarray(frames[:, y:y + h, x:x + w])


def collate(clips: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded clips: ``video`` (B, F, H, W, 3) uint8 (converted on the device), ``audio`` (B, S)."""
    return {
        "video": torch.from_numpy(np.stack([c["video"] for c in clips])),
        "audio": torch.from_numpy(np.stack([c["audio"] for c in clips])),
        "caption": [c["caption"] for c in clips],
        "label": [c["label"] for c in clips],
        "key": [c["key"] for c in clips],
        "events": [torch.from_numpy(c["events"]) for c in clips],
    }


def to_model_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Loader batch → the batch contract: ``video`` float (B, F, 3, H, W) in [-1, 1]."""
    video = batch["video"]
    if video.dtype == torch.uint8:
        batch = dict(batch)
        batch["video"] = video.permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)
    return batch
