"""Datasets defined by a clip list (``<YouTube id>, <start s>, <class>, <split>`` rows) and a folder of the
user's downloads: VGGSound, Landscape and AudioSet-Drums.

``python -m avgen prepare data=vggsound data.source=<downloads> [data.prepare.csv=vggsound.csv]``

The list is the dataset's CSV (``vggsound.csv``: ``ytid,start,label,split`` without a header; the
TempoTokens code's ``datasets/{landscape,audioset-drum}.csv`` with the same columns, ``set`` for the
split; a header row is recognised). Downloads are matched to rows by file name, in the schemes
people have: ``<id>_<start>.mp4``, zero-padded starts (``<id>_000030.mp4``), ``<id>_<start>_<end>.mp4``
(the VGGSound preprocessing scripts), or ``<id>.mp4``; anywhere under ``data.source``, e.g. the
TempoTokens layout ``video/<stem>.mp4`` + ``audio/<stem>.wav`` (a wav in a sibling ``audio/``
folder or beside the video is the clip's sound when the mp4 has none). A downloaded clip starts at
the listed second, so its first ``data.store.seconds`` are stored (window 0).

Options the papers use (``data.prepare.*``): ``exclude`` (a file of ids to leave out: one per line,
a JSON list, or a pickled list of strings, e.g. TempoTokens' ``unmatch_videos.pkl``),
``min_clips_per_class`` (TempoTokens keeps VGGSound classes with at least 120 clips), ``test_list``
(an explicit test list of ids or ``<id>_<start>`` names replacing the CSV's test rows).

Rows whose file is not in the downloads are normal (removed videos): each is reported as
``missing``, and each split's report records how many listed ids are present and the SHA-1 of the
sorted list, so two test sets can be compared at a glance.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from avgen.data.folder import find_videos
from avgen.data.prepare import Plan, Skip, SourceVideo, run_plan
from avgen.data.splits import files_digest, text_digest
from avgen.errors import ConfigError
from avgen.media import AUDIO_SUFFIXES

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(?P<id>.+?)_(?P<start>\d+(?:\.\d+)?)(?:_(?P<end>\d+(?:\.\d+)?))?$")
_SPLITS = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "val",
           "valid": "val", "validation": "val"}


def read_clip_list(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"id", "start" (seconds), "label", "split"}`` of a dataset CSV (``ytid,start,label,split``;
    an optional header row names them).

    Raises:
        ConfigError: a row with fewer than four columns, a start that is not a number, or an unknown
            split, naming the file and line.
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise FileNotFoundError(f"data.prepare.csv={path}: no such file")
    rows = []
    with p.open(newline="", encoding="utf-8-sig") as f:
        for n, cols in enumerate(csv.reader(f), start=1):
            cols = [c.strip() for c in cols]
            if not cols or not any(cols):
                continue
            if n == 1 and cols[0].lower() in {"ytid", "youtube_id", "id", "video_id", "# ytid"}:
                continue
            if len(cols) < 4:
                raise ConfigError(f"{p}:{n}: expected 'ytid,start,label,split', got {','.join(cols)!r}")
            try:
                start = float(cols[1])
            except ValueError:
                raise ConfigError(f"{p}:{n}: start {cols[1]!r} is not a number of seconds") from None
            split = _SPLITS.get(cols[-1].lower())
            if split is None:
                raise ConfigError(f"{p}:{n}: unknown split {cols[-1]!r}; expected train, val or test")
            rows.append({"id": cols[0], "start": start, "label": ",".join(cols[2:-1]).strip(), "split": split})
    return rows


def read_id_list(path: str | Path, key: str) -> set[str]:
    """Ids (or ``<id>_<start>`` names) from a text file (one per line, first column), a JSON list, or a
    pickled list/set of strings (only builtin containers and strings are unpickled).

    Raises:
        FileNotFoundError / ConfigError: naming ``key``.
    """
    import pickle

    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise FileNotFoundError(f"{key}={path}: no such file")
    if p.suffix.lower() in (".pkl", ".pickle"):
        class _Strings(pickle.Unpickler):
            def find_class(self, module, name):  # no code from the file: builtin containers only
                raise ConfigError(f"{key}={path}: holds {module}.{name}; expected a pickled list of strings")

        with p.open("rb") as f:
            values = _Strings(f).load()
    elif p.suffix.lower() == ".json":
        values = json.loads(p.read_text())
    else:
        values = [line.replace(",", " ").split()[0] for line in p.read_text(encoding="utf-8-sig").splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    if isinstance(values, (dict, str)) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{key}={path}: expected a list of ids (strings)")
    return {Path(v).stem if v.endswith((".mp4", ".wav")) else v for v in values}


def _index(videos: list[Path]) -> dict[tuple[str, float | None], Path]:
    """``(id, start)`` (start None for files named by the id alone) → file; the first in path order wins."""
    index: dict[tuple[str, float | None], Path] = {}
    for path in videos:
        m = _NAME.match(path.stem)
        if m:
            index.setdefault((m["id"], float(m["start"])), path)
        index.setdefault((path.stem, None), path)
    return index


def _sound(video: Path, source: Path) -> str | None:
    """A wav (or other audio file) with the video's stem beside it or in a sibling ``audio/`` folder."""
    for folder in (video.parent, video.parent.parent / "audio", source / "audio"):
        for suffix in sorted(AUDIO_SUFFIXES):
            candidate = folder / f"{video.stem}{suffix}"
            if candidate.is_file():
                return str(candidate)
    return None


def plan_listed(source: str, *, dataset: str, csv_file: str | None = None, exclude: str | None = None,
                min_clips_per_class: int = 0, test_list: str | None = None,
                caption_template: str = "{label}", file_list: str | None = None, seed: int = 803,
                train_size: float = 0.9) -> Plan:
    """The :class:`~avgen.data.prepare.Plan` of a listed dataset (see the module doc).

    Raises:
        ConfigError: no source folder, no clip list, or a bad list.
    """
    if not source:
        raise ConfigError(f"data={dataset} needs data.source=<the folder of your {dataset} downloads>")
    base = Path(os.path.expanduser(str(source))).resolve()
    if not base.is_dir():
        raise ConfigError(f"data.source={source}: not a folder")
    if csv_file is None:
        found = sorted(base.glob("*.csv"))
        if not found and (file_list or any(p.is_dir() for p in base.iterdir())):
            return plan_class_folders(base, dataset=dataset, file_list=file_list, seed=seed, train_size=train_size,
                                      caption_template=caption_template)
        if len(found) != 1:
            raise ConfigError(f"data={dataset}: set data.prepare.csv=<the dataset's clip list> (found "
                              f"{len(found)} .csv files in {base})")
        csv_file = str(found[0])
    rows = read_clip_list(csv_file)
    excluded = read_id_list(exclude, "data.prepare.exclude") if exclude else set()
    tests = read_id_list(test_list, "data.prepare.test_list") if test_list else None
    index = _index(find_videos(base))
    skipped: list[Skip] = []
    kept: list[tuple[dict, Path]] = []
    listed: dict[str, list[str]] = {}
    seen: set[tuple[str, float]] = set()
    for row in rows:
        name = f"{row['id']}_{int(row['start']) if row['start'].is_integer() else row['start']}"
        split = row["split"]
        if tests is not None:
            split = "test" if (row["id"] in tests or name in tests) else ("train" if split == "test" else split)
            if split == "train" and row["split"] == "test":
                continue  # the explicit test list replaces the CSV's test rows
        listed.setdefault(split, []).append(name)
        if (row["id"], row["start"]) in seen:
            skipped.append(Skip(split, name, "", "duplicate_id", f"listed twice in {csv_file}", None, row["label"]))
            continue
        seen.add((row["id"], row["start"]))
        if row["id"] in excluded or name in excluded:
            skipped.append(Skip(split, name, "", "excluded", f"in {exclude}", None, row["label"]))
            continue
        path = index.get((row["id"], row["start"])) or index.get((row["id"], None))
        if path is None:
            skipped.append(Skip(split, name, "", "missing", "not in the downloads", None, row["label"]))
            continue
        kept.append(({**row, "split": split, "name": name}, path))
    if min_clips_per_class > 0:
        counts = Counter(r["label"] for r, _ in kept if r["split"] == "train")
        small = {label for label, n in counts.items() if n < min_clips_per_class}
        for r, path in [k for k in kept if k[0]["label"] in small]:
            skipped.append(Skip(r["split"], r["name"], str(path), "small_class",
                                f"{counts[r['label']]} train clips < data.prepare.min_clips_per_class="
                                f"{min_clips_per_class}", None, r["label"]))
        kept = [k for k in kept if k[0]["label"] not in small]
    sources: dict[str, list[SourceVideo]] = {"train": [], "val": [], "test": []}
    for r, path in kept:
        sources[r["split"]].append(SourceVideo(r["name"], str(path), r["split"], label=r["label"],
                                               caption=caption_template.replace("{label}", r["label"]),
                                               windows=(0,), audio=_sound(path, base)))
    lists = {split: {"listed": len(names), "present": len(sources.get(split, [])),
                     "sha1": hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()}
             for split, names in listed.items()}
    config = {"source": dataset, "folder": str(base), "csv": str(csv_file), "exclude": exclude,
              "min_clips_per_class": min_clips_per_class, "test_list": test_list, "caption_template": caption_template,
              "files": files_digest([p for _, p in kept], base),
              "text": {"csv": text_digest(csv_file), "exclude": text_digest(exclude),
                       "test_list": text_digest(test_list)}}
    notes = [f"{dataset}: {len(rows)} listed clips, {len(kept)} found in {base}: "
             + ", ".join(f"{s} {v['present']} of {v['listed']} (list sha1 {v['sha1'][:12]})" for s, v in lists.items())]
    return Plan(dataset, str(base), {s: v for s, v in sources.items() if v}, skipped, config, notes, lists)


def plan_class_folders(base: Path, *, dataset: str, file_list: str | None = None, seed: int = 803,
                       train_size: float = 0.9, caption_template: str = "{label}") -> Plan:
    """Class folders without a clip list (Landscape as distributed: ``<class>/<clip>.mp4``), split the
    SVG code's way (:func:`avgen.data.splits.shuffled_split`: seed 803, 90 % train, 10 % test) over the
    lines of ``file_list`` (their ``flist.txt``: one path per line, in its order) or, without one, the
    videos' relative paths in sorted order. The label (and caption) is the class folder's name."""
    from avgen.data.splits import shuffled_split

    videos = find_videos(base)
    by_rel = {v.relative_to(base).as_posix(): v for v in videos}
    by_name: dict[str, list[Path]] = {}
    for v in videos:
        by_name.setdefault(v.name, []).append(v)
    skipped: list[Skip] = []
    if file_list:
        p = Path(os.path.expanduser(str(file_list)))
        if not p.is_file():
            raise FileNotFoundError(f"data.prepare.file_list={file_list}: no such file")
        lines = [line.strip() for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    else:
        lines = sorted(by_rel)
    assignment = shuffled_split(lines, seed, train_size)
    sources: dict[str, list[SourceVideo]] = {"train": [], "test": []}
    for line in lines:
        name = line.split(",")[0].strip()
        path = by_rel.get(name.removeprefix("./")) or (by_name.get(Path(name).name) or [None])[0]
        split = assignment[line]
        if path is None:
            skipped.append(Skip(split, Path(name).stem, name, "missing", f"listed in {file_list}"))
            continue
        label = path.parent.name if path.parent != base else ""
        sources[split].append(SourceVideo(path.relative_to(base).with_suffix("").as_posix(), str(path), split,
                                          label=label, caption=caption_template.replace("{label}", label),
                                          windows=(0,), audio=_sound(path, base)))
    lists = {split: {"listed": sum(1 for v in assignment.values() if v == split), "present": len(sources[split]),
                     "sha1": hashlib.sha1("\n".join(sorted(n for n, s in assignment.items() if s == split)).encode()
                                          ).hexdigest()} for split in ("train", "test")}
    config = {"source": dataset, "folder": str(base), "file_list": file_list, "seed": seed, "train_size": train_size,
              "caption_template": caption_template, "files": files_digest(videos, base),
              "text": {"file_list": text_digest(file_list)}}
    notes = [f"{dataset}: {len(lines)} clips in class folders under {base}, split "
             f"{train_size:.0%}/{1 - train_size:.0%} with seed {seed} (the SVG code's split)"]
    return Plan(dataset, str(base), {s: v for s, v in sources.items() if v}, skipped, config, notes, lists)


def prepare_listed(root: str, store: Mapping[str, Any], *, dataset: str, source: str | None = None,
                   csv: str | None = None, exclude: str | None = None, min_clips_per_class: int = 0,
                   test_list: str | None = None, caption_template: str = "{label}", clips_per_shard: int = 64,
                   workers: int = 2, splits: Sequence[str] | None = None, overwrite: bool = False,
                   progress: bool | None = None, split_file: Any = None, file_list: str | None = None,
                   seed: int = 803, train_size: float = 0.9) -> dict[str, Any]:
    """Prepare a listed dataset (VGGSound, Landscape, AudioSet-Drums) into shards under ``root``.

    Args: see :func:`plan_listed` and :func:`avgen.data.prepare.run_plan`; ``split_file`` is not used
    (the clip list holds the split; an explicit test list is ``test_list``). Without a clip list, class
    folders are split the SVG code's way (``file_list``, ``seed``, ``train_size``: :func:`plan_class_folders`).
    Returns: the prepare report, with ``lists``: per split, how many listed clips are present and the
    SHA-1 of the sorted list.
    """
    plan = plan_listed(source, dataset=dataset, csv_file=csv, exclude=exclude,
                       min_clips_per_class=min_clips_per_class, test_list=test_list, caption_template=caption_template,
                       file_list=file_list, seed=seed, train_size=train_size)
    return run_plan(plan, root, store, clips_per_shard=clips_per_shard, workers=workers, splits=splits,
                    overwrite=overwrite, progress=progress)
