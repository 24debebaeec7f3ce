"""What each ``python -m avgen <command>`` does with the composed config.

``fit``, ``validate`` and ``test`` are generic: they instantiate ``data``, ``model``, ``trainer``,
``logger`` and ``callbacks`` from the config. ``sample`` rebuilds the system from a checkpoint and
calls its ``sample_to_files``; ``export`` strips a checkpoint; ``prepare`` writes a dataset's
shards; ``evaluate`` scores a folder of generated clips; ``cache`` stores a system's frozen features
for ``fit`` with ``data.features``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from avgen.config_files import scale_blocks
from avgen.errors import (
    CheckpointError,
    CommandUnavailable,
    ConfigError,
    DataHealthError,
    GeometryMismatchError,
    InputError,
    MissingShardsError,
    NothingProduced,
    PipelineFolderError,
    PrepareError,
)

log = logging.getLogger("avgen")


# ----------------------------------------------------------------------------------- building
def build_datamodule(cfg: DictConfig):
    from hydra.utils import instantiate

    if cfg.get("data") is None:
        raise ConfigError("no dataset selected: set data=<name> (python -m avgen --help lists them)")
    return instantiate(cfg.data)


def without_init_only(model_cfg: DictConfig) -> DictConfig:
    """``model_cfg`` with the keys its system lists in ``INIT_ONLY`` set to null: weights that only start a
    new run (VTA-LDM's ``model.released``), not read when a checkpoint's weights replace them."""
    from hydra.utils import get_class

    built = copy.deepcopy(model_cfg)
    for key in getattr(get_class(model_cfg._target_), "INIT_ONLY", ()):
        if key in built:
            built[key] = None
    return built


def check_model_selected(cfg: DictConfig) -> None:
    """Raises :class:`~avgen.errors.ConfigError` when ``cfg`` has no ``model`` (no experiment chosen)."""
    if cfg.get("model") is None:
        raise ConfigError("no model selected: choose experiment=<name> or model=<name> "
                          "(python -m avgen --help lists the experiments)")


def build_model(cfg: DictConfig, *, fresh: bool = True):
    """The system of ``cfg.model``; ``fresh=False`` when a checkpoint's weights will replace its trainable
    weights (resume, ``init_from``): its ``INIT_ONLY`` keys are then not read (:func:`without_init_only`). At
    ``scale=paper_random`` with CUDA the model is built on ``cuda:<LOCAL_RANK>``
    (:func:`avgen.backbones.paper_random.model_build_device`)."""
    from hydra.utils import instantiate

    from avgen.systems.base import AVSystem

    check_model_selected(cfg)
    from avgen.backbones.paper_random import build_device, model_build_device

    with build_device(model_build_device(cfg)):  # scale=paper_random with CUDA: on the GPU
        model = instantiate(cfg.model if fresh else without_init_only(cfg.model))
    if isinstance(model, AVSystem):
        model.run_config = OmegaConf.to_container(cfg, resolve=True)
    return model


def check_accelerator(cfg: DictConfig) -> None:
    """Refuse ``trainer.accelerator`` gpu / cuda on a machine without a CUDA device (``trainer=gpu`` or
    ``trainer=ddp`` on a CPU), naming ``trainer=cpu`` and ``trainer=ddp_cpu``.

    Raises:
        ConfigError: as above.
    """
    import torch

    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}: this machine has no CUDA GPU; on a CPU use "
                          f"trainer=cpu, or trainer=ddp_cpu for DDP (gloo processes)")


def build_trainer(cfg: DictConfig, datamodule=None, *, interrupt_checkpoint: bool = False,
                  resume_hint: str | None = None):
    """The Lightning trainer of ``cfg.trainer`` with the configured callbacks and loggers, plus
    :class:`~avgen.callbacks.DataHealthMonitor` for avgen data and, for ``fit`` (``interrupt_checkpoint``),
    :class:`~avgen.callbacks.InterruptCheckpoint` (Ctrl-C saves and says how to resume),
    :class:`~avgen.callbacks.FinalCheckpoint` (``last.ckpt`` holds the final step) and, under SLURM
    (``SLURM_JOB_ID`` set), :class:`~avgen.callbacks.SlurmRequeue` (the pre-timeout signal saves and requeues;
    env ``AVGEN_REQUEUE=scontrol|submitit|off`` picks who requeues, ``off`` only saves).

    Where Lightning detects SLURM (``srun``), the trainer's plugins (``trainer.plugins``) get
    ``SLURMEnvironment(auto_requeue=False)``: Lightning then installs no SIGUSR1 handler of its own and writes no
    ``hpc_ckpt_*.ckpt``, whose resume would bypass :func:`resolve_resume`. ``resume_hint``: the command line
    Ctrl-C prints to continue (default: :func:`resume_command` of ``fit``).

    Raises:
        ConfigError: ``AVGEN_REQUEUE`` holds an unknown route; ``trainer.accelerator`` is gpu / cuda on a machine
            without a CUDA device (:func:`check_accelerator`).
    """
    from hydra.utils import instantiate

    from avgen.callbacks import DataHealthMonitor, FinalCheckpoint, InterruptCheckpoint, SlurmRequeue
    from avgen.data.datamodule import AVDataModule

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if isinstance(datamodule, AVDataModule) and not any(isinstance(c, DataHealthMonitor) for c in callbacks):
        callbacks.append(DataHealthMonitor())
    if interrupt_checkpoint:
        ckpt_dir = str(Path(cfg.paths.output_dir) / "checkpoints")
        callbacks.append(InterruptCheckpoint(ckpt_dir, resume_hint or resume_command(cfg)))
        callbacks.append(FinalCheckpoint(ckpt_dir))
        if os.environ.get("SLURM_JOB_ID"):
            callbacks.append(SlurmRequeue(ckpt_dir))
    check_accelerator(cfg)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    route_library_logs()  # the lightning package adds its console handler whenever it is first imported
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=trainer_plugins(cfg))


def trainer_plugins(cfg: DictConfig) -> list:
    """``trainer.plugins`` instantiated, plus ``SLURMEnvironment(auto_requeue=False)`` when Lightning detects SLURM
    and no cluster environment is configured (avgen's :class:`~avgen.callbacks.SlurmRequeue` owns requeueing)."""
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import ClusterEnvironment, SLURMEnvironment

    plugins = [instantiate(p) for p in (cfg.trainer.get("plugins") or []) if p is not None]
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def load_system(ckpt_path: str | Path, run_cfg: DictConfig | None = None, overrides: list[str] = ()):
    """Rebuild a system from an avgen checkpoint: frozen parts from its config, trainable weights from it.

    Without ``run_cfg`` the system and config are the checkpoint's own; with it, the config is
    :func:`checkpoint_config` of the checkpoint's, the command's ``run_cfg`` and the command line's
    ``overrides``. The model keys a system lists in ``INIT_ONLY`` (weights that start a new run, e.g.
    VTA-LDM's ``model.released``) are not read: the checkpoint's weights replace them. Returns
    (system, the config it was built from).
    """
    from hydra.utils import instantiate

    from avgen.checkpoint import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    cfg = OmegaConf.create(upgrade_run_config(ckpt["avgen"]["config"]))
    if run_cfg is not None:
        cfg = checkpoint_config(cfg, run_cfg, overrides)
    model = instantiate(without_init_only(cfg.model))  # the checkpoint's weights replace INIT_ONLY ones
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    model.load_trainable(ckpt)
    return model, cfg


def upgrade_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored run config with its ``model`` passed through its system's
    :meth:`~avgen.systems.base.AVSystem.upgrade_model_config` (settings implied when it was written)."""
    from hydra.utils import get_class

    model = (run_config or {}).get("model")
    if not isinstance(model, dict) or "_target_" not in model:
        return run_config
    upgrade = getattr(get_class(model["_target_"]), "upgrade_model_config", None)
    return run_config if upgrade is None else {**run_config, "model": upgrade(model)}


def command_line_overrides() -> list[str]:
    """The overrides the user gave (Hydra's ``overrides.task``); [] outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# model.* nodes a command that runs a checkpoint may change, besides the system's SAMPLER_CONFIG
CHECKPOINT_FREE_MODEL_KEYS = ("sampling", "validation", "tiny_dir")
_MISSING = object()


def checkpoint_config(ckpt_cfg: DictConfig, run_cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config ``validate`` / ``test`` / ``sample`` run a checkpoint with.

    Rules:

    - ``model``, ``scale_name`` and ``data`` (the dataset: name, root, clip geometry, loader settings)
      are the checkpoint's; everything else (``trainer``, ``logger``, ``paths``, ``seed``, ``sample``,
      ...) is the command's. An experiment or ``scale=`` on the command line does not replace them.
    - The command line's ``overrides`` win: every ``data.*`` key (``data.batch_size``, ``data.root``;
      a ``data.clip.*`` key also sets ``model.clip``; a ``data.store.*`` key moves the root to that
      stored geometry's folder),
      ``data=<name>`` (that dataset at the checkpoint's clip geometry), ``model.sampling.*`` (fields
      of the system's ``sampling_settings``, checked when the system is built),
      ``model.validation.*``, ``model.tiny_dir``, and the settings under the system's
      ``SAMPLER_CONFIG`` that its ``sampler_override_refusal`` does not refuse.
      At scale=tiny such an override also replaces the same key of ``model.tiny``, which the system
      merges over its arguments (checkpoints written when TempoTokens' tiny block still held
      ``sampling.steps``).
    - Every other ``model.*`` key (trainable shapes, backbone ids, training setup), ``model=`` or
      ``experiment=`` of another system, and ``scale=`` other than the checkpoint's are refused; an
      override equal to the checkpoint's value is accepted.

    With ``sample``, an explicit ``sample.<k>`` still beats ``model.sampling.<k>`` (it is passed to
    ``sample_to_files``, which falls back to ``model.sampling``).

    Raises:
        ConfigError: an override that cannot apply, naming the key, the reason and what to do.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import get_class
    from omegaconf import open_dict

    ckpt = ckpt_cfg if isinstance(ckpt_cfg, DictConfig) else OmegaConf.create(ckpt_cfg)
    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides))
              if not o.key_or_group.startswith("hydra")]
    given = {o.key_or_group: o for o in parsed}
    scale = ckpt.get("scale_name") or ckpt.model.get("scale", "paper")
    if "scale" in given and run_cfg.get("scale_name") != scale:
        raise ConfigError(f"scale={run_cfg.get('scale_name')}: the checkpoint was trained at scale={scale}, and its "
                          f"model and data geometry come with it; drop scale= (or pass scale={scale})")
    cls = get_class(ckpt.model._target_)
    for group in ("model", "experiment"):
        target = OmegaConf.select(run_cfg, "model._target_")
        if group in given and target is not None and target != ckpt.model._target_:
            raise ConfigError(f"{group}={given[group].value()}: its model is {target}, but the checkpoint holds a "
                              f"{ckpt.model._target_}; drop {group}= (the checkpoint's model is used)")

    cfg = copy.deepcopy(run_cfg)
    with open_dict(cfg):
        cfg.scale_name = scale
        cfg.model = ckpt.model
        if "data" in given:
            cfg.data.clip = ckpt.data.clip
        else:
            cfg.data = ckpt.data
        for key, override in given.items():
            if key.startswith(("data.", "model.")) and override.is_delete():
                raise ConfigError(f"~{key}: a checkpoint's settings cannot be deleted; set the key to a value instead")
            if key.startswith("data."):
                OmegaConf.update(cfg, key, _plain(OmegaConf.select(run_cfg, key)), merge=False, force_add=True)
            elif key.startswith("model."):
                _apply_model_override(cfg, ckpt, cls, key, OmegaConf.select(run_cfg, key))
        if any(key.startswith("data.clip") for key in given):
            if "data.root" not in given and "data" not in given and ckpt.data.get("store") is None:
                # a checkpoint from before data.store: its root names the clip geometry
                cfg.data.root = _regeometry(ckpt.data.root, ckpt.data.clip, cfg.data.clip)
            cfg.model.clip = _plain(cfg.data.clip)
        if any(key.startswith("data.store") for key in given) and ckpt.data.get("store") is not None \
                and "data.root" not in given and "data" not in given:
            cfg.data.root = _restore_folder(ckpt.data.root, ckpt.data.store, cfg.data.store)
    return cfg


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, DictConfig):
        return [leaf for k in value for leaf in _leaves(f"{key}.{k}", value[k])]
    return [(key, _plain(value))]


def _apply_model_override(cfg: DictConfig, ckpt: DictConfig, cls: type, key: str, value: Any) -> None:
    """Set ``key`` (``model.…``) to the command line's ``value`` in ``cfg``, or refuse it
    (:func:`checkpoint_config`)."""
    for leaf, leaf_value in _leaves(key, value):
        current = _plain(OmegaConf.select(ckpt, leaf))
        if leaf_value == current:
            continue
        reason = model_override_refusal(cls, leaf.removeprefix("model."))
        if reason:
            raise ConfigError(f"{leaf}={leaf_value}: {reason} (the checkpoint has {current!r})")
        OmegaConf.update(cfg, leaf, leaf_value, merge=False, force_add=True)
        # at scale=tiny (mini) the model's `tiny` (and `mini`) block is merged over its arguments: a key it sets
        # would win
        for block in scale_blocks(cfg.model.get("scale", "paper"), "model.scale"):
            block_leaf = f"model.{block}." + leaf.removeprefix("model.")
            if OmegaConf.select(cfg, block_leaf, default=_MISSING) is not _MISSING:
                OmegaConf.update(cfg, block_leaf, leaf_value, merge=False)


def model_override_refusal(cls: type, key: str) -> str | None:
    """Why ``model.<key>`` of a trained ``cls`` checkpoint cannot change on the command line; None when it may."""
    head, _, rest = key.partition(".")
    if head == "sampling":
        settings = getattr(cls, "sampling_settings", None)
        known = settings.names() if settings is not None else None
        name = rest.partition(".")[0]
        if known is not None and name not in known:
            return f"{cls.__name__} has no sampling setting {name!r}; expected one of: {', '.join(known)}"
        return None
    if head in CHECKPOINT_FREE_MODEL_KEYS:
        return None
    for node in getattr(cls, "SAMPLER_CONFIG", ()):
        if key == node or key.startswith(node + "."):
            refusal = getattr(cls, "sampler_override_refusal", None)
            return refusal(key) if refusal else None
    return ("the checkpoint's weights belong to its model settings (trainable shapes, backbone ids, training setup), "
            "so it cannot change here; drop the override, or train a model with it (fit). Sampling settings are "
            "model.sampling.*")


def _restore_folder(root: str, old_store: Any, new_store: Any) -> str:
    """A dataset root whose last folder names ``old_store`` (every data config's convention) moved to
    ``new_store``'s folder; any other root unchanged."""
    from avgen.data.geometry import StoreGeometry

    old, new = (StoreGeometry.from_config(_plain(s)).folder_name() for s in (old_store, new_store))
    path = Path(str(root))
    return str(path.with_name(new)) if path.name == old else str(root)


def _regeometry(root: str, old_clip: Any, new_clip: Any) -> str:
    """A dataset root whose last folder names ``old_clip``'s geometry (every data config's convention)
    moved to ``new_clip``'s folder; any other root unchanged."""
    from avgen.media import fps_label

    def label(c):
        return f"{c.height}x{c.width}_{fps_label(c.fps)}fps_{c.seconds}s_{c.sample_rate}hz"

    path = Path(str(root))
    return str(path.with_name(label(new_clip))) if path.name == label(old_clip) else str(root)


def resolve_resume(cfg: DictConfig) -> str | None:
    """The checkpoint ``fit`` continues from, said aloud.

    ``resume=auto``: the newest complete checkpoint in ``<output_dir>/checkpoints/`` (``last.ckpt`` or a newer
    ``step_*.ckpt``, e.g. when a process was killed while writing ``last.ckpt``; see
    :func:`avgen.checkpoint.newest_checkpoint`), else none; ``resume=never``: none (:func:`start_over` sets the
    earlier run's checkpoints aside once the run is about to train), except in a SLURM job that was requeued
    (``SLURM_RESTART_COUNT`` ≥ 1: the requeue re-runs the command line, and ``never`` meant its first start), which
    continues as ``auto`` does; else the given path. Temporary files left by a process killed while saving are
    removed first, whatever ``resume`` says.

    Raises:
        ConfigError: ``resume`` names a file that does not exist.
    """
    from avgen.checkpoint import newest_checkpoint, remove_stale_temporaries, requeued

    folder = Path(cfg.paths.output_dir) / "checkpoints"
    for stale in remove_stale_temporaries(folder):
        print(f"removed {stale}: a temporary checkpoint left by a process killed while saving")
    resume = cfg.get("resume", "auto")
    if resume in (None, False, "never", "none"):
        if not requeued():
            return None
        print(f"resume={resume} applied to this SLURM job's first start; requeued "
              f"(SLURM_RESTART_COUNT={os.environ['SLURM_RESTART_COUNT']}), it continues")
        resume = "auto"
    if resume == "auto":
        newest = newest_checkpoint(folder)
        if newest is None:
            return None
        path, step = newest
        print(f"resuming from {path} (step {step}, the newest complete checkpoint in {folder})")
        return str(path)
    if not Path(resume).is_file():
        raise ConfigError(f"resume={resume}: no such checkpoint (use resume=auto, resume=never or a .ckpt path)")
    print(f"resuming from {resume}")
    return str(resume)


def start_over(cfg: DictConfig) -> Path | None:
    """``resume=never`` (not in a requeued SLURM job): move the run folder's checkpoints of the run it starts over
    into ``checkpoints/superseded-<UTC time>/`` (kept, said aloud), so that a later ``resume=auto`` cannot continue
    the abandoned run from a step checkpoint the new run has not reached. ``fit`` calls it when everything is built
    and ``init_from`` is loaded (a refused run moves nothing; ``init_from`` may name a checkpoint of this folder).
    Returns the folder, or None."""
    from avgen.checkpoint import requeued, set_checkpoints_aside

    if cfg.get("resume", "auto") not in (None, False, "never", "none") or requeued():
        return None
    folder = set_checkpoints_aside(Path(cfg.paths.output_dir) / "checkpoints")
    if folder is not None:
        print(f"resume={cfg.get('resume')}: starting over; the earlier run's checkpoints moved to {folder}")
    return folder


# ----------------------------------------------------------------------------------- commands
def resume_command(cfg: DictConfig, command: str = "fit") -> str:
    """The command line that continues this ``command`` (``fit``, ``pretrain-twins``): the user's overrides, with
    the run folder pinned, and without ``resume=`` (``never`` would start over again, a path would go back to that
    checkpoint: the default ``auto`` continues from the run folder's newest)."""
    import shlex

    overrides = [o for o in command_line_overrides()
                 if not o.lstrip("+").startswith(("hydra.run.dir=", "paths.output_dir=", "command=", "resume="))]
    return " ".join([f"python -m avgen {command}", *map(shlex.quote, overrides),
                     shlex.quote(f"hydra.run.dir={cfg.paths.output_dir}")])


def experiment_dataset(cfg: DictConfig) -> str | None:
    """The dataset the chosen experiment file selects (``override /data: <name>``), None without one."""
    from hydra.core.hydra_config import HydraConfig

    from avgen.config_files import config_dir

    if not HydraConfig.initialized():
        return None
    name = HydraConfig.get().runtime.choices.get("experiment")
    path = config_dir() / "experiment" / f"{name}.yaml"
    if not name or not path.is_file():
        return None
    for entry in OmegaConf.load(path).get("defaults") or []:
        if isinstance(entry, DictConfig) and "override /data" in entry:
            return str(entry["override /data"])
    return None


def announce(cfg: DictConfig, command: str) -> None:
    """What a command prints first: its run folder, the dataset it reads (and whether ``scale=tiny`` swapped
    the experiment's dataset for the synthetic one), and for ``fit`` the command that resumes it."""
    print(f"avgen {command}: run folder {cfg.paths.output_dir}")
    data = cfg.get("data")
    if command in ("fit", "validate", "test", "prepare", "cache") and data is not None and data.get("name"):
        # validate / test announce the checkpoint's data (their cfg is already checkpoint_config's)
        wanted = experiment_dataset(cfg)
        swapped = (f" (scale={cfg.get('scale_name')} replaced the experiment's dataset {wanted})"
                   if wanted and wanted != data.name else "")
        print(f"avgen {command}: data {data.name} in {data.get('root')}{swapped}")
    if command == "fit":
        print(f"avgen fit: resume with: {resume_command(cfg)}")


def check_multirun_ddp(cfg: DictConfig) -> None:
    """Lightning's DDP re-launches the command line in each rank; inside a local (sequential) multirun
    that would start the whole sweep again in every rank."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    strategy = cfg.trainer.get("strategy")
    strategy = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if "BasicLauncher" in launcher and "ddp" in strategy.lower() and (devices not in (1, "1") or nodes != 1):
        raise ConfigError(
            f"trainer.strategy={strategy} with trainer.devices={devices} inside a local multirun (-m) would re-run the "
            f"whole sweep in every rank. Use hydra/launcher=slurm (one job per run), or launch the runs one by one.")


def fit(cfg: DictConfig) -> dict[str, Any]:
    # config checks first: refused before data is prepared or Lightning is imported (seconds)
    check_multirun_ddp(cfg)
    check_model_selected(cfg)
    check_accelerator(cfg)
    import lightning.pytorch as pl

    from avgen.checkpoint import read_checkpoint

    announce(cfg, "fit")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    ckpt_path = resolve_resume(cfg)
    model = build_model(cfg, fresh=not (ckpt_path or cfg.get("init_from")))
    use_features(datamodule, model)
    trainer = build_trainer(cfg, datamodule, interrupt_checkpoint=True)
    if ckpt_path:
        if cfg.get("init_from"):
            log.warning("init_from=%s ignored: the run resumes from %s", cfg.init_from, ckpt_path)
    elif cfg.get("init_from"):
        log.info("initialising trainable weights from %s", cfg.init_from)
        try:
            strict = bool(cfg.get("init_from_strict", True))
            report = model.load_trainable(read_checkpoint(cfg.init_from), strict=strict)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"init_from={cfg.init_from}: {exc.args[0] if exc.args else exc}") from exc
        report_init_from(cfg.init_from, report)
    start_over(cfg)  # resume=never: only now, when nothing is left to refuse
    fit_and_exit_if_preempted(trainer, model, datamodule, ckpt_path)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    if trainer.is_global_zero:  # resumed at max_steps: nothing trained, last.ckpt may be older than step_<N>
        from avgen.checkpoint import refresh_last

        refreshed = refresh_last(ckpt_dir, trainer.global_step)
        if refreshed is not None:
            print(f"{refreshed} now holds step {trainer.global_step} (the newest checkpoint's)")
    log.info("run folder: %s; checkpoints: %s", cfg.paths.output_dir, ckpt_dir)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def fit_and_exit_if_preempted(trainer, model, datamodule, ckpt_path: str | None) -> None:
    """``trainer.fit``; exits with :data:`avgen.callbacks.PREEMPTED_EXIT` (75) when the trainer's
    :class:`~avgen.callbacks.SlurmRequeue` stopped the run (SIGUSR1 or SIGTERM): the same command resumes it."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from avgen.callbacks import PREEMPTED_EXIT, SlurmRequeue

    requeue = next((c for c in trainer.callbacks if isinstance(c, SlurmRequeue)), None)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        if requeue is None or not requeue.preempted:
            raise
    finally:
        if requeue is not None:
            requeue.restore_signal_handler()
    if requeue is not None and requeue.preempted:
        sys.exit(PREEMPTED_EXIT)


def use_features(datamodule, model) -> None:
    """With ``data.features=<name>``: check the cache against the model's frozen parts and have the datamodule read
    it (:meth:`avgen.data.datamodule.AVDataModule.use_features`).

    Raises:
        ConfigError: the model offers no cacheable part, or the cache does not fit it.
    """
    name = getattr(datamodule, "features", None)
    if name is None:
        return
    if not hasattr(model, "feature_parts"):
        raise ConfigError(f"data.features={name}: {type(model).__name__} reads no feature cache (it has no "
                          f"feature_parts); set data.features=null")
    datamodule.use_features(model.feature_parts())


def report_init_from(path: str, report: dict[str, list[str]]) -> None:
    """Print what ``init_from`` loaded and, with ``init_from_strict=false``, what it left (names, first five)."""
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f", ... ({len(keys)})" if len(keys) > 5 else "")

    left = [(report["missing"], "kept their initialisation (not in the checkpoint)"),
            (report["unexpected"], "in the checkpoint only, not loaded"),
            (report["mismatched"], "skipped: another shape in the checkpoint")]
    print(f"init_from={path}: loaded {len(report['loaded'])} trainable tensors")
    for keys, what in left:
        if keys:
            print(f"  {len(keys)} {what}: {names(keys)}")


def _evaluate_loop(cfg: DictConfig, which: str) -> list[dict[str, float]]:
    """``trainer.<which>`` of a checkpoint's system on its data: the config is :func:`checkpoint_config`
    (model, scale and data geometry from the checkpoint; the command line's overrides on top)."""
    import lightning.pytorch as pl

    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("ckpt_path"):
        model, cfg = load_system(cfg.ckpt_path, cfg, command_line_overrides())
    else:
        log.warning("%s without ckpt_path: the trainable parts keep their initial weights", which)
        model = build_model(cfg)
    announce(cfg, which)
    datamodule = build_datamodule(cfg)
    use_features(datamodule, model)
    trainer = build_trainer(cfg, datamodule)
    return getattr(trainer, which)(model, datamodule=datamodule)


def validate(cfg: DictConfig):
    return _evaluate_loop(cfg, "validate")


def test(cfg: DictConfig):
    return _evaluate_loop(cfg, "test")


def sample(cfg: DictConfig) -> list[Path]:
    """Generate into ``<output_dir>/samples`` and write the run's ``<output_dir>/samples.json``
    (``written`` sample names, ``refused`` inputs and ``failed`` samples with their reasons; see
    :class:`avgen.samples.SampleReport`). Each refused input and failed sample is printed.
    Returns the written mp4s.

    The system is the checkpoint's, with the command line's overrides applied by
    :func:`checkpoint_config`. A sampling setting comes from, first to last: ``sample.<k>`` when not
    null, ``model.sampling.<k>`` on the command line, the checkpoint's ``model.sampling.<k>``.

    Raises:
        ConfigError: no ``ckpt_path``, or an override that cannot apply to the checkpoint.
        NothingProduced: no sample was written (the message gives the counts and the first reason).
    """
    from avgen.media import write_bytes_atomic

    if not cfg.get("ckpt_path"):
        raise ConfigError("sample needs ckpt_path=<checkpoint written by fit>")
    announce(cfg, "sample")
    model, _ = load_system(cfg.ckpt_path, cfg, command_line_overrides())
    if not hasattr(model, "sample_to_files"):
        raise CommandUnavailable(f"{type(model).__name__} does not implement sampling (sample_to_files)")
    out_dir = Path(cfg.paths.output_dir) / "samples"
    report = model.sample_to_files(out_dir, **OmegaConf.to_container(cfg.get("sample") or {}, resolve=True))
    run_json = Path(cfg.paths.output_dir) / "samples.json"
    write_bytes_atomic(run_json, json.dumps(report.to_json(), indent=1, ensure_ascii=False).encode(), overwrite=True)
    for entry in report.refused:
        print(f"refused input {entry['file']}: {entry['reason']}")
    for entry in report.failed:
        print(f"not written: {entry['sample']}: {entry['reason']}")
    if not report.written:
        reasons = [(e["file"], e["reason"]) for e in report.refused] + [(e["sample"], e["reason"])
                                                                        for e in report.failed]
        # one line, whatever a decoder's message held
        first = f", first: {reasons[0][0]}: {' '.join(reasons[0][1].split())}" if reasons else ""
        raise NothingProduced(f"0 samples written: {_count(len(report.refused), 'input')} refused, "
                              f"{_count(len(report.failed), 'sample')} failed (reasons in {run_json}){first}")
    print(f"run summary: {run_json}")
    return report.written


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def evaluate(cfg: DictConfig):
    from avgen.evaluation import evaluate as evaluate_clips

    announce(cfg, "evaluate")
    plain = OmegaConf.to_container(cfg.evaluate, resolve=True)
    result = evaluate_clips(plain, cfg.paths.output_dir, config=plain).to_json()
    metrics_json = Path(cfg.paths.output_dir) / "metrics.json"
    for key, folder in (("skipped", "evaluate.pred_dir"), ("ref_skipped", "evaluate.ref_dir")):
        for entry in result.get(key, []):
            print(f"skipped in {folder}: {entry['file']}: {entry['reason']}")
    for failure in result["failures"]:
        print(f"failed: {failure['clip']}: {' '.join(failure['reason'].split())}")
    if result["clips"] == 0:  # metrics.json and per_clip.csv are written: the reasons are on disk
        first = result["failures"][0]
        reason = " ".join(first["reason"].split())  # one line, whatever the decoder's message held
        raise NothingProduced(f"0 of {len(result['failures'])} clips scored; every clip failed (reasons in "
                              f"{metrics_json}), first: {first['clip']}: {reason}")
    print(json.dumps({"metrics": result["metrics"], "clips": result["clips"],
                      "failures": len(result["failures"])}, indent=2))
    print(f"metrics: {metrics_json}")
    return result


def concat_test(cfg: DictConfig) -> list[Path]:
    """``python -m avgen concat_test data=<dataset> data.concat_test={seed:0}``: write VTA-LDM's concatenated
    test set (appendix E; :class:`avgen.data.concat.ConcatTest`) into ``<output_dir>/concat_test`` as a sample
    folder (:func:`avgen.samples.export_concat_test`), for ``sample.video=`` and ``evaluate.ref_dir=``.
    Returns the written mp4s.

    Raises:
        ConfigError: ``data.concat_test`` is null, or the test split holds one label.
        FileExistsError: ``<output_dir>/concat_test`` holds a set and ``sample.overwrite`` is false.
        NothingProduced: no clip was written.
    """
    from avgen.samples import export_concat_test

    announce(cfg, "concat_test")
    if cfg.get("data") is not None and cfg.data.get("concat_test") is None:
        raise ConfigError("concat_test writes the set data.concat_test describes; set data.concat_test={seed:0} "
                          "(cut: [0.25, 0.75] by default)")
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    out_dir = Path(cfg.paths.output_dir) / "concat_test"
    # a sample folder, so sample.overwrite replaces an earlier one, as the refusal says
    report = export_concat_test(datamodule, out_dir, overwrite=bool((cfg.get("sample") or {}).get("overwrite")))
    for entry in report.failed:
        print(f"not written: {entry['sample']}: {entry['reason']}")
    if not report.written:
        raise NothingProduced(f"no concatenated test clip written to {out_dir} ({len(report.failed)} failed)")
    print(f"{len(report.written)} concatenated test clips: {out_dir}")
    return report.written


def export(cfg: DictConfig) -> Path:
    """Write ``ckpt_path`` as a pipeline folder (:func:`avgen.export.export_pipeline`) in ``export.dir`` (default
    ``<output_dir>/export``); ``avgen.from_pretrained(<folder>)`` loads it.

    Raises:
        ConfigError: no ``ckpt_path``, or a checkpoint of a model avgen does not export.
        FileExistsError: ``export.dir`` holds an export (``export.overwrite=true`` replaces it) or other files.
    """
    from avgen.export import export_pipeline

    if not cfg.get("ckpt_path"):
        raise ConfigError("export needs ckpt_path=<checkpoint written by fit>")
    if not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    announce(cfg, "export")
    out = cfg.export.dir or str(Path(cfg.paths.output_dir) / "export")
    evaluations = cfg.export.get("evaluations") or []
    if isinstance(evaluations, str):
        evaluations = [evaluations]
    path = export_pipeline(cfg.ckpt_path, out, ema=cfg.export.ema, include_frozen=cfg.export.include_frozen,
                           overwrite=cfg.export.overwrite, evaluations=list(evaluations),
                           runs_dir=cfg.paths.get("runs_dir"))
    log.info("exported %s -> %s", cfg.ckpt_path, path)
    print(f"exported to {path} (load it with avgen.from_pretrained({str(path)!r}))")
    return path


def prepare(cfg: DictConfig):
    from hydra.utils import instantiate

    data = cfg.get("data")
    if data is None or data.get("prepare") is None:
        raise CommandUnavailable(f"data={data.get('name') if data else None} has no prepare step (data.prepare)")
    announce(cfg, "prepare")
    if data.get("store") is None:
        raise ConfigError(f"data={data.get('group') or data.name} has no data.store (the geometry prepare writes); "
                          f"add one, e.g. data.store='{{seconds: 10.0, fps: 25, short_side: 256, sample_rate: 16000}}'")
    from avgen.data.geometry import ClipGeometry, StoreGeometry, check_servable

    store = OmegaConf.to_container(data.store, resolve=True)
    try:
        stored = StoreGeometry.from_config(store)
        clip = None if data.get("clip") is None else ClipGeometry.from_config(
            OmegaConf.to_container(data.clip, resolve=True))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if clip is not None:  # a store that cannot serve data.clip would only be refused at fit
        check_servable(clip, stored, data.name)
    fn = instantiate(data.prepare)
    result = fn(root=data.root, store=store, overwrite=bool(cfg.get("overwrite", False)))
    if isinstance(result, dict) and "splits" in result:
        for split, counts in result["splits"].items():
            reasons = ", ".join(f"{k} {n}" for k, n in counts["skipped_by_reason"].items())
            left_out = f", {counts['skipped']} left out ({reasons})" if reasons else ""
            print(f"{split}: {counts['clips']} clips{left_out}")
        print(f"report: {Path(data.root) / 'prepare_report.json'}")
    print(f"prepared {data.name} in {data.root}")
    return result


def filter_clips(cfg: DictConfig) -> dict[str, Any]:
    """``python -m avgen filter``: score the prepared clips of ``filter.splits`` with the evaluation code
    (``evaluate.*`` settings), keep those above the ``filter.min_*`` thresholds as the subset
    ``filter.name`` (:func:`avgen.curation.filter_dataset`) and print what each threshold removed.

    Raises:
        NothingProduced: a filtered split keeps no clip (the subset and its report are written)."""
    from avgen.curation import Thresholds, filter_dataset
    from avgen.data.prepare import command_line

    data = cfg.get("data")
    f = OmegaConf.to_container(cfg.filter, resolve=True)
    thresholds = Thresholds.from_config(f)
    announce(cfg, "filter")
    evaluate = OmegaConf.to_container(cfg.evaluate, resolve=True)
    report = filter_dataset(data.root, dataset=data.name, splits=f["splits"], thresholds=thresholds,
                            evaluate=evaluate, name=f["name"], prompt=f["prompt"], overwrite=f["overwrite"],
                            command=command_line("filter"))
    folder = Path(data.root) / "subsets" / report["name"]
    splits = [f["splits"]] if isinstance(f["splits"], str) else f["splits"]
    for split in splits:
        counts = report["splits"][split]
        print(f"{split}: kept {counts['kept']} of {counts['clips']} clips ({counts['removed']} removed)")
        for c in counts["criteria"].values():
            q = c["quantiles"]
            spread = f"; scores p10 {q['p10']:.3f} / p50 {q['p50']:.3f} / p90 {q['p90']:.3f}" if q else ""
            print(f"  {c['column']} > {c['threshold']:g}: {c['below']} below, {c['unscored']} unscored, "
                  f"{c['only']} removed by it alone{spread}")
    for split in report["removed_splits"]:
        print(f"removed the subset's {split} split (made by another rule; filter.overwrite=true)")
    print(f"report: {folder / 'report.json'}")
    empty = [s for s in splits if report["splits"][s]["kept"] == 0]
    if empty:
        raise NothingProduced(f"the subset {report['name']} keeps no clip of the {', '.join(empty)} split; lower the "
                              f"thresholds (report: {folder / 'report.json'})")
    print(f"train on it: data={data.get('group') or data.name} data.subset={report['name']}")
    return report


def cache(cfg: DictConfig) -> dict[str, Any]:
    """``python -m avgen cache data=<dataset> experiment=<name>``: store the experiment's frozen features over the
    dataset's splits as the cache ``cache.name`` (:func:`avgen.caching.cache_features`), print what was cached and
    how to train on it.

    Raises:
        ConfigError: a bad ``cache.*`` value, a part the system does not run.
        FileExistsError: a cache of that name made otherwise (``cache.overwrite=true`` recomputes it).
        NothingProduced: no clip could be cached.
    """
    from avgen.caching import CacheOptions, cache_features, summary
    from avgen.data.prepare import command_line

    options = CacheOptions.from_config(OmegaConf.to_container(cfg.get("cache"), resolve=True))
    announce(cfg, "cache")
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    model = build_model(cfg)
    report = cache_features(datamodule, model, options, command=command_line("cache"))
    for line in summary(report):
        print(line)
    print(f"train on it: {fit_on_cache_command(cfg, options.name)}")
    return report


def fit_on_cache_command(cfg: DictConfig, name: str) -> str:
    """The ``fit`` command that trains on cache ``name``: the cache command's overrides (dataset, experiment, scale,
    paths) without its ``cache.*`` ones, plus ``data.features=<name>``."""
    import shlex

    kept = [o for o in command_line_overrides() if not o.lstrip("+~").startswith(("cache.", "command=", "hydra."))
            and not o.startswith("data.features=")]
    if not kept:  # outside a Hydra run: the dataset group
        kept = [f"data={cfg.data.get('group') or cfg.data.name}"]
    return " ".join(["python -m avgen fit", *map(shlex.quote, kept), f"data.features={name}"])


def pretrain_twins(cfg: DictConfig) -> Path:
    """``python -m avgen pretrain-twins part=codecs|generators``: train the mini twins
    (:func:`avgen.pretraining.run_recipe`), each stage with the command line's trainer (checkpoints, Ctrl-C saves,
    SLURM requeue); returns the twins folder.

    Raises:
        ConfigError: no ``part=`` chosen (and the recipe's own errors).
    """
    import shlex

    from avgen.pretraining import clip_source, run_recipe

    if cfg.get("pretrain_twins") is None:
        raise ConfigError("pretrain-twins needs part=<name>: part=codecs trains the frame VAE, the mel VAE and the "
                          "vocoder of scale=mini, part=generators (after them) its base U-Nets")
    announce(cfg, "pretrain-twins")
    again = resume_command(cfg, command="pretrain-twins")
    print(f"avgen pretrain-twins: continue after a stop with: {again}")

    def fit_stage(stage_cfg: DictConfig, module, ckpt_path: str | None) -> None:
        trainer = build_trainer(stage_cfg, interrupt_checkpoint=True, resume_hint=again)
        fit_and_exit_if_preempted(trainer, module, None, ckpt_path)

    command = " ".join(["python -m avgen pretrain-twins",
                        *map(shlex.quote, [o for o in command_line_overrides() if not o.startswith("command=")])])
    # rendered clips need no datamodule (nor webdataset, which reading shards imports)
    datamodule = build_datamodule(cfg) if clip_source(cfg) == "store" else None
    return run_recipe(cfg, datamodule, fit_stage, command)


def app(cfg: DictConfig) -> None:
    """``python -m avgen app``: serve the models of ``ckpt_path`` / ``app.export_dir`` on a local web page
    until Ctrl-C (:func:`avgen.app.serve`)."""
    from avgen.app import serve

    announce(cfg, "app")
    serve(cfg)


COMMANDS = {"fit": fit, "validate": validate, "test": test, "sample": sample, "evaluate": evaluate,
            "export": export, "prepare": prepare, "filter": filter_clips, "concat_test": concat_test,
            "cache": cache, "app": app, "pretrain-twins": pretrain_twins}
USER_ERRORS = (ConfigError, CommandUnavailable, MissingShardsError, GeometryMismatchError, DataHealthError,
               NothingProduced, FileNotFoundError, FileExistsError, PrepareError, InputError, PipelineFolderError,
               CheckpointError)


# Commands whose Ctrl-C is one line and exit status 130, with what it leaves behind (fit saves through Lightning's
# hook, avgen.callbacks; the others stop with Python's KeyboardInterrupt).
INTERRUPTED = {"export": "; nothing was written to export.dir (the export is moved into place only when complete)",
               "app": ""}


def route_library_logs() -> None:
    """Lightning's log lines once, through the root logger's handlers (Hydra's console and ``<command>.log``).

    The ``lightning`` package adds a console handler of its own (``INFO: …``) whenever it is imported, and
    ``lightning.pytorch`` / ``lightning.fabric`` do when no logging is configured yet; ``lightning`` propagates as
    well, so a line such as "GPU available" came out twice. With root handlers present, those console handlers are
    removed and the loggers propagate. Called when a command starts and again before each trainer is built (the
    package may be imported in between)."""
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        if name not in logging.Logger.manager.loggerDict:
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handlers (not files, not pytest's)
                logger.removeHandler(handler)
        logger.propagate = True


def run_command(cfg: DictConfig):
    """Hydra task function: dispatch on ``cfg.command``; user errors end with a message and status 1."""
    route_library_logs()
    command = cfg.get("command")
    if command not in COMMANDS:
        print(f"avgen: unknown command {command!r}. Valid commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        sys.exit(2)
    from hydra.errors import InstantiationException

    try:
        if command == "sample" and (cfg.get("sample") or {}).get("gamma") is not None:
            from avgen.modules.timestep_adjust import check_gamma

            check_gamma(cfg.sample.gamma, "sample.gamma")  # before the checkpoint's models load
        return COMMANDS[command](cfg)
    except USER_ERRORS as exc:
        print(f"avgen {command}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if command not in INTERRUPTED:
            raise
        print(f"avgen {command}: interrupted (Ctrl-C){INTERRUPTED[command]}", file=sys.stderr)
        sys.exit(130)
    except InstantiationException as exc:
        # a user error raised while building a part from the config (a missing weight file, a bad key)
        if isinstance(exc.__cause__, USER_ERRORS):
            print(f"avgen {command}: error: {exc.__cause__}", file=sys.stderr)
            sys.exit(1)
        raise
