"""Process pools for clip-parallel work (dataset preparation, evaluation).

Workers come from a ``forkserver`` (``spawn`` where there is none): forking a process that
already runs threads (torch's intra-op pool, OpenMP, a DataLoader's pin thread) can leave a child
waiting forever on a lock held by a thread that does not exist in the child.
"""

from __future__ import annotations

import multiprocessing as mp
import os
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
