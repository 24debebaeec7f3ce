"""ViViT, one of the spatio-temporal video encoders of VTA-LDM's encoder ablation (Xu et al. 2024, "Video-to-Audio
Generation with Hidden Alignment", arXiv 2407.07464, Table 2 and appendix C, item 5: "the pre-trained ViViT trained
on the kinetics400 dataset"), and the windowed token machinery it shares with V-JEPA (:mod:`avgen.encoders.vjepa`).

ViViT-B/16x2 (Arnab et al. 2021, unfactorised "model 1"), transformers' ``VivitModel`` with the
``google/vivit-b-16x2-kinetics400`` weights, embeds a window of 32 frames at 224 px with tubelets of 2 frames × 16 ×
16 pixels: 16 time slots × 14 × 14 patches, plus a CLS token. One token per time slot is the mean over its 196 patches
of ``last_hidden_state`` (the CLS token left out), 768-d. The paper does not say how it pooled ViViT's tokens, nor
at what frame rate it decoded; avgen decodes at 8 fps (:data:`FPS`, ``model.encoder.fps``), so a window spans 4 s and
a token 0.25 s (``seconds_per_token`` = tubelet frames / fps). Shapes for one clip of F frames::

    frames (F, 3, H, W) uint8  ── preprocess ──>  (F, 3, 224, 224) float32
                               ── pad to n = ⌈F / 32⌉ windows, repeating the last frame ──>  (n, 32, 3, 224, 224)
                               ── VivitModel, drop CLS ──>  (n, 16 · 196, 768)  (patches in time, row, column order)
                               ── mean over the 196 patches of each slot ──>  tokens (n · 16, 768)

Axis 0 of the tokens is time; the first ⌈F / 2⌉ are real (a slot with at least one real frame), the rest masked.

Preprocessing (:class:`VideoPreprocessing`) is ``VivitImageProcessor`` with the checkpoint's published
``preprocessor_config.json``: bilinear resize of the short side to 224 (PIL, antialiased), centre crop 224,
``x / 127.5 − 1`` (``rescale_factor`` 1/127.5 with ``offset``), then mean/std 0.5 (``do_normalize``), so the pixels
lie in [−3, 1]. That double scaling departs from the original JAX ViViT, which feeds zero-centred [−1, 1] pixels
without mean/std (transformers' ``convert_vivit_flax_to_pytorch.py``, citing scenic and dmvr); ``normalize=False``
gives that input. The config values are those of the hub repository's ``preprocessor_config.json`` as copied into
fine-tunes of it (e.g. huggingface.co/Arekku21/vivit-b-16x2-kinetics400-finetuned-MSL_8): ``shortest_edge`` 224,
``crop_size`` 224×224, ``resample`` 2 (bilinear), ``rescale_factor`` 1/127.5, ``offset`` true, ``do_normalize``
true, ``image_mean`` = ``image_std`` = 0.5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import VivitConfig, VivitForVideoClassification, VivitModel

from avgen.backbones.loader import TINY_PREFIX
from avgen.backbones.tiny import TINY_BUILDERS
from avgen.encoders.base import VideoTokens
from avgen.encoders.frames import (
    EncoderModelMissing,
    FrozenVideoEncoder,
    check_fps,
    check_normalize,
    load_frozen_model,
    padded_tokens,
    round_straight_through,
)
from avgen.media import as_fps, centre_origin

HUB_ID = "google/vivit-b-16x2-kinetics400"
FPS = 8  # avgen's choice (the paper is silent): a 32-frame window spans 4 s, a token 0.25 s
TINY_SOURCE = f"{TINY_PREFIX}vivit"


def resize_short_side(frames: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of 8-bit frames (:func:`resize_bilinear`) so that the short side becomes ``size``
    and the long side ``int(size · long / short)`` (transformers' ``get_resize_output_image_size``, as both
    processors compute it).

    Args:
        frames: (N, 3, H, W) uint8, or float32 holding 0…255.
        size: the short side after resizing.

    Returns:
        (N, 3, H', W'): uint8 for uint8 frames, else float32 holding integers in [0, 255].
    """
    height, width = frames.shape[-2:]
    new_h, new_w = (int(size * height / width), size) if height > width else (size, int(size * width / height))
    return resize_bilinear(frames, (new_h, new_w))


def resize_bilinear(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize of 8-bit frames to ``size`` = (H', W'), PIL's ``Image.resize(BILINEAR)`` on
    tensors, by torchvision's rule, which ``VJEPA2VideoProcessor`` runs: on the CPU PyTorch's uint8 kernel (a port of
    PIL's two-pass fixed-point filter, with 8-bit rounding between the passes), elsewhere a float pass rounded to 8
    bits. Against PIL's ``Image.resize(BILINEAR)`` (what ``VivitImageProcessor`` runs) the CPU kernel differs by at
    most 2 grey levels (measured, see tests/encoders/test_vivit.py).

    Float frames (the differentiable path, :meth:`~avgen.encoders.frames.FrozenVideoEncoder.differentiable`) take
    the float pass on every device, rounded straight-through.

    Args:
        frames: (N, 3, H, W) uint8, or float32 holding 0…255.
        size: (H', W'), the size after resizing; frames of that size are returned as they are.

    Returns:
        (N, 3, H', W'): uint8 for uint8 frames, else float32 holding integers in [0, 255].
    """
    if tuple(size) == tuple(frames.shape[-2:]):
        return frames
    if frames.dtype == torch.uint8 and frames.device.type == "cpu":
        return F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
    resized = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    resized = round_straight_through(resized).clamp(0, 255)
    return resized.to(torch.uint8) if frames.dtype == torch.uint8 else resized


@dataclass(frozen=True)
class VideoPreprocessing:
    """A transformers image / video processor's steps on tensors: :func:`resize_short_side` to ``resize``, centre
    crop ``crop`` (offset ``(side − crop) // 2``), ``x · rescale_factor + offset``, then ``(x − mean) / std`` per
    channel when ``mean`` is set."""

    resize: int
    crop: int
    rescale_factor: float
    offset: float = 0.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __call__(self, frames: Tensor) -> Tensor:
        """frames: (N, 3, H, W) uint8 (or float32 holding 0…255) → (N, 3, crop, crop) float32, on the frames'
        device."""
        x = resize_short_side(frames, self.resize)
        top, left = centre_origin(tuple(x.shape[-2:]), (self.crop, self.crop))
        x = x[..., top:top + self.crop, left:left + self.crop].float() * self.rescale_factor + self.offset
        if self.mean is not None:
            x = (x - x.new_tensor(self.mean).view(3, 1, 1)) / x.new_tensor(self.std).view(3, 1, 1)
        return x


def vivit_preprocessing(image_size: int = 224, normalize: bool = True) -> VideoPreprocessing:
    """``VivitImageProcessor`` with ``google/vivit-b-16x2-kinetics400``'s settings (module docstring), for a model
    of input side ``image_size`` (resize and crop both equal it, 224 in the checkpoint); ``normalize=False`` leaves
    out the mean/std step (the original ViViT's [−1, 1] input)."""
    half = (0.5, 0.5, 0.5)
    return VideoPreprocessing(resize=image_size, crop=image_size, rescale_factor=1 / 127.5, offset=-1.0,
                              mean=half if normalize else None, std=half if normalize else None)


class WindowedVideoEncoder(FrozenVideoEncoder):
    """A frozen spatio-temporal video transformer run on consecutive fixed-length windows of a clip, one token per
    tubelet time slot (its patches averaged over space).

    A subclass sets :attr:`name` and :attr:`fps` and implements :attr:`window_frames`, :attr:`tubelet_frames`,
    :attr:`embed_dim` and :meth:`patch_tokens`; :attr:`preprocessing` maps frames to the model's pixels.

    Args:
        model: the transformers model, frozen here.
        preprocessing: the model's pixel preprocessing.
        fps: the frame rate the frames must be decoded at; the encoder does not resample, callers read it to decode.
    """

    def __init__(self, model: torch.nn.Module, preprocessing: VideoPreprocessing, fps: float):
        super().__init__(model, fps)
        self.preprocessing = preprocessing

    @property
    def window_frames(self) -> int:
        """Frames per window (the model's fixed input length)."""
        raise NotImplementedError

    @property
    def tubelet_frames(self) -> int:
        """Frames per tubelet, i.e. per time slot and token."""
        raise NotImplementedError

    def patch_tokens(self, pixels: Tensor) -> Tensor:
        """pixels (N, window_frames, 3, S, S) in the model's dtype → (N, slots · patches, D), patches ordered by time
        slot, then row, then column."""
        raise NotImplementedError

    @property
    def seconds_per_token(self) -> Fraction:
        """The time one token covers: tubelet frames / fps."""
        return Fraction(self.tubelet_frames) / as_fps(self.fps)

    def encode(self, clips: list[Tensor]) -> VideoTokens:
        """Tokens window by window: ``embeds`` (B, T, D) float32 in time order, T = slots per window × the largest
        window count ⌈F_b / window_frames⌉; ``mask`` (B, T) True at the ⌈F_b / tubelet_frames⌉ tokens that hold a
        real frame (the last window is padded by repeating the last frame); embeds are zero where the mask is False.
        """
        device = self.model.device
        length = self.window_frames
        windows, counts = [], []
        for clip in clips:
            pixels = self.preprocessing(clip.to(device))
            count = -(-len(clip) // length)
            padding = pixels[-1:].expand(count * length - len(clip), *pixels.shape[1:])
            windows.append(torch.cat([pixels, padding]).view(count, length, *pixels.shape[1:]))
            counts.append(count)
        patches = self.patch_tokens(torch.cat(windows).to(self.model.dtype))
        slots = length // self.tubelet_frames
        tokens = patches.view(patches.shape[0], slots, -1, patches.shape[-1]).mean(2).float()
        per_clip = [window_tokens.flatten(0, 1) for window_tokens in tokens.split(counts)]
        real = [-(-len(clip) // self.tubelet_frames) for clip in clips]
        return padded_tokens(per_clip, self.seconds_per_token, real)


class ViViTEncoder(WindowedVideoEncoder):
    """VTA-LDM's ViViT encoder: ``VivitModel`` ``last_hidden_state`` of 32-frame windows, averaged over space per
    tubelet time slot (module docstring).

    Args:
        model: ``VivitModel`` (:func:`load_vivit` loads it); frozen here.
        normalize: the checkpoint processor's mean/std step ([−3, 1] pixels); False feeds the original ViViT's
            [−1, 1] pixels.
        fps: the frame rate the frames must be decoded at (:data:`FPS`).
    """

    name = "ViViT"
    fps: float = FPS  # the rate to decode at, readable before an encoder is loaded

    def __init__(self, model: VivitModel, normalize: bool = True, fps: float = FPS):
        super().__init__(model, vivit_preprocessing(model.config.image_size, normalize), fps)
        self.normalize = normalize

    @property
    def window_frames(self) -> int:
        return self.model.config.num_frames

    @property
    def tubelet_frames(self) -> int:
        return self.model.config.tubelet_size[0]

    @property
    def embed_dim(self) -> int:
        return self.model.config.hidden_size

    def patch_tokens(self, pixels: Tensor) -> Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 1:]  # CLS first


class ViViTModelMissing(EncoderModelMissing):
    """The ViViT model is neither a local folder nor in the local hub cache."""

    what = "ViViT"
    hub_id = HUB_ID
    layout = ("config.json and model.safetensors or pytorch_model.bin of a VivitForVideoClassification, as the hub "
              "repository holds them, or of a VivitModel")
    tiny_source = TINY_SOURCE
    tower = "ViViT encoder"


def load_vivit(source: str | os.PathLike | None = HUB_ID, config_key: str = "model.encoder.path", *,
               tiny_dir: str | os.PathLike | None = None, normalize: bool = True, fps: float = FPS) -> ViViTEncoder:
    """The frozen :class:`ViViTEncoder` from local files only.

    Args:
        source: a hub id read from the local Hugging Face cache (default ``google/vivit-b-16x2-kinetics400``), a
            local folder in transformers' layout (a ``VivitForVideoClassification``, as the hub repository, whose
            classifier is left out, or a ``VivitModel``), or ``tiny:vivit`` (:func:`save_tiny_vivit`, written once
            under ``tiny_dir``).
        config_key: the config key ``source`` comes from, named in errors; ``normalize`` and ``fps`` are its
            siblings (``model.encoder.normalize``, ``model.encoder.fps``).
        tiny_dir: the folder for tiny weights (only with ``tiny:vivit``).
        normalize, fps: see :class:`ViViTEncoder`.

    Raises:
        ViViTModelMissing: no such folder, nor the hub id in the local cache.
        ConfigError: the folder lacks weights of ``VivitModel`` or holds mis-shaped ones, or ``fps`` / ``normalize``
            are not a positive number / a bool.
    """
    check_fps(fps, config_key, FPS)
    check_normalize(normalize, config_key, "the checkpoint processor's mean/std 0.5, [-3, 1] pixels",
                    "the original ViViT's [-1, 1] pixels")
    model = load_frozen_model(VivitModel, source, config_key, tiny_dir, ViViTModelMissing, add_pooling_layer=False)
    return ViViTEncoder(model, normalize=normalize, fps=fps)


def save_tiny_vivit(folder: str | os.PathLike) -> None:
    """``google/vivit-b-16x2-kinetics400``'s layout, small: a ``VivitForVideoClassification`` (``config.json`` +
    ``model.safetensors``, the encoder under ``vivit.`` beside a classifier, as the hub repository holds them), so
    :func:`load_vivit` runs its path from the classification checkpoint to ``VivitModel``. ViViT-B's window (32
    frames) and tubelet (2, 16, 16), at 32 px (2 × 2 patches per slot), 2 layers 32 wide, 4 classes."""
    torch.manual_seed(0)
    VivitForVideoClassification(VivitConfig(
        image_size=32, num_frames=32, tubelet_size=[2, 16, 16], hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=4,
    )).save_pretrained(Path(folder))


# ``tiny:vivit`` (scale=tiny): the twin is written by this module's own code
TINY_BUILDERS["vivit"] = save_tiny_vivit
