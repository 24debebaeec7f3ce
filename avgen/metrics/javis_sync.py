"""JavisScore: JavisBench's audio-video synchrony score, ImageBind similarities over sliding windows.

Liu et al. 2025, "JavisDiT: Joint Audio-Video Diffusion Transformer with Hierarchical Spatio-Temporal
Prior Synchronization" (arXiv 2503.23377), JavisScore:

    JavisScore = 1/N Σ_i σ(a_i, v_i),   σ(a_i, v_i) = 1/k Σ_{j ∈ lowest k} cos(E_v(v_{i,j}), E_a(a_i))

reproduced from the public code, JavisVerse/JavisDiT at commit ``b505b37`` (file:line below, all
``@b505b37``):

- windows (``eval/javisbench/src/dataset.py:356-391``, :func:`javis_windows`): ``window_s`` = 2 s and
  ``overlap_s`` = 1.5 s (``eval/javisbench/main.py:232-235,438-439``); in frames ``int(2 · fps)`` long,
  stride ``int(2 · fps) − int(1.5 · fps)`` (12 frames at 24 fps, 13 at 25 fps: the video and audio
  windows drift apart by ``0.5 − 13/25`` s per step at 25 fps); in 16 kHz samples 32000 long, stride
  8000. Starts ``0, stride, 2·stride, …`` with the last moved back to ``length − size`` and the loop
  stopping at the first window that reaches the end (:func:`window_starts`); the two lists are cut to
  the shorter. A video of at most ``int(2 · fps)`` frames or audio of at most 32000 samples is one
  window: all frames with the whole audio.
- frames (``dataset.py:287-297,315-330``, :func:`frame_images`): every decoded frame, on its own as an
  image: PIL bicubic resize of the shorter side to 224 (the longer ``int(224 · long / short)``),
  centre crop 224 (offset ``int(round((side − 224) / 2))``), ``/ 255``, CLIP mean / std; ImageBind's
  vision tower repeats the image to 2 frames. One unit-norm embedding per frame.
- audio (``dataset.py:337-345,393-419``, :func:`window_fbanks`): the file's waveform resampled to
  16 kHz (``torchaudio.functional.resample`` defaults); each window is ImageBind's audio transform of
  its samples: 3 sub-clips of 2 s placed by ``ConstantClipsPerVideoSampler`` over the window's length
  (a 2-s window: three copies of itself), mean-subtracted *in place* (``waveform -= waveform.mean()``,
  ``eval/javisbench/src/ImageBind/imagebind/data.py:35``) — the windows are views of one waveform, so
  a window sees the mean subtraction of the windows before it where they overlap, which is
  reproduced — Kaldi fbank 128 × 204, ``(x + 4.268) / 9.138``; the embedding is the mean of the 3
  sub-clips' embeddings (``ImageBindModel.forward`` on 5-D input).
- score (``eval/javisbench/src/metrics.py:384-443``, :func:`lowest_k_mean`): per window, the cosines of
  its N frame embeddings with its audio embedding (``nn.CosineSimilarity(eps=1e-6)``), the mean of
  the lowest ``k`` (``torch.topk(largest=False)``) with ``k = int(N · 0.4)`` (``topk_min=0.4``, a
  fraction; an ``int`` is a count), then the mean over windows; the benchmark's number is the mean
  over clips (``main.py:232-243,321-326``).

Where avgen departs: the similarities and means are float64 (the official per-clip ``.item()`` goes
through a float32 tensor); a clip whose window gives ``k = 0`` (a single window of 1 or 2 frames) is
reported as a failure (the official mean of an empty top-k is NaN); the audio is the first channel
(the official fbank reads channel 0 too, but subtracts the mean over all channels, a constant Kaldi's
per-frame DC removal takes out again up to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchaudio

from avgen.encoders.imagebind import ImageBindAV, audio_clip_bounds, log_mel_fbank
from avgen.metrics.cosine import MeanCosine
from avgen.metrics.imagebind import av_cosine

PROTOCOL = "JavisVerse/JavisDiT@b505b37 (eval/javisbench/src/metrics.py:384-443, src/dataset.py:273-419)"


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts over ``length`` items (frames or samples), as JavisBench's loop: ``0, stride, …``,
    each clamped to ``length − size``, stopping after the first window whose end reaches ``length``.

    >>> window_starts(96, 48, 12)
    [0, 12, 24, 36, 48]
    >>> window_starts(100, 50, 13)
    [0, 13, 26, 39, 50]

    Raises:
        ValueError: ``stride`` or ``size`` below 1, or ``size`` above ``length``.
    """
    if stride < 1 or size < 1 or size > length:
        raise ValueError(f"windows of {size} with stride {stride} over {length}: need 1 <= size <= length and "
                         f"stride >= 1")
    starts = []
    for start in range(0, length, stride):
        start = min(start, length - size)
        starts.append(start)
        if start + size >= length:
            break
    return starts


def javis_windows(num_frames: int, fps: float, num_samples: int, sample_rate: int = 16000,
                  window_s: float = 2.0, overlap_s: float = 1.5
                  ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The windows of one clip: (video windows ``[(first frame, end frame)]``, audio windows
    ``[(first sample, end sample)]``), as many of each (``segment_clip_transform``,
    ``eval/javisbench/src/dataset.py:356-391@b505b37``).

    Video windows are ``int(window_s · fps)`` frames with stride ``int(window_s · fps) − int(overlap_s · fps)``;
    audio windows ``int(window_s · sample_rate)`` samples with stride ``int(window_s · rate) − int(overlap_s ·
    rate)``; both lists are cut to the shorter. At most one window's worth of frames or of samples: one
    window ``(0, num_frames)``, ``(0, num_samples)``.

    >>> javis_windows(96, 24, 64000)[0]
    [(0, 48), (12, 60), (24, 72), (36, 84), (48, 96)]

    Raises:
        ValueError: no frames or samples, or a window that is empty or does not move (``fps`` or the
            window settings too small).
    """
    if num_frames < 1 or num_samples < 1:
        raise ValueError(f"JavisScore needs frames and audio, got {num_frames} frames and {num_samples} samples")
    v_size, v_overlap = int(window_s * fps), int(overlap_s * fps)
    a_size, a_overlap = int(window_s * sample_rate), int(overlap_s * sample_rate)
    if num_frames <= v_size or num_samples <= a_size:
        return [(0, num_frames)], [(0, num_samples)]
    if v_size < 1 or v_size - v_overlap < 1:
        raise ValueError(f"at {fps:g} fps a {window_s:g}-s window is {v_size} frames with stride {v_size - v_overlap}; "
                         f"JavisScore needs at least 1 of each (raise evaluate.javis_sync.window_s)")
    video = [(s, s + v_size) for s in window_starts(num_frames, v_size, v_size - v_overlap)]
    audio = [(s, s + a_size) for s in window_starts(num_samples, a_size, a_size - a_overlap)]
    count = min(len(video), len(audio))
    return video[:count], audio[:count]


def lowest_k(num_frames: int, topk_min: float | int = 0.4) -> int:
    """k of a window of ``num_frames`` frames: ``topk_min`` itself when an ``int``, else ``int(num_frames ·
    topk_min)`` (truncated, ``metrics.py:428@b505b37``): 19 of 48 frames at 0.4.

    Raises:
        ValueError: k < 1 (the official mean of no score is NaN) or k > ``num_frames``.
    """
    k = topk_min if isinstance(topk_min, int) else int(num_frames * topk_min)
    if not 1 <= k <= num_frames:
        raise ValueError(f"JavisScore keeps the lowest k = {k} of a window's {num_frames} frame scores (topk_min="
                         f"{topk_min}); it needs 1 <= k <= {num_frames} (the official mean of none is NaN)")
    return k


def lowest_k_mean(scores: torch.Tensor, topk_min: float | int = 0.4) -> torch.Tensor:
    """Scores (M windows, N frames) → the mean over windows of the mean of each window's lowest k scores
    (:func:`lowest_k`); a 0-dim tensor of ``scores``' dtype.

    >>> scores = torch.tensor([[0.1, 0.5, 0.3, 0.2, 0.9], [0.4, 0.0, 0.8, 0.6, 0.2]], dtype=torch.float64)
    >>> round(float(lowest_k_mean(scores, 2)), 12)  # ((0.1 + 0.2) / 2 + (0.0 + 0.2) / 2) / 2
    0.125

    Raises:
        ValueError: as :func:`lowest_k`.
    """
    k = lowest_k(scores.shape[1], topk_min)
    return torch.topk(scores, k, dim=1, largest=False).values.mean(dim=1).mean()


def frame_images(frames: np.ndarray | torch.Tensor, size: int = 224, mean: Sequence[float] = (0.48145466, 0.4578275,
                 0.40821073), std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711)) -> torch.Tensor:
    """Frames (F, H, W, 3) uint8 (axis 0 is time) → images (F, 3, size, size) float32, each as torchvision's
    ``Resize(size, BICUBIC)`` + ``CenterCrop(size)`` + ``ToTensor`` + ``Normalize(CLIP)`` on a PIL image
    (``eval/javisbench/src/dataset.py:287-297@b505b37``): PIL's bicubic resize (antialiased) of the shorter
    side to ``size``, the longer to ``int(size · long / short)`` (unchanged when the shorter side is already
    ``size``), crop offsets ``int(round((side − size) / 2))``.

    Raises:
        ValueError: not (F, H, W, 3) uint8.
    """
    from PIL import Image

    x = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"JavisScore frames must be (F, H, W, 3) uint8, got {x.shape} {x.dtype}")
    h, w = x.shape[1:3]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_h, new_w = (new_long, size) if w <= h else (size, new_long)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    out = np.empty((x.shape[0], size, size, 3), np.uint8)
    for i, frame in enumerate(x):
        image = Image.fromarray(frame)
        if (new_h, new_w) != (h, w):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        out[i] = np.asarray(image)[top:top + size, left:left + size]
    unit = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255
    return (unit - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def window_fbanks(wave: torch.Tensor, windows: Sequence[tuple[int, int]], model: ImageBindAV) -> torch.Tensor:
    """Mono 16 kHz audio (S,) and sample windows → ImageBind fbanks (M, clips, 1, mel, frames): per window,
    ``model``'s audio sub-clips over the window's length (``ConstantClipsPerVideoSampler``), each mean-
    subtracted in place on one shared copy of ``wave`` (windows in order, so overlaps carry the earlier
    windows' subtraction, as ``transform_audio_clip`` on views, ``dataset.py:379-388,393-419@b505b37``), Kaldi
    fbank, ``(x − mean) / std``."""
    shared = wave.reshape(-1).to(torch.float32).clone()
    out = []
    for a, b in windows:
        window = shared[a:b]
        clips = []
        for c0, c1 in audio_clip_bounds(window.shape[0], model.sample_rate, model.audio_clip_duration,
                                        model.audio_clips_per_video):
            segment = window[c0:c1]
            segment -= segment.mean()
            clips.append(log_mel_fbank(segment[None], model.sample_rate, model.audio_num_mel_bins,
                                       model.audio_target_len))
        out.append((torch.stack(clips) - model.audio_mean) / model.audio_std)
    return torch.stack(out)


class JavisSync(MeanCosine):
    """JavisScore over clips (module docstring): ``clip_scores`` gives each clip's mean over windows of the
    lowest-k frame/audio cosines; ``compute()`` the mean over clips (float64 states ``score_sum``,
    ``count``, summed across processes).

    Args:
        model: an :class:`~avgen.encoders.imagebind.ImageBindAV` (its ``image_size`` is the frame size, 224).
        window_s, overlap_s: window length and overlap in seconds (2, 1.5).
        topk_min: the fraction of each window's frames kept (0.4), or a count when an ``int``.
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "javis_sync"

    def __init__(self, model: ImageBindAV, window_s: float = 2.0, overlap_s: float = 1.5,
                 topk_min: float | int = 0.4, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.window_s, self.overlap_s, self.topk_min = float(window_s), float(overlap_s), topk_min

    def windows(self, num_frames: int, fps: float, num_samples: int):
        """:func:`javis_windows` with this metric's settings and the model's sample rate."""
        return javis_windows(num_frames, fps, num_samples, self.model.sample_rate, self.window_s, self.overlap_s)

    def clip_score(self, frames: np.ndarray, fps: float, audio: np.ndarray | torch.Tensor, sample_rate: int
                   ) -> tuple[float, int]:
        """(JavisScore, number of windows) of one clip: frames (F, H, W, 3) uint8 at ``fps``, mono audio (S,)
        at ``sample_rate`` (resampled to the model's 16 kHz).

        Raises:
            ValueError: no frames or audio, windows that cannot be built, or k < 1 (:func:`lowest_k_mean`).
        """
        model = self.model
        wave = torch.as_tensor(np.ascontiguousarray(audio, dtype=np.float32)).reshape(-1)
        if int(sample_rate) != model.sample_rate:
            wave = torchaudio.functional.resample(wave, int(sample_rate), model.sample_rate)
        video, sound = self.windows(len(frames), float(fps), wave.shape[0])
        lowest_k(video[0][1] - video[0][0], self.topk_min)  # every window has as many frames: refuse before any pass
        used = sorted({i for a, b in video for i in range(a, b)})
        position = {f: i for i, f in enumerate(used)}
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            images = frame_images(np.asarray(frames)[used], model.image_size, model.image_mean, model.image_std)
            sight = model.embed_vision(images.to(self.device))
            hearing = model({"audio": window_fbanks(wave, sound, model).to(self.device)})["audio"]
        index = torch.tensor([[position[f] for f in range(a, b)] for a, b in video], device=sight.device)
        scores = av_cosine(hearing[:, None].expand(-1, index.shape[1], -1).reshape(-1, hearing.shape[-1]),
                           sight[index.reshape(-1)]).view(index.shape)
        return float(lowest_k_mean(scores, self.topk_min)), len(video)

    def update(self, frames: np.ndarray, fps: float, audio: np.ndarray | torch.Tensor, sample_rate: int = 16000
               ) -> None:
        """Add one clip (inputs as :meth:`clip_score`)."""
        score, _ = self.clip_score(frames, fps, audio, sample_rate)
        self.add_scores(torch.tensor([score], dtype=torch.float64))

    def describe(self) -> dict[str, Any]:
        """Protocol, weight hash, model config and window settings, for ``metrics.json``."""
        identity = self.model.identity()
        return {"name": self.name, "protocol": PROTOCOL, "sha256": identity["sha256"], "config": identity["config"],
                "window_s": self.window_s, "overlap_s": self.overlap_s, "topk_min": self.topk_min,
                "scale": "raw cosine", "paths": {role: p for role, (p, _) in self.model.weights.items()}}


def check_settings(window_s: Any, overlap_s: Any, topk_min: Any) -> None:
    """Refuse settings no clip can be scored with (the scorer turns this into a ``ConfigError``).

    Raises:
        ValueError: a non-positive window, an overlap outside [0, window), ``topk_min`` not a fraction in
            (0, 1] or a count ≥ 1.
    """
    numbers = [v for v in (window_s, overlap_s) if isinstance(v, bool) or not isinstance(v, (int, float))]
    if numbers or not window_s > 0 or not 0 <= overlap_s < window_s:
        raise ValueError(f"window_s={window_s!r}, overlap_s={overlap_s!r}: expected seconds with 0 <= overlap_s < "
                         f"window_s (JavisBench: 2.0 and 1.5)")
    count = isinstance(topk_min, int) and not isinstance(topk_min, bool) and topk_min >= 1
    fraction = isinstance(topk_min, float) and math.isfinite(topk_min) and 0 < topk_min <= 1
    if not (count or fraction):
        raise ValueError(f"topk_min={topk_min!r}: expected a fraction of each window's frames in (0, 1] (JavisBench: "
                         f"0.4) or a count >= 1 (an int)")
