"""``python -m avgen pretrain-twins part=codecs|generators``: train the mini twins on the synthetic data.

Part 1, the codecs (``configs/part/codecs.yaml``):

1. Prepare (if needed) and read the ``train`` split of ``synthetic_hits`` at ``scale=mini``'s store geometry into
   memory (:class:`~avgen.data.clip_bank.ClipBank`: 512 clips of 2 s, 32×32 at 8 fps, 16 kHz mono).
2. Train each stage of ``pretrain_twins.stages`` in turn (:mod:`avgen.systems.codec_twins`): ``frames_vae``,
   ``mel_vae``, ``mel_vae_decoder`` (the mel VAE's decoder fine-tuned against a discriminator, encoder frozen),
   ``vocoder``, ``vocoder_finetune`` (the vocoder fine-tuned on the mel VAE's reconstructions); the last two replace
   the models they continue in what is published. ``pretrain_twins.start_from`` takes finished ``frames_vae``,
   ``mel_vae`` and ``vocoder`` from a published folder (:func:`adopt_start_from`), so the tuning stages can run on
   the committed codecs alone. Each stage trains in ``<run>/<stage>/`` with its own Lightning checkpoints
   (``checkpoints/``, every ``pretrain_twins.checkpoint_every`` steps, ``last.ckpt`` on Ctrl-C and at the end) and
   ``logs/metrics.csv``. Run
   again, the command continues every stage from its newest checkpoint (a finished stage is not retrained; a
   larger ``steps`` continues it); batches are drawn from the step number, so a resumed stage computes what an
   uninterrupted one would. The VAEs' latent ``scaling_factor`` is set to 1 / std of their latents over the
   training frames / mels (as Stable Diffusion's 0.18215 was chosen).
3. Measure the three codecs on the held-out ``test`` split (:func:`evaluate_codecs`) and draw a strip of frames
   and their reconstructions.
4. Write ``<run>/twins/``: one ``save_pretrained`` folder per codec, ``manifest.json`` (format, recipe commit and
   command, the ``pretrain_twins`` and ``data`` config, data seed and clip counts, every file's SHA-256,
   parameter counts, steps, measured quality, library versions), ``metrics.json`` and ``frames_strip.png``;
   with ``pretrain_twins.publish_dir`` (``avgen/backbones/mini_weights``) also there, which ``scale=mini`` loads
   (:mod:`avgen.backbones.mini`).

Part 2, the base generators (``configs/part/generators.yaml``, :mod:`avgen.systems.generator_twins`), the same
steps around other stages: the committed codecs (or ``pretrain_twins.codecs_dir``) encode every training clip once
(:class:`~avgen.systems.generator_twins.LatentBank`), the tiny twins' frozen random text towers encode the
captions, then ``audioldm_unet``, ``animatediff_image``, ``animatediff_motion`` (over the trained image U-Net),
``animatediff_video`` (both trained together on clips; it publishes the pair) and ``zeroscope_unet`` train
(``pretrain_twins.start_from=avgen/backbones/mini_generators`` adopts the published ones, so a stage that continues
them runs alone); :func:`evaluate_generators` measures the published generators on held-out clips (held-out
denoising loss against the initial weights, sampled clips' frame change, prompted colour and shape seen by a frame
classifier, audio onsets and impacts); ``<run>/twins/`` holds the U-Nets, the motion adapter, the scheduler of a
stage whose noise schedule is not its twin's (:data:`STAGE_SCHEDULERS`: the audio U-Net's zero-terminal-SNR one),
``samples_strip.png`` and a manifest that records the codecs' tag (``scale=mini`` refuses generators of other
codecs); ``pretrain_twins.publish_dir`` (``avgen/backbones/mini_generators``) installs them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from avgen.errors import ConfigError, NothingProduced

log = logging.getLogger("avgen")

#: each part's stages, in training order
PART_STAGES: dict[str, tuple[str, ...]] = {
    "codecs": ("frames_vae", "mel_vae", "mel_vae_decoder", "vocoder", "vocoder_finetune"),
    "generators": ("audioldm_unet", "animatediff_image", "animatediff_motion", "animatediff_video", "zeroscope_unet"),
}
STAGES = PART_STAGES["codecs"]
#: the codecs ``scale=mini`` loads; ``mel_vae_decoder`` and ``vocoder_finetune`` continue and replace two of them
#: (:data:`avgen.systems.codec_twins.CONTINUES`)
CODECS = ("frames_vae", "mel_vae", "vocoder")
#: the generators ``scale=mini`` loads; ``animatediff_video`` continues and replaces the AnimateDiff pair
#: (:data:`avgen.systems.generator_twins.CONTINUES`)
GENERATORS = ("audioldm_unet", "animatediff_image", "animatediff_motion", "zeroscope_unet")
#: each part's published components
PART_COMPONENTS: dict[str, tuple[str, ...]] = {"codecs": CODECS, "generators": GENERATORS}
PARTS = tuple(PART_STAGES)
TWINS_DIR = "twins"
STRIP = "frames_strip.png"
#: the picture each part's twins folder holds: the codecs' reconstructions, the generators' samples
STRIPS = {"codecs": STRIP, "generators": "samples_strip.png"}
PSNR_CAP = 100.0  # dB: a frame reproduced exactly (PSNR inf) counts as 100 dB in the averages


# ----------------------------------------------------------------------------------- stages
def part_of(cfg: DictConfig) -> str:
    """The part the run trains (``pretrain_twins.part``)."""
    return str(cfg.pretrain_twins.part)


def stage_specs(cfg: DictConfig) -> DictConfig:
    """The stages' settings of the run's part: ``pretrain_twins.<part>`` (``codecs`` or ``generators``)."""
    return cfg.pretrain_twins[part_of(cfg)]


def trainers(part: str) -> Mapping[str, Any]:
    """Stage name → training module class of ``part``."""
    if part == "generators":
        from avgen.systems.generator_twins import TRAINERS
    else:
        from avgen.systems.codec_twins import TRAINERS
    return TRAINERS


def stage_config(cfg: DictConfig, stage: str) -> DictConfig:
    """The run config of one stage: ``paths.output_dir`` = ``<run>/<stage>``, the stage's ``steps`` as
    ``trainer.max_steps``, checkpoints every ``pretrain_twins.checkpoint_every`` steps.

    Raises:
        ConfigError: ``trainer.accumulate_grad_batches`` other than 1, or more than one device or node (a batch is a
            function of the optimiser step: accumulation and data parallelism would repeat batches).
    """
    trainer = cfg.get("trainer") or {}
    for key, value in (("accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1)),
                       ("devices", trainer.get("devices", 1)), ("num_nodes", trainer.get("num_nodes", 1))):
        if value not in (1, "1", None):
            raise ConfigError(f"trainer.{key}={value}: pretrain-twins draws each batch from the optimiser step on one "
                              f"process; set trainer.{key}=1 (raise pretrain_twins.{part_of(cfg)}.<stage>.batch_size "
                              f"instead)")
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    root = Path(cfg.paths.output_dir)
    OmegaConf.update(out, "paths.output_dir", str(root / stage), force_add=True)
    OmegaConf.update(out, "trainer.max_steps", int(stage_specs(cfg)[stage].steps))
    OmegaConf.update(out, "trainer.max_epochs", -1)
    OmegaConf.update(out, "trainer.limit_val_batches", 0)
    every = int(cfg.pretrain_twins.checkpoint_every)
    if out.get("callbacks") and out.callbacks.get("model_checkpoint") is not None:
        OmegaConf.update(out, "callbacks.model_checkpoint.every_n_train_steps", every)
    return out


def build_stage(cfg: DictConfig, stage: str, **extra: Any):
    """The stage's training module (:func:`trainers` of the part) from ``pretrain_twins.<part>.<stage>``; ``extra``
    arguments go to its constructor (the motion stage's trained image ``unet``).

    Raises:
        ConfigError: an unknown stage or a bad argument (naming the key).
    """
    part = part_of(cfg)
    classes = trainers(part)
    if stage not in classes:
        raise ConfigError(f"pretrain_twins.stages names {stage!r}; expected some of {', '.join(classes)}")
    spec = OmegaConf.to_container(stage_specs(cfg)[stage], resolve=True)
    model_config = spec.pop("model")
    seed = int(cfg.pretrain_twins.seed)
    order = PART_STAGES[part]
    try:
        # each stage's initial weights depend on the seed and the stage alone, not on what ran before it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000 + order.index(stage) if stage in order else seed)
            return classes[stage](model_config, seed=seed, **spec, **extra)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"pretrain_twins.{part}.{stage}: {exc}") from exc


def check_stage_inputs(cfg: DictConfig, stage: str, bank) -> None:
    """Refuse stage settings the clips or the model cannot serve, before training (one line naming the key): a
    codec stage's ``mel_frames`` must fit the clips and, for a stage that runs the mel VAE (``mel_vae``,
    ``mel_vae_decoder``, ``vocoder_finetune``), be a multiple of its time downsampling (from
    ``pretrain_twins.codecs.mel_vae.model``).

    Raises:
        ConfigError: a mel crop longer than the clips, or not a multiple of the mel VAE's downsampling.
    """
    from avgen.backbones.audioldm import AudioLDMMel

    specs = stage_specs(cfg)
    frames = specs[stage].get("mel_frames") if part_of(cfg) == "codecs" else None
    if frames is None:
        return
    key = f"pretrain_twins.codecs.{stage}.mel_frames"
    frames = int(frames)
    hop = AudioLDMMel().hop_length
    factor = 1
    if stage in ("mel_vae", "mel_vae_decoder", "vocoder_finetune") and specs.get("mel_vae") is not None:
        factor = 2 ** (len(specs.mel_vae.model.block_out_channels) - 1)
    most = bank.audio.shape[1] // hop // factor * factor
    allowed = f"a multiple of {factor} from {factor} to {most}" if factor > 1 else f"1 to {most}"
    if frames < 1 or frames * hop > bank.audio.shape[1]:
        raise ConfigError(f"{key}={frames}: segments of {frames} mel frames ({frames * hop} samples) do not fit the "
                          f"clips ({bank.audio.shape[1]} samples); use {allowed}")
    if frames % factor:
        raise ConfigError(f"{key}={frames}: the mel VAE downsamples time {factor}x; use {allowed}")


def read_sessions(folder: Path) -> list[dict[str, Any]]:
    """The training sessions recorded in ``<stage>/sessions.json`` (none: an empty list). Sessions recorded before
    ``clip_source`` existed trained on the store's clips."""
    path = folder / "sessions.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _record_session(folder: Path, entry: Mapping[str, Any]) -> None:
    """Append one training session (commit, steps, seconds) to ``<stage>/sessions.json``."""
    path = folder / "sessions.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append(dict(entry))
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sessions, indent=2) + "\n")


def train_stage(cfg: DictConfig, stage: str, bank, fit: Callable[[DictConfig, Any, str | None], None],
                **extra: Any) -> torch.nn.Module:
    """Train (or continue, or reuse when finished) one stage; returns its model, in eval mode, with the VAEs'
    ``scaling_factor`` set (:func:`latent_scaling_factor`), saved to ``<run>/<stage>/model``; each training session
    is recorded in ``<run>/<stage>/sessions.json`` (commit, first and last step, seconds).

    ``fit(stage_cfg, module, ckpt_path)`` runs Lightning's fit of ``module`` under :func:`stage_config`'s config,
    resuming from ``ckpt_path`` (None: from scratch); :func:`avgen.commands.pretrain_twins` gives the command line's
    trainer (its callbacks: checkpoints, Ctrl-C, SLURM requeue). ``resume=auto`` continues from the stage's newest
    checkpoint; ``resume=never`` deletes the stage's checkpoints and starts it over.

    Raises:
        ConfigError: ``resume`` is a path (each stage has its own checkpoints: use auto or never), or the stage's
            checkpoint was trained with another ``model`` config than the one given.
    """
    from avgen.checkpoint import checkpoint_entry, newest_checkpoint, remove_stale_temporaries

    scfg = stage_config(cfg, stage)
    folder = Path(scfg.paths.output_dir)
    ckpt_dir = folder / "checkpoints"
    for stale in remove_stale_temporaries(ckpt_dir):
        print(f"removed {stale}: a temporary checkpoint left by a process killed while saving")
    module = build_stage(cfg, stage, **extra)
    module.bank = bank
    check_stage_inputs(cfg, stage, bank)
    resume = str(cfg.get("resume", "auto"))
    if resume not in ("auto", "never"):
        raise ConfigError(f"resume={resume}: pretrain-twins resumes each stage from its own folder; use resume=auto "
                          f"(continue) or resume=never (start every stage over)")
    if resume == "never" and ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
        print(f"{stage}: resume=never: removed {ckpt_dir}")
    newest = newest_checkpoint(ckpt_dir)
    steps = module.steps
    saved_hparams: dict[str, Any] = {}
    if newest is not None:
        saved_hparams = checkpoint_entry(newest[0], "hyper_parameters") or {}
        trained_with = saved_hparams.get("config")
        if trained_with is not None and dict(trained_with) != module.config:
            raise ConfigError(f"pretrain_twins.{part_of(cfg)}.{stage}.model differs from the model {newest[0]} was "
                              f"trained "
                              f"with; give the same model, or another run folder (hydra.run.dir=...), or "
                              f"resume=never to start the stages over")
        problem = module.resume_problem(saved_hparams)
        if problem is not None:
            raise ConfigError(f"pretrain_twins.{part_of(cfg)}.{stage}: {newest[0]}: {problem}; train the stage again "
                              f"(remove {ckpt_dir}) or use another run folder (hydra.run.dir=...)")
    source_now = clip_source(cfg)
    trained_on = sorted({str(entry.get("clip_source", "store")) for entry in read_sessions(folder)} - {source_now})
    if newest is not None and trained_on:  # a note, not an error: continuing on the other clips can be the intent
        print(f"{stage}: note: its checkpoint trained on clips from {' and '.join(trained_on)} (this run's come from "
              f"{source_now}: pretrain_twins.clip_source); the manifest's sessions record each session's clips")
    if newest is not None and newest[1] >= steps:
        print(f"{stage}: finished ({newest[1]} steps, {newest[0]}); not retrained")
        given = {k: v for k, v in training_settings(module.hparams).items() if k != "steps"}
        # a setting the checkpoint predates was trained at its default
        was = {**argument_defaults(type(module)), **training_settings(saved_hparams)}
        changed = {k: v for k, v in given.items() if k in was and was[k] != v}
        if changed:
            print(f"{stage}: note: it was trained with " + ", ".join(f"{k}={was[k]}" for k in changed) +
                  f" (given {', '.join(f'{k}={v}' for k, v in changed.items())}); the manifest records what it was "
                  f"trained with")
        module.load_state_dict(torch.load(newest[0], map_location="cpu", weights_only=True, mmap=True)["state_dict"])
    else:
        if newest is not None:
            print(f"{stage}: resuming from {newest[0]} (step {newest[1]} of {steps})")
        else:
            print(f"{stage}: training {steps} steps ({sum(p.numel() for p in module.model.parameters()):,} "
                  f"parameters)")
        began = time.monotonic()
        first = newest[1] if newest else 0
        source = recipe_commit()  # the code this process loaded (HEAD may have moved since it started)
        try:
            fit(scfg, module, str(newest[0]) if newest else None)
        finally:
            reached = newest_checkpoint(ckpt_dir)
            _record_session(folder, {**source, "from_step": first,
                                     "to_step": reached[1] if reached else first,
                                     "seconds": round(time.monotonic() - began, 1), "threads": torch.get_num_threads(),
                                     "clip_source": source_now})
    model = module.component().eval()
    if stage in ("frames_vae", "mel_vae"):
        factor = latent_scaling_factor(module, bank)
        model.register_to_config(scaling_factor=factor)
    shutil.rmtree(folder / "model", ignore_errors=True)
    model.save_pretrained(folder / "model")
    return model


def finished_stage(cfg: DictConfig, stage: str) -> torch.nn.Module | None:
    """The model a stage of this run folder finished earlier (``<run>/<stage>/model``, written by
    :func:`train_stage`), or None."""
    folder = Path(cfg.paths.output_dir) / stage / "model"
    if not (folder / "config.json").is_file():
        return None
    model = component_class(trainers(part_of(cfg))[stage]).from_pretrained(folder).eval()
    config = getattr(model, "_internal_dict", None)
    if config is not None and "_name_or_path" in config:  # diffusers would write this machine's path on saving
        from diffusers.configuration_utils import FrozenDict

        model._internal_dict = FrozenDict({k: v for k, v in config.items() if k != "_name_or_path"})
    return model


def component_class(trainer: type) -> type:
    """The class of what a stage's trainer makes (its ``component_class``: a diffusers or transformers class name)."""
    import diffusers
    import transformers

    name = trainer.component_class
    return getattr(diffusers, name, None) or getattr(transformers, name)


def stage_record(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """What the stage's folder says of its training: the step its newest checkpoint reached and its sessions (a
    stage taken from ``pretrain_twins.start_from``: what that folder's manifest recorded, and ``from``)."""
    from avgen.checkpoint import checkpoint_entry, newest_checkpoint

    folder = Path(cfg.paths.output_dir) / stage
    newest = newest_checkpoint(folder / "checkpoints")
    adopted = folder / START_FROM
    if newest is None and adopted.is_file():  # taken from pretrain_twins.start_from: its manifest's record
        given = json.loads(adopted.read_text())
        entry = given["component"]
        kept = ("stage", "steps", "trained_with", "sessions", "train_seconds", "base")
        return {k: entry[k] for k in kept if k in entry} | {"from": {"dir": given["dir"], "tag": given["tag"]}}
    sessions_file = folder / "sessions.json"
    sessions = json.loads(sessions_file.read_text()) if sessions_file.is_file() else []
    trained_with = None
    if newest is not None:
        hparams = checkpoint_entry(newest[0], "hyper_parameters") or {}
        trained_with = training_settings(hparams)
    return {"steps": newest[1] if newest else None, "trained_with": trained_with, "sessions": sessions,
            "train_seconds": round(sum(s.get("seconds", 0) for s in sessions), 1) if sessions else None}


def component_record(cfg: DictConfig, name: str, made_by: Mapping[str, Sequence[str]] | None) -> dict[str, Any]:
    """The manifest's record of component ``name``: :func:`stage_record` of the stage that made it, or, when
    ``made_by[name]`` lists several (``mel_vae`` then ``mel_vae_decoder``), the last one's with ``stage`` and
    ``base`` (the first one's record)."""
    stages = list((made_by or {}).get(name) or [name])
    record = stage_record(cfg, stages[-1])
    if len(stages) > 1:
        record = {"stage": stages[-1], **record, "base": {"stage": stages[0], **stage_record(cfg, stages[0])}}
    return record


def argument_defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of ``cls``'s ``__init__`` and of its bases' (a subclass's default wins): what a stage
    checkpoint saved before an argument existed was trained with."""
    import inspect

    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                defaults[name] = parameter.default
    return defaults


def training_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's training settings from its module's hyperparameters (what its checkpoint saved), JSON-ready: every
    argument but the model ``config`` (recorded by the component's own config.json)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(hparams).items() if k != "config"}


@torch.no_grad()
def latent_scaling_factor(module, bank, examples: int = 512, seed: int = 12345) -> float:
    """1 / std of the VAE's posterior samples over ``examples`` training inputs drawn with ``seed``: latents times it
    have unit variance, as the diffusion models expect (Rombach et al. 2022, Sec. G; SD's 0.18215)."""
    generator = bank.generator(seed, 0)
    saved = module.batch_size
    module.batch_size = examples
    try:
        x = module.inputs(generator)
    finally:
        module.batch_size = saved
    posterior = module.model.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    return float(1.0 / z.float().std())


# ----------------------------------------------------------------------------------- evaluation
#: what the onset measurements import: librosa's detector, soxr (librosa's resampler for the 22.05-kHz protocol) and,
#: for the codecs' onset F1, mir_eval's matching
ONSET_MODULES = {"generators": ("librosa", "soxr"), "codecs": ("librosa", "soxr", "mir_eval")}


def onsets_unmeasured(part: str) -> str | None:
    """None where the onset measurements of ``part`` can run, else what ``metrics.json`` records in their place
    (naming the missing modules): a GPU node without media libraries trains and measures the rest."""
    from avgen._lazy import module_available

    missing = [name for name in ONSET_MODULES[part] if not module_available(name)]
    if not missing:
        return None
    return (f"onsets not measured: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here "
            f"(pip install {' '.join(missing)}, then run the same command again: finished stages are measured, not "
            f"retrained)")


@torch.no_grad()
def evaluate_codecs(models: Mapping[str, torch.nn.Module], bank, tolerances: Mapping[str, float]) -> dict[str, Any]:
    """The codecs' reconstruction quality on ``bank`` (held-out clips), for the codecs present in ``models``
    (``frames_vae``, ``mel_vae``, ``vocoder``; any subset):

    * ``frames_vae``: ``psnr_db`` of decoded frames (posterior mean, rounded to 8 bits) against the input, per
      frame (capped at :data:`PSNR_CAP`), averaged over each clip's frames, then over clips
      (:func:`avgen.metrics.codec.frame_psnr`); ``correlation``: Pearson's r of decoded and input pixel values per
      clip, averaged over clips (random codecs: about 0);
    * ``mel_vae``: ``mel_l1`` — mean absolute error of the decoded log-mel (natural log, AudioLDM's front end) over
      every clip's frames and bins;
    * ``vocoder`` (resynthesis of the clip's own log-mel) and ``mel_vae+vocoder`` (the decoded log-mel): ``lsd``
      (:func:`~avgen.metrics.codec.log_spectral_distance`, averaged over clips), ``peak`` (the mean over clips of the
      largest |sample|; the inputs peak at 0.9), ``impact_contrast`` (the median over clips of
      :func:`~avgen.metrics.codec.impact_contrast`: a blurred attack or a raised floor lowers it), and the onset F1
      against the clips' ``events`` at each tolerance of
      ``tolerances`` (name → seconds; :func:`~avgen.metrics.codec.onset_f1`: matches pooled over clips);
    * ``reference``: the same onset F1 and impact contrast of the original audio (the detector's own ceiling on these
      clips).

    Where the onset detector's modules are not installed (:data:`ONSET_MODULES`) the onset F1s are replaced by
    ``onsets``, naming them (:func:`onsets_unmeasured`); the rest is measured.
    """
    from avgen.backbones.audioldm import AudioLDMMel
    from avgen.metrics.codec import clip_onsets, frame_psnr, impact_contrast, log_spectral_distance, onset_f1

    out: dict[str, Any] = {"clips": len(bank)}
    sr = bank.geometry.sample_rate
    events = [e.tolist() for e in bank.events]

    def onsets_of(audio: torch.Tensor) -> list[list[float]]:
        return [clip_onsets(a.numpy(), sr).tolist() for a in audio]

    unmeasured = onsets_unmeasured("codecs")
    if unmeasured:
        print(f"avgen pretrain-twins: {unmeasured}")

    def onset_scores(audio: torch.Tensor) -> dict[str, Any]:
        if unmeasured:
            return {"onsets": unmeasured}
        detected = onsets_of(audio)
        scores = {}
        for name, window in tolerances.items():
            scores.update(onset_f1(events, detected, window).as_dict(prefix=f"onset_{name}_"))
        return scores

    out["reference"] = {**onset_scores(bank.audio),
                        "impact_contrast": float(np.median([impact_contrast(a.numpy(), sr) for a in bank.audio]))}
    if "frames_vae" in models:
        vae = models["frames_vae"]
        psnr, correlation = [], []
        for clip in bank.frames:  # (F, 3, H, W) uint8
            x = clip.float().div(127.5).sub(1.0)
            recon = vae.decode(vae.encode(x).latent_dist.mean).sample
            correlation.append(torch.corrcoef(torch.stack([x.flatten(), recon.float().flatten()]))[0, 1])
            recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            psnr.append(frame_psnr(clip, recon).clamp(max=PSNR_CAP).mean())
        out["frames_vae"] = {"psnr_db": float(torch.stack(psnr).mean()),
                             "correlation": float(torch.stack(correlation).mean())}
    mel = AudioLDMMel()
    log_mel = mel(bank.audio)  # (N, T, n_mels)
    decoded_mel = None
    if "mel_vae" in models:
        vae = models["mel_vae"]
        frames = log_mel.shape[1]
        pad = (-frames) % (2 ** (len(vae.config.block_out_channels) - 1))  # a multiple of the VAE's downsampling
        x = torch.nn.functional.pad(log_mel, (0, 0, 0, pad), value=mel.silence).unsqueeze(1)
        decoded_mel = torch.cat([vae.decode(vae.encode(x[i:i + 16]).latent_dist.mean).sample
                                 for i in range(0, len(x), 16)]).squeeze(1)[:, :frames]
        out["mel_vae"] = {"mel_l1": float((decoded_mel - log_mel).abs().mean())}
    if "vocoder" in models:
        vocoder = models["vocoder"]
        for name, source in (("vocoder", log_mel), ("mel_vae+vocoder", decoded_mel)):
            if source is None:
                continue
            audio = torch.cat([vocoder(source[i:i + 16]) for i in range(0, len(source), 16)]).float()
            audio = torch.nn.functional.pad(audio, (0, max(0, bank.audio.shape[1] - audio.shape[1])))
            audio = audio[:, :bank.audio.shape[1]]
            out[name] = {"lsd": float(log_spectral_distance(bank.audio, audio).mean()),
                         "peak": float(audio.abs().amax(dim=1).mean()),
                         "impact_contrast": float(np.median([impact_contrast(a.numpy(), sr) for a in audio])),
                         **onset_scores(audio)}
    return out


@torch.no_grad()
def frames_strip(vae, bank, clips: int = 3, every: int = 2, zoom: int = 4) -> np.ndarray:
    """A picture (uint8 ``(H', W', 3)`` RGB) of the first ``clips`` clips of ``bank``: for each, a row of every
    ``every``-th frame and below it the same frames through the frame VAE (posterior mean), enlarged ``zoom``×
    with nearest-neighbour sampling; white gaps of ``zoom`` pixels between the two rows and 4 more between clips."""
    rows = []
    for clip in bank.frames[:clips]:
        frames = clip[::every]
        recon = vae.decode(vae.encode(frames.float().div(127.5).sub(1.0)).latent_dist.mean).sample
        recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for row in (frames, recon):
            image = torch.cat(list(row.permute(0, 2, 3, 1)), dim=1)  # (H, F·W, 3)
            image = image.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
            rows += [image, torch.full((zoom, image.shape[1], 3), 255, dtype=torch.uint8)]
        rows.append(torch.full((4, rows[-1].shape[1], 3), 255, dtype=torch.uint8))
    return torch.cat(rows[:-2]).numpy()


# ----------------------------------------------------------------------------------- the twins folder
def json_numbers(tree: Any) -> Any:
    """``tree`` with every non-finite float replaced by None (JSON has no NaN: an undefined precision is null)."""
    if isinstance(tree, Mapping):
        return {k: json_numbers(v) for k, v in tree.items()}
    if isinstance(tree, float) and not np.isfinite(tree):
        return None
    return tree


_PROCESS_REVISION: dict[str, Any] | None = None


def recipe_commit() -> dict[str, Any]:
    """The avgen source revision this process runs: ``{"commit": <sha>, "dirty": bool}`` from git, or
    ``{"commit": None}`` outside a git checkout.

    Read once per process (the first call; :func:`run_recipe` makes it before any stage) and returned unchanged
    afterwards: Python loaded the code when the process started, so a later checkout or commit while a multi-stage
    run trains does not change what the remaining stages run, and their sessions must not say it does."""
    global _PROCESS_REVISION
    if _PROCESS_REVISION is None:
        _PROCESS_REVISION = _git_revision()
    return dict(_PROCESS_REVISION)


def _git_revision() -> dict[str, Any]:
    """HEAD and whether tracked files differ from it, as git says now (see :func:`recipe_commit`)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": sha, "dirty": dirty}


def write_twins(cfg: DictConfig, models: Mapping[str, torch.nn.Module], metrics: Mapping[str, Any],
                strip: np.ndarray | None, data_info: Mapping[str, Any], command: str,
                extra: Mapping[str, Any] | None = None, made_by: Mapping[str, Sequence[str]] | None = None) -> Path:
    """``<run>/twins/``: the trained components (``save_pretrained``), ``manifest.json`` (``command``: the recipe's
    command line; per component the step its checkpoint reached and its training sessions, :func:`stage_record`
    (a component ``made_by`` several stages: the last one's, its ``stage``, and its ``base``: the first one's);
    ``extra`` entries, e.g. the generators' ``codecs``), ``metrics.json`` and the part's strip (:data:`STRIPS`);
    returns the folder (written beside it and renamed into place)."""
    from PIL import Image

    from avgen._versions import library_versions
    from avgen.backbones.mini import MANIFEST, MANIFEST_FORMAT
    from avgen.pretrained import sha256_file

    final = Path(cfg.paths.output_dir) / TWINS_DIR
    partial = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
    partial.mkdir(parents=True)
    try:
        components = {}
        of_stage = {component: stage for stage, component in STAGE_SCHEDULERS.items()}
        for name, model in models.items():
            model.save_pretrained(partial / name)
            files = sorted(p.name for p in (partial / name).iterdir() if p.is_file())
            components[name] = {
                "class": type(model).__name__,
                "library": type(model).__module__.split(".")[0],
                "parameters": sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0,
                **({"stage": of_stage[name]} if name in of_stage else component_record(cfg, name, made_by)),
                "files": {f: sha256_file(partial / name / f) for f in files},
            }
            if hasattr(model.config, "scaling_factor") and name.endswith("vae"):
                components[name]["scaling_factor"] = float(model.config.scaling_factor)
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if strip is not None:
            Image.fromarray(np.ascontiguousarray(strip, dtype=np.uint8), mode="RGB").save(
                partial / STRIPS[part_of(cfg)])
        manifest = {
            "format": MANIFEST_FORMAT,
            "part": cfg.pretrain_twins.part,
            "recipe": {
                "command": command,
                **recipe_commit(),  # the commit that measured and wrote the twins; training: components.*.sessions
                "config": {"pretrain_twins": OmegaConf.to_container(cfg.pretrain_twins, resolve=True)},
            },
            "data": dict(data_info),
            **dict(extra or {}),
            "components": components,
            "metrics": metrics,
            "versions": library_versions(),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)  # the run's own output, rewritten on every run
        os.rename(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def check_publish_target(target: Path, overwrite: bool) -> None:
    """Refuse a ``publish_dir`` the recipe may not replace (see :func:`publish`); run before training too.

    Raises:
        FileExistsError: ``target`` is a file, exists without ``overwrite``, is not a mini-twins folder, or holds a
            file its manifest does not list.
    """
    from avgen.backbones.mini import MANIFEST, read_manifest

    if target.is_file():
        raise FileExistsError(f"pretrain_twins.publish_dir={target} is a file; give a folder (it is created)")
    if not target.exists():
        return
    if not overwrite:
        raise FileExistsError(f"pretrain_twins.publish_dir={target} exists; set pretrain_twins.overwrite=true to "
                              f"replace the mini twins there")
    try:
        old = read_manifest(target)
    except ConfigError as exc:
        raise FileExistsError(f"pretrain_twins.publish_dir={target} is not a mini-twins folder ({exc}); "
                              f"nothing was replaced") from exc
    components = old.get("components") or {}
    known = {MANIFEST, "metrics.json", *STRIPS.values(), *components}
    foreign = sorted(p.name for p in target.iterdir() if p.name not in known)
    for name, entry in components.items():
        if (target / name).is_dir():
            listed = set(entry.get("files") or {})
            foreign += sorted(f"{name}/{p.name}" for p in (target / name).iterdir() if p.name not in listed)
    if foreign:
        raise FileExistsError(f"pretrain_twins.publish_dir={target} holds {', '.join(foreign)}, which the recipe "
                              f"did not write; move them away first (nothing was replaced)")


def publish(twins: Path, target: str | os.PathLike, overwrite: bool) -> Path:
    """Copy the twins folder to ``target`` (``avgen/backbones/mini_weights`` to update the committed weights).

    An existing target is replaced only with ``overwrite`` and only when it is a twins folder: a manifest of this
    format, and no file the manifest does not list (top level or inside a component). The new copy is written beside
    the target and swapped in by two renames, so a process killed meanwhile leaves the old or the new folder.

    Raises:
        FileExistsError: the target exists and ``overwrite`` is false, or it holds files the recipe did not write.
    """
    target = Path(target)
    check_publish_target(target, overwrite)
    token = uuid.uuid4().hex
    partial = target.with_name(f".{target.name}.partial-{token}")
    retired = target.with_name(f".{target.name}.old-{token}")
    shutil.copytree(twins, partial)
    try:
        if target.exists():
            os.rename(target, retired)
        os.rename(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------- the recipe
def read_bank(datamodule, geometry, split: str, limit: int | None, config_key: str):
    """:meth:`ClipBank.read` of ``split`` (at most ``limit`` clips).

    Raises:
        ConfigError: the split has no shards or no readable clip (naming ``config_key``).
    """
    from avgen.data.clip_bank import ClipBank

    try:
        return ClipBank.read(datamodule.shards(split), geometry, split=split, limit=limit)
    except ValueError as exc:
        raise ConfigError(f"{config_key}: {exc}") from exc


CLIP_SOURCES = ("store", "rendered")


def clip_bank(cfg: DictConfig, datamodule, geometry, split: str, limit: int | None, config_key: str):
    """The clips of ``split`` (at most ``limit``) the recipe trains or measures on, from ``pretrain_twins.clip_source``:
    ``store`` decodes the prepared split (:func:`read_bank`); ``rendered`` draws the same clips with
    ``synthetic_hits``' generator in memory, without encoding them
    (:func:`avgen.data.synthetic_prepare.rendered_clip_bank`: no PyAV, no h264 error, nothing written).

    Raises:
        ConfigError: another clip source; ``rendered`` with a dataset other than ``synthetic_hits``, a split it
            prepares no clips for, or a ``data.clip`` frame size other than the store's; ``store`` with no readable
            clip.
    """
    source = clip_source(cfg)
    if source == "store":
        return read_bank(datamodule, geometry, split, limit, config_key)
    from avgen.data.shards import SPLITS
    from avgen.data.synthetic_prepare import rendered_clip_bank

    if split not in SPLITS:
        raise ConfigError(f"{config_key}={split}: synthetic_hits has no such split; use test or val")
    counts = cfg.data.prepare.get("clips") or {}
    count = int(counts.get(split) or 0)
    if count < 1:
        raise ConfigError(f"{config_key}: pretrain_twins.clip_source=rendered renders data.prepare.clips.{split} "
                          f"clips of the {split} split, and it is {counts.get(split)}; set it to at least 1")
    bank = rendered_clip_bank(split, count if limit is None else min(int(limit), count), cfg.data.store,
                              seed=int(cfg.data.prepare.seed), clip=cfg.data.clip)
    if bank.geometry != geometry:  # the recipe's geometry is the store's clips at data.clip's frame size: the same
        raise ConfigError(f"data.clip: rendered clips have geometry {bank.geometry}, the recipe reads {geometry}")
    return bank


def clip_source(cfg: DictConfig) -> str:
    """``pretrain_twins.clip_source`` (``store`` when unset), checked.

    Raises:
        ConfigError: not one of :data:`CLIP_SOURCES`, or ``rendered`` for a dataset other than ``synthetic_hits``.
    """
    source = cfg.pretrain_twins.get("clip_source") or "store"
    if source not in CLIP_SOURCES:
        raise ConfigError(f"pretrain_twins.clip_source={source!r}: expected store (the prepared shards) or rendered "
                          f"(synthetic_hits' clips drawn in memory)")
    if source == "rendered" and cfg.data.get("name") != "synthetic_hits":
        raise ConfigError(f"pretrain_twins.clip_source=rendered draws synthetic_hits' clips, but data is "
                          f"{cfg.data.get('name')!r}; use data=synthetic_hits or pretrain_twins.clip_source=store")
    if source == "rendered" and cfg.data.get("subset"):
        raise ConfigError(f"data.subset={cfg.data.subset}: a subset selects clips of a prepared store, and "
                          f"pretrain_twins.clip_source=rendered reads none; use pretrain_twins.clip_source=store")
    return str(source)


def run_recipe(cfg: DictConfig, datamodule, fit: Callable[[DictConfig, Any, str | None], None], command: str) -> Path:
    """The recipe of the module docstring on ``datamodule`` (``cfg.data``'s, prepared here when needed; None with
    ``pretrain_twins.clip_source=rendered``, which reads no store); ``fit`` trains
    a stage (:func:`train_stage`); ``command`` is recorded in the manifest. Returns the twins folder.

    Raises:
        ConfigError: an unknown stage, a bad stage argument.
        NothingProduced: no stage was asked for.
    """
    from avgen.data.geometry import ClipGeometry

    settings = cfg.pretrain_twins
    if settings.get("part") not in PARTS:
        raise ConfigError(f"pretrain_twins.part={settings.get('part')!r}: this avgen trains part "
                          f"{' or '.join(PARTS)} (choose it with part=<name>, which sets this key)")
    if settings.get(settings.part) is None:
        raise ConfigError(f"pretrain_twins.part={settings.part}: the config has no pretrain_twins.{settings.part} "
                          f"settings; choose the part with part={settings.part} (not pretrain_twins.part=)")
    if isinstance(settings.stages, str) or not isinstance(settings.stages, Sequence):
        raise ConfigError(f"pretrain_twins.stages={settings.stages}: expected a list, e.g. "
                          f"pretrain_twins.stages=[vocoder]")
    stages = list(settings.stages)
    part = part_of(cfg)
    specs = stage_specs(cfg)
    unknown = [s for s in stages if s not in specs]
    if unknown:
        raise ConfigError(f"pretrain_twins.stages names {', '.join(map(repr, unknown))}; expected some of "
                          f"{', '.join(specs)}")
    if not stages:
        raise NothingProduced("pretrain_twins.stages is empty: nothing to train")
    if int(settings.evaluate.clips) < 1:
        raise ConfigError(f"pretrain_twins.evaluate.clips={settings.evaluate.clips}: measure on at least 1 clip")
    if int(settings.checkpoint_every) < 1:
        raise ConfigError(f"pretrain_twins.checkpoint_every={settings.checkpoint_every}: expected a number of steps "
                          f">= 1")
    for stage in stages:
        spec = specs[stage]
        for key in ("steps", "batch_size"):
            if not isinstance(spec.get(key), int) or spec.get(key) < 1:
                raise ConfigError(f"pretrain_twins.{part}.{stage}.{key}={spec.get(key)}: expected an integer >= 1")
    if settings.get("publish_dir"):
        check_publish_target(Path(settings.publish_dir), bool(settings.get("overwrite")))
    recipe_commit()  # the revision of the code this process loaded, before any stage runs
    source = clip_source(cfg)
    codecs = load_codecs(cfg) if part == "generators" else None  # before any data work: missing codecs stop here
    torch.manual_seed(int(settings.seed))
    store = cfg.data.store
    geometry = ClipGeometry(seconds=float(store.seconds), fps=store.fps, height=int(cfg.data.clip.height),
                            width=int(cfg.data.clip.width), sample_rate=int(store.sample_rate))
    began = time.monotonic()
    if source == "store":
        datamodule.prepare_data()
        try:  # the held-out split exists, before any training
            datamodule.manifest(str(settings.evaluate.split))
        except Exception as exc:
            raise ConfigError(f"pretrain_twins.evaluate.split={settings.evaluate.split}: the prepared data has no "
                              f"such split ({str(exc).splitlines()[0][:200]}); use test or val") from exc
    else:  # a missing held-out split stops here too
        clip_bank(cfg, datamodule, geometry, str(settings.evaluate.split), 1, "pretrain_twins.evaluate.split")
    train = clip_bank(cfg, datamodule, geometry, "train", None, "data")
    origin = "rendered in memory, not read from the store" if source == "rendered" else f"{train.skipped} skipped"
    print(f"avgen pretrain-twins: {len(train)} training clips of {geometry.seconds:g} s in memory ({origin})")
    evaluation = settings.evaluate
    if part == "codecs":
        models, made_by = run_codecs(cfg, stages, train, fit)
        held_out = clip_bank(cfg, datamodule, geometry, evaluation.split, int(evaluation.clips),
                             "pretrain_twins.evaluate")
        tolerances = {"1frame": 1.0 / float(geometry.fps), "50ms": 0.05}
        metrics = json_numbers(evaluate_codecs(models, held_out, tolerances))
        metrics["tolerances_seconds"] = tolerances
        strip = frames_strip(models["frames_vae"], held_out, clips=int(evaluation.strip_clips)) \
            if "frames_vae" in models else None
        extra_info: dict[str, Any] = {}
    else:
        made_by = {}
        held_out = clip_bank(cfg, datamodule, geometry, evaluation.split, int(evaluation.clips),
                             "pretrain_twins.evaluate")
        models, metrics, strip, extra_info, made_by = run_generators(cfg, stages, train, held_out, codecs, fit)
    metrics["split"] = evaluation.split
    data_info = {"dataset": cfg.data.name, "seed": int(cfg.data.prepare.seed), "root": str(cfg.data.root),
                 "store": OmegaConf.to_container(cfg.data.store, resolve=True),
                 "train_clips": len(train), "held_out_clips": len(held_out), "held_out_split": evaluation.split,
                 "clip_source": source}
    twins = write_twins(cfg, models, metrics, strip, data_info, command, extra_info, made_by)
    print(json.dumps(metrics, indent=2))
    print(f"avgen pretrain-twins: wrote {twins} ({len(models)} {part}; this run took "
          f"{time.monotonic() - began:.0f} s)")
    if settings.get("publish_dir"):
        missing = [name for name in PART_COMPONENTS[part] if name not in models]
        if missing:
            raise ConfigError(f"pretrain_twins.publish_dir: the run folder has no finished {', '.join(missing)}; "
                              f"train their stages first (pretrain_twins.stages={list(PART_STAGES[part])}); nothing "
                              f"was published")
        target = publish(twins, settings.publish_dir, bool(settings.get("overwrite")))
        from avgen.backbones.mini import active_weights_dir

        active = active_weights_dir(part)
        loads = ("scale=mini loads it" if target.resolve() == active.resolve()
                 else f"scale=mini loads it with {weights_env(part)}={target.resolve()}")
        print(f"avgen pretrain-twins: published to {target} ({loads})")
    return twins


def weights_env(part: str) -> str:
    """The environment variable that points ``scale=mini`` at another folder of ``part``'s weights."""
    from avgen.backbones.mini import PART_ENV

    return PART_ENV[part]


START_FROM = "start_from.json"


def start_from_choice(cfg: DictConfig, stages: Sequence[str]) -> tuple[Path, dict[str, Any], list[str]] | None:
    """What ``pretrain_twins.start_from`` gives this run: its folder, manifest and the components to adopt (those of
    the run's part, narrowed to ``pretrain_twins.start_from_components``); None without ``start_from``. Checked
    before anything is copied (:func:`adopt_start_from`).

    Raises:
        ConfigError: the folder is of another part, one of its (chosen) components is also in
            ``pretrain_twins.stages``, or ``start_from_components`` is not a list of the folder's components.
        MiniWeightsError: the folder has no manifest.
    """
    given = cfg.pretrain_twins.get("start_from")
    if not given:
        return None
    from avgen.backbones.mini import read_manifest

    folder = Path(str(given))
    manifest = read_manifest(folder)
    part = part_of(cfg)
    if manifest.get("part") != part:
        example = {"codecs": "avgen/backbones/mini_weights", "generators": "avgen/backbones/mini_generators"}[part]
        raise ConfigError(f"pretrain_twins.start_from={folder}: its manifest is of part {manifest.get('part')!r}; "
                          f"give a {part} folder ({example} or a part={part} run's twins)")
    components = [name for name in manifest.get("components") or {} if name in PART_STAGES[part]]
    chosen = cfg.pretrain_twins.get("start_from_components")
    if chosen is not None:
        if isinstance(chosen, str) or not isinstance(chosen, Sequence):
            raise ConfigError(f"pretrain_twins.start_from_components={chosen}: expected a list, e.g. "
                              f"pretrain_twins.start_from_components=[{', '.join(components)}]")
        unknown = [name for name in chosen if name not in components]
        if unknown:
            raise ConfigError(f"pretrain_twins.start_from_components names {', '.join(map(repr, unknown))}; "
                              f"{folder} gives {', '.join(components)}")
        components = [name for name in components if name in chosen]
    clash = [name for name in components if name in stages]
    if clash:
        raise ConfigError(f"pretrain_twins.start_from={folder} gives {', '.join(clash)}; remove "
                          f"{'it' if len(clash) == 1 else 'them'} from pretrain_twins.stages (or drop start_from to "
                          f"train {'it' if len(clash) == 1 else 'them'} from scratch)")
    return folder, manifest, components


def adopt_start_from(cfg: DictConfig, stages: Sequence[str]) -> None:
    """``pretrain_twins.start_from`` (a published folder of the run's part: codecs, ``avgen/backbones/mini_weights``,
    or generators, ``avgen/backbones/mini_generators``, or a run's ``twins``): each of its components becomes the
    finished stage of the same name in this run folder
    (``<run>/<name>/model``, every file checked against its manifest, with ``start_from.json``: the folder, its
    tag and the manifest's record of how the component was trained), so the stages that continue them
    (``mel_vae_decoder``, ``vocoder_finetune``, ``animatediff_video``) train on the published models without
    training them again.
    ``pretrain_twins.start_from_components`` (a list; null: all) adopts only those of its components, so a run that
    trains one codec anew (e.g. a frame VAE of another downsampling, ``stages=[frames_vae]`` in this folder first)
    publishes it with the others taken from the folder. Adopting the same folder again does nothing.

    Raises:
        ConfigError: the folder is of another part, one of its (chosen) components is also in
            ``pretrain_twins.stages``, this run folder already has another model for it, or
            ``start_from_components`` is not a list of the folder's components.
        MiniWeightsError: a file is missing or altered.
    """
    choice = start_from_choice(cfg, stages)
    if choice is None:
        return
    from avgen.backbones.mini import verify_component, version_tag

    folder, manifest, components = choice
    part = part_of(cfg)
    tag = version_tag(folder)
    root = Path(cfg.paths.output_dir)
    for name in components:
        target = root / name
        record = target / START_FROM
        if record.is_file() and json.loads(record.read_text()).get("tag") == tag:
            continue
        if (target / "model").exists() or (target / "checkpoints").exists():
            raise ConfigError(f"pretrain_twins.start_from: {target} already holds a {name} of its own; use another "
                              f"run folder (hydra.run.dir=...) to start from {folder}")
        source = verify_component(name, folder, manifest)
        shutil.copytree(source, target / "model")
        entry = {k: v for k, v in manifest["components"][name].items() if k != "files"}
        record.write_text(json.dumps({"dir": str(folder.resolve()), "tag": tag, "component": entry}, indent=2) + "\n")
        print(f"{name}: taken from {folder} ({part} {tag})")


def run_codecs(cfg: DictConfig, stages: list[str], train, fit: Callable[[DictConfig, Any, str | None], None]
               ) -> tuple[dict[str, torch.nn.Module], dict[str, list[str]]]:
    """Part 1 of the recipe: :func:`adopt_start_from`, then each stage of ``stages`` (in the part's order; a stage
    that continues another, :data:`~avgen.systems.codec_twins.CONTINUES`, gets that stage's model, and
    ``vocoder_finetune`` the mel VAE the codecs publish). Returns the codecs to publish (:data:`CODECS` → model:
    each from the last stage of the run folder that makes it) and, per codec, the stages that made it (base first).

    Raises:
        ConfigError: stages out of order, a continuing stage without its base, a bad stage setting.
    """
    from avgen.systems.codec_twins import CONTINUES

    order = PART_STAGES["codecs"]
    if stages != sorted(stages, key=order.index):
        raise ConfigError(f"pretrain_twins.stages={stages}: list them in training order "
                          f"({', '.join(s for s in order if s in stages)})")
    adopt_start_from(cfg, stages)
    for stage in stages:  # every stage's settings checked before the first one trains
        check_stage_inputs(cfg, stage, train)
        base = CONTINUES.get(stage)
        if base is not None and base not in stages and finished_stage(cfg, base) is None:
            raise ConfigError(f"pretrain_twins.stages: {stage} continues the {base} stage; add {base} before it, or "
                              f"start from published codecs (pretrain_twins.start_from=avgen/backbones/mini_weights)")
    models: dict[str, torch.nn.Module] = {}

    def current(stage: str) -> torch.nn.Module | None:
        return models[stage] if stage in models else finished_stage(cfg, stage)

    for stage in stages:
        extra: dict[str, Any] = {}
        if stage == "mel_vae_decoder":
            extra["vae"] = current("mel_vae")
        elif stage == "vocoder_finetune":
            tuned = current("mel_vae_decoder")
            extra.update(vocoder=current("vocoder"), vae=tuned if tuned is not None else current("mel_vae"))
        models[stage] = train_stage(cfg, stage, train, fit, **extra)
    published: dict[str, torch.nn.Module] = {}
    made_by: dict[str, list[str]] = {}
    for stage, model in finished_models(cfg, models).items():
        component = CONTINUES.get(stage, stage)
        published[component] = model
        made_by.setdefault(component, []).append(stage)
    return published, made_by


def finished_models(cfg: DictConfig, models: Mapping[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """``models`` (trained by this run) with the part's stages finished by earlier runs of this run folder
    (``pretrain_twins.stages=[...]`` runs) added, in the part's stage order."""
    models = dict(models)
    part = part_of(cfg)
    for stage in PART_STAGES[part]:
        if stage not in models and stage in stage_specs(cfg):
            model = finished_stage(cfg, stage)
            if model is not None:
                models[stage] = model
    return {stage: models[stage] for stage in PART_STAGES[part] if stage in models}


# ----------------------------------------------------------------------------------- part 2: the generators
#: generator stage → (the tiny twin whose scheduler its system samples with, the scheduler overrides the system
#: applies, what it generates)
GENERATOR_TWINS: dict[str, tuple[str, str, str]] = {
    "audioldm_unet": ("audioldm", "", "audio"),
    "animatediff_image": ("animatediff", "animatediff", "frames"),
    "animatediff_motion": ("animatediff", "animatediff", "video"),
    "animatediff_video": ("animatediff", "animatediff", "video"),
    "zeroscope_unet": ("zeroscope", "", "video"),
}

#: generator stage → the component its scheduler is published as: a stage whose ``noise_schedule`` is not its tiny
#: twin's ships the sampler it was trained for (:func:`stage_scheduler`), and its mini twin samples with it
#: (:data:`avgen.backbones.mini.MINI_TWINS`), as a diffusers model folder carries its ``scheduler/``
STAGE_SCHEDULERS: dict[str, str] = {"audioldm_unet": "audioldm_scheduler"}


def load_codecs(cfg: DictConfig) -> dict[str, Any]:
    """The mini codecs the generators learn the latent spaces of: ``pretrain_twins.codecs_dir`` or the ones
    ``scale=mini`` loads (:func:`avgen.backbones.mini.active_weights_dir`), every file checked against their
    manifest: ``frames_vae``, ``mel_vae`` (``AutoencoderKL``), ``vocoder`` (``SpeechT5HifiGan``), in eval mode, with
    ``dir``, ``tag`` (:func:`avgen.backbones.mini.version_tag`), ``latent_space``
    (:func:`avgen.backbones.mini.latent_space_tag`) and ``latent_spaces`` (per VAE,
    :func:`avgen.backbones.mini.latent_space_tags`), all recorded in the generators' manifest.

    Raises:
        MiniWeightsError: the codecs are missing or altered.
    """
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan

    from avgen.backbones.mini import (
        active_weights_dir,
        latent_space_tag,
        latent_space_tags,
        read_manifest,
        verify_component,
        version_tag,
    )
    from avgen.pretrained import quiet_loading

    given = cfg.pretrain_twins.get("codecs_dir")
    folder = Path(given) if given else active_weights_dir("codecs")
    manifest = read_manifest(folder)
    with quiet_loading():
        out: dict[str, Any] = {
            "frames_vae": AutoencoderKL.from_pretrained(verify_component("frames_vae", folder, manifest)).eval(),
            "mel_vae": AutoencoderKL.from_pretrained(verify_component("mel_vae", folder, manifest)).eval(),
            "vocoder": SpeechT5HifiGan.from_pretrained(verify_component("vocoder", folder, manifest)).eval(),
        }
    for model in list(out.values()):
        model.requires_grad_(False)
    out.update(dir=folder, tag=version_tag(folder), latent_space=latent_space_tag(folder),
               latent_spaces=latent_space_tags(folder))
    return out


def text_encoders(cfg: DictConfig) -> dict[str, Callable[[list[str]], torch.Tensor]]:
    """The frozen random text towers of the tiny twins (``<paths.data_dir>/tiny_backbones``), as the systems encode
    prompts: ``clip`` (the AnimateDiff twin's CLIP text states (B, 77, 32); the zeroscope twin's tower holds the same
    weights) and ``clap`` (the AudioLDM twin's normalised CLAP text embedding (B, 32))."""
    from types import SimpleNamespace

    from transformers import ClapTextModelWithProjection, CLIPTextModel, CLIPTokenizer, RobertaTokenizer

    from avgen.backbones import tiny
    from avgen.backbones.animatediff import encode_prompts as clip_prompts
    from avgen.backbones.audioldm import encode_prompts as clap_prompts
    from avgen.pretrained import quiet_loading

    root = Path(cfg.paths.data_dir) / "tiny_backbones"
    video, audio = tiny.materialize("animatediff", root), tiny.materialize("audioldm", root)
    with quiet_loading():
        clip = SimpleNamespace(tokenizer=CLIPTokenizer.from_pretrained(video / "tokenizer"),
                               text_encoder=CLIPTextModel.from_pretrained(video / "text_encoder").eval())
        clap = SimpleNamespace(tokenizer=RobertaTokenizer.from_pretrained(audio / "tokenizer"),
                               text_encoder=ClapTextModelWithProjection.from_pretrained(audio / "text_encoder").eval())
    return {"clip": lambda prompts: clip_prompts(clip, prompts), "clap": lambda prompts: clap_prompts(clap, prompts)}


def stage_scheduler(cfg: DictConfig, stage: str):
    """The ``DDIMScheduler`` stage ``stage``'s system samples with: the tiny twin's stored scheduler with the
    system's overrides (AnimateDiff's :data:`~avgen.backbones.animatediff.ANIMATEDIFF_SCHEDULER`) and the stage's
    ``noise_schedule`` (what it trains with; the mini twin ships it, :func:`generator_scheduler`)."""
    from diffusers import DDIMScheduler

    from avgen.backbones import tiny
    from avgen.backbones.animatediff import ANIMATEDIFF_SCHEDULER

    twin, overrides, _ = GENERATOR_TWINS[stage]
    folder = tiny.materialize(twin, Path(cfg.paths.data_dir) / "tiny_backbones")
    base = DDIMScheduler.from_pretrained(folder / "scheduler", **(ANIMATEDIFF_SCHEDULER if overrides else {}))
    return generator_scheduler(base, OmegaConf.to_container(stage_specs(cfg)[stage].noise_schedule, resolve=True))


def generator_scheduler(base, noise_schedule: Mapping[str, Any]):
    """``base`` (a diffusers scheduler) with a stage's ``noise_schedule`` (:data:`SCHEDULE_KEYS`); a zero terminal
    SNR schedule (``rescale_betas_zero_snr``) also samples on the ``trailing`` grid, so that sampling starts at the
    last timestep, where the model was trained on pure noise (Lin et al. 2024, arXiv 2305.08891, Sec. 3.3)."""
    settings = dict(noise_schedule)
    if settings.get("rescale_betas_zero_snr"):
        settings["timestep_spacing"] = "trailing"
    # keyword arguments, not a merged dict: diffusers resets the keys a config lists in `_use_default_values`
    return type(base).from_config(base.config, **settings)


def trained_module(cfg: DictConfig, stage: str, component: torch.nn.Module | None, **extra: Any):
    """The stage's training module holding ``component``'s weights (None: its initial weights, as training
    starts), in eval mode."""
    module = build_stage(cfg, stage, **extra)
    if component is not None:
        state = component.state_dict()
        if stage == "animatediff_motion":  # the adapter's motion modules into the UNetMotionModel
            result = module.model.load_state_dict(state, strict=False)
            if result.unexpected_keys or any("motion_modules" in k for k in result.missing_keys):
                raise RuntimeError(f"{stage}: the motion adapter does not fit the model ({result})")
        else:
            module.model.load_state_dict(state)
    return module.eval()


@torch.no_grad()
def sample_generator(module, conditions: torch.Tensor, empty: torch.Tensor, shape: Sequence[int], scheduler,
                     steps: int, guidance: float, seed: int) -> torch.Tensor:
    """Latents ``(n, *shape)`` sampled by DDIM (diffusers' ``DDIMScheduler.step``, η = 0) over ``steps`` steps
    with classifier-free guidance ``guidance`` (Ho & Salimans 2022): ``conditions`` (n, ...) the captions'
    embeddings, ``empty`` (1, ...) the empty prompt's; sample ``i`` starts from noise seeded with ``seed + i``
    (:func:`avgen.diffusion.seeded_noise`), mixed by :func:`avgen.diffusion.mixed_noise` when the stage trained on
    correlated frame noise (its ``frame_noise_correlation`` r > 0; each sample's shared part drawn next from its own
    generator)."""
    from avgen.diffusion import classifier_free_guidance, mixed_noise, seeded_noise

    n = conditions.shape[0]
    streams: list[torch.Generator] = []
    x = seeded_noise([shape], n, seed, generators=streams)[0]
    r = float(getattr(module, "frame_noise_correlation", 0.0))
    if r > 0:  # a clips stage's prior (image stages sample single frames, 4-D)
        x = mixed_noise(x, r, streams=streams)
    both = torch.cat([conditions, empty.expand_as(conditions)])
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        out = module.predict(torch.cat([x, x]), torch.full((2 * n,), int(t)), both).float()
        cond, uncond = out.chunk(2)
        x = scheduler.step(classifier_free_guidance(uncond, cond, guidance), t, x).prev_sample
    return x


def check_start_from_latent_spaces(cfg: DictConfig, stages: Sequence[str], codecs: Mapping[str, Any]) -> None:
    """Refuse to adopt generators (``pretrain_twins.start_from``) trained in other latent spaces than the codecs of
    this run (:func:`load_codecs`): they would be continued and republished as these codecs' own. Each adopted
    component is checked against the latent space of its own VAE (``codecs.latent_spaces`` of the folder's
    manifest, :data:`avgen.backbones.mini.LATENT_CODEC_OF`), so 16×16 video generators can be published beside
    the audio U-Net of an unchanged mel VAE; a folder whose manifest predates the per-VAE tags is checked on the
    combined tag.

    Raises:
        ConfigError: an adopted component's latent space differs, or :func:`start_from_choice`'s errors.
    """
    from avgen.backbones.mini import LATENT_CODEC_OF

    choice = start_from_choice(cfg, stages)
    if choice is None:
        return
    folder, manifest, components = choice
    recorded = manifest.get("codecs") or {}
    spaces = recorded.get("latent_spaces")
    for name in components:
        vae = LATENT_CODEC_OF.get(name)
        if spaces:
            theirs, here, what = spaces.get(vae), codecs["latent_spaces"][vae], f"the latent space of {vae}"
        else:
            theirs, here, what = recorded.get("latent_space"), codecs["latent_space"], "the latent spaces"
        if theirs != here:
            raise ConfigError(f"pretrain_twins.start_from={folder}: its {name} was trained in {what} {theirs}, the "
                              f"codecs here have {here}; start from generators of these codecs, adopt only the "
                              f"others (pretrain_twins.start_from_components=[...]) or set pretrain_twins.codecs_dir "
                              f"to theirs")


def run_generators(cfg: DictConfig, stages: list[str], train, held_out, codecs: Mapping[str, Any],
                   fit: Callable[[DictConfig, Any, str | None], None]):
    """Part 2 of the recipe: :func:`adopt_start_from`, the latent bank, the stages, the measurements. Returns
    (the generators to publish, metrics, strip, manifest entries, per generator the stages that made it). A stage
    that continues others (:data:`~avgen.systems.generator_twins.CONTINUES`: ``animatediff_video``) replaces their
    components by its own model's parts (:func:`~avgen.systems.generator_twins.split_motion_model`); the
    measurements are of the published generators.

    Raises:
        ConfigError: stages out of order, a stage asked for before the stages it continues trained, or a bad
            stage setting.
    """
    from avgen.backbones.audioldm import AudioLDMMel
    from avgen.systems.generator_twins import CONTINUES, LatentBank, split_motion_model

    clip = cfg.data.clip
    clip_frames = int(round(float(clip.seconds) * float(clip.fps)))
    order = PART_STAGES["generators"]
    if stages != sorted(stages, key=order.index):
        raise ConfigError(f"pretrain_twins.stages={stages}: list them in training order "
                          f"({', '.join(s for s in order if s in stages)})")
    check_start_from_latent_spaces(cfg, stages, codecs)
    adopt_start_from(cfg, stages)
    needs = {"animatediff_motion": ("animatediff_image",), **CONTINUES}
    for stage in stages:
        missing = [base for base in needs.get(stage, ()) if base not in stages and finished_stage(cfg, base) is None]
        if missing:
            raise ConfigError(f"pretrain_twins.stages: {stage} trains on the {' and '.join(missing)} stage's "
                              f"model{'s' if len(missing) > 1 else ''}; add {', '.join(missing)} before it (this run "
                              f"folder has no finished one), or start from published generators "
                              f"(pretrain_twins.start_from=avgen/backbones/mini_generators)")
    for stage, bases in CONTINUES.items():  # a finished continuation of models retrained now would be stale
        retrained = [base for base in bases if base in stages]
        if retrained and stage not in stages and finished_stage(cfg, stage) is not None:
            raise ConfigError(f"pretrain_twins.stages: {', '.join(retrained)} train again, but this run folder's "
                              f"finished {stage} continued the old one; add {stage} to the stages (and remove "
                              f"{Path(cfg.paths.output_dir) / stage} to train it anew)")
    for stage in stages:  # every stage's settings checked before the first one trains
        build_stage(cfg, stage)
    encoders = text_encoders(cfg)
    mel = AudioLDMMel()
    began = time.monotonic()
    stride = int(cfg.pretrain_twins.audio_window_stride)

    def latent_bank(clips, split: str):
        return cached_latent_bank(cfg, split, clips, codecs, lambda: LatentBank.build(
            clips, clip_frames, codecs["frames_vae"], codecs["mel_vae"], mel, encoders, audio_stride=stride),
            {"clip_frames": clip_frames, "audio_stride": stride})

    bank = latent_bank(train, "train")
    print(f"avgen pretrain-twins: {len(bank)} clips in latent form ({bank.video_mean.shape[1]} frames, "
          f"{bank.audio_mean.shape[1]} audio windows each) and {len(bank.captions) - 1} captions, "
          f"{time.monotonic() - began:.0f} s")
    models: dict[str, torch.nn.Module] = {}

    def current(stage: str) -> torch.nn.Module | None:
        return models[stage] if stage in models else finished_stage(cfg, stage)

    for stage in stages:
        extra = {}
        if stage == "animatediff_motion":
            extra["unet"] = current("animatediff_image")
        elif stage == "animatediff_video":
            extra.update(unet=current("animatediff_image"), adapter=current("animatediff_motion"))
        models[stage] = train_stage(cfg, stage, bank, fit, **extra)
    generators: dict[str, torch.nn.Module] = {}
    made_by: dict[str, list[str]] = {}
    for stage, model in finished_models(cfg, models).items():
        if stage == "animatediff_video":
            specs = stage_specs(cfg)
            parts = split_motion_model(
                model, OmegaConf.to_container(specs.animatediff_video.unet_config, resolve=True),
                OmegaConf.to_container(specs.animatediff_video.model, resolve=True))
            for component, part in zip(CONTINUES[stage], parts):
                generators[component] = part
                made_by.setdefault(component, [component]).append(stage)
        else:
            generators[stage] = model
            made_by.setdefault(stage, [stage])
    models = {name: generators[name] for name in GENERATORS if name in generators}
    held = latent_bank(held_out, str(cfg.pretrain_twins.evaluate.split))
    metrics, strip = evaluate_generators(cfg, models, held, held_out, codecs, train, train_latents=bank)
    published: dict[str, Any] = dict(models)
    for stage, component in STAGE_SCHEDULERS.items():
        if stage in models:
            published[component] = stage_scheduler(cfg, stage)
    return published, metrics, strip, {"codecs": {"tag": codecs["tag"], "latent_space": codecs["latent_space"],
                                                  "latent_spaces": dict(codecs["latent_spaces"]),
                                                  "dir": str(codecs["dir"])}}, made_by


LATENT_BANKS = "latent_banks"


def cached_latent_bank(cfg: DictConfig, split: str, clips, codecs: Mapping[str, Any], build: Callable[[], Any],
                       settings: Mapping[str, Any]):
    """The :class:`~avgen.systems.generator_twins.LatentBank` of ``clips``, read from ``<run>/latent_banks/`` when a
    bank of the same clips (their keys and geometry; for clips not read from a store, ``clips.source``, also their
    content: :func:`clip_bank_digest`), latent spaces (the codecs' latent-space tag), tiny twins (their version: the
    text towers) and ``settings`` is there, else built by ``build()`` and written there (other banks of the split and
    clip source are removed; a store's ``<split>-<key>``, a rendered bank's ``<split>-rendered-<key>``). Encoding
    2,048 clips takes minutes; every run of the recipe needs the bank."""
    import hashlib

    from avgen.backbones.tiny import TINY_VERSION
    from avgen.systems.generator_twins import LatentBank

    identity = {"format": 1, "split": split, "keys": list(clips.keys), "geometry": str(clips.geometry),
                "codecs": codecs["latent_space"], "tiny": TINY_VERSION, **dict(settings)}
    source = getattr(clips, "source", "store")
    if source != "store":
        # rendered clips are not the stored ones (no h264 error), and their keys do not change with the dataset seed
        # or the generator's code: their content is part of the identity (a store's banks keep their names)
        identity["source"] = source
        identity["content"] = clip_bank_digest(clips)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cfg.paths.output_dir) / LATENT_BANKS
    prefix = split if source == "store" else f"{split}-{source}"
    path = folder / f"{prefix}-{key}.safetensors"
    if path.is_file():
        try:
            return LatentBank.load(path)
        except ValueError as exc:
            print(f"avgen pretrain-twins: {exc}; encoding again")
    bank = build()
    for stale in folder.glob(f"{prefix}-*.safetensors"):  # older banks of this split and clip source
        if stale.name.count("-") == prefix.count("-") + 1:  # a store's "train-<key>", not "train-rendered-<key>"
            stale.unlink(missing_ok=True)
    bank.save(path)
    return bank


def clip_bank_digest(clips) -> str:
    """SHA-256 (hex) of a :class:`~avgen.data.clip_bank.ClipBank`'s content: frames, audio, events and captions
    (2,048 clips of the mini store: about a second)."""
    import hashlib

    digest = hashlib.sha256()
    for tensor in (clips.frames, clips.audio):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(json.dumps([[float(t) for t in e] for e in clips.events]).encode())
    digest.update(json.dumps(list(clips.captions)).encode())
    return digest.hexdigest()


@torch.no_grad()
def evaluate_generators(cfg: DictConfig, models: Mapping[str, torch.nn.Module], held, clips, codecs, train=None,
                        train_latents=None) -> tuple[dict[str, Any], np.ndarray | None]:
    """The generators' measurements on held-out clips (``held``: their :class:`LatentBank`, ``clips``: the clips):

    * every stage: ``held_out_loss`` (its training loss on held-out clips, fixed draws, no caption drop:
      :meth:`DenoiserTraining.held_out_loss`, ``loss_batches`` batches of ``loss_batch_size``) and
      ``initial_held_out_loss`` (the same for its weights at step 0; for ``animatediff_motion`` that is the trained
      image U-Net applied per frame), and their ratio; with ``train_latents`` (the training clips' bank), also
      ``training_loss``: the same measurement on training clips, with the same timesteps and noise (a draw's clip
      index does not move the random stream: only the clips differ), and ``held_out_to_training_loss``, their ratio
      (about 1: the model generalises to clips it never saw; well above 1: it memorised its training clips, and
      more clips, free for synthetic data, are the remedy; the committed 8x8 AnimateDiff pair: 1.02);
    * video generators: ``pretrain_twins.evaluate.samples`` clips sampled (DDIM, the system's scheduler, the
      ``guidance.video`` scale) from the first held-out clips' captions, decoded by the frame VAE: ``frame_change``
      (mean absolute difference of consecutive frames, in [0, 1] pixel units) against the real clips', and
      ``prompt_agreement``: how often a frame classifier trained on the real ``train`` clips
      (:func:`avgen.metrics.frame_classifier.train_frame_classifier`, ``pretrain_twins.evaluate.classifier_steps``)
      sees the colour and the shape the caption names, with a binomial test against chance; ``real`` holds the same
      for the held-out clips themselves (the classifier's ceiling);
    * ``audioldm_unet``: the same for audio (the length of the systems' clips), decoded by the mel VAE and the
      vocoder: the fraction of clips with an onset (:func:`avgen.metrics.codec.clip_onsets`), the mean number of
      onsets per clip against the number of the real clip's events inside the same window (its first seconds) and
      their mean absolute difference (where librosa and soxr are installed; else ``onsets`` says so:
      :func:`onsets_unmeasured`); the fraction of clips with an impact (:func:`~avgen.metrics.codec.
      impact_contrast` above :data:`~avgen.metrics.codec.IMPACT_CONTRAST`; an onset detector also finds onsets in
      noise) and the median contrast, for the samples and the real windows; the peak level.

    Returns (metrics, a strip of real and sampled frames or None).
    """
    from types import SimpleNamespace

    from avgen.backbones.animatediff import decode_video
    from avgen.backbones.audioldm import decode_audio
    from avgen.metrics.codec import IMPACT_CONTRAST, clip_onsets, impact_contrast

    settings = cfg.pretrain_twins.evaluate
    n = min(int(settings.samples), len(clips))
    index = torch.arange(n)
    out: dict[str, Any] = {"clips": len(held), "samples": n, "sampling_steps": int(settings.sampling_steps)}
    real = clips.frames[:n, :held.clip_frames]  # (n, F, 3, H, W) uint8
    rows: list[tuple[str, torch.Tensor]] = [("real", real)]

    def frame_change(frames: torch.Tensor) -> float:
        return float(frames.float().div(255).diff(dim=1).abs().mean())

    out["real"] = {"frame_change": frame_change(real)}
    captions = [clips.captions[i] for i in range(n)]
    classifier = None
    if train is not None and any(GENERATOR_TWINS[s][2] == "video" for s in models):
        from avgen.metrics.frame_classifier import prompt_agreement, train_frame_classifier

        classifier = train_frame_classifier(train.frames, train.captions, steps=int(settings.classifier_steps),
                                            seed=int(cfg.pretrain_twins.seed))
        out["real"]["prompt_agreement"] = prompt_agreement(classifier, real, captions)
    for stage, component in models.items():
        if stage == "animatediff_motion" and "animatediff_image" not in models:
            continue  # its image U-Net is not in this folder: nothing to put the motion modules into
        extra = {"unet": models["animatediff_image"]} if stage == "animatediff_motion" else {}
        trained = trained_module(cfg, stage, component, **extra)
        initial = trained_module(cfg, stage, None, **extra)
        draws = {"batches": int(settings.loss_batches), "batch_size": int(settings.loss_batch_size)}
        loss, before = trained.held_out_loss(held, **draws), initial.held_out_loss(held, **draws)
        entry: dict[str, Any] = {"held_out_loss": loss, "initial_held_out_loss": before, "loss_ratio": loss / before}
        if train_latents is not None:
            seen = trained.held_out_loss(train_latents, **draws)
            entry.update(training_loss=seen, held_out_to_training_loss=loss / seen)
        _, _, kind = GENERATOR_TWINS[stage]
        encoder = trained.text_encoder
        conditions = held.text[encoder][held.caption_index[index]]
        empty = held.text[encoder][-1:]
        scheduler = stage_scheduler(cfg, stage)
        steps = int(settings.sampling_steps)
        if kind == "video":
            shape = (held.video_mean.shape[2], held.clip_frames, *held.video_mean.shape[3:])
            latents = sample_generator(trained, conditions, empty, shape, scheduler, steps,
                                       float(settings.guidance.video), seed=0)
            video = decode_video(SimpleNamespace(vae=codecs["frames_vae"]), latents)  # (n, F, 3, H, W) in [-1, 1]
            frames = ((video + 1) * 127.5).round().to(torch.uint8)
            entry["frame_change"] = frame_change(frames)
            if classifier is not None:
                entry["prompt_agreement"] = prompt_agreement(classifier, frames, captions)
            rows.append((stage, frames))
        elif kind == "audio":
            shape = tuple(held.audio_mean.shape[2:])
            latents = sample_generator(trained, conditions, empty, shape, scheduler, steps,
                                       float(settings.guidance.audio), seed=0)
            samples = clips.audio.shape[1] * held.clip_frames // clips.frames.shape[1]
            audio = decode_audio(SimpleNamespace(vae=codecs["mel_vae"], vocoder=codecs["vocoder"]), latents, samples)
            sr = clips.geometry.sample_rate
            seconds = samples / sr  # the sampled window is the clip's first `seconds`: count its events there
            events = torch.tensor([int((np.asarray(e) < seconds).sum()) for e in clips.events[:n]],
                                  dtype=torch.float64)
            unmeasured = onsets_unmeasured("generators")
            if unmeasured is None:  # the onset detector of the papers' protocols
                counts = torch.tensor([len(clip_onsets(a.numpy(), sr)) for a in audio], dtype=torch.float64)
                entry.update(clips_with_onsets=float((counts > 0).double().mean()),
                             onsets_per_clip=float(counts.mean()),
                             onset_count_error=float((counts - events).abs().mean()))
            else:  # a GPU node without media libraries: the rest is measured; the run folder can be measured again
                entry["onsets"] = unmeasured
                print(f"avgen pretrain-twins: {stage}: {unmeasured}")
            contrast = np.array([impact_contrast(a.numpy(), sr) for a in audio])
            real_contrast = np.array([impact_contrast(a.numpy(), sr) for a in clips.audio[:n, :samples]])
            entry.update(events_per_clip_real=float(events.mean()),
                         clips_with_impacts=float((contrast > IMPACT_CONTRAST).mean()),
                         impact_contrast_median=float(np.median(contrast)),
                         clips_with_impacts_real=float((real_contrast > IMPACT_CONTRAST).mean()),
                         impact_contrast_median_real=float(np.median(real_contrast)),
                         peak=float(audio.abs().amax(dim=1).mean()))
        out[stage] = json_numbers(entry)
        print(f"avgen pretrain-twins: {stage}: {json.dumps(out[stage])}")
    strip = samples_strip(rows, int(settings.strip_clips)) if len(rows) > 1 else None
    return out, strip


def samples_strip(rows: Sequence[tuple[str, torch.Tensor]], clips: int, zoom: int = 3) -> np.ndarray:
    """A picture (uint8 ``(H', W', 3)``) of the first ``clips`` clips: for each, one row of frames per entry of
    ``rows`` (name, uint8 ``(n, F, 3, H, W)``: the real clip, then each generator's sample of its caption), enlarged
    ``zoom``× (nearest neighbour), white gaps of ``zoom`` pixels between rows and 4 between clips."""
    lines = []
    for i in range(min(clips, len(rows[0][1]))):
        for _, frames in rows:
            image = torch.cat(list(frames[i].permute(0, 2, 3, 1)), dim=1)
            image = image.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
            lines += [image, torch.full((zoom, image.shape[1], 3), 255, dtype=torch.uint8)]
        lines.append(torch.full((4, lines[-1].shape[1], 3), 255, dtype=torch.uint8))
    return torch.cat(lines[:-2]).numpy()
