"""Does a trained joint model use the other modality? Paired against swapped clips, same noise.

For the SVG baseline (Hayakawa et al. 2024) the connectors and CMC-PE blocks are what lets the audio follow the
video's motion and back; if the audio U-Net's prediction does not change when the video changes, no sampler or
timestep adjustment can make the two agree. Measured on held-out clips of the checkpoint's own data:

1. **Denoising loss, paired vs swapped** (:func:`modality_use`): the training loss of Sec. III-D
   (:meth:`avgen.systems.joint.JointAudioVideo.diffusion_loss`) of each batch as it is, with each clip's video
   replaced by another clip's (the audio loss then says how much the audio used its own video) and with each
   clip's audio replaced (the video loss, likewise). Every draw (posterior ε, condition dropout, timesteps, noise,
   self-conditioning) comes from one generator seeded per batch and repeat, so the three losses differ only by the
   swapped modality. Reported: the mean losses, the swapped-minus-paired difference with a paired bootstrap 95 %
   interval (scipy's ``bootstrap``, percentile, 10,000 resamples, seeded). A model that uses the other modality
   has a positive difference; zero-initialised cross-modal blocks give exactly 0.
2. **Connector features** (:func:`connector_variation`): CMC-PE reads the other modality's connector output
   L2-normalised per frame, so only its direction carries information. Per modality at timestep ``--timestep``
   on the clips' latents: the features' standard deviation over time relative to their norm (0: every frame
   says the same) and the mean cosine between the features of two different clips (1: every clip says the same).

    .venv/bin/python benchmarks/joint_modality_use.py runs/demo/fit/checkpoints/last.ckpt [--clips 32] [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def held_out_batches(system, cfg, clips: int, batch_size: int = 4, split: str = "val") -> list[dict[str, Any]]:
    """``clips`` clips of the checkpoint's data ``split`` (``val`` or ``test``) as model batches of
    ``batch_size`` (video (B, F, 3, H, W) in [-1, 1], audio (B, S), captions), read through the datamodule.

    Raises:
        ValueError: the split holds fewer than ``clips`` clips, or ``batch_size`` does not divide ``clips``."""
    from avgen.commands import build_datamodule

    if clips % batch_size:
        raise ValueError(f"--clips {clips} is not a multiple of the batch size {batch_size}")
    dm = build_datamodule(cfg)
    dm.setup("fit" if split == "val" else "test")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    video, audio, captions = [], [], []
    for raw in loader:
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(raw, 0), 0)
        video.append(batch["video"])
        audio.append(batch["audio"])
        captions += list(batch["caption"])
        if len(captions) >= clips:
            break
    if len(captions) < clips:
        raise ValueError(f"the {split} split has {len(captions)} clips; asked for --clips {clips}")
    video, audio = torch.cat(video)[:clips], torch.cat(audio)[:clips]
    return [{"video": video[i:i + batch_size], "audio": audio[i:i + batch_size],
             "caption": captions[i:i + batch_size]} for i in range(0, clips, batch_size)]


def _interval(diff: np.ndarray, seed: int = 0) -> list[float]:
    from scipy.stats import bootstrap

    if len(diff) < 2 or np.ptp(diff) == 0:
        return [float(diff.mean())] * 2
    ci = bootstrap((diff,), np.mean, vectorized=True, n_resamples=10_000, confidence_level=0.95,
                   method="percentile", random_state=seed).confidence_interval
    return [float(ci.low), float(ci.high)]


@torch.no_grad()
def modality_use(system, batches: list[dict[str, Any]], repeats: int = 4, seed: int = 0) -> dict[str, Any]:
    """Item 1 of the module docstring. ``batches``: model batches of at least 2 clips; the swap gives clip i the
    video (or audio) of clip i+1 of its batch (cyclically). Returns per direction the mean paired and swapped
    losses (floats) and the difference's mean and 95 % interval.

    Raises:
        ValueError: a batch of fewer than 2 clips (nothing to swap with)."""
    rows: dict[str, list[float]] = {k: [] for k in ("audio_paired", "audio_video_swapped", "video_paired",
                                                     "video_audio_swapped")}
    was_training = system.training
    system.eval()
    try:
        for j, batch in enumerate(batches):
            if len(batch["caption"]) < 2:
                raise ValueError(f"batch {j} has {len(batch['caption'])} clip(s); swapping needs at least 2")
            variants = {"paired": batch,
                        "video_swapped": {**batch, "video": torch.roll(batch["video"], 1, dims=0)},
                        "audio_swapped": {**batch, "audio": torch.roll(batch["audio"], 1, dims=0)}}
            for r in range(repeats):
                losses = {name: system.diffusion_loss(b, torch.Generator().manual_seed(seed + 1000 * j + r))
                          for name, b in variants.items()}
                rows["audio_paired"].append(float(losses["paired"]["loss_audio"]))
                rows["audio_video_swapped"].append(float(losses["video_swapped"]["loss_audio"]))
                rows["video_paired"].append(float(losses["paired"]["loss_video"]))
                rows["video_audio_swapped"].append(float(losses["audio_swapped"]["loss_video"]))
    finally:
        system.train(was_training)
    out: dict[str, Any] = {"batches": len(batches), "repeats": repeats}
    for modality, other in (("audio", "video"), ("video", "audio")):
        paired = np.asarray(rows[f"{modality}_paired"])
        swapped = np.asarray(rows[f"{modality}_{other}_swapped"])
        diff = swapped - paired
        out[f"{modality}_loss"] = {"paired": float(paired.mean()), f"{other}_swapped": float(swapped.mean()),
                                   "swapped_minus_paired": float(diff.mean()),
                                   "relative": float(diff.mean() / paired.mean()), "ci95": _interval(diff, seed)}
    return out


@torch.no_grad()
def connector_variation(system, batches: list[dict[str, Any]], timestep: int = 100, seed: int = 0
                        ) -> dict[str, Any]:
    """Item 2 of the module docstring: per modality, over all clips of ``batches``, the connector features'
    std over time / norm and the mean cosine between clip i's and clip i+1's features (frame by frame)."""
    import torch.nn.functional as F

    from avgen.diffusion import add_noise

    generator = torch.Generator().manual_seed(seed)
    video, audio = [], []
    for batch in batches:
        z_v, z_a = system.encode_batch(batch, generator)
        t = torch.full((z_v.shape[0],), int(timestep), device=z_v.device)
        x_v = add_noise(z_v, torch.randn(z_v.shape, generator=generator).to(z_v.device), system.video_alphas, t)
        x_a = add_noise(z_a, torch.randn(z_a.shape, generator=generator).to(z_a.device), system.audio_alphas, t)
        f_v, f_a = system.denoiser.connect(x_v.float(), x_a.float(), t, t, None, None)
        video.append(f_v.float())
        audio.append(f_a.float())
    out = {}
    for name, features in (("video", torch.cat(video)), ("audio", torch.cat(audio))):
        norm = features.norm(dim=-1)  # (N, T)
        out[name] = {"frames": int(features.shape[1]), "dim": int(features.shape[2]),
                     "temporal_std_over_norm": float((features.std(dim=1).norm(dim=-1) / norm.mean(dim=1)).mean()),
                     "cosine_between_clips": float(F.cosine_similarity(features, torch.roll(features, 1, 0),
                                                                       dim=-1).mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a joint model checkpoint written by fit")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=4, help="noise draws per batch")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--timestep", type=int, default=100, help="noise level of the connector measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from avgen.commands import load_system

    if not args.checkpoint.is_file():
        sys.exit(f"{args.checkpoint}: no such checkpoint")
    system, cfg = load_system(args.checkpoint)
    if not hasattr(system, "denoiser") or not hasattr(system.denoiser, "connect"):
        sys.exit(f"{args.checkpoint}: not a joint (SVG baseline) checkpoint")
    batches = held_out_batches(system, cfg, args.clips, args.batch_size, args.split)
    report = {"checkpoint": str(args.checkpoint), "clips": args.clips,
              "use": modality_use(system, batches, args.repeats),
              "connector": connector_variation(system, batches, args.timestep)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
