"""The registry of the conditioning video encoders of VTA-LDM (Xu et al. 2024, arXiv 2407.07464, Table 2).

Every encoder takes a batch of clips of uint8 RGB frames, channels first, decoded at its own frame rate
(:attr:`VideoTokenEncoder.fps`; ``data.clip.fps`` must equal it), and returns :class:`VideoTokens`: one
``D``-dimensional token per time slot, in time order, with the time axis recorded (``seconds_per_token``). A
per-frame image encoder (CLIP4Clip, ImageBind's vision tower, LanguageBind's image tower) gives one token per
frame; a spatio-temporal one (ViViT, V-JEPA) one token per tubelet time slot, its patches pooled over space; CAVP's
video branch (Diff-Foley's SlowOnly R3D-50, temporal stride 1) one token per frame at 4 fps, each seeing its
neighbouring frames.

The interface (:class:`~avgen.encoders.base.VideoTokens`, :class:`~avgen.encoders.base.VideoTokenEncoder`) is
in :mod:`avgen.encoders.base`, what the encoders share (input checks, padding, loading) in
:mod:`avgen.encoders.frames`. ``model.encoder.name`` picks one from :data:`VIDEO_ENCODERS` (name → loader);
:func:`build_video_encoder` builds it from the ``model.encoder`` block.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from avgen.encoders.base import VideoTokenEncoder, VideoTokens
from avgen.errors import ConfigError


def _clip4clip(source: str | os.PathLike | None, config_key: str, **options: Any) -> VideoTokenEncoder:
    from avgen.encoders.clip4clip import load_clip4clip

    return load_clip4clip(source, config_key, **options)


def _vivit(source: str | os.PathLike | None, config_key: str, **options: Any) -> VideoTokenEncoder:
    from avgen.encoders.vivit import load_vivit

    return load_vivit(source, config_key, **options)


def _vjepa(source: str | os.PathLike | None, config_key: str, *, normalize: bool = True,
           **options: Any) -> VideoTokenEncoder:
    from avgen.encoders.vjepa import load_vjepa

    if normalize is not True:
        raise ConfigError(f"{config_key.rpartition('.')[0]}.normalize={normalize!r}: V-JEPA 2's processor always "
                          f"applies ImageNet's mean/std; remove the override")
    return load_vjepa(source, config_key, **options)


def _imagebind(source: str | os.PathLike | None, config_key: str, **options: Any) -> VideoTokenEncoder:
    from avgen.encoders.imagebind_vision import load_imagebind_vision
    from avgen.pretrained import ORIGINS

    # no hub id: the official imagebind_huge.pth, from model.encoder.path or the metric's environment variable
    source = source or os.environ.get(ORIGINS["imagebind"].env or "")
    return load_imagebind_vision(source or None, config_key, **options)


def _cavp(source: str | os.PathLike | None, config_key: str, **options: Any) -> VideoTokenEncoder:
    from avgen.encoders.cavp_video import load_cavp_video
    from avgen.pretrained import ORIGINS

    # no hub id: Diff-Foley's cavp_epoch66.ckpt, from model.encoder.path or the audio branch's environment variable
    source = source or os.environ.get(ORIGINS["cavp"].env or "")
    return load_cavp_video(source or None, config_key, **options)


def _languagebind(source: str | os.PathLike | None, config_key: str, **options: Any) -> VideoTokenEncoder:
    from avgen.encoders.languagebind import load_languagebind

    return load_languagebind(source, config_key, **options)


#: ``model.encoder.name`` → loader ``(source, config_key, *, tiny_dir, **options) -> encoder``
VIDEO_ENCODERS: dict[str, Callable[..., VideoTokenEncoder]] = {
    "cavp": _cavp,
    "clip4clip": _clip4clip,
    "imagebind": _imagebind,
    "languagebind": _languagebind,
    "vivit": _vivit,
    "vjepa": _vjepa,
}
#: the default source of each encoder (hub id), when ``model.encoder.path`` is null
DEFAULT_SOURCES: dict[str, str] = {
    "clip4clip": "openai/clip-vit-large-patch14",  # ViT-L/14: image_embeds, 768-d
    "languagebind": "LanguageBind/LanguageBind_Image",  # a CLIP ViT-L/14 layout
    "vivit": "google/vivit-b-16x2-kinetics400",  # Kinetics-400: 32 frames per window, 16 time slots
    "vjepa": "facebook/vjepa2-vitl-fpc64-256",  # V-JEPA 2 (the paper used V-JEPA 1, not in transformers)
}


def build_video_encoder(cfg: Mapping[str, Any], tiny_dir: str | os.PathLike | None,
                        config_key: str = "model.encoder") -> VideoTokenEncoder:
    """The frozen encoder of a ``model.encoder`` block: ``name`` (a key of :data:`VIDEO_ENCODERS`), ``path`` (a
    folder, file or hub id; null: the encoder's hub id in :data:`DEFAULT_SOURCES`, or for ``imagebind`` and
    ``cavp`` the official file named by ``AVGEN_IMAGEBIND_PATH`` / ``AVGEN_CAVP_PATH``), and the encoder's options
    (e.g. ``normalize``, ``fps``).

    Raises:
        ConfigError: an unknown ``name`` (the message lists the known ones).
    """
    options = dict(cfg)
    name = options.pop("name", "clip4clip")
    if name not in VIDEO_ENCODERS:
        raise ConfigError(f"{config_key}.name={name!r}: not a video encoder; expected one of "
                          f"{', '.join(VIDEO_ENCODERS)}")
    source = options.pop("path", None) or DEFAULT_SOURCES.get(name)
    return VIDEO_ENCODERS[name](source, f"{config_key}.path", tiny_dir=tiny_dir, **options)


__all__ = ["DEFAULT_SOURCES", "VIDEO_ENCODERS", "VideoTokenEncoder", "VideoTokens", "build_video_encoder"]
