"""avgen's cluster paths against a real SLURM: a one-node cluster (munged + slurmctld + slurmd, started by
:mod:`tests.slurm_cluster`) runs the tiny test model through

- a sweep file as a job array, through ``sbatch --array`` (``slurm/sweep.sbatch``) and through submitit;
- ``slurm/train.sbatch``, requeued while it trains (``scontrol requeue``): it resumes at the saved step;
- the pre-timeout signal (``--signal=USR1@120``; sent here with ``scancel --signal=USR1``, which delivers it
  the way the controller does, to every process of the job's steps): checkpoint, ``scontrol requeue``, resume;
- a 2-task DDP job (gloo on CPU) launched by ``srun`` from the training template;
- a Hydra grid through ``hydra/launcher=slurm``, one of whose tasks gets the pre-timeout signal.

The scenarios run side by side (threads of the module's fixture submit the jobs, act on them while they train
and wait for them; the tests check what each saw): the cluster has 8 job slots, and most of a job's time is
SLURM's hold of a requeued job or a process importing torch. The daemons need root and Debian's SLURM packages;
where they cannot start the tests skip with the reason, except under ``AVGEN_REQUIRE_SLURM=1`` (set by
``.ci/run``), where that is a failure.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from avgen.checkpoint import checkpoint_step
from tests.conftest import REPO, TEST_CONFIGS, run_cli
from tests.slurm_cluster import ClusterUnavailable, SlurmCluster, start_cluster, wait_for_step

pytestmark = pytest.mark.slow

TRAIN = REPO / "slurm" / "train.sbatch"


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
        "base": fit_args(data, "trainer.max_steps=3", "trainer.check_val_every_n_epoch=1",
                         "+trainer.val_check_interval=3"),
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


def train_job(slurm: SlurmCluster, tmp_path: Path, data: Path, *extra: str,
              sbatch: tuple[str, ...] = ()) -> tuple[str, Path]:
    log = tmp_path / "train.out"
    job = slurm.sbatch(*sbatch, f"--output={log}", str(TRAIN), *fit_args(data, *extra), cwd=tmp_path,
                       env=job_env(tmp_path))
    return job, log


# ------------------------------------------------------------------------------------------------ scenarios
def sweep_array(launcher: str):
    def scenario(slurm: SlurmCluster, tmp_path: Path, data: Path) -> dict:
        folder = tmp_path / "sweep"
        site = ["--slurm", "timeout_min=10"] if launcher == "submitit" else []  # submitit: 5 min by default
        proc = run_cli("sweep", str(write_sweep(tmp_path, data)), "--launcher", launcher, "--dir", str(folder), *site,
                       cwd=tmp_path, env={**slurm.env, **job_env(tmp_path)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        jobs = submitted_jobs(folder)
        arrays = sorted({j.split("_")[0] for j in jobs})
        assert len(arrays) == 1, jobs  # one array of two tasks
        tasks = slurm.wait(arrays[0], timeout=200)
        files = sorted(folder.glob("logs/*")) + sorted(folder.glob("submitit/**/*_log.*"))
        logs = "\n".join(read_log(p) for p in files)
        return {"folder": folder, "array": arrays[0], "tasks": tasks, "logs": logs}
    return scenario


def interrupted_training(every_n_steps: int, *action: str):
    """A 12-step fit from train.sbatch; at step 4 ``action`` (a SLURM client command) is run on its job."""
    def scenario(slurm: SlurmCluster, tmp_path: Path, data: Path) -> dict:
        progress = tmp_path / "progress"
        job, log = train_job(slurm, tmp_path, data, "trainer.max_steps=12",
                             f"callbacks.model_checkpoint.every_n_train_steps={every_n_steps}", slow_steps(progress),
                             f"model.record_dir={tmp_path / 'record'}")
        at = wait_for_step(progress, 4, timeout=150)
        slurm.run(*action, job)
        return {"job": job, "at": at, "state": slurm.wait(job, timeout=200), "log": read_log(log), "tmp": tmp_path}
    return scenario


def ddp_two_tasks(slurm: SlurmCluster, tmp_path: Path, data: Path) -> dict:
    job, log = train_job(slurm, tmp_path, data, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=4",
                         f"model.record_dir={tmp_path / 'record'}", sbatch=("--ntasks=2",))
    return {"job": job, "state": slurm.wait(job, timeout=200), "log": read_log(log), "tmp": tmp_path}


def hydra_grid(slurm: SlurmCluster, tmp_path: Path, data: Path) -> dict:
    folder, progress = tmp_path / "grid", tmp_path / "progress"
    args = ["-m", "fit", *fit_args(data, "trainer.max_steps=16", "seed=1,2"),
            f"+callbacks.step_delay={{_target_: tests.helpers.StepDelay, progress: {progress}$\\{{seed\\}}, "
            f"seconds: 0.4}}", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", f"hydra.sweep.dir={folder}"]
    env = {**slurm.env, **job_env(tmp_path)}
    hydra = subprocess.Popen([sys.executable, "-m", "avgen", *args], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        at = wait_for_step(Path(f"{progress}1"), 4, timeout=150)
        # the task of seed=1, job 0 of the grid: <array job>_0 (submitit keeps a folder per task)
        (task,) = [p.name for p in (folder / ".submitit").iterdir() if p.is_dir() and p.name.endswith("_0")]
        slurm.run("scancel", "--signal=USR1", task)
        out, _ = hydra.communicate(timeout=200)
    finally:
        hydra.kill()
    # Hydra's process may return before the requeued task ran again (this cluster keeps no accounting for
    # submitit to read states from): wait for the array itself
    state = slurm.wait(task.split("_")[0], timeout=200)
    logs = "\n".join(read_log(p) for p in (folder / ".submitit").rglob("*_log.*"))
    return {"folder": folder, "task": task, "at": at, "returncode": hydra.returncode, "out": out, "state": state,
            "logs": logs}


SCENARIOS = {"sbatch_array": sweep_array("sbatch"), "submitit_array": sweep_array("submitit"),
             "requeue": interrupted_training(3, "scontrol", "requeue"),
             # what the controller sends --signal=USR1@120 before the time limit: USR1 to the job steps' processes
             "signal": interrupted_training(100, "scancel", "--signal=USR1"), "ddp": ddp_two_tasks, "hydra": hydra_grid}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, tiny_shards) -> dict[str, Future]:
    """Every scenario started at once on a fresh cluster; ``{name: future of its observations}``."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        if os.environ.get("AVGEN_REQUIRE_SLURM") == "1":
            pytest.fail(f"AVGEN_REQUIRE_SLURM=1 but the test cluster did not start: {exc}")
        pytest.skip(f"no SLURM test cluster: {exc}")
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS))
    futures = {name: pool.submit(run, cluster, tmp_path_factory.mktemp(name), tiny_shards)
               for name, run in SCENARIOS.items()}
    yield futures
    pool.shutdown(wait=False, cancel_futures=True)
    cluster.stop()


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["sbatch", "submitit"])
def test_sweep_file_as_a_job_array(scenarios, launcher):
    seen = scenarios[f"{launcher}_array"].result(timeout=280)
    assert len(seen["tasks"]) == 2 and set(seen["tasks"].values()) == {"COMPLETED"}, seen["logs"]
    assert sorted(seen["tasks"]) == [f"{seen['array']}_0", f"{seen['array']}_1"]
    check_sweep_rows(seen["folder"])
    # from the sweep to its table: collect's CSV holds each row's step, the override that varies, its final
    # validation loss (the one its metrics.csv logged) and the paper's value the sweep file gives beside it
    from avgen.collect import main as collect

    assert collect([str(seen["folder"])]) == 0
    lines = (seen["folder"] / "results.csv").read_text().splitlines()
    assert lines[0] == "run,status,step,model.hidden,val/loss,val/loss (paper),val/loss (best),note"
    for line, (name, hidden, paper) in zip(lines[1:], (("hidden4", 4, "0.5"), ("hidden8", 8, ""))):
        logged = list(csv.DictReader(open(seen["folder"] / name / "logs" / "metrics.csv")))
        loss = [float(r["val/loss"]) for r in logged if r.get("val/loss")]
        assert len(loss) == 1 and line == f"{name},done,3,{hidden},{loss[0]!r},{paper},{loss[0]!r},"
    assert len(lines) == 3


def finished(seen: dict) -> tuple[str, str, Path]:
    """(job id, its log, its run folder) of a training scenario whose job completed."""
    assert seen["state"] == {seen["job"]: "COMPLETED"}, seen["log"]
    return seen["job"], seen["log"], run_folder(seen["tmp"], seen["job"])


def check_resumed(seen: dict, run: Path, step: int) -> None:
    """The requeued attempt (restart 1 in the template's first line) started at ``step`` and finished at 12; no
    Lightning ``hpc_ckpt_*`` anywhere."""
    record = json.loads((seen["tmp"] / "record" / "rank0.json").read_text())
    assert record["first_step"] == step and record["global_step"] == 12
    assert "restart 1)" in seen["log"]
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 12
    assert not list(run.rglob("hpc_ckpt_*"))


@pytest.mark.timeout(300)
def test_requeued_training_job_resumes_at_the_saved_step(scenarios):
    seen = scenarios["requeue"].result(timeout=280)
    job, text, run = finished(seen)
    saved = re.findall(r"resuming from (\S+) \(step (\d+)", text)
    assert len(saved) == 1, text  # once: the requeued run, in the same folder
    path, step = Path(saved[0][0]), int(saved[0][1])
    # scontrol requeue sends SIGTERM first: the one-process fit saves the step in flight (>= the step seen)
    assert path == run / "checkpoints" / "last.ckpt" and step >= seen["at"], text
    assert f"terminated (SIGTERM) at step {step}: saved {path}" in text
    check_resumed(seen, run, step)


@pytest.mark.timeout(300)
def test_pre_timeout_signal_checkpoints_and_requeues(scenarios):
    seen = scenarios["signal"].result(timeout=280)
    job, text, run = finished(seen)
    preempted = re.findall(r"preempted at step (\d+): saved (\S+); requeued (\S+)", text)
    assert len(preempted) == 1, text
    step = int(preempted[0][0])
    assert step >= seen["at"] and Path(preempted[0][1]) == run / "checkpoints" / "last.ckpt"
    assert preempted[0][2] == job
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'} (step {step}" in text
    check_resumed(seen, run, step)


@pytest.mark.timeout(300)
def test_two_task_ddp_job_launched_by_srun(scenarios):
    seen = scenarios["ddp"].result(timeout=280)
    job, text, run = finished(seen)
    ranks = [json.loads((seen["tmp"] / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks), text
    assert ranks[0]["pid"] != ranks[1]["pid"] and all(r["global_step"] == 4 for r in ranks)
    assert ranks[0]["keys"] != ranks[1]["keys"]  # each rank reads its own part of the stream
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 4


@pytest.mark.timeout(300)
def test_hydra_grid_through_the_slurm_launcher_saves_and_requeues(scenarios):
    """``-m ... hydra/launcher=slurm`` (Hydra's submitit launcher, configs/hydra/launcher/slurm.yaml): SLURM's
    pre-timeout signal is USR1 there too, so a signalled task saves, requeues itself and resumes in its folder."""
    seen = scenarios["hydra"].result(timeout=280)
    folder, task, text = seen["folder"], seen["task"], seen["logs"]
    assert seen["returncode"] == 0, seen["out"][-3000:]
    assert set(seen["state"].values()) == {"COMPLETED"}, text[-3000:]
    preempted = re.findall(r"preempted at step (\d+): saved (\S+); requeued (\S+)", text)
    assert len(preempted) == 1 and int(preempted[0][0]) >= seen["at"], text[-3000:]
    assert Path(preempted[0][1]) == folder / "0" / "checkpoints" / "last.ckpt" and preempted[0][2] == task
    assert f"resuming from {folder / '0' / 'checkpoints' / 'last.ckpt'} (step {preempted[0][0]}" in text
    for job in ("0", "1"):
        assert checkpoint_step(folder / job / "checkpoints" / "last.ckpt") == 16
