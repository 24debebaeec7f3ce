"""What VTA-LDM's conditioning video encoders share (Xu et al. 2024, arXiv 2407.07464, Table 2): the check of their
input clips (:func:`check_clips`), of their ``model.encoder`` settings (:func:`check_fps`, :func:`check_normalize`),
the padding of per-clip tokens into :class:`~avgen.encoders.base.VideoTokens` (:func:`padded_tokens`), and the
loading of a frozen transformers model from local files (:func:`load_frozen_model`, :class:`EncoderModelMissing`).

Every encoder takes clips of uint8 RGB frames, channels first, ``(F, 3, H, W)`` with axis 0 time; clips of one batch
may differ in frame count and size, so the tokens of clip b, ``(T_b, D)``, are zero-padded at the end to the longest
and a mask marks the real ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor
from transformers.utils import logging as transformers_logging

from avgen.backbones.loader import PretrainedModelMissing, load_pretrained, resolve_source
from avgen.encoders.base import VideoTokens
from avgen.errors import ConfigError
from avgen.pretrained import FrozenModule


def check_clips(frames: Tensor | Sequence[Tensor], who: str, dtype: torch.dtype = torch.uint8) -> list[Tensor]:
    """The clips of an encoder's input as a list of (F, 3, H, W) RGB of ``dtype`` (uint8; float32 on the
    differentiable path), checked; ``who`` names the encoder.

    ``frames`` is a batch (B, F, 3, H, W), one clip (F, 3, H, W) (a batch of one), or a list of clips.
    """
    if isinstance(frames, Tensor):
        if frames.ndim == 4:
            frames = frames[None]
        if frames.ndim != 5:
            raise ValueError(f"{who} expects frames (B, F, 3, H, W) or (F, 3, H, W) uint8, or a list of "
                             f"(F, 3, H, W) clips; got shape {tuple(frames.shape)}")
        clips = list(frames.unbind(0))
    else:
        clips = list(frames)
    if not clips:
        raise ValueError(f"{who} got no clips; expected at least one (F, 3, H, W) uint8 clip")
    for index, clip in enumerate(clips):
        if not isinstance(clip, Tensor) or clip.ndim != 4 or clip.shape[1] != 3 or clip.dtype != dtype:
            what = f"{tuple(clip.shape)} {clip.dtype}" if isinstance(clip, Tensor) else type(clip).__name__
            hint = ("convert [-1, 1] float frames with avgen.media.quantize_unit_range" if dtype == torch.uint8
                    else "cast uint8 frames with .float() (values 0…255)")
            raise ValueError(f"{who} clip {index}: expected frames (F, 3, H, W) {str(dtype).removeprefix('torch.')} "
                             f"RGB, channels first, got {what}; {hint}")
        if clip.shape[0] == 0 or clip.shape[-1] == 0 or clip.shape[-2] == 0:
            raise ValueError(f"{who} clip {index} is empty: shape {tuple(clip.shape)}; every clip needs at least "
                             f"one frame of at least 1×1 pixels")
    return clips


def round_straight_through(x: Tensor) -> Tensor:
    """``x.round()`` in the forward pass with the identity's gradient (a straight-through estimator, Bengio et al.
    2013): the 8-bit rounding between an image processor's steps keeps the values of the uint8 path exact and lets
    the gradient of the tokens reach float input frames (saliency maps). (N, …) float → same shape and dtype."""
    return x + (x.round() - x).detach()


def padded_tokens(tokens: Sequence[Tensor], seconds_per_token: Fraction,
                  real: Sequence[int] | None = None) -> VideoTokens:
    """The tokens of B clips as one batch.

    Args:
        tokens: per clip (T_b, D), axis 0 time.
        seconds_per_token: the time one token covers.
        real: how many leading tokens of each clip hold a real frame (default: all T_b).

    Returns:
        :class:`~avgen.encoders.base.VideoTokens`: ``embeds`` (B, max T_b, D), ``mask`` (B, max T_b) True at the
        first ``real[b]`` tokens of clip b; embeds are zero where the mask is False.
    """
    embeds = torch.nn.utils.rnn.pad_sequence(list(tokens), batch_first=True)
    counts = [len(clip_tokens) for clip_tokens in tokens] if real is None else list(real)
    mask = torch.arange(embeds.shape[1], device=embeds.device) < torch.tensor(counts, device=embeds.device)[:, None]
    return VideoTokens(embeds=embeds * mask[..., None], mask=mask, seconds_per_token=seconds_per_token)


class FrozenVideoEncoder(FrozenModule):
    """Base of the conditioning video encoders (:class:`~avgen.encoders.base.VideoTokenEncoder`): a frozen model
    that maps clips of uint8 frames to :class:`~avgen.encoders.base.VideoTokens`. :meth:`forward` checks the clips
    (:func:`check_clips`) before any compute and hands them to :meth:`encode`.

    A subclass sets :attr:`name` (named in errors) and :attr:`fps`, and implements :attr:`embed_dim` and
    :meth:`encode`.

    Args:
        model: the model; frozen here.
        fps: the frame rate the frames must be decoded at; the encoder does not resample, callers read it to decode.
    """

    name: str = ""
    fps: float  # the rate to decode at; a subclass sets its default, readable before an encoder is loaded

    def __init__(self, model: torch.nn.Module, fps: float):
        super().__init__()
        self.model = model
        self.fps = fps
        self.freeze()

    @property
    def embed_dim(self) -> int:
        """D, the width of the tokens."""
        raise NotImplementedError

    def encode(self, clips: list[Tensor]) -> VideoTokens:
        """The tokens of checked clips, each (F_b, 3, H_b, W_b) on any device (moved to the model's): uint8, or
        float32 holding the same 0…255 values (:meth:`differentiable`). An implementation computes no gradient
        itself (:meth:`forward` runs it under ``no_grad``), rounds with :func:`round_straight_through` where its
        processor rounds to 8 bits, and keeps every step differentiable in float input."""
        raise NotImplementedError

    def forward(self, frames: Tensor | Sequence[Tensor]) -> VideoTokens:
        """Tokens of a batch of clips.

        Args:
            frames: frames already sampled at :attr:`fps`, uint8 RGB, channels first, on any device (moved to the
                model's): a batch (B, F, 3, H, W), one clip (F, 3, H, W) (returned as B = 1), or a list of B clips
                (F_b, 3, H_b, W_b) whose frame counts and sizes may differ. Axis F is time.

        Returns:
            :class:`~avgen.encoders.base.VideoTokens`: ``embeds`` (B, T, D) float32 in time order, zero where ``mask``
            (B, T) is False; T and the time a token covers are the subclass's (:meth:`encode`).
        """
        clips = check_clips(frames, self.name)
        with torch.no_grad():
            return self.encode(clips)

    def differentiable(self, clips: Sequence[Tensor]) -> VideoTokens:
        """Tokens of float frames with the gradient kept: what saliency maps differentiate (∂tokens/∂pixels).

        Args:
            clips: B clips (F_b, 3, H_b, W_b) float32 holding 0…255 values (uint8 frames cast to float), usually
                with ``requires_grad``; the frame counts and sizes may differ.

        Returns:
            :class:`~avgen.encoders.base.VideoTokens` as :meth:`forward` gives for the uint8 frames (equal up to the
            encoder's resize rounding on the CPU, at most 2 grey levels in its input), differentiable in ``clips``.

        Raises:
            ValueError: a clip that is not (F, 3, H, W) float32, or an empty one.
        """
        checked = check_clips(list(clips), self.name, torch.float32)
        with torch.enable_grad():
            return self.encode(checked)


def check_fps(fps: Any, config_key: str, default: float) -> None:
    """ConfigError naming ``<parent of config_key>.fps`` unless ``fps`` is a positive number."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not fps > 0:
        raise ConfigError(f"{config_key.rpartition('.')[0]}.fps={fps!r}: expected the positive frame rate the frames "
                          f"are decoded at (avgen's default: {default})")


def check_normalize(normalize: Any, config_key: str, when_true: str, when_false: str) -> None:
    """ConfigError naming ``<parent of config_key>.normalize`` unless ``normalize`` is a bool; ``when_true`` and
    ``when_false`` say what the model is fed either way."""
    if not isinstance(normalize, bool):
        raise ConfigError(f"{config_key.rpartition('.')[0]}.normalize={normalize!r}: expected true ({when_true}) or "
                          f"false ({when_false})")


class EncoderModelMissing(PretrainedModelMissing):
    """A conditioning encoder's model is neither a local folder nor in the local hub cache. The message names the
    encoder's own hub id (``model.encoder.path`` is shared by every conditioning encoder, so ``HUB_MODELS`` cannot
    map it to one). A subclass sets ``what`` (the model's name), ``hub_id``, ``layout`` (the files of a folder),
    ``tiny_source`` and ``tower`` (the part that runs, named when its weights are missing)."""

    what = ""
    hub_id = ""
    layout = ""
    tiny_source = ""
    tower = ""

    def __init__(self, name_or_path: str | os.PathLike | None, config_key: str, reason: str = ""):
        hub_id, name = self.hub_id, self.what
        what = f"no {name} model is set" if name_or_path is None else f"cannot load {name_or_path} from local files"
        FileNotFoundError.__init__(
            self,
            f"{what} (config key {config_key}){f': {reason}' if reason else ''}. Expected a folder in transformers' "
            f"layout ({self.layout}), or a hub id in the local Hugging Face cache; avgen's {name} encoder is "
            f"{hub_id} on the Hugging Face hub. avgen never downloads weights: on a machine with internet run "
            f"`huggingface-cli download {hub_id}`, copy its cache folder (~/.cache/huggingface/hub/"
            f"models--{hub_id.replace('/', '--')}) to this machine's cache or copy the snapshot folder anywhere and "
            f"set {config_key}=/path/to/folder. To try the code without weights, set {config_key}={self.tiny_source} "
            f"(tiny random weights).")
        self.name_or_path, self.subfolder, self.config_key = name_or_path, None, config_key


@contextmanager
def transformers_errors_only() -> Iterator[None]:
    """transformers logs errors only: its load report lists, on every load, the parts of a checkpoint avgen does not
    run (a classifier, a predictor, CLIP's text tower); the weights that matter are checked by the caller."""
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def load_frozen_model(cls: Any, source: str | os.PathLike | None, config_key: str,
                      tiny_dir: str | os.PathLike | None, missing: type[EncoderModelMissing],
                      required_prefix: str = "", **kwargs: Any) -> Any:
    """``cls`` from a local folder, the local hub cache or a ``tiny:`` source, checked.

    Raises:
        ``missing``: no such folder, nor the hub id in the local cache.
        ConfigError: weights that do not fit the config, or weights missing under ``required_prefix`` (the part of
            the model that is run, ``missing.tower``).
    """
    if source is None:
        raise missing(None, config_key)
    folder = resolve_source(str(source), tiny_dir, config_key)
    try:
        with transformers_errors_only():
            model, info = load_pretrained(cls, folder, config_key, output_loading_info=True, **kwargs)
    except PretrainedModelMissing as err:
        cause = err.__cause__
        raise missing(source, config_key, f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
                      if cause else "") from err
    except RuntimeError as err:  # mis-shaped weights (transformers' load report)
        raise ConfigError(f"{config_key}={source}: the weights do not fit a {cls.__name__} of their config.json "
                          f"({str(err).splitlines()[0]}); expected a folder such as {missing.hub_id}") from err
    absent = sorted(key for key in info["missing_keys"] if key.startswith(required_prefix))
    if absent:
        raise ConfigError(f"{config_key}={source} lacks weights of the {missing.tower} "
                          f"({', '.join(absent[:5])}, {len(absent)} in all); expected a folder such as "
                          f"{missing.hub_id}")
    return model
