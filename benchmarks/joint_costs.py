"""Costs of the joint audio+video system (SVG baseline), as ratios measured in one command.

1. Sampling overhead: ``JointAudioVideo.generate`` with freshly initialised connectors and CMC-PE
   blocks vs the two base denoising loops run one after the other (the same frozen U-Nets called
   directly, no cross-modal modules), same weights, DDIM steps, batched CFG and decoders. Target ≤ 1.15.
   Printed for the whole sampler and for the denoising loops alone (decoding subtracted).
2. Training memory: peak resident memory of one training step (forward + backward) with gradient
   checkpointing vs without, each in a fresh subprocess. Target ≤ 0.6.
3. Checkpoint size: ``last.ckpt`` written by ``python -m avgen fit`` vs the bytes of the trainable
   parameters, split into its parts (weights, optimizer moments); and the exported safetensors.
   Target ≤ 1.1. The whole-model bytes (what the public code saves) are printed for comparison.

Scales: ``tiny`` (the test twins) and ``small`` (wider twins — U-Net channels 64/128/256/256, two
layers per block — at 16 frames of 64×64 and 2 s of audio), where the U-Nets dominate as at paper
scale.

    .venv/bin/python benchmarks/joint_costs.py [--scale small] [--steps 10] [--repeats 3] [--only sampling]
                                               [--attention-span full|frame]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from step_memory import measure_training_step  # noqa: E402

SCALES = {
    "tiny": {"video": "tiny:animatediff", "audio": "tiny:audioldm",
             "clip": {"seconds": 1.0, "fps": 8, "height": 32, "width": 32, "sample_rate": 16000},
             "connector": {"channels": 16, "out_dim": 32, "num_heads": 2, "norm_groups": 8},
             "block": {"head_dim": 16, "norm_groups": 8}},
    "small": {"video": "tiny:animatediff_small", "audio": "tiny:audioldm_small",
              "clip": {"seconds": 2.0, "fps": 8, "height": 64, "width": 64, "sample_rate": 16000},
              "connector": {"channels": 64, "out_dim": 256, "num_heads": 4, "norm_groups": 8},
              "block": {"head_dim": 32, "norm_groups": 8}},
}
PROMPTS = ["a red ball drops onto a wooden floor", "a metal cube falls onto glass"]


def build(scale: str, tiny_dir: str, attention_span: str = "full", **kwargs):
    from avgen.systems.joint import JointAudioVideo

    s = SCALES[scale]
    return JointAudioVideo(video={"base": s["video"], "motion_adapter": s["video"], "vae": None},
                           audio={"base": s["audio"]}, clip=s["clip"], tiny_dir=tiny_dir,
                           connector=s["connector"], block={**s["block"], "attention_span": attention_span},
                           optimizer=functools.partial(torch.optim.Adam, lr=1e-5), **kwargs)


# ---------------------------------------------------------------------------------- 1. sampling
@torch.no_grad()
def base_loops(system, prompts, steps: int, seed: int = 0):
    """The two base models' own DDIM + CFG loops, one after the other (no connectors, no CMC-PE)."""
    import copy

    from avgen.backbones.animatediff import decode_video
    from avgen.backbones.audioldm import decode_audio
    from avgen.diffusion import classifier_free_guidance, ddim_step, final_alpha_cumprod

    b = len(prompts)
    shape_v, shape_a = system.latent_shapes(b)
    noise = [system._noise(shape_v[1:], shape_a[1:], seed + i) for i in range(b)]
    text_v, text_a = system.encode_text(prompts)
    null_v, null_a = system.encode_text([""] * b)
    ctx_v, ctx_a = torch.cat([null_v, text_v]), torch.cat([null_a, text_a])
    outputs = []
    for modality in ("video", "audio"):
        backbone = system.video if modality == "video" else system.audio
        scheduler = copy.deepcopy(backbone.scheduler)
        scheduler.set_timesteps(steps)
        grid = [int(t) for t in scheduler.timesteps]
        alphas = system.video_alphas if modality == "video" else system.audio_alphas
        final = final_alpha_cumprod(backbone.scheduler)
        x = torch.stack([n[0 if modality == "video" else 1] for n in noise])
        for k, t in enumerate(grid):
            prev = grid[k + 1] if k + 1 < len(grid) else -1
            xx = torch.cat([x, x])
            tt = torch.full((2 * b,), t, dtype=torch.long)
            if modality == "video":
                out = backbone.unet(xx, tt, encoder_hidden_states=ctx_v.repeat_interleave(x.shape[2], dim=0)).sample
                out = classifier_free_guidance(*out.chunk(2), 7.5)
            else:
                out = backbone.unet(xx, tt, encoder_hidden_states=None, class_labels=ctx_a).sample
                out = classifier_free_guidance(*out.chunk(2), 2.5)
            x, _ = ddim_step(backbone.scheduler.config.prediction_type, x, out, alphas, t, prev, final)
        outputs.append(x)
    return decode_video(system.video, outputs[0]), decode_audio(system.audio, outputs[1], system.num_samples)


def decode_only(system, prompts):
    from avgen.backbones.animatediff import decode_video
    from avgen.backbones.audioldm import decode_audio

    shape_v, shape_a = system.latent_shapes(len(prompts))
    with torch.no_grad():
        decode_video(system.video, torch.randn(shape_v))
        decode_audio(system.audio, torch.randn(shape_a), system.num_samples)


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def bench_sampling(scale: str, tiny_dir: str, steps: int, repeats: int, attention_span: str = "full") -> dict:
    system = build(scale, tiny_dir, attention_span).eval()
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in system.denoiser.trainable_modules().items()}
    base_params = sum(p.numel() for p in system.video.unet.parameters()) + sum(
        p.numel() for p in system.audio.unet.parameters())
    joint_gen = functools.partial(system.generate, PROMPTS, steps=steps, gamma=1.5, guidance_video=7.5,
                                  guidance_audio=2.5, seed=0)
    base_gen = functools.partial(base_loops, system, PROMPTS, steps)
    joint_gen(), base_gen(), decode_only(system, PROMPTS)  # warm-up
    ratios, loop_ratios, rows = [], [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both
        t_joint, t_base, t_dec = timed(joint_gen), timed(base_gen), timed(decode_only, system, PROMPTS)
        ratios.append(t_joint / t_base)
        loop_ratios.append((t_joint - t_dec) / (t_base - t_dec))
        rows.append({"joint_s": t_joint, "base_s": t_base, "decode_s": t_dec})
    return {"scale": scale, "steps": steps, "batch": len(PROMPTS), "attention_span": attention_span, "ratio": statistics.median(ratios),
            "loop_ratio": statistics.median(loop_ratios), "samples": rows, "added_params": params,
            "base_unet_params": base_params}


# ---------------------------------------------------------------------------------- 2. memory
def memory_child(scale: str, tiny_dir: str, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    system = build(scale, tiny_dir, gradient_checkpointing=checkpointing).train()
    from avgen.media import frame_count

    clip = SCALES[scale]["clip"]
    frames = frame_count(clip["seconds"], clip["fps"])
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(2, frames, 3, clip["height"], clip["width"], generator=g) * 2 - 1,
             "audio": torch.rand(2, round(clip["seconds"] * clip["sample_rate"]), generator=g) * 0.6 - 0.3,
             "caption": PROMPTS, "key": ["a", "b"]}
    system.self_condition_prob = 0.0  # the same single pass in both runs
    return {"checkpointing": checkpointing, **measure_training_step(system, batch)}


def bench_memory(scale: str, tiny_dir: str) -> dict:
    results = {}
    for checkpointing in (False, True):
        proc = subprocess.run([sys.executable, __file__, "--child-memory", scale, "--tiny-dir", tiny_dir]
                              + (["--checkpointing"] if checkpointing else []),
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        results[checkpointing] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, ckpt = results[False], results[True]
    return {"scale": scale, "ratio": ckpt["step_bytes"] / plain["step_bytes"],
            "time_ratio": ckpt["seconds"] / plain["seconds"], "plain": plain, "checkpointed": ckpt,
            "same_loss": abs(plain["loss"] - ckpt["loss"]) < 1e-5}


# ---------------------------------------------------------------------------------- 3. checkpoint
def bench_checkpoint(workdir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "AVGEN_DATA_DIR": str(workdir / "data")}
    run = workdir / "fit"
    subprocess.run([sys.executable, "-m", "avgen", "fit", "experiment=joint_cmcpe", "scale=tiny", "trainer.max_steps=2",
                    "model.validation.samples=0", f"hydra.run.dir={run}"], cwd=workdir, env=env, check=True,
                   capture_output=True)
    ckpt_path = run / "checkpoints" / "last.ckpt"
    subprocess.run([sys.executable, "-m", "avgen", "export", f"ckpt_path={ckpt_path}", f"export.dir={workdir / 'export'}",
                    f"hydra.run.dir={workdir / 'export_run'}"], cwd=workdir, env=env, check=True, capture_output=True)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)

    def nbytes(tensors) -> int:
        total = 0
        for v in tensors:
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, dict):
                total += nbytes(v.values())
            elif isinstance(v, (list, tuple)):
                total += nbytes(v)
        return total

    from avgen.commands import load_system

    model, _ = load_system(ckpt_path)
    trainable = sum(p.numel() * p.element_size() for _, p in model.trainable_parameters())
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = nbytes(ckpt["state_dict"].values())
    optimizer = nbytes([s for s in ckpt["optimizer_states"]])
    file_size = ckpt_path.stat().st_size
    # the trained weights of the export: every component's model.safetensors
    exported = sum(f.stat().st_size for f in (workdir / "export").glob("*/model.safetensors"))
    return {"trainable_bytes": trainable, "whole_model_bytes": whole, "ckpt_file_bytes": file_size,
            "ckpt_weights_bytes": weights, "ckpt_optimizer_bytes": optimizer, "export_bytes": exported,
            "ratio_file": file_size / trainable, "ratio_weights": weights / trainable,
            "ratio_export": exported / trainable, "ratio_whole_model": whole / trainable}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["sampling", "memory", "checkpoint"], default=None)
    parser.add_argument("--tiny-dir", default=None)
    parser.add_argument("--attention-span", choices=["full", "frame"], default="full",
                        help="model.block.attention_span of the sampled model")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.child_memory:
        print(json.dumps(memory_child(args.child_memory, args.tiny_dir, args.checkpointing)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = args.tiny_dir or str(Path(tmp) / "tiny")
        report = {}
        if args.only in (None, "sampling"):
            r = report["sampling"] = bench_sampling(args.scale, tiny_dir, args.steps, args.repeats,
                                                          args.attention_span)
            print(f"sampling overhead ({r['scale']}, attention_span={r['attention_span']}, {r['steps']} steps, batch {r['batch']}, CFG): joint/base = "
                  f"{r['ratio']:.3f} (denoising loops only {r['loop_ratio']:.3f}), target <= 1.15: "
                  f"{'PASS' if r['ratio'] <= 1.15 else 'MISS'}")
            print(f"  added modules: {r['added_params']}; base U-Nets: {r['base_unet_params']:,} parameters")
        if args.only in (None, "memory"):
            r = report["memory"] = bench_memory(args.scale, tiny_dir)
            print(f"training-step memory ({r['scale']}): checkpointed/plain = {r['ratio']:.3f} "
                  f"({r['checkpointed']['step_bytes'] / 2**20:.0f} MiB vs {r['plain']['step_bytes'] / 2**20:.0f} MiB), "
                  f"target <= 0.6: {'PASS' if r['ratio'] <= 0.6 else 'MISS'}; time ratio {r['time_ratio']:.2f}; "
                  f"same loss: {r['same_loss']}")
        if args.only in (None, "checkpoint"):
            r = report["checkpoint"] = bench_checkpoint(Path(tmp))
            print(f"checkpoint (tiny): weights/trainable = {r['ratio_weights']:.3f}, export/trainable = "
                  f"{r['ratio_export']:.3f}, whole last.ckpt/trainable = {r['ratio_file']:.3f} (of which Adam "
                  f"moments {r['ckpt_optimizer_bytes'] / r['trainable_bytes']:.2f}x); whole model / trainable = "
                  f"{r['ratio_whole_model']:.1f} (what saving whole models costs); target <= 1.1 on weights: "
                  f"{'PASS' if r['ratio_weights'] <= 1.1 else 'MISS'}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
