"""The frozen video encoder of VTA-LDM (Xu et al. 2024, "Video-to-Audio Generation with Hidden Alignment",
arXiv 2407.07464, §3.2 and appendix C, item 1): CLIP ViT-L/14 image embeddings of the video's frames, in time order
("CLIP4Clip", Luo et al. 2021: per-frame CLIP features, here without CLIP4Clip's pooling or fine-tuning).

The public code runs Hugging Face ``CLIPVisionModelWithProjection`` with the ``openai/clip-vit-large-patch14``
weights on frames decoded at 2 fps (:data:`FPS`; a 10 s clip gives 20 frames) and keeps ``image_embeds`` (768-d)
per frame; a trained linear projection (not here) maps them to the diffusion condition. Shapes for B clips of F
frames::

    frames (B, F, 3, H, W) uint8      ── preprocess, per frame ──>   pixels (B·F, 3, 224, 224) float32
    pixels                            ── CLIP vision tower, visual_projection ──>  embeds (B, F, 768) float32

Axis 1 is time throughout. Preprocessing is CLIP's (:func:`preprocess`): bicubic resize of the short side to 224,
centre crop 224, scale to [0, 1], then CLIP's mean/std. The public code departs here: its mean/std step is
commented out, so the model sees [0, 1] pixels; ``normalize=False`` reproduces that.
"""

from __future__ import annotations

import os
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPVisionModelWithProjection
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from avgen.backbones.loader import TINY_PREFIX
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

HUB_ID = "openai/clip-vit-large-patch14"
FPS = 2  # frames per second the encoder expects (VTA-LDM's frame rate)
TINY_SOURCE = f"{TINY_PREFIX}clip4clip"


def resize_short_side(frames: Tensor, size: int) -> Tensor:
    """PIL's bicubic resize of 8-bit images (what CLIP's and ``CLIPImageProcessor``'s preprocessing run), on tensors.

    The short side becomes ``size`` and the long side ``int(size · long / short)`` (rounded down, as
    ``CLIPImageProcessor`` and torchvision's ``Resize(size)``). PIL filters with the antialiased bicubic kernel
    (a = −0.5, widened when shrinking) that ``F.interpolate(mode="bicubic", antialias=True)`` implements, in two
    passes, horizontal then vertical, rounding to 8 bits after each; done here the same way, because the rounding
    clips the bicubic overshoot: one float pass differs from PIL by up to 24 grey levels on high-frequency frames,
    the two rounded passes by at most 2 (measured, see tests/encoders/test_clip4clip.py).

    Args:
        frames: (N, 3, H, W) uint8 images, or float32 holding 0…255 (differentiable: the rounding is straight-through).
        size: the short side after resizing (224 for CLIP ViT-L/14).

    Returns:
        (N, 3, H', W') float32 holding integers in [0, 255].
    """
    height, width = frames.shape[-2:]
    new_h, new_w = (int(size * height / width), size) if height > width else (size, int(size * width / height))
    x = frames.float()
    if new_w != width:
        x = F.interpolate(x, size=(height, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = round_straight_through(x).clamp(0, 255)
    if new_h != height:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = round_straight_through(x).clamp(0, 255)
    return x


def preprocess(frames: Tensor, image_size: int = 224, normalize: bool = True) -> Tensor:
    """CLIP's image preprocessing on a stack of frames: ``CLIPImageProcessor(do_center_crop=True,
    resample=BICUBIC)`` on tensors, on the frames' device.

    :func:`resize_short_side` to ``image_size``, centre crop ``image_size`` (offset ``(side − image_size) // 2``),
    ``/ 255``, then ``(x − OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD`` per channel when ``normalize``.

    Args:
        frames: (N, 3, H, W) uint8 RGB frames, or float32 holding 0…255 (differentiable).
        image_size: the model's input side (``config.image_size``, 224 for ViT-L/14).
        normalize: apply CLIP's mean/std; False gives the public VTA-LDM input, [0, 1] pixels.

    Returns:
        (N, 3, image_size, image_size) float32.
    """
    x = resize_short_side(frames, image_size)
    top, left = centre_origin(tuple(x.shape[-2:]), (image_size, image_size))
    x = x[..., top:top + image_size, left:left + image_size] / 255
    if normalize:
        mean, std = x.new_tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), x.new_tensor(OPENAI_CLIP_STD).view(3, 1, 1)
        x = (x - mean) / std
    return x


#: the encoder's output (one token per frame); the name predates the shared :class:`VideoTokens`
CLIP4ClipOutput = VideoTokens


class FrameEncoder(FrozenVideoEncoder):
    """A frozen image model run on every frame of a clip after CLIP's preprocessing (:func:`preprocess`), one token
    per frame in time order: the frame encoders of VTA-LDM's Table 2 (CLIP4Clip, ImageBind, LanguageBind).

    A subclass sets :attr:`name` and :attr:`fps` and implements :attr:`embed_dim`, :attr:`image_size` and
    :meth:`embed_frames`.

    Args:
        model: the image model; frozen here.
        normalize: the model's mean/std on the pixels; False feeds [0, 1] pixels (the public VTA-LDM code's CLIP input).
        fps: the frame rate the frames must be decoded at (default: the class's :attr:`fps`); the encoder does not
            resample, callers read it to decode.
    """

    def __init__(self, model: torch.nn.Module, normalize: bool = True, fps: float | None = None):
        super().__init__(model, type(self).fps if fps is None else fps)
        self.normalize = normalize

    @property
    def image_size(self) -> int:
        """The side of the square model input."""
        raise NotImplementedError

    def embed_frames(self, pixels: Tensor) -> Tensor:
        """pixels (N, 3, image_size, image_size) float32 on the model's device → embeddings (N, D)."""
        raise NotImplementedError

    def encode(self, clips: list[Tensor]) -> VideoTokens:
        """One token per frame: ``embeds`` (B, max F_b, D) float32 in frame order, zero at padding; ``mask``
        (B, max F_b) bool; ``seconds_per_token`` = 1 / fps."""
        lengths = [len(clip) for clip in clips]
        pixels = torch.cat([preprocess(clip.to(self.model.device), self.image_size, self.normalize)
                            for clip in clips])
        embeds = self.embed_frames(pixels).float()
        return padded_tokens(embeds.split(lengths), Fraction(1) / as_fps(self.fps))


class CLIP4ClipEncoder(FrameEncoder):
    """VTA-LDM's frozen video encoder: ``CLIPVisionModelWithProjection`` ``image_embeds`` of every frame.

    Args:
        model: the CLIP vision tower with its projection (:func:`load_clip4clip` loads it); frozen here.
        normalize: CLIP's mean/std on the pixels (the paper's CLIP); False reproduces the public code, which feeds
            [0, 1] pixels.
        fps: the frame rate the frames must be decoded at (2 in VTA-LDM); the encoder does not resample, callers
            read it to decode.
    """

    name = "CLIP4Clip"
    fps: float = FPS

    @property
    def embed_dim(self) -> int:
        """D, the width of the embeddings (the model's ``projection_dim``)."""
        return self.model.config.projection_dim

    @property
    def image_size(self) -> int:
        """The side of the square model input (``config.image_size``)."""
        return self.model.config.image_size

    def embed_frames(self, pixels: Tensor) -> Tensor:
        return self.model(pixel_values=pixels.to(self.model.dtype)).image_embeds


class CLIP4ClipModelMissing(EncoderModelMissing):
    """The CLIP model is neither a local folder nor in the local hub cache."""

    what = "CLIP"
    hub_id = HUB_ID
    layout = ("config.json and model.safetensors or pytorch_model.bin of a CLIPModel or "
              "CLIPVisionModelWithProjection")
    tiny_source = TINY_SOURCE
    tower = "CLIP vision tower"


def load_clip4clip(source: str | os.PathLike | None = HUB_ID, config_key: str = "model.encoder.path", *,
                   tiny_dir: str | os.PathLike | None = None, normalize: bool = True,
                   fps: float = FPS) -> CLIP4ClipEncoder:
    """The frozen :class:`CLIP4ClipEncoder` from local files only.

    Args:
        source: a hub id read from the local Hugging Face cache (default VTA-LDM's ``openai/clip-vit-large-patch14``),
            a local folder in transformers' layout (a ``CLIPModel``, as the hub repository, whose text tower is left
            out, or a ``CLIPVisionModelWithProjection``), or ``tiny:clip4clip`` (tiny random weights written once
            under ``tiny_dir``, :func:`avgen.backbones.tiny.save_tiny_clip_vision`).
        config_key: the config key ``source`` comes from, named in errors; ``normalize`` and ``fps`` are its
            siblings (``model.encoder.normalize``, ``model.encoder.fps``).
        tiny_dir: the folder for tiny weights (only with ``tiny:clip4clip``).
        normalize, fps: see :class:`CLIP4ClipEncoder`.

    Raises:
        CLIP4ClipModelMissing: no such folder, nor the hub id in the local cache.
        ConfigError: the model lacks weights of the vision tower, holds mis-shaped ones, or ``fps`` / ``normalize``
            are not a positive number / a bool.
    """
    check_fps(fps, config_key, FPS)
    check_normalize(normalize, config_key, "CLIP's mean/std", "the public VTA-LDM code's [0, 1] pixels")
    model = load_frozen_model(CLIPVisionModelWithProjection, source, config_key, tiny_dir, CLIP4ClipModelMissing)
    return CLIP4ClipEncoder(model, normalize=normalize, fps=fps)
