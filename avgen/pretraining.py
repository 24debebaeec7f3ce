"""``python -m avgen pretrain-twins part=codecs``: train the mini twins' codecs on the synthetic data.

The recipe (``configs/part/codecs.yaml``):

1. Prepare (if needed) and read the ``train`` split of ``synthetic_hits`` at ``scale=mini``'s store geometry into
   memory (:class:`~avgen.data.clip_bank.ClipBank`: 512 clips of 2 s, 32×32 at 8 fps, 16 kHz mono).
2. Train each stage of ``pretrain_twins.stages`` in turn (:mod:`avgen.systems.codec_twins`): ``frames_vae``,
   ``mel_vae``, ``vocoder``, each in ``<run>/<stage>/`` with its own Lightning checkpoints (``checkpoints/``, every
   ``pretrain_twins.checkpoint_every`` steps, ``last.ckpt`` on Ctrl-C and at the end) and ``logs/metrics.csv``. Run
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

STAGES = ("frames_vae", "mel_vae", "vocoder")
PARTS = ("codecs",)  # part 2 (the generators) is not built yet
TWINS_DIR = "twins"
STRIP = "frames_strip.png"
PSNR_CAP = 100.0  # dB: a frame reproduced exactly (PSNR inf) counts as 100 dB in the averages


# ----------------------------------------------------------------------------------- stages
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
                              f"process; set trainer.{key}=1 (raise pretrain_twins.codecs.<stage>.batch_size instead)")
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    root = Path(cfg.paths.output_dir)
    OmegaConf.update(out, "paths.output_dir", str(root / stage), force_add=True)
    OmegaConf.update(out, "trainer.max_steps", int(cfg.pretrain_twins.codecs[stage].steps))
    OmegaConf.update(out, "trainer.max_epochs", -1)
    OmegaConf.update(out, "trainer.limit_val_batches", 0)
    every = int(cfg.pretrain_twins.checkpoint_every)
    if out.get("callbacks") and out.callbacks.get("model_checkpoint") is not None:
        OmegaConf.update(out, "callbacks.model_checkpoint.every_n_train_steps", every)
    return out


def build_stage(cfg: DictConfig, stage: str):
    """The stage's training module (:data:`avgen.systems.codec_twins.TRAINERS`) from ``pretrain_twins.codecs.<stage>``.

    Raises:
        ConfigError: an unknown stage or a bad argument (naming the key).
    """
    from avgen.systems.codec_twins import TRAINERS

    if stage not in TRAINERS:
        raise ConfigError(f"pretrain_twins.stages names {stage!r}; expected some of {', '.join(TRAINERS)}")
    spec = OmegaConf.to_container(cfg.pretrain_twins.codecs[stage], resolve=True)
    model_config = spec.pop("model")
    seed = int(cfg.pretrain_twins.seed)
    try:
        # each stage's initial weights depend on the seed and the stage alone, not on what ran before it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000 + STAGES.index(stage) if stage in STAGES else seed)
            return TRAINERS[stage](model_config, seed=seed, **spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pretrain_twins.codecs.{stage}: {exc}") from exc


def check_stage_inputs(cfg: DictConfig, stage: str, module, bank) -> None:
    """Refuse stage settings the clips or the model cannot serve, before training (one line naming the key).

    Raises:
        ConfigError: a mel crop longer than the clips, or not a multiple of the mel VAE's downsampling.
    """
    frames = getattr(module, "mel_frames", None)
    if frames is None:
        return
    key = f"pretrain_twins.codecs.{stage}.mel_frames"
    hop = module.mel.hop_length
    factor = 2 ** (len(module.model.config.block_out_channels) - 1) if hasattr(module.model.config, "latent_channels") \
        else 1
    most = bank.audio.shape[1] // hop // factor * factor
    allowed = f"a multiple of {factor} from {factor} to {most}" if factor > 1 else f"1 to {most}"
    if frames < 1 or frames * hop > bank.audio.shape[1]:
        raise ConfigError(f"{key}={frames}: segments of {frames} mel frames ({frames * hop} samples) do not fit the "
                          f"clips ({bank.audio.shape[1]} samples); use {allowed}")
    if frames % factor:
        raise ConfigError(f"{key}={frames}: the mel VAE downsamples time {factor}x; use {allowed}")


def _record_session(folder: Path, entry: Mapping[str, Any]) -> None:
    """Append one training session (commit, steps, seconds) to ``<stage>/sessions.json``."""
    path = folder / "sessions.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append(dict(entry))
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sessions, indent=2) + "\n")


def train_stage(cfg: DictConfig, stage: str, bank, fit: Callable[[DictConfig, Any, str | None], None]
                ) -> torch.nn.Module:
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
    from avgen.checkpoint import newest_checkpoint, remove_stale_temporaries

    scfg = stage_config(cfg, stage)
    folder = Path(scfg.paths.output_dir)
    ckpt_dir = folder / "checkpoints"
    for stale in remove_stale_temporaries(ckpt_dir):
        print(f"removed {stale}: a temporary checkpoint left by a process killed while saving")
    module = build_stage(cfg, stage)
    module.bank = bank
    check_stage_inputs(cfg, stage, module, bank)
    resume = str(cfg.get("resume", "auto"))
    if resume not in ("auto", "never"):
        raise ConfigError(f"resume={resume}: pretrain-twins resumes each stage from its own folder; use resume=auto "
                          f"(continue) or resume=never (start every stage over)")
    if resume == "never" and ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
        print(f"{stage}: resume=never: removed {ckpt_dir}")
    newest = newest_checkpoint(ckpt_dir)
    steps = module.steps
    if newest is not None:
        saved = torch.load(newest[0], map_location="cpu", weights_only=True)
        trained_with = (saved.get("hyper_parameters") or {}).get("config")
        if trained_with is not None and dict(trained_with) != module.config:
            raise ConfigError(f"pretrain_twins.codecs.{stage}.model differs from the model {newest[0]} was trained "
                              f"with; give the same model, or another run folder (hydra.run.dir=...), or "
                              f"resume=never to start the stages over")
    if newest is not None and newest[1] >= steps:
        print(f"{stage}: finished ({newest[1]} steps, {newest[0]}); not retrained")
        given = {k: v for k, v in training_settings(module.hparams).items() if k != "steps"}
        was = training_settings(saved.get("hyper_parameters") or {})
        changed = {k: v for k, v in given.items() if k in was and was[k] != v}
        if changed:
            print(f"{stage}: note: it was trained with " + ", ".join(f"{k}={was[k]}" for k in changed) +
                  f" (given {', '.join(f'{k}={v}' for k, v in changed.items())}); the manifest records what it was "
                  f"trained with")
        module.load_state_dict(saved["state_dict"])
    else:
        if newest is not None:
            print(f"{stage}: resuming from {newest[0]} (step {newest[1]} of {steps})")
        else:
            print(f"{stage}: training {steps} steps ({sum(p.numel() for p in module.model.parameters()):,} "
                  f"parameters)")
        began = time.monotonic()
        first = newest[1] if newest else 0
        try:
            fit(scfg, module, str(newest[0]) if newest else None)
        finally:
            reached = newest_checkpoint(ckpt_dir)
            _record_session(folder, {**recipe_commit(), "from_step": first,
                                     "to_step": reached[1] if reached else first,
                                     "seconds": round(time.monotonic() - began, 1), "threads": torch.get_num_threads()})
    model = module.model.eval()
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
    from avgen.systems.codec_twins import TRAINERS

    cls = type(TRAINERS[stage].build(OmegaConf.to_container(cfg.pretrain_twins.codecs[stage].model, resolve=True)))
    return cls.from_pretrained(folder).eval()


def stage_record(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """What the stage's folder says of its training: the step its newest checkpoint reached and its sessions."""
    from avgen.checkpoint import newest_checkpoint

    folder = Path(cfg.paths.output_dir) / stage
    newest = newest_checkpoint(folder / "checkpoints")
    sessions_file = folder / "sessions.json"
    sessions = json.loads(sessions_file.read_text()) if sessions_file.is_file() else []
    trained_with = None
    if newest is not None:
        hparams = torch.load(newest[0], map_location="cpu", weights_only=True).get("hyper_parameters") or {}
        trained_with = training_settings(hparams)
    return {"steps": newest[1] if newest else None, "trained_with": trained_with, "sessions": sessions,
            "train_seconds": round(sum(s.get("seconds", 0) for s in sessions), 1) if sessions else None}


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
      largest |sample|; the inputs peak at 0.9), and the onset F1 against the clips' ``events`` at each tolerance of
      ``tolerances`` (name → seconds; :func:`~avgen.metrics.codec.onset_f1`: matches pooled over clips);
    * ``reference``: the same onset F1 of the original audio (the detector's own ceiling on these clips).
    """
    from avgen.backbones.audioldm import AudioLDMMel
    from avgen.metrics.codec import clip_onsets, frame_psnr, log_spectral_distance, onset_f1

    out: dict[str, Any] = {"clips": len(bank)}
    sr = bank.geometry.sample_rate
    events = [e.tolist() for e in bank.events]

    def onsets_of(audio: torch.Tensor) -> list[list[float]]:
        return [clip_onsets(a.numpy(), sr).tolist() for a in audio]

    def onset_scores(detected: list[list[float]]) -> dict[str, float]:
        scores = {}
        for name, window in tolerances.items():
            scores.update(onset_f1(events, detected, window).as_dict(prefix=f"onset_{name}_"))
        return scores

    out["reference"] = onset_scores(onsets_of(bank.audio))
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
                         **onset_scores(onsets_of(audio))}
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


def recipe_commit() -> dict[str, Any]:
    """The avgen source revision the recipe ran from: ``{"commit": <sha>, "dirty": bool}`` from git, or
    ``{"commit": None}`` outside a git checkout."""
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
                strip: np.ndarray | None, data_info: Mapping[str, Any], command: str) -> Path:
    """``<run>/twins/``: the trained codecs (``save_pretrained``), ``manifest.json`` (``command``: the recipe's command
    line; per component the step its checkpoint reached and its training sessions, :func:`stage_record`),
    ``metrics.json`` and the strip; returns the folder (written beside it and renamed into place)."""
    import cv2

    from avgen._versions import library_versions
    from avgen.backbones.mini import MANIFEST, MANIFEST_FORMAT
    from avgen.pretrained import sha256_file

    final = Path(cfg.paths.output_dir) / TWINS_DIR
    partial = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
    partial.mkdir(parents=True)
    try:
        components = {}
        for name, model in models.items():
            model.save_pretrained(partial / name)
            files = sorted(p.name for p in (partial / name).iterdir() if p.is_file())
            components[name] = {
                "class": type(model).__name__,
                "library": type(model).__module__.split(".")[0],
                "parameters": sum(p.numel() for p in model.parameters()),
                **stage_record(cfg, name),
                "files": {f: sha256_file(partial / name / f) for f in files},
            }
            if hasattr(model.config, "scaling_factor") and name.endswith("vae"):
                components[name]["scaling_factor"] = float(model.config.scaling_factor)
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if strip is not None:
            cv2.imwrite(str(partial / STRIP), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        manifest = {
            "format": MANIFEST_FORMAT,
            "part": cfg.pretrain_twins.part,
            "recipe": {
                "command": command,
                **recipe_commit(),  # the commit that measured and wrote the twins; training: components.*.sessions
                "config": {"pretrain_twins": OmegaConf.to_container(cfg.pretrain_twins, resolve=True)},
            },
            "data": dict(data_info),
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
    known = {MANIFEST, "metrics.json", STRIP, *components}
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


def run_recipe(cfg: DictConfig, datamodule, fit: Callable[[DictConfig, Any, str | None], None], command: str) -> Path:
    """The recipe of the module docstring on ``datamodule`` (``cfg.data``'s, prepared here when needed); ``fit`` trains
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
    if isinstance(settings.stages, str) or not isinstance(settings.stages, Sequence):
        raise ConfigError(f"pretrain_twins.stages={settings.stages}: expected a list, e.g. "
                          f"pretrain_twins.stages=[vocoder]")
    stages = list(settings.stages)
    unknown = [s for s in stages if s not in settings.codecs]
    if unknown:
        raise ConfigError(f"pretrain_twins.stages names {', '.join(map(repr, unknown))}; expected some of "
                          f"{', '.join(settings.codecs)}")
    if not stages:
        raise NothingProduced("pretrain_twins.stages is empty: nothing to train")
    if int(settings.evaluate.clips) < 1:
        raise ConfigError(f"pretrain_twins.evaluate.clips={settings.evaluate.clips}: measure on at least 1 clip")
    if int(settings.checkpoint_every) < 1:
        raise ConfigError(f"pretrain_twins.checkpoint_every={settings.checkpoint_every}: expected a number of steps "
                          f">= 1")
    for stage in stages:
        spec = settings.codecs[stage]
        for key in ("steps", "batch_size"):
            if not isinstance(spec.get(key), int) or spec.get(key) < 1:
                raise ConfigError(f"pretrain_twins.codecs.{stage}.{key}={spec.get(key)}: expected an integer >= 1")
    if settings.get("publish_dir"):
        check_publish_target(Path(settings.publish_dir), bool(settings.get("overwrite")))
    torch.manual_seed(int(settings.seed))
    datamodule.prepare_data()
    try:  # the held-out split exists, before any training
        datamodule.manifest(str(settings.evaluate.split))
    except Exception as exc:
        raise ConfigError(f"pretrain_twins.evaluate.split={settings.evaluate.split}: the prepared data has no such "
                          f"split ({str(exc).splitlines()[0][:200]}); use test or val") from exc
    store = cfg.data.store
    geometry = ClipGeometry(seconds=float(store.seconds), fps=store.fps, height=int(cfg.data.clip.height),
                            width=int(cfg.data.clip.width), sample_rate=int(store.sample_rate))
    began = time.monotonic()
    train = read_bank(datamodule, geometry, "train", None, "data")
    print(f"avgen pretrain-twins: {len(train)} training clips of {geometry.seconds:g} s in memory "
          f"({train.skipped} skipped)")
    for stage in stages:  # every stage's settings checked before the first one trains
        check_stage_inputs(cfg, stage, build_stage(cfg, stage), train)
    models = {stage: train_stage(cfg, stage, train, fit) for stage in stages}
    for stage in STAGES:  # stages finished by earlier runs of this folder (pretrain_twins.stages=[...] runs)
        if stage not in models and stage in settings.codecs:
            model = finished_stage(cfg, stage)
            if model is not None:
                models[stage] = model
    models = {stage: models[stage] for stage in STAGES if stage in models}
    evaluation = settings.evaluate
    held_out = read_bank(datamodule, geometry, evaluation.split, int(evaluation.clips), "pretrain_twins.evaluate")
    tolerances = {"1frame": 1.0 / float(geometry.fps), "50ms": 0.05}
    metrics = json_numbers(evaluate_codecs(models, held_out, tolerances))
    metrics["tolerances_seconds"] = tolerances
    metrics["split"] = evaluation.split
    strip = frames_strip(models["frames_vae"], held_out, clips=int(evaluation.strip_clips)) \
        if "frames_vae" in models else None
    data_info = {"dataset": cfg.data.name, "seed": int(cfg.data.prepare.seed), "root": str(cfg.data.root),
                 "store": OmegaConf.to_container(cfg.data.store, resolve=True),
                 "train_clips": len(train), "held_out_clips": len(held_out), "held_out_split": evaluation.split}
    twins = write_twins(cfg, models, metrics, strip, data_info, command)
    print(json.dumps(metrics, indent=2))
    print(f"avgen pretrain-twins: wrote {twins} ({len(models)} codecs; this run took "
          f"{time.monotonic() - began:.0f} s)")
    if settings.get("publish_dir"):
        missing = [stage for stage in STAGES if stage not in models]
        if missing:
            raise ConfigError(f"pretrain_twins.publish_dir: the run folder has no finished {', '.join(missing)}; "
                              f"train every stage first (pretrain_twins.stages={list(STAGES)}); nothing was "
                              f"published")
        target = publish(twins, settings.publish_dir, bool(settings.get("overwrite")))
        from avgen.backbones.mini import WEIGHTS_ENV, active_weights_dir

        loads = ("scale=mini loads it" if target.resolve() == active_weights_dir().resolve()
                 else f"scale=mini loads it with {WEIGHTS_ENV}={target.resolve()}")
        print(f"avgen pretrain-twins: published to {target} ({loads})")
    return twins
