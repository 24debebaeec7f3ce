"""Costs of TempoTokens, as ratios measured in one command.

1. Training memory: peak resident memory of one training step (forward + backward through the
   frozen UNet3D to the mapper) with avgen's UNet3D gradient checkpointing vs without, each in a
   fresh subprocess, at the ``small`` scale (UNet3D channels 64/128/256/256, two layers per block,
   16 frames of 64×64). Target ≤ 0.6.
2. Sampling: the share of ``TempoTokens.generate`` time spent outside the UNet3D (audio encoder,
   mapper, windows, pooling, text encoder, VAE decoding), at the ``tiny`` and ``small`` scales.

    .venv/bin/python benchmarks/tempotokens_costs.py [--steps 10] [--only memory|sampling]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from step_memory import (  # noqa: E402
    ForwardTimer,
    checkpointing_line,
    compare_checkpointing,
    measure_training_step,
)

SCALES = {
    "tiny": {"t2v": "tiny:zeroscope", "clip": {"seconds": 1.0, "fps": 8, "height": 32, "width": 32,
                                               "sample_rate": 16000}},
    "small": {"t2v": "tiny:zeroscope_small", "clip": {"seconds": 2.0, "fps": 8, "height": 64, "width": 64,
                                                      "sample_rate": 16000}},
}


def build(scale: str, tiny_dir: str, checkpointing: bool = False):
    from avgen.systems.tempotokens import TempoTokens

    s = SCALES[scale]
    return TempoTokens(t2v={"base": s["t2v"]}, encoder={"path": "tiny:beats"}, clip=s["clip"], tiny_dir=tiny_dir,
                       mapper={"hidden_dims": [64, 64, 32]}, gradient_checkpointing=checkpointing,
                       optimizer=functools.partial(torch.optim.AdamW, lr=1e-5))


def memory_child(scale: str, tiny_dir: str, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    system = build(scale, tiny_dir, checkpointing).train()
    from avgen.media import frame_count

    clip = SCALES[scale]["clip"]
    frames = frame_count(clip["seconds"], clip["fps"])
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(1, frames, 3, clip["height"], clip["width"], generator=g) * 2 - 1,
             "audio": torch.rand(1, round(clip["seconds"] * clip["sample_rate"]), generator=g) * 0.6 - 0.3,
             "caption": ["a dog barks"], "key": ["a"]}
    return measure_training_step(system, batch)


def bench_sampling(scale: str, tiny_dir: str, steps: int) -> dict:
    system = build(scale, tiny_dir).eval()
    clip = SCALES[scale]["clip"]
    audio = torch.rand(2, round(clip["seconds"] * clip["sample_rate"]), generator=torch.Generator().manual_seed(0))
    timer = ForwardTimer(system.unet)
    system.generate(audio, ["", ""], steps=2)  # warm-up
    shares = []
    for _ in range(3):
        timer.reset()
        start = time.perf_counter()
        system.generate(audio, ["", ""], steps=steps)
        total = time.perf_counter() - start
        shares.append(1 - timer.seconds / total)
    shares.sort()
    return {"scale": scale, "steps": steps, "outside_unet_share": shares[1], "samples": shares}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            report["memory"] = compare_checkpointing(__file__, "small", tiny_dir)
            print(checkpointing_line(report["memory"]))
        if args.only in (None, "sampling"):
            for scale in ("tiny", "small"):
                r = report[f"sampling_{scale}"] = bench_sampling(scale, tiny_dir, args.steps)
                print(f"sampling ({scale}, {args.steps} DPM-Solver++ steps, CFG, batch 2): share of time outside the "
                      f"UNet3D = {r['outside_unet_share']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
