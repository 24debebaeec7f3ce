"""Lazy imports of the media libraries (PyAV, soundfile, OpenCV, librosa): the stdlib's ``importlib.util.LazyLoader``
recipe. A module that imports one at its top still imports in a process that never decodes, writes or plots media
(building and training a system on tensors: ``benchmarks/gpu_check.py`` on a GPU machine that has torch, transformers
and diffusers but not these), and a missing library fails on first use with a message that says what to install.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

#: module → the pip package that provides it
PACKAGES = {"av": "av", "soundfile": "soundfile", "cv2": "opencv-python-headless", "librosa": "librosa"}


class MissingModule(ModuleType):
    """Stands in for an uninstalled module: any attribute access raises ModuleNotFoundError naming the package."""

    def __init__(self, name: str, purpose: str):
        super().__init__(name)
        self._purpose = purpose

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        package = PACKAGES.get(self.__name__, self.__name__)
        raise ModuleNotFoundError(f"{self.__name__} is not installed; avgen needs it for {self._purpose}: "
                                  f"pip install {package} (or pip install -e . for all of avgen's dependencies)")


def lazy_module(name: str, purpose: str) -> ModuleType:
    """``name`` imported lazily (its code runs on first attribute access; an already-imported module is returned
    as it is), or a :class:`MissingModule` when it is not installed or its import is blocked (``sys.modules[name]``
    set to None, Python's way to make ``import name`` fail). ``purpose`` is named in the error."""
    if name in sys.modules:
        module = sys.modules[name]
        return MissingModule(name, purpose) if module is None else module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return MissingModule(name, purpose)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def module_available(name: str) -> bool:
    """Whether ``import name`` would find the module: installed and not blocked (``sys.modules[name]`` None)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
