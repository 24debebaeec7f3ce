"""``python -m avgen collect <folder> [--out DIR] [--sweep FILE]``: one table of many runs.

``<folder>`` is a runs folder (``runs/<name>/`` with run folders at any depth), a Hydra multirun folder
(``multirun-*/0, 1, ...``), a sweep folder (``sweep.json``, written by ``python -m avgen sweep``) or a
single run folder. A *run* is a folder holding ``.hydra/``, ``logs/metrics.csv``, ``checkpoints/`` or
``sweep_status.json``; the folders below a run (its ``evaluate/`` or ``sample/`` runs) belong to it.

For each run (:func:`read_run`):

- the overrides of its command line (``.hydra/overrides.yaml``; Hydra's own keys, ``paths.output_dir``
  and ``command`` left out, :data:`NOISE`);
- validation metrics from ``logs/metrics.csv`` (Lightning's CSVLogger), every ``val/*`` column:
  ``val/x`` is the last value logged and ``val/x (best)`` the best one, the minimum for a loss-like name
  (one containing a word of :data:`LOWER_IS_BETTER`: loss, fvd, fad, kl, fd_, desync, lsd, error) and the
  maximum otherwise;
- evaluation metrics from every ``metrics.json`` below the run (``python -m avgen evaluate``'s output):
  a metric with variants comes out as one column per variant (``av_align.official``, ``kl.softmax``, the
  names of ``configs/evaluate/*.yaml``). When several evaluations report a metric, the newest
  ``metrics.json`` (modification time) gives its value, and the ``note`` column names the folders read;
- the global step reached (the newest complete checkpoint; without one, the steps ``logs/metrics.csv``
  logged);
- a status (:func:`run_status`): ``done``, ``failed``, ``unfinished``, ``running``, ``preempted``, and for a
  sweep row whose folder does not exist yet, ``pending``.

Outputs (default: into ``<folder>``): ``results.csv`` (one row per run: ``run``, ``status``, ``step``, the
overrides that differ between runs, the metrics at full precision, ``note``) and ``results.md`` (the same
as a markdown table, numbers to 4 significant digits, the overrides every run shares listed once above it;
with a sweep's paper values a ``<metric> (paper)`` column beside each metric the sweep names). Both are
collect's own files: it replaces them when it wrote them before, and refuses files of the same name it did
not write. A broken file (a truncated CSV, an unreadable ``metrics.json``, no ``.hydra/``) marks its run in
``note``; it never stops the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# Name parts of metrics where lower is better (the best value of a validation metric is its minimum).
LOWER_IS_BETTER = ("loss", "fvd", "fad", "kl", "fd_", "desync", "lsd", "error")
# Override keys that say where a run went or how Hydra ran it, not what was run.
NOISE = ("paths.output_dir", "command")
# The variant a bare paper key means for a metric reported with variants (configs/evaluate/*_table*.yaml).
MAIN_VARIANT = {"av_align": "official", "kl": "softmax", "is": "mean", "is_video": "mean", "is_passt": "mean"}
MARKER = "<!-- written by `python -m avgen collect`; run it again to refresh -->"
FIXED = ("run", "status", "step")
_BEST = " (best)"
_PAPER = " (paper)"


@dataclass
class Run:
    """One row of the table.

    Attributes:
        name: the run's folder relative to the folder collected (a sweep row's name in a sweep folder).
        path: the run folder.
        status: done | failed | unfinished | running | preempted | pending.
        step: global step reached (optimizer steps), None when unknown.
        overrides: ``{key: value}`` of the command line, None when ``.hydra/overrides.yaml`` was not read.
        metrics: ``{column: value}``: validation (``val/x``, ``val/x (best)``) and evaluation metrics.
        paper: ``{metric key: value}`` from the sweep row matched to the run.
        row: the sweep row's name when the run was matched to one by its overrides.
        partial: ``overrides`` are only a sweep row's own (no ``.hydra/``: a row not started yet), so a key they
            lack does not make it differ from the others.
        notes: what was wrong or worth knowing (the ``note`` column).
    """

    name: str
    path: Path
    status: str = "done"
    step: int | None = None
    overrides: dict[str, str] | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)
    row: str | None = None
    partial: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    """What collect uses of a sweep file or ``sweep.json``: title, source and rows
    (``{"name", "overrides", "paper", "run_dir"?, "steps"?}``)."""

    table: str | None
    source: str | None
    rows: list[dict[str, Any]]
    file: Path


@dataclass
class Collected:
    """What :func:`collect` wrote: the files, the markdown text, whether earlier files were replaced."""

    csv_path: Path
    md_path: Path
    markdown: str
    replaced: list[Path]
    runs: list[Run]


class CollectError(RuntimeError):
    """collect cannot make a table (no run found, a sweep file it cannot read, a file it would overwrite)."""


# ------------------------------------------------------------------------------------------- finding runs
def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a run folder (``.hydra/``, ``logs/metrics.csv``, ``checkpoints/`` or
    ``sweep_status.json``)."""
    return ((folder / ".hydra").is_dir() or (folder / "logs" / "metrics.csv").is_file()
            or (folder / "checkpoints").is_dir() or (folder / "sweep_status.json").is_file())


def find_runs(folder: Path, max_depth: int = 8) -> list[Path]:
    """The run folders at or below ``folder``, in natural name order (``2`` before ``10``); the folders below a
    run are not searched (they are its evaluations), nor hidden folders or links."""
    if is_run(folder):
        return [folder]
    found: list[Path] = []
    if max_depth > 0:
        try:
            children = sorted((p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                               and not p.name.startswith(".")), key=lambda p: _natural(p.name))
        except OSError:  # a folder we may not read holds no run we could read
            children = []
        for child in children:
            found += find_runs(child, max_depth - 1)
    return found


def _natural(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


# ------------------------------------------------------------------------------------------- sweep files
def load_sweep(path: str | Path) -> Sweep:
    """A sweep file (``slurm/sweeps/<name>.yaml``) or a sweep folder's ``sweep.json``.

    Raises:
        CollectError: the file is missing, not YAML/JSON, its ``rows`` are not a list of mappings with a
            ``name``, or a row's ``overrides`` is not a list or its ``paper`` maps to something not a number.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CollectError(f"sweep file {path}: cannot read it ({type(exc).__name__}: {_first_line(exc)})") from exc
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("name") for r in rows):
        raise CollectError(f"sweep file {path}: expected a mapping with 'rows', a list of {{name, overrides, paper}}")
    for row in rows:
        if not isinstance(row.get("overrides") or [], list):
            raise CollectError(f"sweep file {path}: row {row['name']}: overrides must be a list of key=value, "
                               f"got {row['overrides']!r}")
        paper = row.get("paper") or {}
        if not isinstance(paper, dict) or not all(_number(v) is not None for v in paper.values()):
            raise CollectError(f"sweep file {path}: row {row['name']}: paper must map metric keys to numbers, "
                               f"got {paper!r}")
    return Sweep(table=data.get("table"), source=data.get("source"), rows=rows, file=path)


def _sweep_runs(folder: Path, sweep: Sweep) -> list[Run]:
    """The rows of a sweep folder, in the sweep's order; a row's folder is ``<folder>/<name>`` (so a moved
    sweep folder still reads), else the ``run_dir`` sweep.json recorded."""
    runs = []
    for row in sweep.rows:
        path = folder / str(row["name"])
        if not path.is_dir() and row.get("run_dir") and Path(row["run_dir"]).is_dir():
            path = Path(row["run_dir"])
        if path.is_dir():
            run = read_run(str(row["name"]), path, steps=row.get("steps"))
        else:
            run = Run(str(row["name"]), path, status="pending", notes=["no run folder yet"])
        if run.overrides is None:
            run.overrides = parse_overrides([str(o) for o in row.get("overrides") or []])
            run.partial = True
        run.paper = dict(row.get("paper") or {})
        runs.append(run)
    return runs


def match_rows(runs: list[Run], sweep: Sweep) -> list[str]:
    """Give each run the paper values of its sweep row: the row of the same name (the run folder's name or
    its relative path), else the row whose overrides the run's command line holds, all of them (``{run}``
    replaced by the run folder), the row with the most overrides winning; a row without overrides matches by
    name only. Returns the names of the rows no run matched."""
    used = set()
    for run in runs:
        row = next((r for r in sweep.rows if str(r["name"]) in (run.name, run.path.name)), None)
        if row is None and run.overrides is not None:
            given = {f"{k}={v}" for k, v in run.overrides.items()}
            scored = []
            for r in sweep.rows:
                wanted = [str(o).replace("{run}", str(run.path.absolute())) for o in r.get("overrides") or []]
                wanted = {f"{k}={v}" for k, v in parse_overrides(wanted, keep_noise=True).items()}
                if wanted and wanted <= given:
                    scored.append((len(wanted), r))
            best = max((n for n, _ in scored), default=0)
            tied = [r for n, r in scored if n == best]
            if len(tied) == 1:
                row = tied[0]
                run.row = str(row["name"])
            elif len(tied) > 1:
                run.notes.append(f"matches sweep rows {', '.join(str(r['name']) for r in tied)}: no paper values")
        if row is not None:
            run.paper = dict(row.get("paper") or {})
            used.add(str(row["name"]))
    return [str(r["name"]) for r in sweep.rows if str(r["name"]) not in used]


# ------------------------------------------------------------------------------------------- one run
def read_run(name: str, path: Path, *, steps: list | None = None) -> Run:
    """Everything the table shows of the run folder ``path`` (see the module docstring); never raises for
    a broken or missing file: the run's ``notes`` say what could not be read."""
    run = Run(name, path)
    run.overrides = read_overrides(path, run.notes)
    validation, csv_steps = read_validation(path / "logs" / "metrics.csv", run.notes)
    evaluation, evaluated = read_evaluations(path, run.notes)
    run.metrics = {**validation, **evaluation}
    checkpoint = _newest_checkpoint(path / "checkpoints", run.notes)
    run.step = checkpoint if checkpoint is not None else csv_steps
    run.status = run_status(path, run, has_checkpoint=checkpoint is not None, evaluated=evaluated, steps=steps)
    return run


def parse_overrides(lines: Iterable[str], *, keep_noise: bool = False) -> dict[str, str]:
    """``{key: value}`` of Hydra override strings, in order: ``+``/``++`` dropped from keys, ``~key`` (a
    deletion) as ``{key: "~"}``; without ``keep_noise``, the keys of :data:`NOISE` and every ``hydra`` key
    (``hydra.run.dir``, ``hydra/launcher``) are left out."""
    found = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        if key.startswith("~") and not sep:
            key, value = key[1:], "~"
        key = key.lstrip("+")
        if not keep_noise and (key in NOISE or key.split(".")[0].split("/")[0] == "hydra"):
            continue
        found[key] = value
    return found


def read_overrides(path: Path, notes: list[str]) -> dict[str, str] | None:
    """The overrides of ``<path>/.hydra/overrides.yaml`` (:func:`parse_overrides`), or None with a note when
    the file is missing or unreadable."""
    import yaml

    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        notes.append("no .hydra/overrides.yaml")
        return None
    try:
        lines = yaml.safe_load(file.read_text()) or []
        if not isinstance(lines, list):
            raise ValueError("not a list")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        notes.append(f".hydra/overrides.yaml unreadable ({_first_line(exc)})")
        return None
    return parse_overrides(lines)


def read_validation(file: Path, notes: list[str]) -> tuple[dict[str, float], int | None]:
    """``({"val/x": last value, "val/x (best)": best value}, steps logged)`` from a CSVLogger file.

    Best is the minimum for a name containing a word of :data:`LOWER_IS_BETTER`, the maximum otherwise. Steps
    logged: the largest ``step`` + 1 (Lightning logs a batch's metrics under the count of steps before it).
    An incomplete last line (a run still writing, or killed while writing) and lines of the wrong width are
    left out, with a note; an unreadable file gives ``({}, None)`` and a note.
    """
    if not file.is_file():
        return {}, None
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"logs/metrics.csv unreadable ({_first_line(exc)})")
        return {}, None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        notes.append("logs/metrics.csv: incomplete last line left out")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {}, None
    header, values, steps = rows[0], {}, []
    bad = [number for number, row in enumerate(rows[1:], start=2) if row and len(row) != len(header)]
    if bad:
        notes.append(f"logs/metrics.csv: line {bad[0]} (wrong number of fields) left out"
                     + (f" with {len(bad) - 1} more" if len(bad) > 1 else ""))
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        for key, cell in zip(header, row):
            number = _number(cell) if cell else None
            if number is None:
                continue
            if key == "step":
                steps.append(int(number))
            elif key.startswith("val/"):
                values.setdefault(key, []).append(number)
    found: dict[str, float] = {}
    for key, series in values.items():
        found[key] = series[-1]
        found[key + _BEST] = (min if lower_is_better(key) else max)(series)
    return found, (max(steps) + 1 if steps else None)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (its name contains a word of :data:`LOWER_IS_BETTER`)."""
    name = metric.lower().removeprefix("val/")
    return any(word in name for word in LOWER_IS_BETTER)


def read_evaluations(path: Path, notes: list[str]) -> tuple[dict[str, float | None], int]:
    """The metrics of every ``metrics.json`` below ``path`` (``evaluate``'s format: a ``metrics`` mapping),
    flattened (``{"av_align": {"official": x}}`` → ``av_align.official``); a metric several files report takes
    the newest file's value. Returns the metrics and the number of files read; unreadable files get a note."""
    files = sorted((p for p in path.rglob("metrics.json") if p.is_file()), key=lambda p: p.stat().st_mtime)
    found: dict[str, float | None] = {}
    read = []
    for file in files:
        where = file.parent.relative_to(path).as_posix()
        try:
            metrics = json.loads(file.read_text())["metrics"]
            if not isinstance(metrics, dict):
                raise TypeError("'metrics' is not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"{where}/metrics.json unreadable ({type(exc).__name__}: {_first_line(exc)})")
            continue
        found.update(flatten(metrics))
        read.append(where)
    if len(read) > 1:
        notes.append(f"metrics of {len(read)} evaluations, the newest value of each: {', '.join(read)} (oldest first)")
    return found, len(read)


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """``metrics.json``'s ``metrics`` as ``{column: number or None}``: nested variants joined with ``.``;
    values that are neither numbers nor None (texts) are left out."""
    flat: dict[str, float | None] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif value is None or _number(value) is not None:
            flat[f"{prefix}{key}"] = None if value is None else _number(value)
    return flat


def _newest_checkpoint(folder: Path, notes: list[str]) -> int | None:
    """The global step of the newest complete checkpoint in ``folder``, None without one (with a note when the
    folder holds only incomplete ones)."""
    if not folder.is_dir() or not any(p.suffix == ".ckpt" for p in folder.iterdir()):
        return None
    from avgen.checkpoint import newest_checkpoint  # Lightning: imported only for runs that have checkpoints

    newest = newest_checkpoint(folder)
    if newest is None:
        notes.append("no complete checkpoint in checkpoints/")
    return None if newest is None else newest[1]


def run_status(path: Path, run: Run, *, has_checkpoint: bool, evaluated: int, steps: list | None = None) -> str:
    """The run's status, with a note saying why where it is not plain ``done``.

    ``sweep_status.json`` (written by ``python -m avgen sweep``'s task runner) decides when it is readable:
    its ``state`` (running, done, failed, preempted). Otherwise: a checkpoint at ``trainer.max_steps`` (of
    ``.hydra/config.yaml``) is ``done``; a Python traceback or an ``ERROR`` record in the Hydra job log
    (``<run>/*.log``), or neither a checkpoint nor a ``metrics.json``, is ``failed``; a checkpoint at fewer
    steps than ``trainer.max_steps`` is ``unfinished``; else (no ``max_steps``, or an evaluation) ``done``.
    ``steps``: the sweep row's command lines, to name the step that failed.
    """
    status_file = path / "sweep_status.json"
    if status_file.is_file():
        try:
            state = json.loads(status_file.read_text())
            status = state["state"]
            if status not in ("running", "done", "failed", "preempted"):
                raise ValueError(f"unknown state {status!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            run.notes.append(f"sweep_status.json unreadable ({_first_line(exc)})")
        else:
            if status in ("failed", "preempted"):
                index = state.get("step")
                command = (steps[index][0] if isinstance(index, int) and steps and 0 <= index < len(steps)
                           and steps[index] else None)
                what = f"step {index}" + (f" ({command})" if command else "")
                run.notes.append(f"{what} exited {state.get('returncode')}" if status == "failed"
                                 else f"preempted in {what}; the requeued task resumes")
            return status
    max_steps = _max_steps(path)
    if has_checkpoint and max_steps and run.step is not None and run.step >= max_steps:
        return "done"  # a traceback in its log was one the run survived (a skipped clip's, say)
    error = _log_error(path)
    if error:
        run.notes.append(error)
        return "failed"
    if not has_checkpoint and not evaluated:
        run.notes.append("no checkpoint and no metrics.json")
        return "failed"
    if has_checkpoint and max_steps and run.step is not None:
        run.notes.append(f"stopped at step {run.step} of trainer.max_steps={max_steps}")
        return "unfinished"
    return "done"


_ERROR_RECORD = re.compile(r"\]\[(ERROR|CRITICAL)\] - (.*)")


def _log_error(path: Path) -> str | None:
    """The first error of the run's Hydra job logs (``<run>/*.log``): a traceback's last line or an
    ``ERROR``/``CRITICAL`` record, as ``<log>: <text>``; None without one."""
    for log in sorted(path.glob("*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                last = next((x for x in lines[number + 1:] if x and not x[0].isspace()), "traceback")
                return f"{log.name}: {last.strip()}"
            record = _ERROR_RECORD.search(line)
            if record:
                return f"{log.name}: {record.group(2).strip()}"
    return None


def _max_steps(path: Path) -> int | None:
    """``trainer.max_steps`` of ``.hydra/config.yaml`` when it is a positive number, else None."""
    import yaml

    try:
        config = yaml.safe_load((path / ".hydra" / "config.yaml").read_text())
        value = config["trainer"]["max_steps"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ------------------------------------------------------------------------------------------- the table
@dataclass
class Table:
    """Columns and cells of the result table; ``constant``: overrides every run shares."""

    columns: list[str]
    rows: list[dict[str, Any]]
    constant: dict[str, str]
    numeric: set[str]


def build_table(runs: list[Run]) -> Table:
    """Rows = runs; columns = ``run``, ``status``, ``step``, ``row`` (only when a run was matched to a sweep
    row by its overrides), the overrides whose value differs between runs (a key a run lacks counts as
    differing; runs whose overrides were not read are left out of the comparison, and a sweep row's own
    overrides (:attr:`Run.partial`) differ only where they hold another value), evaluation metrics (those with
    paper values first, each followed by ``<column> (paper)``), validation metrics, ``note``."""
    constant = _constant_overrides(runs)
    keys = list(dict.fromkeys(k for r in runs if r.overrides is not None for k in r.overrides))
    varying = [k for k in keys if k not in constant]

    metric_keys = list(dict.fromkeys(k for r in runs for k in r.metrics))
    paper_of: dict[str, str] = {}  # metric column -> paper key
    for key in dict.fromkeys(k for r in runs for k in r.paper):
        paper_of.setdefault(_paper_column(key, metric_keys), key)
    validation = sorted(k for k in metric_keys if k.startswith("val/") and k not in paper_of)
    others = sorted(k for k in metric_keys if not k.startswith("val/") and k not in paper_of)
    metric_columns = []
    for column in paper_of:
        metric_columns += [column, column + _PAPER]
    metric_columns += others + validation

    columns = [*FIXED, *(["row"] if any(r.row for r in runs) else []), *varying, *metric_columns, "note"]
    rows = []
    for run in runs:
        cells: dict[str, Any] = {"run": run.name, "status": run.status, "step": run.step, "row": run.row,
                                 "note": "; ".join(run.notes)}
        for key in varying:
            cells[key] = None if run.overrides is None else run.overrides.get(key)
        for column in metric_columns:
            if column.endswith(_PAPER) and column.removesuffix(_PAPER) in paper_of:
                cells[column] = run.paper.get(paper_of[column.removesuffix(_PAPER)])
            else:
                cells[column] = run.metrics.get(column)
        rows.append(cells)
    return Table(columns, rows, constant, {"step", *metric_columns})


def _constant_overrides(runs: list[Run]) -> dict[str, str]:
    """The overrides with one value in every run whose ``.hydra/`` was read (all runs with overrides when none
    was), which the sweep rows' own overrides do not contradict."""
    full = [r.overrides for r in runs if r.overrides is not None and not r.partial]
    partial = [r.overrides for r in runs if r.overrides is not None and r.partial]
    if not full:
        full, partial = partial, []
    if not full:
        return {}
    constant = {}
    for key, value in full[0].items():
        if all(o.get(key) == value for o in full) and all(o.get(key, value) == value for o in partial):
            constant[key] = value
    return constant


def _paper_column(key: str, columns: list[str]) -> str:
    """Our column for a paper key: the same name, else the metric's main variant (:data:`MAIN_VARIANT`), else
    its only variant; the key itself when we have none of these."""
    if key in columns:
        return key
    variant = f"{key}.{MAIN_VARIANT.get(key)}"
    if variant in columns:
        return variant
    variants = [c for c in columns if c.startswith(key + ".")]
    return variants[0] if len(variants) == 1 else key


def csv_text(table: Table) -> str:
    """The table as CSV: numbers at full precision, empty cells for missing values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(["" if row.get(c) is None else _full(row[c]) for c in table.columns])
    return out.getvalue()


def markdown_text(table: Table, *, title: str, source: str | None, folder: Path, unmatched: list[str]) -> str:
    """The table as markdown: a title, where the paper values come from, the runs per status, the overrides
    every run shares, the table (numbers to 4 significant digits), and the sweep rows no run matched."""
    counts: dict[str, int] = {}
    for row in table.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [MARKER, f"# {title}", ""]
    if source:
        lines.append(f"Paper values: {source}.  ")
    lines.append(f"Runs in `{folder}`: {len(table.rows)} ("
                 + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")  ")
    if table.constant:
        lines.append("Same in every run: " + ", ".join(f"`{k}={v}`" for k, v in table.constant.items()))
    lines.append("")
    columns = [c for c in table.columns if c != "note" or any(row["note"] for row in table.rows)]
    lines.append("| " + " | ".join(_cell(c) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if c in table.numeric else "---" for c in columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_cell(_short(row.get(c))) for c in columns) + " |")
    if unmatched:
        lines += ["", f"Sweep rows without a run: {', '.join(unmatched)}"]
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    """A cell for people: numbers to 4 significant digits (whole numbers from 10⁴ up), ints as they are."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def _full(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- the command
def collect(folder: str | Path, out: str | Path | None = None, sweep_file: str | Path | None = None) -> Collected:
    """Read every run of ``folder`` and write ``results.csv`` and ``results.md`` into ``out`` (default
    ``folder``). ``sweep_file``: a sweep file or ``sweep.json`` whose rows give paper values (and the title)
    to the runs they match (:func:`match_rows`); a sweep folder's own ``sweep.json`` is read without it.

    Returns:
        What was written (:class:`Collected`).

    Raises:
        CollectError: ``folder`` does not exist or holds no run; the sweep file cannot be read; ``results.csv``
            or ``results.md`` exist in ``out`` and were not written by collect.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CollectError(f"{folder} is not a folder; give a runs folder, a Hydra multirun folder or a sweep folder")
    own = load_sweep(folder / "sweep.json") if (folder / "sweep.json").is_file() else None
    given = load_sweep(sweep_file) if sweep_file else None
    if own is not None:
        runs = _sweep_runs(folder, own)
    else:
        runs = [read_run(p.relative_to(folder).as_posix() if p != folder else p.name, p) for p in find_runs(folder)]
    if not runs:
        raise CollectError(f"no runs in {folder}: looked for folders holding .hydra/, logs/metrics.csv, checkpoints/ "
                           f"or sweep_status.json, and for a sweep.json")
    unmatched = []
    if given is not None:
        unmatched = match_rows(runs, given)
        order = {str(r["name"]): i for i, r in enumerate(given.rows)}
        runs.sort(key=lambda r: order.get(r.row or r.name, order.get(r.path.name, len(order))))
    sweep = given or own
    title = (sweep.table if sweep and sweep.table else None) or f"Results of {folder.absolute().name}"
    table = build_table(runs)
    markdown = markdown_text(table, title=title, source=sweep.source if sweep else None, folder=folder,
                             unmatched=unmatched)
    out = Path(out) if out is not None else folder
    csv_path, md_path = out / "results.csv", out / "results.md"
    replaced = _check_ours(csv_path, md_path)
    from avgen.media.files import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(csv_path, csv_text(table))
    write_text_atomic(md_path, markdown)
    return Collected(csv_path, md_path, markdown, replaced, runs)


def _check_ours(csv_path: Path, md_path: Path) -> list[Path]:
    """The existing outputs collect may replace (its own); raises CollectError for a file it did not write."""
    replaced = []
    for path, ours in ((csv_path, lambda t: t.startswith(",".join(FIXED))), (md_path, lambda t: t.startswith(MARKER))):
        if path.exists():
            try:
                text = path.read_text()[:200]
            except (OSError, UnicodeDecodeError):
                text = ""
            if not ours(text):
                raise CollectError(f"{path} exists and was not written by avgen collect; move it or pass --out DIR")
            replaced.append(path)
    return replaced


def main(argv: list[str] | None = None) -> int:
    """``python -m avgen collect``: returns the exit status (1: no run found, or an error, said in one line)."""
    parser = argparse.ArgumentParser(
        prog="python -m avgen collect",
        description="Write results.csv and results.md: one row per run of a runs folder, a Hydra multirun "
                    "folder (multirun-*/0,1,...) or a sweep folder (sweep.json), with its status, step, the "
                    "overrides that vary, final and best validation metrics and evaluation metrics "
                    "(metrics.json), and the paper's values beside ours where a sweep file gives them.")
    parser.add_argument("folder", help="runs folder, Hydra multirun folder, sweep folder or one run folder")
    parser.add_argument("--out", metavar="DIR", help="where to write results.csv and results.md (default: FOLDER)")
    parser.add_argument("--sweep", metavar="FILE", help="sweep file (slurm/sweeps/*.yaml) or sweep.json whose rows "
                        "give paper values and the title; rows match runs by name, else by overrides")
    args = parser.parse_args(argv)
    try:
        result = collect(args.folder, args.out, args.sweep)
    except CollectError as exc:
        print(f"avgen collect: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output folder cannot be written
        print(f"avgen collect: cannot write the results: {exc}", file=sys.stderr)
        return 1
    print(result.markdown)
    for path in (result.csv_path, result.md_path):
        print(f"{'replaced' if path in result.replaced else 'wrote'} {path}")
    return 0
