"""Turning one shard sample (raw tar members) into a training clip, and clips into a batch.

Decoding happens in the DataLoader workers; the uint8 → float conversion of the frames happens
on the device (``AVDataModule.on_after_batch_transfer``), which keeps worker→main transfers and
host→device copies four times smaller.
"""

from __future__ import annotations

import json
from typing import Any, Collection

import numpy as np
import torch

from avgen.data.geometry import ClipGeometry
from avgen.media import MediaError, as_fps, centre_origin, decode_flac, decode_video, fps_text, frame_count


class SampleError(RuntimeError):
    """One clip cannot be used; the message names the clip key and the shard."""


def decode_sample(sample: dict[str, Any], clip: ClipGeometry, rng: np.random.Generator | None,
                  out: np.ndarray | None = None, skip: Collection[str] = ()) -> dict[str, Any]:
    """Decode a raw sample into a clip of geometry ``clip``.

    ``rng`` set (training): random temporal window, starting a whole number ``k`` of frames into
    the stored clip (``k / fps`` s, exact rational), and random spatial crop; ``rng=None``
    (evaluation): the window starts at 0 and the crop is centred. ``out``: a ``(F, H, W, 3)``
    uint8 array (a slot of the batch) the frames are decoded into.

    ``skip``: modalities not decoded (nor required: audio-only shards qualify for ``{"video"}``): ``video`` is
    then (0, H, W, 3) (``data.audio_only``; the cached ones with ``data.features``), ``audio`` (0,); the window is
    drawn as it would be.

    Returns ``video`` (F, H, W, 3) uint8, ``audio`` (S,) float32, ``caption``, ``label``, ``key``,
    ``events`` (onset seconds relative to the window start, inside the window).
    """
    key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
    skip_video, skip_audio = "video" in skip, "audio" in skip
    needed = ("json",) + (() if skip_video else ("mp4",)) + (() if skip_audio else ("flac",))
    missing = [m for m in ("mp4", "flac", "json") if m in needed and m not in sample]
    if missing:
        raise SampleError(f"clip {key} in {url}: missing member(s) {missing}")
    try:
        meta = json.loads(sample["json"])
        if clip.fps > as_fps(meta["fps"]):  # a lower rate is served by timestamp; a higher one cannot be
            raise SampleError(f"clip {key} in {url}: stored at {meta['fps']} fps, data.clip.fps asks for "
                              f"{fps_text(clip.fps)}; re-run prepare at this rate or set data.clip.fps <= "
                              f"{meta['fps']}")
        stored_frames = frame_count(float(meta["end"]) - float(meta["start"]), clip.fps)
        start = 0
        if rng is not None and stored_frames > clip.num_frames:
            start = int(rng.integers(0, stored_frames - clip.num_frames + 1))
        if skip_audio:
            audio, sr = np.zeros(0, np.float32), clip.sample_rate
        else:
            audio, sr = decode_flac(sample["flac"])
        if sr != clip.sample_rate:
            raise SampleError(f"clip {key} in {url}: audio at {sr} Hz, config asks for {clip.sample_rate}")
        if out is None:
            out = np.empty((0 if skip_video else clip.num_frames, clip.height, clip.width, 3), np.uint8)
        if not skip_video:
            decode_video(sample["mp4"], fps=clip.fps, start=start / clip.fps, fit_to=(clip.height, clip.width),
                         crop_origin=_crop_origin(rng), out=out)
    except (MediaError, KeyError, ValueError, TypeError) as exc:
        raise SampleError(f"clip {key} in {url}: {exc}") from exc
    offset_s = start / clip.fps  # exact: a Fraction of a second
    a0 = round(offset_s * sr)
    audio = audio[a0:a0 + clip.num_samples]
    if not skip_audio and audio.shape[0] < clip.num_samples:
        # flac holds exactly seconds * sample_rate samples; tolerate up to one frame of rounding.
        if clip.num_samples - audio.shape[0] > sr // clip.fps:
            raise SampleError(f"clip {key} in {url}: {audio.shape[0]} audio samples, need {clip.num_samples}")
        audio = np.pad(audio, (0, clip.num_samples - audio.shape[0]))
    events = np.asarray(meta.get("events") or [], dtype=np.float32) - float(offset_s)
    events = events[(events >= 0) & (events < clip.seconds)]
    return {
        "video": out, "audio": audio.astype(np.float32, copy=False),
        "caption": str(meta.get("caption", "")), "label": str(meta.get("label", "")),
        "key": key, "events": events,
    }


def _crop_origin(rng: np.random.Generator | None):
    if rng is None:
        return centre_origin
    return lambda size, crop: (int(rng.integers(0, size[0] - crop[0] + 1)), int(rng.integers(0, size[1] - crop[1] + 1)))


def collate(clips: list[dict[str, Any]], video: torch.Tensor | None = None) -> dict[str, Any]:
    """Batch decoded clips: ``video`` (B, F, H, W, 3) uint8 (converted on the device), ``audio`` (B, S), and with
    a feature cache ``features`` ``{part: {tensor: (B, ...)}}`` in the stored dtype (float32 on the device).

    ``video``: the batch tensor the clips were decoded into (see :func:`decode_sample`'s ``out``);
    without it the frames are stacked.
    """
    batch = {
        "video": video if video is not None else torch.from_numpy(np.stack([c["video"] for c in clips])),
        "audio": torch.from_numpy(np.stack([c["audio"] for c in clips])),
        "caption": [c["caption"] for c in clips],
        "label": [c["label"] for c in clips],
        "key": [c["key"] for c in clips],
        "events": [torch.from_numpy(c["events"]) for c in clips],
    }
    if clips and "features" in clips[0]:
        batch["features"] = {part: {name: torch.from_numpy(np.stack([c["features"][part][name] for c in clips]))
                                    for name in tensors} for part, tensors in clips[0]["features"].items()}
    return batch


def to_model_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Loader batch → the batch contract: ``video`` float (B, F, 3, H, W) in [-1, 1]; ``features`` float32
    (cast on the device: a float16 cache crosses to it at half the bytes)."""
    if "features" in batch:
        batch = dict(batch)
        batch["features"] = {part: {name: t.float() for name, t in tensors.items()}
                             for part, tensors in batch["features"].items()}
    video = batch["video"]
    if video.dtype == torch.uint8:
        batch = dict(batch)
        b, f, h, w, c = video.shape
        out = torch.empty((b, f, c, h, w), dtype=torch.float32, device=video.device)
        # x / 127.5 - 1, as avgen.media.uint8_to_unit_range (the frames evaluate and sample see), in place
        batch["video"] = out.copy_(video.permute(0, 1, 4, 2, 3)).div_(127.5).sub_(1.0)
    return batch
