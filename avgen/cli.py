"""``python -m avgen <command> [hydra overrides]``.

The command word is rewritten into the override ``command=<word>`` before Hydra parses
``sys.argv``. Everything after it is plain Hydra: ``-m`` multiruns, ``--cfg job``, and Lightning's
DDP re-launch (which re-runs ``python -m avgen command=fit ...`` in each child rank) keep working.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from avgen.config_files import config_dir, group_options, register_scale_resolver

COMMANDS = {
    "fit": "train a system (resumes <output_dir>/checkpoints/last.ckpt when present; init_from=<ckpt> starts "
           "from weights)",
    "validate": "run the validation loop of a checkpoint (ckpt_path=<ckpt>)",
    "test": "run the test loop of a checkpoint (ckpt_path=<ckpt>)",
    "sample": "generate sounding videos from a checkpoint (ckpt_path=<ckpt> sample.n=4)",
    "evaluate": "score a folder of generated clips (evaluate.pred_dir=<folder> evaluate.metrics=[av_align,fvd,fad,"
                "clipsim,clap,clap_laion,clap_ms,imagebind,ib_score,is,kl,is_video,fd_passt,kl_passt,is_passt,"
                "fd_vggish_frames,desync,pam,cavp,fd_panns,onset_acc,onset_ap,javis_sync,kvd]; "
                "torchrun for several GPUs)",
    "export": "write a checkpoint as a pipeline folder that avgen.from_pretrained loads: safetensors weights, index, "
              "config, model card (ckpt_path=<ckpt> export.dir=<folder> [export.include_frozen=true])",
    "prepare": "write a dataset's WebDataset shards and manifests (data=<dataset>)",
    "filter": "keep the clips of a prepared dataset whose scores pass thresholds (filter.min_av_align=0.2 "
              "filter.min_clap=0.3); train on them with data.subset=<name>",
    "concat_test": "write VTA-LDM's concatenated test set as a sample folder (data=<dataset> "
                   "data.concat_test={seed:0}); dub it with sample.video=, score with evaluate.ref_dir=",
    "cache": "store an experiment's frozen features (VAE latents, text, encoder outputs) for every clip "
             "(data=<dataset> experiment=<name> cache.name=default); train on them with data.features=<name>",
    "pretrain-twins": "train the mini twins of scale=mini on the synthetic data (part=codecs: frame VAE, mel VAE, "
                      "vocoder; part=generators: the base U-Nets; resumable: run it again to continue; "
                      "pretrain_twins.publish_dir=<dir> installs them)",
    "app": "serve a local web page that runs a model (ckpt_path=<ckpt> or app.export_dir=<folder>; "
           "app.port=0 picks a free port)",
}
# Commands that take paths, not Hydra overrides: plain argparse, dispatched before Hydra to "module:function"
# (called with the words after the command word; returns the exit status), and their --help lines.
ARGPARSE_COMMANDS = {"sweep": "avgen.sweeps:main", "collect": "avgen.collect:main"}
ARGPARSE_SUMMARIES = {
    "sweep": "run the rows of a sweep file (slurm/sweeps/<table>.yaml) here, as a SLURM array (--launcher sbatch) "
             "or through submitit; --dry-run composes every row (python -m avgen sweep --help)",
    "collect": "one table (results.md, results.csv) of a sweep, runs or multirun folder: the overrides that vary, "
               "validation and evaluation metrics, the paper's values (python -m avgen collect --help)",
}
# Groups shown by --help; hydra/launcher options also include those of installed Hydra plugins.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}
HELP_GROUPS = ("model", "data", "trainer", "evaluate", "debug", "logger", "callbacks", "paths", "scale",
               "hydra/launcher")


def help_text() -> str:
    commands = {**COMMANDS, **ARGPARSE_SUMMARIES}
    width = max(len(c) for c in commands)
    lines = ["usage: python -m avgen <command> [key=value ...] [-m] [--cfg job]", "", "commands:"]
    lines += [f"  {c:<{width}}  {d}" for c, d in commands.items()]
    lines += ["", "experiments (experiment=<name>):"]
    lines += [f"  {e}" for e in group_options("experiment")] or ["  (none yet)"]
    lines += ["", "config groups (<group>=<option>):"]
    for group in HELP_GROUPS:
        lines.append(f"  {group}: {', '.join(group_options(group)) or '(none yet)'}")
    lines += [
        "",
        "examples:",
        "  python -m avgen prepare data=synthetic_hits",
        "  python -m avgen fit experiment=<name> scale=tiny",
        "  python -m avgen fit experiment=<name> trainer=ddp data.batch_size=8",
        "  python -m avgen -m fit experiment=<name> seed=1,2,3 hydra/launcher=slurm",
        "  python -m avgen cache data=<dataset> experiment=<name>   # then fit ... data.features=default",
        "  python -m avgen fit experiment=<name> --cfg job     # print the composed config",
        "",
        f"configs: {config_dir()}",
    ]
    return "\n".join(lines)


def split_args(argv: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    """Hydra's flags, and the other words (overrides, the command word) with their positions."""
    flags, words, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and "=" not in arg:
            flags.append(arg)
            # Hydra flags that take a value: keep the value out of the command-word search
            if arg in _VALUE_FLAGS and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
        else:
            words.append((i, arg))
        i += 1
    return flags, words


def rewrite_argv(argv: list[str]) -> list[str] | int:
    """Return Hydra's argv, or an exit status after printing help or an error."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0 if argv else 2
    flags, words = split_args(argv)
    if words and words[0][1] in COMMANDS:
        argv = list(argv)
        argv[words[0][0]] = f"command={words[0][1]}"
    elif any(w.startswith("command=") for _, w in words):
        pass  # already rewritten: Lightning's DDP re-launch or an explicit override
    else:
        bad = words[0][1] if words else " ".join(flags)
        print(f"avgen: unknown command {bad!r}. Valid commands: {', '.join([*COMMANDS, *ARGPARSE_COMMANDS])}.\n"
              f"Run `python -m avgen --help` for the experiments and config groups.", file=sys.stderr)
        return 2
    if "-h" in flags or "--help" in flags:
        print(help_text())
        return 0
    return argv


# Blocks whose keys belong to a library (Lightning, Hydra, torch's optimizers and LR schedulers, diffusers'
# schedulers) or to the machine: any key passes through. Every other block of the config is avgen's own
# and closed: a key it does not have is a typo.
OPEN_BLOCKS = ("trainer", "logger", "callbacks", "hydra", "paths", "local")
# Hydra's flags that pick another config or do not compose one: the check leaves those runs to Hydra.
_UNCHECKED_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                    "--experimental-rerun", "--info", "-i", "--shell-completion", "-sc"}
_INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
_PASS = object()  # a key inside a block that belongs to a library


def is_open(path: tuple[str, ...]) -> bool:
    """Keys under ``path`` pass through to a library."""
    return bool(path) and (path[0] in OPEN_BLOCKS or path[0] == "model" and (
        "scheduler" in path[1:] or path[1:2] == ("optimizer",)))


def check_overrides(overrides: list[str]) -> None:
    """Refuse, before Hydra composes the run, an override that names a key avgen's blocks do not have, in
    any form (``key=``, ``+key=``, ``++key=``, ``~key``, a dict value), an override with no value
    (``key=``) and ``+key=`` on a key that has a value. Keys in :data:`OPEN_BLOCKS`, ``model.optimizer``
    and ``model.*scheduler`` pass through; a block with a ``_target_`` also takes its target's keyword
    arguments. A ``-m`` sweep over groups is checked for each combination of their options.

    Composes the config once (groups only) when an override sets a key of avgen's blocks; Hydra's
    composition errors (an unknown group option) come out as one line too.

    Raises:
        ConfigError: one line naming the key and the known keys of its block.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from avgen.errors import ConfigError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            values = _value_overrides(loader, parsed)
            if all(o.key_or_group == "command" or o.key_or_group.split(".")[0] in OPEN_BLOCKS
                   and o.key_or_group.split(".")[0] != "trainer" for o in values):  # trainer: its target's arguments
                return
            hydra_lines = [o.input_line for o in values if o.is_hydra_override() and not o.is_sweep_override()]
            from_checkpoint = any(o.key_or_group == "ckpt_path" for o in values)
            for groups in _group_runs(loader, [o for o in parsed if o not in values]):
                cfg = compose("config", overrides=groups + hydra_lines)
                # without model=, a command run on a checkpoint takes the checkpoint's model block; its
                # overrides are checked once the checkpoint is read (avgen.commands.checkpoint_config)
                unchecked = ("model",) if from_checkpoint and "model" not in cfg else ()
                # another Trainer class (trainer._target_=...): its own arguments, not Lightning's
                other_trainer = any(o.key_or_group == "trainer._target_" for o in values)
                for override in values:
                    if other_trainer and override.key_or_group.split(".")[0] == "trainer":
                        continue
                    if override.key_or_group.split(".")[0] not in unchecked:
                        _check_override(cfg, override)
                    elif not (override.is_add() or override.is_force_add() or override.is_delete()):
                        # Hydra would refuse it in several lines ("Key 'model' is not in struct")
                        raise ConfigError(f"{override.input_line}: with ckpt_path the model block comes from the "
                                          f"checkpoint; write +{override.input_line} to change it")
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(exc)) from exc


def _value_overrides(loader, parsed: list) -> list:
    """The overrides that set keys, as Hydra sorts them (a dict value sets keys even on a group's name)."""
    from hydra.types import RunMode

    if any(o.key_or_group == "hydra.searchpath" for o in parsed):  # the folders added may hold more groups
        plain = [o.input_line for o in parsed if not o.is_sweep_override()]
        lines = {o.input_line for o in loader.compute_defaults_list("config", plain, RunMode.RUN).config_overrides}
        return [o for o in parsed if o.input_line in lines
                or o.is_sweep_override() and not loader.repository.group_exists(o.key_or_group)]
    return [o for o in parsed if isinstance(o.value(), dict) or not loader.repository.group_exists(o.key_or_group)]


def _group_runs(loader, groups: list) -> list[list[str]]:
    """The group overrides of each run: one list, or one per combination of ``-m`` group sweeps."""
    import itertools

    from hydra.core.override_parser.types import Glob

    choices = []
    for o in groups:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        value = o.value()
        options = (value.filter(loader.get_group_options(o.key_or_group)) if isinstance(value, Glob)
                   else list(o.sweep_string_iterator()))
        choices.append([f"{o.get_key_element()}={option}" for option in options])
    return [list(run) for run in itertools.product(*choices)]


def _check_override(cfg, override) -> None:
    from avgen.errors import ConfigError

    parts = tuple(override.key_or_group.split("."))
    value = _lookup(cfg, parts)
    if value is _PASS or override.is_sweep_override():
        return
    key, line = ".".join(parts), override.input_line
    new = override.value()
    if line.endswith("=") and new == "":
        raise ConfigError(f"no value for {key} ({line}): expected {_kind(value)}, e.g. {key}={_example(value)}")
    if override.is_add() and value is not None and not isinstance(new, (dict, list)):
        raise ConfigError(f"{line}: {key} already has a value; write {line[1:]} to change it")
    if _wrong_type(value, new):
        kind = "true or false" if isinstance(value, bool) else "a number"  # ints take num/den too (frame rates)
        raise ConfigError(f"{line}: {key} takes {kind} (default {key}={_example(value)})")
    if isinstance(new, dict):
        _check_dict(cfg, parts, new)


def _wrong_type(default, new) -> bool:
    """Whether an override's value cannot be what the key's default is: a number where the default is an int or a
    float (a decimal or ``num/den`` string is a number: frame rates take ``30000/1001``), true/false where it is a
    boolean. Null, an interpolation and keys whose default is a string, a list, a block or null take anything here
    (their readers check them)."""
    from fractions import Fraction

    if new is None or isinstance(new, str) and "${" in new:
        return False
    if isinstance(default, bool):
        return not isinstance(new, bool)
    if isinstance(default, (int, float)):
        if isinstance(new, bool) or isinstance(new, (dict, list)):
            return True
        if isinstance(new, str):
            try:
                Fraction(new.strip())
            except (ValueError, ZeroDivisionError):
                return True
        return False
    return False


def _check_dict(cfg, parts: tuple[str, ...], value: dict) -> None:
    for name, item in value.items():
        if _lookup(cfg, (*parts, str(name))) is not _PASS and isinstance(item, dict):
            _check_dict(cfg, (*parts, str(name)), item)


def _lookup(cfg, parts: tuple[str, ...]):
    """The config's value at ``parts`` (None for an interpolation that resolves only in the run), or
    ``_PASS`` inside a library's block; raises ConfigError for a key avgen's blocks do not have."""
    import difflib

    from omegaconf import DictConfig

    from avgen.errors import ConfigError

    if parts[0] == "trainer" and len(parts) > 1 and "trainer" in cfg:
        _check_trainer_key(cfg.trainer, parts[1])
    if parts[0] in OPEN_BLOCKS:  # present or not (hydra is composed apart, local is optional)
        return _PASS
    node = cfg
    for i, name in enumerate(parts):
        if is_open(parts[:i]) or not isinstance(node, DictConfig):
            return _PASS
        if name not in node.keys():
            arguments = _target_arguments(node, ".".join(parts[:i]))
            if arguments is None or name in arguments or "_target_" in node and name in _INSTANTIATE_KEYS:
                return _PASS
            key, block = ".".join(parts), ".".join(parts[:i])
            if not block and group_options(name):
                raise ConfigError(f"unknown key {key}: no {name} is selected; choose experiment=<name> or "
                                  f"{name}=<{', '.join(group_options(name))}>")
            known = sorted({k for k in node.keys() if not str(k).startswith("_")} | arguments)
            groups = [] if block else sorted(g for g in ("experiment", "part", *HELP_GROUPS)
                                             if "/" not in g and g not in known and group_options(g))
            prefixed = [g for g in groups if len(name) >= 3 and g.startswith(name)]  # exp -> experiment
            close = prefixed[:1] or difflib.get_close_matches(name, known + groups, n=1)
            hint = (f"; did you mean {close[0]}=<{', '.join(group_options(close[0]))}>?" if close and close[0] in groups
                    else f"; did you mean {close[0]}?" if close else "")
            raise ConfigError(f"unknown key {key}; known keys of {block or 'the root config'}: {', '.join(known)}"
                              + (f"; config groups: {', '.join(groups)}" if groups else "") + hint)
        try:
            node = node[name]
        except Exception:  # ${hydra:...} or an unset environment variable: resolved in the run
            node = None
    return node


def _check_trainer_key(trainer, name: str) -> None:
    """``trainer.<name>`` is an argument of the block's ``_target_`` (Lightning's ``Trainer``) or a key the block
    has; else ConfigError with the nearest argument (the Trainer would fail later with a TypeError traceback)."""
    import difflib

    from avgen.errors import ConfigError

    arguments = _target_arguments(trainer, "trainer")
    if not arguments or name in arguments or name in trainer.keys() or name in _INSTANTIATE_KEYS:
        return  # a target that takes **kwargs, or one that does not import here: Lightning says
    close = difflib.get_close_matches(name, sorted(arguments), n=1)
    raise ConfigError(f"unknown key trainer.{name}: not an argument of {trainer.get('_target_')}"
                      + (f"; did you mean trainer.{close[0]}?" if close else ""))


# evaluate blocks whose extra keys are the feature extractor's constructor arguments (e.g. tiny test sizes)
EXTRACTOR_BLOCKS = {
    "evaluate.fvd": ("avgen.encoders.video_classifiers.I3DFeatures",),
    "evaluate.fad": ("avgen.encoders.vggish.VGGishFeatures", "avgen.encoders.panns.Cnn14"),
    "evaluate.fd_vggish_frames": ("avgen.encoders.vggish.VGGishFeatures",),
    "evaluate.is_video": ("avgen.encoders.video_classifiers.C3DProbabilities",),
    "evaluate.panns": ("avgen.encoders.panns.Cnn14",),
    "evaluate.imagebind": ("avgen.encoders.imagebind.ImageBindAV",),
    "evaluate.ib_score": ("avgen.encoders.imagebind.ImageBindAV",),
    "evaluate.desync": ("avgen.encoders.synchformer.Synchformer",),
}


def _target_arguments(node, block: str = "") -> set[str] | None:
    """The keyword arguments of a block's ``_target_``, or of the extractor classes an evaluate block
    configures (:data:`EXTRACTOR_BLOCKS`); empty for neither, None when a target takes any."""
    import inspect

    target = node.get("_target_") if "_target_" in node.keys() else None
    targets = (target,) if isinstance(target, str) else EXTRACTOR_BLOCKS.get(block, ())
    from hydra.utils import get_object

    names: set[str] = set()
    for target in targets:
        try:
            params = inspect.signature(get_object(target)).parameters.values()
        except Exception:  # the target does not import: instantiating the run reports that
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "_target_" not in node.keys():  # an extractor block: its path and config key are set by evaluate itself
        names -= {"path", "config_key"}
    return names


def _kind(value) -> str:
    from omegaconf import DictConfig, ListConfig

    kinds = ((bool, "true or false"), (int, "an int"), (float, "a number"), (str, "a string"),
             (ListConfig, "a list"), (DictConfig, "a block of keys"))
    return next((kind for cls, kind in kinds if isinstance(value, cls)), "a value")


def _example(value) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value) if isinstance(value, (int, float, str)) else "..."


def _one_line(exc: BaseException) -> str:
    """Hydra's composition message (and its cause) on one line."""
    texts = [str(exc)]
    if exc.__cause__ is not None and str(exc.__cause__) not in texts[0]:
        texts.append(str(exc.__cause__))
    text = "\n".join(texts).split("Config search path:")[0]  # Hydra's list of config folders: noise here
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()).replace(":; ", ": ")


def _run_id() -> str:
    """Folder name of a run: SLURM job (and array) ids, so a requeued job lands in the same folder;
    otherwise a timestamp. Stored in the environment so child processes agree."""
    rid = os.environ.get("AVGEN_RUN_ID")
    if not rid:
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            rid = f"slurm-{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        elif os.environ.get("SLURM_JOB_ID"):
            rid = f"slurm-{os.environ['SLURM_JOB_ID']}"
        else:
            rid = time.strftime("%Y-%m-%d_%H-%M-%S")
        os.environ["AVGEN_RUN_ID"] = rid
    return rid


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("avgen_run_id"):
        OmegaConf.register_new_resolver("avgen_run_id", _run_id, use_cache=True)
    if not OmegaConf.has_resolver("avgen_cwd"):
        OmegaConf.register_new_resolver("avgen_cwd", os.getcwd)
    register_scale_resolver()
    if not OmegaConf.has_resolver("avgen_fps_label"):
        from avgen.media import fps_label

        # folder names show a rate as a decimal (29.97), never as num/den: a "/" would nest folders
        OmegaConf.register_new_resolver("avgen_fps_label", fps_label)
    if not OmegaConf.has_resolver("avgen_store_folder"):
        OmegaConf.register_new_resolver("avgen_store_folder", store_folder)
    if not OmegaConf.has_resolver("avgen_folder_name"):
        OmegaConf.register_new_resolver("avgen_folder_name", folder_name)


def store_folder(store) -> str:
    """``${avgen_store_folder:${.store}}``: the folder a stored geometry's shards live in
    (:meth:`avgen.data.geometry.StoreGeometry.folder_name`, e.g. ``short256_25fps_10.0s_16000hz``)."""
    from omegaconf import OmegaConf

    from avgen.data.geometry import StoreGeometry

    plain = OmegaConf.to_container(store, resolve=True) if OmegaConf.is_config(store) else dict(store)
    return StoreGeometry.from_config(plain).folder_name()


def folder_name(source) -> str:
    """``${avgen_folder_name:${.source}}``: the last folder name of ``data.source`` (``my_videos`` for
    ``~/clips/my_videos/``), or ``unnamed`` when no source is set (``data=folder`` then asks for one)."""
    if not source:
        return "unnamed"
    return Path(os.path.expanduser(str(source))).resolve().name or "unnamed"


def one_run_folder(argv: list[str], flags: list[str], words: list[str]) -> list[str]:
    """``paths.output_dir=<dir>`` names the run folder: Hydra's own run folder (the composed config, the
    overrides, the log) is put there too (``hydra.run.dir=<dir>``), so no second folder appears under
    ``runs/``. Given both, they must agree; with ``-m`` each job needs its own folder, so
    ``hydra.sweep.dir`` is the key to set.

    Raises:
        ConfigError: ``paths.output_dir`` with ``-m``, or different from ``hydra.run.dir``.
    """
    from avgen.errors import ConfigError

    values = {key: value for key, _, value in (w.lstrip("+").partition("=") for w in words)}
    output_dir = values.get("paths.output_dir")
    if not output_dir:
        return argv
    if "-m" in flags or "--multirun" in flags:
        raise ConfigError(f"paths.output_dir={output_dir} with -m would put every job of the sweep in one folder; "
                          f"set hydra.sweep.dir=<folder> instead (each job gets <folder>/<job number>)")
    run_dir = values.get("hydra.run.dir")
    if run_dir is None:
        return [*argv, f"hydra.run.dir={output_dir}"]
    if Path(run_dir).absolute() != Path(output_dir).absolute():
        raise ConfigError(f"paths.output_dir={output_dir} and hydra.run.dir={run_dir} name two run folders; give "
                          f"one of them")
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ARGPARSE_COMMANDS:
        import importlib

        module, _, function = ARGPARSE_COMMANDS[argv[0]].partition(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    from avgen.parallel import hold_preemption_signal

    hold_preemption_signal()
    rewritten = rewrite_argv(argv)
    if isinstance(rewritten, int):
        return rewritten
    import hydra

    from avgen.commands import run_command
    from avgen.errors import ConfigError

    register_resolvers()
    flags, words = split_args(rewritten)
    try:
        if not _UNCHECKED_FLAGS.intersection(flags):
            check_overrides([word for _, word in words])
        rewritten = one_run_folder(rewritten, flags, [word for _, word in words])
    except ConfigError as exc:
        command = next(word.partition("=")[2] for _, word in words if word.startswith("command="))
        print(f"avgen {command}: error: {exc}", file=sys.stderr)
        return 1
    sys.argv = [sys.argv[0]] + rewritten
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(run_command)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
