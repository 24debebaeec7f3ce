"""Train a wider mini AnimateDiff pair on a lent GPU, in one bounded call: issue 23's capacity question.

The demo's timing checks need a video generator whose samples move like the synthetic data (real windows: 0.91
optical-flow peaks per 8-frame clip; the committed 3.0M-parameter pair: 1.3-1.8 whatever its objective or sampler,
benchmarks/README.md, ``mini_video_motion.py``). The next lever is width, which costs hours per stage on 2 CPU cores;
on a GPU the same recipe (``python -m avgen pretrain-twins``) takes minutes. This script runs it there:

1. with ``--frame-latents 16``: the 16x16 frame VAE (``block_out_channels=[32, 64]``, two down blocks: 32x32 RGB ->
   4x16x16), its ``frames_vae`` stage only, the mel VAE and vocoder adopted from the committed codecs
   (``pretrain_twins.start_from``); with ``--frame-latents 8`` (default) the committed codecs;
2. the three AnimateDiff stages (image U-Net, motion modules, both together) at ``--width`` base channels
   (``[w, w, 2w, 2w]``; the committed pair: 32), the audio U-Net adopted from the committed generators;
3. both on synthetic_hits' clips rendered in memory (``pretrain_twins.clip_source=rendered``): no store, no PyAV, no
   librosa on the GPU machine (onsets are reported as unmeasured there);
4. each twins folder copied to ``--out`` (the device's ``$OUT``), to be measured back here with
   ``AVGEN_MINI_WEIGHTS=<out>/codecs AVGEN_MINI_GENERATORS=<out>/generators python benchmarks/mini_video_motion.py``.

Every stage resumes from its checkpoints, so a call cut short by its time limit continues on the next call with the
same arguments (while the machine is warm). ``--dry-run`` prints the commands; ``--smoke`` runs them with 2 steps per
stage on any machine (the CPU path; a check that the commands compose and run, nothing learned).

Usage on a lent GPU (torch, lightning, transformers there; the rest as wheels)::

    make gpu-wheels   # here; carry wheels/ with the working tree (the committed codecs and generators are in it)
    pip install --no-index --no-deps wheels/*.whl && \\
        PYTHONPATH=. python benchmarks/gpu_generators.py --out $OUT/gen --width 64 --frame-latents 16

Steps per stage default to the committed recipe's (image 6,000, motion 6,000, video 2,000 with the motion weight
mu = 30 of the 16x16 pair; ``--steps image,motion,video`` to change them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GEN = "pretrain_twins.generators"
#: the committed recipe's step counts (configs/part/generators.yaml), the video stage as the 16x16 pair trained it
DEFAULT_STEPS = (6000, 6000, 2000)


def widths(base: int) -> str:
    """The SD1.5-layout block widths at ``base`` channels: ``[w, w, 2w, 2w]`` (the committed pair: 32)."""
    if base < 8 or base % 8:
        raise SystemExit(f"--width {base}: expected a multiple of 8 (the U-Net's group norm has 8 groups)")
    return f"[{base},{base},{2 * base},{2 * base}]"


def commands(runs: Path, width: int, frame_latents: int, steps: tuple[int, int, int], trainer: str,
             smoke: bool) -> list[tuple[str, list[str]]]:
    """The recipe's command lines, in order: (name, argv)."""
    python = [sys.executable, "-m", "avgen", "pretrain-twins"]
    common = ["pretrain_twins.clip_source=rendered", f"trainer={trainer}", f"paths.data_dir={runs / 'data'}",
              "pretrain_twins.checkpoint_every=500"]
    small: dict[str, list[str]] = {"codecs": [], "generators": []}
    if smoke:  # 2 steps per stage, small measurements: the path, not the result
        data = ["data.prepare.clips.train=4", "data.prepare.clips.test=2", "pretrain_twins.checkpoint_every=1",
                "pretrain_twins.evaluate.clips=2"]
        small = {"codecs": data, "generators": [
            *data, "pretrain_twins.evaluate.samples=2", "pretrain_twins.evaluate.sampling_steps=2",
            "pretrain_twins.evaluate.classifier_steps=2", "pretrain_twins.evaluate.loss_batches=1",
            "pretrain_twins.evaluate.loss_batch_size=2"]}
    out_list = []
    codecs_dir = "avgen/backbones/mini_weights"
    if frame_latents == 16:
        codecs_run = runs / "codecs16"
        vae = "pretrain_twins.codecs.frames_vae"
        out_list.append(("codecs16", python + [
            "part=codecs", *common, *small["codecs"], f"hydra.run.dir={codecs_run}",
            "pretrain_twins.start_from=avgen/backbones/mini_weights",
            "pretrain_twins.start_from_components=[mel_vae,vocoder]", "pretrain_twins.stages=[frames_vae]",
            f"{vae}.model.block_out_channels=[32,64]",
            f"{vae}.model.down_block_types=[DownEncoderBlock2D,DownEncoderBlock2D]",
            f"{vae}.model.up_block_types=[UpDecoderBlock2D,UpDecoderBlock2D]",
            *([f"{vae}.steps=2", f"{vae}.batch_size=2"] if smoke else [])]))
        codecs_dir = str(codecs_run / "twins")
    elif frame_latents != 8:
        raise SystemExit(f"--frame-latents {frame_latents}: expected 8 (the committed frame VAE) or 16")
    w = widths(width)
    image, motion, video = (2, 2, 2) if smoke else steps
    out_list.append(("generators", python + [
        "part=generators", *common, *small["generators"], f"hydra.run.dir={runs / 'generators'}",
        f"pretrain_twins.codecs_dir={codecs_dir}",
        "pretrain_twins.start_from=avgen/backbones/mini_generators",
        "pretrain_twins.start_from_components=[audioldm_unet]",
        "pretrain_twins.stages=[animatediff_image,animatediff_motion,animatediff_video]",
        f"{GEN}.animatediff_image.model.block_out_channels={w}",
        f"{GEN}.animatediff_image.model.attention_head_dim={max(2, width // 16)}",
        f"{GEN}.animatediff_motion.model.block_out_channels={w}",
        f"{GEN}.animatediff_image.steps={image}", f"{GEN}.animatediff_motion.steps={motion}",
        f"{GEN}.animatediff_video.steps={video}", f"{GEN}.animatediff_video.motion_weight=30",
        *([f"{GEN}.{s}.batch_size=2" for s in ("animatediff_image", "animatediff_motion", "animatediff_video")]
          if smoke else [])]))
    return out_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="where the twins folders are copied (the device's $OUT)")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/avgen_gpu_generators"),
                        help="run folders (kept between calls on a warm machine: stages resume)")
    parser.add_argument("--width", type=int, default=64, help="base channels of the image U-Net (committed: 32)")
    parser.add_argument("--frame-latents", type=int, default=8, choices=(8, 16))
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="image,motion,video stage steps")
    parser.add_argument("--trainer", default=None, help="default: gpu with CUDA, else cpu")
    parser.add_argument("--smoke", action="store_true", help="2 steps per stage (any machine): the path only")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    try:
        steps = tuple(int(s) for s in args.steps.split(","))
    except ValueError:
        steps = ()
    if len(steps) != 3 or min(steps) < 1:
        raise SystemExit(f"--steps {args.steps}: expected three positive integers, image,motion,video")
    trainer = args.trainer
    if trainer is None:
        import torch

        trainer = "gpu" if torch.cuda.is_available() else "cpu"
    plan = commands(args.runs, args.width, args.frame_latents, steps, trainer, args.smoke)
    for name, argv_ in plan:
        print(f"[{name}] {shlex.join(argv_)}", flush=True)
    if args.dry_run:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name, argv_ in plan:
        began = time.monotonic()
        done = subprocess.run(argv_, cwd=REPO, env=env)
        print(f"[{name}] exit {done.returncode} after {time.monotonic() - began:.0f} s", flush=True)
        if done.returncode != 0:
            return done.returncode
        run_dir = Path(next(a.split("=", 1)[1] for a in argv_ if a.startswith("hydra.run.dir=")))
        target = args.out / ("codecs" if name == "codecs16" else "generators")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run_dir / "twins", target)
        for stage_sessions in run_dir.glob("*/sessions.json"):  # speed on this device, per stage
            shutil.copy(stage_sessions, target / f"{stage_sessions.parent.name}.sessions.json")
        print(f"[{name}] twins copied to {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
