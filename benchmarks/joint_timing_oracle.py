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
3. **The demo's onset checks with a perfect signal from the other modality** (``--demo-checks``): the audio
   sampled in 2. with the true oracle and with none, each paired with the held-out clips' own frames (the real
   video whose events the oracle marks), scored by ``benchmarks/mini_demo.py``'s onset checks (clips whose onsets
   all lie within ±1 frame of an optical-flow peak, against the audio delayed 3 frames; AV-Align minus delayed
   with its interval), and the clips' real audio the same way (the ceiling), also through the model's vocoder alone
   and through its mel VAE and vocoder (the ceiling of anything the audio U-Net generates). What the demo's alignment
   checks could reach if the video connector said exactly when the objects land.

``--reader video`` turns it around: the **video** blocks read the oracle in the *audio* connector's place
(``e_hit`` on the ``--span`` audio latent positions where each event's sound starts; the audio U-Net still reads
the video connector), the held-out loss is the video's, "follow" is the mean log frame change (mean absolute pixel
change between consecutive frames) over the frame pairs in which an object lands minus the other pairs, and the
demo checks pair the sampled videos with the clips' real audio. Can the video place a landing where the audio
says, the other direction the joint model could align in?

Usage (any model overrides after the options; 400 steps take about 4 minutes on one core, sampling 3 more)::

    .venv/bin/python benchmarks/joint_timing_oracle.py --steps 400 --out oracle.json \\
        model.block.attention_span=frame model.loss.weighting.audio=v model.timesteps.high_noise_prob.audio=0.5
    .venv/bin/python benchmarks/joint_timing_oracle.py --reader video --demo-checks --clips 32 \\
        model.block.attention_span=frame
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
READERS = ("audio", "video")


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


def audio_event_positions(events: Any, positions: int, seconds_per_position: float, delay_s: float = 0.0,
                          span: int = 2) -> torch.Tensor:
    """(positions,) bool: for each event time ``e`` (seconds), the audio latent positions ⌊(e + ``delay_s``) / Δ⌋ to
    ⌊(e + ``delay_s``) / Δ⌋ + ``span`` − 1 (Δ = ``seconds_per_position``: the mel hop times the audio VAE's time
    downsampling) that lie inside ``positions``: where an impact starts and rings."""
    hit = torch.zeros(positions, dtype=torch.bool)
    for e in np.asarray(events, dtype=np.float64).reshape(-1):
        k = int(math.floor((e + delay_s) / seconds_per_position))
        hit[max(k, 0):max(min(k + span, positions), 0)] = True
    return hit


class TimingOracle:
    """Puts a timing signal in a connector's output: installed on a joint system, its ``denoiser.connect`` returns
    rows of ``e_hit`` / ``e_none`` (two fixed random vectors, seeded) from the events of the current clips
    (``clips_events``: set by :meth:`use` or, in training, from each batch) in place of

    * ``reader="audio"``: the video connector's (B, F', D) features, which the audio blocks read: ``e_hit`` on the
      video frames of the events (:func:`event_frames`);
    * ``reader="video"``: the audio connector's (B, T', D) features, which the video blocks read: ``e_hit`` on the
      audio latent positions where each event's sound starts (:func:`audio_event_positions`, ``span`` positions of
      ``seconds_per_position`` seconds).

    ``delay`` (video frames; ``None``: no event marked) shifts the marks later.

    Raises:
        ValueError: an unknown ``reader``, or ``reader="video"`` without ``seconds_per_position``.
    """

    def __init__(self, system, fps: float, seed: int = 123, reader: str = "audio",
                 seconds_per_position: float | None = None, span: int = 2):
        if reader not in READERS:
            raise ValueError(f"reader={reader!r}: expected one of {', '.join(READERS)}")
        if reader == "video" and not seconds_per_position:
            raise ValueError("reader='video' marks audio latent positions: give seconds_per_position")
        self.system, self.fps, self.reader = system, float(fps), reader
        self.seconds_per_position, self.span = seconds_per_position, span
        connector = system.denoiser.video_connector if reader == "audio" else system.denoiser.audio_connector
        dim = connector.conv_out.out_channels
        generator = torch.Generator().manual_seed(seed)
        self.e_hit, self.e_none = torch.randn(dim, generator=generator), torch.randn(dim, generator=generator)
        self.clips_events: list | None = None
        self.delay: int | None = 0  # None: no event marked (every position e_none)
        connect, encode = system.denoiser.connect, system.encode_batch

        def oracle_connect(video, audio, video_t, audio_t, video_x0=None, audio_x0=None):
            features_v, features_a = connect(video, audio, video_t, audio_t, video_x0, audio_x0)
            if self.reader == "audio":
                return self.features(features_v.shape[1]).to(features_v), features_a
            return features_v, self.features(features_a.shape[1]).to(features_a)

        def encode_batch(batch, generator=None):
            self.clips_events = batch["events"]
            return encode(batch, generator)

        system.denoiser.connect = oracle_connect
        system.encode_batch = encode_batch

    def marks(self, events: Any, positions: int) -> torch.Tensor:
        """(positions,) bool: the positions of ``events`` the oracle marks at the current delay."""
        if self.delay is None:
            return torch.zeros(positions, dtype=torch.bool)
        if self.reader == "audio":
            return event_frames(events, positions, self.fps, self.delay)
        return audio_event_positions(events, positions, self.seconds_per_position, self.delay / self.fps, self.span)

    def features(self, positions: int) -> torch.Tensor:
        """(B, positions, D): the oracle's rows for the current clips."""
        rows = [torch.where(self.marks(events, positions)[:, None], self.e_hit, self.e_none)
                for events in self.clips_events]
        return torch.stack(rows)

    def use(self, clips_events: list, delay: int | None) -> None:
        self.clips_events, self.delay = clips_events, delay


def frame_log_rms(audio: torch.Tensor, frames: int) -> np.ndarray:
    """(frames,) log of the RMS of ``audio`` (S,) in each of ``frames`` equal parts (1e-4 floor)."""
    parts = audio[: audio.shape[0] // frames * frames].double().reshape(frames, -1)
    return torch.log(parts.pow(2).mean(1).sqrt() + 1e-4).numpy()


def frame_change(video: torch.Tensor) -> np.ndarray:
    """(F − 1,) log of the mean absolute change between consecutive frames of ``video`` (F, 3, H, W) in [-1, 1]
    (1e-4 floor): pair f is frames f → f + 1."""
    return torch.log((video[1:] - video[:-1]).double().abs().mean((1, 2, 3)) + 1e-4).numpy()


def video_follow_scores(videos: torch.Tensor, clips_events: list, fps: float, delay: int) -> list[float]:
    """Per clip with marked and unmarked frame pairs: mean :func:`frame_change` of the pairs f → f + 1 with f the
    frame of an event at ``delay`` (:func:`event_frames`: the object lands during frame f and is drawn landed from
    f + 1, the largest displacement of its fall) minus the other pairs."""
    scores = []
    for video, events in zip(videos, clips_events):
        hit = event_frames(events, video.shape[0] - 1, fps, delay).numpy()
        if hit.any() and (~hit).any():
            change = frame_change(video)
            scores.append(float(change[hit].mean() - change[~hit].mean()))
    return scores


def follow_scores(audios: torch.Tensor, clips_events: list, frames: int, fps: float, delay: int) -> list[float]:
    """Per clip with marked and unmarked frames: mean log-RMS in the frames marked at ``delay`` minus the rest."""
    scores = []
    for audio, events in zip(audios, clips_events):
        hit = event_frames(events, frames, fps, delay).numpy()
        if hit.any() and (~hit).any():
            r = frame_log_rms(audio, frames)
            scores.append(float(r[hit].mean() - r[~hit].mean()))
    return scores


@torch.no_grad()
def codec_roundtrips(system, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, S) waveforms through the joint model's audio codec: ``vocoder`` (their log-mel straight into the vocoder)
    and ``mel_vae+vocoder`` (the mel VAE's posterior mean decoded, then the vocoder: what the audio U-Net's latents
    can at best give back)."""
    from avgen.backbones.audioldm import decode_audio, encode_audio_posterior

    codec, audio = system.audio, audio.float()
    mean, _ = encode_audio_posterior(codec, audio)
    return {"vocoder": codec.vocoder(codec.mel(audio).to(codec.vocoder.dtype)).float()[:, :audio.shape[1]],
            "mel_vae+vocoder": decode_audio(codec, mean * codec.vae.config.scaling_factor, audio.shape[1]).float()}


def demo_checks(batches: list[dict[str, Any]], sampled: dict[str, torch.Tensor], clips: int, fps: float,
                rate: int, reader: str = "audio", roundtrips: dict[str, torch.Tensor] | None = None
                ) -> dict[str, Any]:
    """Step 3: ``benchmarks/mini_demo.py``'s onset checks (:func:`mini_demo.onset_checks`) and impacts on the first
    ``clips`` held-out clips. ``reader="audio"``: their real frames ((B, F, 3, H, W) ``batch["video"]`` in [-1, 1],
    as uint8) paired with their real audio (``real``) and with the (B, S) audio of ``sampled["true"]`` and
    ``sampled["none"]``; ``reader="video"``: their real audio paired with their real frames (``real``) and with the
    sampled (B, F, 3, H, W) videos, which also get the mean absolute frame change (0–255 levels). ``roundtrips`` (name
    → (B, S), :func:`codec_roundtrips` of the clips' real audio) are paired with the real frames too."""
    from mini_demo import impacts, onset_checks

    def uint8(video: torch.Tensor) -> np.ndarray:
        video = video[:clips].float().clamp(-1, 1)
        return ((video + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()

    real_frames, real_audio = uint8(torch.cat([b["video"] for b in batches])), torch.cat([b["audio"] for b in batches])
    pairs = {"real": (real_frames, real_audio)}
    for name in ("true", "none"):
        pairs[name] = (real_frames, sampled[name]) if reader == "audio" else (uint8(sampled[name]), real_audio)
    for name, audio in (roundtrips or {}).items():
        pairs[f"real through {name}"] = (real_frames, audio)
    out = {}
    for name, (frames, audio) in pairs.items():
        clip_pairs = [(frames[i], fps, audio[i].float().numpy(), rate) for i in range(len(frames))]
        out[name] = {**onset_checks(clip_pairs), "impacts": impacts(clip_pairs),
                     "frame_change": float(np.abs(np.diff(frames.astype(np.float32), axis=1)).mean())}
    return out


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
    parser.add_argument("--reader", choices=READERS, default="audio",
                        help="which modality's blocks read the oracle (audio: in the video connector's place)")
    parser.add_argument("--span", type=int, default=2, help="audio latent positions marked per event (--reader video)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--clips", type=int, default=24, help="held-out clips scored and sampled")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON report (printed too)")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "joint_timing_oracle")
    parser.add_argument("--demo-checks", action="store_true",
                        help="also score the oracle-driven samples with the clips' real other modality "
                             "(mini_demo's checks)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.block.attention_span=frame")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    from scipy.stats import bootstrap

    from avgen.backbones.audioldm import vae_downsampling
    from avgen.commands import build_datamodule, build_model

    cfg = compose_config(opts.overrides, opts.run_dir)
    torch.manual_seed(opts.seed)
    system = build_model(cfg)
    fps, frames = float(system.clip.fps), system.num_frames
    mel = system.audio.mel
    oracle = TimingOracle(system, fps, reader=opts.reader, span=opts.span,
                          seconds_per_position=mel.hop_length * vae_downsampling(system.audio.vae) / mel.sample_rate)
    loss_key = f"loss_{opts.reader}"
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
            losses.append(float(out[loss_key].detach()))
            step += 1
            if step % 100 == 0:
                print(f"step {step}: {opts.reader} loss {np.mean(losses[-100:]):.4f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
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
                held_loss[name].append(float(system.diffusion_loss(batch, torch.Generator().manual_seed(i))[loss_key]))
    captions = [c for b in batches for c in b["caption"]][: opts.clips]
    clips_events = [np.asarray(e).reshape(-1) for b in batches for e in b["events"]][: opts.clips]
    report: dict[str, Any] = {
        "config": {"reader": opts.reader, "span": opts.span, "steps": opts.steps, "overrides": opts.overrides,
                   "clips": opts.clips, "sample_steps": opts.sample_steps, "seed": opts.seed},
        "train_s": round(train_s, 1),
        f"held_out_{opts.reader}_loss": {k: float(np.mean(v)) for k, v in held_loss.items()},
        "follow": {}}
    scores, sampled = {}, {}
    for name, delay in (("true", 0), ("delayed", DELAY_FRAMES), ("none", None)):
        oracle.use(clips_events, delay)
        video, audio = system.generate(captions, steps=opts.sample_steps, seed=0)
        shift = 0 if delay is None else delay
        if opts.reader == "audio":
            sampled[name], scores[name] = audio, follow_scores(audio, clips_events, frames, fps, shift)
        else:
            sampled[name], scores[name] = video, video_follow_scores(video, clips_events, fps, shift)
        report["follow"][name] = {"clips": len(scores[name]), "mean": float(np.mean(scores[name]))}
    diff = np.asarray(scores["true"]) - np.asarray(scores["none"])
    interval = bootstrap((diff,), np.mean, vectorized=True, n_resamples=10_000, confidence_level=0.95,
                         method="percentile", random_state=0).confidence_interval
    report["follow"]["true_minus_none"] = {"mean": float(diff.mean()),
                                           "ci95": [float(interval.low), float(interval.high)]}
    if opts.demo_checks:
        real_audio = torch.cat([b["audio"] for b in batches])[: opts.clips]
        report["demo_checks"] = demo_checks(batches, sampled, opts.clips, fps, int(system.clip.sample_rate),
                                            opts.reader, codec_roundtrips(system, real_audio))
    text = json.dumps(report, indent=1)
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
