"""Where avgen's Hydra config files are: the ``configs/`` folder and the options of a config group."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

from avgen.errors import ConfigError


def config_dir() -> Path:
    """The ``configs/`` folder (repo root; ``AVGEN_CONFIG_DIR`` overrides it)."""
    env = os.environ.get("AVGEN_CONFIG_DIR")
    return Path(env).absolute() if env else Path(__file__).resolve().parent.parent / "configs"


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def at_scale(scale: str, default: Any, tiny: Any) -> Any:
    """``${avgen_at_scale:${scale_name},<default>,<tiny>}``: ``tiny`` at the small scales (``tiny``, ``mini``: CPU
    sizes), else ``default``."""
    return tiny if scale in SMALL_SCALES else default


#: every ``scale=`` option: ``paper`` (real weights), ``tiny`` (random twins), ``mini`` (the tiny twins with the parts
#: avgen trained on the synthetic data), ``paper_random`` (the papers' architectures with random weights:
#: :mod:`avgen.backbones.paper_random`)
SCALES = ("paper", "tiny", "mini", "paper_random")
SMALL_SCALES = ("tiny", "mini")


def scale_blocks(scale: str, config_key: str = "scale_name") -> tuple[str, ...]:
    """The model-config blocks merged, in order, over a system's arguments at ``scale``: none at ``paper``,
    ``tiny`` at ``tiny``, ``tiny`` then ``mini`` at ``mini``, ``paper_random`` at ``paper_random``.

    Raises:
        ConfigError: ``scale`` is not one of :data:`SCALES` (the message names ``config_key``).
    """
    if scale not in SCALES:
        raise ConfigError(f"{config_key}={scale!r}: expected one of {', '.join(SCALES)}")
    return {"paper": (), "tiny": ("tiny",), "mini": ("tiny", "mini"), "paper_random": ("paper_random",)}[scale]


def register_scale_resolver() -> None:
    """Register ``avgen_at_scale`` with OmegaConf (once): a default that differs at ``scale=tiny`` and ``mini``
    (fewer sampler steps) but that the command line still overrides."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("avgen_at_scale"):
        OmegaConf.register_new_resolver("avgen_at_scale", at_scale)


def model_config_node(name: str, node: str, *, scale: str) -> dict[str, Any]:
    """The ``node`` block (``sampling``, ``validation``) of ``configs/model/<name>.yaml`` as plain Python,
    its ``${avgen_at_scale:...}`` values resolved at ``scale`` (one of :data:`SCALES`): the defaults a
    system's typed settings take (:mod:`avgen.systems.settings`).

    Raises:
        ConfigError: the YAML file is missing (the message names it), or the block uses another interpolation.
    """
    return copy.deepcopy(_model_config_node(config_dir() / "model" / f"{name}.yaml", node, scale))


@functools.lru_cache(maxsize=None)
def _model_config_node(path: Path, node: str, scale: str) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not path.is_file():
        raise ConfigError(f"{path}: model config not found; it holds the defaults of model.{node} (set "
                          f"AVGEN_CONFIG_DIR to avgen's configs/ folder)")
    register_scale_resolver()
    block = OmegaConf.load(path).get(node)
    try:
        return OmegaConf.to_container(OmegaConf.create({"scale_name": scale, "node": block or {}}).node, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: model.{node} cannot be resolved on its own ({exc}); give its defaults as "
                          f"values or ${{avgen_at_scale:...}}") from exc
