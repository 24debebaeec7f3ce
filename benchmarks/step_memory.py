"""Peak resident memory of one training step of a system, measured in the current process (the
benchmarks run it in a fresh subprocess per setting, so the peaks are comparable)."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_training_step(system, batch: dict[str, Any], seed: int = 1) -> dict[str, Any]:
    """One warm-up step (allocator pools, lazy inits), then the peak RSS above the pre-step level of
    a second, identically seeded ``diffusion_loss`` forward + backward, sampled every 2 ms."""
    system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))["loss"].backward()
    system.zero_grad(set_to_none=True)
    gc.collect()
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    start = time.perf_counter()
    loss = system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))["loss"]
    loss.backward()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    grad = sum(float(p.grad.abs().sum()) for _, p in system.trainable_parameters() if p.grad is not None)
    return {"before": before, "peak": peak[0], "step_bytes": peak[0] - before, "seconds": seconds,
            "loss": float(loss), "grad_l1": grad}
