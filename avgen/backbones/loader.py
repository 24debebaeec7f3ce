"""Loading frozen pretrained parts from local files only, and the tiny twins that stand in for them.

Every pretrained part of avgen (metric models, the backbones of the systems) is read with
:func:`load_pretrained`: a folder written by ``save_pretrained`` or a hub id already in the local
Hugging Face cache. Nothing is ever downloaded; a missing model stops with
:class:`PretrainedModelMissing`, which names the config key, the published original and what to do.

A backbone source may also be ``tiny:<name>``: :func:`resolve_source` then writes tiny random
backbones (:mod:`avgen.backbones.tiny`) once into a folder and returns it, so tiny runs go through
the same ``from_pretrained`` path as paper runs. Checkpoints do not store frozen weights, so the
tiny weights are deterministic: the same folder content every time they are written.

Kept free of torch / diffusers imports at module level: :mod:`avgen.metrics.semantic` imports it.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from avgen.errors import ConfigError
from avgen.pretrained import HUB_MODELS, quiet_loading

TINY_PREFIX = "tiny:"
MINI_PREFIX = "mini:"  # avgen.backbones.mini.MINI_PREFIX (not imported here: that module imports torch)
RANDOM_PREFIX = "random:"  # avgen.backbones.paper_random.RANDOM_PREFIX (scale=paper_random)


class PretrainedModelMissing(FileNotFoundError):
    """A pretrained model is neither a local folder nor in the local hub cache."""

    def __init__(self, name_or_path: str | os.PathLike | None, config_key: str, reason: str = "",
                 subfolder: str | None = None):
        # a hub id given on the key is the original; a local path: the key's registered default (HUB_MODELS)
        given = str(name_or_path) if name_or_path is not None else ""
        looks_like_hub_id = given.count("/") == 1 and not os.path.isabs(given) and not given.startswith(".")
        hub_id = given if looks_like_hub_id else HUB_MODELS.get(config_key, "<the model's hub id>")
        where = f"{name_or_path!s}" if subfolder is None else f"{name_or_path!s} (subfolder {subfolder})"
        what = "no model is set" if name_or_path is None else f"cannot load {where} from local files"
        # Backbones have tiny random twins built in code; metric models do not.
        tiny = (" To try the code without any weights, run with scale=tiny: it builds tiny random-initialised "
                "backbones in code." if config_key.startswith("model.") else "")
        super().__init__(
            f"{what} (config key {config_key}){f': {reason}' if reason else ''}. Expected a folder written by "
            f"save_pretrained, or a hub id in the local Hugging Face cache; the original is {hub_id} on the "
            f"Hugging Face hub. avgen never downloads weights: on a machine with internet run "
            f"`huggingface-cli download {hub_id}`, copy its cache folder (~/.cache/huggingface/hub/"
            f"models--{hub_id.replace('/', '--')}) to this machine's cache or copy the snapshot folder anywhere "
            f"and set {config_key}=/path/to/folder.{tiny}")
        self.name_or_path, self.subfolder, self.config_key, self.hub_id = name_or_path, subfolder, config_key, hub_id


def load_pretrained(cls: Any, name_or_path: str | os.PathLike | None, config_key: str, *,
                    subfolder: str | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name_or_path, subfolder=..., local_files_only=True, **kwargs)``, or
    :class:`PretrainedModelMissing` naming ``config_key`` and the original's hub id. A ``random:<name>`` source
    is built from its architecture config with random weights instead (:func:`avgen.backbones.paper_random.
    build_component`; no files read)."""
    if name_or_path is None:
        raise PretrainedModelMissing(None, config_key)
    if str(name_or_path).startswith(RANDOM_PREFIX):  # scale=paper_random: the architecture, random weights
        from avgen.backbones.paper_random import build_component

        return build_component(cls, str(name_or_path), config_key, subfolder=subfolder, **kwargs)
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    try:
        with quiet_loading():
            return cls.from_pretrained(str(name_or_path), local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        raise PretrainedModelMissing(name_or_path, config_key, f"{type(err).__name__}: {err}", subfolder) from err


def load_scheduler(cls: Any, source: str | os.PathLike, config_key: str, settings: dict[str, Any],
                   settings_key: str) -> Any:
    """``cls`` (a diffusers scheduler) from ``source``'s ``scheduler`` subfolder, with ``settings``
    (named by the config key ``settings_key``) replacing values of the stored config."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise ConfigError(f"{settings_key} sets {', '.join(unknown)}, which {cls.__name__} does not take; "
                          f"expected some of: {', '.join(sorted(accepted))}")
    return load_pretrained(cls, source, config_key, subfolder="scheduler", **settings)


def resolve_source(source: str, tiny_dir: str | os.PathLike | None, config_key: str = "the backbone source") -> str:
    """The folder or hub id to load ``source`` from.

    ``tiny:<name>`` (``name`` one of :data:`avgen.backbones.tiny.TINY_BUILDERS`) is written once into
    ``<tiny_dir>/<name>-v<version>`` by :func:`avgen.backbones.tiny.materialize` and that folder is
    returned; ``mini:<name>`` (:data:`avgen.backbones.mini.MINI_TWINS`) likewise into
    ``<tiny_dir>/mini-<name>-<weights tag>`` by :func:`avgen.backbones.mini.materialize` (the tiny twin with
    the parts avgen trained); ``random:<name>`` (``configs/architectures/<name>.yaml``) is checked and returned
    unchanged (:func:`load_pretrained` builds it); anything else is returned unchanged.
    """
    source = str(source)
    if source.startswith(RANDOM_PREFIX):
        from avgen.backbones.paper_random import architecture

        architecture(source, config_key)  # an unknown name stops here, naming the key
        return source
    if source.startswith(MINI_PREFIX):
        from avgen.backbones import mini

        if tiny_dir is None:
            raise ConfigError(f"{config_key}={source} asks for a mini twin, but no folder to write it to was given "
                              f"(tiny_dir is None); pass a tiny_dir (any writable folder, e.g. under paths.data_dir)")
        name = source[len(MINI_PREFIX):]
        if name not in mini.MINI_TWINS:
            raise ConfigError(f"{config_key}={source}: unknown mini twin {name!r}; expected one of "
                              f"{', '.join(MINI_PREFIX + n for n in mini.MINI_TWINS)}, a tiny: twin, or a folder / "
                              f"hub id")
        return str(mini.materialize(name, tiny_dir))
    if not source.startswith(TINY_PREFIX):
        return source
    from avgen.backbones import tiny

    name = source[len(TINY_PREFIX):]
    if name not in tiny.TINY_BUILDERS:
        raise ConfigError(f"{config_key}={source}: unknown tiny backbone {name!r}; expected one of "
                          f"{', '.join(TINY_PREFIX + n for n in tiny.TINY_BUILDERS)}, or a folder / hub id")
    if tiny_dir is None:
        raise ConfigError(f"{config_key}={source} asks for tiny random weights, but no folder to write them to "
                          f"was given (tiny_dir is None); pass a tiny_dir (any writable folder, e.g. under "
                          f"paths.data_dir) or set {config_key} to a folder written by save_pretrained")
    return str(tiny.materialize(name, tiny_dir))

