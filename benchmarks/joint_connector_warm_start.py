"""Does the joint model's audio use the video once the video connector is pretrained to mark hit frames?

``benchmarks/joint_timing_oracle.py`` showed that the audio blocks follow a clean per-frame timing signal put in the
video connector's place, and ``benchmarks/joint_modality_use.py`` that the real video connector, trained from
zero-init by the diffusion loss alone, outputs one direction for every clip. This benchmark tries the step between:
the joint model's own video connector (``experiment=joint_cmcpe scale=mini``, the demo's recipe) is first trained
*alone* to mark the frames where an object lands (``batch["events"]``, as the synthetic hits and Greatest Hits
carry them), then the adapters train as ``make demo`` trains them. A mini-scale aid, not the paper's recipe
(Hayakawa et al. 2024 train the connectors by the diffusion loss only).

1. **Latents**: ``--passes`` passes over the training split (each pass a fresh 1-s window per clip) through the
   frame VAE (posterior samples); labels: the latent frames holding an event
   (:func:`~avgen.modules.connector_events.event_frame_labels`).
2. **Warm start** (``--warm-steps`` steps of ``--warm-batch`` clips, Adam ``--warm-lr``): the connector reads
   ``x_t`` at t ~ U[0, T) and as x̂0, per batch (``--x0``): ``clean``: the clean latent or zeros, half each;
   ``mix``: a third each the clean latent, zeros, and the frozen base video U-Net's estimate from ``x_t`` with the
   clip's caption (what the sampler hands the connector is its previous step's estimate); it learns ``--target``:

   * ``logit``: a linear head on its (B, F, D) output, binary cross-entropy with the positive class weighted by
     the negatives/positives ratio;
   * ``code``: its output, L2-normalised per frame, regressed (squared error) onto the unit vector ``e_hit`` on a
     hit frame and ``e_none`` elsewhere (two fixed random directions, seeded): the timing oracle's code, which
     CMC-PE reads after its own L2 normalisation.
3. **Connector ROC AUC** of hit frames on ``--clips`` held-out clips at t ∈ {0, 250, 500, 750} with x̂0 = the clean
   latent and zeros (the score: the head's logit, or cos(output, e_hit) − cos(output, e_none)).
4. **Adapter training**, ``--joint-steps`` steps of the demo's recipe, the warm-start loss kept with weight
   ``--aux`` (0: dropped), and with ``--teacher p`` (``code`` only) a share p of the batches see the exact code of
   their own events in the connector's place (teacher forcing; the sampler never does); with ``--teacher-anneal``
   the share falls linearly from p to 0 over the adapter steps.
5. **After**: the connector's AUC again; the held-out audio loss with the exact code of each clip's own events
   against another clip's (``code`` only: do the audio blocks read the code at all?); and the modality use of
   ``benchmarks/joint_modality_use.py`` (swapped-clip minus paired loss, connector variation). With ``--samples N``,
   N sounding videos are sampled to ``<run-dir>/samples`` and measured by ``benchmarks/mini_demo.py``'s checks;
   with ``--sample-gamma γ …``, one such set per timestep adjustment γ (Eq. 9: the larger γ, the further the video
   is denoised ahead of the audio, so the connector reads a cleaner x̂0 while the audio's timing is still open),
   in ``<run-dir>/samples_gamma<γ>``.
6. **Audio for the real video** (``--given-video``, per ``--sample-gamma``): the audio of the ``--clips`` held-out
   clips generated *for their real frames* (:meth:`~avgen.systems.joint.JointAudioVideo.generate` with
   ``video_latents``: the replacement method, the video held at the clip's latents noised to its local timestep),
   paired with those frames and scored by ``mini_demo.py``'s onset checks (``true``); ``none``: the audio generated
   for the next clip's frames, paired with this clip's (a control with the same audio model and no timing link);
   ``real``: the clips' own audio (the ceiling). It separates the two halves of the demo's alignment: whether the
   audio follows a video that *does* show the landings, and whether the generated videos show them.
7. **Video first** (``--video-first η …``, per ``--sample-gamma``): ``--samples`` clips of the test captions sampled in
   two passes, the video by the joint sampler with DDIM η (its audio dropped), then the audio for that video by the
   replacement method of step 6 (η 0, the same seeds), scored as the samples are: whether the audio follows the
   *generated* video when that video is finished before the audio starts.

8. **Cross-modal guidance** (``--cross-guidance S …``): the sampling of steps 5–7 once per scale S of
   ``model.sampling.cross_modal_guidance`` (the audio guided on the video's motion, its null the video held still;
   :meth:`~avgen.systems.joint.JointAudioVideo.generate`), keys suffixed ``_cross<S>`` (1: off, no suffix).

``--state F`` saves the trained system (and the ``logit`` head) to F after step 4; when F exists it is loaded instead
and steps 2–4 are skipped, so the measurements can be repeated on one trained model. ``--ckpt C`` measures a ``fit``
checkpoint instead (steps 2–4 done by ``fit`` with ``model.video_connector_events``, whose ``code`` target, event loss
and teacher forcing are this benchmark's); model overrides then apply as ``avgen sample`` applies
them to a checkpoint (``model.sampling.*`` and ``data.*``; any other key stops with a one-line error).

Usage (any model overrides after the options; defaults take about 5 minutes on one thread, sampling 1 more)::

    .venv/bin/python benchmarks/joint_connector_warm_start.py --target code --aux 1 --teacher 1 --out ws.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from joint_timing_oracle import compose_config, held_out  # noqa: E402

from avgen.modules.connector_events import EventCode, event_frame_labels  # noqa: E402

TARGETS = ("logit", "code")
X0_MODES = {"clean": ("clean", "zeros"), "mix": ("clean", "zeros", "estimate")}
AUC_TIMESTEPS = (0, 250, 500, 750)


def hit_labels(events: list, frames: int, fps: float) -> torch.Tensor:
    """(B, frames) float32: 1 on the frames of each clip's events
    (:func:`avgen.modules.connector_events.event_frame_labels`), 0 elsewhere."""
    return event_frame_labels(events, frames, fps)


class HitObjective:
    """Step 2's loss and step 3's score for ``connector`` (the joint model's video connector) on clean latents.

    Args:
        connector: :class:`~avgen.modules.connector.Connector` reading (B, C, F, h, w) latents -> (B, F, D).
        alphas: ᾱ_t (T,) of the video noise schedule.
        target: ``logit`` or ``code`` (module docstring).
        pos_weight: BCE weight of a hit frame (``logit``).
        estimator: ``(x_t, t, text) -> x̂0`` for ``x0="estimate"`` (:func:`base_video_estimate`).
        code: the :class:`~avgen.modules.connector_events.EventCode` (``code`` target); None: seed 123's.

    Raises:
        ValueError: an unknown ``target``.
    """

    def __init__(self, connector, alphas: torch.Tensor, target: str, pos_weight: float = 1.0, estimator=None,
                 code: EventCode | None = None):
        if target not in TARGETS:
            raise ValueError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
        self.connector, self.alphas, self.target = connector, alphas, target
        dim = connector.conv_out.out_channels
        self.head = torch.nn.Linear(dim, 1)
        # model.video_connector_events' code: the system's own (``code``, a fit checkpoint's seed) or seed 123
        self.code = code if code is not None else EventCode(dim)
        self.pos_weight = torch.tensor(float(pos_weight))
        self.estimator = estimator

    def parameters(self) -> list[torch.nn.Parameter]:
        """The connector's parameters, and the head's for ``logit``."""
        return list(self.connector.parameters()) + (list(self.head.parameters()) if self.target == "logit" else [])

    def output(self, latents: torch.Tensor, t: torch.Tensor, x0: str, generator: torch.Generator | None = None,
               text: torch.Tensor | None = None) -> torch.Tensor:
        """The connector's (B, F, D) output on ``latents`` noised to ``t`` (B,); x̂0 (``x0``): ``clean`` (the
        latents), ``zeros``, or ``estimate`` (:attr:`estimator` on ``x_t`` and the (B, L, D) caption states
        ``text``).

        Raises:
            ValueError: an unknown ``x0``, or ``estimate`` without an estimator or text."""
        from avgen.diffusion import add_noise

        noise = torch.randn(latents.shape, generator=generator).to(latents)
        x_t = add_noise(latents, noise, self.alphas, t)
        if x0 == "clean":
            x0_hat = latents
        elif x0 == "zeros":
            x0_hat = torch.zeros_like(latents)
        elif x0 == "estimate" and self.estimator is not None and text is not None:
            with torch.no_grad():
                x0_hat = self.estimator(x_t, t, text).to(latents)
        else:
            raise ValueError(f"x0={x0!r}: expected clean, zeros or estimate (with an estimator and caption states)")
        return self.connector(x_t, x0_hat, t)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss of the (B, F, D) output against (B, F) labels."""
        if self.target == "logit":
            return F.binary_cross_entropy_with_logits(self.head(output).squeeze(-1), labels,
                                                      pos_weight=self.pos_weight)
        return self.code.loss(output, labels)

    def score(self, output: torch.Tensor) -> torch.Tensor:
        """(B, F): higher = more likely a hit frame."""
        if self.target == "logit":
            return self.head(output).squeeze(-1)
        return self.code.score(output)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (scikit-learn's), NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).reshape(-1)
    return float("nan") if labels.min() == labels.max() else float(roc_auc_score(labels, np.asarray(scores).ravel()))


@torch.no_grad()
def connector_auc(objective: HitObjective, latents: torch.Tensor, labels: torch.Tensor, batch: int = 32
                  ) -> dict[str, float]:
    """Step 3: AUC of the hit frames per timestep of :data:`AUC_TIMESTEPS` and x̂0 (``clean`` / ``zeros``), the
    noise seeded per timestep."""
    was = objective.connector.training
    objective.connector.eval()
    out = {}
    try:
        for t in AUC_TIMESTEPS:
            for clean in (True, False):
                generator = torch.Generator().manual_seed(t)
                scores = []
                for part in latents.split(batch):
                    timesteps = torch.full((len(part),), t)
                    scores.append(objective.score(objective.output(part, timesteps, "clean" if clean else "zeros",
                                                                   generator)))
                out[f"t{t}_{'clean' if clean else 'zeros'}"] = round(roc_auc(labels.numpy(),
                                                                             torch.cat(scores).numpy()), 3)
    finally:
        objective.connector.train(was)
    return out


class CodeTeacher:
    """Installed on a joint system: while :attr:`events` is set (a list of per-clip event times), the video
    features the audio blocks read are the exact code of those events
    (:meth:`~avgen.modules.connector_events.EventCode.code`), as the timing oracle does; otherwise the connector's
    own."""

    def __init__(self, system, objective: HitObjective, fps: float):
        self.events: list | None = None
        connect = system.denoiser.connect

        def teacher_connect(video, audio, video_t, audio_t, video_x0=None, audio_x0=None):
            features_v, features_a = connect(video, audio, video_t, audio_t, video_x0, audio_x0)
            if self.events is None:
                return features_v, features_a
            code = objective.code.code(hit_labels(self.events, features_v.shape[1], fps))
            return code.to(features_v), features_a

        system.denoiser.connect = teacher_connect


def base_video_estimate(system):
    """``(x_t, t, text) -> x̂0``: the joint model's frozen base video U-Net (no adapters) on video latents x_t
    (B, C, F, h, w) at timesteps t (B,) with CLIP caption states text (B, L, D), its output turned into x̂0 by the
    video scheduler's prediction type (:func:`~avgen.diffusion.split_prediction`)."""
    from avgen.diffusion import split_prediction

    prediction = system.video.scheduler.config.prediction_type

    def estimate(x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        frames = x_t.shape[2]
        out = system.video.unet(x_t, t, encoder_hidden_states=text.repeat_interleave(frames, dim=0)).sample
        return split_prediction(prediction, x_t, out, system.video_alphas, t)[0]

    return estimate


def latent_bank(system, dm, loader, passes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1: (N, C, F, h, w) video latents, (N, F) hit labels and (N, L, D) CLIP caption states of ``passes``
    passes over ``loader()``."""
    fps, frames = float(system.clip.fps), system.num_frames
    latents, labels, texts = [], [], []
    for _ in range(passes):
        for raw in loader():
            batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(raw, 0), 0)
            latents.append(system.encode_batch(batch)[0].float())
            labels.append(hit_labels(batch["events"], frames, fps))
            texts.append(system.caption_text(batch, torch.ones(len(batch["caption"]), dtype=torch.bool))[0].float())
    return torch.cat(latents), torch.cat(labels), torch.cat(texts)


def video_first_samples(system, folder: Path, n: int, gamma: float | None, eta: float, cross: float = 1.0) -> dict:
    """Step 7: ``n`` sounding videos of the test split's captions sampled video first, written to ``folder`` and
    scored by ``mini_demo.py``: the video latents by the joint sampler with ``eta`` (its audio dropped), then the
    audio for them by the replacement method (η 0, the same seeds), under the EMA weights."""
    from mini_demo import frame_classifier, load_samples, measure, store_geometry

    import avgen.systems.joint as joint
    from avgen.samples import write_sounding_videos

    prompts, _ = system._prompts(None, n)
    decode, kept = joint.decode_video, []

    def keep(video, latents):
        kept.append(latents.detach().clone())
        return decode(video, latents)

    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 8):
        chunk = prompts[start:start + 8]
        kept.clear()
        joint.decode_video = keep
        try:
            with torch.no_grad(), system.ema_weights():
                system.generate(chunk, gamma=gamma, seed=start, eta=eta)
        finally:
            joint.decode_video = decode
        with torch.no_grad(), system.ema_weights():
            video, audio = system.generate(chunk, gamma=gamma, seed=start, eta=0.0, video_latents=kept[0],
                                           cross_modal_guidance=cross)
        write_sounding_videos(folder, chunk, video, audio, system.clip, overwrite=True, first=start)
    generated, prompts = load_samples(folder)
    result = measure(generated, prompts, frame_classifier(store_geometry(generated[0])))
    return {"onsets": result["onsets"], "impacts": result["impacts"],
            "colour": result["prompt_agreement"]["colour"]["accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=TARGETS, default="code")
    parser.add_argument("--warm-steps", type=int, default=1500)
    parser.add_argument("--warm-batch", type=int, default=16)
    parser.add_argument("--warm-lr", type=float, default=1e-3)
    parser.add_argument("--passes", type=int, default=3, help="1-s windows per training clip in the warm-start bank")
    parser.add_argument("--joint-steps", type=int, default=300)
    parser.add_argument("--aux", type=float, default=1.0, help="weight of the warm-start loss in adapter training")
    parser.add_argument("--teacher", type=float, default=0.0, help="share of batches taught the exact code")
    parser.add_argument("--teacher-anneal", action="store_true", help="the share falls linearly to 0")
    parser.add_argument("--x0", choices=tuple(X0_MODES), default="clean", help="x̂0 the connector learns from")
    parser.add_argument("--clips", type=int, default=32, help="held-out clips measured")
    parser.add_argument("--samples", type=int, default=0, help="sounding videos sampled and checked (mini_demo)")
    parser.add_argument("--sample-gamma", type=float, nargs="+", default=None,
                        help="timestep adjustment γ (Eq. 9) of the samples, one set of samples each "
                             "(default: the model's model.sampling.gamma)")
    parser.add_argument("--given-video", action="store_true",
                        help="also generate the held-out clips' audio for their real frames (step 6)")
    parser.add_argument("--video-first", type=float, nargs="+", default=None, metavar="ETA",
                        help="also sample --samples clips video first (step 7): per η, the video by the model's own "
                             "sampler with that η, then the audio for it by the replacement method (η 0)")
    parser.add_argument("--state", type=Path, default=None,
                        help="the trained system's weights: loaded when the file exists (no training), else saved "
                             "there after training")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="measure this fit checkpoint (e.g. one trained with model.video_connector_events) "
                             "instead of training: steps 2-4 are skipped")
    parser.add_argument("--cross-guidance", type=float, nargs="+", default=[1.0], metavar="S",
                        help="sample with these model.sampling.cross_modal_guidance scales (1: off)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON report (printed too)")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "joint_connector_warm_start")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.block.attention_span=frame")
    opts = parser.parse_args(argv)
    if opts.teacher and opts.target != "code":
        parser.error("--teacher needs --target code (the teacher's features are the code)")
    torch.set_num_threads(opts.threads)

    from avgen.commands import build_datamodule

    cfg = compose_config(opts.overrides, opts.run_dir)
    torch.manual_seed(opts.seed)
    from avgen.errors import ConfigError

    try:
        system, cfg = load_model(cfg, opts.ckpt, opts.overrides)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: {opts.ckpt}: {err}\n")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    fps = float(system.clip.fps)
    began = time.perf_counter()
    loaded = opts.ckpt is not None or (opts.state is not None and opts.state.is_file())
    latents, labels, texts = latent_bank(system, dm, dm.train_dataloader, 1 if loaded else opts.passes)
    held = held_out(dm, opts.clips)
    held_latents = torch.cat([system.encode_batch(b, torch.Generator().manual_seed(i))[0].float()
                              for i, b in enumerate(held)])[: opts.clips]
    held_labels = torch.cat([hit_labels(b["events"], system.num_frames, fps) for b in held])[: opts.clips]
    rate = float(labels.mean())
    objective = HitObjective(system.denoiser.video_connector, system.video_alphas, opts.target,
                             pos_weight=(1 - rate) / max(rate, 1e-6), estimator=base_video_estimate(system),
                             code=getattr(system, "event_code", None))
    x0_modes = X0_MODES[opts.x0]
    report: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
                              "bank": {"clips": len(latents), "hit_frame_rate": round(rate, 4)}}
    teacher = CodeTeacher(system, objective, fps)
    if opts.ckpt is not None:
        report["state"] = f"fit checkpoint {opts.ckpt}"
    elif loaded:
        objective.head.load_state_dict(torch.load(opts.state, map_location="cpu", weights_only=True)["head"])
        system.load_state_dict(torch.load(opts.state, map_location="cpu", weights_only=True)["system"])
        report["state"] = f"loaded {opts.state}"
    else:
        train(system, dm, objective, teacher, latents, labels, texts, held_latents, held_labels, x0_modes, fps, cfg,
              opts, report, began)
        if opts.state is not None:
            opts.state.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"system": system.state_dict(), "head": objective.head.state_dict()}, opts.state)
    measure_after(system, objective, teacher, held, held_latents, held_labels, fps, opts, report, began)
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n")
    return 0


def load_model(cfg, ckpt: Path | None, overrides: list[str]):
    """(system, config): built from ``cfg``, or with ``ckpt`` the checkpoint's system and config with the command
    line's ``overrides`` applied as ``avgen sample`` applies them (``model.sampling.*``, ``data.*``;
    :func:`avgen.commands.checkpoint_config`).

    Raises:
        avgen.errors.ConfigError: with ``ckpt``, an override a checkpoint cannot take (e.g. a trainable
            shape), naming the key; such an override is never silently dropped.
    """
    from avgen.commands import build_model, load_system

    if ckpt is None:
        return build_model(cfg), cfg
    return load_system(ckpt, cfg, list(overrides))


def train(system, dm, objective, teacher, latents, labels, texts, held_latents, held_labels, x0_modes, fps, cfg, opts,
          report, began) -> None:
    """Steps 2–4: the connector's warm start, then the adapters' training (``report`` gains the AUCs)."""
    report["auc_before"] = connector_auc(objective, held_latents, held_labels)
    optimizer = torch.optim.Adam(objective.parameters(), lr=opts.warm_lr)
    steps_total = len(system.video_alphas)
    for step in range(1, opts.warm_steps + 1):
        index = torch.randint(0, len(latents), (opts.warm_batch,))
        t = torch.randint(0, steps_total, (opts.warm_batch,))
        x0 = x0_modes[int(torch.randint(0, len(x0_modes), ()))]
        loss = objective.loss(objective.output(latents[index], t, x0, text=texts[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            print(f"warm start {step}: loss {loss.item():.3f} ({time.perf_counter() - began:.0f} s)", flush=True)
    report["auc_warm"] = connector_auc(objective, held_latents, held_labels)
    print("connector AUC after the warm start:", report["auc_warm"], flush=True)

    params = [p for p in system.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params + (list(objective.head.parameters()) if opts.target == "logit" else []),
                                 lr=float(cfg.model.optimizer.lr))
    system.train()
    step, losses = 0, []
    while step < opts.joint_steps:
        for raw in dm.train_dataloader():
            batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(raw, 0), 0)
            share = opts.teacher * (1 - step / opts.joint_steps if opts.teacher_anneal else 1.0)
            teacher.events = batch["events"] if float(torch.rand(())) < share else None
            out = system.diffusion_loss(batch)
            teacher.events = None
            loss = out["loss"]
            if opts.aux:
                with torch.no_grad():
                    z_v = system.encode_batch(batch)[0].float()
                    text_v = system.caption_text(batch, torch.ones(len(z_v), dtype=torch.bool))[0].float()
                t = torch.randint(0, steps_total, (len(z_v),))
                x0 = x0_modes[int(torch.randint(0, len(x0_modes), ()))]
                loss = loss + opts.aux * objective.loss(objective.output(z_v, t, x0, text=text_v),
                                                        hit_labels(batch["events"], system.num_frames, fps))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(out["loss_audio"].detach()))
            step += 1
            if step % 100 == 0:
                print(f"adapters {step}: audio loss {np.mean(losses[-100:]):.4f} "
                      f"({time.perf_counter() - began:.0f} s)", flush=True)
            if step >= opts.joint_steps:
                break
    system.eval()


def measure_after(system, objective, teacher, held, held_latents, held_labels, fps, opts, report, began) -> None:
    """Steps 5–7 on the trained system (``report`` gains the results)."""
    from joint_modality_use import connector_variation, modality_use

    system.eval()
    report["auc_after"] = connector_auc(objective, held_latents, held_labels)
    if opts.target == "code":
        own, other = [], []
        for i, batch in enumerate(held):
            events = [np.asarray(e).reshape(-1) for e in batch["events"]]
            for name, chosen in (("own", own), ("other", other)):
                teacher.events = events if name == "own" else events[1:] + events[:1]
                with torch.no_grad():
                    chosen.append(float(system.diffusion_loss(batch, torch.Generator().manual_seed(i))["loss_audio"]))
        teacher.events = None
        report["audio_loss_with_code"] = {"own_events": float(np.mean(own)), "other_clip_events": float(np.mean(other)),
                                          "relative": float((np.mean(other) - np.mean(own)) / np.mean(own))}
    use_batches = [{k: b[k] for k in ("video", "audio", "caption")} for b in held]
    report["modality_use"] = modality_use(system, use_batches, repeats=2)
    report["connector_variation"] = connector_variation(system, use_batches)
    report["seconds"] = round(time.perf_counter() - began, 1)
    if opts.samples:
        from mini_demo import frame_classifier, load_samples, measure, store_geometry

        classifier = None
        for gamma, cross in ((g, c) for g in opts.sample_gamma or [None] for c in opts.cross_guidance):
            key = ("samples" if gamma is None else f"samples_gamma{gamma:g}") + (
                "" if cross == 1 else f"_cross{cross:g}")
            # the test split's captions, as the demo
            system.sample_to_files(opts.run_dir / key, n=opts.samples, gamma=gamma, overwrite=True,
                                   cross_modal_guidance=cross)
            generated, prompts = load_samples(opts.run_dir / key)
            classifier = classifier or frame_classifier(store_geometry(generated[0]))
            result = measure(generated, prompts, classifier)
            report[key] = {"onsets": result["onsets"], "impacts": result["impacts"],
                           "colour": result["prompt_agreement"]["colour"]["accuracy"]}
            print(key, json.dumps(report[key], default=float), flush=True)
    if opts.given_video:
        from joint_timing_oracle import demo_checks

        captions = [c for b in held for c in b["caption"]][: opts.clips]
        rolled = torch.roll(held_latents, shifts=-1, dims=0)  # clip i gets clip i + 1's frames
        for gamma, cross in ((g, c) for g in opts.sample_gamma or [None] for c in opts.cross_guidance):
            sampled = {}
            for name, video in (("true", held_latents), ("none", rolled)):
                audio = []
                for start in range(0, opts.clips, 8):
                    with torch.no_grad(), system.ema_weights():
                        audio.append(system.generate(captions[start:start + 8], gamma=gamma, seed=start,
                                                     video_latents=video[start:start + 8],
                                                     cross_modal_guidance=cross)[1])
                sampled[name] = torch.cat(audio)
            key = ("given_video" if gamma is None else f"given_video_gamma{gamma:g}") + (
                "" if cross == 1 else f"_cross{cross:g}")
            report[key] = demo_checks(held, sampled, opts.clips, fps, int(system.clip.sample_rate))
            print(key, json.dumps({k: {"aligned": v["generated"]["aligned_clips"],
                                       "delayed": v["shifted"]["aligned_clips"],
                                       "av_align_minus_delayed": v["av_align_minus_shifted"]}
                                   for k, v in report[key].items()}, default=float), flush=True)
    for eta in opts.video_first or []:
        for gamma, cross in ((g, c) for g in opts.sample_gamma or [None] for c in opts.cross_guidance):
            key = f"video_first_eta{eta:g}" + ("" if gamma is None else f"_gamma{gamma:g}") + (
                "" if cross == 1 else f"_cross{cross:g}")
            report[key] = video_first_samples(system, opts.run_dir / key, opts.samples or opts.clips, gamma, eta,
                                              cross)
            print(key, json.dumps(report[key], default=float), flush=True)


if __name__ == "__main__":
    sys.exit(main())
