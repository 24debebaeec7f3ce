"""What each ``python -m avgen <command>`` does with the composed config.

``fit``, ``validate`` and ``test`` are generic: they instantiate ``data``, ``model``, ``trainer``,
``logger`` and ``callbacks`` from the config. ``sample`` rebuilds the system from a checkpoint and
calls its ``sample_to_files``; ``export`` strips a checkpoint; ``prepare`` writes a dataset's
shards; ``evaluate`` scores a folder of generated clips.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from avgen.errors import (CommandUnavailable, ConfigError, DataHealthError, GeometryMismatchError,
                          MissingShardsError, NothingProduced)

log = logging.getLogger("avgen")


# ----------------------------------------------------------------------------------- building
def build_datamodule(cfg: DictConfig):
    from hydra.utils import instantiate

    if cfg.get("data") is None:
        raise ConfigError("no dataset selected: set data=<name> (python -m avgen --help lists them)")
    return instantiate(cfg.data)


def build_model(cfg: DictConfig):
    from hydra.utils import instantiate

    from avgen.systems.base import AVSystem

    if cfg.get("model") is None:
        raise ConfigError("no model selected: choose experiment=<name> or model=<name> "
                          "(python -m avgen --help lists the experiments)")
    model = instantiate(cfg.model)
    if isinstance(model, AVSystem):
        model.run_config = OmegaConf.to_container(cfg, resolve=True)
    return model


def build_trainer(cfg: DictConfig, datamodule=None):
    from hydra.utils import instantiate

    from avgen.callbacks import DataHealthMonitor
    from avgen.data.datamodule import AVDataModule

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if isinstance(datamodule, AVDataModule) and not any(isinstance(c, DataHealthMonitor) for c in callbacks):
        callbacks.append(DataHealthMonitor())
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def load_system(ckpt_path: str | Path, overrides: DictConfig | None = None):
    """Rebuild a system from an avgen checkpoint: frozen parts from its config, trainable weights from it."""
    from hydra.utils import instantiate

    from avgen.checkpoint import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    cfg = OmegaConf.create(ckpt["avgen"]["config"])
    if overrides is not None:
        cfg = OmegaConf.merge(cfg, overrides)
    model = instantiate(cfg.model)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    model.load_trainable(ckpt)
    return model, cfg


def resolve_resume(cfg: DictConfig) -> str | None:
    """``resume=auto``: ``<output_dir>/checkpoints/last.ckpt`` if it exists; ``resume=never``; or a path."""
    resume = cfg.get("resume", "auto")
    if resume in (None, False, "never", "none"):
        return None
    if resume == "auto":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise ConfigError(f"resume={resume}: no such checkpoint (use resume=auto, resume=never or a .ckpt path)")
    return str(resume)


# ----------------------------------------------------------------------------------- commands
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
    import lightning.pytorch as pl

    from avgen.checkpoint import read_checkpoint

    check_multirun_ddp(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    trainer = build_trainer(cfg, datamodule)
    ckpt_path = resolve_resume(cfg)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
        if cfg.get("init_from"):
            log.warning("init_from=%s ignored: the run resumes from %s", cfg.init_from, ckpt_path)
    elif cfg.get("init_from"):
        log.info("initialising trainable weights from %s", cfg.init_from)
        model.load_trainable(read_checkpoint(cfg.init_from))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    log.info("run folder: %s; checkpoints: %s", cfg.paths.output_dir, ckpt_dir)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _evaluate_loop(cfg: DictConfig, which: str) -> list[dict[str, float]]:
    import lightning.pytorch as pl

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    if cfg.get("ckpt_path"):
        model, _ = load_system(cfg.ckpt_path, overrides=OmegaConf.create({"model": cfg.model}) if cfg.get("model") else None)
    else:
        log.warning("%s without ckpt_path: the trainable parts keep their initial weights", which)
        model = build_model(cfg)
    trainer = build_trainer(cfg, datamodule)
    return getattr(trainer, which)(model, datamodule=datamodule)


def validate(cfg: DictConfig):
    return _evaluate_loop(cfg, "validate")


def test(cfg: DictConfig):
    return _evaluate_loop(cfg, "test")


def sample(cfg: DictConfig) -> list[Path]:
    """Generate into ``<output_dir>/samples`` and write the run's ``<output_dir>/samples.json``
    (``written`` sample names, ``refused`` inputs and ``failed`` samples with their reasons; see
    :class:`avgen.systems.common.SampleReport`). Each refused input and failed sample is printed.
    Returns the written mp4s.

    Raises:
        NothingProduced: no sample was written (the message gives the counts and the first reason).
    """
    from avgen.media import write_bytes_atomic

    if not cfg.get("ckpt_path"):
        raise ConfigError("sample needs ckpt_path=<checkpoint written by fit>")
    model, _ = load_system(cfg.ckpt_path)
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
        raise NothingProduced(f"0 samples written: {len(report.refused)} inputs refused, {len(report.failed)} "
                              f"samples failed (reasons in {run_json}){first}")
    print(f"run summary: {run_json}")
    return report.written


def evaluate(cfg: DictConfig):
    from avgen.evaluation import evaluate_folder

    ev = cfg.evaluate
    if not ev.get("pred_dir"):
        raise ConfigError("evaluate needs evaluate.pred_dir=<folder of generated videos (with sound, or with "
                          "<stem>.wav beside them; any container)>")
    plain = OmegaConf.to_container(ev, resolve=True)
    result = evaluate_folder(ev.pred_dir, cfg.paths.output_dir, metrics=list(ev.metrics), workers=ev.workers,
                             plots=ev.plots, av_align=plain["av_align"], ref_dir=ev.ref_dir, fvd=plain["fvd"],
                             fad=plain["fad"], clipsim=plain["clipsim"], clap=plain["clap"], panns=plain["panns"],
                             is_video=plain.get("is_video"), imagebind=plain.get("imagebind"),
                             prompt=ev.prompt, decode_threads=ev.decode_threads, cache_dir=ev.cache_dir,
                             device=ev.device, overwrite=ev.overwrite, config=plain)
    metrics_json = Path(cfg.paths.output_dir) / "metrics.json"
    for key, folder in (("skipped", "evaluate.pred_dir"), ("ref_skipped", "evaluate.ref_dir")):
        for entry in result.get(key, []):
            print(f"skipped in {folder}: {entry['file']}: {entry['reason']}")
    if result["clips"] == 0:  # metrics.json and per_clip.csv are written: the reasons are on disk
        first = result["failures"][0]
        reason = " ".join(first["reason"].split())  # one line, whatever the decoder's message held
        raise NothingProduced(f"0 of {len(result['failures'])} clips scored; every clip failed (reasons in "
                              f"{metrics_json}), first: {first['clip']}: {reason}")
    print(json.dumps({"metrics": result["metrics"], "clips": result["clips"],
                      "failures": len(result["failures"])}, indent=2))
    print(f"metrics: {metrics_json}")
    return result


def export(cfg: DictConfig):
    from avgen.checkpoint import export_checkpoint

    if not cfg.get("ckpt_path"):
        raise ConfigError("export needs ckpt_path=<checkpoint written by fit>")
    out = cfg.export.dir or str(Path(cfg.paths.output_dir) / "export")
    path = export_checkpoint(cfg.ckpt_path, out, use_ema=cfg.export.ema, overwrite=cfg.export.overwrite)
    log.info("exported %s -> %s", cfg.ckpt_path, path)
    print(f"exported to {path}")
    return str(path)


def prepare(cfg: DictConfig):
    from hydra.utils import instantiate

    data = cfg.get("data")
    if data is None or data.get("prepare") is None:
        raise CommandUnavailable(f"data={data.get('name') if data else None} has no prepare step (data.prepare)")
    fn = instantiate(data.prepare)
    result = fn(root=data.root, clip=OmegaConf.to_container(data.clip, resolve=True),
                overwrite=bool(cfg.get("overwrite", False)))
    print(f"prepared {data.name} in {data.root}")
    return result


COMMANDS = {"fit": fit, "validate": validate, "test": test, "sample": sample, "evaluate": evaluate,
            "export": export, "prepare": prepare}
USER_ERRORS = (ConfigError, CommandUnavailable, MissingShardsError, GeometryMismatchError, DataHealthError,
               NothingProduced, FileNotFoundError, FileExistsError)


def run_command(cfg: DictConfig):
    """Hydra task function: dispatch on ``cfg.command``; user errors end with a message and status 1."""
    command = cfg.get("command")
    if command not in COMMANDS:
        print(f"avgen: unknown command {command!r}. Valid commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        sys.exit(2)
    from hydra.errors import InstantiationException

    try:
        return COMMANDS[command](cfg)
    except USER_ERRORS as exc:
        print(f"avgen {command}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except InstantiationException as exc:
        # a user error raised while building a part from the config (a missing weight file, a bad key)
        if isinstance(exc.__cause__, USER_ERRORS):
            print(f"avgen {command}: error: {exc.__cause__}", file=sys.stderr)
            sys.exit(1)
        raise
