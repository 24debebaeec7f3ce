"""ImageBind's vision and audio towers with their input transforms, loaded from the official file: the
encoder of the ImageBind audio-video score (:mod:`avgen.metrics.imagebind`) and a candidate
conditioning encoder.

Model: ImageBind-Huge (Girdhar et al. 2023, "ImageBind: One Embedding Space To Bind Them All"),
written here from facebookresearch/ImageBind ``imagebind/models/{imagebind_model,
multimodal_preprocessors,transformer,helpers}.py``. Only the vision and audio towers are built; their
state-dict keys are the official ones (``modality_preprocessors.vision.rgbt_stem.proj.1.weight``,
``modality_trunks.audio.blocks.0.attn.bias_k``, ``modality_heads.vision.2.weight``,
``modality_postprocessors.audio.1.log_logit_scale``, ...), so :func:`load_imagebind` reads the published
``imagebind_huge.pth`` (https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth) with
``torch.load(weights_only=True)``, keeps its ``vision`` / ``audio`` entries, drops the text, depth,
thermal and IMU ones, and checks the rest strictly (missing, unexpected and mis-shaped keys).

- vision: ``PadIm2Video(repeat, 2)`` + ``Conv3d(3, 1280, (2, 14, 14), stride (2, 14, 14), no bias)``
  on (3, 2, 224, 224) clips → 256 patches; a CLS token; learnable positions (257); LayerNorm
  (eps 1e-6) before the trunk; 32 pre-norm blocks (width 1280, 16 heads, MLP ×4 GELU, LayerNorms
  eps 1e-6, ``nn.MultiheadAttention`` with biases); head LayerNorm → CLS → ``Linear(1280, 1024, no
  bias)``; L2 normalisation.
- audio: ``Conv2d(1, 768, 16, stride 10, no bias)`` + ``LayerNorm(768)`` (eps 1e-5) on (1, 128, 204)
  log-mel patches → 12 × 19 = 228 patches; a CLS token; learnable positions (229); no LayerNorm before
  the trunk; 12 blocks (width 768, 12 heads, attention with ``add_bias_kv=True``: a learnt key and value
  appended to every sequence); head LayerNorm → CLS → ``Linear(768, 1024, no bias)``; L2 normalisation
  then ×20 (``LearnableLogitScaling(20, learnable=False)``, a buffer in the file). No LayerNorm after
  either trunk. The audio trunk's drop path (0.1) only acts in training and is not built here.

Transforms (ImageBind's ``imagebind/data.py``, re-done in torch on in-memory tensors):

- audio (``load_and_transform_audio_data``): resample to 16 kHz (``torchaudio.functional.resample``,
  defaults, as the official code); 3 sub-clips of 2 s placed by pytorchvideo's
  ``ConstantClipsPerVideoSampler`` (:func:`constant_clip_timepoints`); each is mean-subtracted,
  turned into a Kaldi fbank (:func:`log_mel_fbank`), zero-padded / cut to 204 frames and normalised
  with mean −4.268, std 9.138. See :func:`audio_clips` for the details, short audio included.
- video (``load_and_transform_video_data``): 5 sub-clips of 2 s placed the same way, 2 frames each
  (pytorchvideo ``UniformTemporalSubsample``, decord's frame selection; :func:`video_clip_indices`),
  shorter side scaled to 224 (bilinear), CLIP mean/std, 3 crops of 224² (left/centre/right or
  top/centre/bottom; :func:`uniform_crop_offsets`) → 15 views. See :func:`video_clips`.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from avgen.encoders.base import FeatureExtractor, unit_range_clips
from avgen.errors import WeightsFileError
from avgen.pretrained import ORIGINS, require_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODALITIES = ("vision", "audio")  # the towers built here, in the official registration order
OTHER_MODALITIES = ("text", "depth", "thermal", "imu")  # in the official file, dropped on load
TINY_IMAGEBIND = {"out_embed_dim": 16, "vision_embed_dim": 32, "vision_num_blocks": 2, "vision_num_heads": 2,
                  "audio_embed_dim": 16, "audio_num_blocks": 2, "audio_num_heads": 2, "image_size": 28}


# ------------------------------------------------------------------------------------- transforms


def constant_clip_timepoints(duration: float, clip_duration: float = 2, clips_per_video: int = 3
                             ) -> list[tuple[Fraction, Fraction]]:
    """(start, end) seconds of the sub-clips pytorchvideo's ``ConstantClipsPerVideoSampler`` gives,
    read out as ImageBind's ``get_clip_timepoints`` does (calling the sampler until ``is_last_clip``).

    With ``m = max(duration − clip_duration, 0)`` the starts are ``k · m / clips_per_video`` for
    ``k = 0 … clips_per_video − 1`` (divided by ``clips_per_video``, not ``clips_per_video − 1``, so the
    last sub-clip ends before the media does) and each sub-clip lasts ``clip_duration``. Media shorter
    than ``clip_duration`` still give ``clips_per_video`` sub-clips, all ``[0, clip_duration)``: they run
    past the end and the loaders pad them. Exact fractions, as the sampler (``duration`` is the float
    the loaders compute).
    """
    clip = Fraction(clip_duration)
    max_start = Fraction(max(duration - clip, 0))
    step = Fraction(max_start, clips_per_video)
    points = []
    for index in range(clips_per_video):
        start = step * index
        points.append((start, start + clip))
        if step * (index + 1) > max_start:  # the sampler's end-of-video stop (never before clips_per_video)
            break
    return points


def audio_clip_bounds(num_samples: int, sample_rate: int = 16000, clip_duration: float = 2,
                      clips_per_video: int = 3) -> list[tuple[int, int]]:
    """Sample ranges ``[a, b)`` of the audio sub-clips: ``int(start · rate)``, ``int(end · rate)`` of
    :func:`constant_clip_timepoints` for ``duration = num_samples / rate``, as ImageBind slices the
    waveform (``b`` may pass the end; slicing stops there)."""
    points = constant_clip_timepoints(num_samples / sample_rate, clip_duration, clips_per_video)
    return [(int(start * sample_rate), int(end * sample_rate)) for start, end in points]


def log_mel_fbank(clip: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128,
                  target_length: int = 204) -> torch.Tensor:
    """Mean-subtracted audio (1, S) → Kaldi log-mel fbank (1, num_mel_bins, target_length).

    ImageBind's ``waveform2melspec`` after its mean subtraction (done by the caller, see
    :func:`audio_clips`): ``torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
    window_type="hanning", dither=0, frame_length=25, frame_shift=10)`` (25 ms frames every 10 ms,
    ``snip_edges``: a 2 s clip gives 198 frames), transposed to (mel, frames), right-padded with zeros
    or cut to ``target_length`` frames. The official code's warning for a >20 % length gap is not given.
    """
    window = int(sample_rate * 0.025)
    if clip.shape[-1] < window:
        # kaldi.fbank asserts here (and ImageBind's padding would divide by zero frames)
        raise ValueError(f"ImageBind audio needs at least one 25 ms fbank frame ({window} samples at "
                         f"{sample_rate} Hz), got {clip.shape[-1]} samples")
    fbank = torchaudio.compliance.kaldi.fbank(
        clip, htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
        num_mel_bins=num_mel_bins, dither=0.0, frame_length=25, frame_shift=10).transpose(0, 1)
    pad = target_length - fbank.shape[1]
    fbank = F.pad(fbank, (0, pad)) if pad > 0 else fbank[:, :target_length]
    return fbank[None]


def audio_clips(waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, target_length: int = 204,
                clip_duration: float = 2, clips_per_video: int = 3, mean: float = -4.268, std: float = 9.138
                ) -> torch.Tensor:
    """Mono 16 kHz audio (S,) → normalised fbanks (clips_per_video, 1, num_mel_bins, target_length).

    ImageBind's ``load_and_transform_audio_data`` after loading and resampling: for each sub-clip of
    :func:`audio_clip_bounds`, subtract the sub-clip's mean, :func:`log_mel_fbank`, then
    ``(x − mean) / std`` (padded frames included, as the official ``Normalize`` runs after padding).

    The official mean subtraction is in place on a view of the whole waveform, so where sub-clips
    overlap (audio shorter than ``clips_per_video · clip_duration``) a later sub-clip sees the shift of
    the earlier ones. That is reproduced on a copy (Kaldi's per-frame DC removal makes it matter only
    at frames straddling an earlier sub-clip's edge). Audio shorter than ``clip_duration`` gives
    ``clips_per_video`` copies of the whole audio, zero-padded in the fbank domain, as the official
    loader; audio shorter than one 25 ms frame is a ``ValueError``.
    """
    wave = waveform.reshape(1, -1).to(torch.float32).clone()
    if wave.shape[1] == 0:
        raise ValueError("ImageBind audio: empty waveform")
    fbanks = []
    for a, b in audio_clip_bounds(wave.shape[1], sample_rate, clip_duration, clips_per_video):
        segment = wave[:, a:b]
        segment -= segment.mean()  # in place on the shared waveform, as the official waveform2melspec
        fbanks.append(log_mel_fbank(segment, sample_rate, num_mel_bins, target_length))
    return (torch.stack(fbanks) - mean) / std


def video_clip_indices(num_frames: int, fps: float, clip_duration: float = 2, clips_per_video: int = 5,
                       frames_per_clip: int = 2) -> list[list[int]]:
    """Frame indices of each video sub-clip, as ImageBind reads them through pytorchvideo with decord.

    ``duration = num_frames / fps``; for each (start, end) of :func:`constant_clip_timepoints` decord's
    ``get_clip`` takes frames ``ceil(fps · start) … min(ceil(fps · end), num_frames) − 1`` (float
    arithmetic as there), and ``UniformTemporalSubsample(frames_per_clip)`` keeps
    ``linspace(0, t − 1, frames_per_clip)`` truncated to integers (float32) of those ``t`` frames. A
    video shorter than ``clip_duration`` gives ``clips_per_video`` copies of its whole length (a
    one-frame video repeats its frame). ImageBind passes ``clip_duration`` (2) as the frame count;
    here it is ``frames_per_clip`` (the model's ``video_frames``, also 2).
    """
    if num_frames < 1:
        raise ValueError("ImageBind video: no frames")
    if not fps > 0:
        raise ValueError(f"ImageBind video: fps must be positive, got {fps}")
    fps = float(fps)
    clips = []
    for start, end in constant_clip_timepoints(float(num_frames) / fps, clip_duration, clips_per_video):
        first = math.ceil(fps * float(start))
        stop = min(math.ceil(fps * float(end)), num_frames)
        if stop <= first:
            raise ValueError(f"ImageBind video: no frame in [{float(start):.3f}, {float(end):.3f}) s at {fps} fps")
        picks = torch.linspace(0, stop - first - 1, frames_per_clip, dtype=torch.float32)
        clips.append([first + int(i) for i in picks.clamp(0, stop - first - 1).long()])
    return clips


def short_side_scale(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float → shorter side ``size``, the longer ``floor(long / short · size)``: pytorchvideo's
    ``ShortSideScale`` (``F.interpolate`` bilinear, ``align_corners=False``, no antialiasing)."""
    h, w = frames.shape[-2:]
    new_h, new_w = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
    return F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False)


def uniform_crop_offsets(height: int, width: int, size: int, spatial_idx: int) -> tuple[int, int]:
    """(top, left) of ImageBind's ``uniform_crop``: centre ``ceil((side − size) / 2)``; index 0 / 2 move
    to the start / end of the longer side (top / bottom when ``height > width``, else left / right)."""
    if spatial_idx not in (0, 1, 2):
        raise ValueError(f"spatial_idx must be 0, 1 or 2, got {spatial_idx}")
    top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if height > width:
        top = {0: 0, 1: top, 2: height - size}[spatial_idx]
    else:
        left = {0: 0, 1: left, 2: width - size}[spatial_idx]
    return top, left


def video_clips(frames: torch.Tensor, fps: float, image_size: int = 224, clip_duration: float = 2,
                clips_per_video: int = 5, frames_per_clip: int = 2, num_crops: int = 3,
                mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Frames (F, 3, H, W) float in [0, 1] → views (clips_per_video · num_crops, 3, frames_per_clip, S, S).

    ImageBind's ``load_and_transform_video_data`` after decoding: the frames of
    :func:`video_clip_indices`, :func:`short_side_scale` to ``image_size``, ``(x − mean) / std`` (CLIP's),
    then ``SpatialCrop``: crops 0, 1, 2 of :func:`uniform_crop_offsets` (``num_crops=3``) or the centre
    one (``num_crops=1``), ordered sub-clip-major as the official list. Decoded uint8 frames divided by
    255 are exactly the official input; float frames are used unquantised.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3 (ImageBind's SpatialCrop), got {num_crops}")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"ImageBind video expects frames (F, 3, H, W), got {tuple(frames.shape)}")
    indices = video_clip_indices(frames.shape[0], fps, clip_duration, clips_per_video, frames_per_clip)
    picked = frames[torch.tensor(indices, device=frames.device).flatten()].to(torch.float32)
    x = short_side_scale(picked, image_size)
    x = (x - x.new_tensor(mean).view(3, 1, 1)) / x.new_tensor(std).view(3, 1, 1)
    h, w = x.shape[-2:]
    x = x.view(len(indices), frames_per_clip, 3, h, w).transpose(1, 2)  # (clips, C, T, H, W)
    views = []
    for clip in x:
        for idx in ((0, 1, 2) if num_crops == 3 else (1,)):
            top, left = uniform_crop_offsets(h, w, image_size, idx)
            views.append(clip[..., top:top + image_size, left:left + image_size])
    return torch.stack(views)


# ---------------------------------------------------------------------------------------- modules


class _PadIm2Video(nn.Module):
    """Images (N, C, H, W) → videos (N, C, ntimes, H, W) by repeating; 1-frame videos are repeated too."""

    def __init__(self, ntimes: int = 2):
        super().__init__()
        self.ntimes = ntimes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x[:, :, None]
        if x.ndim != 5:
            raise ValueError(f"ImageBind vision expects (N, 3, H, W) or (N, 3, T, H, W), got {tuple(x.shape)}")
        return x.repeat(1, 1, self.ntimes, 1, 1) if x.shape[2] == 1 else x


class _PatchEmbed(nn.Module):
    """``proj`` (a conv, or a Sequential of stem layers) → tokens (N, L, D), then ``norm_layer`` if any."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm_layer is None else self.norm_layer(x)


class _PosEmbedding(nn.Module):
    """Learnable positions (1, num_tokens, D) (official ``SpatioTemporalPosEmbeddingHelper``, learnable)."""

    def __init__(self, num_tokens: int, embed_dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, embed_dim) * embed_dim ** -0.5)


class _Preprocessor(nn.Module):
    """Patch stem, CLS token and positions (official ``RGBDTPreprocessor`` / ``AudioPreprocessor``)."""

    def __init__(self, stem: _PatchEmbed, num_patches: int, embed_dim: int):
        super().__init__()
        self.rgbt_stem = stem
        self.pos_embedding_helper = _PosEmbedding(num_patches + 1, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * embed_dim ** -0.5)
        self.num_patches = num_patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)
        if tokens.shape[1] != self.num_patches:
            # the official code interpolates the positions here; inputs are always at the built size
            raise ValueError(f"ImageBind stem gave {tokens.shape[1]} patches, the positions hold "
                             f"{self.num_patches}; feed inputs of the configured size")
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embedding_helper.pos_embed


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm block: ``x + attn(norm_1(x))``, then ``x + mlp(norm_2(x))`` (official ``BlockWithMasking``)."""

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool, mlp_ratio: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, bias=True, add_bias_kv=add_bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(mlp_ratio * dim))
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (L, N, D), sequence first as the official trunk feeds ``nn.MultiheadAttention``."""
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class _Transpose01(nn.Module):
    """(N, L, D) ↔ (L, N, D): the official ``EinOpsRearrange`` around the blocks (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1)


class _Trunk(nn.Module):
    """Official ``SimpleTransformer``: ``pre_transformer_layer`` (LayerNorm or Identity, then to sequence
    first), ``blocks``, ``post_transformer_layer`` (back to batch first)."""

    def __init__(self, dim: int, num_blocks: int, num_heads: int, pre_transformer_ln: bool, add_bias_kv: bool):
        super().__init__()
        first = nn.LayerNorm(dim, eps=1e-6) if pre_transformer_ln else nn.Identity()
        self.pre_transformer_layer = nn.Sequential(first, _Transpose01())
        self.blocks = nn.Sequential(*[_Block(dim, num_heads, add_bias_kv) for _ in range(num_blocks)])
        self.post_transformer_layer = _Transpose01()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.post_transformer_layer(self.blocks(self.pre_transformer_layer(tokens)))


class _SelectElement(nn.Module):
    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index, ...]


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, p=2)


class _LogitScaling(nn.Module):
    """Official ``LearnableLogitScaling(learnable=False)``: ``min(exp(log_logit_scale), max) · x``; the
    log scale is a (persistent) buffer, so it is in the published file."""

    def __init__(self, logit_scale_init: float, max_logit_scale: float = 100.0):
        super().__init__()
        self.max_logit_scale = max_logit_scale
        self.register_buffer("log_logit_scale", torch.ones([]) * math.log(logit_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=self.max_logit_scale) * x


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), _SelectElement(0), nn.Linear(dim, out_dim, bias=False))


def _as_tuple3(kernel: int | Sequence[int]) -> tuple[int, int, int]:
    k = (kernel,) * 3 if isinstance(kernel, int) else tuple(int(v) for v in kernel)
    if len(k) != 3:
        raise ValueError(f"vision kernel_size must be (T, H, W), got {kernel}")
    return k  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ model


class ImageBindAV(FeatureExtractor):
    """ImageBind's vision and audio towers with the official module names; defaults are ImageBind-Huge.

    Use :func:`load_imagebind` for the published weights; the constructor alone gives random weights
    (tests: ``ImageBindAV.tiny()``). ``num_features`` is ``out_embed_dim``. Frozen and always in eval.

    Args:
        out_embed_dim: joint embedding width (1024).
        vision_embed_dim, vision_num_blocks, vision_num_heads: vision trunk (1280, 32, 16).
        video_frames: frames per vision view (2; the Conv3d's time kernel covers them).
        kernel_size: vision patch (T, H, W) = stride ((2, 14, 14)).
        image_size: side of the square views (224).
        audio_embed_dim, audio_num_blocks, audio_num_heads: audio trunk (768, 12, 12).
        audio_kernel_size, audio_stride: audio patch conv (16, stride 10).
        audio_num_mel_bins, audio_target_len: fbank size (128 × 204).
        audio_logit_scale: the audio postprocessor's fixed scale (20; no effect on cosines).
        sample_rate: rate of the audio front end (16 kHz).
        audio_clip_duration, audio_clips_per_video, audio_mean, audio_std: audio sub-clips (2 s, 3) and
            fbank normalisation (−4.268, 9.138).
        video_clip_duration, video_clips_per_video, num_crops, image_mean, image_std: video sub-clips
            (2 s, 5), spatial crops (3) and normalisation (CLIP's).
        batch_size: views per tower forward pass (memory only; not part of :meth:`config`).
    """

    name = "imagebind"

    def __init__(self, out_embed_dim: int = 1024, vision_embed_dim: int = 1280, vision_num_blocks: int = 32,
                 vision_num_heads: int = 16, video_frames: int = 2, kernel_size: int | Sequence[int] = (2, 14, 14),
                 image_size: int = 224, audio_embed_dim: int = 768, audio_num_blocks: int = 12,
                 audio_num_heads: int = 12, audio_kernel_size: int = 16, audio_stride: int = 10,
                 audio_num_mel_bins: int = 128, audio_target_len: int = 204, audio_logit_scale: float = 20.0,
                 sample_rate: int = 16000, audio_clip_duration: float = 2, audio_clips_per_video: int = 3,
                 audio_mean: float = -4.268, audio_std: float = 9.138, video_clip_duration: float = 2,
                 video_clips_per_video: int = 5, num_crops: int = 3, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD, batch_size: int = 32):
        super().__init__()
        kt, kh, kw = _as_tuple3(kernel_size)
        if video_frames % kt or image_size % kh or image_size % kw:
            raise ValueError(f"video_frames={video_frames} and image_size={image_size} must be multiples of the "
                             f"vision kernel {(kt, kh, kw)}")
        if audio_num_mel_bins < audio_kernel_size or audio_target_len < audio_kernel_size:
            raise ValueError(f"the audio fbank ({audio_num_mel_bins} × {audio_target_len}) is smaller than the "
                             f"audio kernel {audio_kernel_size}")
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3 (ImageBind's SpatialCrop), got {num_crops}")
        self.out_embed_dim = out_embed_dim
        self.vision_embed_dim, self.vision_num_blocks, self.vision_num_heads = (vision_embed_dim, vision_num_blocks,
                                                                                vision_num_heads)
        self.video_frames, self.kernel_size, self.image_size = video_frames, (kt, kh, kw), image_size
        self.audio_embed_dim, self.audio_num_blocks, self.audio_num_heads = (audio_embed_dim, audio_num_blocks,
                                                                             audio_num_heads)
        self.audio_kernel_size, self.audio_stride = audio_kernel_size, audio_stride
        self.audio_num_mel_bins, self.audio_target_len = audio_num_mel_bins, audio_target_len
        self.audio_logit_scale, self.sample_rate = float(audio_logit_scale), int(sample_rate)
        self.audio_clip_duration, self.audio_clips_per_video = audio_clip_duration, int(audio_clips_per_video)
        self.audio_mean, self.audio_std = float(audio_mean), float(audio_std)
        self.video_clip_duration, self.video_clips_per_video = video_clip_duration, int(video_clips_per_video)
        self.num_crops = int(num_crops)
        self.image_mean, self.image_std = tuple(float(v) for v in image_mean), tuple(float(v) for v in image_std)
        self.batch_size = int(batch_size)
        self.num_features = out_embed_dim

        vision_patches = (video_frames // kt) * (image_size // kh) * (image_size // kw)
        audio_patches = (((audio_num_mel_bins - audio_kernel_size) // audio_stride + 1)
                         * ((audio_target_len - audio_kernel_size) // audio_stride + 1))
        vision_stem = _PatchEmbed(nn.Sequential(
            _PadIm2Video(ntimes=2),
            nn.Conv3d(3, vision_embed_dim, kernel_size=(kt, kh, kw), stride=(kt, kh, kw), bias=False)))
        audio_stem = _PatchEmbed(
            nn.Conv2d(1, audio_embed_dim, kernel_size=audio_kernel_size, stride=audio_stride, bias=False),
            norm_layer=nn.LayerNorm(audio_embed_dim))
        self.modality_preprocessors = nn.ModuleDict({
            "vision": _Preprocessor(vision_stem, vision_patches, vision_embed_dim),
            "audio": _Preprocessor(audio_stem, audio_patches, audio_embed_dim)})
        self.modality_trunks = nn.ModuleDict({
            "vision": _Trunk(vision_embed_dim, vision_num_blocks, vision_num_heads, pre_transformer_ln=True,
                             add_bias_kv=False),
            "audio": _Trunk(audio_embed_dim, audio_num_blocks, audio_num_heads, pre_transformer_ln=False,
                            add_bias_kv=True)})
        self.modality_heads = nn.ModuleDict({"vision": _head(vision_embed_dim, out_embed_dim),
                                             "audio": _head(audio_embed_dim, out_embed_dim)})
        self.modality_postprocessors = nn.ModuleDict({
            "vision": _Normalize(),
            "audio": nn.Sequential(_Normalize(), _LogitScaling(audio_logit_scale))})
        self._freeze()

    @classmethod
    def tiny(cls, **overrides: Any) -> ImageBindAV:
        """Same code path with narrow, shallow towers and 28² views (``TINY_IMAGEBIND``), for tests."""
        return cls(**{**TINY_IMAGEBIND, **overrides})

    def config(self) -> dict[str, Any]:
        return {"out_embed_dim": self.out_embed_dim, "vision_embed_dim": self.vision_embed_dim,
                "vision_num_blocks": self.vision_num_blocks, "vision_num_heads": self.vision_num_heads,
                "video_frames": self.video_frames, "kernel_size": list(self.kernel_size),
                "image_size": self.image_size, "audio_embed_dim": self.audio_embed_dim,
                "audio_num_blocks": self.audio_num_blocks, "audio_num_heads": self.audio_num_heads,
                "audio_kernel_size": self.audio_kernel_size, "audio_stride": self.audio_stride,
                "audio_num_mel_bins": self.audio_num_mel_bins, "audio_target_len": self.audio_target_len,
                "audio_logit_scale": self.audio_logit_scale, "sample_rate": self.sample_rate,
                "audio_clip_duration": float(self.audio_clip_duration),
                "audio_clips_per_video": self.audio_clips_per_video, "audio_mean": self.audio_mean,
                "audio_std": self.audio_std, "video_clip_duration": float(self.video_clip_duration),
                "video_clips_per_video": self.video_clips_per_video, "num_crops": self.num_crops,
                "image_mean": list(self.image_mean), "image_std": list(self.image_std)}

    @property
    def device(self) -> torch.device:
        return self.modality_heads["audio"][2].weight.device

    # --- towers

    def _tower(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        tokens = self.modality_preprocessors[modality](x)
        out = self.modality_heads[modality](self.modality_trunks[modality](tokens))
        return self.modality_postprocessors[modality](out)

    def _chunked(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        dtype = self.modality_heads[modality][2].weight.dtype
        return torch.cat([self._tower(modality, chunk.to(self.device, dtype)) for chunk in x.split(self.batch_size)])

    def embed_vision(self, views: torch.Tensor) -> torch.Tensor:
        """Vision views (N, 3, T, H, W) (or images (N, 3, H, W), repeated to 2 frames) → postprocessed
        per-view embeddings (N, out_embed_dim), unit norm."""
        return self._chunked("vision", views)

    def embed_audio(self, fbanks: torch.Tensor) -> torch.Tensor:
        """Normalised fbanks (N, 1, mel, frames) → postprocessed per-clip embeddings (N, out_embed_dim),
        norm ``audio_logit_scale`` (20)."""
        return self._chunked("audio", fbanks)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official ``ImageBindModel.forward`` for ``"vision"`` / ``"audio"``: inputs with ndim ≥ 5 are
        (B, S, ...) sub-clips, embedded as B·S and averaged over S after the postprocessor. As there, vision
        views go in as (B, S, 3, T, H, W) (a 5-D vision input is read as (B, S) images); for a flat batch
        of views use :meth:`embed_vision`."""
        outputs = {}
        for modality, value in inputs.items():
            if modality not in MODALITIES:
                raise ValueError(f"ImageBindAV has the vision and audio towers only, got {modality!r}")
            reduce = value.ndim >= 5
            b, s = value.shape[:2]
            flat = value.reshape(b * s, *value.shape[2:]) if reduce else value
            out = self._chunked(modality, flat)
            outputs[modality] = out.view(b, s, -1).mean(dim=1) if reduce else out
        return outputs

    # --- media → official inputs

    def audio_inputs(self, audio: torch.Tensor | Sequence[Any], sample_rate: int = 16000) -> torch.Tensor:
        """Audio (B, S) float at ``sample_rate`` or a list of B mono (S,) arrays (lengths may differ) →
        fbanks (B, audio_clips_per_video, 1, mel, frames) as ``load_and_transform_audio_data``."""
        if isinstance(audio, torch.Tensor) and audio.ndim != 2:
            raise ValueError(f"ImageBind audio expects (B, S) or a list of (S,) waveforms, got {tuple(audio.shape)}")
        clips = list(audio.unbind(0)) if isinstance(audio, torch.Tensor) else list(audio)
        if not clips:
            raise ValueError("ImageBind audio: no clips")
        out = []
        for clip in clips:
            wave = torch.as_tensor(np.asarray(clip) if not isinstance(clip, torch.Tensor) else clip)
            if wave.ndim != 1:
                raise ValueError(f"ImageBind audio expects mono (S,) clips, got {tuple(wave.shape)}")
            wave = wave.to(self.device, torch.float32)
            if int(sample_rate) != self.sample_rate:
                wave = torchaudio.functional.resample(wave, int(sample_rate), self.sample_rate)
            out.append(audio_clips(wave, self.sample_rate, self.audio_num_mel_bins, self.audio_target_len,
                                   self.audio_clip_duration, self.audio_clips_per_video, self.audio_mean,
                                   self.audio_std))
        return torch.stack(out)

    def vision_inputs(self, frames: torch.Tensor | Sequence[Any], fps: float | Sequence[float]) -> torch.Tensor:
        """Frames (B, F, 3, H, W) float in [-1, 1] (axis 1 is time), or a list of B clips (F, H, W, 3) uint8
        (sizes may differ), at ``fps`` (one value or one per clip) → views (B, clips · crops, 3, T, S, S)
        as ``load_and_transform_video_data``. Float frames are clamped to [-1, 1] and mapped to [0, 1]."""
        videos = _frames_01(frames, self.device)
        rates = _per_clip(fps, len(videos), "fps")
        return torch.stack([video_clips(v, r, self.image_size, self.video_clip_duration, self.video_clips_per_video,
                                        self.video_frames, self.num_crops, self.image_mean, self.image_std)
                            for v, r in zip(videos, rates)])

    @torch.no_grad()
    def audio_embedding(self, audio: torch.Tensor | Sequence[Any], sample_rate: int = 16000) -> torch.Tensor:
        """Audio as :meth:`audio_inputs` → ImageBind's audio output (B, out_embed_dim) float32: the mean over
        the sub-clips of the normalised, ×20 per-sub-clip embeddings."""
        return self({"audio": self.audio_inputs(audio, sample_rate)})["audio"].float()

    @torch.no_grad()
    def vision_embedding(self, frames: torch.Tensor | Sequence[Any], fps: float | Sequence[float]) -> torch.Tensor:
        """Frames as :meth:`vision_inputs` → ImageBind's vision output (B, out_embed_dim) float32: the mean
        over the 15 views of the normalised per-view embeddings."""
        return self({"vision": self.vision_inputs(frames, fps)})["vision"].float()


def _per_clip(value: Any, n: int, what: str) -> list[float]:
    if isinstance(value, (list, tuple)) or (isinstance(value, (torch.Tensor, np.ndarray)) and np.ndim(value) == 1):
        if len(value) != n:
            raise ValueError(f"ImageBind: {len(value)} values of {what} for {n} clips")
        return [float(v) for v in value]
    return [float(value)] * n


def _frames_01(frames: torch.Tensor | Sequence[Any], device: torch.device) -> list[torch.Tensor]:
    """Each clip as (F, 3, H, W) float32 in [0, 1] on ``device`` (float input clamped to [-1, 1] first)."""
    clips = unit_range_clips(frames, device, "ImageBind", clamp=True)
    if not clips:
        raise ValueError("ImageBind video: no clips")
    return clips


# ---------------------------------------------------------------------------------- weight files


def _tower_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The file's vision / audio entries, and the keys that belong to no official modality."""
    kept, foreign = {}, []
    for key, value in state.items():
        parts = str(key).split(".")
        modality = parts[1] if len(parts) > 1 and parts[0].startswith("modality_") else None
        if modality in MODALITIES:
            kept[key] = value
        elif modality not in OTHER_MODALITIES:
            foreign.append(str(key))
    return kept, foreign


def load_imagebind(path: str | os.PathLike | None, config_key: str = "evaluate.imagebind.path",
                   **sizes: Any) -> ImageBindAV:
    """:class:`ImageBindAV` (``**sizes`` go to its constructor; defaults: Huge) with the vision and audio
    weights of the official ``imagebind_huge.pth`` (a flat state dict of all six modalities).

    The file is read with ``torch.load(map_location="cpu", weights_only=True)``; its ``modality_*.vision.*``
    and ``modality_*.audio.*`` entries must equal the model's state dict key for key and shape (the text,
    depth, thermal and IMU entries are dropped), else a ``ValueError`` names the file and lists the
    missing, unexpected and mis-shaped keys. The model is built on the meta device and takes the file's
    tensors (no random init of 720 M parameters), as float32. The SHA-256 is recorded under
    ``"imagebind"``; a missing file raises :class:`~avgen.pretrained.ExtractorWeightsMissing`
    naming ``config_key``.
    """
    file = require_file("imagebind", path, config_key)
    origin = ORIGINS["imagebind"]
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsFileError(f"cannot read {file} (config key {config_key}) with torch.load(weights_only=True) "
                               f"({exc}); expected {origin.file} from {origin.where}") from exc
    if not isinstance(state, Mapping):
        raise WeightsFileError(f"{file} (config key {config_key}) holds a {type(state).__name__}, not a state dict; "
                               f"expected {origin.file} from {origin.where}")
    with torch.device("meta"):
        model = ImageBindAV(**sizes)
    expected = model.state_dict()
    kept, foreign = _tower_state(state)
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected)) + sorted(foreign)
    mismatched = [f"{k}: file {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}, model "
                  f"{tuple(expected[k].shape)}" for k, v in kept.items()
                  if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    if missing or unexpected or mismatched:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        problems = [f"{len(keys)} {what}: {some(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatched", mismatched)) if keys]
        raise ValueError(f"{file} does not fit ImageBindAV({sizes or 'Huge'}) (vision + audio towers): "
                         f"{'; '.join(problems)}. Expected {origin.file}, {origin.what}, from {origin.where}")
    model.load_state_dict(kept, strict=True, assign=True)
    model.float()
    model._record("imagebind", file)
    model._freeze()
    return model


def save_official_format(model: ImageBindAV, path: str | os.PathLike) -> None:
    """Write ``model``'s weights as the official file lays out its vision and audio entries: one flat
    ``torch.save``-d state dict with the official keys (tests: a tiny "official" file)."""
    state = OrderedDict((k, v.detach().to("cpu").clone().contiguous()) for k, v in model.state_dict().items())
    torch.save(state, path)
