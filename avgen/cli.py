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

COMMANDS = {
    "fit": "train a system (resumes <output_dir>/checkpoints/last.ckpt when present; init_from=<ckpt> starts from weights)",
    "validate": "run the validation loop of a checkpoint (ckpt_path=<ckpt>)",
    "test": "run the test loop of a checkpoint (ckpt_path=<ckpt>)",
    "sample": "generate sounding videos from a checkpoint (ckpt_path=<ckpt> sample.n=4)",
    "evaluate": "score a folder of generated clips (evaluate.pred_dir=<folder> evaluate.metrics=[av_align,fvd,fad,"
                "clipsim,clap,imagebind,is,kl,is_video]; torchrun for several GPUs)",
    "export": "strip a checkpoint to safetensors weights + config (ckpt_path=<ckpt> export.dir=<folder>)",
    "prepare": "write a dataset's WebDataset shards and manifests (data=<dataset>)",
}
# Groups shown by --help; hydra/launcher options also include those of installed Hydra plugins.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}
HELP_GROUPS = ("model", "data", "trainer", "logger", "callbacks", "paths", "scale", "hydra/launcher")


def config_dir() -> Path:
    """The ``configs/`` folder (repo root; ``AVGEN_CONFIG_DIR`` overrides it)."""
    env = os.environ.get("AVGEN_CONFIG_DIR")
    return Path(env).absolute() if env else Path(__file__).resolve().parent.parent / "configs"


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def help_text() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: python -m avgen <command> [key=value ...] [-m] [--cfg job]", "", "commands:"]
    lines += [f"  {c:<{width}}  {d}" for c, d in COMMANDS.items()]
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
        "  python -m avgen fit experiment=<name> --cfg job     # print the composed config",
        "",
        f"configs: {config_dir()}",
    ]
    return "\n".join(lines)


def rewrite_argv(argv: list[str]) -> list[str] | int:
    """Return Hydra's argv, or an exit status after printing help or an error."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0 if argv else 2
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
    if words and words[0][1] in COMMANDS:
        argv = list(argv)
        argv[words[0][0]] = f"command={words[0][1]}"
    elif any(w.startswith("command=") for _, w in words):
        pass  # already rewritten: Lightning's DDP re-launch or an explicit override
    else:
        bad = words[0][1] if words else " ".join(flags)
        print(f"avgen: unknown command {bad!r}. Valid commands: {', '.join(COMMANDS)}.\n"
              f"Run `python -m avgen --help` for the experiments and config groups.", file=sys.stderr)
        return 2
    if "-h" in flags or "--help" in flags:
        print(help_text())
        return 0
    return argv


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
    if not OmegaConf.has_resolver("avgen_fps_label"):
        from avgen.media import fps_label

        # folder names show a rate as a decimal (29.97), never as num/den: a "/" would nest folders
        OmegaConf.register_new_resolver("avgen_fps_label", fps_label)


def main(argv: list[str] | None = None) -> int:
    rewritten = rewrite_argv(list(sys.argv[1:] if argv is None else argv))
    if isinstance(rewritten, int):
        return rewritten
    import hydra

    from avgen.commands import run_command

    register_resolvers()
    sys.argv = [sys.argv[0]] + rewritten
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(run_command)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
