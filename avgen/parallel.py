"""Process pools for clip-parallel work (dataset preparation, evaluation).

Workers come from a ``forkserver`` (``spawn`` where there is none): forking a process that
already runs threads (torch's intra-op pool, OpenMP, a DataLoader's pin thread) can leave a child
waiting forever on a lock held by a thread that does not exist in the child.

Also here (imported by the command line before anything heavy): holding the cluster's pre-timeout signal
(SIGUSR1) from a process's start until ``fit``'s :class:`~avgen.callbacks.SlurmRequeue` takes it over.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from typing import Callable


def single_threaded() -> None:
    """Pool initializer: one process per core, so keep OpenCV and torch from starting thread pools
    (torch only if the worker already has it: importing it costs seconds)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def worker_pool(workers: int, initializer: Callable[[], None] | None = single_threaded,
                preload: tuple[str, ...] = ()):
    """A pool of ``workers`` processes; ``preload`` modules are imported once by the fork server, so
    the workers forked from it start with them loaded."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if preload and "forkserver" in methods:
        ctx.set_forkserver_preload(list(preload))
    return ctx.Pool(workers, initializer=initializer)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _exit_with_caller(caller: int, initializer: Callable[[], None] | None) -> None:
    """Worker initializer: run ``initializer``, then watch the calling process and exit when it is gone
    (a ``ProcessPoolExecutor`` worker whose caller was SIGKILLed would otherwise wait forever on its
    queue, holding the caller's stdout/stderr open)."""
    import threading
    import time

    if initializer is not None:
        initializer()

    def watch() -> None:
        while _alive(caller):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="avgen-caller-watch", daemon=True).start()


def ordered_map(fn: Callable, jobs, workers: int, initializer: Callable[[], None] | None = single_threaded,
                ahead: int = 2):
    """``fn(job)`` for each of ``jobs``, yielded in order, computed by ``workers`` processes with at most
    ``ahead · workers`` jobs in flight (a slow consumer never piles up results).

    Unlike ``Pool.imap``, a worker that dies (SIGKILL, the out-of-memory killer) does not hang the
    caller: :class:`concurrent.futures.process.BrokenProcessPool` is raised.
    """
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_exit_with_caller,
                                   initargs=(os.getpid(), initializer))
    try:
        it = iter(jobs)
        pending = deque()
        for job in it:
            pending.append(executor.submit(fn, job))
            if len(pending) >= ahead * workers:
                break
        while pending:
            result = pending.popleft().result()
            for job in it:
                pending.append(executor.submit(fn, job))
                break
            yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# SIGUSR1 (the cluster's pre-timeout signal) that came before fit's SlurmRequeue callback took the signal over
_early_preemption: list[int] = []


def hold_preemption_signal() -> None:
    """Under SLURM (``SLURM_JOB_ID`` set), from the start of a Hydra command: SIGUSR1, whose default action kills the
    process, is recorded instead. The pre-timeout signal can come while a ``fit`` is still importing, composing or
    loading weights (a job started close to its time limit, or a sweep row's fit started late in the task); fit's
    :class:`~avgen.callbacks.SlurmRequeue` then acts on it at its first step (save, requeue). Other commands
    (``sample``, ``evaluate``) go on until the time limit. A handler already installed is left alone."""
    if os.environ.get("SLURM_JOB_ID") and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
        signal.signal(signal.SIGUSR1, lambda signum, frame: _early_preemption.append(signum))


def take_early_preemption() -> bool:
    """Whether SIGUSR1 came while :func:`hold_preemption_signal`'s handler held it; clears the record."""
    received = bool(_early_preemption)
    _early_preemption.clear()
    return received


def slurm_job_id() -> str | None:
    """This SLURM job as ``scontrol requeue`` and ``squeue -j`` name it: ``<array job>_<task>`` in an array task,
    else ``SLURM_JOB_ID``; None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")
