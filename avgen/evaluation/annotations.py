"""What is known about each generated clip besides its media: its annotated ``events`` (seconds from the clip
start: the Foley-timing scores' ground truth) and its ``label``; and ``per_label.csv``, the per-clip metrics
averaged per label (:func:`per_label_rows`), as joint-generation benchmarks report per category."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from avgen.samples import sample_source

NO_LABEL = "(no label)"
TOTAL = "(all)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


class ClipAnnotations:
    """The annotations of each generated clip, first found wins:

    1. ``<stem>.json`` beside the clip (``events``, ``label``; ``evaluate`` writes both for a shard split it
       exports, :func:`avgen.samples.export_samples`);
    2. its reference in ``evaluate.ref_dir``: a shard split's sample json, the one whose key is the ``source`` in
       ``<stem>.json`` beside the clip (what ``sample`` records), else whose exported stem (key with ``/`` as
       ``__``) is the clip's stem; or, in a folder of references, ``<stem>.json`` beside the reference clip.

    ``ref_dir`` None: the files beside the clips only. ``pred``: the generated clips (a shard split's jsons are
    read once, those the clips name or match by stem)."""

    def __init__(self, ref_dir: str | Path | None, pred: list[Path]):
        from avgen.data.shards import MANIFEST

        self.folder = Path(ref_dir) if ref_dir else None
        self.split: dict[str, dict[str, Any]] | None = None
        if self.folder is not None and (self.folder / MANIFEST).is_file():
            self.split = self._read_split(pred)

    def _read_split(self, pred: list[Path]) -> dict[str, dict[str, Any]]:
        from avgen.data.shards import read_split_samples

        wanted = {p.stem for p in pred} | {s for s in (sample_source(p) for p in pred) if s}
        found: dict[str, dict[str, Any]] = {}
        for key, parts in read_split_samples(self.folder, {"json"}):
            stem = key.replace("/", "__")
            if key in wanted or stem in wanted:
                meta = json.loads(parts.get("json", b"{}"))
                found[key] = found[stem] = meta if isinstance(meta, dict) else {}
        return found

    def reference(self, path: Path) -> tuple[dict[str, Any], str]:
        """(sample json of the reference of ``path``, where it was found) — ``({}, reason)`` when none."""
        if self.folder is None:
            return {}, "no evaluate.ref_dir"
        if self.split is not None:
            source = sample_source(path)
            for key in (source, path.stem):
                if key and key in self.split:
                    return self.split[key], f"{self.folder}/{key}"
            return {}, (f"neither source {source} nor stem {path.stem}" if source else f"no stem {path.stem}") \
                + f" in the shard split evaluate.ref_dir={self.folder}"
        beside = self.folder / f"{path.stem}.json"
        return _read_json(beside), str(beside)

    def events(self, path: Path) -> tuple[np.ndarray, str]:
        """(event times (N,) float64 seconds, the file they came from) of generated clip ``path``.

        Raises:
            ValueError: no ``events`` beside the clip nor in its reference (reported for this clip).
        """
        beside = Path(path).with_suffix(".json")
        own = _read_json(beside)
        if isinstance(own.get("events"), list):
            return event_times(own["events"], beside.name), beside.name
        meta, where = self.reference(Path(path))
        if isinstance(meta.get("events"), list):
            return event_times(meta["events"], where), where
        raise ValueError(f"no annotated events: no 'events' in {beside.name} beside the clip nor in its reference "
                         f"({where})")

    def label(self, path: Path) -> str | None:
        """The ``label`` of generated clip ``path`` (beside it, else its reference's), None when neither has one."""
        label = _read_json(Path(path).with_suffix(".json")).get("label")
        if label is None:
            label = self.reference(Path(path))[0].get("label")
        return None if label is None else str(label)


def event_times(values: list, where: str) -> np.ndarray:
    """``events`` of a sample json as (N,) float64 seconds from the clip start.

    Raises:
        ValueError: an entry that is not a finite number >= 0 (named with ``where``, the json it came from): a
            NaN or negative time would silently count as an event no onset can match.
    """
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
           or v < 0]
    if bad:
        raise ValueError(f"'events' in {where}: {bad[0]!r} is not a time in seconds >= 0 (every entry must be one)")
    return np.asarray(values, dtype=np.float64)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def metric_columns(rows: list[dict[str, Any]], values: Mapping[str, Any]) -> list[str]:
    """The per-clip columns of ``rows`` that are a metric of ``values`` (``metrics.json``'s ``metrics``): a
    column named like a number there (``onset_acc``, ``desync``, ``ib_score_raw``) or ``<metric>_<variant>``
    of a metric with variants (``av_align_pr``, ``kl_softmax``). Durations, counts and file names are not."""
    def is_metric(column: str) -> bool:
        if _number(values.get(column)) is not None:
            return True
        return any(column.startswith(f"{m}_") and isinstance(v, Mapping)
                   and _number(v.get(column[len(m) + 1:])) is not None for m, v in values.items())

    return sorted({c for r in rows for c in r if c != "clip" and is_metric(c)})


def per_label_rows(rows: list[dict[str, Any]], labels: Mapping[str, str | None], values: Mapping[str, Any]
                   ) -> list[dict[str, Any]]:
    """``per_label.csv``: for each label (sorted; clips without one under ``(no label)``) and a last row
    ``(all)``, told apart from labels of the same text by ``group`` (``label``, ``no label``, ``total``):
    ``clips`` (the label's clips, failed ones included) and, for each per-clip metric
    (:func:`metric_columns`), the mean over the label's clips that metric scored and their number
    (``<column>_clips``). Weighted by ``<column>_clips``, the labels' means sum back to the ``(all)`` mean, which
    is the value in ``metrics.json``.

    Distribution metrics (FVD, FAD, FD, IS, KVD) are not split: they compare two sets of features, and per label
    the sets are a few clips, too few for the covariances (a Fréchet distance on n < d clips is dominated by its
    bias) and, for IS, the spread over classes is the score; a per-label number would not be the paper's metric.

    ``rows``: ``per_clip.csv``'s rows (``{"clip": file name, column: value}``); ``labels``: clip file name → label.
    """
    columns = metric_columns(rows, values)
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}  # (0, label) sorted, then the unlabelled clips
    for row in rows:
        label = labels.get(row["clip"])
        groups.setdefault((0, label) if label else (1, NO_LABEL), []).append(row)
    table = []
    kinds = ("label", "no label", "total")  # the `group` column: a clip labelled "(all)" is still a label
    for (kind, label), members in [*sorted(groups.items()), ((2, TOTAL), rows)]:
        out: dict[str, Any] = {"label": label, "group": kinds[kind], "clips": len(members)}
        for column in columns:
            scored = [x for x in (_number(r.get(column)) for r in members) if x is not None]
            out[column] = sum(scored) / len(scored) if scored else None
            out[f"{column}_clips"] = len(scored)
        table.append(out)
    return table
