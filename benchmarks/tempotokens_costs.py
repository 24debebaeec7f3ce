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

import functools
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from step_memory import (  # noqa: E402
    ForwardTimer,
    costs_main,
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


def describe_sampling(r: dict, steps: int) -> str:
    return (f"sampling ({r['scale']}, {steps} DPM-Solver++ steps, CFG, batch 2): share of time outside the UNet3D = "
            f"{r['outside_unet_share']:.3f}")


def main() -> int:
    return costs_main(__doc__, __file__, memory_child, bench_sampling, describe_sampling, scales=("small",))


if __name__ == "__main__":
    sys.exit(main())
