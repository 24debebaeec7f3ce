"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd started as root in a temporary
folder from ``tests/slurm/slurm.conf.in`` (Debian's ``slurmctld slurmd slurm-client munge`` packages, which
``.ci/run`` installs).

:func:`start_cluster` returns a :class:`SlurmCluster` (its :attr:`~SlurmCluster.env` points ``sbatch``,
``squeue``, ``scontrol`` ... at it), or raises :class:`ClusterUnavailable` with the reason when the daemons
cannot start here (not root, packages missing). :func:`wait_for_step` follows a job's fit through
``tests.helpers.StepDelay``, so that a test can signal or requeue it while it trains.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONF_TEMPLATE = Path(__file__).resolve().parent / "slurm" / "slurm.conf.in"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")


class ClusterUnavailable(RuntimeError):
    """The SLURM daemons cannot start on this machine (the message says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.is_file()), None)


@dataclass
class SlurmCluster:
    root: Path
    host: str
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command (``sbatch``, ``scontrol`` ...) against this cluster."""
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit; returns the job id (``sbatch --parsable``)."""
        proc = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def jobs(self, job: str) -> dict[str, tuple[str, str]]:
        """``{job id: (state, reason)}`` of a job (each task of an array), while the controller remembers it."""
        out = self.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%i|%T|%r", check=False).stdout
        return {i: (s, r) for i, s, r in (line.split("|") for line in out.splitlines() if line.count("|") == 2)}

    def detail(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as ``{key: value}`` (first task of an array)."""
        out = self.run("scontrol", "-o", "show", "job", job, check=False).stdout.splitlines()
        return dict(word.split("=", 1) for word in (out[0].split() if out else []) if "=" in word)

    def wait(self, job: str, timeout: float, *, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                         "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")) -> dict:
        """Wait until every task of ``job`` is in one of ``states``; returns ``{task: state}``.

        Raises:
            TimeoutError: with the states seen and the controller's log tail.
        """
        end = time.monotonic() + timeout
        seen: dict = {}
        while time.monotonic() < end:
            seen = self.jobs(job)
            if seen and all(state in states for state, _ in seen.values()):
                return {k: s for k, (s, _) in seen.items()}
            time.sleep(0.5)
        raise TimeoutError(f"job {job} not finished after {timeout} s: {seen}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        texts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.is_file():
                texts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--quiet", "-u", "root"], env=self.env, capture_output=True, timeout=30)
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        for name, pid in self.pids.items():
            while time.monotonic() < deadline and _alive(pid):
                if name == "munged":
                    os.kill(pid, signal.SIGTERM)
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())


def _read_pid(path: Path, timeout: float = 10) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise ClusterUnavailable(f"{path} not written within {timeout} s")


def start_cluster(root: Path, timeout: float = 30) -> SlurmCluster:
    """Start munged, slurmctld and slurmd (as root) with their state, logs and sockets under ``root``; wait until
    the node is idle.

    Raises:
        ClusterUnavailable: not root, a package missing, or a daemon that does not come up (its log tail).
    """
    missing = [d for d in DAEMONS if _which(d) is None]
    if missing:
        raise ClusterUnavailable(f"SLURM not installed ({', '.join(missing)} missing): apt-get install slurmctld "
                                 f"slurmd slurm-client munge")
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster's daemons run as root (SlurmUser=root); this user is not root")
    root = Path(root)
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    values = {"root": str(root), "host": host, "ctld_port": str(_free_port()), "slurmd_port": str(_free_port())}
    conf = CONF_TEMPLATE.read_text()
    for name, value in values.items():
        conf = conf.replace(f"@{name}@", value)
    (root / "slurm.conf").write_text(conf)
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    for name in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        if name != "SLURM_CONF":
            env.pop(name)
    env.pop("AVGEN_RUN_ID", None)
    cluster = SlurmCluster(root=root, host=host, env=env)
    munge = root / "munge"
    subprocess.run([_which("munged"), f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
                    f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'seed'}",
                    f"--log-file={munge / 'munged.log'}", "--force"], env=env, check=True, capture_output=True,
                   timeout=30)
    cluster.pids["munged"] = _read_pid(munge / "munged.pid")
    try:
        for daemon, args in (("slurmctld", ["-i"]), ("slurmd", ["-N", host])):
            proc = subprocess.run([_which(daemon), *args], env=env, capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                raise ClusterUnavailable(f"{daemon} exited {proc.returncode}: {proc.stderr.strip()}\n"
                                         f"{cluster.log_tail()}")
            cluster.pids[daemon] = _read_pid(root / f"{daemon}.pid")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(0.3)
        raise ClusterUnavailable(f"the node is not idle after {timeout} s (sinfo: {state!r})\n{cluster.log_tail()}")
    except BaseException:
        cluster.stop()
        raise


def wait_for_step(progress: Path, step: int, timeout: float) -> int:
    """The step a job's ``tests.helpers.StepDelay`` callback wrote to ``progress``, once it is ``step`` or more.

    Raises:
        TimeoutError: the last step seen.
    """
    end, last = time.monotonic() + timeout, None
    while time.monotonic() < end:
        try:
            last = int(progress.read_text())
        except (FileNotFoundError, ValueError):
            last = None
        if last is not None and last >= step:
            return last
        time.sleep(0.2)
    raise TimeoutError(f"{progress}: step {step} not reached in {timeout} s (last: {last})")
