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
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPVisionModelWithProjection
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import logging as transformers_logging

from avgen.backbones.loader import TINY_PREFIX, PretrainedModelMissing, load_pretrained, resolve_source
from avgen.encoders.base import VideoTokens
from avgen.errors import ConfigError
from avgen.media import as_fps, centre_origin
from avgen.pretrained import FrozenModule

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
        frames: (N, 3, H, W) uint8 images.
        size: the short side after resizing (224 for CLIP ViT-L/14).

    Returns:
        (N, 3, H', W') float32 holding integers in [0, 255].
    """
    height, width = frames.shape[-2:]
    new_h, new_w = (int(size * height / width), size) if height > width else (size, int(size * width / height))
    x = frames.float()
    if new_w != width:
        x = F.interpolate(x, size=(height, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    if new_h != height:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    return x


def preprocess(frames: Tensor, image_size: int = 224, normalize: bool = True) -> Tensor:
    """CLIP's image preprocessing on a stack of frames: ``CLIPImageProcessor(do_center_crop=True,
    resample=BICUBIC)`` on tensors, on the frames' device.

    :func:`resize_short_side` to ``image_size``, centre crop ``image_size`` (offset ``(side − image_size) // 2``),
    ``/ 255``, then ``(x − OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD`` per channel when ``normalize``.

    Args:
        frames: (N, 3, H, W) uint8 RGB frames.
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


class CLIP4ClipEncoder(FrozenModule):
    """VTA-LDM's frozen video encoder: ``CLIPVisionModelWithProjection`` ``image_embeds`` of every frame.

    Args:
        model: the CLIP vision tower with its projection (:func:`load_clip4clip` loads it); frozen here.
        normalize: CLIP's mean/std on the pixels (the paper's CLIP); False reproduces the public code, which feeds
            [0, 1] pixels.
        fps: the frame rate the frames must be decoded at (2 in VTA-LDM); the encoder does not resample, callers
            read it to decode.
    """

    fps: float = FPS  # the rate to decode at, readable before an encoder is loaded

    def __init__(self, model: CLIPVisionModelWithProjection, normalize: bool = True, fps: float = FPS):
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.fps = fps
        self.freeze()

    @property
    def embed_dim(self) -> int:
        """D, the width of the embeddings (the model's ``projection_dim``)."""
        return self.model.config.projection_dim

    @property
    def image_size(self) -> int:
        """The side of the square model input (``config.image_size``)."""
        return self.model.config.image_size

    def forward(self, frames: Tensor | Sequence[Tensor]) -> CLIP4ClipOutput:
        """Embed every frame of a batch of clips.

        Args:
            frames: frames already sampled at :attr:`fps`, uint8 RGB, channels first, on any device (moved to the
                model's): a batch (B, F, 3, H, W), one clip (F, 3, H, W) (returned as B = 1), or a list of B clips
                (F_b, 3, H_b, W_b) whose frame counts and sizes may differ. Axis F is time.

        Returns:
            :class:`~avgen.encoders.video_tokens.VideoTokens`: ``embeds`` (B, max F_b, D) float32 in frame order,
            ``mask`` (B, max F_b) bool, one token per frame (``seconds_per_token`` = 1 / fps).
        """
        clips = _clips(frames)
        lengths = [len(clip) for clip in clips]
        pixels = torch.cat([preprocess(clip.to(self.model.device), self.image_size, self.normalize)
                            for clip in clips])
        with torch.no_grad():
            embeds = self.model(pixel_values=pixels.to(self.model.dtype)).image_embeds.float()
        padded = torch.nn.utils.rnn.pad_sequence(list(embeds.split(lengths)), batch_first=True)
        frame_index = torch.arange(padded.shape[1], device=padded.device)
        mask = frame_index < torch.tensor(lengths, device=padded.device)[:, None]
        return VideoTokens(embeds=padded, mask=mask, seconds_per_token=Fraction(1) / as_fps(self.fps))


def _clips(frames: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """The clips of :meth:`CLIP4ClipEncoder.forward`'s input as a list of (F, 3, H, W) uint8, checked."""
    if isinstance(frames, Tensor):
        if frames.ndim == 4:
            frames = frames[None]
        if frames.ndim != 5:
            raise ValueError(f"CLIP4Clip expects frames (B, F, 3, H, W) or (F, 3, H, W) uint8, or a list of "
                             f"(F, 3, H, W) clips; got shape {tuple(frames.shape)}")
        clips = list(frames.unbind(0))
    else:
        clips = list(frames)
    if not clips:
        raise ValueError("CLIP4Clip got no clips; expected at least one (F, 3, H, W) uint8 clip")
    for index, clip in enumerate(clips):
        if not isinstance(clip, Tensor) or clip.ndim != 4 or clip.shape[1] != 3 or clip.dtype != torch.uint8:
            what = f"{tuple(clip.shape)} {clip.dtype}" if isinstance(clip, Tensor) else type(clip).__name__
            raise ValueError(f"CLIP4Clip clip {index}: expected frames (F, 3, H, W) uint8 RGB, channels first, got "
                             f"{what}; convert [-1, 1] float frames with avgen.media.quantize_unit_range")
        if clip.shape[0] == 0 or clip.shape[-1] == 0 or clip.shape[-2] == 0:
            raise ValueError(f"CLIP4Clip clip {index} is empty: shape {tuple(clip.shape)}; every clip needs at "
                             f"least one frame of at least 1×1 pixels")
    return clips


class CLIP4ClipModelMissing(PretrainedModelMissing):
    """The CLIP model is neither a local folder nor in the local hub cache. The message names VTA-LDM's hub id
    (``model.encoder.path`` is shared by every conditioning encoder, so ``HUB_MODELS`` cannot map it to one)."""

    def __init__(self, name_or_path: str | os.PathLike | None, config_key: str, reason: str = ""):
        FileNotFoundError.__init__(
            self,
            f"{'no CLIP model is set' if name_or_path is None else f'cannot load {name_or_path} from local files'} "
            f"(config key {config_key}){f': {reason}' if reason else ''}. Expected a folder in transformers' layout "
            f"(config.json and model.safetensors or pytorch_model.bin, of a CLIPModel or "
            f"CLIPVisionModelWithProjection), or a hub id in the local Hugging Face cache; VTA-LDM's encoder is "
            f"{HUB_ID} on the Hugging Face hub. avgen never downloads weights: on a machine with internet run "
            f"`huggingface-cli download {HUB_ID}`, copy its cache folder (~/.cache/huggingface/hub/"
            f"models--{HUB_ID.replace('/', '--')}) to this machine's cache or copy the snapshot folder anywhere and "
            f"set {config_key}=/path/to/folder. To try the code without weights, set {config_key}={TINY_SOURCE} "
            f"(tiny random weights).")
        self.name_or_path, self.subfolder, self.config_key, self.hub_id = name_or_path, None, config_key, HUB_ID


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
    parent = config_key.rpartition(".")[0]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ConfigError(f"{parent}.fps={fps!r}: expected the positive frame rate the frames are decoded at "
                          f"(VTA-LDM: {FPS})")
    if not isinstance(normalize, bool):
        raise ConfigError(f"{parent}.normalize={normalize!r}: expected true (CLIP's mean/std) or false (the public "
                          f"VTA-LDM code's [0, 1] pixels)")
    if source is None:
        raise CLIP4ClipModelMissing(None, config_key)
    folder = resolve_source(str(source), tiny_dir, config_key)
    level = transformers_logging.get_verbosity()
    # The load report lists the text tower of a full CLIPModel folder as unexpected on every load; the missing
    # weights, the only ones that matter, are checked below.
    transformers_logging.set_verbosity_error()
    try:
        model, info = load_pretrained(CLIPVisionModelWithProjection, folder, config_key, output_loading_info=True)
    except PretrainedModelMissing as err:
        cause = err.__cause__
        raise CLIP4ClipModelMissing(source, config_key, f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
                                    if cause else "") from err
    except RuntimeError as err:  # mis-shaped weights (transformers' load report)
        raise ConfigError(f"{config_key}={source}: the weights do not fit a CLIPVisionModelWithProjection of their "
                          f"config.json ({str(err).splitlines()[0]}); expected a CLIP folder such as {HUB_ID}") from err
    finally:
        transformers_logging.set_verbosity(level)
    if info["missing_keys"]:
        raise ConfigError(f"{config_key}={source} lacks weights of the CLIP vision tower "
                          f"({', '.join(sorted(info['missing_keys'])[:5])}, {len(info['missing_keys'])} in all); "
                          f"expected a CLIPModel or CLIPVisionModelWithProjection folder such as {HUB_ID}")
    return CLIP4ClipEncoder(model, normalize=normalize, fps=fps)
