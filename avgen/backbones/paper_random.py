"""Backbones at the papers' sizes with random weights: the ``random:<name>`` sources of ``scale=paper_random``.

Memory and speed do not depend on the weights' values, so a cluster job can be sized, and the GPU code paths (bf16,
gradient checkpointing, DDP) exercised, before any weights are downloaded. ``random:<name>`` names a file
``configs/architectures/<name>.yaml``: per component (a subfolder of the real checkpoint: ``unet``, ``vae``, …; ``.``
for a model that is the whole source) its ``kind`` (the class, :data:`KINDS`), its constructor ``config``,
transcribed from the published ``config.json`` it cites, and the ``source`` of the values; ``provenance`` names
the repositories and revisions, ``parameters`` the parameter count of a build (the tests check both).

:func:`avgen.backbones.loader.load_pretrained` builds a ``random:`` source's component here instead of reading
files, with the same class the real weights load into, on the current default device: build a system inside
``with torch.device("meta"):`` to count parameters without memory, or inside ``with torch.device("cuda:0"):``
(:func:`build_device`) to initialise 4B random parameters on the GPU in seconds instead of minutes on a CPU.
Tokenizers stay tiny (:mod:`avgen.backbones.tiny`): their vocabulary only sets the embedding table's size, which
the architecture config gives.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any

from avgen.errors import ConfigError

RANDOM_PREFIX = "random:"

#: requested class name → the component it means when the caller names no subfolder and the source has more than
#: one (``CLIPTextModelWithProjection`` of ``random:clip_l14`` is its ``text`` tower)
CLASS_COMPONENTS = {"CLIPTextModelWithProjection": "text", "CLIPTokenizer": "tokenizer"}


def is_random(source: Any) -> bool:
    """Whether ``source`` (a backbone config value) is a ``random:<name>`` source."""
    return isinstance(source, str) and source.startswith(RANDOM_PREFIX)


def architectures_dir():
    """``configs/architectures`` (follows ``AVGEN_CONFIG_DIR``)."""
    from avgen.config_files import config_dir

    return config_dir() / "architectures"


def names() -> list[str]:
    """The ``random:`` sources there are (the files of :func:`architectures_dir`)."""
    return sorted(p.stem for p in architectures_dir().glob("*.yaml"))


def architecture(source: str, config_key: str = "the backbone source") -> dict[str, Any]:
    """The parsed ``configs/architectures/<name>.yaml`` of ``source`` (``random:<name>`` or ``<name>``): a dict with
    ``components`` (name → {kind, config, source}), ``provenance`` and ``parameters``.

    Raises:
        ConfigError: no such architecture (the message names ``config_key`` and the ones there are).
    """
    name = source[len(RANDOM_PREFIX):] if is_random(source) else source
    return copy.deepcopy(_architecture(str(architectures_dir()), name, config_key))


@functools.lru_cache(maxsize=None)
def _architecture(folder: str, name: str, config_key: str) -> dict[str, Any]:
    import yaml

    path = os.path.join(folder, f"{name}.yaml")
    if not os.path.isfile(path):
        known = ", ".join(RANDOM_PREFIX + n for n in names()) or "none"
        raise ConfigError(f"{config_key}={RANDOM_PREFIX}{name}: no architecture file {path}; expected one of {known}")
    with open(path) as f:
        doc = yaml.safe_load(f)
    for component, entry in (doc.get("components") or {}).items():
        if entry.get("kind") not in KINDS:
            raise ConfigError(f"{path}: component {component!r} has kind {entry.get('kind')!r}; expected one of "
                              f"{', '.join(KINDS)}")
    return doc


# ---------------------------------------------------------------------------------------------- builders
def _clip_tokenizer(config: Mapping[str, Any]):
    from avgen.backbones.tiny import clip_tokenizer

    return clip_tokenizer(int(config["model_max_length"]))


def _roberta_tokenizer(config: Mapping[str, Any]):
    from avgen.backbones.tiny import roberta_tokenizer

    return roberta_tokenizer(int(config["model_max_length"]))


def _beats(config: Mapping[str, Any]):
    from avgen.encoders.beats import BEATs, BEATsConfig

    return BEATs(BEATsConfig(**{"finetuned_model": False, **config}))


def _cavp_audio(config: Mapping[str, Any]):
    from avgen.encoders.cavp import CAVPAudio

    return CAVPAudio(**config)


def _imagebind_av(config: Mapping[str, Any]):
    from avgen.encoders.imagebind import ImageBindAV

    return ImageBindAV(**config)


def _transformers(model_cls: str, config_cls: str):
    def build(config: Mapping[str, Any], **model_kwargs: Any):
        import transformers

        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config), **model_kwargs)
    return build


def _diffusers(name: str):
    def build(config: Mapping[str, Any]):
        import diffusers

        return getattr(diffusers, name)(**config)
    return build


#: kind → builder of the module (or tokenizer) from its constructor config; ``scheduler`` is built by the class the
#: loader asks for (:func:`build_component`)
KINDS = {
    "unet2d": _diffusers("UNet2DConditionModel"),
    "unet3d": _diffusers("UNet3DConditionModel"),
    "vae": _diffusers("AutoencoderKL"),
    "motion_adapter": _diffusers("MotionAdapter"),
    "clip_text": _transformers("CLIPTextModel", "CLIPTextConfig"),
    "clip_text_projection": _transformers("CLIPTextModelWithProjection", "CLIPTextConfig"),
    "clip_vision": _transformers("CLIPVisionModelWithProjection", "CLIPVisionConfig"),
    "clap_text": _transformers("ClapTextModelWithProjection", "ClapTextConfig"),
    "hifigan": _transformers("SpeechT5HifiGan", "SpeechT5HifiGanConfig"),
    "vivit": _transformers("VivitModel", "VivitConfig"),
    "vjepa2": _transformers("VJEPA2Model", "VJEPA2Config"),
    "beats": _beats,
    "cavp_audio": _cavp_audio,
    "imagebind_av": _imagebind_av,
    "clip_tokenizer": _clip_tokenizer,
    "roberta_tokenizer": _roberta_tokenizer,
    "scheduler": None,
}
TOKENIZER_KINDS = ("clip_tokenizer", "roberta_tokenizer")


#: ``from_pretrained`` keyword arguments that choose how weights are read, not the architecture: a build ignores them
LOADING_OPTIONS = ("torch_dtype", "dtype", "local_files_only", "low_cpu_mem_usage", "variant", "use_safetensors",
                   "revision", "cache_dir", "device_map")


def build_spec(kind: str, config: Mapping[str, Any], seed: int | None = 0, **model_kwargs: Any):
    """The module of ``kind`` built from ``config`` with random initialisation, on the current default device
    (``torch.device(...)`` context; ``meta``: shapes only), in eval mode; a tokenizer for the tokenizer kinds.
    ``seed`` seeds the initialisation (None: the global generator as it is); ``model_kwargs`` are the model
    constructor's own arguments a loader passes (transformers' ``add_pooling_layer``)."""
    import torch

    if kind in TOKENIZER_KINDS:
        return KINDS[kind](config)
    if seed is not None:
        torch.manual_seed(seed)
    return KINDS[kind](copy.deepcopy(dict(config)), **model_kwargs).eval()


def component_of(doc: Mapping[str, Any], source: str, cls: Any, subfolder: str | None, config_key: str) -> str:
    """The component of architecture ``doc`` that ``cls`` from ``subfolder`` means.

    Raises:
        ConfigError: the architecture has no such component.
    """
    components = doc["components"]
    name = getattr(cls, "__name__", str(cls))
    if subfolder:
        key = subfolder
    elif name in CLASS_COMPONENTS and CLASS_COMPONENTS[name] in components:
        key = CLASS_COMPONENTS[name]
    else:
        key = "."
    if key not in components:
        raise ConfigError(f"{config_key}={source}: the architecture has no component {key!r} (asked for a "
                          f"{name}); it has {', '.join(components)}")
    return key


def build_component(cls: Any, source: str, config_key: str, *, subfolder: str | None = None,
                    output_loading_info: bool = False, **kwargs: Any) -> Any:
    """What ``cls.from_pretrained(source, subfolder=...)`` would return for the real weights, built from
    ``configs/architectures/<name>.yaml`` with random weights on the current default device. A scheduler takes
    ``kwargs`` over its config (as ``from_pretrained`` does); a model ignores the loading options
    (:data:`LOADING_OPTIONS`) and passes the rest to its constructor (``add_pooling_layer``);
    ``output_loading_info`` returns ``(model, {"missing_keys": [], ...})``.

    Raises:
        ConfigError: unknown architecture or component.
    """
    doc = architecture(source, config_key)
    key = component_of(doc, source, cls, subfolder, config_key)
    entry = doc["components"][key]
    if entry["kind"] == "scheduler":  # its tables hold values (betas): on the CPU, as from_pretrained makes them
        import torch

        with torch.device("cpu"):
            return cls.from_config({**entry["config"], **kwargs})
    model_kwargs = {k: v for k, v in kwargs.items() if k not in LOADING_OPTIONS}
    out = build_spec(entry["kind"], entry["config"], **model_kwargs)
    return (out, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}) if output_loading_info else out


def parameter_count(module) -> int:
    """The number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def build_device(device: Any) -> Iterator[None]:
    """Within the block, new tensors (a system's backbones built from ``random:`` sources, its trainable modules)
    are created on ``device``: ``meta`` (no memory) or ``cuda:<LOCAL_RANK>`` (random initialisation on the GPU).
    ``None``: the default device as it is."""
    import torch

    if device is None:
        yield
        return
    with torch.device(device):
        yield


def model_build_device(cfg) -> Any:
    """Where ``python -m avgen`` builds the model of ``cfg``: at ``scale=paper_random`` with CUDA available,
    ``cuda:<LOCAL_RANK>`` (billions of random parameters initialise in seconds there, and DDP places the rank on
    that GPU anyway); else None (the CPU, as every other scale)."""
    import torch

    if cfg.get("scale_name") != "paper_random" or not torch.cuda.is_available():
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
