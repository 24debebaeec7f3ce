"""``python -m avgen export``: a checkpoint as a self-contained pipeline folder that
:func:`avgen.from_pretrained` loads in one call.

Folder layout (the index, config and trained weights are JSON, safetensors or text; nothing is pickled; frozen
copies keep their source's files, e.g. a BEATs ``.pt`` that the encoder reads with ``weights_only=True``)::

    avgen_index.json          format, system, task, components, sampling defaults, clip, versions
                              (not model_index.json, so diffusers does not take the folder for its own pipeline)
    model_config.json         the resolved model config (no optimizer / LR schedule; training-only weights unset)
    <component>/model.safetensors   the trained weights, one folder per trained component (EMA by default)
    frozen/<component>/       copies of the frozen pretrained parts (only with export.include_frozen=true)
    README.md                 the model card: system, paper, data, training, metrics, intended use, how to load

Frozen parts are otherwise referenced as the training config named them: a hub id (loaded from the local
Hugging Face cache), an absolute local path, or a ``tiny:`` twin (rebuilt in code, bit-identical).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from avgen.config_files import scale_blocks
from avgen.errors import ConfigError
from avgen.pipelines import (
    CONFIG_FILE,
    FROZEN_SOURCES,
    INDEX_FILE,
    INDEX_FORMAT,
    SYSTEMS,
    TRAINED_COMPONENTS,
    WEIGHTS_FILE,
    effective_source,
    set_source,
)

FROZEN_DIR = "frozen"


def component_of(key: str, system: str) -> tuple[str, str]:
    """``(component name, prefix)`` of a trained tensor name: the first prefix of :data:`TRAINED_COMPONENTS`
    it starts with, else its first two name parts (``denoiser.extra.w`` → ``denoiser_extra``, ``denoiser.extra.``)."""
    for name, prefix in TRAINED_COMPONENTS.get(system, {}).items():
        if key.startswith(prefix):
            return name, prefix
    parts = key.split(".")
    head = parts[:2] if len(parts) > 2 else parts[:1]
    return "_".join(head), ".".join(head) + "."


def split_components(weights: Mapping[str, torch.Tensor], system: str
                     ) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """``{component: (prefix, {name without prefix: tensor})}`` of the trained tensors, contiguous on the CPU."""
    out: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}
    for key in sorted(weights):
        name, prefix = component_of(key, system)
        out.setdefault(name, (prefix, {}))[1][key[len(prefix):]] = weights[key].detach().contiguous().cpu()
    return out


def source_kind(value: str) -> str:
    """``tiny`` (a ``tiny:`` twin), ``mini`` (a ``mini:`` twin: avgen's trained mini twins), ``random`` (a ``random:``
    architecture of ``scale=paper_random``: random weights), ``local`` (an existing file or folder) or ``hub`` (a hub
    id)."""
    from avgen.backbones.loader import MINI_PREFIX, RANDOM_PREFIX, TINY_PREFIX

    if value.startswith(RANDOM_PREFIX):
        return "random"
    if value.startswith(TINY_PREFIX):
        return "tiny"
    if value.startswith(MINI_PREFIX):
        return "mini"
    return "local" if Path(value).exists() else "hub"


def frozen_sources(model_config: Mapping[str, Any], system: str) -> dict[str, tuple[str, str]]:
    """``{component: (config key, source)}`` of the frozen pretrained parts this config loads (parts it does not
    read are left out: no ``video.vae`` override, no text condition). VTA-LDM's ``encoder.path: null`` is the
    encoder's default hub id."""
    found = {}
    for name, key in FROZEN_SOURCES.get(system, {}).items():
        value = effective_source(model_config, key)
        if system == "vta_ldm" and name == "text_encoder" and "text" not in (model_config.get("conditions") or []):
            continue
        if system == "vta_ldm" and name == "video_encoder":
            if not ({"video", "pe", "flow"} & set(model_config.get("conditions") or [])):
                continue
            if value is None:
                from avgen.encoders.video_tokens import DEFAULT_SOURCES

                encoder = (model_config.get("encoder") or {}).get("name", "clip4clip")
                value = DEFAULT_SOURCES.get(encoder)
        if value is None:
            continue
        found[name] = (key, str(value))
    return found


def copy_frozen(source: str, kind: str, config_key: str, dest: Path, tiny_dir: str | None) -> Path:
    """Copy a frozen part into ``dest`` (a new folder); returns the path the config should name inside it (the
    folder, or the file for a single-file source). Hub ids are read from the local Hugging Face cache (symlinks
    followed), ``tiny:`` and ``mini:`` twins are materialised first.

    Raises:
        avgen.backbones.loader.PretrainedModelMissing: a hub id that is not in the local cache.
    """
    from avgen.backbones.loader import PretrainedModelMissing, resolve_source

    if kind == "random":
        raise ConfigError(f"export.include_frozen=true: model.{config_key}={source} has no weights to copy "
                          f"(scale=paper_random builds it from configs/architectures with random weights); export "
                          f"without export.include_frozen")
    if kind in ("tiny", "mini"):
        path = Path(resolve_source(source, tiny_dir, f"model.{config_key}"))
    elif kind == "local":
        path = Path(source)
    else:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(source, local_files_only=True))
        except Exception as exc:  # huggingface_hub raises several types for "not cached"
            raise PretrainedModelMissing(source, f"model.{config_key}", f"{type(exc).__name__}: {exc}") from exc
    if path.is_dir():
        shutil.copytree(path, dest, symlinks=False)
        return dest
    dest.mkdir(parents=True)
    shutil.copy2(path, dest / path.name)
    return dest / path.name


def foreign_entries(folder: Path) -> list[str]:
    """The names in an export ``folder`` that :func:`export_pipeline` does not write (a user's notes, samples
    saved inside it), sorted: what replacing the folder would delete. An unreadable index counts as foreign."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
        components = index.get("components") or {}
        ours = {INDEX_FILE, str(index.get("config") or CONFIG_FILE), "README.md", FROZEN_DIR}
        ours |= {Path(c["file"]).parts[0] for c in components.values() if c.get("type") == "trained"}
    except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError):
        return [f"{INDEX_FILE} (unreadable: not written by this avgen)"]
    return sorted(p.name for p in folder.iterdir() if p.name not in ours)


def export_pipeline(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, *, ema: bool = True,
                    include_frozen: bool = False, overwrite: bool = False,
                    evaluations: Sequence[str | os.PathLike] = (), runs_dir: str | os.PathLike | None = None) -> Path:
    """Write the export folder of an avgen checkpoint (layout in the module docstring); returns ``out_dir``.

    Args:
        ckpt_path: a checkpoint written by ``fit``.
        out_dir: the folder to write (created; written to a temporary folder beside it and moved into place, so a
            failed export leaves nothing half-written).
        ema: store the EMA weights when the checkpoint holds them (``export.ema``).
        include_frozen: copy the frozen pretrained parts into ``frozen/`` (``export.include_frozen``).
        overwrite: replace an earlier export in ``out_dir`` (``export.overwrite``). A folder that holds anything
            but an avgen export is never replaced.
        evaluations: ``metrics.json`` files or folders holding them (``evaluate``'s output) whose metrics go into
            the model card (``export.evaluations``), besides those found below the run folder and the evaluations
            of this checkpoint's samples found under ``runs_dir`` (default: the training run's ``paths.runs_dir``).

    Raises:
        FileNotFoundError: no such checkpoint. ConfigError: not a checkpoint of one of the three systems.
        FileExistsError: ``out_dir`` holds an export and ``overwrite`` is false, or holds other files.
        avgen.backbones.loader.PretrainedModelMissing: ``include_frozen`` and a frozen part is not on this machine.
    """
    from avgen._versions import library_versions
    from avgen.checkpoint import read_checkpoint
    from avgen.media import write_bytes_atomic
    from avgen.pretrained import sha256_file

    ckpt_path = Path(ckpt_path)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / INDEX_FILE).is_file():
            raise FileExistsError(f"export.dir={out} exists and is not an avgen export; choose another export.dir "
                                  f"(avgen never replaces files it did not write)")
        if not overwrite:
            raise FileExistsError(f"export.dir={out} already holds an export; pass export.overwrite=true to replace "
                                  f"it, or another export.dir")
        foreign = foreign_entries(out)
        if foreign:
            raise FileExistsError(f"export.dir={out} holds an export and {foreign[0]}, which export did not write; "
                                  f"move it out of the folder or choose another export.dir (avgen never replaces "
                                  f"files it did not write)")
    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt.get("avgen") or {}
    run_config = meta.get("config") or {}
    model_config = copy.deepcopy(run_config.get("model") or {})
    target = model_config.get("_target_")
    system = next((name for name, info in SYSTEMS.items() if info["class"] == target), None)
    if system is None:
        raise ConfigError(f"ckpt_path={ckpt_path}: its model {target!r} is not one of the systems avgen exports "
                          f"({', '.join(SYSTEMS)})")
    weights = dict(ckpt["state_dict"])
    ema_used = bool(ema and meta.get("ema"))
    if ema_used:
        weights.update(meta["ema"])

    # the model config as it will be loaded: no optimizer / LR schedule, no weights that only start a run,
    # tiny_dir set by the loading machine
    import importlib

    module, _, cls_name = SYSTEMS[system]["class"].rpartition(".")
    system_class = getattr(importlib.import_module(module), cls_name)
    init_only = getattr(system_class, "INIT_ONLY", ())
    if hasattr(system_class, "pinned_export_settings"):  # settings read from a source that the export relocates
        pinned = system_class.pinned_export_settings(lambda key: effective_source(model_config, key))
        for key, value in pinned.items():
            set_source(model_config, key, value)
    for key in ("optimizer", "scheduler", *init_only):
        if key in model_config:
            model_config[key] = None
    training_tiny_dir = model_config.get("tiny_dir")
    model_config["tiny_dir"] = None

    tmp = out.parent / f".{out.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"export.dir={out}: cannot create a folder in {out.parent} ({exc.strerror}); choose a "
                          f"writable export.dir") from exc
    try:
        components: dict[str, dict[str, Any]] = {}
        from safetensors.torch import save as save_safetensors

        for name, (prefix, tensors) in split_components(weights, system).items():
            rel = f"{name}/{WEIGHTS_FILE}"
            path = tmp / rel
            path.parent.mkdir(parents=True)
            path.write_bytes(save_safetensors(tensors, metadata={"format": "pt", "prefix": prefix}))
            components[name] = {"type": "trained", "prefix": prefix, "file": rel, "sha256": sha256_file(path),
                                "parameters": int(sum(t.numel() for t in tensors.values())),
                                "tensors": len(tensors)}
        copied: dict[str, str] = {}
        for name, (key, source) in frozen_sources(model_config, system).items():
            kind = source_kind(source)
            entry: dict[str, Any] = {"type": "frozen", "config_key": key, "original": source}
            if include_frozen:
                if source not in copied:
                    path = copy_frozen(source, kind, key, tmp / FROZEN_DIR / name, training_tiny_dir)
                    copied[source] = path.relative_to(tmp).as_posix()
                entry.update(kind="included", source=copied[source])
                set_source(model_config, key, copied[source])
            else:
                value = str(Path(source).resolve()) if kind == "local" else source
                entry.update(kind=kind, source=value)
                if kind == "mini":  # the trained twins it was made with: from_pretrained checks them
                    from avgen.backbones.mini import MINI_PREFIX, twin_tag

                    entry["weights_tag"] = twin_tag(source.removeprefix(MINI_PREFIX))
                set_source(model_config, key, value)
            components[name] = entry

        versions = {"trained_with": meta.get("versions") or {}, "exported_with": library_versions()}
        sampling = copy.deepcopy(model_config.get("sampling") or {})
        for block in scale_blocks(model_config.get("scale", "paper"), "model.scale"):
            sampling.update((model_config.get(block) or {}).get("sampling") or {})
        index = {
            "format": INDEX_FORMAT,
            "system": system,
            "class": SYSTEMS[system]["class"],
            "pipeline": SYSTEMS[system]["pipeline"],
            "task": SYSTEMS[system]["task"],
            "paper": SYSTEMS[system]["paper"],
            "config": CONFIG_FILE,
            "scale": model_config.get("scale"),
            "clip": model_config.get("clip"),
            "sampling": sampling,
            "components": components,
            "ema": ema_used,
            "global_step": ckpt.get("global_step"),
            "source_checkpoint": str(ckpt_path.resolve()),
            "versions": versions,
        }
        runs_dir = ((run_config.get("paths") or {}).get("runs_dir")) if runs_dir is None else runs_dir
        metrics, metric_sources = card_metrics(ckpt_path, evaluations, runs_dir)
        write_bytes_atomic(tmp / CONFIG_FILE, json.dumps(model_config, indent=1, default=str).encode())
        write_bytes_atomic(tmp / INDEX_FILE, json.dumps(index, indent=1, default=str).encode())
        write_bytes_atomic(tmp / "README.md", model_card(index, run_config, metrics, metric_sources).encode())
        if out.exists():
            trash = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------- model card
def _hydra_value(run: Path, key: str) -> Any:
    """Top-level ``key`` of a run folder's ``.hydra/config.yaml`` (None when unreadable)."""
    import yaml

    try:
        return (yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}).get(key)
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None


def _same_file(a: Any, b: Path, base: Path) -> bool:
    if not a or not isinstance(a, str) or "${" in a:
        return False
    path = Path(a) if Path(a).is_absolute() else base / a
    try:
        return path.resolve() == b.resolve()
    except OSError:
        return False


def linked_evaluations(ckpt_path: str | os.PathLike, runs_dir: str | os.PathLike | None, *, max_files: int = 5000
                       ) -> list[Path]:
    """The ``metrics.json`` of ``evaluate`` runs under ``runs_dir`` that scored samples of ``ckpt_path``: the
    evaluation's ``pred_dir`` is the ``samples/`` folder of a ``sample`` run whose ``ckpt_path`` is this checkpoint
    (relative paths taken from the current folder, where the commands are usually run). At most ``max_files``
    ``metrics.json`` are looked at; oldest first."""
    if not runs_dir or not Path(runs_dir).is_dir():
        return []
    ckpt = Path(ckpt_path)
    base = Path.cwd()
    found = []
    for count, metrics in enumerate(Path(runs_dir).rglob("metrics.json")):
        if count >= max_files:
            break
        try:
            pred_dir = json.loads(metrics.read_text()).get("pred_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(pred_dir, str):
            continue
        pred = Path(pred_dir) if Path(pred_dir).is_absolute() else base / pred_dir
        if _same_file(_hydra_value(pred.parent, "ckpt_path"), ckpt, base):
            found.append(metrics)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def card_metrics(ckpt_path: Path, evaluations: Sequence[str | os.PathLike], runs_dir: str | os.PathLike | None = None
                 ) -> tuple[dict[str, float | None], list[str]]:
    """The metrics the model card reports: the run's last and best validation values (``logs/metrics.csv`` of the
    run folder holding ``checkpoints/``), then every ``metrics.json`` below the run folder, of the evaluations of
    this checkpoint's samples under ``runs_dir`` (:func:`linked_evaluations`) and in ``evaluations`` (newest value
    per metric, as ``python -m avgen collect`` reads them). Returns the metrics and where they were read.

    Raises:
        ConfigError: an ``evaluations`` entry that does not exist (naming ``export.evaluations``).
    """
    from avgen.collect import flatten, read_evaluations, read_validation

    found: dict[str, float | None] = {}
    where: list[str] = []
    notes: list[str] = []
    run = ckpt_path.resolve().parent.parent if ckpt_path.resolve().parent.name == "checkpoints" else None
    if run is not None:
        validation, _ = read_validation(run / "logs" / "metrics.csv", notes)
        if validation:
            found.update(validation)
            where.append(str(run / "logs" / "metrics.csv"))
        evaluated, count = read_evaluations(run, notes)
        if count:
            found.update(evaluated)
            where.append(f"{count} metrics.json below {run}")
    for metrics_file in linked_evaluations(ckpt_path, runs_dir):
        evaluated, count = read_evaluations(metrics_file.parent, notes)
        if count:
            found.update(evaluated)
            where.append(f"{metrics_file} (samples of this checkpoint)")
    for entry in evaluations:
        path = Path(entry)
        if not path.exists():
            raise ConfigError(f"export.evaluations: {path} does not exist; give metrics.json files or folders of "
                              f"python -m avgen evaluate")
        if path.is_file():  # this file only, not every metrics.json beside and below it
            try:
                metrics = json.loads(path.read_text())["metrics"]
                if not isinstance(metrics, dict):
                    raise TypeError("'metrics' is not a mapping")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"export.evaluations: {path} is not a metrics.json of python -m avgen evaluate "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
            evaluated = flatten(metrics)
        else:
            evaluated, count = read_evaluations(path, notes)
            if not count:
                raise ConfigError(f"export.evaluations: {path} holds no readable metrics.json; give the folder or "
                                  f"the metrics.json of a python -m avgen evaluate run")
        found.update(evaluated)
        where.append(str(path.resolve()))
    return found, where + notes


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(index: Mapping[str, Any], run_config: Mapping[str, Any], metrics: Mapping[str, float | None],
               metric_sources: Sequence[str]) -> str:
    """The export's ``README.md``: Hugging Face model-card front matter (library, tags, pipeline tag), then the
    system, paper, data, training, metrics, intended use, limitations and how to load it."""
    system = index["system"]
    data = run_config.get("data") or {}
    trainer = run_config.get("trainer") or {}
    clip = index.get("clip") or {}
    dataset = data.get("name") or str(data.get("_target_", "")).rpartition(".")[2] or "unknown"
    root = data.get("root")
    tiny = index.get("scale") == "tiny"
    task_tag = {"text-to-audio-video": "text-to-video", "audio-to-video": "audio-to-video",
                "video-to-audio": "video-to-audio"}[index["task"]]
    lines = ["---", "library_name: avgen", f"pipeline_tag: {task_tag}", "tags:", "- avgen", f"- {system}",
             f"- {index['task']}", "---", "", f"# avgen {system} ({index['task']})", ""]
    if tiny:
        lines += ["> **scale=tiny**: the frozen parts are tiny random twins built in code. This export exercises the "
                  "code paths; its samples are not meaningful.", ""]
    elif index.get("scale") == "mini":
        lines += ["> **scale=mini**: the frozen parts are avgen's mini twins (tiny sizes; codecs trained on the "
                  "synthetic data, `avgen/backbones/mini_weights`). A CPU-scale model of the synthetic scenes only.",
                  ""]
    lines += [f"- **System**: `{index['class']}` ({index['task']}), pipeline `avgen.pipelines.{index['pipeline']}`",
              f"- **Paper**: {index['paper']}",
              f"- **Data**: {dataset}{f' (`{root}`)' if root else ''}; clips of {clip.get('seconds')} s, "
              f"{clip.get('fps')} fps, {clip.get('height')}×{clip.get('width')}, {clip.get('sample_rate')} Hz",
              f"- **Training**: {index.get('global_step')} optimizer steps (trainer.max_steps="
              f"{trainer.get('max_steps')}), batch size {data.get('batch_size')} per process, "
              f"{'EMA weights' if index.get('ema') else 'raw (non-EMA) weights'}",
              f"- **Source checkpoint**: `{index.get('source_checkpoint')}`", ""]
    lines += ["## Components", "", "| component | kind | source / file | parameters |", "|---|---|---|---|"]
    for name, comp in index["components"].items():
        if comp["type"] == "trained":
            lines.append(f"| {name} | trained | `{comp['file']}` | {comp['parameters']:,} |")
        else:
            lines.append(f"| {name} | frozen ({comp['kind']}) | `{comp['source']}` (model.{comp['config_key']}) | |")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_number(value)} |" for key, value in sorted(metrics.items())]
        lines += ["", "Read from: " + "; ".join(metric_sources)]
    else:
        lines.append("No validation log or evaluation was found for this checkpoint (pass export.evaluations=[...] "
                     "with the metrics.json of python -m avgen evaluate).")
    sampling = ", ".join(f"{k}={v}" for k, v in (index.get("sampling") or {}).items())
    call = {"joint": 'out = pipe(prompt="a red ball bounces on a wooden floor", seed=0)\n'
                     'out = pipe(video="clip.mp4", seed=0)   # or the audio for a video (the replacement method)',
            "tempotokens": 'out = pipe(audio="hit.wav", seed=0)',
            "vta_ldm": 'out = pipe(video="clip.mp4", seed=0)'}[system]
    lines += ["", "## Use", "", "```python", "import avgen", "", 'pipe = avgen.from_pretrained("<this folder>")',
              call, 'out.save("generated")   # sounding mp4s', "```", "",
              f"Sampling defaults: {sampling}.", "",
              "Demo page: `python -m avgen app app.export_dir=<this folder>`.", "",
              "## Intended use and limitations", "",
              "Research on audio-visual generation: reproducing and extending the paper above, and comparing "
              "methods on the same data. The model reflects its training data and the frozen pretrained parts it "
              "builds on (their licences apply); it is not meant for deceptive media, and its outputs should be "
              "labelled as generated.", "",
              "## Versions", "", "```json", json.dumps(index.get("versions"), indent=1), "```", ""]
    return "\n".join(lines)


__all__ = ["FROZEN_DIR", "card_metrics", "component_of", "export_pipeline", "foreign_entries", "frozen_sources",
           "model_card", "split_components"]
