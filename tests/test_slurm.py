"""avgen's cluster paths against a real SLURM: a one-node cluster (munged + slurmctld + slurmd, started by
:mod:`tests.slurm_cluster`) runs the tiny test model through

- a sweep file as a job array, through ``sbatch --array`` (``slurm/sweep.sbatch``) and through submitit;
- ``slurm/train.sbatch``, requeued while it trains (``scontrol requeue``): it resumes at the saved step;
- the pre-timeout signal (``--signal=USR1@120``; sent here with ``scancel --signal=USR1``, which delivers it
  the way the controller does, to every process of the job's steps): checkpoint, ``scontrol requeue``, resume;
- a 2-task DDP job (gloo on CPU) launched by ``srun`` from the training template;
- a Hydra grid through ``hydra/launcher=slurm``, one of whose tasks gets the pre-timeout signal.

The daemons need root and Debian's SLURM packages; where they cannot start the tests skip with the reason,
except under ``AVGEN_REQUIRE_SLURM=1`` (set by ``.ci/run``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from avgen.checkpoint import checkpoint_step
from tests.conftest import REPO, TEST_CONFIGS, run_cli
from tests.slurm_cluster import ClusterUnavailable, start_cluster, wait_for_step

pytestmark = pytest.mark.slow

TRAIN = REPO / "slurm" / "train.sbatch"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        if os.environ.get("AVGEN_REQUIRE_SLURM") == "1":
            pytest.fail(f"AVGEN_REQUIRE_SLURM=1 but the test cluster did not start: {exc}")
        pytest.skip(f"no SLURM test cluster: {exc}")
    yield cluster
    cluster.stop()


def fit_args(data: Path, *extra: str) -> list[str]:
    return [f"hydra.searchpath=[file://{TEST_CONFIGS}]", "model=tiny_test", "scale=tiny", f"data.root={data}",
            "data.auto_prepare=false", "trainer.check_val_every_n_epoch=100", "trainer.log_every_n_steps=1", *extra]


def job_env(tmp_path: Path) -> dict[str, str]:
    """What a user's shell has: the python to run (templates: ``AVGEN_PYTHON``), the package, the runs folder."""
    return {"AVGEN_PYTHON": sys.executable, "PYTHONPATH": str(REPO), "AVGEN_RUNS_DIR": str(tmp_path / "runs"),
            "HF_HUB_OFFLINE": "1"}


def slow_steps(progress: Path, seconds: float = 0.4) -> str:
    return f"+callbacks.step_delay={{_target_: tests.helpers.StepDelay, progress: {progress}, seconds: {seconds}}}"


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else f"({path} missing)"


def run_folder(tmp_path: Path, job: str) -> Path:
    """A training job's run folder: ``<runs>/<name>/slurm-<job id>`` (the tiny test model's name is default)."""
    return tmp_path / "runs" / "default" / f"slurm-{job}"


def write_sweep(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump({
        "table": "two tiny fits", "source": "tests", "command": "fit",
        "base": fit_args(data, "trainer.max_steps=3"),
        "rows": [{"name": "hidden4", "overrides": ["model.hidden=4"], "paper": {"val/loss": 0.5}},
                 {"name": "hidden8", "overrides": ["model.hidden=8"]}]}))
    return path


def check_sweep_rows(folder: Path) -> None:
    """Both rows finished in their own folders, each with its own config and last.ckpt."""
    for name, hidden in (("hidden4", 4), ("hidden8", 8)):
        row = folder / name
        status = json.loads((row / "sweep_status.json").read_text())
        assert status["state"] == "done" and status["returncode"] == 0, (name, status)
        assert checkpoint_step(row / "checkpoints" / "last.ckpt") == 3
        overrides = yaml.safe_load((row / ".hydra" / "overrides.yaml").read_text())
        assert f"model.hidden={hidden}" in overrides
        assert yaml.safe_load((row / ".hydra" / "config.yaml").read_text())["model"]["hidden"] == hidden


def submitted_jobs(folder: Path) -> list[str]:
    jobs = json.loads((folder / "sweep.json").read_text())["jobs"]
    assert jobs, f"{folder}/sweep.json records no job"
    return [str(j) for j in jobs]


@pytest.mark.timeout(240)
def test_sweep_file_as_an_sbatch_array(slurm, tmp_path, tiny_shards):
    folder = tmp_path / "sweep"
    proc = run_cli("sweep", str(write_sweep(tmp_path, tiny_shards)), "--launcher", "sbatch", "--dir", str(folder),
                   cwd=tmp_path, env={**slurm.env, **job_env(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (job,) = submitted_jobs(folder)
    tasks = slurm.wait(job, timeout=180)
    logs = "\n".join(read_log(p) for p in sorted((folder / "logs").glob("*")))
    assert sorted(tasks) == [f"{job}_0", f"{job}_1"] and set(tasks.values()) == {"COMPLETED"}, logs
    check_sweep_rows(folder)


@pytest.mark.timeout(240)
def test_sweep_file_through_submitit(slurm, tmp_path, tiny_shards):
    folder = tmp_path / "sweep"
    proc = run_cli("sweep", str(write_sweep(tmp_path, tiny_shards)), "--launcher", "submitit", "--dir", str(folder),
                   cwd=tmp_path, env={**slurm.env, **job_env(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = submitted_jobs(folder)
    array = sorted({j.split("_")[0] for j in jobs})
    assert len(array) == 1, jobs  # one array of two tasks
    tasks = slurm.wait(array[0], timeout=180)
    logs = "\n".join(read_log(p) for p in sorted((folder / "submitit").glob("*.out")) +
                     sorted((folder / "submitit").glob("*.err")))
    assert len(tasks) == 2 and set(tasks.values()) == {"COMPLETED"}, logs
    check_sweep_rows(folder)


def train_job(slurm, tmp_path: Path, data: Path, *extra: str, sbatch: tuple[str, ...] = ()) -> tuple[str, Path]:
    log = tmp_path / "train.out"
    job = slurm.sbatch(*sbatch, f"--output={log}", str(TRAIN), *fit_args(data, *extra), cwd=tmp_path,
                       env=job_env(tmp_path))
    return job, log


@pytest.mark.timeout(240)
def test_requeued_training_job_resumes_at_the_saved_step(slurm, tmp_path, tiny_shards):
    progress = tmp_path / "progress.json"
    job, log = train_job(slurm, tmp_path, tiny_shards, "trainer.max_steps=12",
                         "callbacks.model_checkpoint.every_n_train_steps=3", slow_steps(progress),
                         f"model.record_dir={tmp_path / 'record'}")
    wait_for_step(progress, 4, timeout=120)
    slurm.run("scontrol", "requeue", job)
    state = slurm.wait(job, timeout=180)
    text = read_log(log)
    assert state == {job: "COMPLETED"}, text
    run = run_folder(tmp_path, job)
    saved = re.findall(r"resuming from (\S+) \(step (\d+)", text)
    assert len(saved) == 1, text  # once: the requeued run, in the same folder
    path, step = Path(saved[0][0]), int(saved[0][1])
    assert path.parent == run / "checkpoints" and step >= 3, text
    record = json.loads((tmp_path / "record" / "rank0.json").read_text())
    assert record["first_step"] == step and record["global_step"] == 12
    assert "restart 1)" in text  # the template's first line, in the requeued job
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 12
    assert not list(run.rglob("hpc_ckpt_*"))


@pytest.mark.timeout(240)
def test_pre_timeout_signal_checkpoints_and_requeues(slurm, tmp_path, tiny_shards):
    progress = tmp_path / "progress.json"
    job, log = train_job(slurm, tmp_path, tiny_shards, "trainer.max_steps=12",
                         "callbacks.model_checkpoint.every_n_train_steps=100", slow_steps(progress),
                         f"model.record_dir={tmp_path / 'record'}")
    wait_for_step(progress, 4, timeout=120)
    # what the controller sends --signal=USR1@120 before the time limit: USR1 to the processes of the job's steps
    slurm.run("scancel", "--signal=USR1", job)
    state = slurm.wait(job, timeout=180)
    text = read_log(log)
    assert state == {job: "COMPLETED"}, text
    run = run_folder(tmp_path, job)
    preempted = re.findall(r"preempted at step (\d+): saved (\S+); requeued (\S+)", text)
    assert len(preempted) == 1, text
    step = int(preempted[0][0])
    assert step >= 4 and Path(preempted[0][1]) == run / "checkpoints" / "last.ckpt" and preempted[0][2] == job
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'} (step {step}" in text
    record = json.loads((tmp_path / "record" / "rank0.json").read_text())
    assert record["first_step"] == step and record["global_step"] == 12
    assert "restart 1)" in text  # the template's first line, in the requeued job
    assert not list(run.rglob("hpc_ckpt_*"))


@pytest.mark.timeout(240)
def test_two_task_ddp_job_launched_by_srun(slurm, tmp_path, tiny_shards):
    job, log = train_job(slurm, tmp_path, tiny_shards, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=4",
                         f"model.record_dir={tmp_path / 'record'}", sbatch=("--ntasks=2",))
    state = slurm.wait(job, timeout=180)
    text = read_log(log)
    assert state == {job: "COMPLETED"}, text
    ranks = [json.loads((tmp_path / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks), text
    assert ranks[0]["pid"] != ranks[1]["pid"] and all(r["global_step"] == 4 for r in ranks)
    assert ranks[0]["keys"] != ranks[1]["keys"]  # each rank reads its own part of the stream
    assert checkpoint_step(run_folder(tmp_path, job) / "checkpoints" / "last.ckpt") == 4


@pytest.mark.timeout(240)
def test_hydra_grid_through_the_slurm_launcher_saves_and_requeues(slurm, tmp_path, tiny_shards):
    """``-m ... hydra/launcher=slurm`` (Hydra's submitit launcher, configs/hydra/launcher/slurm.yaml): SLURM's
    pre-timeout signal is USR1 there too, so a signalled task saves, requeues itself and resumes in its folder."""
    import subprocess

    folder = tmp_path / "grid"
    progress = tmp_path / "progress"
    args = ["-m", "fit", *fit_args(tiny_shards, "trainer.max_steps=16", "seed=1,2"),
            f"+callbacks.step_delay={{_target_: tests.helpers.StepDelay, progress: {progress}$\\{{seed\\}}, "
            f"seconds: 0.4}}", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", f"hydra.sweep.dir={folder}"]
    env = {**slurm.env, **job_env(tmp_path)}
    hydra = subprocess.Popen([sys.executable, "-m", "avgen", *args], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        step = wait_for_step(Path(f"{progress}1"), 4, timeout=120)
        # the task of seed=1, job 0 of the grid: <array job>_0 (submitit keeps a folder per task)
        (task,) = [p.name for p in (folder / ".submitit").iterdir() if p.is_dir() and p.name.endswith("_0")]
        slurm.run("scancel", "--signal=USR1", task)
        out, _ = hydra.communicate(timeout=200)
    finally:
        hydra.kill()
    assert hydra.returncode == 0, out[-3000:]
    # Hydra's process may return before the requeued task ran again (this cluster keeps no accounting for
    # submitit to read states from): wait for the array itself
    assert set(slurm.wait(task.split("_")[0], timeout=120).values()) == {"COMPLETED"}
    text = "\n".join(p.read_text(errors="replace") for p in (folder / ".submitit").rglob("*_log.*"))
    preempted = re.findall(r"preempted at step (\d+): saved (\S+); requeued (\S+)", text)
    assert len(preempted) == 1 and int(preempted[0][0]) >= step, text[-3000:]
    assert Path(preempted[0][1]) == folder / "0" / "checkpoints" / "last.ckpt" and preempted[0][2] == task
    assert f"resuming from {folder / '0' / 'checkpoints' / 'last.ckpt'} (step {preempted[0][0]}" in text
    for job in ("0", "1"):
        assert checkpoint_step(folder / job / "checkpoints" / "last.ckpt") == 16
