"""``python -m avgen sweep <file>``: run the rows of a sweep file (one paper table's ablations) as separate runs.

A sweep file (``slurm/sweeps/<name>.yaml``) lists rows that are not a grid, each a set of overrides with the
paper's reported values beside it::

    table: "TempoTokens Table 3: context-window resolutions"
    source: "Yariv et al. 2024, Table 3"
    command: fit                                  # the avgen command each row runs
    base: [experiment=tempotokens_ablations]      # every row's overrides; key=??? must be given on the command line
    then:                                         # run after the row's command succeeded, in order
      - [sample, "ckpt_path={run}/checkpoints/last.ckpt", "hydra.run.dir={run}/sample"]
    rows:
      - name: res_0                               # the run folder <sweep dir>/res_0
        overrides: [model.windows.resolutions=0]
        paper: {fvd: 123.4}

``{run}`` is the row's run folder. A row's command line is ``python -m avgen <command> <base> <sweep command line
overrides> <row overrides> hydra.run.dir=<sweep dir>/<row>``. ``sweep`` checks that every row composes
(:func:`dry_run`), writes ``<sweep dir>/sweep.json`` and hands the rows to a launcher: ``local`` (one after
another here), ``sbatch`` (a job array over ``slurm/sweep.sbatch``) or ``submitit`` (``map_array``). Each array task
runs ``python -m avgen sweep --task I <sweep dir>/sweep.json`` (:func:`run_task`), which runs row I's steps as
child processes, forwards the cluster's pre-timeout signal to them and records ``<row>/sweep_status.json``.

Layer: next to :mod:`avgen.cli`, whose override checks and resolvers it runs; ``cli`` dispatches to it by name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from avgen.errors import PREEMPTED_EXIT, ConfigError
from avgen.parallel import slurm_job_id

SWEEP_FORMAT = "avgen-sweep/1"
SWEEP_JSON = "sweep.json"
STATUS_JSON = "sweep_status.json"
FILE_KEYS = ("table", "source", "command", "base", "then", "rows")
ROW_KEYS = ("name", "overrides", "paper")
ROW_NAME = re.compile(r"[A-Za-z0-9_.-]+")
UNSET = "???"
LAUNCHERS = ("local", "sbatch", "submitit")
# --slurm KEY=VALUE: the sbatch option and the submitit AutoExecutor parameter of each site setting, and its type
SITE_OPTIONS = {
    "partition": ("--partition={}", "slurm_partition", str),
    "account": ("--account={}", "slurm_account", str),
    "qos": ("--qos={}", "slurm_qos", str),
    "constraint": ("--constraint={}", "slurm_constraint", str),
    "nodes": ("--nodes={}", "nodes", int),
    "tasks_per_node": ("--ntasks-per-node={}", "tasks_per_node", int),
    "gpus_per_node": ("--gpus-per-node={}", "gpus_per_node", int),
    "cpus_per_task": ("--cpus-per-task={}", "cpus_per_task", int),
    "mem_gb": ("--mem={}", "mem_gb", float),
    "timeout_min": ("--time={}", "timeout_min", int),
}
SITE_ENV = {"partition": "AVGEN_SLURM_PARTITION", "account": "AVGEN_SLURM_ACCOUNT"}
# The pre-timeout signal comes this many seconds before the time limit (sbatch template: --signal=USR1@120)
SIGNAL_DELAY_S = 120
# After forwarding the pre-timeout signal, how long the submitit route waits for the row's child to save and exit
REQUEUE_WAIT_S = 90
POLL_S = 0.2


# ------------------------------------------------------------------------------------- the sweep file
@dataclass(frozen=True)
class Row:
    """One row of a sweep file: its run folder's name, its overrides and the paper's values (metric key → number)."""

    name: str
    overrides: tuple[str, ...] = ()
    paper: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep file (:func:`load_sweep`). ``then``: the commands run after each row's own, as argv lists
    without ``python -m avgen``."""

    path: Path
    rows: tuple[Row, ...]
    command: str = "fit"
    base: tuple[str, ...] = ()
    then: tuple[tuple[str, ...], ...] = ()
    table: str = ""
    source: str = ""

    def unset_keys(self) -> list[str]:
        """The keys ``base`` leaves ``???``: they must be given on the sweep command line."""
        return [line.partition("=")[0].lstrip("+") for line in self.base if line.partition("=")[2] == UNSET]

    def select(self, names: list[str] | None) -> Sweep:
        """The sweep with only the rows named (in the file's order); all rows for None.

        Raises:
            ConfigError: a name that is not a row of the file.
        """
        if not names:
            return self
        known = [row.name for row in self.rows]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(f"--rows {','.join(unknown)}: no such row in {self.path}; its rows are "
                              f"{', '.join(known)}")
        return replace(self, rows=tuple(row for row in self.rows if row.name in names))

    def steps(self, row: Row, run_dir: Path, extra: list[str]) -> list[list[str]]:
        """The argv of each step of ``row`` (without ``python -m avgen``): its command, then the ``then`` steps.
        ``{run}`` becomes ``run_dir``; a ``then`` step that names no run folder gets ``<run_dir>/<command>``.

        Raises:
            ConfigError: ``base`` leaves a key ``???`` that ``extra`` does not set.
        """
        given = {_key(line) for line in extra}
        missing = [key for key in self.unset_keys() if key not in given]
        if missing:
            example = " ".join(f"{key}=<value>" for key in missing)
            raise ConfigError(f"{self.path}: base leaves {', '.join(missing)} unset (???); give "
                              f"{'it' if len(missing) == 1 else 'them'} on the command line: python -m avgen sweep "
                              f"{self.path} {example}")
        base = [line for line in self.base if line.partition("=")[2] != UNSET]
        main = [self.command, *base, *extra, *row.overrides, f"hydra.run.dir={run_dir}"]
        steps, used = [main], set()
        for then in self.then:
            step = list(then)
            if not {"hydra.run.dir", "paths.output_dir"} & {_key(line) for line in step[1:]}:
                folder = step[0] if step[0] not in used else f"{step[0]}_{len(steps)}"
                used.add(step[0])
                step.append(f"hydra.run.dir={run_dir / folder}")
            steps.append(step)
        return [[arg.replace("{run}", str(run_dir)) for arg in step] for step in steps]


def _key(override: str) -> str:
    """The key an override sets (``+a.b=1`` → ``a.b``)."""
    return override.partition("=")[0].lstrip("+~")


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (format in this module's docstring).

    Returns:
        The :class:`Sweep`, ``path`` made absolute.

    Raises:
        ConfigError: one line naming the file (and row) for a missing or unreadable file, an unknown key, a row
        without a name or with a name used twice or with characters other than ``[A-Za-z0-9_.-]``, overrides that
        are not a list of ``key=value`` strings, a paper value that is not a number, an unknown command, or
        ``???`` outside ``base``.
    """
    import yaml

    path = Path(path).absolute()
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} not found; the repository's sweep files are in slurm/sweeps/") from None
    except yaml.YAMLError as exc:
        hint = "; quote an override that holds ??? in a [...] list: \"ckpt_path=???\"" if "'?'" in str(exc) else ""
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}{hint}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(FILE_KEYS)}")
    _known_keys(data, FILE_KEYS, f"{path}")
    command = data.get("command", "fit")
    _check_command(command, f"{path}: command")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: rows must be a non-empty list of {{name, overrides, paper}}")
    then = data.get("then") or []
    if not isinstance(then, list):
        raise ConfigError(f"{path}: then must be a list of commands, e.g. [[sample, \"ckpt_path={{run}}/checkpoints/"
                          f"last.ckpt\"]]")
    steps = []
    for k, step in enumerate(then):
        where = f"{path}: then[{k}]"
        if not isinstance(step, list) or not step:
            raise ConfigError(f"{where} must be a list: a command then its overrides, e.g. [evaluate, "
                              f"\"evaluate.pred_dir={{run}}/sample/samples\"]")
        _check_command(step[0], where)
        steps.append((step[0], *_overrides(step[1:], where, allow_unset=False)))
    return Sweep(path=path, rows=_rows(rows, path), command=command,
                 base=_overrides(data.get("base") or [], f"{path}: base", allow_unset=True), then=tuple(steps),
                 table=_text(data, "table", path), source=_text(data, "source", path))


def _rows(rows: list, path: Path) -> tuple[Row, ...]:
    out: list[Row] = []
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        where = f"{path}: rows[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(ROW_KEYS)}")
        _known_keys(row, ROW_KEYS, where)
        name = row.get("name")
        if name is None:
            raise ConfigError(f"{where} has no name; give it name: <letters, digits, _ . ->, its run folder's name")
        name = str(name)
        if not ROW_NAME.fullmatch(name):
            raise ConfigError(f"{where}: name {name!r} may only hold letters, digits, '_', '.' and '-' (it names the "
                              f"row's run folder)")
        if name in first:
            raise ConfigError(f"{where}: name {name} is used by rows[{first[name]}] too; each row needs its own name "
                              f"(its run folder)")
        first[name] = i
        where = f"{path}: row {name}"
        paper = row.get("paper") or {}
        if not isinstance(paper, dict):
            raise ConfigError(f"{where}: paper must map metric keys to numbers, e.g. {{fvd: 123.4}}")
        for metric, value in paper.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: paper.{metric} is {value!r}, expected a number")
        out.append(Row(name=name, overrides=_overrides(row.get("overrides") or [], where, allow_unset=False),
                       paper={str(k): float(v) for k, v in paper.items()}))
    return tuple(out)


def _overrides(lines, where: str, *, allow_unset: bool) -> tuple[str, ...]:
    if not isinstance(lines, list):
        raise ConfigError(f"{where}: overrides must be a list of key=value strings, e.g. [seed=1], not {lines!r}")
    for line in lines:
        if not isinstance(line, str) or ("=" not in line and not line.startswith("~")):
            raise ConfigError(f"{where}: {line!r} is not an override; write key=value (quote it in YAML if it holds "
                              f"': ' or braces)")
        if line.partition("=")[2] == UNSET and not allow_unset:
            raise ConfigError(f"{where}: {line} leaves a value unset; only base may hold key=??? (given on the "
                              f"sweep command line)")
    return tuple(lines)


def _known_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(unknown)}; known keys: {', '.join(known)}")


# Commands that run until stopped by hand (``app`` serves a web page): never a step of a sweep's jobs.
INTERACTIVE_COMMANDS = ("app",)


def _check_command(command, where: str) -> None:
    from avgen.cli import COMMANDS

    steps = ", ".join(c for c in COMMANDS if c not in INTERACTIVE_COMMANDS)
    if command in INTERACTIVE_COMMANDS:
        raise ConfigError(f"{where}: {command} runs until stopped by hand, so it cannot be a sweep step; choose one "
                          f"of {steps}")
    if command not in COMMANDS:
        raise ConfigError(f"{where}: {command!r} is not an avgen command; choose one of {steps}")


def _text(data: dict, key: str, path: Path) -> str:
    value = data.get(key) or ""
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key} must be a string, not {value!r}")
    return value


# ------------------------------------------------------------------------------------- dry run
@dataclass(frozen=True)
class Problem:
    """A row whose step does not compose: the row's name, the step's index (0: the row's command) and why."""

    row: str
    step: int
    command: str
    message: str

    def __str__(self) -> str:
        which = "" if self.step == 0 else f", then[{self.step - 1}]"
        return f"row {self.row} ({self.command}{which}): {self.message}"


def compose_step(step: list[str]) -> None:
    """Check and compose the config of ``python -m avgen <step>`` as the command line would, resolving every
    interpolation, without running anything (files it names, such as ``ckpt_path``, need not exist).

    Raises:
        ConfigError: one line, the reason the command line would refuse the step.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from avgen.cli import _one_line, check_overrides, config_dir, one_run_folder, register_resolvers

    _check_command(step[0], "step")
    words = [f"command={step[0]}", *step[1:]]
    register_resolvers()
    check_overrides(words)
    words = one_run_folder(words, [], words)
    run_id = os.environ.get("AVGEN_RUN_ID")  # the run-id resolver stores its value in the environment
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=words, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = cfg.hydra.run.dir  # what Hydra's run sets before the command starts
        HydraConfig.instance().set_config(cfg)
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(exc)) from exc
    finally:
        GlobalHydra.instance().clear()
        if run_id is None:
            os.environ.pop("AVGEN_RUN_ID", None)


def dry_run(sweep: Sweep, extra_overrides: list[str], sweep_dir: str | Path | None = None,
            *, out=None) -> list[Problem]:
    """Compose every step of every row (:func:`compose_step`) and print each row's command lines to ``out``.

    Args:
        sweep: the sweep file.
        extra_overrides: the overrides given on the sweep command line.
        sweep_dir: the sweep folder (``{run}`` = ``<sweep_dir>/<row>``); default :func:`default_sweep_dir`.
        out: a text stream for the command lines; None prints nothing.

    Returns:
        One :class:`Problem` for each row that does not compose (its first failing step); empty when all do.

    Raises:
        ConfigError: ``base`` leaves a key ``???`` that ``extra_overrides`` does not set.
    """
    sweep_dir = Path(sweep_dir or default_sweep_dir(sweep)).absolute()
    problems, checked = [], {}
    for row in sweep.rows:
        run_dir = str(sweep_dir / row.name)
        steps = sweep.steps(row, Path(run_dir), extra_overrides)
        if out is not None:
            print(f"row {row.name}:", file=out)
            for step in steps:
                print(f"  python -m avgen {shlex.join(step)}", file=out)
        for k, step in enumerate(steps):
            # steps that differ only in the row's folder (the then steps) compose alike: checked once
            key = tuple(arg.replace(run_dir, "{run}") for arg in step)
            if key not in checked:
                try:
                    compose_step(step)
                    checked[key] = None
                except ConfigError as exc:
                    checked[key] = str(exc).replace(run_dir, "{run}")
            if checked[key] is not None:
                problems.append(Problem(row.name, k, step[0], checked[key].replace("{run}", run_dir)))
                break
    return problems


# Overrides naming a file the rows read before they write anything: checked before a sweep is launched
CHECKPOINT_KEYS = ("ckpt_path", "init_from")


def missing_checkpoints(sweep: Sweep, extra: list[str]) -> list[str]:
    """The ``ckpt_path=``/``init_from=`` overrides of ``base``, ``extra`` (the sweep command line) and the rows that
    name a file that does not exist (relative paths: from this folder, the rows' working folder). Values holding
    ``{run}`` or an interpolation, ``null`` and ``???`` are not checked: they are written or resolved later."""
    lines = [*sweep.base, *extra, *(line for row in sweep.rows for line in row.overrides)]
    missing = []
    for line in dict.fromkeys(lines):
        key, _, value = line.partition("=")
        if (key.lstrip("+") in CHECKPOINT_KEYS and value not in ("", "null", "None", UNSET) and "{run}" not in value
                and "${" not in value and not Path(value).expanduser().exists()):
            missing.append(line)
    return missing


# ------------------------------------------------------------------------------------- the sweep folder
def default_sweep_dir(sweep: Sweep) -> Path:
    """``<runs dir>/sweeps/<file stem>-<YYYY-mm-dd_HH-MM-SS>``; runs dir: ``$AVGEN_RUNS_DIR`` or ``./runs``."""
    runs = Path(os.environ.get("AVGEN_RUNS_DIR") or "runs").absolute()
    return runs / "sweeps" / f"{sweep.path.stem}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def sweep_record(sweep: Sweep, extra: list[str], sweep_dir: Path, launcher: str) -> dict:
    """The content of ``sweep.json`` (format ``avgen-sweep/1``) for ``sweep`` run in ``sweep_dir``."""
    rows = [{"index": i, "name": row.name, "run_dir": str(sweep_dir / row.name),
             "steps": sweep.steps(row, sweep_dir / row.name, extra), "overrides": list(row.overrides),
             "paper": row.paper} for i, row in enumerate(sweep.rows)]
    return {"format": SWEEP_FORMAT, "file": str(sweep.path), "table": sweep.table, "source": sweep.source,
            "launcher": launcher, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd(),
            "overrides": list(extra), "rows": rows, "jobs": []}


def write_sweep_json(sweep: Sweep, extra: list[str], sweep_dir: str | Path, launcher: str, *,
                     overwrite: bool = False) -> Path:
    """Write ``<sweep_dir>/sweep.json`` atomically. The same sweep (file, rows and their command lines) already
    there is continued: its job ids are kept, its rows resume (``resume=auto``) and done rows are skipped.

    Args:
        overwrite: replace a different sweep in ``sweep_dir``: its ``sweep.json`` and the run folders of the rows
            this sweep runs are deleted first.

    Returns:
        The path of ``sweep.json``.

    Raises:
        ConfigError: ``sweep_dir`` holds another sweep and ``overwrite`` is false.
    """
    from avgen.media.files import write_text_atomic

    sweep_dir = Path(sweep_dir).absolute()
    path = sweep_dir / SWEEP_JSON
    record = sweep_record(sweep, extra, sweep_dir, launcher)
    if path.exists():
        old = read_sweep_json(path)
        if _identity(old) == _identity(record):
            record.update(created=old.get("created", record["created"]), jobs=old.get("jobs", []))
            print(f"avgen sweep: continuing the sweep in {sweep_dir} (done rows are skipped, the others resume)")
        elif not overwrite:
            raise ConfigError(f"{sweep_dir} holds another sweep ({old.get('file')}, rows "
                              f"{', '.join(r['name'] for r in old.get('rows', []))}, or other overrides); choose "
                              f"another --dir, or pass --overwrite to delete it and its rows' run folders")
        else:
            for row in record["rows"]:
                if Path(row["run_dir"]).exists():
                    shutil.rmtree(row["run_dir"])
                    print(f"avgen sweep: --overwrite: removed {row['run_dir']}")
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def _identity(record: dict) -> tuple:
    return record.get("file"), [(r["name"], r["run_dir"], r["steps"]) for r in record.get("rows", [])]


def read_sweep_json(path: str | Path) -> dict:
    """The content of a ``sweep.json``.

    Raises:
        ConfigError: the file is missing, not JSON or not of format ``avgen-sweep/1``.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; `python -m avgen sweep <file>` writes it into the sweep folder") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); --task takes the sweep folder's sweep.json (written by "
                          f"`python -m avgen sweep <file>`), not the sweep file") from None
    if not isinstance(record, dict) or record.get("format") != SWEEP_FORMAT:
        raise ConfigError(f"{path}: not a sweep record (format {SWEEP_FORMAT} expected)")
    return record


def queued_jobs(jobs: list[str]) -> list[str]:
    """The jobs (or array tasks) of ``jobs`` that SLURM still holds, pending, running or requeued (``squeue -j``);
    empty without ``squeue``, or when it knows none of them."""
    if not jobs or shutil.which("squeue") is None:
        return []
    try:
        done = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def refuse_queued(sweep_dir: Path) -> None:
    """Raises ConfigError when jobs recorded in ``<sweep_dir>/sweep.json`` are still queued or running: launching the
    sweep again there would run their rows a second time, at once, in the same run folders."""
    path = sweep_dir / SWEEP_JSON
    if not path.is_file():
        return
    try:
        jobs = [str(job) for job in read_sweep_json(path).get("jobs", [])]
    except ConfigError:
        return  # write_sweep_json says what is wrong with it
    queued = queued_jobs(jobs)
    if queued:
        raise ConfigError(f"{sweep_dir}: jobs of this sweep are still queued or running ({', '.join(queued)}; "
                          f"squeue -j {','.join(jobs)}); launching it again would run their rows twice in the same "
                          f"folders: wait for them to end, or scancel them first")


def _add_jobs(path: Path, jobs: list[str]) -> None:
    from avgen.media.files import write_text_atomic

    record = read_sweep_json(path)
    record["jobs"] = [*record.get("jobs", []), *jobs]
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def read_status(run_dir: str | Path) -> dict:
    """A row's ``sweep_status.json`` (empty when the row has not started)."""
    try:
        return json.loads((Path(run_dir) / STATUS_JSON).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------------------- the task runner
def exit_status(returncode: int) -> int:
    """A child's return code as an exit status: a child killed by signal N (-N) becomes 128 + N, as in a shell."""
    return 128 - returncode if returncode < 0 else returncode


class TaskRunner:
    """Runs one row's steps as child processes in order and records ``<run_dir>/sweep_status.json``.

    The children are polled (never a blocking ``wait()``), so a signal handler can forward a signal and wait for
    the child: :meth:`forward` (SIGUSR1 = the cluster's pre-timeout signal, SIGTERM) and :meth:`preempt`.

    Args:
        steps: each step's full argv (``[python, -m, avgen, fit, ...]``).
        run_dir: the row's run folder (created; holds the status file).
        cwd: the children's working folder (relative data and run paths are resolved there).
        env: the children's environment (default: this process's).
        write_status: false on the other tasks of a multi-task row: task 0 owns the status file.
    """

    def __init__(self, steps: list[list[str]], run_dir: str | Path, *, cwd: str | Path | None = None,
                 env: dict | None = None, write_status: bool = True):
        self.steps, self.run_dir, self.cwd, self.env = steps, Path(run_dir), cwd, env
        self.write_status = write_status
        self.proc: subprocess.Popen | None = None
        self.step = 0
        self.stop_signal: int | None = None  # SIGTERM/SIGINT came: no further step starts
        self._pending: list[int] = []  # signals that came while no child was running: the next one gets them
        self.status: dict = {}

    def run(self, first_step: int = 0, then_steps: bool = True) -> int:
        """Run steps ``first_step``…; the ``then`` steps (index ≥ 1) only when ``then_steps``.

        Returns:
            0 when every step succeeded; ``PREEMPTED_EXIT`` (75) when a child exited so (it saved a checkpoint and
            the job is requeued: later steps are skipped); otherwise the failing step's exit status.
        """
        previous = read_status(self.run_dir)
        self.status = {"state": "running", "step": first_step, "returncode": None,
                       "started": _now(), "finished": None, "slurm_job_id": slurm_job_id(),
                       "attempts": int(previous.get("attempts", 0)) + 1}
        last = len(self.steps) if then_steps else 1
        for k in range(first_step, last):
            self.step = k
            self._record(state="running", step=k)
            print(f"avgen sweep: {self.run_dir.name} step {k}: {shlex.join(self.steps[k])}", flush=True)
            code = self._child(self.steps[k])
            if code == PREEMPTED_EXIT:
                self._record(state="preempted", returncode=code, finished=_now())
                print(f"avgen sweep: {self.run_dir.name} step {k} was preempted (saved; it resumes when requeued)")
                return PREEMPTED_EXIT
            if code != 0:
                self._record(state="failed", returncode=code, finished=_now())
                print(f"avgen sweep: {self.run_dir.name} step {k} failed with exit status {exit_status(code)}",
                      file=sys.stderr)
                return exit_status(code)
            if self.stop_signal is not None and k + 1 < last:
                name = signal.Signals(self.stop_signal).name
                self._record(state="failed", returncode=-self.stop_signal, finished=_now())
                print(f"avgen sweep: {self.run_dir.name}: {name} received, steps {k + 1}.. not started",
                      file=sys.stderr)
                return 128 + self.stop_signal
        self._record(state="done", step=last - 1, returncode=0, finished=_now())
        return 0

    def _child(self, argv: list[str]) -> int:
        self.proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env)
        while self._pending:  # e.g. the pre-timeout signal came while Popen was starting the child
            self.proc.send_signal(self._pending.pop(0))
        try:
            while (code := self.proc.poll()) is None:
                time.sleep(POLL_S)
        except KeyboardInterrupt:  # the terminal sent Ctrl-C to the child too: let it finish saving
            self.stop_signal = signal.SIGINT
            code = _wait(self.proc)
        return code

    def forward(self, signum: int, frame=None) -> None:
        """Signal handler: pass ``signum`` to the running child (or, between children, to the next one); after
        SIGTERM or SIGINT no further step starts."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_signal = signum
        if signum == signal.SIGINT:
            # Ctrl-C reaches the child from the terminal already (same process group); a second one would cut
            # its clean-up short
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        else:
            self._pending.append(signum)

    def preempt(self, timeout_s: float = REQUEUE_WAIT_S) -> int | None:
        """The job is about to be requeued: send SIGUSR1 to the running child, wait up to ``timeout_s`` for it to
        save and exit, and record the row as preempted.

        Returns:
            The child's return code, or None when it is still running (the requeued task resumes from the newest
            complete checkpoint) or none was running.
        """
        code = None
        if self.proc is None:  # the first child is being started: it gets the signal once it is
            self._pending.append(signal.SIGUSR1)
        else:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + timeout_s
            while (code := self.proc.poll()) is None and time.monotonic() < deadline:
                time.sleep(POLL_S)
        self._record(state="preempted", returncode=code, finished=_now())
        return code

    def _record(self, **changes) -> None:
        from avgen.media.files import write_text_atomic

        self.status.update(changes)
        if self.write_status:
            write_text_atomic(self.run_dir / STATUS_JSON, json.dumps(self.status, indent=2) + "\n")


def _wait(proc: subprocess.Popen) -> int:
    while True:
        try:
            while (code := proc.poll()) is None:
                time.sleep(POLL_S)
            return code
        except KeyboardInterrupt:
            continue


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def row_runner(sweep_json: str | Path, index: int, *, env: dict | None = None,
               force: bool = False) -> tuple[TaskRunner, int] | None:
    """The :class:`TaskRunner` of row ``index`` of a ``sweep.json`` and the step to start at, or None when the
    row is done and not ``force``d (said on stdout). A failed, preempted or interrupted (still ``running``: the
    node died, or task 0 of this row has just started it) row starts again at the step it stopped in: the steps
    before it succeeded; a ``fit`` resumes its run folder's newest checkpoint.

    Raises:
        ConfigError: no such row.
    """
    record = read_sweep_json(sweep_json)
    rows = record["rows"]
    if not 0 <= index < len(rows):
        raise ConfigError(f"--task {index}: {sweep_json} has rows 0..{len(rows) - 1}")
    row = rows[index]
    run_dir = Path(row["run_dir"])
    status = read_status(run_dir)
    if status.get("state") == "done" and not force:
        print(f"avgen sweep: row {row['name']} is done already ({run_dir / STATUS_JSON}); skipped (--force re-runs "
              f"it)")
        return None
    first = 0 if force else int(status.get("step") or 0)
    if first:
        print(f"avgen sweep: row {row['name']}: steps before {first} succeeded in an earlier attempt; starting at "
              f"step {first}")
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "avgen", *step] for step in row["steps"]]
    primary = os.environ.get("SLURM_PROCID", "0") == "0"
    return TaskRunner(steps, run_dir, cwd=record.get("cwd"), env=env, write_status=primary), first


def run_task(sweep_json: str | Path, index: int, *, force: bool = False) -> int:
    """``python -m avgen sweep --task I <sweep.json>``: run row I's steps (:class:`TaskRunner`), forwarding SIGUSR1
    and SIGTERM to the running child. The ``then`` steps run only where ``SLURM_PROCID`` is unset or 0.

    Returns:
        The exit status: 0 (done, or done already), 75 (preempted: saved, requeued), or the failing step's.
    """
    found = row_runner(sweep_json, index, force=force)
    if found is None:
        return 0
    runner, first = found
    handled = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, runner.forward) for signum in handled}
    try:
        return runner.run(first, then_steps=runner.write_status)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------------------------- launchers
def launch_local(sweep_json: Path, *, force: bool = False) -> int:
    """Run the rows one after another, each through the task runner in a child process; a failed row does not
    stop the others. Prints a summary table.

    Returns:
        0 when every row is done, 1 otherwise (130 after Ctrl-C).
    """
    record = read_sweep_json(sweep_json)
    interrupted = False
    for row in record["rows"]:
        argv = [sys.executable, "-m", "avgen", "sweep", "--task", str(row["index"]), str(sweep_json)]
        proc = subprocess.Popen(argv + (["--force"] if force else []), cwd=record.get("cwd"))
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            _wait(proc)
            interrupted = True
            break
    states = print_summary(record)
    if interrupted:
        return 130
    return 0 if all(state == "done" for state in states) else 1


def print_summary(record: dict) -> list[str]:
    """Print one line per row (name, state, the command it ran last or stopped in, its return code, run folder);
    returns the rows' states."""
    lines, states = [("row", "state", "command", "returncode", "run folder")], []
    for row in record["rows"]:
        status = read_status(row["run_dir"])
        states.append(status.get("state", "not run"))
        at = status.get("step")
        command = (row["steps"][at][0] if isinstance(at, int) and 0 <= at < len(row["steps"]) and row["steps"][at]
                   else "")
        lines.append((row["name"], states[-1], command, str(status.get("returncode", "")), row["run_dir"]))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for line in lines:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)) + "  " + line[4])
    failed = [row["name"] for row, state in zip(record["rows"], states) if state != "done"]
    print(f"avgen sweep: {len(states) - len(failed)} of {len(states)} rows done"
          + (f"; not done: {', '.join(failed)}" if failed else ""))
    return states


def site_options(pairs: list[str]) -> dict:
    """``--slurm KEY=VALUE`` pairs as typed values (keys in :data:`SITE_OPTIONS`); partition and account default
    to ``$AVGEN_SLURM_PARTITION`` / ``$AVGEN_SLURM_ACCOUNT``.

    Raises:
        ConfigError: an unknown key, a pair without ``=``, a value of the wrong type.
    """
    options = {key: os.environ[env] for key, env in SITE_ENV.items() if os.environ.get(env)}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SITE_OPTIONS:
            raise ConfigError(f"--slurm {pair}: expected KEY=VALUE with KEY one of {', '.join(SITE_OPTIONS)}")
        kind = SITE_OPTIONS[key][2]
        try:
            options[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--slurm {pair}: {key} takes {'an integer' if kind is int else 'a number'}") from None
    return options


def slurm_dir() -> Path:
    """The repository's ``slurm/`` folder (beside the ``avgen`` package)."""
    import avgen

    return Path(avgen.__file__).resolve().parent.parent / "slurm"


def sbatch_template() -> Path:
    """``slurm/sweep.sbatch``, the array job each task of which runs one row.

    Raises:
        ConfigError: the template is missing (avgen installed without its repository).
    """
    template = slurm_dir() / "sweep.sbatch"
    if not template.is_file():
        raise ConfigError(f"{template} not found: the sbatch templates come with the avgen repository, not the "
                          f"installed package; run from a clone of the repository, or use --launcher submitit")
    return template


def sbatch_command(sweep_json: Path, options: dict, parallelism: int | None = None) -> list[str]:
    """``sbatch --parsable --array=0-<N-1>[%P] --job-name=avgen-<stem> --output=... --error=... <site options>
    slurm/sweep.sbatch <sweep.json>`` for a sweep folder (logs in ``<sweep dir>/logs/<array job>_<task>.out``).

    Raises:
        ConfigError: the template is missing (avgen installed without its repository).
    """
    template = sbatch_template()
    record = read_sweep_json(sweep_json)
    sweep_dir = sweep_json.parent
    array = f"0-{len(record['rows']) - 1}" + (f"%{parallelism}" if parallelism else "")
    site = []
    for key, value in options.items():
        if key == "mem_gb":
            value = f"{int(value)}G" if float(value).is_integer() else f"{round(value * 1024)}M"
        site.append(SITE_OPTIONS[key][0].format(value))
    stem = Path(record["file"]).stem
    return ["sbatch", "--parsable", f"--array={array}", f"--job-name=avgen-{stem}",
            f"--output={sweep_dir / 'logs' / '%A_%a.out'}", f"--error={sweep_dir / 'logs' / '%A_%a.err'}", *site,
            str(template), str(sweep_json)]


def launch_sbatch(sweep_json: Path, options: dict, parallelism: int | None = None) -> int:
    """Submit the sweep as one SLURM job array (:func:`sbatch_command`); records the job id in ``sweep.json``.

    Returns:
        0 when submitted, sbatch's exit status otherwise.
    """
    command = sbatch_command(sweep_json, options, parallelism)
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch not found on PATH: run on a SLURM login node, or use --launcher local")
    (sweep_json.parent / "logs").mkdir(parents=True, exist_ok=True)
    print(f"avgen sweep: {shlex.join(command)}")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"avgen sweep: sbatch failed (exit status {done.returncode}): {done.stderr.strip()}", file=sys.stderr)
        return done.returncode
    job = done.stdout.strip().split(";")[0]
    _add_jobs(sweep_json, [job])
    print(f"avgen sweep: submitted job array {job} ({len(read_sweep_json(sweep_json)['rows'])} rows)\n"
          f"  watch it:   squeue -j {job}\n"
          f"  logs:       {sweep_json.parent / 'logs'}\n"
          f"  the table:  python -m avgen collect {sweep_json.parent}")
    return 0


class SweepTask:
    """The submitit job of one row: ``SweepTask(sweep_json)(i)`` runs row ``i`` in this process (its children get
    ``AVGEN_REQUEUE=submitit``: the fit callback only saves, submitit requeues). Picklable.

    On the pre-timeout signal submitit calls :meth:`checkpoint`, which makes the running child save
    (:meth:`TaskRunner.preempt`) and returns the same call for submitit to requeue.
    """

    def __init__(self, sweep_json: str | Path):
        self.sweep_json = str(sweep_json)
        self._runner: TaskRunner | None = None

    def __getstate__(self) -> dict:
        return {"sweep_json": self.sweep_json}

    def __setstate__(self, state: dict) -> None:
        self.sweep_json, self._runner = state["sweep_json"], None

    def __call__(self, index: int) -> dict:
        """Run row ``index``.

        Returns:
            The row's final ``sweep_status.json`` content.

        Raises:
            RuntimeError: a step failed, or the row was preempted without submitit's requeue signal (resubmit the
            sweep to continue it).
        """
        found = row_runner(self.sweep_json, index, env={**os.environ, "AVGEN_REQUEUE": "submitit"})
        row = read_sweep_json(self.sweep_json)["rows"][index]
        if found is None:
            return read_status(row["run_dir"])
        self._runner, first = found
        code = self._runner.run(first, then_steps=self._runner.write_status)
        if code != 0:
            raise RuntimeError(f"sweep row {row['name']} stopped at step {self._runner.step} with exit status {code} "
                               f"({self._runner.status.get('state')}); its log is in {Path(self.sweep_json).parent}"
                               f"/submitit; resubmitting the sweep with --dir continues it")
        return dict(self._runner.status)

    def checkpoint(self, index: int):
        """submitit's pre-timeout hook: the running child saves and exits (bounded wait), then the same row is
        requeued.

        Returns:
            ``submitit.helpers.DelayedSubmission(self, index)``.
        """
        import submitit

        if self._runner is not None:
            self._runner.preempt(REQUEUE_WAIT_S)
        return submitit.helpers.DelayedSubmission(SweepTask(self.sweep_json), index)


def _require_timeout(options: dict) -> None:
    if "timeout_min" not in options:
        raise ConfigError("--launcher submitit needs --slurm timeout_min=<minutes>: submitit always sets a time limit "
                          "(5 minutes on SLURM, 2 locally, unless given)")


def launch_submitit(sweep_json: Path, options: dict, parallelism: int | None = None, *,
                    cluster: str | None = None) -> int:
    """Submit one submitit job per row (``map_array`` of :class:`SweepTask`) from ``<sweep dir>/submitit``;
    records the job ids in ``sweep.json``.

    Args:
        cluster: submitit's executor (``slurm``, ``local``, ``debug``); None: SLURM where ``sbatch`` is found.

    Returns:
        0 (submitted).

    Raises:
        ConfigError: submitit is not installed, or ``timeout_min`` is not among ``options``.
    """
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher submitit needs submitit: pip install 'avgen[slurm]'") from None
    _require_timeout(options)
    record = read_sweep_json(sweep_json)
    executor = submitit.AutoExecutor(folder=sweep_json.parent / "submitit", cluster=cluster)
    parameters = {SITE_OPTIONS[key][1]: value for key, value in options.items()}
    if parallelism:
        parameters["slurm_array_parallelism"] = parallelism
    # submitit's pre-timeout signal is USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise; SLURM sends it to every
    # process of the job step, the row's fit included, and avgen's fit saves on USR1 (USR2 would kill it)
    executor.update_parameters(name=f"avgen-{Path(record['file']).stem}", slurm_signal_delay_s=SIGNAL_DELAY_S,
                               slurm_additional_parameters={"signal": f"USR1@{SIGNAL_DELAY_S}"},
                               slurm_setup=["export SUBMITIT_PREEMPT_SIGNAL=USR1"], **parameters)
    jobs = executor.map_array(SweepTask(sweep_json), [row["index"] for row in record["rows"]])
    ids = [str(job.job_id) for job in jobs]
    _add_jobs(sweep_json, ids)
    array = ids[0].split("_")[0] if ids else ""
    print(f"avgen sweep: submitted {len(ids)} rows through submitit ({executor.cluster}): {', '.join(ids)}\n"
          + (f"  watch it:   squeue -j {array}\n" if executor.cluster == "slurm" else "")
          + f"  logs:       {sweep_json.parent / 'submitit'}\n"
          f"  the table:  python -m avgen collect {sweep_json.parent}")
    return 0


# ------------------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m avgen sweep",
        description="Run the rows of a sweep file (slurm/sweeps/*.yaml) as separate runs in one sweep folder, "
                    "then `python -m avgen collect <sweep dir>` for the table.")
    p.add_argument("file", help="the sweep file (with --task: the sweep folder's sweep.json)")
    p.add_argument("overrides", nargs="*", help="overrides every row gets (after base, before the row's own); "
                                                 "required for the keys base leaves ???")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: one row after another here; sbatch: a SLURM job array over slurm/sweep.sbatch; "
                        "submitit: submitit's map_array (default: local)")
    p.add_argument("--dir", type=Path, help="the sweep folder (default <runs dir>/sweeps/<file stem>-<time>); "
                                            "the same sweep there is continued")
    p.add_argument("--rows", help="run only these rows: name,name,...")
    p.add_argument("--dry-run", action="store_true", help="compose every row's commands and print them; run nothing")
    p.add_argument("--parallelism", type=int, help="sbatch/submitit: at most N rows at once")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help=f"site options for sbatch/submitit: {', '.join(SITE_OPTIONS)} (partition and account "
                        f"default to $AVGEN_SLURM_PARTITION, $AVGEN_SLURM_ACCOUNT)")
    p.add_argument("--overwrite", action="store_true", help="replace another sweep in --dir (deletes its rows' runs)")
    p.add_argument("--task", type=int, metavar="I", help="run row I of the sweep.json given (array tasks do this)")
    p.add_argument("--force", action="store_true", help="--task and the local launcher: re-run rows that are done")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m avgen sweep ...``; returns the exit status (1 for a sweep that does not compose or a failed
    row, 75 for a preempted task)."""
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.task is not None:
            return run_task(Path(args.file), args.task, force=args.force)
        if args.launcher == "local" and (args.parallelism or args.slurm):
            raise ConfigError("--parallelism and --slurm are for --launcher sbatch or submitit; local runs the rows "
                              "one after another")
        if args.force and args.launcher != "local":
            raise ConfigError("--force is for --task and --launcher local; array tasks skip done rows (delete a "
                              "row's sweep_status.json to re-run it)")
        options = site_options(args.slurm)
        if args.launcher == "sbatch":
            sbatch_template()
        if args.launcher == "submitit":
            _require_timeout(options)
        names = [name.strip() for name in (args.rows or "").split(",") if name.strip()]
        sweep = load_sweep(args.file).select(names or None)
        sweep_dir = (args.dir or default_sweep_dir(sweep)).absolute()
        if sweep_dir.exists() and not sweep_dir.is_dir():
            raise ConfigError(f"--dir {sweep_dir} is a file, not a folder; give the sweep folder (it is created when "
                              f"missing)")
        problems = dry_run(sweep, args.overrides, sweep_dir, out=sys.stdout if args.dry_run else None)
        for problem in problems:
            print(f"avgen sweep: {problem}", file=sys.stderr)
        if problems:
            print(f"avgen sweep: {len(problems)} of {len(sweep.rows)} rows do not compose; nothing was run",
                  file=sys.stderr)
            return 1
        if args.dry_run:
            print(f"avgen sweep: all {len(sweep.rows)} rows compose (dry run: nothing was run)")
            return 0
        missing = missing_checkpoints(sweep, args.overrides)
        if missing:
            raise ConfigError(f"{', '.join(missing)}: no such file (from {os.getcwd()}); every row would fail on it. "
                              f"Give the path of an existing checkpoint; nothing was run")
        refuse_queued(sweep_dir)
        sweep_json = write_sweep_json(sweep, args.overrides, sweep_dir, args.launcher, overwrite=args.overwrite)
        print(f"avgen sweep: {len(sweep.rows)} rows in {sweep_dir}")
        if args.launcher == "local":
            return launch_local(sweep_json, force=args.force)
        launch = launch_sbatch if args.launcher == "sbatch" else launch_submitit
        return launch(sweep_json, options, args.parallelism)
    except ConfigError as exc:
        print(f"avgen sweep: error: {exc}", file=sys.stderr)
        return 1
