"""Split files and split rules: which source goes to train, val and test.

:func:`read_split_file` reads the many forms split lists come in (one file per split, or one file with a
split column; ids, stems, relative paths or segment files; optional captions); :func:`seeded_split`
assigns exact counts with a seed; :func:`shuffled_split` is the SVG code's Landscape rule (seed 803,
90 % train); :func:`text_digest` / :func:`files_digest` identify the lists a split came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from avgen.data.shards import SPLITS
from avgen.errors import ConfigError


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split file: a name (id, stem, relative path or segment file), its split, an optional caption."""

    name: str
    split: str
    caption: str | None = None


_HEADER_NAMES = {"file", "path", "id", "name", "video", "filename", "ytid", "youtube_id"}


def read_split_file(spec: str | Mapping[str, str]) -> list[SplitEntry]:
    """Read split lists.

    ``spec`` is either one file listing ``<name> <split>`` per line (whitespace- or comma-separated;
    a CSV may have a header row with columns ``file``/``id`` and ``split``, optional ``caption``), or a
    mapping ``{split: file}`` of per-split lists: one name per line, optionally followed by a comma
    and a caption (CSV quoting; the SVG code's ``flist_train.txt``), or a JSON list of names.

    Raises:
        FileNotFoundError: a listed file does not exist (the message names the ``data.split_file`` key).
        ConfigError: an unknown split name or a line without a split, naming the file and line.
    """
    import csv

    def rows(path: Path) -> Iterator[tuple[int, str, list[str]]]:
        text = path.read_text(encoding="utf-8-sig")
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = [c.strip() for c in next(csv.reader([line]))] if "," in line else line.split()
            yield n, line.strip(), cols

    def split_name(text: str) -> str:
        return {"valid": "val", "validation": "val", "training": "train", "testing": "test"}.get(text.lower(),
                                                                                            text.lower())

    def existing(path: str, key: str) -> Path:
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            raise FileNotFoundError(f"{key}={path}: no such file")
        return p

    entries: list[SplitEntry] = []
    if isinstance(spec, Mapping):
        for split, path in spec.items():
            if split not in SPLITS:
                raise ConfigError(f"data.split_file.{split}: unknown split; use {SPLITS}")
            p = existing(path, f"data.split_file.{split}")
            if p.suffix.lower() == ".json":
                names = json.loads(p.read_text())
                if not isinstance(names, list):
                    raise ConfigError(f"{p}: expected a JSON list of names")
                entries += [SplitEntry(str(n), split) for n in names]
                continue
            for n, line, cols in rows(p):
                if n == 1 and cols and cols[0].lower() in _HEADER_NAMES:
                    continue
                if "," in line:  # name,caption (the caption may hold commas, quoted or not)
                    if '"' in line:
                        entries.append(SplitEntry(cols[0], split, ",".join(cols[1:]).strip() or None))
                    else:
                        name, _, caption = line.partition(",")
                        entries.append(SplitEntry(name.strip(), split, caption.strip() or None))
                else:  # the whole line is the name (file names may hold spaces)
                    entries.append(SplitEntry(line, split))
        return entries
    p = existing(spec, "data.split_file")
    header: list[str] | None = None
    for n, line, cols in rows(p):
        if header is None and n == 1 and cols and any(c.lower() in _HEADER_NAMES | {"split"} for c in cols):
            header = [c.lower() for c in cols]
            continue
        if header is not None:
            row = dict(zip(header, cols))
            name = next((row[h] for h in header if h in _HEADER_NAMES), "")
            split, caption = row.get("split", ""), row.get("caption") or None
        elif "," not in line and len(cols) >= 2 and split_name(cols[-1]) in SPLITS:
            name, split, caption = line.rsplit(None, 1)[0].strip(), cols[-1], None  # names may hold spaces
        else:
            if len(cols) < 2:
                raise ConfigError(f"{p}:{n}: expected '<name> <split>', got {line!r}")
            name, split, caption = cols[0], cols[1], (" ".join(cols[2:]) or None)
        split = split_name(split)
        if split not in SPLITS:
            raise ConfigError(f"{p}:{n}: unknown split {split!r}; use {SPLITS} (lines '<name> <split>')")
        entries.append(SplitEntry(name, split, caption))
    return entries


def seeded_split(ids: Sequence[str], ratios: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign ``ids`` to splits with exact counts: a seeded permutation of the sorted ids, cut at
    ``round(ratio · n)`` (halves up; at least 1 when the ratio is positive and n ≥ 3) for ``val`` and
    ``test`` (train takes the rest). The same ids and seed always
    give the same split, whatever their order.

    Raises:
        ConfigError: unknown split names, negative ratios, or ratios that do not sum to 1 (±1e-6).
    """
    unknown = set(ratios) - set(SPLITS)
    if unknown:
        raise ConfigError(f"data.prepare.split_ratios has unknown splits {sorted(unknown)}; use {SPLITS}")
    if any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise ConfigError(f"data.prepare.split_ratios={dict(ratios)}: expected non-negative ratios summing to 1")
    ordered = sorted(ids)
    rng = np.random.default_rng(seed)
    order = [ordered[i] for i in rng.permutation(len(ordered))]
    n = len(order)
    # halves round up; a split with a positive ratio gets at least one video when there are three or more
    counts = {s: int(np.floor(ratios.get(s, 0.0) * n + 0.5)) for s in ("val", "test")}
    for s in ("val", "test"):
        if ratios.get(s, 0.0) > 0 and counts[s] == 0 and n >= 3:
            counts[s] = 1
    if counts["val"] + counts["test"] > n:
        counts["test"] = n - counts["val"]
    out = {}
    for i, name in enumerate(order):
        out[name] = "val" if i < counts["val"] else "test" if i < counts["val"] + counts["test"] else "train"
    return out


def text_digest(spec: str | Mapping[str, str] | Iterable[Path] | None, base: Path | None = None) -> Any:
    """SHA-1 of small text inputs (split files, caption files, annotations): a prepare config that records
    them changes when their content does, not only their name. ``spec``: a path, a mapping of paths, or
    paths (listed relative to ``base``)."""

    def one(path) -> str:
        try:
            return hashlib.sha1(Path(os.path.expanduser(str(path))).read_bytes()).hexdigest()
        except OSError:
            return "unreadable"

    if spec is None:
        return None
    if isinstance(spec, (str, Path)):
        return one(spec)
    if isinstance(spec, Mapping):
        return {str(k): one(v) for k, v in spec.items()}
    return [[p.relative_to(base).as_posix() if base else str(p), one(p)] for p in sorted(spec)]


def shuffled_split(names: Sequence[str], seed: int = 803, train_size: float = 0.9) -> dict[str, str]:
    """The SVG code's Landscape split (``landscape/utils.py``, Hayakawa et al. 2024): the lines of the
    file list in their order, shuffled by NumPy's legacy global generator seeded with ``seed``
    (``np.random.seed(seed); np.random.shuffle(lines)``), the first ``int(n · train_size)`` train, the
    rest test. Reproduced as a :class:`numpy.random.RandomState` permutation (the same draws).

    Returns: ``{name: "train" | "test"}``.
    """
    order = np.random.RandomState(seed).permutation(len(names))
    cut = int(len(names) * train_size)
    return {names[i]: ("train" if rank < cut else "test") for rank, i in enumerate(order)}


def files_digest(paths: Iterable[Path], base: Path) -> list[list]:
    """``[relative path, size]`` of each file: the part of a prepare config that changes when the source does."""
    out = []
    for p in sorted(paths):
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        out.append([p.relative_to(base).as_posix(), size])
    return out

