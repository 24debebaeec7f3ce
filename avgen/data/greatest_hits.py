"""``python -m avgen prepare data=greatest_hits data.source=<vis-data folder>``: The Greatest Hits
(Owens et al. 2016, "Visually Indicated Sounds") with its annotated hits.

The dataset folder (``vis-data`` / ``vis-data-256``) holds, per recording ``<id>`` (a date stamp such
as ``2015-02-16-16-49-06``, sometimes with a suffix): ``<id>_denoised.mp4``,
``<id>_denoised_thumb.mp4`` (the smaller copy the SVG code prepares from), ``<id>_denoised.wav``,
``<id>_mic.mp4`` / ``.wav`` and ``<id>_times.txt``, the hit annotations: one event per line,
``<time s> <material> <action> <reaction>`` separated by spaces, times in seconds from the start
of the video; ``action`` is ``hit``, ``scratch`` or ``None``. A line whose action is ``None`` is not
a hit and is left out of the events (every public loader read for this drops them; see the note of
the issue this landed with); the other lines are the clip's ``events``.

Preparation follows the SVG code (``script_create_segmented_mp4.sh``): consecutive 4-s segments of
``<id>_denoised_thumb.mp4`` (``<id>_denoised.mp4`` when there is no thumb), 8 fps, centre crop 256
(``data.store``); segment ``k`` covers ``[4k, 4k + 4)`` s; a segment shorter than 4 s is dropped.
Each clip's json holds ``events`` (the hit times minus the segment start: clip time) and
``event_labels`` (material, action, reaction of each); its label is the most frequent material
of its hits (else of the whole video), its caption the ``caption_template`` with that material.

Splits, first found wins: ``data.split_file`` — the SVG code's lists as a mapping
``{train: flist_train.txt, test: flist_val.txt}`` (lines ``<path>/<id>_denoised_thumb-NNN.mp4,<caption>``:
exactly those segments, with those captions), the dataset's own ``train.txt`` / ``test.txt``
(one ``<id>`` per line), a JSON list of ids, or one file of ``<id> <split>`` lines; else
``train.txt`` / ``val.txt`` / ``test.txt`` in the dataset folder (the original split, which the SVG
paper follows); else a seeded split of the recordings.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from avgen.data.folder import _plain, _read_captions
from avgen.data.prepare import Plan, Skip, SourceVideo, run_plan
from avgen.data.splits import files_digest, read_split_file, seeded_split, text_digest
from avgen.errors import ConfigError

log = logging.getLogger(__name__)
DATASET = "greatest_hits"
VIDEO_KINDS = ("_denoised_thumb.mp4", "_denoised.mp4")
SEGMENT = re.compile(r"^(?P<id>.+?)_denoised(?:_thumb)?-(?P<k>\d+)\.mp4$")
DEFAULT_RATIOS = {"train": 0.75, "val": 0.0, "test": 0.25}


class AnnotationError(ValueError):
    """A ``*_times.txt`` line that cannot be read; the message names the file and line."""


def read_hits(path: str | Path) -> list[dict[str, Any]]:
    """The hits of one ``<id>_times.txt``: ``[{"time": s, "material", "action", "reaction"}]`` in file
    order, without the lines whose action is ``None``.

    Raises:
        AnnotationError: a line with fewer than three fields or a time that is not a number.
    """
    path = Path(path)
    hits = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3:
            raise AnnotationError(f"{path}:{n}: expected '<time> <material> <action> <reaction>', got {line.strip()!r}")
        try:
            t = float(fields[0])
        except ValueError:
            raise AnnotationError(f"{path}:{n}: time {fields[0]!r} is not a number") from None
        if fields[2] == "None":
            continue
        hits.append({"time": t, "material": fields[1], "action": fields[2],
                     "reaction": fields[3] if len(fields) > 3 else ""})
    return hits


def find_recordings(source: Path) -> dict[str, Path]:
    """``{id: video}`` under ``source`` (recursive): the thumb video of each recording, else the full one."""
    found: dict[str, Path] = {}
    for kind in VIDEO_KINDS:
        for path in sorted(source.rglob(f"*{kind}")):
            if any(part.startswith(".") for part in path.relative_to(source).parts):
                continue
            found.setdefault(path.name[: -len(kind)], path)
    return dict(sorted(found.items()))


def plan_greatest_hits(source: str, *, split_file: str | Mapping[str, str] | None = None,
                       caption_template: str = "hitting {material} with a drumstick", captions: str | None = None,
                       split_ratios: Mapping[str, float] | None = None, seed: int = 0) -> Plan:
    """The :class:`~avgen.data.prepare.Plan` of a Greatest Hits folder (see the module doc).

    Raises:
        ConfigError: ``source`` missing, not a folder, or without any ``*_denoised(_thumb).mp4``.
        FileNotFoundError: a split or caption file that does not exist.
    """
    if not source:
        raise ConfigError("data=greatest_hits needs data.source=<the vis-data folder of The Greatest Hits>")
    base = Path(os.path.expanduser(str(source))).resolve()
    if not base.is_dir():
        raise ConfigError(f"data.source={source}: not a folder")
    recordings = find_recordings(base)
    if not recordings:
        raise ConfigError(f"data.source={source}: no *_denoised_thumb.mp4 or *_denoised.mp4 found (searched "
                          f"recursively)")
    skipped: list[Skip] = []
    windows: dict[str, set[int]] = {}
    window_captions: dict[str, dict[int, str]] = {}
    assignment: dict[str, str] = {}
    used = split_file
    if not used:
        own = {s: base / f"{s}.txt" for s in ("train", "val", "test") if (base / f"{s}.txt").is_file()}
        if "train" in own and len(own) > 1:
            used = {s: str(p) for s, p in own.items()}
    if used:
        for entry in read_split_file(used):
            name = Path(entry.name).name
            segment = SEGMENT.match(name)
            rid = segment["id"] if segment else next((name[: -len(k)] for k in VIDEO_KINDS if name.endswith(k)), name)
            if rid not in recordings:
                skipped.append(Skip(entry.split, rid, entry.name, "missing", f"listed in {used}"))
                continue
            if assignment.setdefault(rid, entry.split) != entry.split:
                log.warning("greatest_hits: %s is listed in both %s and %s; kept in %s", rid, assignment[rid],
                            entry.split, assignment[rid])
                continue
            if segment:
                k = int(segment["k"])
                windows.setdefault(rid, set()).add(k)
                if entry.caption:
                    window_captions.setdefault(rid, {})[k] = entry.caption
    else:
        assignment = seeded_split(list(recordings), split_ratios or DEFAULT_RATIOS, seed)
    table = _read_captions(captions)
    template = caption_template.replace("{material}", "{label}")
    sources: dict[str, list[SourceVideo]] = {"train": [], "val": [], "test": []}
    for rid, path in recordings.items():
        split = assignment.get(rid)
        if split is None:
            skipped.append(Skip("", rid, str(path), "not_in_split_file", f"not in {used}"))
            continue
        times = path.with_name(f"{rid}_times.txt")
        if not times.is_file():
            skipped.append(Skip(split, rid, str(path), "no_annotation", f"{times.name} not found"))
            continue
        try:
            hits = read_hits(times)
        except (AnnotationError, OSError) as exc:
            skipped.append(Skip(split, rid, str(path), "bad_annotation", str(exc)))
            continue
        row = table.get(rid) or table.get(path.name) or {}
        chosen = tuple(sorted(windows[rid])) if rid in windows else None
        sources[split].append(SourceVideo(rid, str(path), split, caption=row.get("caption") or template,
                                          windows=chosen, window_captions=window_captions.get(rid),
                                          events=tuple(hits), label_key="material"))
    config = {"source": DATASET, "folder": str(base), "split_file": _plain(used),
              "caption_template": caption_template, "captions": captions,
              "split_ratios": None if used else dict(split_ratios or DEFAULT_RATIOS), "seed": seed,
              "files": files_digest(list(recordings.values()), base),
              "text": {"split_file": text_digest(used), "captions": text_digest(captions),
                       "annotations": text_digest(list(base.rglob("*_times.txt")), base)}}
    notes = [f"{len(recordings)} recordings in {base}: " + ", ".join(f"{s} {len(v)}" for s, v in sources.items())
             + (f"; split from {used}" if used else "; seeded split")]
    return Plan(DATASET, str(base), {s: v for s, v in sources.items() if v or s == "train"}, skipped, config, notes)


def prepare_greatest_hits(root: str, store: Mapping[str, Any], *, source: str | None = None,
                          split_file: str | Mapping[str, str] | None = None,
                          caption_template: str = "hitting {material} with a drumstick", captions: str | None = None,
                          split_ratios: Mapping[str, float] | None = None, seed: int = 0, clips_per_shard: int = 64,
                          workers: int = 2, splits: Sequence[str] | None = None, overwrite: bool = False,
                          progress: bool | None = None, name: str | None = None) -> dict[str, Any]:
    """Prepare The Greatest Hits into shards under ``root`` at the stored geometry ``store``.

    Args: see :func:`plan_greatest_hits` and :func:`avgen.data.prepare.run_plan`.
    Returns: the prepare report (also ``<root>/prepare_report.json``).
    """
    plan = plan_greatest_hits(source, split_file=split_file, caption_template=caption_template, captions=captions,
                              split_ratios=split_ratios, seed=seed)
    return run_plan(plan, root, store, clips_per_shard=clips_per_shard, workers=workers, splits=splits,
                    overwrite=overwrite, progress=progress)
