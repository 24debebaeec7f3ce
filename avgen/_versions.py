"""Library versions: the torch/torchaudio pair check and the version record stored in checkpoints."""

from __future__ import annotations

import importlib.metadata
import sys

TESTED_TORCH = "2.11.0"
FIX_COMMAND = f"pip install 'torch=={TESTED_TORCH}' 'torchaudio=={TESTED_TORCH}'  (or: make setup)"

# Versions recorded with every checkpoint and metrics file.
RECORDED_PACKAGES = (
    "avgen", "torch", "torchaudio", "lightning", "diffusers", "transformers",
    "torchmetrics", "webdataset", "av", "numpy", "hydra-core", "omegaconf",
)


def _release(version: str) -> tuple[int, ...]:
    """'2.11.0+cu130' -> (2, 11): the part that must agree for the ABI to match."""
    core = version.split("+")[0]
    return tuple(int(p) for p in core.split(".")[:2] if p.isdigit())


def check_torch_pair(torch_version: str | None = None, torchaudio_version: str | None = None) -> None:
    """Stop with a clear message when torch and torchaudio are not a matched pair.

    torchaudio's compiled extension is built against one torch minor release; a mismatch fails
    late and cryptically (missing symbols, ``libc10_cuda.so`` not found), so avgen checks the
    installed distributions' metadata at import, before either package is imported.
    """
    try:
        tv = torch_version or importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"avgen needs torch, which is not installed. Fix: {FIX_COMMAND}") from None
    try:
        av = torchaudio_version or importlib.metadata.version("torchaudio")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"avgen needs torchaudio matching torch {tv}, and torchaudio is not installed. Fix: {FIX_COMMAND}"
        ) from None
    if _release(tv) != _release(av):
        raise SystemExit(
            f"torch and torchaudio do not match: torch {tv} is installed with torchaudio {av}. "
            f"torchaudio's compiled extension only loads with the torch release it was built for. "
            f"Fix: {FIX_COMMAND}"
        )


def library_versions() -> dict[str, str]:
    """Installed versions of the packages that decide numerical behaviour, plus Python."""
    out = {"python": sys.version.split()[0]}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
