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


def compare_checkpointing(script: str, scale: str, tiny_dir: str) -> dict[str, Any]:
    """Run ``script --child-memory <scale> --tiny-dir <dir> [--checkpointing]`` twice, each in a fresh
    subprocess (the script prints :func:`measure_training_step`'s dict as its last line), and compare:
    ``ratio`` = checkpointed / plain step bytes, ``time_ratio``, and whether the gradients agree."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    out = {}
    for checkpointing in (False, True):
        proc = subprocess.run([sys.executable, script, "--child-memory", scale, "--tiny-dir", tiny_dir]
                              + (["--checkpointing"] if checkpointing else []), capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONPATH": str(repo)})
        out[checkpointing] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, ckpt = out[False], out[True]
    return {"scale": scale, "ratio": ckpt["step_bytes"] / plain["step_bytes"],
            "time_ratio": ckpt["seconds"] / plain["seconds"], "plain": plain, "checkpointed": ckpt,
            "same_gradients": abs(plain["grad_l1"] - ckpt["grad_l1"]) <= 1e-5 * max(1.0, plain["grad_l1"])}


def checkpointing_line(result: dict[str, Any], target: float = 0.6) -> str:
    """One printed line for :func:`compare_checkpointing`'s result."""
    r = result
    return (f"training-step memory ({r['scale']}): checkpointed/plain = {r['ratio']:.3f} "
            f"({r['checkpointed']['step_bytes'] / 2**20:.0f} MiB vs {r['plain']['step_bytes'] / 2**20:.0f} MiB), "
            f"target <= {target}: {'PASS' if r['ratio'] <= target else 'MISS'}; time ratio {r['time_ratio']:.2f}; "
            f"same gradients: {r['same_gradients']}")


class ForwardTimer:
    """Wraps ``module.forward`` and adds up the seconds spent in it (``seconds``; reset with ``reset()``)."""

    def __init__(self, module) -> None:
        self.seconds = 0.0
        forward = module.forward

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        module.forward = timed

    def reset(self) -> None:
        self.seconds = 0.0
