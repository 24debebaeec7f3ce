"""V-JEPA, one of the spatio-temporal video encoders of VTA-LDM's encoder ablation (Xu et al. 2024, "Video-to-Audio
Generation with Hidden Alignment", arXiv 2407.07464, Table 2 and appendix C, item 4).

The paper used V-JEPA 1 (Bardes et al. 2024, facebookresearch/jepa), which transformers does not implement; avgen
runs its successor V-JEPA 2 (Assran et al. 2025), transformers' ``VJEPA2Model`` with the
``facebook/vjepa2-vitl-fpc64-256`` weights (ViT-L, 64 frames per clip at 256 px). Its encoder embeds a window of 64
frames with tubelets of 2 frames × 16 × 16 pixels: 32 time slots × 16 × 16 patches (3-D rotary positions, no CLS
token). One token per time slot is the mean over its 256 patches of the encoder's ``last_hidden_state``, 1024-d; the
predictor is not run. The paper does not say how it pooled V-JEPA's tokens, nor at what frame rate it decoded; avgen
decodes at 8 fps (:data:`FPS`, ``model.encoder.fps``), as for ViViT, so both give a token per 0.25 s (a window spans
8 s). Shapes for one clip of F frames::

    frames (F, 3, H, W) uint8  ── preprocess ──>  (F, 3, 256, 256) float32
                               ── pad to n = ⌈F / 64⌉ windows, repeating the last frame ──>  (n, 64, 3, 256, 256)
                               ── VJEPA2Model.encoder ──>  (n, 32 · 256, 1024)  (patches in time, row, column order)
                               ── mean over the 256 patches of each slot ──>  tokens (n · 32, 1024)

Axis 0 of the tokens is time; the first ⌈F / 2⌉ are real, the rest masked (:class:`WindowedVideoEncoder`).

Preprocessing is ``VJEPA2VideoProcessor``'s (the checkpoint's processor is ``VJEPA2VideoProcessor(crop_size=256)``,
as transformers' ``convert_vjepa2_to_hf.py`` writes it): antialiased bilinear resize of the short side to
``int(crop · 256 / 224)`` = 292, centre crop 256, ``/ 255``, then ImageNet's mean/std (``IMAGENET_DEFAULT_MEAN`` /
``_STD``). The crop is the model's ``config.crop_size``, so a smaller twin is preprocessed by the same rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from transformers import VJEPA2Config, VJEPA2Model
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from avgen.backbones.loader import TINY_PREFIX
from avgen.backbones.tiny import TINY_BUILDERS
from avgen.encoders.frames import EncoderModelMissing, check_fps, load_frozen_model
from avgen.encoders.vivit import VideoPreprocessing, WindowedVideoEncoder

HUB_ID = "facebook/vjepa2-vitl-fpc64-256"
FPS = 8  # avgen's choice (the paper is silent): a token per 0.25 s, as ViViT's
TINY_SOURCE = f"{TINY_PREFIX}vjepa"


def vjepa_preprocessing(crop_size: int = 256) -> VideoPreprocessing:
    """``VJEPA2VideoProcessor(crop_size=crop_size)`` on tensors: short side to ``int(crop_size · 256 / 224)``, centre
    crop ``crop_size``, ``/ 255``, ImageNet mean/std."""
    return VideoPreprocessing(resize=int(crop_size * 256 / 224), crop=crop_size, rescale_factor=1 / 255,
                              mean=tuple(IMAGENET_DEFAULT_MEAN), std=tuple(IMAGENET_DEFAULT_STD))


class VJEPAEncoder(WindowedVideoEncoder):
    """VTA-LDM's V-JEPA encoder, with V-JEPA 2 weights: the ``VJEPA2Model`` encoder's ``last_hidden_state`` of
    64-frame windows (``config.frames_per_clip``), averaged over space per tubelet time slot (module docstring).

    Args:
        model: ``VJEPA2Model`` (:func:`load_vjepa` loads it); frozen here, only its encoder is run.
        fps: the frame rate the frames must be decoded at (:data:`FPS`).
    """

    name = "V-JEPA"
    fps: float = FPS  # the rate to decode at, readable before an encoder is loaded

    def __init__(self, model: VJEPA2Model, fps: float = FPS):
        super().__init__(model, vjepa_preprocessing(model.config.crop_size), fps)

    @property
    def window_frames(self) -> int:
        return self.model.config.frames_per_clip

    @property
    def tubelet_frames(self) -> int:
        return self.model.config.tubelet_size

    @property
    def embed_dim(self) -> int:
        return self.model.config.hidden_size

    def patch_tokens(self, pixels: Tensor) -> Tensor:
        # The encoder alone: VJEPA2Model.forward would also gather a masked copy of every token for the predictor.
        return self.model.encoder(pixel_values_videos=pixels).last_hidden_state


class VJEPAModelMissing(EncoderModelMissing):
    """The V-JEPA 2 model is neither a local folder nor in the local hub cache."""

    what = "V-JEPA 2"
    hub_id = HUB_ID
    layout = "config.json and model.safetensors or pytorch_model.bin of a VJEPA2Model, as the hub repository holds them"
    tiny_source = TINY_SOURCE
    tower = "V-JEPA 2 encoder"


def load_vjepa(source: str | os.PathLike | None = HUB_ID, config_key: str = "model.encoder.path", *,
               tiny_dir: str | os.PathLike | None = None, fps: float = FPS) -> VJEPAEncoder:
    """The frozen :class:`VJEPAEncoder` from local files only.

    Args:
        source: a hub id read from the local Hugging Face cache (default ``facebook/vjepa2-vitl-fpc64-256``), a local
            folder in transformers' layout (a ``VJEPA2Model``), or ``tiny:vjepa`` (:func:`save_tiny_vjepa`, written
            once under ``tiny_dir``).
        config_key: the config key ``source`` comes from, named in errors; ``fps`` is its sibling
            (``model.encoder.fps``).
        tiny_dir: the folder for tiny weights (only with ``tiny:vjepa``).
        fps: see :class:`VJEPAEncoder`.

    Raises:
        VJEPAModelMissing: no such folder, nor the hub id in the local cache.
        ConfigError: the folder lacks weights of the encoder or holds mis-shaped ones, or ``fps`` is not a positive
            number.
    """
    check_fps(fps, config_key, FPS)
    model = load_frozen_model(VJEPA2Model, source, config_key, tiny_dir, VJEPAModelMissing, required_prefix="encoder.")
    return VJEPAEncoder(model, fps=fps)


def save_tiny_vjepa(folder: str | os.PathLike) -> None:
    """``facebook/vjepa2-vitl-fpc64-256``'s layout, small: a ``VJEPA2Model`` (``config.json`` + ``model.safetensors``,
    encoder and predictor), read by :func:`load_vjepa`. The checkpoint's window (64 frames) and tubelet (2, 16, 16),
    at 32 px (2 × 2 patches per slot), encoder 2 layers 48 wide (2 heads of 24, room for the 3-D rotary
    embedding), predictor 1 layer."""
    torch.manual_seed(0)
    VJEPA2Model(VJEPA2Config(
        crop_size=32, frames_per_clip=64, tubelet_size=2, patch_size=16, hidden_size=48, num_attention_heads=2,
        num_hidden_layers=2, mlp_ratio=2.0, pred_hidden_size=48, pred_num_attention_heads=2, pred_num_hidden_layers=1,
    )).save_pretrained(Path(folder))


# ``tiny:vjepa`` (scale=tiny): the twin is written by this module's own code
TINY_BUILDERS["vjepa"] = save_tiny_vjepa
