"""``python -m avgen sweep``: sweep files, the dry run, sweep.json, the task runner (signals, exit statuses, status
file) and the three launchers (local end to end on the tiny test model; sbatch with a fake ``sbatch``; submitit's
local executor)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from avgen import sweeps
from avgen.errors import PREEMPTED_EXIT, ConfigError
from avgen.sweeps import Problem, Row, dry_run, load_sweep, read_status, run_task, write_sweep_json
from tests.conftest import REPO, TEST_CONFIGS

TINY_SWEEP = REPO / "tests" / "sweeps" / "tiny_fit.yaml"
# the repository's sweep files take 1.5-4 s each to compose every row (20 s for the eight of issue 20): slow
SWEEP_FILES = [pytest.param(path, marks=pytest.mark.slow)
               for path in sorted((REPO / "slurm" / "sweeps").glob("*.yaml"))] + [pytest.param(TINY_SWEEP)]


def _write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------- the sweep file
@pytest.mark.parametrize("text, message", [
    ("rows: [{name: a}]\ntabel: x\n", "{f}: unknown key tabel; known keys: table, source, command, base, then, rows"),
    ("rows: [{name: a, overides: [seed=1]}]\n",
     "{f}: rows[0]: unknown key overides; known keys: name, overrides, paper"),
    ("rows: [{name: a}, {overrides: [seed=1]}]\n",
     "{f}: rows[1] has no name; give it name: <letters, digits, _ . ->, its run folder's name"),
    ("rows: [{name: a}, {name: b}, {name: a}]\n",
     "{f}: rows[2]: name a is used by rows[0] too; each row needs its own name (its run folder)"),
    ("rows: [{name: a/b}]\n",
     "{f}: rows[0]: name 'a/b' may only hold letters, digits, '_', '.' and '-' (it names the row's run folder)"),
    ("rows: [{name: a, overrides: seed=1}]\n",
     "{f}: row a: overrides must be a list of key=value strings, e.g. [seed=1], not 'seed=1'"),
    ("rows: [{name: a, overrides: [seed]}]\n",
     "{f}: row a: 'seed' is not an override; write key=value (quote it in YAML if it holds ': ' or braces)"),
    ("rows: [{name: a, paper: {fvd: high}}]\n", "{f}: row a: paper.fvd is 'high', expected a number"),
    ("rows: [{name: a, paper: {fvd: true}}]\n", "{f}: row a: paper.fvd is True, expected a number"),
    ("rows: [{name: a, overrides: [\"ckpt_path=???\"]}]\n",
     "{f}: row a: ckpt_path=??? leaves a value unset; only base may hold key=??? (given on the sweep command line)"),
    ("command: train\nrows: [{name: a}]\n",
     "{f}: command: 'train' is not an avgen command; choose one of fit, validate, test, sample, evaluate, export, "
     "prepare, filter, concat_test, cache, pretrain-twins"),
    ("then: [[app, \"ckpt_path={run}/checkpoints/last.ckpt\"]]\nrows: [{name: a}]\n",
     "{f}: then[0]: app runs until stopped by hand, so it cannot be a sweep step; choose one of fit, validate, test, "
     "sample, evaluate, export, prepare, filter, concat_test, cache, pretrain-twins"),
    ("then: [sample]\nrows: [{name: a}]\n",
     "{f}: then[0] must be a list: a command then its overrides, e.g. [evaluate, "
     "\"evaluate.pred_dir={{run}}/sample/samples\"]"),
    ("rows: []\n", "{f}: rows must be a non-empty list of {{name, overrides, paper}}"),
    ("- a\n", "{f}: expected a mapping with keys table, source, command, base, then, rows"),
    ("rows: [{name: a\n", None),
])
def test_sweep_file_errors_are_one_line_naming_file_and_row(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    if message is None:  # YAML's own message, on one line
        assert str(caught.value).startswith(f"{path}: not valid YAML: ") and "\n" not in str(caught.value)
    else:
        assert str(caught.value) == message.format(f=path)
    with pytest.raises(ConfigError, match=f"sweep file {tmp_path / 'none.yaml'} not found"):
        load_sweep(tmp_path / "none.yaml")


def test_run_folder_and_unset_base_keys(tmp_path):
    path = _write(tmp_path, "command: sample\nbase: [experiment=joint_cmcpe, \"ckpt_path=???\", sample.n=2]\n"
                            "then: [[evaluate, \"evaluate.pred_dir={run}/sample/samples\"], [evaluate, x=1]]\n"
                            "rows:\n  - {name: g1, overrides: [sample.gamma=1, \"+note={run}/n\"], paper: {fvd: 5}}\n")
    sweep = load_sweep(path)
    row = sweep.rows[0]
    assert row == Row("g1", ("sample.gamma=1", "+note={run}/n"), {"fvd": 5.0}) and sweep.unset_keys() == ["ckpt_path"]
    with pytest.raises(ConfigError) as caught:
        sweep.steps(row, tmp_path / "g1", ["seed=3"])
    assert str(caught.value) == (f"{path}: base leaves ckpt_path unset (???); give it on the command line: python -m "
                                 f"avgen sweep {path} ckpt_path=<value>")
    run = tmp_path / "sw" / "g1"
    assert sweep.steps(row, run, ["ckpt_path=/c/last.ckpt"]) == [
        ["sample", "experiment=joint_cmcpe", "sample.n=2", "ckpt_path=/c/last.ckpt", "sample.gamma=1",
         f"+note={run}/n", f"hydra.run.dir={run}"],
        ["evaluate", f"evaluate.pred_dir={run}/sample/samples", f"hydra.run.dir={run}/evaluate"],
        ["evaluate", "x=1", f"hydra.run.dir={run}/evaluate_2"]]
    with pytest.raises(ConfigError, match=r"--rows g2: no such row in .*; its rows are g1"):
        sweep.select(["g2"])


# ------------------------------------------------------------------------------------- dry run
def test_dry_run_reports_the_row_that_does_not_compose(tmp_path):
    path = _write(tmp_path, "base: [model=tiny_test, scale=tiny, \"hydra.searchpath=???\"]\n"
                            "then: [[sample, \"ckpt_path={run}/checkpoints/last.ckpt\", sample.n=2]]\n"
                            "rows:\n  - {name: good, overrides: [model.hidden=4]}\n"
                            "  - {name: typo, overrides: [export.dirr=x]}\n")
    sweep = load_sweep(path)
    extra = [f"hydra.searchpath=[file://{TEST_CONFIGS}]"]
    # the good rows' then step names a checkpoint that does not exist yet: it composes all the same
    problems = dry_run(sweep, extra, tmp_path / "sw")
    assert not (tmp_path / "sw").exists()
    assert problems == [Problem("typo", 0, "fit", "unknown key export.dirr; known keys of export: dir, ema, "
                                                  "evaluations, include_frozen, overwrite; did you mean dir?")]
    bad_then = replace(sweep, rows=sweep.rows[:1], then=(("sample", "sample.nn=2"),))
    assert [str(p) for p in dry_run(bad_then, extra, tmp_path / "sw")] == [
        "row good (sample, then[0]): unknown key sample.nn; known keys of sample: audio, batch_size, "
        "cross_modal_guidance, device, eta, gamma, guidance, guidance_audio, guidance_text, guidance_video, n, "
        "negative_prompt, overwrite, prompt, saliency, sampler, seed, steps, video; did you mean n?"]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda path: path.name)
def test_every_sweep_file_dry_runs_clean(tmp_path, path):
    """Every row of every sweep file in the repository composes, every step (the keys a file leaves ??? get a
    stand-in value: the files they name need not exist for composition)."""
    stand_ins = {"ckpt_path": str(tmp_path / "fit" / "checkpoints" / "last.ckpt"),
                 "hydra.searchpath": f"[file://{TEST_CONFIGS}]", "data.root": str(tmp_path / "shards")}
    sweep = load_sweep(path)
    unknown = [key for key in sweep.unset_keys() if key not in stand_ins]
    assert not unknown, f"{path.name} leaves {unknown} unset: add a stand-in value to this test"
    extra = [f"{key}={stand_ins[key]}" for key in sweep.unset_keys()]
    assert [str(p) for p in dry_run(sweep, extra, tmp_path / "sw")] == []


def test_dry_run_command_prints_the_command_lines_and_fails_on_a_bad_row(tmp_path, capsys):
    searchpath = f"hydra.searchpath=[file://{TEST_CONFIGS}]"
    assert sweeps.main([str(TINY_SWEEP), "--dry-run", searchpath, "data.root=/d", "--rows", "hidden_8",
                        "--dir", str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "sw" / "hidden_8"
    assert out.splitlines() == [
        "row hidden_8:",
        f"  python -m avgen fit model=tiny_test scale=tiny data.auto_prepare=false trainer.max_steps=2 "
        f"trainer.check_val_every_n_epoch=100 model.record_dir={run}/record '{searchpath}' data.root=/d "
        f"model.hidden=8 seed=2 hydra.run.dir={run}",
        "avgen sweep: all 1 rows compose (dry run: nothing was run)"]
    assert not (tmp_path / "sw").exists()
    assert sweeps.main([str(TINY_SWEEP), "--dry-run", searchpath, "data.root=/d", "export.dirr=3",
                        "--rows", "hidden_4"]) == 1
    err = capsys.readouterr().err
    assert "avgen sweep: row hidden_4 (fit): unknown key export.dirr;" in err
    assert "avgen sweep: 1 of 1 rows do not compose; nothing was run" in err
    assert sweeps.main([str(TINY_SWEEP), "--dry-run", searchpath]) == 1
    assert "base leaves data.root unset (???)" in capsys.readouterr().err


def test_a_checkpoint_that_is_not_there_stops_the_sweep_before_any_row_runs(tmp_path, monkeypatch, capsys):
    """svg_table1_gamma.yaml samples ``ckpt_path=`` given on the command line: a wrong path would fail every row on
    the cluster; the sweep refuses it before writing anything (a dry run still prints the rows)."""
    monkeypatch.chdir(tmp_path)
    sweep = _write(tmp_path, "command: sample\nbase: [\"ckpt_path=???\"]\nthen: [[evaluate, "
                             "\"evaluate.pred_dir={run}/samples\"]]\nrows:\n"
                             "  - {name: a, overrides: [init_from=w.ckpt]}\n"
                             "  - {name: b, overrides: [\"init_from={run}/x.ckpt\", init_from=null]}\n")
    assert sweeps.missing_checkpoints(load_sweep(sweep), ["ckpt_path=c.ckpt"]) == ["ckpt_path=c.ckpt",
                                                                                 "init_from=w.ckpt"]
    (tmp_path / "w.ckpt").write_bytes(b"")
    d = tmp_path / "sw"
    assert sweeps.main([str(sweep), "ckpt_path=c.ckpt", "--dir", str(d)]) == 1
    assert capsys.readouterr().err == (f"avgen sweep: error: ckpt_path=c.ckpt: no such file (from {tmp_path}); every "
                                       f"row would fail on it. Give the path of an existing checkpoint; nothing was "
                                       f"run\n")
    assert not d.exists()
    assert sweeps.main([str(sweep), "ckpt_path=c.ckpt", "--dir", str(d), "--dry-run"]) == 0
    assert sweeps.missing_checkpoints(load_sweep(sweep), ["ckpt_path=w.ckpt"]) == []


def test_command_line_slips_are_one_line_errors(tmp_path, capsys):
    """--dir naming a file, --task given the sweep file instead of its sweep.json: one line, no traceback; a
    trailing comma in --rows is not a row."""
    searchpath = f"hydra.searchpath=[file://{TEST_CONFIGS}]"
    assert sweeps.main([str(TINY_SWEEP), searchpath, "data.root=/d", "--dir", str(TINY_SWEEP)]) == 1
    assert capsys.readouterr().err == (f"avgen sweep: error: --dir {TINY_SWEEP} is a file, not a folder; give the "
                                       f"sweep folder (it is created when missing)\n")
    assert sweeps.main(["--task", "0", str(TINY_SWEEP)]) == 1
    assert capsys.readouterr().err.endswith("; --task takes the sweep folder's sweep.json (written by `python -m "
                                            "avgen sweep <file>`), not the sweep file\n")
    assert sweeps.main([str(TINY_SWEEP), searchpath, "data.root=/d", "--rows", "hidden_8,", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "avgen sweep: all 1 rows compose (dry run: nothing was run)"


# ------------------------------------------------------------------------------------- sweep.json
def test_sweep_json_is_continued_for_the_same_sweep_and_refused_for_another(tmp_path, capsys):
    sweep = load_sweep(TINY_SWEEP)
    extra = ["hydra.searchpath=[file:///c]", "data.root=/d"]
    d = tmp_path / "sw"
    path = write_sweep_json(sweep, extra, d, "local")
    record = json.loads(path.read_text())
    assert record["format"] == "avgen-sweep/1" and record["file"] == str(TINY_SWEEP)
    assert record["table"] == "tiny test sweep" and record["launcher"] == "local" and record["jobs"] == []
    assert [(r["index"], r["name"], r["run_dir"]) for r in record["rows"]] == [
        (0, "hidden_4", str(d / "hidden_4")), (1, "hidden_8", str(d / "hidden_8")), (2, "no_data", str(d / "no_data"))]
    assert record["rows"][0]["paper"] == {"loss": 0.5}
    assert record["rows"][1]["overrides"] == ["model.hidden=8", "seed=2"]
    assert record["rows"][2]["steps"][0][-2:] == [f"data.root={d}/no_data/no_shards", f"hydra.run.dir={d}/no_data"]
    record["jobs"] = ["17"]
    path.write_text(json.dumps(record))
    write_sweep_json(sweep, extra, d, "sbatch")  # the same sweep: continued, its job ids kept
    assert json.loads(path.read_text())["jobs"] == ["17"]
    assert f"continuing the sweep in {d}" in capsys.readouterr().out
    (d / "hidden_4").mkdir()
    (d / "hidden_4" / "mine.txt").write_text("x")
    with pytest.raises(ConfigError, match=rf"{d} holds another sweep \({TINY_SWEEP}, rows hidden_4, hidden_8, "
                                          r"no_data, or other overrides\); choose another --dir, or pass --overwrite"):
        write_sweep_json(sweep, [*extra, "seed=5"], d, "local")
    assert (d / "hidden_4" / "mine.txt").exists()
    write_sweep_json(sweep, [*extra, "seed=5"], d, "local", overwrite=True)
    assert not (d / "hidden_4").exists() and json.loads(path.read_text())["overrides"][-1] == "seed=5"


# ------------------------------------------------------------------------------------- the task runner
FAKE_PYTHON = """#!/bin/bash
# stands in for `python -m avgen <step>`: $3 is the step's command word
case "$3" in
  save_on_usr1)  # a fit that saves and exits 75 on SIGUSR1; it asks its parent (the task) to be signalled first,
    # once the parent holds its Popen object
    echo "$AVGEN_REQUEUE" > "$4/env"; trap 'echo saved > "$4/saved"; exit 75' USR1; sleep 0.3; kill -USR1 $PPID
    while true; do sleep 0.05; done ;;
  exit) echo "$3 $4" >> "$(dirname "$0")/calls"; exit "$4" ;;
esac
"""


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    """``sys.executable`` replaced by a shell script (:data:`FAKE_PYTHON`); returns the file its calls go to."""
    path = tmp_path / "bin" / "python"
    path.parent.mkdir()
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(path))
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    return path.parent / "calls"


def _sweep_json(tmp_path: Path, *steps: list[str]) -> Path:
    d = tmp_path / "sw"
    record = {"format": "avgen-sweep/1", "file": str(tmp_path / "t.yaml"), "cwd": str(tmp_path), "jobs": [],
              "rows": [{"index": 0, "name": "a", "run_dir": str(d / "a"), "steps": [list(s) for s in steps]}]}
    d.mkdir(parents=True, exist_ok=True)
    (d / "sweep.json").write_text(json.dumps(record))
    return d / "sweep.json"


def test_task_forwards_sigusr1_and_exits_75_without_the_then_steps(tmp_path, fake_python):
    run = tmp_path / "sw" / "a"
    path = _sweep_json(tmp_path, ["save_on_usr1", str(run)], ["exit", "0"])
    before = signal.getsignal(signal.SIGUSR1)
    assert run_task(path, 0) == PREEMPTED_EXIT
    assert signal.getsignal(signal.SIGUSR1) is before  # the handler is the runner's only while it runs
    assert (run / "saved").read_text() == "saved\n" and not fake_python.exists()  # then step skipped
    status = read_status(run)
    assert {k: status[k] for k in ("state", "step", "returncode", "attempts")} == {
        "state": "preempted", "step": 0, "returncode": 75, "attempts": 1}
    assert (run / "env").read_text() == "\n"  # AVGEN_REQUEUE is the submitit route's


def test_task_exit_status_resume_at_the_failed_step_and_done_rows(tmp_path, fake_python, monkeypatch, capsys):
    path = _sweep_json(tmp_path, ["exit", "0"], ["exit", "3"], ["exit", "0"])
    run = tmp_path / "sw" / "a"
    assert run_task(path, 0) == 3
    assert fake_python.read_text() == "exit 0\nexit 3\n"
    assert {k: read_status(run)[k] for k in ("state", "step", "returncode")} == {
        "state": "failed", "step": 1, "returncode": 3}
    record = json.loads(path.read_text())
    record["rows"][0]["steps"][1] = ["exit", "0"]  # fixed: the task starts again at the step that failed
    path.write_text(json.dumps(record))
    fake_python.unlink()
    assert run_task(path, 0) == 0
    assert fake_python.read_text() == "exit 0\nexit 0\n"
    assert {k: read_status(run)[k] for k in ("state", "step", "returncode", "attempts")} == {
        "state": "done", "step": 2, "returncode": 0, "attempts": 2}
    assert "starting at step 1" in capsys.readouterr().out
    assert run_task(path, 0) == 0 and fake_python.read_text() == "exit 0\nexit 0\n"  # done: skipped
    assert f"row a is done already ({run / 'sweep_status.json'}); skipped" in capsys.readouterr().out
    assert run_task(path, 0, force=True) == 0 and fake_python.read_text().count("\n") == 5
    # a task that died in step 2 (still "running"): its requeued task starts there
    (run / "sweep_status.json").write_text(json.dumps({**read_status(run), "state": "running", "step": 2}))
    assert run_task(path, 0) == 0 and fake_python.read_text().count("\n") == 6
    # another task of a multi-task row: the row's command only, the status is task 0's
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert run_task(path, 0, force=True) == 0 and fake_python.read_text().count("\n") == 7
    assert read_status(run)["attempts"] == 4
    with pytest.raises(ConfigError, match=r"--task 1: .*sweep.json has rows 0..0"):
        run_task(path, 1)


def test_submitit_checkpoint_saves_the_child_and_requeues_the_same_row(tmp_path, fake_python):
    """submitit calls ``checkpoint`` from its SIGUSR1 handler while the row runs: the child is told to save, the
    row is recorded as preempted and the returned submission is the same row (submitit then requeues and exits,
    here an exception stands in for its exit)."""
    import submitit

    run = tmp_path / "sw" / "a"
    path = _sweep_json(tmp_path, ["save_on_usr1", str(run)])
    task = sweeps.SweepTask(path)
    requeued = []

    class Requeued(Exception):
        pass

    def submitit_handler(signum, frame):
        requeued.append(task.checkpoint(0))
        raise Requeued

    before = signal.signal(signal.SIGUSR1, submitit_handler)
    try:
        with pytest.raises(Requeued):
            task(0)
    finally:
        signal.signal(signal.SIGUSR1, before)
    (delayed,) = requeued
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.args == (0,)
    again = pickle.loads(pickle.dumps(delayed.function))
    assert isinstance(again, sweeps.SweepTask) and again.sweep_json == str(path) and again._runner is None
    assert (run / "saved").exists() and (run / "env").read_text() == "submitit\n"
    assert {k: read_status(run)[k] for k in ("state", "returncode")} == {"state": "preempted", "returncode": 75}


# ------------------------------------------------------------------------------------- launchers
def test_submitit_local_executor_runs_every_row(tmp_path):
    """``map_array`` through submitit's local executor: each row its own job; a failing row's job fails."""
    path = _sweep_json(tmp_path, ["--help"])
    record = json.loads(path.read_text())
    d = path.parent
    record["rows"].append({"index": 1, "name": "b", "run_dir": str(d / "b"), "steps": [["frobnicate"]]})
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="--launcher submitit needs --slurm timeout_min=<minutes>"):
        sweeps.launch_submitit(path, {}, 2, cluster="local")
    assert sweeps.launch_submitit(path, {"timeout_min": 5}, 2, cluster="local") == 0
    import submitit

    ids = json.loads(path.read_text())["jobs"]
    jobs = [submitit.local.local.LocalJob(d / "submitit", job_id) for job_id in ids]
    assert len(jobs) == 2 and jobs[0].result()["state"] == "done"
    with pytest.raises(submitit.core.utils.FailedJobError, match="sweep row b stopped at step 0 with exit status 2"):
        jobs[1].result()
    assert read_status(d / "b")["state"] == "failed"


FAKE_SBATCH = """#!/bin/bash
# records its argv and the script it submits; answers as sbatch does (--parsable: "<job id>;<cluster>")
printf '%s\\n' "$@" > "$(dirname "$0")/sbatch_argv"
cp "${@: -1}" "$(dirname "$0")/sbatch_script" 2>/dev/null || true
if [[ " $* " == *" --parsable "* ]]; then echo "4242;testcluster"; else echo "Submitted batch job 4242"; fi
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` (:data:`FAKE_SBATCH`) and ``srun`` on PATH; AVGEN_SLURM_ACCOUNT=lab; returns their folder."""
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/bash\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AVGEN_SLURM_ACCOUNT", "lab")
    monkeypatch.delenv("AVGEN_SLURM_PARTITION", raising=False)
    return bin_dir


def _sweep_argv(d: Path, launcher: str) -> list[str]:
    return [str(TINY_SWEEP), f"hydra.searchpath=[file://{TEST_CONFIGS}]", "data.root=/d", "--launcher", launcher,
            "--rows", "hidden_4,no_data", "--dir", str(d), "--slurm", "partition=cpu", "--slurm", "mem_gb=4",
            "--slurm", "timeout_min=30", "--parallelism", "2"]


def test_sbatch_launcher_builds_the_array_command(tmp_path, fake_slurm, monkeypatch, capsys):
    slurm = tmp_path / "slurm"
    monkeypatch.setattr(sweeps, "slurm_dir", lambda: slurm)
    d = tmp_path / "sw"
    argv = _sweep_argv(d, "sbatch")
    assert sweeps.main(argv) == 1
    assert f"{slurm / 'sweep.sbatch'} not found: the sbatch templates come with the avgen repository" in \
        capsys.readouterr().err
    slurm.mkdir()
    (slurm / "sweep.sbatch").write_text("#!/bin/bash\n")  # a stand-in: the test does not run it
    assert sweeps.main(argv) == 0
    assert (fake_slurm / "sbatch_argv").read_text().splitlines() == [
        "--parsable", "--array=0-1%2", "--job-name=avgen-tiny_fit", f"--output={d}/logs/%A_%a.out",
        f"--error={d}/logs/%A_%a.err", "--account=lab", "--partition=cpu", "--mem=4G", "--time=30",
        str(slurm / "sweep.sbatch"), str(d / "sweep.json")]
    assert json.loads((d / "sweep.json").read_text())["jobs"] == ["4242"] and (d / "logs").is_dir()
    out = capsys.readouterr().out
    assert "squeue -j 4242" in out and f"python -m avgen collect {d}" in out
    assert sweeps.main([*argv, "--slurm", "gpus=2"]) == 1
    assert "--slurm gpus=2: expected KEY=VALUE with KEY one of partition, account," in capsys.readouterr().err


def test_a_sweep_whose_jobs_are_still_queued_is_not_launched_again(tmp_path, fake_slurm, monkeypatch, capsys):
    """Resubmitting a sweep folder while its array is queued or running would run the same rows twice, at once, in
    the same folders: refused while ``squeue`` lists a recorded job; once SLURM has forgotten them it goes ahead."""
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    (slurm / "sweep.sbatch").write_text("#!/bin/bash\n")
    monkeypatch.setattr(sweeps, "slurm_dir", lambda: slurm)
    squeue = fake_slurm / "squeue"
    squeue.write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/squeue_argv\nprintf '4242_1\\n4242_0\\n'\n")
    squeue.chmod(0o755)
    d = tmp_path / "sw"
    argv = _sweep_argv(d, "sbatch")
    assert sweeps.main(argv) == 0  # nothing recorded yet: squeue is not asked
    assert not (tmp_path / "squeue_argv").exists()
    capsys.readouterr()
    assert sweeps.main(argv) == 1
    assert capsys.readouterr().err == (f"avgen sweep: error: {d}: jobs of this sweep are still queued or running "
                                       f"(4242_1, 4242_0; squeue -j 4242); launching it again would run their rows "
                                       f"twice in the same folders: wait for them to end, or scancel them first\n")
    assert (tmp_path / "squeue_argv").read_text() == "-h -o %i -j 4242\n"
    assert json.loads((d / "sweep.json").read_text())["jobs"] == ["4242"]
    squeue.write_text("#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    assert sweeps.main(argv) == 0
    assert json.loads((d / "sweep.json").read_text())["jobs"] == ["4242", "4242"]


def test_submitit_launcher_submits_one_array_signalled_with_usr1(tmp_path, fake_slurm, capsys):
    """On SLURM: one job array of the rows, at most --parallelism at once, the site options, and the pre-timeout
    signal USR1 (what avgen's fit saves on; submitit's own default, USR2, would kill it)."""
    d = tmp_path / "sw"
    assert sweeps.main([*_sweep_argv(d, "submitit")[:-6], "--parallelism", "2"]) == 1
    assert "--launcher submitit needs --slurm timeout_min=<minutes>" in capsys.readouterr().err
    assert sweeps.main(_sweep_argv(d, "submitit")) == 0
    script = (fake_slurm / "sbatch_script").read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --signal=USR1@120", "#SBATCH --partition=cpu",
                 "#SBATCH --account=lab", "#SBATCH --time=30", "#SBATCH --mem=4GB", "#SBATCH --job-name=avgen-tiny_fit",
                 f"#SBATCH --output={d}/submitit/%A_%a_0_log.out", "export SUBMITIT_PREEMPT_SIGNAL=USR1"):
        assert line in script.splitlines(), line
    assert json.loads((d / "sweep.json").read_text())["jobs"] == ["4242_0", "4242_1"]
    assert "squeue -j 4242" in capsys.readouterr().out


@pytest.mark.slow
def test_local_launcher_runs_rows_continues_past_a_failure_and_skips_done_rows(tmp_path, tiny_shards, capfd,
                                                                               monkeypatch):
    """A tiny fit and a row the command line refuses (two rows of fits, each in its own folder, run on the real
    SLURM in tests/test_slurm.py): each row its own status, the failed row does not stop the others, the sweep
    exits 1; running it again skips the done row."""
    import torch

    from avgen.checkpoint import checkpoint_step

    sweep = load_sweep(TINY_SWEEP)
    sweep = replace(sweep, rows=(Row("typo", ("trainer=nope",)), sweep.rows[0]))
    d = tmp_path / "sw"
    path = write_sweep_json(sweep, [f"hydra.searchpath=[file://{TEST_CONFIGS}]", f"data.root={tiny_shards}"], d,
                            "local")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    assert sweeps.launch_local(path) == 1
    for name, hidden in (("hidden_4", 4),):
        ckpt = d / name / "checkpoints" / "last.ckpt"
        assert checkpoint_step(ckpt) == 2
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert state["head.weight"].shape == (1, hidden)
        assert {k: read_status(d / name)[k] for k in ("state", "step", "returncode", "attempts")} == {
            "state": "done", "step": 0, "returncode": 0, "attempts": 1}
    assert {k: read_status(d / "typo")[k] for k in ("state", "returncode")} == {"state": "failed", "returncode": 1}
    out = capfd.readouterr().out
    assert "avgen sweep: 1 of 2 rows done; not done: typo" in out
    mtime = (d / "hidden_4" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert sweeps.launch_local(path) == 1
    out = capfd.readouterr().out
    assert "row hidden_4 is done already" in out
    assert (d / "hidden_4" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
    assert read_status(d / "hidden_4")["attempts"] == 1 and read_status(d / "typo")["attempts"] == 2


def test_cli_dispatches_sweep_before_hydra_and_lists_it(capsys):
    from avgen.cli import help_text, main

    assert any(re.match(r"  sweep +run the rows of a sweep file", line) for line in help_text().splitlines())
    assert main(["sweep", "/no/such.yaml", "--dry-run"]) == 1
    assert capsys.readouterr().err == ("avgen sweep: error: sweep file /no/such.yaml not found; the repository's "
                                       "sweep files are in slurm/sweeps/\n")
