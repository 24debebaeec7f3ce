"""avgen checkpoints: atomic writes, trainable-only contents, loading and export.

An avgen checkpoint is a Lightning checkpoint whose ``state_dict`` holds only the trainable
weights, plus an ``"avgen"`` entry::

    {"format": "avgen-ckpt/1", "config": <resolved run config>, "versions": {...},
     "trainable": [parameter names], "ema": {name: tensor} | None}

Frozen parts are rebuilt from ``config`` when the checkpoint is loaded, so checkpoints stay the
size of what was trained. ``export`` strips a checkpoint to ``model.safetensors`` (EMA weights
swapped in when present), ``config.yaml`` and ``versions.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

FORMAT = "avgen-ckpt/1"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to ``<name>.tmp-<pid>`` in the same folder, fsyncs, then renames over the target.

    A crash (or a SLURM pre-emption) during a save leaves the previous checkpoint intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        if get_filesystem(str(path)).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an avgen checkpoint on the CPU and check it is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (ckpt_path / init_from)")
    # Checkpoints hold the config and library versions (plain containers), so the safe loader suffices.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt.get("avgen")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an avgen checkpoint (no 'avgen' entry of format {FORMAT}); "
                         f"it was not written by `python -m avgen fit`")
    return ckpt


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, *, use_ema: bool = True,
                      overwrite: bool = False) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` + ``versions.json`` for one checkpoint."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    ckpt = read_checkpoint(ckpt_path)
    out = Path(out_dir)
    targets = [out / n for n in ("model.safetensors", "config.yaml", "versions.json")]
    if any(t.exists() for t in targets) and not overwrite:
        raise FileExistsError(f"{out} already holds an export; pass export.overwrite=true or another export.dir")
    out.mkdir(parents=True, exist_ok=True)
    meta = ckpt["avgen"]
    weights = dict(ckpt["state_dict"])
    ema_used = bool(use_ema and meta.get("ema"))
    if ema_used:
        weights.update(meta["ema"])
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"format": FORMAT, "ema": str(ema_used), "source": str(ckpt_path)})
    os.replace(tmp, out / "model.safetensors")
    OmegaConf.save(OmegaConf.create(meta["config"]), out / "config.yaml")
    info = {"versions": meta["versions"], "ema": ema_used, "source": str(Path(ckpt_path).absolute()),
            "global_step": ckpt.get("global_step"), "parameters": int(sum(v.numel() for v in weights.values()))}
    (out / "versions.json").write_text(json.dumps(info, indent=2))
    return out


def load_weights_file(path: str | os.PathLike | None, config_key: str, missing: type[Exception],
                      unreadable: type[Exception], conversion: str) -> Any:
    """A pretrained encoder's weight file read with ``torch.load(weights_only=True)`` (no code runs).

    ``missing(path, config_key)`` is raised when there is no file; ``unreadable`` (with the reason and
    ``conversion``, how to convert a trusted file once) when the safe loader refuses it.
    """
    if path is None or not Path(path).is_file():
        raise missing(path, config_key)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise unreadable(f"{path} (config key {config_key}) cannot be read with torch.load(weights_only=True) "
                         f"({type(exc).__name__}: {exc}). {conversion}") from exc
