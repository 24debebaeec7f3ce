"""ImageBind's vision tower as a VTA-LDM conditioning encoder (Xu et al. 2024, "Video-to-Audio Generation with Hidden
Alignment", arXiv 2407.07464, Table 2 and appendix C, item 2: "We leverage Imagebind to get the image embeddings of the
extracted frames"): one ImageBind-Huge image embedding per frame, in time order.

The model is ImageBind-Huge's vision tower (:class:`~avgen.encoders.imagebind.ImageBindAV`, Girdhar et al. 2023) read
from the official ``imagebind_huge.pth`` by :func:`~avgen.encoders.imagebind.load_imagebind`. Each frame goes through
ImageBind's *image* path, as facebookresearch/ImageBind runs it for ``ModalityType.VISION`` images:

- ``imagebind/data.py::load_and_transform_vision_data``: ``Resize(224, BICUBIC)`` of the PIL image (short side),
  ``CenterCrop(224)``, ``ToTensor``, ``Normalize`` with CLIP's mean/std. That is CLIP's preprocessing, run here by
  :func:`avgen.encoders.clip4clip.preprocess` (PIL's 8-bit bicubic, measured there). One departure: torchvision's
  ``CenterCrop`` rounds the offset ``(side − 224) / 2`` half-to-even, ``preprocess`` rounds it down, so the crop is one
  pixel apart when the long side after resizing exceeds 224 by 3 mod 4 (398 for 16:9 and 298 for 4:3 frames do not).
- ``imagebind/models/multimodal_preprocessors.py::PadIm2Video(pad_type="repeat", ntimes=2)``, the first layer of the
  vision stem: an image (N, 3, H, W) becomes a 2-frame clip by repeating it, so the ``Conv3d`` with time kernel 2
  sees the frame twice (``ImageBindAV``'s stem does the same for 4-D input).
- trunk, head (LayerNorm → CLS → ``Linear(1280, 1024)``) and ``modality_postprocessors["vision"] =
  Normalize(dim=-1)``: the official ``ImageBindModel.forward`` returns unit-norm embeddings, and they are kept so
  here. The VTA-LDM code for this row of Table 2 is not public; the official API has no call that returns the head's
  output before the normalisation, so the paper's variant read the normalised embeddings; VTA-LDM's trained
  projection follows either way.

Shapes for B clips of F frames decoded at 2 fps (:data:`FPS`, VTA-LDM's rate; a 10 s clip gives 20 tokens)::

    frames (B, F, 3, H, W) uint8  ── preprocess, per frame ──>  pixels (B·F, 3, 224, 224) float32
    pixels  ── PadIm2Video (repeat ×2), vision trunk, head, L2 norm ──>  embeds (B, F, 1024) float32

Axis 1 is time. The video path of ImageBind (5 sub-clips × 3 crops averaged into one vector per video, used by the
ImageBind score metric) is not used: it gives no per-frame tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from avgen.backbones.loader import RANDOM_PREFIX, TINY_PREFIX, resolve_source
from avgen.backbones.tiny import TINY_BUILDERS
from avgen.encoders.clip4clip import FrameEncoder
from avgen.encoders.frames import check_fps, check_normalize
from avgen.encoders.imagebind import TINY_IMAGEBIND, ImageBindAV, load_imagebind, save_official_format
from avgen.errors import ConfigError, WeightsFileMissing
from avgen.pretrained import ORIGINS

FPS = 2  # frames per second the encoder expects (VTA-LDM's frame rate)
TINY_SOURCE = f"{TINY_PREFIX}imagebind"
TINY_FILE = "imagebind_tiny.pth"  # the tiny twin's file in its folder (TINY_IMAGEBIND sizes)


class ImageBindVisionEncoder(FrameEncoder):
    """ImageBind's image embedding of every frame, as VTA-LDM's Table 2 ImageBind row: ``embeds`` are unit norm at
    real frames and zero at padding.

    Args:
        model: ImageBind's towers (:func:`load_imagebind_vision` loads them); only the vision tower runs. Frozen.
        normalize: CLIP's mean/std on the pixels (ImageBind's transform); False feeds [0, 1] pixels, as the public
            VTA-LDM code does for CLIP.
        fps: the frame rate the frames must be decoded at (2 in VTA-LDM); the encoder does not resample.
    """

    name = "ImageBind"
    fps: float = FPS

    @property
    def embed_dim(self) -> int:
        """D, the width of the embeddings (ImageBind's joint space, 1024 for Huge)."""
        return self.model.out_embed_dim

    @property
    def image_size(self) -> int:
        """The side of the square model input (224 for Huge)."""
        return self.model.image_size

    def embed_frames(self, pixels: Tensor) -> Tensor:
        return self.model.embed_vision(pixels)  # 4-D input: each frame repeated ×2 (PadIm2Video)


class ImageBindWeightsMissing(WeightsFileMissing):
    """``imagebind_huge.pth`` is not where ``model.encoder.path`` says."""

    def __init__(self, path: str | os.PathLike | None, config_key: str = "model.encoder.path"):
        origin = ORIGINS["imagebind"]
        super().__init__("ImageBind", path, config_key, origin.file, origin.what, origin.where)


def load_imagebind_vision(source: str | os.PathLike | None = None, config_key: str = "model.encoder.path", *,
                          tiny_dir: str | os.PathLike | None = None, normalize: bool = True,
                          fps: float = FPS) -> ImageBindVisionEncoder:
    """The frozen :class:`ImageBindVisionEncoder` from the official weight file, local files only.

    Args:
        source: ``imagebind_huge.pth`` (https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth), a folder holding
            it, or ``tiny:imagebind`` (a tiny random ImageBind, ``TINY_IMAGEBIND`` sizes, written once under
            ``tiny_dir`` in the official format by :func:`save_tiny_imagebind`), or ``random:imagebind`` (ImageBind-Huge
            with random weights, ``scale=paper_random``). The file is read with
            ``torch.load(weights_only=True)``; its vision and audio entries must match the towers key for key.
        config_key: the config key ``source`` comes from, named in errors; ``normalize`` and ``fps`` are its siblings.
        tiny_dir: the folder for tiny weights (only with ``tiny:imagebind``).
        normalize, fps: see :class:`ImageBindVisionEncoder`.

    Raises:
        ImageBindWeightsMissing: no file at ``source`` (a ``FileNotFoundError``).
        ConfigError: the file is not ImageBind-Huge's state dict (the message lists the missing, unexpected and
            mis-shaped keys), or ``fps`` / ``normalize`` are not a positive number / a bool.
    """
    check_fps(fps, config_key, FPS)
    check_normalize(normalize, config_key, "ImageBind's mean/std on the pixels",
                    "[0, 1] pixels, as the public VTA-LDM code feeds CLIP")
    if source is None:
        raise ImageBindWeightsMissing(None, config_key)
    if str(source).startswith(RANDOM_PREFIX):  # scale=paper_random: ImageBind-Huge's architecture, random weights
        from avgen.backbones.paper_random import build_component

        return ImageBindVisionEncoder(build_component(ImageBindAV, str(source), config_key), normalize=normalize,
                                      fps=fps)
    tiny = str(source).startswith(TINY_PREFIX)
    path = Path(resolve_source(str(source), tiny_dir, config_key))
    if path.is_dir():
        path = path / (TINY_FILE if tiny else ORIGINS["imagebind"].file)
    if not path.is_file():
        raise ImageBindWeightsMissing(path, config_key)
    try:
        model = load_imagebind(path, config_key, **(TINY_IMAGEBIND if tiny else {}))
    except ValueError as err:
        raise ConfigError(f"{config_key}={source}: {err}") from err
    return ImageBindVisionEncoder(model, normalize=normalize, fps=fps)


def save_tiny_imagebind(folder: str | os.PathLike) -> None:
    """``imagebind_tiny.pth``: a seeded ``ImageBindAV.tiny()`` (2 blocks 32 wide, 28² views, 16-d embeddings) in
    the official file's layout, read by :func:`load_imagebind_vision` as ``tiny:imagebind``."""
    from avgen.backbones.tiny import SEED

    Path(folder).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    save_official_format(ImageBindAV.tiny(), Path(folder) / TINY_FILE)


# ``tiny:imagebind`` (scale=tiny): the twin is written by this module's own code
TINY_BUILDERS["imagebind"] = save_tiny_imagebind
