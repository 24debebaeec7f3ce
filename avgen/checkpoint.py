"""avgen checkpoints: atomic writes, trainable-only contents, loading and export.

An avgen checkpoint is a Lightning checkpoint whose ``state_dict`` holds only the trainable
weights, plus an ``"avgen"`` entry::

    {"format": "avgen-ckpt/1", "config": <resolved run config>, "versions": {...},
     "trainable": [parameter names], "ema": {name: tensor} | None}

Frozen parts are rebuilt from ``config`` when the checkpoint is loaded, so checkpoints stay the
size of what was trained. ``export`` turns a checkpoint into a pipeline folder (``avgen/export.py``).
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import re
import signal
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from avgen.errors import CheckpointError
from avgen.media.files import atomic_write

FORMAT = "avgen-ckpt/1"
LAST = "last.ckpt"
# a checkpoint being written: ``.<name>.tmp-<pid>`` beside its target
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
# test-only: ``<file name>`` or ``<file name>@<global step>``; the process kills itself with SIGKILL right after
# writing that checkpoint's temporary file, before the rename (a crash while saving, made deterministic)
KILL_AFTER_TEMPORARY_ENV = "AVGEN_TEST_SIGKILL_AFTER_TEMPORARY"

log = logging.getLogger("avgen")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to ``.<name>.tmp-<pid>`` in the same folder, fsyncs, then renames over the target.

    A crash (or a SLURM pre-emption, or SIGKILL) during a save leaves the previous checkpoint intact
    and at most a temporary file, which :func:`remove_stale_temporaries` deletes when the run restarts.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        if get_filesystem(str(path)).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        hook = partial(_test_kill_hook, path.name, checkpoint.get("global_step"))
        with atomic_write(path, "wb", overwrite=True, before_replace=hook) as f:
            torch.save(checkpoint, f)


def _test_kill_hook(name: str, step: int | None) -> None:
    target = os.environ.get(KILL_AFTER_TEMPORARY_ENV)
    if target and target in (name, f"{name}@{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary checkpoint files (``.<name>.tmp-<pid>``) in ``folder`` left by processes that no
    longer run on this machine (killed while saving); returns the files removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class _Opaque:
    """What :class:`_StepReader` makes of every object of a checkpoint's pickle but plain containers: nothing runs."""

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _StepReader(pickle.Unpickler):
    """Unpickles a torch checkpoint's ``data.pkl`` with no tensor storage read and no class resolved: every global is
    :class:`_Opaque` (``OrderedDict`` excepted), every persistent id (a tensor's storage) None. Safe on any file (no
    code from it runs) and fast (the C unpickler; torch's ``weights_only`` unpickler is pure Python)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return _Opaque

    def persistent_load(self, pid: Any) -> None:
        return None


def _read_pickle(path: str | Path) -> Any:
    """A checkpoint's ``data.pkl`` through :class:`_StepReader` (no tensor built, no code run).

    Raises:
        ValueError: the file is not a complete, readable checkpoint (e.g. truncated: no zip directory).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise ValueError(f"{len(pickles)} data.pkl records")
            with archive.open(pickles[0]) as f:
                return _StepReader(f).load()
    except Exception as exc:
        raise ValueError(f"{path}: not a complete checkpoint ({type(exc).__name__}: {exc})") from exc


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a checkpoint, read from its pickle alone (:class:`_StepReader`): no tensor is
    built, so a folder of large checkpoints is scanned in milliseconds per file (``torch.load``, even memory-mapped,
    rebuilds every tensor object: about a second per file for a U-Net with its optimiser state).

    Raises:
        ValueError: the file is not a complete, readable checkpoint (e.g. truncated: no zip directory).
    """
    try:
        return int(_read_pickle(path)["global_step"])
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a complete checkpoint ({type(exc).__name__}: {exc})") from exc


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of plain containers and scalars only (nothing :class:`_StepReader` left opaque)."""
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, bytes, bool, int, float, complex))


def checkpoint_entry(path: str | Path, key: str) -> Any:
    """The top-level entry ``key`` of a checkpoint (None when absent), e.g. Lightning's ``hyper_parameters``, read
    from its pickle alone when the entry is plain containers and scalars (milliseconds, whatever the weights' size);
    otherwise (tensors, classes) by ``torch.load(weights_only=True, mmap=True)``.

    Raises:
        ValueError: the file is not a complete, readable checkpoint.
    """
    ckpt = _read_pickle(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint (its pickle holds a {type(ckpt).__name__}, not a dict)")
    value = ckpt.get(key)
    if _plain(value):
        return value
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(key)


def newest_checkpoint(folder: str | Path) -> tuple[Path, int] | None:
    """The complete checkpoint of ``folder`` with the highest global step, and that step: ``last.ckpt`` or a
    newer ``*.ckpt`` (step checkpoints, or one a SLURM pre-timeout handler wrote); ``last.ckpt`` wins a tie.
    Unreadable files are skipped with a warning. ``None`` when the folder holds no checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.glob("*.ckpt") if p.is_file() and not p.name.startswith("."))
    files.sort(key=lambda p: p.name != LAST)  # last.ckpt first, so that it keeps a tie
    best: tuple[Path, int] | None = None
    for path in files:
        try:
            step = checkpoint_step(path)
        except ValueError as exc:
            log.warning("skipped for resuming: %s", exc)
            continue
        if best is None or step > best[1]:
            best = (path, step)
    return best


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an avgen checkpoint on the CPU and check it is one.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ValueError) not a checkpoint written by ``fit`` (not a torch file, truncated, objects the
            safe loader refuses, or no ``avgen`` entry), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (ckpt_path / init_from)")
    # Checkpoints hold the config and library versions (plain containers), so the safe loader suffices.
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, unsafe: torch raises many types (UnpicklingError, KeyError)
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path} is not an avgen checkpoint: torch.load(weights_only=True) cannot read it "
                         f"({type(exc).__name__}: {reason})") from exc
    meta = ckpt.get("avgen") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an avgen checkpoint (no 'avgen' entry of format {FORMAT}); "
                         f"it was not written by `python -m avgen fit`")
    return ckpt


def requeued() -> bool:
    """Whether this process belongs to a SLURM job that was requeued (``SLURM_RESTART_COUNT`` ≥ 1)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    except ValueError:
        return False


def global_rank_zero() -> bool:
    """Whether this process is the run's first: every rank variable a launcher sets (``RANK``, ``LOCAL_RANK``,
    ``NODE_RANK``: torchrun and Lightning; ``SLURM_PROCID``: ``srun``, one task per GPU) is unset or 0."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        try:
            if int(os.environ.get(name, "0") or 0) != 0:
                return False
        except ValueError:
            continue
    return True


def set_checkpoints_aside(folder: Path) -> Path | None:
    """Move the ``*.ckpt`` files of ``folder`` into a new ``folder/superseded-<UTC time>/`` (``-2``, ``-3``… when that
    exists); returns it, or None when there was nothing to move. Nothing is deleted: the abandoned run can still be
    resumed with ``resume=<path>``. Only the run's first process does it (:func:`global_rank_zero`); a file another
    process moved meanwhile is skipped."""
    import time

    if not folder.is_dir() or not global_rank_zero():
        return None
    files = sorted(p for p in folder.glob("*.ckpt") if p.is_file() and not p.name.startswith("."))
    if not files:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while True:
        target = folder / (f"superseded-{stamp}" if n == 1 else f"superseded-{stamp}-{n}")
        try:
            target.mkdir()
            break
        except FileExistsError:
            n += 1
    for path in files:
        try:
            path.rename(target / path.name)
        except FileNotFoundError:
            continue
    return target


def refresh_last(folder: str | Path, step: int) -> Path | None:
    """Make ``folder/last.ckpt`` hold ``step`` when a complete step checkpoint of that step is the folder's newest
    and ``last.ckpt`` is older, missing or unreadable: a fit resumed from such a checkpoint (a process killed after
    ``step_N.ckpt`` was written, before ``last.ckpt`` was) with ``max_steps`` already reached trains nothing, and
    Lightning then calls no ``on_train_end`` (:class:`avgen.callbacks.FinalCheckpoint`), so ``validate``,
    ``sample`` or ``export`` of ``last.ckpt`` would read the older weights. The newest checkpoint is copied through a
    ``.last.ckpt.tmp-<pid>`` file and renamed into place. Returns ``last.ckpt`` when it was replaced, else None. Call
    it on one process (rank 0)."""
    import shutil

    folder = Path(folder)
    last = folder / LAST
    try:
        if checkpoint_step(last) >= step:
            return None
    except ValueError:  # missing or unreadable
        pass
    newest = newest_checkpoint(folder)
    if newest is None or newest[1] != step or newest[0] == last:
        return None
    temporary = folder / f".{LAST}.tmp-{os.getpid()}"
    shutil.copyfile(newest[0], temporary)
    os.replace(temporary, last)
    return last
