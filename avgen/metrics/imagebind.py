"""ImageBind audio–video score: how well a clip's soundtrack matches its pictures in ImageBind's joint space.

Per clip the score is ``cos(a, v)`` between ``a``, ImageBind's audio embedding of the soundtrack, and
``v``, its vision embedding of the frames, each the mean over the clip's sub-clips of the per-sub-clip
embeddings (what ``ImageBindModel.forward`` returns for (B, S, ...) inputs); the cosine normalises
both means. The metric is the mean of the per-clip cosines, raw (in [-1, 1], not ×100). The model and
its transforms are :mod:`avgen.encoders.imagebind` (Girdhar et al. 2023, "ImageBind: One Embedding
Space To Bind Them All", arXiv 2305.05665).

:class:`IBScore` is the video-to-audio benchmark's variant (the ``IB-score`` column of MMAudio and
followers), computed as the public harness hkchengrex/av-benchmark at commit ``050a5cd`` does: its own
vision input (:func:`ib_score_views`: the input video at 0.5 fps, bicubic-antialiased uint8 resize,
3 crops × consecutive frame pairs) instead of ImageBind's video transform, ImageBind's audio transform
on the generated audio; raw cosine kept, ×100 reported.

Under DDP each process scores its own clips; the states (score sum, clip count) are summed across
processes, so ``compute()`` is the mean over all clips whatever the split. Call ``compute()`` on every
rank (torchmetrics syncs in it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avgen.encoders.imagebind import CLIP_MEAN, CLIP_STD, ImageBindAV, load_imagebind, uniform_crop_offsets
from avgen.metrics.cosine import MeanCosine


def av_cosine(audio_embedding: torch.Tensor, vision_embedding: torch.Tensor) -> torch.Tensor:
    """Per-clip cosine (B,) float64 of two (B, D) embeddings (each L2-normalised in float64 first)."""
    a = F.normalize(audio_embedding.double(), dim=-1)
    v = F.normalize(vision_embedding.double(), dim=-1)
    return (a * v).sum(dim=-1)


class ImageBindScore(MeanCosine):
    """Mean over clips of cos(ImageBind audio embedding, ImageBind vision embedding), raw in [-1, 1].

    States ``score_sum`` and ``count`` (float64, summed across processes). The model stays frozen and
    in eval mode whatever its parent does.

    Args:
        model: an :class:`ImageBindAV` (:func:`load_imagebind`, or random for tests).
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "imagebind"

    def __init__(self, model: ImageBindAV, **kwargs: Any):
        super().__init__(model, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike | None, config_key: str = "evaluate.imagebind.path",
                  sizes: Mapping[str, Any] | None = None, **kwargs: Any) -> ImageBindScore:
        """The metric over :func:`load_imagebind` ``(path, config_key, **sizes)``."""
        return cls(load_imagebind(path, config_key, **dict(sizes or {})), **kwargs)

    def clip_scores(self, frames: torch.Tensor | Sequence[Any], audio: torch.Tensor | Sequence[Any],
                    sample_rate: int = 16000, fps: float | Sequence[float] | None = None) -> torch.Tensor:
        """Per-clip cosines (B,) float64; same inputs as :meth:`update`."""
        n_video = frames.shape[0] if isinstance(frames, torch.Tensor) else len(frames)
        n_audio = audio.shape[0] if isinstance(audio, torch.Tensor) else len(audio)
        if n_video != n_audio:
            raise ValueError(f"ImageBindScore.update got {n_video} videos and {n_audio} audio tracks")
        if n_video == 0:
            raise ValueError("ImageBindScore.update got no clips")
        if fps is None:
            # the video spans the audio: fps = frames / audio seconds, clip by clip
            lengths = [int(np.shape(a)[-1]) if np.ndim(a) else 0 for a in audio]
            counts = [frames.shape[1]] * n_video if isinstance(frames, torch.Tensor) else [len(f) for f in frames]
            if min(lengths) == 0:
                raise ValueError("ImageBind audio: empty waveform")
            fps = [c * sample_rate / s for c, s in zip(counts, lengths)]
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sound = self.model.audio_embedding(audio, sample_rate)
            sight = self.model.vision_embedding(frames, fps)
        return av_cosine(sound, sight)

    def update(self, frames: torch.Tensor | Sequence[Any], audio: torch.Tensor | Sequence[Any],
               sample_rate: int = 16000, fps: float | Sequence[float] | None = None) -> None:
        """Add a batch: ``frames`` (B, F, 3, H, W) float in [-1, 1] or a list of B clips (F, H, W, 3) uint8;
        ``audio`` (B, S) float or a list of B (S,) waveforms at ``sample_rate`` (resampled to 16 kHz);
        ``fps`` one value or one per clip, by default ``frames / audio duration`` (the video spans the
        audio)."""
        self.add_scores(self.clip_scores(frames, audio, sample_rate, fps))

    def describe(self) -> dict[str, Any]:
        """Name, weight hash, model and transform config and scale, for ``metrics.json``."""
        identity = self.model.identity()
        return {"name": self.name, "sha256": identity["sha256"], "config": identity["config"],
                "scale": "raw cosine", "paths": {role: p for role, (p, _) in self.model.weights.items()}}


# ------------------------------------------------------------------------------------------- IB-score
# The video-to-audio benchmark's IB-score: hkchengrex/av-benchmark at commit 050a5cdb9bbd1a6f8cbb9fdde076992a695e2501.
HARNESS = "av-benchmark@050a5cd"


def short_side_resize_uint8(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames (N, 3, H, W) uint8 → (N, 3, h, w) uint8 with the shorter side ``size`` and the longer
    ``int(size · long / short)`` (a square keeps ``size × size``).

    av-benchmark's ``v2.Resize(224, interpolation=BICUBIC)`` on the decoded uint8 frames
    (``av_bench/data/video_dataset.py:43-49,101@050a5cd``; ``antialias=True`` is torchvision v2's
    default). On CPU, where the harness runs it (in its DataLoader), torchvision 0.26's ``resize_image``
    passes uint8 straight to torch's native uint8 kernel ``F.interpolate(mode="bicubic", antialias=True,
    align_corners=False)``, so the resized frames are rounded to uint8 *before* ``ToDtype(float32,
    scale=True)``; that is what this computes, on CPU whatever the frames' device (the result is moved
    back). The size rule is torchvision's ``_compute_resized_output_size`` (``w <= h``: the width is the
    shorter side). The kernel is Pillow's antialiased bicubic (a = −0.5) in fixed point: measured
    against ``PIL.Image.resize(BICUBIC)`` at most 1 level apart when shrinking, 2 when enlarging
    (``tests/metrics/test_ib_score.py``).

    Raises:
        ValueError: ``frames`` is not (N, 3, H, W) uint8.
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"IB-score resize expects frames (N, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
    h, w = frames.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
    if (new_h, new_w) == (h, w):  # torchvision returns the input unchanged
        return frames
    out = F.interpolate(frames.cpu(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    return out.to(frames.device)


def ib_score_views(frames: torch.Tensor | np.ndarray, size: int = 224, num_crops: int = 3,
                   mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """The IB-score's vision input of one clip: frames (T, H, W, 3) uint8 (axis 0 is time: the clip's
    frames at 0.5 fps, T ≥ 2) → views (num_crops · (T − 1), 3, 2, size, size) float32, CLIP-normalised.

    As av-benchmark (``av_bench/data/video_dataset.py:43-49,101-111``, ``av_bench/data/ib_data.py:27-127``,
    ``extract_video.py:59-71``, all ``@050a5cd``):

    1. :func:`short_side_resize_uint8` to ``size`` (bicubic, antialiased, on uint8);
    2. ``/ 255`` then ``(x − mean) / std`` (CLIP's);
    3. ``SpatialCrop(size, 3)``: crops 0, 1, 2 of ImageBind's ``uniform_crop``
       (:func:`~avgen.encoders.imagebind.uniform_crop_offsets`: left / centre / right, or top / centre /
       bottom when the frame is taller than wide; centre offset ``ceil((side − size) / 2)``), or the
       centre one for ``num_crops=1``;
    4. consecutive-frame pairs ``x[:, :, i:i + 2]`` for ``i = 0 … T − 2`` concatenated along the crop
       axis: view ``j`` holds frames ``(p, p + 1)`` with ``p = j // num_crops`` through crop
       ``j % num_crops`` (pair-major, as ``torch.cat(clips, dim=1)``), channels before time.

    8 s at 0.5 fps: 4 frames → 3 pairs × 3 crops = 9 views. ImageBind's own video transform
    (:func:`~avgen.encoders.imagebind.video_clips`: bilinear, no antialiasing, five 2-s sub-clips) is
    not used here.

    Raises:
        ValueError: not (T, H, W, 3) uint8, fewer than 2 frames, a shorter side below ``size`` after
            resizing (cannot happen for ``size`` ≥ 1), or ``num_crops`` not 1 or 3.
    """
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"IB-score views expect frames (T, H, W, 3) uint8, got {tuple(x.shape)} {x.dtype}")
    if x.shape[0] < 2:
        raise ValueError(f"IB-score views need at least 2 frames (one consecutive pair), got {x.shape[0]}")
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3 (SpatialCrop), got {num_crops}")
    resized = short_side_resize_uint8(x.permute(0, 3, 1, 2).contiguous(), size)
    unit = resized.to(torch.float32) / 255
    unit = (unit - unit.new_tensor(mean).view(3, 1, 1)) / unit.new_tensor(std).view(3, 1, 1)
    h, w = unit.shape[-2:]
    crops = [uniform_crop_offsets(h, w, size, idx) for idx in ((0, 1, 2) if num_crops == 3 else (1,))]
    views = [unit[p:p + 2, :, top:top + size, left:left + size].transpose(0, 1)  # (3, 2, size, size)
             for p in range(unit.shape[0] - 1) for top, left in crops]
    return torch.stack(views)


class IBScore(MeanCosine):
    """The video-to-audio benchmark's IB-score (av-benchmark's ``IB-Score``): mean over clips of
    cos(ImageBind vision embedding of the input video's :func:`ib_score_views`, ImageBind audio embedding
    of the generated audio).

    Vision: the 6-D input (B, V, 3, 2, S, S) goes through ImageBind's forward, which embeds the B·V
    views, L2-normalises each and averages over V (``extract_video.py:59-71@050a5cd``). Audio:
    ImageBind's own audio transform on the whole waveform (:meth:`ImageBindAV.audio_inputs`; the harness's
    ``ImageBindAudioDataset``, ``av_bench/data/audio_dataset.py:144-186@050a5cd``). Score:
    ``cosine_similarity(video, audio).mean()`` over the pairs (``av_bench/evaluate.py:164-169@050a5cd``).

    ``compute()`` is the raw mean cosine, as the harness reports it; papers print ``scale`` (100) times
    it (:meth:`scaled`). States ``score_sum`` and ``count`` (float64, summed across processes).

    Args:
        model: an :class:`ImageBindAV` (:func:`load_imagebind`, or random for tests); its ``image_size``
            is the view size (224), ``num_crops`` the crops (3), ``image_mean``/``image_std`` CLIP's.
        scale: the factor of the reported number (100).
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "ib_score"

    def __init__(self, model: ImageBindAV, scale: float = 100.0, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.scale = float(scale)

    @classmethod
    def from_file(cls, path: str | os.PathLike | None, config_key: str = "evaluate.ib_score.path",
                  sizes: Mapping[str, Any] | None = None, scale: float = 100.0, **kwargs: Any) -> IBScore:
        """The metric over :func:`load_imagebind` ``(path, config_key, **sizes)``."""
        return cls(load_imagebind(path, config_key, **dict(sizes or {})), scale=scale, **kwargs)

    def views(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """:func:`ib_score_views` of one clip's frames (T, H, W, 3) uint8 with the model's size, crops and
        normalisation → (num_crops · (T − 1), 3, 2, S, S) float32."""
        return ib_score_views(frames, self.model.image_size, self.model.num_crops, self.model.image_mean,
                              self.model.image_std)

    def clip_scores(self, views: torch.Tensor | Sequence[torch.Tensor], audio: torch.Tensor | Sequence[Any],
                    sample_rate: int = 16000) -> torch.Tensor:
        """Per-clip raw cosines (B,) float64; same inputs as :meth:`update`.

        Raises:
            ValueError: different numbers of videos and audio tracks, no clips, or audio ImageBind
                cannot take (:meth:`ImageBindAV.audio_inputs`).
        """
        clips = list(views.unbind(0)) if isinstance(views, torch.Tensor) else list(views)
        n_audio = audio.shape[0] if isinstance(audio, torch.Tensor) else len(audio)
        if len(clips) != n_audio:
            raise ValueError(f"IBScore.update got {len(clips)} videos and {n_audio} audio tracks")
        if not clips:
            raise ValueError("IBScore.update got no clips")
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sound = self.model.audio_embedding(audio, sample_rate)
            sight = torch.cat([self.model({"vision": v[None]})["vision"].float() for v in clips])
        return av_cosine(sound, sight)

    def update(self, views: torch.Tensor | Sequence[torch.Tensor], audio: torch.Tensor | Sequence[Any],
               sample_rate: int = 16000) -> None:
        """Add a batch: ``views`` (B, V, 3, 2, S, S) float or a list of B (V, 3, 2, S, S) (:meth:`views`);
        ``audio`` (B, S) float or a list of B mono (S,) waveforms at ``sample_rate`` (resampled to 16 kHz
        with ``torchaudio.functional.resample``, as the harness)."""
        self.add_scores(self.clip_scores(views, audio, sample_rate))

    def scaled(self) -> torch.Tensor:
        """``scale`` × :meth:`compute` (0-dim float64): the number papers print (×100)."""
        return self.compute() * self.scale

    def describe(self) -> dict[str, Any]:
        """Name, protocol, weight hash, model config, view layout and scaling, for ``metrics.json``."""
        identity = self.model.identity()
        return {"name": self.name, "protocol": HARNESS, "harness_key": "IB-Score", "sha256": identity["sha256"],
                "config": identity["config"], "scale": self.scale, "sample_rate": self.model.sample_rate,
                "paths": {role: p for role, (p, _) in self.model.weights.items()}}
