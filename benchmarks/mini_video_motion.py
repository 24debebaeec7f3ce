"""Does the mini video generator draw the falls? Motion statistics of generated and real synthetic clips.

``make demo``'s first check pairs the samples' audio onsets with the optical-flow peaks of the *generated* frames, so
it can pass only if the generated videos move where an object lands. This script measures, on held-out captions:

* **real**: 1-s windows of 2-s clips, as the ``scale=mini`` data serves them (``mini_demo.real_clips``);
* **real through the frame VAE**: the same windows encoded (posterior mean) and decoded by the mini frame VAE, the
  floor the codec sets;
* **generated**: the joint model's video (DDIM with each ``--eta``; 0 is the paper's sampler) at zero-initialised
  adapters, i.e. the base generator (AnimateDiff's mini
  image U-Net + motion modules, ``experiment=joint_cmcpe scale=mini``), or a trained checkpoint (``--ckpt``), from
  the seeded noise and, for each ``--shared-noise r`` > 0, from PYoCo's mixed noise prior (Ge et al. 2023,
  "Preserve Your Own Correlation", Eq. 4 with α² = r / (1 − r)): ε_f = √r·ε_shared + √(1 − r)·ε_f, one ε_shared per
  clip for all its frames, so each frame is still a standard normal but frames correlate by r;
* any ``--samples-dir`` folder of ``python -m avgen sample`` (e.g. the demo's);
* with ``--sdedit t0 ...``, **where the generator loses a clip's timing**: SDEdit (Meng et al. 2022) from the real
  windows. Each window's frame-VAE posterior mean (scaled) is noised to the first point ≤ t0 of the ``--steps``
  grid with seeded noise, and the video branch's base U-Net samples from there with each ``--eta`` and the guidance
  (:func:`sdedit`). A second row per t0 is the U-Net's one-call estimate x̂0 at that first point
  (:func:`avgen.diffusion.split_prediction`): what the denoiser alone recovers of the clip, before sampling adds
  its own steps. Both are scored against the real windows' own event times (``landing_recall``). From t0 = 999
  nothing of the clip is left: that row's recall is what flow peaks unrelated to the landings score. A video
  generator trained on PYoCo's mixed noise (``model.video.frame_noise_correlation`` r > 0, read from its manifest)
  is sampled, and SDEdit-noised, from that prior (``--frame-noise-correlation`` overrides r for the SDEdit rows).

Per row, over its clips: ``frame_change`` (mean absolute difference of consecutive frames, 0–255 levels),
``colour_change`` (the same of each frame's mean colour: how much of it is the whole frame changing tint),
``flow`` (mean Farneback magnitude, px/frame, AV-Align's settings), ``peaks_per_clip`` and ``clips_with_peak``
(flow peaks of AV-Align's ``pr`` variant with the README's tuned threshold: what the demo's first check matches
onsets to), and ``downward_share``: of all vertical flow, the share pointing down (Σ max(v, 0) / Σ |v|, pixels
weighted by their flow): 0.5 when the motion has no direction (flicker, shimmer), above it when things fall.
For the real windows also ``landing_recall``: the share of events in a window's judgeable frames (those a peak can
mark, :func:`avgen.metrics.av_align.matchable_onsets`) with a flow peak within ±1 frame.

    .venv/bin/python benchmarks/mini_video_motion.py [--clips 32] [--shared-noise 0.5 0.9] [--eta 0 1] [--ckpt C]
        [--samples-dir D ...] [--sdedit 100 200 999] [--frame-noise-correlation R] [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def seeded_mixed_noise(noise: "torch.Tensor", correlation: float, seed: int) -> "torch.Tensor":  # noqa: F821
    """:func:`avgen.diffusion.mixed_noise` of ``noise`` (B, C, F, h, w) with its shared part (B, C, 1, h, w) drawn from
    a CPU generator seeded ``seed`` (r = 0: ``noise`` itself)."""
    import torch

    from avgen.diffusion import mixed_noise

    return mixed_noise(noise, correlation, generator=torch.Generator().manual_seed(int(seed)))


def motion_stats(clips: list[np.ndarray], fps: float, events: list[np.ndarray] | None = None) -> dict:
    """The row's statistics (module docstring) of ``clips``, each (F, H, W, 3) uint8 RGB at ``fps``; with
    ``events`` (seconds from each clip's start), their ``landing_recall`` too."""
    import cv2

    from avgen.media import OpticalFlow
    from avgen.metrics.av_align import TUNED_ON_SYNTHETIC_HITS, AVAlignConfig, matchable_onsets, video_peaks

    cfg = AVAlignConfig(**TUNED_ON_SYNTHETIC_HITS)
    farneback = OpticalFlow("farneback", cfg.flow_pyr_scale, cfg.flow_levels, cfg.flow_winsize, cfg.flow_iterations,
                            cfg.flow_poly_n, cfg.flow_poly_sigma, cfg.flow_flags)
    change, colour, flow, peaks, down, up = [], [], [], [], 0.0, 0.0
    found = judged = 0
    for i, frames in enumerate(clips):
        change.append(float(np.abs(np.diff(frames.astype(np.float64), axis=0)).mean()))
        colour.append(float(np.abs(np.diff(frames.reshape(len(frames), -1, 3).mean(axis=1), axis=0)).mean()))
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        mags = []
        for field in farneback.between(grey):
            fx, fy = field[..., 0].astype(np.float64), field[..., 1].astype(np.float64)
            mags.append(float(np.sqrt(fx * fx + fy * fy).mean()))
            down += float(np.clip(fy, 0, None).sum())
            up += float(np.clip(-fy, 0, None).sum())
        trajectory = np.array([mags[0], *mags])  # AV-Align's layout: value 0 repeats value 1
        flow.append(float(np.mean(mags)))
        times = video_peaks(trajectory, fps, cfg.min_magnitude("pr"))
        peaks.append(len(times))
        if events is not None:
            ev = np.asarray(events[i], dtype=np.float64)
            ev = ev[matchable_onsets(ev, len(frames), fps, cfg.window_frames)] if len(ev) else ev
            judged += len(ev)
            found += int(sum(bool(np.any(np.abs(times - e) < cfg.window_frames / fps)) for e in ev))
    out = {"clips": len(clips), "frame_change": float(np.mean(change)), "colour_change": float(np.mean(colour)),
           "flow": float(np.mean(flow)),
           "peaks_per_clip": float(np.mean(peaks)), "clips_with_peak": float(np.mean(np.asarray(peaks) > 0)),
           "downward_share": down / (down + up) if down + up > 0 else float("nan")}
    if events is not None:
        out["landing_recall"] = found / judged if judged else float("nan")
        out["judged_landings"] = judged
    return out


def real_windows(seeds: range, geometry, store_seconds: float = 2.0) -> tuple[list, list, list]:
    """(frames, captions, event times in seconds from the window's start) of held-out real windows, served as the
    ``scale=mini`` datamodule serves them (``mini_demo.real_clips``' window draw)."""
    from dataclasses import replace

    import mini_demo

    from avgen.data.synthetic import generate_clip

    frames, captions, events = [], [], []
    n = round(geometry.seconds * geometry.fps)
    for seed in seeds:
        clip = generate_clip(seed, replace(geometry, seconds=store_seconds))
        start = mini_demo.window_start(seed, len(clip.frames), n)
        frames.append(clip.frames[start:start + n])
        captions.append(clip.meta["caption"])
        ev = np.asarray(clip.meta["events"], dtype=np.float64) - start / geometry.fps
        events.append(ev[(ev >= 0) & (ev < geometry.seconds)])
    return frames, captions, events


def through_frame_vae(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The clips encoded (posterior mean) and decoded by the mini frame VAE in use (``$AVGEN_MINI_WEIGHTS``, else the
    committed ``avgen/backbones/mini_weights``)."""
    from types import SimpleNamespace

    import torch
    from diffusers import AutoencoderKL

    from avgen.backbones.animatediff import decode_video
    from avgen.backbones.mini import active_weights_dir

    vae = AutoencoderKL.from_pretrained(active_weights_dir("codecs") / "frames_vae").eval()
    x = torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # (n, F, 3, H, W)
    with torch.no_grad():
        mean = vae.encode(x.flatten(0, 1)).latent_dist.mean * vae.config.scaling_factor
        video = decode_video(SimpleNamespace(vae=vae), mean.unflatten(0, x.shape[:2]).permute(0, 2, 1, 3, 4))
    return list(((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy())


def generated(model, captions: list[str], shared_ratio: float, steps: int, guidance: float | None = None,
              batch: int = 8, eta: float = 0.0) -> list[np.ndarray]:
    """The joint model's videos (F, H, W, 3) uint8 for ``captions``, sample i from the model's seeded noise ``i``
    (:meth:`JointAudioVideo.generate`, which draws from the video generator's own noise prior), or with
    ``shared_ratio`` r > 0 from :func:`avgen.diffusion.seeded_noise` mixed by :func:`avgen.diffusion.mixed_noise`
    (its shared part seeded ``10_000 + i``; the sampling-only probe of PYoCo's prior), with DDIM's stochasticity
    ``eta`` (its step noise seeded ``i`` as well)."""
    import torch

    from avgen.diffusion import seeded_noise

    out = []
    for start in range(0, len(captions), batch):
        chunk = captions[start:start + batch]
        latents = None  # r = 0: the model's own seeded noise (its generator's prior)
        if shared_ratio > 0:
            shape_v, shape_a = model.latent_shapes(len(chunk))
            noise_v, noise_a = seeded_noise([shape_v[1:], shape_a[1:]], len(chunk), start)
            latents = (torch.cat([seeded_mixed_noise(noise_v[i:i + 1], shared_ratio, 10_000 + start + i)
                                  for i in range(len(chunk))]), noise_a)
        with torch.no_grad():
            video, _ = model.generate(chunk, steps=steps, guidance_video=guidance, latents=latents, seed=start,
                                      eta=eta)
        out.extend(((video + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy())
    return out


def sdedit(backbone, frames: list[np.ndarray], captions: list[str], t0: int, steps: int, guidance: float,
           eta: float, seed: int = 0, batch: int = 8, correlation: float = 0.0
           ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:  # noqa: F821
    """SDEdit (Meng et al. 2022) of real clips with a video backbone's U-Net (``backbone``: a
    :class:`~avgen.backbones.animatediff.VideoBackbone`: ``vae``, ``unet``, ``scheduler``, text encoder).

    ``frames``: clips (F, H, W, 3) uint8; each is encoded to its posterior mean z0 (scaled, (C, F, h, w)), noised to
    the first point t_s ≤ ``t0`` of the scheduler's ``steps``-step grid with noise from a CPU generator seeded
    ``seed`` (:func:`avgen.diffusion.add_noise`), then sampled by DDIM (:func:`avgen.diffusion.ddim_step`, ``eta``,
    step noise from the same generator) over the grid's points ≤ t_s, with classifier-free guidance ``guidance``
    against the empty caption. ``correlation`` r > 0: every noise draw is PYoCo's mixed noise
    (:func:`avgen.diffusion.mixed_noise`, its shared part drawn next from the same generator), for a U-Net trained on
    that prior.

    Returns (z0, x̂0 at t_s from the first U-Net call, the sampled latents), each float32 (B, C, F, h, w).

    Raises:
        ValueError: ``t0`` is below the grid's last point.
    """
    import copy

    import torch

    from avgen.backbones.animatediff import encode_prompts, encode_video_posterior
    from avgen.diffusion import add_noise, classifier_free_guidance, ddim_step, final_alpha_cumprod, mixed_noise

    scheduler = copy.deepcopy(backbone.scheduler)
    scheduler.set_timesteps(steps)
    grid = [int(t) for t in scheduler.timesteps if int(t) <= t0]
    if not grid:
        raise ValueError(f"--sdedit {t0}: below the {steps}-step grid's last point {int(scheduler.timesteps[-1])}")
    alphas = backbone.scheduler.alphas_cumprod.float()
    final = final_alpha_cumprod(backbone.scheduler)
    prediction = backbone.scheduler.config.prediction_type
    with torch.no_grad():
        x = torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        mean, _ = encode_video_posterior(backbone, x)
        z0 = mean.float() * backbone.vae.config.scaling_factor
        text, empty = encode_prompts(backbone, captions), encode_prompts(backbone, [""] * len(captions))
        generator = torch.Generator().manual_seed(seed)
        def draw() -> torch.Tensor:
            return mixed_noise(torch.randn(z0.shape, generator=generator), correlation, generator)

        x_t = add_noise(z0, draw(), alphas, torch.full((len(z0),), grid[0]))
        first_estimate = None
        for k, t in enumerate(grid):
            outputs = []
            for start in range(0, len(z0), batch):
                x_b = x_t[start:start + batch]
                n, f = x_b.shape[0], x_b.shape[2]
                states = torch.cat([empty[start:start + n], text[start:start + n]]).repeat_interleave(f, 0)
                out = backbone.unet(x_b.repeat(2, 1, 1, 1, 1), torch.full((2 * n,), t),
                                    encoder_hidden_states=states).sample.float()
                outputs.append(classifier_free_guidance(*out.chunk(2), guidance))
            step_noise = draw() if eta > 0 else None
            x_t, estimate = ddim_step(prediction, x_t, torch.cat(outputs), alphas, t,
                                      grid[k + 1] if k + 1 < len(grid) else -1, final, eta, step_noise)
            if first_estimate is None:
                first_estimate = estimate.float()
    return z0, first_estimate, x_t.float()


def as_clips(backbone, latents) -> list[np.ndarray]:
    """Scaled latents (B, C, F, h, w) decoded by ``backbone``'s VAE → clips (F, H, W, 3) uint8."""
    import torch

    from avgen.backbones.animatediff import decode_video

    with torch.no_grad():
        video = decode_video(backbone, latents)
    return list(((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--shared-noise", type=float, nargs="*", default=[0.5, 0.9],
                        help="PYoCo mixed-noise ratios r > 0 to sample with besides r = 0 (the sampler's noise)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0],
                        help="DDIM stochasticity η of the generated rows (0: the paper's DDIM; 1: ancestral)")
    parser.add_argument("--guidance-video", type=float, default=None, help="default: the model's (7.5)")
    parser.add_argument("--ckpt", type=Path, default=None, help="a joint_cmcpe scale=mini checkpoint (default: the "
                        "zero-initialised adapters, i.e. the base generators)")
    parser.add_argument("--samples-dir", type=Path, nargs="*", default=[])
    parser.add_argument("--sdedit", type=int, nargs="*", default=[],
                        help="SDEdit start timesteps t0 (e.g. 100 200 999): rows of the base U-Net sampling from the "
                             "real windows noised to t0, and of its one-call x̂0 there")
    parser.add_argument("--frame-noise-correlation", type=float, default=None,
                        help="r of PYoCo's mixed noise for the --sdedit rows (default: the model's "
                             "model.video.frame_noise_correlation, the prior its video generator trained on)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if any(not 0.0 <= eta <= 1.0 for eta in args.eta):
        parser.error(f"--eta {args.eta}: each must be in [0, 1] (0: the paper's DDIM; 1: ancestral)")

    import mini_demo

    from avgen.data.geometry import ClipGeometry

    began = time.monotonic()
    geometry = ClipGeometry(seconds=1.0, fps=8.0, height=32, width=32, sample_rate=16000)
    frames, captions, events = real_windows(range(mini_demo.REAL_SEEDS, mini_demo.REAL_SEEDS + args.clips), geometry)
    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                 if k != "samples_dir"}, "rows": {}}
    rows = report["rows"]
    rows["real windows"] = motion_stats(frames, geometry.fps, events)
    rows["real windows through the frame VAE"] = motion_stats(through_frame_vae(frames), geometry.fps, events)

    from gpu_check import compose

    from avgen.commands import build_model, load_system

    if args.ckpt is not None:
        model, source = load_system(args.ckpt)[0], f"checkpoint {args.ckpt}"
    else:
        import tempfile

        model = build_model(compose(["experiment=joint_cmcpe", "scale=mini"], Path(tempfile.mkdtemp())))
        source = "base generator (zero-initialised adapters)"
    model.eval()
    for eta in args.eta:
        for r in [0.0, *[r for r in args.shared_noise if r > 0]]:
            rows[f"{source}, η = {eta:g}, shared noise r = {r:g}"] = motion_stats(
                generated(model, captions, r, args.steps, args.guidance_video, eta=eta), geometry.fps)
    video = model.video
    guidance = float(args.guidance_video if args.guidance_video is not None else model.sampling.guidance_video)
    for t0 in args.sdedit:
        for eta in args.eta:
            correlation = (model.frame_noise_correlation if args.frame_noise_correlation is None
                           else args.frame_noise_correlation)
            _, estimate, sampled = sdedit(video, frames, captions, t0, args.steps, guidance, eta,
                                          correlation=correlation)
            rows[f"SDEdit from real, t0 = {t0}, η = {eta:g}: x̂0 of the first call"] = motion_stats(
                as_clips(video, estimate), geometry.fps, events)
            rows[f"SDEdit from real, t0 = {t0}, η = {eta:g}: sampled"] = motion_stats(
                as_clips(video, sampled), geometry.fps, events)
    for folder in args.samples_dir:
        samples, _ = mini_demo.load_samples(folder)
        rows[f"samples in {folder}"] = motion_stats([s[0] for s in samples], samples[0][1])
    report["seconds"] = time.monotonic() - began

    keys = ["frame_change", "colour_change", "flow", "peaks_per_clip", "clips_with_peak", "downward_share",
            "landing_recall"]
    print("| row | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k in row else "—" for k in keys) + " |")
    print(f"{report['seconds']:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
