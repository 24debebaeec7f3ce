"""``python -m avgen filter``: keep the clips of a prepared dataset whose per-clip scores pass thresholds.

VTA-LDM's "Data Clean" (Xu et al., §4.4 and appendix; Table 4, "Data Alignment Filter") keeps the
VGGSound training pairs with a CLAP score (audio vs the class label) above 0.3 and an AV-Align score
above 0.2; current video-to-audio work filters with ImageBind's audio-video cosine the same way. A clip
is kept when every score named by a threshold is **strictly above** it (the paper's "score > 0.3").

Scores come from the evaluation code itself (:class:`avgen.evaluation.ClipScorer`: the same AV-Align
workers and CLAP / CLIPSIM / ImageBind scorers as ``python -m avgen evaluate``, configured by the same
``evaluate.*`` block), so a threshold and a reported metric are the same number. Every clip is scored
once per scoring configuration and the scores are kept::

    <data.root>/scores/<split>/<metric>-<id>/info.json          what scored them (config, model hashes)
    <data.root>/scores/<split>/<metric>-<id>/shard-000000.csv   key, score columns, error (one per shard)

``<id>`` hashes the split's manifest and the metric's configuration (AV-Align settings; the model id or
path with its files' sizes and modification times; the prompt field), so a second ``filter`` with other
thresholds reads the saved scores instead of scoring again, a changed setting scores into a new folder,
and an interrupted run continues at the first shard without scores.

The result is a *subset*, not a copy of the shards::

    <data.root>/subsets/<name>/<split>.json    the kept keys per shard, the manifest's SHA-256, the thresholds
    <data.root>/subsets/<name>/<split>.txt     the kept keys, one per line
    <data.root>/subsets/<name>/report.json     per split and threshold: clips below it, unscored, removed

``data.subset=<name>`` makes :class:`~avgen.data.datamodule.AVDataModule` read only the kept clips of
each split the subset covers (the others in full), with the epoch length and evaluation slots counted
over the kept clips.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from avgen.data.shards import MANIFEST, Manifest
from avgen.errors import ConfigError, MissingShardsError

log = logging.getLogger(__name__)

SUBSET_FORMAT = "avgen-subset/1"
SUBSETS, SCORES = "subsets", "scores"
# threshold key → the metric it reads, in the order the report lists them
CRITERIA = {"min_av_align": "av_align", "min_clap": "clap", "min_clipsim": "clipsim", "min_imagebind": "imagebind"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def _number(text: str) -> str:
    return f"{float(text):g}"


@dataclass(frozen=True)
class Thresholds:
    """The ``filter.*`` thresholds: a clip is kept when each named score is strictly above its minimum.

    Args:
        min_av_align: AV-Align minimum (VTA-LDM: 0.2), read from the ``av_align_variant`` column.
        av_align_variant: ``official`` (the TempoTokens script, as VTA-LDM used it), ``paper`` or ``pr``
            (:mod:`avgen.metrics.av_align`).
        min_clap: CLAP audio-text cosine minimum (VTA-LDM: 0.3), against the clip's label.
        min_clipsim: CLIP frames-text cosine minimum.
        min_imagebind: ImageBind audio-video cosine minimum.
        keep_unscored: keep a clip a thresholded metric could not score (default: remove it).

    Raises:
        ConfigError: no threshold set, a threshold that is not a finite number, an unknown variant.
    """

    min_av_align: float | None = None
    av_align_variant: str = "official"
    min_clap: float | None = None
    min_clipsim: float | None = None
    min_imagebind: float | None = None
    keep_unscored: bool = False

    def __post_init__(self) -> None:
        from avgen.metrics.av_align import VARIANTS

        for key in CRITERIA:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ConfigError(f"filter.{key}={value!r}: expected a number (or null for no threshold)")
        if self.av_align_variant not in VARIANTS:
            raise ConfigError(f"filter.av_align_variant={self.av_align_variant!r}: expected one of {list(VARIANTS)}")
        if not self.metrics():
            raise ConfigError("filter: no threshold set; set at least one of " + ", ".join(
                f"filter.{k}" for k in CRITERIA) + " (VTA-LDM: filter.min_av_align=0.2 filter.min_clap=0.3)")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Thresholds:
        """From the ``filter`` block (other keys of it are ignored)."""
        return cls(**{k: cfg[k] for k in (*CRITERIA, "av_align_variant", "keep_unscored") if k in cfg})

    def metrics(self) -> list[str]:
        """The metrics with a threshold, in :data:`CRITERIA` order."""
        return [m for k, m in CRITERIA.items() if getattr(self, k) is not None]

    def minimum(self, metric: str) -> float:
        return float(getattr(self, f"min_{metric}"))

    def column(self, metric: str) -> str:
        """The per-clip score column a metric's threshold reads (``av_align_official``, ``clap``, ...)."""
        return f"av_align_{self.av_align_variant}" if metric == "av_align" else metric

    def name(self) -> str:
        """The default subset name: ``av_align-official-0.2_clap-0.3`` (``_keep-unscored`` when set)."""
        parts = [(f"av_align-{self.av_align_variant}" if m == "av_align" else m) + f"-{_number(self.minimum(m))}"
                 for m in self.metrics()]
        return "_".join(parts) + ("_keep-unscored" if self.keep_unscored else "")

    def decide(self, scores: Mapping[str, Any]) -> list[str]:
        """Why a clip with per-clip ``scores`` (``{column: value}``) is removed: the thresholds it fails
        (``min_clap``) and the metrics that could not score it (``unscored:clap``); empty: kept."""
        reasons = []
        for metric in self.metrics():
            value = scores.get(self.column(metric))
            if value is None or value == "" or not math.isfinite(float(value)):
                if not self.keep_unscored:
                    reasons.append(f"unscored:{metric}")
            elif not float(value) > self.minimum(metric):
                reasons.append(f"min_{metric}")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def manifest_sha256(split_dir: str | Path) -> str:
    """SHA-256 of a split's ``manifest.json`` (which names every shard and its clip count)."""
    return hashlib.sha256((Path(split_dir) / MANIFEST).read_bytes()).hexdigest()


def _stamp(path: str | os.PathLike | None) -> Any:
    """Sizes and modification times of a weights file or folder: cheap, and changed by a replaced file."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    if p.is_dir():
        return [[q.name, q.stat().st_size, q.stat().st_mtime_ns] for q in sorted(p.iterdir()) if q.is_file()]
    return str(path)


def scoring_identity(metric: str, evaluate: Mapping[str, Any], prompt: str) -> dict[str, Any]:
    """What a metric's per-clip scores depend on, from the ``evaluate`` block: the AV-Align settings;
    the CLAP / CLIP model (id or folder, its files' sizes and times), its options and the prompt field;
    the ImageBind file (size and time) and sizes."""
    from avgen.metrics.av_align import AVAlignConfig

    if metric == "av_align":
        return {"metric": metric, "config": asdict(AVAlignConfig(**(evaluate.get("av_align") or {})))}
    options = dict(evaluate.get(metric) or {})
    if metric in ("clap", "clipsim"):
        from avgen.metrics.semantic import local_folder

        model = options.get("model")
        return {"metric": metric, "options": options, "prompt": prompt,
                "weights": _stamp(local_folder(model)) if model else None}
    return {"metric": metric, "options": options, "weights": _stamp(options.get("path"))}


class ScoreStore:
    """The saved per-clip scores of one metric on one split: ``<root>/scores/<split>/<metric>-<id>/``
    with ``info.json`` and one CSV per shard (``key``, score columns, ``error``)."""

    def __init__(self, root: str | Path, split: str, metric: str, identity: Mapping[str, Any], manifest_sha: str):
        self.metric, self.split = metric, split
        self.identity = {**identity, "manifest_sha256": manifest_sha}
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.folder = Path(root) / SCORES / split / f"{metric}-{digest}"

    def path(self, shard: str) -> Path:
        return self.folder / f"{Path(shard).stem}.csv"

    def has(self, shard: str) -> bool:
        return self.path(shard).is_file()

    def write(self, shard: str, rows: Mapping[str, Mapping[str, Any]], described: Mapping[str, Any]) -> None:
        """Save one shard's ``{key: {column: value}}`` (atomically: a killed run leaves no half file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "info.json"
        if not info.exists():
            info.write_text(json.dumps({"split": self.split, **self.identity, "scored_by": described,
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2, default=str))
        columns = sorted({c for r in rows.values() for c in r} - {"error"})
        tmp = self.path(shard).with_name(f".{self.path(shard).name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["key", *columns, "error"])
            writer.writeheader()
            for key, row in rows.items():
                writer.writerow({"key": key, **row})
        os.replace(tmp, self.path(shard))

    def read(self, shard: str) -> dict[str, dict[str, str]]:
        with open(self.path(shard), newline="") as f:
            return {row.pop("key"): row for row in csv.DictReader(f)}


@dataclass
class Subset:
    """One split's kept clips (``<root>/subsets/<name>/<split>.json``): ``shards`` is
    ``[{"name", "clips" (kept), "keys"}]`` in manifest order; ``manifest_sha256`` ties it to the split
    it was made from."""

    name: str
    split: str
    manifest_sha256: str
    shards: list[dict[str, Any]]
    total: int
    thresholds: dict[str, Any] = field(default_factory=dict)

    @property
    def clips(self) -> int:
        return sum(s["clips"] for s in self.shards)

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
                       total=int(data["total"]), thresholds=data.get("thresholds", {}))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path}: unreadable subset ({exc}); run python -m avgen filter again with "
                              f"filter.name={name} filter.overwrite=true") from exc

    def to_json(self, dataset: str, scores: Mapping[str, str], command: str | None) -> dict[str, Any]:
        return {"format": SUBSET_FORMAT, "name": self.name, "dataset": dataset, "split": self.split,
                "manifest_sha256": self.manifest_sha256, "thresholds": self.thresholds, "clips": self.clips,
                "total": self.total, "scores": dict(scores), "shards": self.shards, "command": command,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def subset_names(root: str | Path) -> list[str]:
    """The subsets written under a dataset root."""
    folder = Path(root) / SUBSETS
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def _check_existing(folder: Path, thresholds: Thresholds, shas: dict[str, str], overwrite: bool) -> None:
    """Refuse to add to or replace a subset of the same name made with other thresholds, or from another
    version of a split being filtered, unless ``overwrite``."""
    if overwrite or not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        if path.name == "report.json":
            continue
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        split = path.stem
        if old.get("thresholds") != thresholds.to_dict() or (split in shas and old.get("manifest_sha256") != shas[split]):
            raise FileExistsError(f"{path} exists, made with other thresholds or from another version of the {split} "
                                  f"split; pass filter.overwrite=true to replace the subset, or filter.name=<another name>")


def _quantiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    q = np.quantile(np.asarray(values, dtype=np.float64), [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"p10": float(q[0]), "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p90": float(q[4])}


def score_splits(root: str | Path, splits: list[str], metrics: list[str], evaluate: Mapping[str, Any], *,
                 prompt: str = "label") -> dict[str, dict[str, ScoreStore]]:
    """Score every clip of ``splits`` with ``metrics`` through :class:`avgen.evaluation.ClipScorer`, shard by
    shard, skipping the shards whose scores are saved (:class:`ScoreStore`). Each shard's clips are
    exported to a temporary folder beside the scores (:func:`avgen.evaluation.export_samples`, the CLAP /
    CLIPSIM prompt = the clip's ``prompt`` field) and removed once scored. Returns ``{split: {metric: store}}``.
    """
    from avgen.data.shards import read_shard_samples

    root = Path(root)
    stores: dict[str, dict[str, ScoreStore]] = {}
    todo: list[tuple[str, str, list[str]]] = []  # (split, shard, metrics without scores)
    for split in splits:
        sha = manifest_sha256(root / split)
        stores[split] = {m: ScoreStore(root, split, m, scoring_identity(m, evaluate, prompt), sha) for m in metrics}
        for shard in Manifest.load(root / split).shards:
            missing = [m for m, store in stores[split].items() if not store.has(shard.name)]
            if missing:
                todo.append((split, shard.name, missing))
    if not todo:
        return stores
    from tqdm import tqdm

    from avgen.evaluation import ClipScorer, export_samples

    needed = sorted({m for _, _, ms in todo for m in ms}, key=metrics.index)
    options = {m: dict(evaluate.get(m) or {}) for m in needed if m != "av_align"}
    with ClipScorer(needed, av_align=evaluate.get("av_align"), options=options, prompt=None,
                    device=evaluate.get("device", "auto"), workers=evaluate.get("workers", 2),
                    decode_threads=evaluate.get("decode_threads", 2)) as scorer:
        described = scorer.describe()
        for split, shard, missing in tqdm(todo, desc="filter: scoring shards", unit="shard", disable=None):
            (root / SCORES).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".export-", dir=root / SCORES) as tmp:
                samples = list(read_shard_samples(root / split / shard))
                files = export_samples(iter(samples), tmp, prompt=prompt)
                scored = scorer.score(list(files.values()), missing)
            for metric in missing:
                rows = {}
                for key, _ in samples:
                    row = scored.get(files[key].name) if key in files else None
                    rows[key] = {"error": "no mp4 member in the shard"} if row is None else row
                stores[split][metric].write(shard, rows, described.get(metric, {}))
    return stores


def filter_dataset(root: str | Path, *, dataset: str, splits: list[str], thresholds: Thresholds,
                   evaluate: Mapping[str, Any], name: str | None = None, prompt: str = "label",
                   overwrite: bool = False, command: str | None = None) -> dict[str, Any]:
    """Score (or read the saved scores of) every clip of ``splits`` and write the subset of the clips that
    pass ``thresholds`` (see the module docstring for the files). Returns the report (also written to
    ``<root>/subsets/<name>/report.json``): per split the clips, kept, removed, and per threshold the
    clips below it (``below``), not scored (``unscored``), removed by it alone (``only``) and removed by it
    after the thresholds listed before it (``in_order``), with score quantiles.

    Raises:
        MissingShardsError: a split of ``splits`` is not prepared under ``root``.
        ConfigError: a bad subset name or split list.
        FileExistsError: a subset ``name`` made with other thresholds exists (``overwrite`` replaces it).
    """
    root = Path(root)
    name = name or thresholds.name()
    if not _NAME.match(name):
        raise ConfigError(f"filter.name={name!r}: use letters, digits and . _ + = - (a folder name under "
                          f"{root / SUBSETS})")
    if not splits or len(set(splits)) != len(splits):
        raise ConfigError(f"filter.splits={splits}: expected distinct split names, e.g. [train]")
    for split in splits:
        if not (root / split / MANIFEST).is_file():
            raise MissingShardsError(f"filter: no {split} split in {root} ({root / split / MANIFEST} does not exist); "
                                     f"prepare the dataset first (python -m avgen prepare data=...), with the same "
                                     f"data.store")
    if prompt not in ("label", "caption"):
        raise ConfigError(f"filter.prompt={prompt!r}: expected label or caption")
    shas = {split: manifest_sha256(root / split) for split in splits}
    folder = root / SUBSETS / name
    _check_existing(folder, thresholds, shas, overwrite)
    variants = (evaluate.get("av_align") or {}).get("variants")
    if "av_align" in thresholds.metrics() and variants is not None and thresholds.av_align_variant not in variants:
        raise ConfigError(f"filter.av_align_variant={thresholds.av_align_variant} is not among evaluate.av_align.variants="
                          f"{list(variants)}; add it there or pick one of those")
    metrics = thresholds.metrics()
    stores = score_splits(root, splits, metrics, evaluate, prompt=prompt)

    report: dict[str, Any] = {"name": name, "dataset": dataset, "thresholds": thresholds.to_dict(), "prompt": prompt,
                              "rule": "kept when every thresholded score is strictly above its minimum",
                              "splits": {}}
    subsets: dict[str, Subset] = {}
    for split in splits:
        shards, counts = [], {"clips": 0, "kept": 0}
        criteria = {m: {"threshold": thresholds.minimum(m), "column": thresholds.column(m), "below": 0,
                        "unscored": 0, "only": 0, "in_order": 0} for m in metrics}
        values: dict[str, list[float]] = {m: [] for m in metrics}
        for shard in Manifest.load(root / split).shards:
            tables = {m: stores[split][m].read(shard.name) for m in metrics}
            keys = list(next(iter(tables.values())))
            kept = []
            for key in keys:
                scores = {c: v for table in tables.values() for c, v in table.get(key, {}).items() if c != "error"}
                reasons = thresholds.decide(scores)
                counts["clips"] += 1
                for m in metrics:
                    column = thresholds.column(m)
                    if scores.get(column) not in (None, ""):
                        values[m].append(float(scores[column]))
                    else:
                        criteria[m]["unscored"] += 1
                    if f"min_{m}" in reasons:
                        criteria[m]["below"] += 1
                failed = [m for m in metrics if f"min_{m}" in reasons or f"unscored:{m}" in reasons]
                if len(failed) == 1:
                    criteria[failed[0]]["only"] += 1
                if failed:
                    criteria[failed[0]]["in_order"] += 1
                else:
                    kept.append(key)
            counts["kept"] += len(kept)
            shards.append({"name": shard.name, "clips": len(kept), "keys": kept})
        for m in metrics:
            criteria[m]["quantiles"] = _quantiles(values[m])
        report["splits"][split] = {**counts, "removed": counts["clips"] - counts["kept"], "criteria": criteria,
                                   "scores": {m: str(stores[split][m].folder) for m in metrics}}
        subsets[split] = Subset(name, split, shas[split], shards, counts["clips"], thresholds.to_dict())

    if folder.exists() and overwrite:
        shutil.rmtree(folder)
    elif (folder / "report.json").is_file():  # the splits filtered by earlier runs stay in the report
        try:
            earlier = json.loads((folder / "report.json").read_text()).get("splits", {})
        except (OSError, ValueError):
            earlier = {}
        report["splits"] = {**{k: v for k, v in earlier.items() if k not in report["splits"]}, **report["splits"]}
    folder.mkdir(parents=True, exist_ok=True)
    for split, subset in subsets.items():
        scores = {m: os.path.relpath(stores[split][m].folder, root) for m in metrics}
        _write_atomic(folder / f"{split}.json", json.dumps(subset.to_json(dataset, scores, command), indent=1))
        _write_atomic(folder / f"{split}.txt", "".join(f"{k}\n" for s in subset.shards for k in s["keys"]))
    _write_atomic(folder / "report.json", json.dumps(report, indent=2))
    return report


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
