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
    system.zero_grad(set_to_none=True)
    return {"before": before, "peak": peak[0], "step_bytes": peak[0] - before, "seconds": seconds,
            "loss": float(loss), "grad_l1": grad, "saved_bytes": saved_activation_bytes(system, batch, seed)}


def saved_activation_bytes(system, batch: dict[str, Any], seed: int = 1) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one ``diffusion_loss`` (parameters
    excluded): the activation memory gradient checkpointing trades for recomputation. Deterministic, unlike RSS
    (the allocator keeps freed pages), so it is the CPU stand-in for ``torch.cuda.max_memory_allocated``.
    Tensors saved inside a checkpointed region are not kept (the checkpoint's own hooks take them), so they do
    not count."""
    params = {p.untyped_storage().data_ptr() for p in system.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.layout == torch.strided and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params:
                storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))["loss"]
    total = sum(storages.values())
    loss.backward()
    system.zero_grad(set_to_none=True)
    return total


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
            "saved_ratio": ckpt["saved_bytes"] / plain["saved_bytes"],
            "time_ratio": ckpt["seconds"] / plain["seconds"], "plain": plain, "checkpointed": ckpt,
            "same_gradients": abs(plain["grad_l1"] - ckpt["grad_l1"]) <= 1e-5 * max(1.0, plain["grad_l1"])}


def checkpointing_line(result: dict[str, Any], target: float = 0.6) -> str:
    """One printed line for :func:`compare_checkpointing`'s result."""
    r = result
    return (f"training-step memory ({r['scale']}), checkpointed/plain: activations kept for backward "
            f"{r['saved_ratio']:.3f} ({r['checkpointed']['saved_bytes'] / 2**20:.0f} MiB vs "
            f"{r['plain']['saved_bytes'] / 2**20:.0f} MiB), target <= {target}: "
            f"{'PASS' if r['saved_ratio'] <= target else 'MISS'}; peak RSS above the pre-step level {r['ratio']:.3f} "
            f"({r['checkpointed']['step_bytes'] / 2**20:.0f} vs {r['plain']['step_bytes'] / 2**20:.0f} MiB; the "
            f"allocator keeps freed pages, so RSS is noisy); time ratio {r['time_ratio']:.2f}; "
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


def costs_main(doc: str, script: str, memory_child, bench_sampling, describe_sampling,
               scales: tuple[str, ...] = ("small",)) -> int:
    """The command line of a system's cost benchmark: ``[--scale S] [--steps N] [--only memory|sampling]
    [--tiny-dir D] [--json F]``. Memory: :func:`compare_checkpointing` at ``--scale`` (``memory_child(scale,
    tiny_dir, checkpointing)`` runs in the subprocesses); sampling: ``bench_sampling(scale, tiny_dir, steps)`` at
    ``tiny`` and ``--scale``, each printed with ``describe_sampling(result, steps)``."""
    import argparse
    import json
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(scales), default=scales[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", choices=["memory", "sampling"], default=None)
    parser.add_argument("--tiny-dir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        print(json.dumps(memory_child(args.child_memory, args.tiny_dir, args.checkpointing)))
        return 0
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = args.tiny_dir or str(Path(tmp) / "tiny")
        if args.only in (None, "memory"):
            report["memory"] = compare_checkpointing(script, args.scale, tiny_dir)
            print(checkpointing_line(report["memory"]))
        if args.only in (None, "sampling"):
            for scale in ("tiny", args.scale):
                result = report[f"sampling_{scale}"] = bench_sampling(scale, tiny_dir, args.steps)
                print(describe_sampling(result, args.steps))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
