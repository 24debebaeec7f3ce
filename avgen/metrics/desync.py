"""DeSync: the audio-visual offset Synchformer predicts, in seconds, as av-benchmark reports it
(hkchengrex/av-benchmark@050a5cd ``av_bench/evaluate.py:171-191``; MMAudio's DeSync column).

A clip of ``seconds`` (8 in MMAudio's evaluation) is cut into segments of 0.64 s every 0.32 s (16 video
frames at 25 fps every 8; 10 240 audio samples at 16 kHz every 5 120: :mod:`avgen.encoders.synchformer`);
segment i of both streams starts at 0.32·i s. Synchformer compares 14 segments at a time (4.8 s: its
positional table, ``transformer.py:35``), so the harness compares the **first 14** and the **last 14**
segments (for 8 s: 24 segments, the windows [0, 4.8) s and [3.2, 8.0) s, overlapping by 1.6 s). Each
comparison gives 21 logits; the argmax class k means an offset of ``−2 + 0.2·k`` seconds
(``make_class_grid(-2, 2, 21)``, ``synchformer.py:12-30``). DeSync is the mean of ``|offset|`` over both
windows of every clip (``np.mean`` of the 2·N values).

Sign (only in the per-clip columns; the metric uses ``|offset|``): Synchformer was trained on crops with
the audio starting ``offset`` seconds after the video (``a_start = v_start + offset``, v-iashin/Synchformer@
b66668a ``dataset/transforms.py:338``), so a positive offset means the audio is **early**: an event seen at
time t in the video is heard at t − offset. A sound that lags its picture by 0.6 s reads −0.6.

The windowing and the offset arithmetic here do not depend on the network (:func:`desync_offsets` takes
anything with Synchformer's ``extract_vfeats`` / ``extract_afeats`` / ``compare_v_a``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torchmetrics import Metric

from avgen.encoders.synchformer import (
    AUDIO_RATE,
    OFFSET_GRID_SECONDS,
    SEGMENT_SAMPLES,
    SEGMENT_STEP_SAMPLES,
    WINDOW_SEGMENTS,
)


class OffsetClassifier(Protocol):
    """What :func:`desync_offsets` needs of Synchformer (:class:`avgen.encoders.synchformer.Synchformer`)."""

    def extract_vfeats(self, video: torch.Tensor) -> torch.Tensor: ...      # (B, S, 16, 3, H, W) → (B, S, tv, D)

    def extract_afeats(self, audio: torch.Tensor) -> torch.Tensor: ...      # (B, S, F, 66) → (B, S, ta, D)

    def compare_v_a(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor: ...  # → logits (B, 21)


def offset_seconds(classes: torch.Tensor | int) -> torch.Tensor:
    """Offset classes (any shape, int in [0, 21)) → their offsets in seconds, float64: class k ↔ −2 + 0.2·k
    (class 10 ↔ 0). Raises ``ValueError`` for a class outside the grid."""
    classes = torch.as_tensor(classes)
    if classes.numel() and (classes.min() < 0 or classes.max() >= len(OFFSET_GRID_SECONDS)):
        raise ValueError(f"offset classes must be in [0, {len(OFFSET_GRID_SECONDS)}), got {classes.tolist()}")
    return torch.tensor(OFFSET_GRID_SECONDS, dtype=torch.float64)[classes.long()]


def offset_class(seconds: float) -> int:
    """The grid class nearest an offset in seconds (clamped to ±2 s): the inverse of :func:`offset_seconds`."""
    return int(min(max(round((seconds + 2.0) / 0.2), 0), len(OFFSET_GRID_SECONDS) - 1))


def window_slices(num_segments: int, window: int = WINDOW_SEGMENTS) -> tuple[slice, slice]:
    """The harness's two windows of ``num_segments`` segments: the first ``window`` (``[:, :14]``) and the last
    ``window`` (``[:, -14:]``) (evaluate.py:180,185). Raises ``ValueError`` when there are fewer than ``window``."""
    if num_segments < window:
        seconds = ((window - 1) * SEGMENT_STEP_SAMPLES + SEGMENT_SAMPLES) / AUDIO_RATE  # 14 segments: 4.8 s
        raise ValueError(f"DeSync needs {window} segments ({seconds:.2f} s), got {num_segments}")
    return slice(0, window), slice(num_segments - window, num_segments)


@torch.no_grad()
def desync_offsets(model: OffsetClassifier, video_segments: torch.Tensor, audio_segments: torch.Tensor,
                   window: int = WINDOW_SEGMENTS) -> tuple[float, float]:
    """Signed offsets (seconds) of one clip's first and last windows.

    Args:
        model: Synchformer, or a stand-in with its three methods.
        video_segments: (S, 16, 3, H, W) float in [-1, 1] (:func:`~avgen.encoders.synchformer.sync_video_segments`).
        audio_segments: (S, F, 66) normalised log-mel (:func:`~avgen.encoders.synchformer.sync_audio_segments`).
        window: segments per comparison (14).

    The features of all S segments are computed once, then ``compare_v_a`` runs on segments ``[0, 14)`` and
    ``[S − 14, S)`` of both streams and each argmax class becomes seconds (:func:`offset_seconds`). Raises
    ``ValueError`` when the two streams have different segment counts (the harness would compare
    misaligned windows silently) or fewer than ``window``.
    """
    if video_segments.shape[0] != audio_segments.shape[0]:
        raise ValueError(f"DeSync: {video_segments.shape[0]} video segments but {audio_segments.shape[0]} audio "
                         f"segments; the windows compare segment i of both streams, so the counts must be equal "
                         f"(the video at 25 fps and the audio at 16 kHz must span the same seconds)")
    first, last = window_slices(video_segments.shape[0], window)
    vis = model.extract_vfeats(video_segments[None])
    aud = model.extract_afeats(audio_segments[None])
    logits = torch.cat([model.compare_v_a(vis[:, part], aud[:, part]) for part in (first, last)])
    first_s, last_s = offset_seconds(logits.argmax(dim=-1).cpu()).tolist()
    return first_s, last_s


class DeSync(Metric):
    """Mean ``|offset|`` (seconds) over both windows of every clip: states ``abs_sum`` and ``count`` (float64,
    summed across processes). ``update(first, last)`` takes the signed offsets of clips (B,) seconds."""

    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("abs_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, first: torch.Tensor | float, last: torch.Tensor | float) -> None:
        offsets = torch.cat([torch.as_tensor(first, dtype=torch.float64).reshape(-1),
                             torch.as_tensor(last, dtype=torch.float64).reshape(-1)]).to(self.abs_sum.device)
        self.abs_sum += offsets.abs().sum()
        self.count += offsets.numel()

    def compute(self) -> torch.Tensor:
        return self.abs_sum / self.count
