"""Typed settings blocks of a system: ``model.sampling`` and ``model.validation``.

Each block is a frozen dataclass whose fields are the block's keys; its defaults are the system's model
YAML (``configs/model/<name>.yaml``, resolved at the run's scale), the one place they are written. A
block is checked when the system is built (before any backbone loads) and again, with the command
line's ``sample.<key>`` values, at the top of ``sample_to_files`` (before any input is decoded or any
weight moves to the device), together with the ``sample.*`` options every system reads besides them
(:class:`SampleOptions`). A bad value raises :class:`~avgen.errors.ConfigError` naming the key.

>>> from avgen.systems.settings import ValidationSettings
>>> v = ValidationSettings.from_values({"samples": 2, "steps": 4, "av_align": True}, key="model.validation")
>>> v.updated("sample", steps=8).steps, v.steps
(8, 4)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from avgen.config_files import model_config_node
from avgen.errors import ConfigError

S = TypeVar("S", bound="Settings")


# ------------------------------------------------------------------------------ value checks
def _is_integer(value: Any) -> bool:
    """``4`` or ``4.0``, not ``True``, ``4.5``, ``inf`` or ``nan`` (Hydra reads ``sample.n=nan`` as a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def integer(key: str, value: Any) -> int:
    """Any integer (``-3``, ``4.0``); anything else raises ConfigError naming ``key``."""
    if not _is_integer(value):
        raise ConfigError(f"{key}={value!r}: expected an integer")
    return int(value)


def positive_int(key: str, value: Any) -> int:
    """An integer >= 1 (``4``, ``4.0``); anything else raises ConfigError naming ``key``."""
    if not _is_integer(value) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected an integer >= 1")
    return int(value)


def count(key: str, value: Any) -> int:
    """An integer >= 0."""
    if not _is_integer(value) or value < 0:
        raise ConfigError(f"{key}={value!r}: expected an integer >= 0")
    return int(value)


def guidance_scale(key: str, value: Any) -> float:
    """A classifier-free guidance scale: a finite number >= 0 (1 = no guidance, 0 = unconditional)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}={value!r}: expected a guidance scale >= 0 (1 = no guidance)")
    return float(value)


def ddim_eta(key: str, value: Any) -> float:
    """DDIM's stochasticity η (Song et al. 2021, Eq. 16): a number in [0, 1] (0 = deterministic DDIM, 1 = ancestral)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}={value!r}: expected DDIM eta in [0, 1] (0 = deterministic, 1 = ancestral)")
    return float(value)


def text(key: str, value: Any) -> str:
    """A string; ``None`` reads as ``""``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: expected a string (quote it on the command line)")
    return value


def device_name(key: str, value: Any) -> str:
    """A torch device name; ``None`` or ``""`` reads as ``auto`` (the config's "null = the model's default").

    >>> device_name("sample.device", None), device_name("sample.device", "cuda:1")
    ('auto', 'cuda:1')
    """
    name = text(key, value).strip()
    return name or "auto"


def optional_text(key: str, value: Any) -> str | None:
    """A string or ``None``."""
    return None if value is None else text(key, value)


def prompts(key: str, value: Any) -> str | list[str] | None:
    """A prompt, a non-empty list of prompts, or ``None`` (unset).

    >>> prompts("sample.prompt", ["a dog barks", "rain"])
    ['a dog barks', 'rain']
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and not value:
        raise ConfigError(f"{key}=[]: an empty list; give at least one prompt or leave {key} unset")
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{key}={value!r}: expected a string or a list of strings (on the command line: "
                      f"{key}=\"...\" or '{key}=[a,b]')")


def optional_path(key: str, value: Any) -> str | None:
    """A file or folder path (a string or :class:`os.PathLike`) as a string, or ``None`` (unset)."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{key}={value!r}: expected the path of a file or a folder (quote it on the command line)")
    return os.fspath(value)


def flag(key: str, value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    return value


def setting(check: Callable[[str, Any], Any], doc: str) -> Any:
    """A settings field: ``check(key, value)`` validates and converts a value; ``doc`` says what it does."""
    return dataclasses.field(metadata={"check": check, "doc": doc})


# ------------------------------------------------------------------------------ the base class
@dataclass(frozen=True)
class Settings:
    """Base of a typed settings block. Subclasses are frozen dataclasses whose fields are made with
    :func:`setting`; ``NODE`` is the block's name under ``model`` (``sampling``, ``validation``)."""

    NODE: ClassVar[str] = ""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The block's keys, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_values(cls: type[S], values: Mapping[str, Any], *, key: str) -> S:
        """Every key given, each checked.

        Raises:
            ConfigError: an unknown key, a missing key or a bad value, naming ``<key>.<name>``.
        """
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a {cls.NODE} setting of this system; expected one of: "
                              f"{', '.join(cls.names())}")
        missing = [name for name in cls.names() if name not in values]
        if missing:
            raise ConfigError(f"{key}.{missing[0]} is not set; set it (defaults: configs/model/*.yaml)")
        checked = {f.name: f.metadata["check"](f"{key}.{f.name}", values[f.name]) for f in dataclasses.fields(cls)}
        return cls(**checked)

    @classmethod
    def from_config(cls: type[S], values: Mapping[str, Any] | None, *, model_config: str, scale: str,
                    key: str | None = None) -> S:
        """``values`` (may be partial, or None) over the defaults of ``configs/model/<model_config>.yaml``
        at ``scale``; checked as :meth:`from_values`."""
        key = key or f"model.{cls.NODE}"
        defaults = model_config_node(model_config, cls.NODE, scale=scale)
        return cls.from_values({**{k: v for k, v in defaults.items() if k in cls.names()}, **(values or {})}, key=key)

    def updated(self: S, key: str, **overrides: Any) -> S:
        """A copy with the ``overrides`` that are not None (each checked; errors name ``<key>.<name>``,
        e.g. ``sample.steps``)."""
        given = {name: value for name, value in overrides.items() if value is not None}
        unknown = sorted(set(given) - set(self.names()))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a {self.NODE} setting of this system; expected one of: "
                              f"{', '.join(self.names())}")
        fields = {f.name: f for f in dataclasses.fields(self)}
        checked = {name: fields[name].metadata["check"](f"{key}.{name}", value) for name, value in given.items()}
        return dataclasses.replace(self, **checked)

    def to_dict(self) -> dict[str, Any]:
        """The block as plain Python (what the config and checkpoints hold)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SamplingSettings(Settings):
    """``model.sampling``: what every system's sampler takes. Systems add their guidance settings."""

    NODE: ClassVar[str] = "sampling"

    steps: int = setting(positive_int, "sampler steps")
    batch_size: int = setting(positive_int, "clips generated together by `sample`")


@dataclass(frozen=True)
class SampleOptions(Settings):
    """The ``sample.*`` options every system's ``sample_to_files`` reads besides its ``model.sampling`` ones
    (:meth:`avgen.systems.base.DiffusionSystem.sample_options` checks them before anything else runs).

    >>> SampleOptions.from_values({"n": 2, "prompt": "rain", "seed": 0, "device": "cpu", "overwrite": False},
    ...                           key="sample").n
    2
    """

    NODE: ClassVar[str] = "sample"

    n: int = setting(positive_int, "clips generated when no input is given")
    prompt: str | list[str] | None = setting(prompts, "a prompt, or a list of them; None: the data's captions")
    seed: int = setting(integer, "clip (or window) i starts from noise seed + i")
    device: str = setting(device_name, "auto (cuda when available; also null or empty), cpu, cuda, cuda:1, ...")
    overwrite: bool = setting(flag, "replace existing samples")


@dataclass(frozen=True)
class ValidationSettings(Settings):
    """``model.validation``: the sounding videos sampled and logged after each validation."""

    NODE: ClassVar[str] = "validation"

    samples: int = setting(count, "clips sampled, written and logged (0: none)")
    steps: int = setting(positive_int, "sampler steps of those clips")
    av_align: bool = setting(flag, "log their mean AV-Align (val/av_align_<variant>)")
