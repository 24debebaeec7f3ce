"""Costs of VTA-LDM, as ratios measured in one command.

1. Training memory: peak resident memory of one training step (CLIP4Clip features → φ → U-Net
   forward + backward, AudioLDM VAE encoding) with the U-Net's gradient checkpointing vs without, each
   in a fresh subprocess. Target ≤ 0.6. Scale ``small``: the paper's U-Net layout (three cross-attention
   down blocks + one plain, two layers per block, linear projection, upcast attention) with channels
   64/128/128/256 and a 256-d context, 4 s clips padded to 5.12 s (512 mel frames, 128 latent frames);
   ``paper``: the paper's U-Net itself (320/640/640/1280, heads 5/10/20/20, context 2048) at 2.56 s
   (random weights; slow on a CPU). Encoder and codec are the tiny twins at every scale.
2. Sampling: the share of ``VTALDM.generate`` time spent outside the U-Net (frame encoder, φ, VAE
   decoding, HiFi-GAN), measured with ``--steps`` DDIM steps and extrapolated to the paper's 300 DDPM
   steps (the same U-Net calls per step).

    .venv/bin/python benchmarks/vta_ldm_costs.py [--scale small|paper] [--steps 10] [--only memory|sampling]
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

PAPER_UNET = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
              "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
              "block_out_channels": [320, 640, 640, 1280], "attention_head_dim": [5, 10, 20, 20],
              "layers_per_block": 2, "cross_attention_dim": 2048, "use_linear_projection": True,
              "upcast_attention": True}
SCALES = {
    "tiny": {"unet": {"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "block_out_channels": [32, 64],
                      "attention_head_dim": [2, 4], "layers_per_block": 1, "cross_attention_dim": 32,
                      "norm_num_groups": 8},
             "clip": {"seconds": 1.0, "fps": 2, "height": 64, "width": 64, "sample_rate": 16000},
             "audio_seconds": 1.28},
    "small": {"unet": {**PAPER_UNET, "block_out_channels": [64, 128, 128, 256], "attention_head_dim": [1, 2, 4, 4],
                       "cross_attention_dim": 256, "norm_num_groups": 32},
              "clip": {"seconds": 4.0, "fps": 2, "height": 64, "width": 64, "sample_rate": 16000},
              "audio_seconds": 5.12},
    "paper": {"unet": PAPER_UNET, "clip": {"seconds": 2.0, "fps": 2, "height": 64, "width": 64, "sample_rate": 16000},
              "audio_seconds": 2.56},
}
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False, "steps_offset": 1}


def build(scale: str, tiny_dir: str, checkpointing: bool = False):
    from avgen.systems.vta_ldm import VTALDM

    s = SCALES[scale]
    return VTALDM(encoder={"path": "tiny:clip4clip", "fps": 2}, audio={"base": "tiny:audioldm",
                                                                      "seconds": s["audio_seconds"]},
                  unet=s["unet"], noise_scheduler=NOISE_SCHEDULE, clip=s["clip"], scale="tiny",
                  tiny_dir=tiny_dir, gradient_checkpointing=checkpointing, cond_drop_prob=0.0,
                  optimizer=functools.partial(torch.optim.AdamW, lr=6e-5))


def batch_for(scale: str, b: int = 1) -> dict:
    clip = SCALES[scale]["clip"]
    g = torch.Generator().manual_seed(0)
    frames = round(clip["seconds"] * clip["fps"])
    return {"video": torch.rand(b, frames, 3, clip["height"], clip["width"], generator=g) * 2 - 1,
            "audio": torch.rand(b, round(clip["seconds"] * clip["sample_rate"]), generator=g) * 0.6 - 0.3,
            "caption": ["a dog barks"] * b, "key": [str(i) for i in range(b)]}


def memory_child(scale: str, tiny_dir: str, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    system = build(scale, tiny_dir, checkpointing).train()
    return measure_training_step(system, batch_for(scale))


def bench_sampling(scale: str, tiny_dir: str, steps: int) -> dict:
    system = build(scale, tiny_dir).eval()
    video = batch_for(scale, b=2)["video"]
    timer = ForwardTimer(system.unet)
    system.generate(video, steps=2, sampler="ddim")  # warm-up
    samples = []
    for _ in range(3):
        timer.reset()
        start = time.perf_counter()
        system.generate(video, steps=steps, sampler="ddim")
        total = time.perf_counter() - start
        samples.append((total - timer.seconds, timer.seconds / steps))  # (outside, one step's U-Net time)
    samples.sort(key=lambda s: s[0] / (s[0] + steps * s[1]))
    outside, per_step = samples[1]
    return {"scale": scale, "steps": steps, "outside_unet_share": outside / (outside + steps * per_step),
            "outside_unet_share_at_300": outside / (outside + 300 * per_step), "outside_s": outside,
            "unet_step_s": per_step}


def describe_sampling(r: dict, steps: int) -> str:
    return (f"sampling ({r['scale']}, {steps} DDIM steps, CFG, batch 2): share of time outside the U-Net = "
            f"{r['outside_unet_share']:.3f}; at the paper's 300 steps ≈ {r['outside_unet_share_at_300']:.4f} "
            f"(outside {r['outside_s']:.2f} s, U-Net {r['unet_step_s'] * 1000:.0f} ms per step)")


def main() -> int:
    return costs_main(__doc__, __file__, memory_child, bench_sampling, describe_sampling, scales=("small", "paper"))


if __name__ == "__main__":
    sys.exit(main())
