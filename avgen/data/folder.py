"""``python -m avgen prepare data=folder data.source=<folder>``: any folder of the user's own videos.

Every video under ``data.source`` (recursively; hidden files and folders are not searched) in any
container FFmpeg reads becomes one source: its id is the path relative to the folder without the
extension (``kitchen/take 1``); it is cut into consecutive clips of ``data.store.seconds``. Its sound
is the video's audio stream, or an audio file of the same stem beside it (``<stem>.wav``).

Labels and captions, first found wins:

- caption: ``<stem>.txt`` beside the video; the ``caption`` column of ``data.prepare.captions`` (a
  CSV with a header row: ``file`` (relative path, with or without extension, or file name),
  ``caption``, optional ``label``); else the label.
- label: the CSV's ``label`` column; else the name of the sub-folder the video is in (class
  folders: ``dog/…``, ``rain/…``); else empty.

Splits: ``data.split_file`` (see :func:`avgen.data.splits.read_split_file`; names may be relative
paths, ids, file names or stems; a video it does not list is left out and reported), else a seeded
split of the videos by ``data.prepare.split_ratios`` (exact counts; :func:`avgen.data.splits.seeded_split`).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from avgen.data.prepare import Plan, Skip, SourceVideo, run_plan
from avgen.data.shards import clip_key
from avgen.data.splits import files_digest, read_split_file, seeded_split, text_digest
from avgen.errors import ConfigError
from avgen.media import VIDEO_SUFFIXES

log = logging.getLogger(__name__)
DEFAULT_RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def find_videos(source: Path) -> list[Path]:
    """Video files under ``source`` (recursive, sorted; hidden files and folders skipped)."""
    found = []
    for folder, dirs, files in os.walk(source, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_SUFFIXES:
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: p.relative_to(source).as_posix())


def _read_captions(path: str | None) -> dict[str, dict[str, str]]:
    if not path:
        return {}
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise FileNotFoundError(f"data.prepare.captions={path}: no such file")
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in reader.fieldnames or []]
        if "file" not in fields or not ({"caption", "label"} & set(fields)):
            raise ConfigError(f"data.prepare.captions={path}: expected a CSV with a header row naming the columns "
                              f"file, caption (and optionally label); found {reader.fieldnames}")
        out = {}
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            out[row["file"]] = row
    return out


def _relative(name: str, base: Path) -> str:
    """A name from a split or caption file as a path relative to the source folder when it is one
    (``./a.mp4`` → ``a.mp4``; an absolute path inside ``base`` → its relative path)."""
    name = name.strip()
    path = Path(os.path.expanduser(name))
    if path.is_absolute():
        try:
            return path.resolve().relative_to(base).as_posix()
        except ValueError:
            return name
    return path.as_posix() if name.startswith("./") else name


def _lookup(table: Mapping[str, Any], rel: str, source_id: str, path: Path) -> Any:
    for name in (rel, source_id, path.name, path.stem):
        if name in table:
            return table[name]
    return None


def plan_folder(source: str, *, name: str | None = None, split_file: str | Mapping[str, str] | None = None,
                captions: str | None = None, split_ratios: Mapping[str, float] | None = None, seed: int = 0) -> Plan:
    """The :class:`~avgen.data.prepare.Plan` of a folder of videos (see the module doc).

    Raises:
        ConfigError: ``source`` missing or not a folder, or a folder without any video.
        FileNotFoundError: a split or caption file that does not exist.
    """
    if not source:
        raise ConfigError("data=folder needs data.source=<folder of your videos>")
    base = Path(os.path.expanduser(str(source))).resolve()
    if not base.is_dir():
        raise ConfigError(f"data.source={source}: not a folder")
    videos = find_videos(base)
    if not videos:
        raise ConfigError(f"data.source={source}: no video file found (searched recursively for "
                          f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    dataset = name or base.name
    table = {_relative(k, base): v for k, v in _read_captions(captions).items()}
    skipped: list[Skip] = []
    seen: dict[str, Path] = {}
    kept: list[tuple[str, str, Path]] = []
    for path in videos:
        rel = path.relative_to(base).as_posix()
        source_id = rel[: -len(path.suffix)] if path.suffix else rel
        key = clip_key(dataset, source_id, 0)
        if key in seen:
            skipped.append(Skip("train", source_id, str(path), "duplicate_id",
                                f"same id as {seen[key].relative_to(base).as_posix()}"))
            continue
        seen[key] = path
        kept.append((rel, source_id, path))
    assignment: dict[str, str] = {}
    captions_from_split: dict[str, str] = {}
    if split_file:
        entries = read_split_file(split_file)
        index: dict[str, set[str]] = {}
        for rel, source_id, path in kept:
            for n in (rel, source_id, path.name, path.stem):
                index.setdefault(n, set()).add(rel)
        for entry in entries:
            name = _relative(entry.name, base)
            found = index.get(name) or index.get(Path(name).name) or index.get(Path(name).stem) or set()
            if len(found) != 1:
                matches = f"; matches {', '.join(sorted(found))}" if found else ""
                skipped.append(Skip(entry.split, entry.name, str(base / name), "ambiguous" if found else "missing",
                                    f"listed in {split_file}{matches}"))
                continue
            rel = next(iter(found))
            assignment[rel] = entry.split
            if entry.caption:
                captions_from_split[rel] = entry.caption
    else:
        assignment = seeded_split([rel for rel, _, _ in kept], split_ratios or DEFAULT_RATIOS, seed)
    for i, s in enumerate(skipped):  # a duplicate belongs to the split its first copy is in
        if s.reason == "duplicate_id":
            first = seen[clip_key(dataset, s.source_id, 0)].relative_to(base).as_posix()
            skipped[i] = Skip(assignment.get(first, ""), s.source_id, s.path, s.reason, s.detail)
    sources: dict[str, list[SourceVideo]] = {"train": [], "val": [], "test": []}
    for rel, source_id, path in kept:
        row = _lookup(table, rel, source_id, path) or {}
        folder_label = Path(rel).parent.name if "/" in rel else ""
        label = row.get("label") or folder_label
        txt = path.with_suffix(".txt")
        caption = (txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else "") \
            or captions_from_split.get(rel) or row.get("caption") or label
        split = assignment.get(rel)
        if split is None:
            skipped.append(Skip("", source_id, str(path), "not_in_split_file", f"not in {split_file}", None, label))
            continue
        sources[split].append(SourceVideo(source_id, str(path), split, label=label, caption=caption))
    matched = {k for rel, source_id, path in kept for k in (rel, source_id, path.name, path.stem) if k in table}
    unmatched = sorted(set(table) - matched)
    if unmatched:
        log.warning("data.prepare.captions: %d row(s) match no video under %s, e.g. %s", len(unmatched), base,
                    ", ".join(unmatched[:3]))
    config = {"source": "folder", "folder": str(base), "name": dataset, "split_file": _plain(split_file),
              "captions": captions, "split_ratios": None if split_file else dict(split_ratios or DEFAULT_RATIOS),
              "seed": seed, "files": files_digest(videos, base),
              "text": {"split_file": text_digest(split_file), "captions": text_digest(captions),
                       "caption_files": text_digest([v.with_suffix(".txt") for v in videos
                                                     if v.with_suffix(".txt").is_file()], base)}}
    notes = [f"{len(videos)} videos in {base}: " + ", ".join(f"{s} {len(v)}" for s, v in sources.items())]
    return Plan(dataset, str(base), {s: v for s, v in sources.items() if v or s == "train"}, skipped, config, notes)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    return None if value is None else str(value)


def prepare_folder(root: str, store: Mapping[str, Any], *, source: str | None = None, name: str | None = None,
                   split_file: str | Mapping[str, str] | None = None, captions: str | None = None,
                   split_ratios: Mapping[str, float] | None = None, seed: int = 0, clips_per_shard: int = 64,
                   workers: int = 2, splits: Sequence[str] | None = None, overwrite: bool = False,
                   progress: bool | None = None) -> dict[str, Any]:
    """Prepare a folder of videos into shards under ``root`` at the stored geometry ``store``.

    Args: see :func:`plan_folder` (what is read) and :func:`avgen.data.prepare.run_plan` (how it is written).
    Returns: the prepare report (also written to ``<root>/prepare_report.json``).
    """
    plan = plan_folder(source, name=name, split_file=split_file, captions=captions, split_ratios=split_ratios,
                       seed=seed)
    return run_plan(plan, root, store, clips_per_shard=clips_per_shard, workers=workers, splits=splits,
                    overwrite=overwrite, progress=progress)
