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

The result is a *subset* (:mod:`avgen.data.subset`), not a copy of the shards: the kept keys per
shard in ``<data.root>/subsets/<name>/<split>.json`` (and ``.txt``), and ``report.json`` with, per
split and threshold, the clips below it, unscored, removed by it alone, and the score quantiles.
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
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from avgen.data.shards import MANIFEST, Manifest, ShardInfo
from avgen.data.subset import SUBSETS, Subset, manifest_sha256
from avgen.errors import ConfigError, DataHealthError, MissingShardsError
from avgen.media import atomic_write, write_text_atomic

log = logging.getLogger(__name__)

SCORES = "scores"
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
        if not isinstance(self.keep_unscored, bool):
            raise ConfigError(f"filter.keep_unscored={self.keep_unscored!r}: expected true or false")
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
        (``min_clap``) and the metrics that could not score it (``unscored:clap``: no value, or not a
        finite number); empty: kept."""
        reasons = []
        for metric in self.metrics():
            value = score_value(scores.get(self.column(metric)))
            if value is None:
                if not self.keep_unscored:
                    reasons.append(f"unscored:{metric}")
            elif not value > self.minimum(metric):
                reasons.append(f"min_{metric}")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_value(value: Any) -> float | None:
    """A saved score as a float, or ``None`` when there is none (empty, missing, NaN or infinite)."""
    if value is None or value == "":
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
    with ``info.json`` and one CSV per shard (``key``, the metric's own columns, ``error``).

    ``settings_id`` hashes the scoring settings alone (the same for every split); the folder's ``<id>``
    also hashes the split's manifest."""

    def __init__(self, root: str | Path, split: str, metric: str, identity: Mapping[str, Any], manifest_sha: str):
        self.metric, self.split = metric, split
        self.settings_id = _digest(identity)
        self.identity = {**identity, "manifest_sha256": manifest_sha}
        self.folder = Path(root) / SCORES / split / f"{metric}-{_digest(self.identity)}"

    def path(self, shard: str) -> Path:
        return self.folder / f"{Path(shard).stem}.csv"

    def complete(self, shard: ShardInfo) -> bool:
        """Whether the scores of every clip of ``shard`` are saved (a CSV with one row per clip)."""
        if not self.path(shard.name).is_file():
            return False
        with open(self.path(shard.name), newline="") as f:
            return sum(1 for _ in csv.reader(f)) - 1 == shard.clips

    def write(self, shard: str, rows: Mapping[str, Mapping[str, Any]], described: Mapping[str, Any]) -> None:
        """Save one shard's ``{key: {column: value}}`` (atomically: a killed run leaves no half file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "info.json"
        if not info.exists():
            write_text_atomic(info, json.dumps({"split": self.split, **self.identity, "scored_by": described,
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2, default=str))
        columns = sorted({c for r in rows.values() for c in r} - {"error"})
        with atomic_write(self.path(shard), "w", overwrite=True) as f:
            writer = csv.DictWriter(f, fieldnames=["key", *columns, "error"])
            writer.writeheader()
            for key, row in rows.items():
                writer.writerow({"key": key, **row})

    def read(self, shard: str) -> dict[str, dict[str, str]]:
        with open(self.path(shard), newline="") as f:
            return {row.pop("key"): row for row in csv.DictReader(f)}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def own_columns(metric: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a :meth:`avgen.evaluation.ClipScorer.score` row that belong to ``metric``, with its
    own error: AV-Align's scores, onset/peak counts and durations; the one score column of the others."""
    if metric == "av_align":
        own = {k: v for k, v in row.items() if k not in ("error", "errors", "clap", "clipsim", "imagebind")}
    else:
        own = {metric: row[metric]} if metric in row else {}
    reason = (row.get("errors") or {}).get(metric)
    return {**own, **({"error": reason} if reason else {})}


def _unreadable(split_dir: Path, shard: str, why: str) -> DataHealthError:
    return DataHealthError(f"filter: {split_dir / shard} {why}; prepare the {split_dir.name} split again "
                           f"(python -m avgen prepare data=... overwrite=true), then filter again")


def _remove_dead_exports(folder: Path) -> None:
    """Remove the export folders of filter runs that were killed (``.export-<pid>-*`` of a dead process)."""
    for tmp in folder.glob(".export-*"):
        try:
            pid = int(tmp.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def score_splits(root: str | Path, splits: list[str], metrics: list[str], evaluate: Mapping[str, Any], *,
                 prompt: str = "label") -> dict[str, dict[str, ScoreStore]]:
    """Score every clip of ``splits`` with ``metrics`` through :class:`avgen.evaluation.ClipScorer`, shard by
    shard, skipping the shards whose scores are saved (:class:`ScoreStore`). Each shard's clips are
    exported to a temporary folder beside the scores (:func:`avgen.samples.export_samples`, the CLAP /
    CLIPSIM prompt = the clip's ``prompt`` field) and removed once scored. Returns ``{split: {metric: store}}``.

    Raises:
        DataHealthError: a shard that is missing, unreadable or holds fewer clips than its manifest says.
    """
    from avgen.data.shards import read_shard_samples

    root = Path(root)
    stores: dict[str, dict[str, ScoreStore]] = {}
    todo: list[tuple[str, ShardInfo, list[str]]] = []  # (split, shard, metrics without scores)
    for split in splits:
        sha = manifest_sha256(root / split)
        stores[split] = {m: ScoreStore(root, split, m, scoring_identity(m, evaluate, prompt), sha) for m in metrics}
        for shard in Manifest.load(root / split).shards:
            missing = [m for m, store in stores[split].items() if not store.complete(shard)]
            if missing:
                todo.append((split, shard, missing))
    if not todo:
        return stores
    from tqdm import tqdm

    from avgen.evaluation import ClipScorer
    from avgen.samples import export_samples

    (root / SCORES).mkdir(parents=True, exist_ok=True)
    _remove_dead_exports(root / SCORES)
    needed = sorted({m for _, _, ms in todo for m in ms}, key=metrics.index)
    options = {m: dict(evaluate.get(m) or {}) for m in needed if m != "av_align"}
    with ClipScorer(needed, av_align=evaluate.get("av_align"), options=options, prompt=None,
                    device=evaluate.get("device", "auto"), workers=evaluate.get("workers", 2),
                    decode_threads=evaluate.get("decode_threads", 2)) as scorer:
        described = scorer.describe()
        for split, shard, missing in tqdm(todo, desc="filter: scoring shards", unit="shard", disable=None):
            with tempfile.TemporaryDirectory(prefix=f".export-{os.getpid()}-", dir=root / SCORES) as tmp:
                try:
                    samples = list(read_shard_samples(root / split / shard.name))
                except FileNotFoundError:
                    raise _unreadable(root / split, shard.name, "is missing") from None
                except (OSError, EOFError, tarfile.TarError) as exc:
                    raise _unreadable(root / split, shard.name, f"is unreadable ({exc})") from exc
                if len(samples) != shard.clips:
                    raise _unreadable(root / split, shard.name, f"holds {len(samples)} clips, its manifest "
                                                                f"{shard.clips} (truncated?)")
                files = export_samples(iter(samples), tmp, prompt=prompt)
                scored = scorer.score(list(files.values()), missing)
            for metric in missing:
                rows = {}
                for key, _ in samples:
                    row = scored.get(files[key].name) if key in files else None
                    rows[key] = {"error": "no mp4 member in the shard"} if row is None else own_columns(metric, row)
                stores[split][metric].write(shard.name, rows, described.get(metric, {}))
    return stores


def default_name(thresholds: Thresholds, prompt: str) -> str:
    """The subset name when ``filter.name`` is not set: the thresholds (:meth:`Thresholds.name`), plus
    ``_prompt-caption`` when a text metric scored against captions instead of labels."""
    text = any(m in ("clap", "clipsim") for m in thresholds.metrics())
    return thresholds.name() + (f"_prompt-{prompt}" if text and prompt != "label" else "")


def _check_existing(folder: Path, made: Subset, shas: dict[str, str], overwrite: bool) -> list[str]:
    """The splits of an existing subset of the same name that ``overwrite`` removes (made by another rule).
    Without ``overwrite``, refuse to add to or replace a subset made by another rule (thresholds, scoring
    settings, prompt), or from another version of a split being filtered."""
    if not folder.is_dir():
        return []
    stale = []
    for path in sorted(folder.glob("*.json")):
        if path.name == "report.json":
            continue
        try:
            old = Subset.load(folder.parent.parent, folder.name, path.stem)
        except ConfigError:
            old = None
        split = path.stem
        if old is not None and old.same_making(made) and (split not in shas or old.manifest_sha256 == shas[split]):
            continue
        if not overwrite:
            raise FileExistsError(f"{path} exists, made with other thresholds or scoring settings (evaluate.*, "
                                  f"filter.prompt) or from another version of the {split} split; pass "
                                  f"filter.overwrite=true to replace the subset, or filter.name=<another name>")
        if split not in shas:
            stale.append(split)
    return stale


def _quantiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    q = np.quantile(np.asarray(values, dtype=np.float64), [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"p10": float(q[0]), "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p90": float(q[4])}


def filter_dataset(root: str | Path, *, dataset: str, splits: list[str] | str, thresholds: Thresholds,
                   evaluate: Mapping[str, Any], name: str | None = None, prompt: str = "label",
                   overwrite: bool = False, command: str | None = None) -> dict[str, Any]:
    """Score (or read the saved scores of) every clip of ``splits`` and write the subset of the clips that
    pass ``thresholds`` (see the module docstring for the files). Returns the report (also written to
    ``<root>/subsets/<name>/report.json``): per split the clips, kept, removed, and per threshold the
    clips below it (``below``), not scored (``unscored``: no score, or not a finite one), removed by it
    alone (``only``) and removed by it after the thresholds listed before it (``in_order``), with the
    quantiles of its finite scores.

    With ``overwrite``, splits of an existing subset of that name made by another rule are removed (and
    listed in the report's ``removed_splits``); splits made by the same rule stay.

    Raises:
        MissingShardsError: a split of ``splits`` is not prepared under ``root``.
        DataHealthError: a shard that is missing, unreadable or shorter than its manifest says.
        ConfigError: a bad subset name, split list, prompt or ``overwrite`` value.
        FileExistsError: a subset ``name`` made by another rule exists (``overwrite`` replaces it).
    """
    root = Path(root)
    splits = [splits] if isinstance(splits, str) else list(splits)
    if not splits or len(set(splits)) != len(splits) or not all(isinstance(s, str) and s for s in splits):
        raise ConfigError(f"filter.splits={splits}: expected distinct split names, e.g. [train]")
    if not isinstance(overwrite, bool):
        raise ConfigError(f"filter.overwrite={overwrite!r}: expected true or false")
    if prompt not in ("label", "caption"):
        raise ConfigError(f"filter.prompt={prompt!r}: expected label or caption")
    name = name or default_name(thresholds, prompt)
    if not _NAME.match(name):
        raise ConfigError(f"filter.name={name!r}: use letters, digits and . _ + = - (a folder name under "
                          f"{root / SUBSETS})")
    for split in splits:
        if not (root / split / MANIFEST).is_file():
            raise MissingShardsError(f"filter: no {split} split in {root} ({root / split / MANIFEST} does not exist); "
                                     f"prepare the dataset first (python -m avgen prepare data=...), with the same "
                                     f"data.store")
    variants = (evaluate.get("av_align") or {}).get("variants")
    if "av_align" in thresholds.metrics() and variants is not None and thresholds.av_align_variant not in variants:
        raise ConfigError(f"filter.av_align_variant={thresholds.av_align_variant} is not among "
                          f"evaluate.av_align.variants={list(variants)}; add it there or pick one of those")
    metrics = thresholds.metrics()
    shas = {split: manifest_sha256(root / split) for split in splits}
    scoring = {m: _digest(scoring_identity(m, evaluate, prompt)) for m in metrics}  # = each ScoreStore's settings_id
    rule = Subset(name, "", "", [], 0, thresholds.to_dict(), scoring, prompt)
    folder = root / SUBSETS / name
    stale = _check_existing(folder, rule, shas, overwrite)
    stores = score_splits(root, splits, metrics, evaluate, prompt=prompt)

    report: dict[str, Any] = {"name": name, "dataset": dataset, "thresholds": thresholds.to_dict(), "prompt": prompt,
                              "scoring": scoring,
                              "rule": "kept when every thresholded score is strictly above its minimum",
                              "splits": {}}
    subsets: dict[str, Subset] = {}
    for split in splits:
        shards, counts = [], {"clips": 0, "kept": 0}
        criteria = {m: {"threshold": thresholds.minimum(m), "column": thresholds.column(m), "below": 0,
                        "unscored": 0, "only": 0, "in_order": 0} for m in metrics}
        values: dict[str, list[float]] = {m: [] for m in metrics}
        for shard in Manifest.load(root / split).shards:
            if not (root / split / shard.name).is_file():
                raise _unreadable(root / split, shard.name, "is missing")
            tables = {m: stores[split][m].read(shard.name) for m in metrics}
            keys = list(tables[metrics[0]])
            kept = []
            for key in keys:
                # each threshold reads its column from its own metric's scores only
                scores = {thresholds.column(m): tables[m].get(key, {}).get(thresholds.column(m)) for m in metrics}
                reasons = thresholds.decide(scores)
                counts["clips"] += 1
                for m in metrics:
                    value = score_value(scores[thresholds.column(m)])
                    if value is None:
                        criteria[m]["unscored"] += 1
                    else:
                        values[m].append(value)
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
                                   "scores": {m: os.path.relpath(stores[split][m].folder, root) for m in metrics}}
        subsets[split] = Subset(name, split, shas[split], shards, counts["clips"], thresholds.to_dict(), scoring,
                                prompt)

    folder.mkdir(parents=True, exist_ok=True)
    earlier: dict[str, Any] = {}
    if (folder / "report.json").is_file():  # the splits filtered by earlier runs stay in the report
        try:
            earlier = json.loads((folder / "report.json").read_text()).get("splits", {})
        except (OSError, ValueError):
            earlier = {}
    for split in stale:  # made by another rule; overwrite was asked
        for suffix in (".json", ".txt"):
            (folder / f"{split}{suffix}").unlink(missing_ok=True)
        earlier.pop(split, None)
        log.warning("filter: removed the %s split of subset %s (made by another rule)", split, name)
    report["splits"] = {**{k: v for k, v in earlier.items() if k not in report["splits"]}, **report["splits"]}
    report["removed_splits"] = stale
    for split, subset in subsets.items():
        made = subset.to_json(dataset, report["splits"][split]["scores"], command)
        write_text_atomic(folder / f"{split}.json", json.dumps(made, indent=1))
        write_text_atomic(folder / f"{split}.txt", "".join(f"{k}\n" for k in subset.keys))
    write_text_atomic(folder / "report.json", json.dumps(report, indent=2))
    return report
