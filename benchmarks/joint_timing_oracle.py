"""Can the joint model's audio follow a timing signal at the demo's budget? The cross-modal half of the demo's
alignment, measured apart from the video connector.

The SVG baseline's audio learns *when* to sound from the video connector's features, read by the CMC-PE blocks
(Hayakawa et al. 2024, Sec. III-C). When the demo's samples are not aligned, either the video connector does not
say when the objects land, or the audio blocks cannot act on it. This benchmark takes the first out: the audio
blocks read a **timing oracle** in the video features' place. Frame τ of a clip gets the vector ``e_hit`` when one
of the clip's ground-truth events (``batch["events"]``, seconds) falls in [τ/fps, (τ+1)/fps), else ``e_none``
(two fixed random vectors, seeded); the rest is the joint model as configured (the video U-Net still reads the
audio connector). The adapters train for ``--steps`` steps on the ``scale=mini`` synthetic data, as ``make demo``
trains them, then:

1. **Held-out audio loss** with the true oracle and with the oracle delayed by 3 frames, same draws
   (:meth:`~avgen.systems.joint.JointAudioVideo.diffusion_loss` seeded per batch): how much the audio uses it.
2. **Sampled audio follows the oracle?** ``--clips`` held-out captions are sampled (the model's sampler, seeds
   0…) three times: with the true oracle, the delayed one, and none (every frame ``e_none``). Per clip, the mean
   log-RMS of the audio in the frames the oracle marks minus in the other frames ("follow", in natural-log
   units: 1 = the marked frames are e times louder); for ``none`` the true event frames are scored. Reported:
   the mean and a paired bootstrap 95 % interval (scipy ``bootstrap``, percentile, 10,000 resamples) of
   true − none. Audio that follows the oracle scores well above 0 for ``true`` and ``delayed``, about 0 for
   ``none``.

Usage (any model overrides after the options; 400 steps take about 4 minutes on one core, sampling 3 more)::

    .venv/bin/python benchmarks/joint_timing_oracle.py --steps 400 --out oracle.json \\
        model.block.attention_span=frame model.loss.weighting.audio=v model.timesteps.high_noise_prob.audio=0.5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DELAY_FRAMES = 3


def compose_config(overrides: list[str], run_dir: Path):
    """The avgen config of ``experiment=joint_cmcpe scale=mini`` with the demo's adapter recipe (frozen motion
    modules, lr 10⁻³) and ``overrides``, composed as the command line would (``gpu_check.compose``), outputs under
    ``run_dir``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import compose

    return compose(["experiment=joint_cmcpe", "scale=mini", "model.train_motion_modules=false",
                    "model.optimizer.lr=1e-3", *overrides], run_dir)


def event_frames(events: Any, frames: int, fps: float, delay: int = 0) -> torch.Tensor:
    """(frames,) bool: frame ⌊e·fps⌋ + ``delay`` of each event time ``e`` (seconds) that lands inside the clip."""
    hit = torch.zeros(frames, dtype=torch.bool)
    for e in np.asarray(events, dtype=np.float64).reshape(-1):
        k = int(math.floor(e * fps)) + delay
        if 0 <= k < frames:
            hit[k] = True
    return hit


class TimingOracle:
    """Puts a per-frame timing signal in the video connector's output: installed on a joint system, its
    ``denoiser.connect`` returns, in the video features' place, (B, F', D) rows of ``e_hit`` / ``e_none`` from the
    events of the current clips (``clips_events``: set by :meth:`use` or, in training, from each batch)."""

    def __init__(self, system, fps: float, seed: int = 123):
        self.system, self.fps = system, float(fps)
        dim = system.denoiser.video_connector.conv_out.out_channels
        generator = torch.Generator().manual_seed(seed)
        self.e_hit, self.e_none = torch.randn(dim, generator=generator), torch.randn(dim, generator=generator)
        self.clips_events: list | None = None
        self.delay: int | None = 0  # None: no event marked (every frame e_none)
        connect, encode = system.denoiser.connect, system.encode_batch

        def oracle_connect(video, audio, video_t, audio_t, video_x0=None, audio_x0=None):
            features_v, features_a = connect(video, audio, video_t, audio_t, video_x0, audio_x0)
            return self.features(features_v.shape[1]).to(features_v), features_a

        def encode_batch(batch, generator=None):
            self.clips_events = batch["events"]
            return encode(batch, generator)

        system.denoiser.connect = oracle_connect
        system.encode_batch = encode_batch

    def features(self, frames: int) -> torch.Tensor:
        rows = []
        for events in self.clips_events:
            hit = (event_frames(events, frames, self.fps, self.delay) if self.delay is not None
                   else torch.zeros(frames, dtype=torch.bool))
            rows.append(torch.where(hit[:, None], self.e_hit, self.e_none))
        return torch.stack(rows)

    def use(self, clips_events: list, delay: int | None) -> None:
        self.clips_events, self.delay = clips_events, delay


def frame_log_rms(audio: torch.Tensor, frames: int) -> np.ndarray:
    """(frames,) log of the RMS of ``audio`` (S,) in each of ``frames`` equal parts (1e-4 floor)."""
    parts = audio[: audio.shape[0] // frames * frames].double().reshape(frames, -1)
    return torch.log(parts.pow(2).mean(1).sqrt() + 1e-4).numpy()


def follow_scores(audios: torch.Tensor, clips_events: list, frames: int, fps: float, delay: int) -> list[float]:
    """Per clip with marked and unmarked frames: mean log-RMS in the frames marked at ``delay`` minus the rest."""
    scores = []
    for audio, events in zip(audios, clips_events):
        hit = event_frames(events, frames, fps, delay).numpy()
        if hit.any() and (~hit).any():
            r = frame_log_rms(audio, frames)
            scores.append(float(r[hit].mean() - r[~hit].mean()))
    return scores


def held_out(dm, clips: int) -> list[dict[str, Any]]:
    """The first ``clips`` clips of the validation split as model batches (with their events)."""
    batches, seen = [], 0
    for raw in dm.val_dataloader():
        batches.append(dm.on_after_batch_transfer(dm.on_before_batch_transfer(raw, 0), 0))
        seen += len(batches[-1]["caption"])
        if seen >= clips:
            return batches
    raise ValueError(f"the validation split has {seen} clips; asked for --clips {clips}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--clips", type=int, default=24, help="held-out clips scored and sampled")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON report (printed too)")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "joint_timing_oracle")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.block.attention_span=frame")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    from scipy.stats import bootstrap

    from avgen.commands import build_datamodule, build_model

    cfg = compose_config(opts.overrides, opts.run_dir)
    torch.manual_seed(opts.seed)
    system = build_model(cfg)
    fps, frames = float(system.clip.fps), system.num_frames
    oracle = TimingOracle(system, fps)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    params = [p for p in system.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(cfg.model.optimizer.lr))
    system.train()
    step, start, losses = 0, time.perf_counter(), []
    while step < opts.steps:
        for raw in dm.train_dataloader():
            oracle.delay = 0
            out = system.diffusion_loss(dm.on_after_batch_transfer(dm.on_before_batch_transfer(raw, 0), 0))
            optimizer.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(out["loss_audio"].detach()))
            step += 1
            if step % 100 == 0:
                print(f"step {step}: audio loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
            if step >= opts.steps:
                break
    train_s = time.perf_counter() - start
    system.eval()
    batches = held_out(dm, opts.clips)
    held_loss = {"true": [], "delayed": []}
    for i, batch in enumerate(batches):
        for name, delay in (("true", 0), ("delayed", DELAY_FRAMES)):
            oracle.delay = delay
            with torch.no_grad():
                held_loss[name].append(float(system.diffusion_loss(batch, torch.Generator().manual_seed(i))
                                             ["loss_audio"]))
    captions = [c for b in batches for c in b["caption"]][: opts.clips]
    clips_events = [np.asarray(e).reshape(-1) for b in batches for e in b["events"]][: opts.clips]
    report: dict[str, Any] = {
        "config": {"steps": opts.steps, "overrides": opts.overrides, "clips": opts.clips,
                   "sample_steps": opts.sample_steps, "seed": opts.seed},
        "train_s": round(train_s, 1),
        "held_out_audio_loss": {k: float(np.mean(v)) for k, v in held_loss.items()},
        "follow": {}}
    scores = {}
    for name, delay in (("true", 0), ("delayed", DELAY_FRAMES), ("none", None)):
        oracle.use(clips_events, delay)
        _, audio = system.generate(captions, steps=opts.sample_steps, seed=0)
        scores[name] = follow_scores(audio, clips_events, frames, fps, 0 if delay is None else delay)
        report["follow"][name] = {"clips": len(scores[name]), "mean": float(np.mean(scores[name]))}
    diff = np.asarray(scores["true"]) - np.asarray(scores["none"])
    interval = bootstrap((diff,), np.mean, vectorized=True, n_resamples=10_000, confidence_level=0.95,
                         method="percentile", random_state=0).confidence_interval
    report["follow"]["true_minus_none"] = {"mean": float(diff.mean()),
                                           "ci95": [float(interval.low), float(interval.high)]}
    text = json.dumps(report, indent=1)
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
