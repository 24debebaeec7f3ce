"""Curated subsets of a prepared split: the clips a ``python -m avgen filter`` run kept (:mod:`avgen.curation`).

A subset is a list of sample keys, not a copy of the shards::

    <data.root>/subsets/<name>/<split>.json    format avgen-subset/1: the kept keys per shard, the split
                                              manifest's SHA-256, the thresholds and scoring settings
    <data.root>/subsets/<name>/<split>.txt     the kept keys, one per line
    <data.root>/subsets/<name>/report.json     what each threshold removed (written by ``filter``)

``data.subset=<name>`` makes :class:`~avgen.data.datamodule.AVDataModule` read only these keys of each
split the subset covers (:class:`avgen.data.stream.Shard` ``keys``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from avgen.data.shards import MANIFEST
from avgen.errors import ConfigError

SUBSET_FORMAT = "avgen-subset/1"
SUBSETS = "subsets"


def manifest_sha256(split_dir: str | Path) -> str:
    """SHA-256 of a split's ``manifest.json`` (it names every shard, its clip count and when it was written)."""
    return hashlib.sha256((Path(split_dir) / MANIFEST).read_bytes()).hexdigest()


def subset_names(root: str | Path) -> list[str]:
    """The subsets written under a dataset root."""
    folder = Path(root) / SUBSETS
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class Subset:
    """One split's kept clips (``<root>/subsets/<name>/<split>.json``).

    Attributes:
        shards: ``[{"name": shard file, "clips": kept clips, "keys": [kept keys]}]`` in manifest order.
        manifest_sha256: the manifest of the split it was made from (:func:`manifest_sha256`).
        total: clips of the split when it was made.
        thresholds: the ``filter`` thresholds; scoring: ``{metric: scoring settings id}``; prompt: the
            CLAP/CLIPSIM text field.
    """

    name: str
    split: str
    manifest_sha256: str
    shards: list[dict[str, Any]]
    total: int
    thresholds: dict[str, Any] = field(default_factory=dict)
    scoring: dict[str, str] = field(default_factory=dict)
    prompt: str = "label"

    @property
    def clips(self) -> int:
        return sum(int(s["clips"]) for s in self.shards)

    @property
    def keys(self) -> list[str]:
        return [k for s in self.shards for k in s["keys"]]

    @classmethod
    def load(cls, root: str | Path, name: str, split: str) -> Subset | None:
        """The subset ``name`` of ``split``, or ``None`` when it does not cover that split.

        Raises:
            ConfigError: no subset ``name`` under ``root``, or an unreadable subset file.
        """
        folder = Path(root) / SUBSETS / name
        if not folder.is_dir():
            known = subset_names(root)
            raise ConfigError(f"data.subset={name}: no subset of that name in {folder.parent} (known: "
                              f"{', '.join(known) or 'none'}); create it with python -m avgen filter data=<dataset> "
                              f"filter.name={name} filter.min_av_align=... (same data.store)")
        path = folder / f"{split}.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != SUBSET_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {SUBSET_FORMAT}")
            return cls(name=name, split=split, manifest_sha256=data["manifest_sha256"], shards=data["shards"],
                       total=int(data["total"]), thresholds=data.get("thresholds", {}),
                       scoring=data.get("scoring", {}), prompt=data.get("prompt", "label"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable subset ({exc}); run python -m avgen filter again with "
                              f"filter.name={name} filter.overwrite=true") from exc

    def same_making(self, other: Subset) -> bool:
        """Whether two splits' subsets were made by the same rule (thresholds, scoring settings, prompt)."""
        return (self.thresholds, self.scoring, self.prompt) == (other.thresholds, other.scoring, other.prompt)

    def to_json(self, dataset: str, scores: Mapping[str, str], command: str | None) -> dict[str, Any]:
        """The ``<split>.json`` content; ``scores``: ``{metric: scores folder relative to the dataset root}``."""
        return {"format": SUBSET_FORMAT, "name": self.name, "dataset": dataset, "split": self.split,
                "manifest_sha256": self.manifest_sha256, "thresholds": self.thresholds, "scoring": self.scoring,
                "prompt": self.prompt, "clips": self.clips, "total": self.total, "scores": dict(scores),
                "shards": self.shards, "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
