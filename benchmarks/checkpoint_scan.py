"""Reading a checkpoint's step: ``avgen.checkpoint.checkpoint_step`` against ``torch.load(mmap=True)``.

Every resume (``fit resume=auto``, ``pretrain-twins``) scans the run's checkpoints for the newest complete one. A
checkpoint of a U-Net with its Adam state holds thousands of tensors; ``torch.load`` (even memory-mapped, with the
pure-Python ``weights_only`` unpickler) rebuilds each tensor object, while ``checkpoint_step`` unpickles the record
with the C unpickler and no tensor. Checkpoints: Lightning's layout (``state_dict``, ``optimizer_states`` with
``exp_avg`` / ``exp_avg_sq`` per parameter, ``global_step``) of the tiny twins' U-Nets, written with ``torch.save``.

    .venv/bin/python benchmarks/checkpoint_scan.py [--files 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch
    from diffusers import UNet3DConditionModel

    from avgen.backbones import tiny
    from avgen.checkpoint import checkpoint_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        unet = UNet3DConditionModel.from_pretrained(tiny.materialize("zeroscope", Path(tmp)) / "unet")
        state = unet.state_dict()
        optimizer = {"state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(v),
                                   "exp_avg_sq": torch.zeros_like(v)} for i, v in enumerate(state.values())},
                     "param_groups": [{"lr": 1e-4, "params": list(range(len(state)))}]}
        files = []
        for i in range(args.files):
            path = Path(tmp) / f"step_{i:07d}.ckpt"
            torch.save({"state_dict": state, "optimizer_states": [optimizer], "global_step": i,
                        "epoch": 0, "hyper_parameters": {"lr": 1e-4}}, path)
            files.append(path)

        def old(path):
            return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])

        assert [old(f) for f in files] == [checkpoint_step(f) for f in files] == list(range(args.files))
        times = {"torch.load(mmap=True)": [], "checkpoint_step": []}
        for _ in range(args.repeats):
            for name, read in (("torch.load(mmap=True)", old), ("checkpoint_step", checkpoint_step)):
                began = time.perf_counter()
                for f in files:
                    read(f)
                times[name].append(time.perf_counter() - began)
    tensors = len(state) * 3
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.files} checkpoints of {tensors} tensors ({sum(v.numel() for v in state.values()):,} parameters "
          f"+ Adam state); medians of {args.repeats}:")
    for name, value in medians.items():
        print(f"  {name:24s} {1000 * value / args.files:8.1f} ms per file")
    print(f"  speed-up: {medians['torch.load(mmap=True)'] / medians['checkpoint_step']:.1f}x")


if __name__ == "__main__":
    main()
