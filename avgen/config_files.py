"""Where avgen's Hydra config files are: the ``configs/`` folder and the options of a config group."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The ``configs/`` folder (repo root; ``AVGEN_CONFIG_DIR`` overrides it)."""
    env = os.environ.get("AVGEN_CONFIG_DIR")
    return Path(env).absolute() if env else Path(__file__).resolve().parent.parent / "configs"


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
