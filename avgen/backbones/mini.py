"""The mini twins: the tiny twins' layouts with the parts avgen has trained on the synthetic data (``scale=mini``).

``scale=tiny`` builds every backbone with random weights: its frame VAE decodes colour noise and its vocoder
near-silence. ``scale=mini`` keeps the tiny twins' folders (classes, block layout, tokenizers, schedulers) and
swaps in the parts trained by ``python -m avgen pretrain-twins`` (:mod:`avgen.pretraining`), whose weights are
committed under ``avgen/backbones/mini_weights/`` with a ``manifest.json`` (recipe commit, config, data seed,
SHA-256 of every file, measured quality). Part 1 (the codecs): ``frames_vae`` (an ``AutoencoderKL``, RGB 32×32 →
4×8×8 latents), ``mel_vae`` (an ``AutoencoderKL``, log-mel (T, 64) → 8×T/4×16) and ``vocoder`` (a
``SpeechT5HifiGan``, 64 mel bins at hop 160 → 16 kHz).

A source ``mini:<name>`` (:data:`MINI_TWINS`) resolves like ``tiny:<name>``: :func:`materialize` writes the tiny
twin, replaces the subfolders the mini twin trains with copies of the committed weights (each file checked
against the manifest's SHA-256 first), and returns the folder, which the systems then load with the same
``from_pretrained`` calls as a downloaded model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from avgen.errors import ConfigError
from avgen.pretrained import sha256_file

MINI_PREFIX = "mini:"
#: the committed weights (a folder per trained component, and manifest.json); ``$AVGEN_MINI_WEIGHTS`` replaces it
#: (a ``<run>/twins`` folder of one's own recipe run, without touching the installed package)
WEIGHTS_DIR = Path(__file__).resolve().parent / "mini_weights"
WEIGHTS_ENV = "AVGEN_MINI_WEIGHTS"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "avgen-mini-twins/1"

#: ``mini:<name>`` → (the tiny twin it starts from, {subfolder of the twin: trained component in WEIGHTS_DIR})
MINI_TWINS: dict[str, tuple[str, dict[str, str]]] = {
    "animatediff": ("animatediff", {"vae": "frames_vae"}),
    "zeroscope": ("zeroscope", {"vae": "frames_vae"}),
    "audioldm": ("audioldm", {"vae": "mel_vae", "vocoder": "vocoder"}),
}


class MiniWeightsError(ConfigError):
    """The committed mini-twin weights are missing, or a file's bytes disagree with the manifest."""


def active_weights_dir() -> Path:
    """The mini twins' weights in use: ``$AVGEN_MINI_WEIGHTS`` when set, else :data:`WEIGHTS_DIR` (committed)."""
    return Path(os.environ.get(WEIGHTS_ENV) or WEIGHTS_DIR)


def read_manifest(weights_dir: str | os.PathLike = WEIGHTS_DIR) -> dict[str, Any]:
    """The manifest of the committed mini twins (``<weights_dir>/manifest.json``).

    Raises:
        MiniWeightsError: no manifest, or not one of this format.
    """
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        if os.environ.get(WEIGHTS_ENV) and Path(os.environ[WEIGHTS_ENV]) == Path(weights_dir):
            raise MiniWeightsError(f"{WEIGHTS_ENV}={weights_dir}: no mini twins there ({path} is missing); point it at "
                                   f"a folder written by `python -m avgen pretrain-twins` (<run>/twins) or unset it "
                                   f"to use the committed ones")
        raise MiniWeightsError(f"{path}: the mini twins' manifest is missing; scale=mini needs the weights written by "
                               f"`python -m avgen pretrain-twins part=codecs` (committed with avgen); reinstall avgen "
                               f"or run the recipe and publish it (pretrain_twins.publish_dir={weights_dir})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MiniWeightsError(f"{path}: cannot be read as JSON ({exc})") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise MiniWeightsError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def verify_component(name: str, weights_dir: str | os.PathLike = WEIGHTS_DIR,
                     manifest: dict[str, Any] | None = None) -> Path:
    """The folder of trained component ``name``, every file of it checked against the manifest's SHA-256.

    Raises:
        MiniWeightsError: the component is not in the manifest, a file is missing, or its hash differs.
    """
    manifest = read_manifest(weights_dir) if manifest is None else manifest
    entry = (manifest.get("components") or {}).get(name)
    folder = Path(weights_dir) / name
    if entry is None:
        raise MiniWeightsError(f"{Path(weights_dir) / MANIFEST} lists no component {name!r} (it has "
                               f"{', '.join(manifest.get('components') or {}) or 'none'}); run "
                               f"`python -m avgen pretrain-twins part={manifest.get('part', 'codecs')}`")
    for file, digest in entry["files"].items():
        path = folder / file
        if not path.is_file():
            raise MiniWeightsError(f"{path}: missing (the mini twin {name} lists it in {MANIFEST})")
        if sha256_file(path) != digest:
            fix = (f"restore it (git checkout -- {path})" if Path(weights_dir).resolve() == WEIGHTS_DIR.resolve()
                   else "restore the folder as the recipe wrote it")
            raise MiniWeightsError(f"{path}: its SHA-256 differs from {MANIFEST}'s; the file was changed or is a "
                                   f"Git LFS pointer: {fix}, or run the recipe again")
    return folder


def version_tag(weights_dir: str | os.PathLike = WEIGHTS_DIR) -> str:
    """A short tag of the committed weights (the manifest's hash), naming the materialised folders, so a folder
    built from older weights is never reused."""
    return sha256_file(Path(weights_dir) / MANIFEST)[:12]


def materialize(name: str, root: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """``<root>/mini-<name>-v<TINY_VERSION>-<tag>``: the tiny twin of ``MINI_TWINS[name]`` with its trained
    subfolders replaced by the weights of ``weights_dir`` (default :func:`active_weights_dir`: the committed ones),
    written once (into a temporary folder renamed into place) and reused after; ``tag`` is the manifest's hash, so
    new weights get a new folder, and the tiny twins' version is in the name as in theirs.

    Raises:
        ConfigError: ``name`` has no mini twin.
        MiniWeightsError: the committed weights are missing or altered (:func:`verify_component`).
    """
    from avgen.backbones import tiny

    if name not in MINI_TWINS:
        raise ConfigError(f"unknown mini twin {name!r}; expected one of "
                          f"{', '.join(MINI_PREFIX + n for n in MINI_TWINS)}")
    base, replaced = MINI_TWINS[name]
    weights_dir = active_weights_dir() if weights_dir is None else Path(weights_dir)
    manifest = read_manifest(weights_dir)
    sources = {sub: verify_component(component, weights_dir, manifest) for sub, component in replaced.items()}

    def build(folder: Path) -> None:
        tiny.TINY_BUILDERS[base](folder)
        for sub, source in sources.items():
            shutil.rmtree(folder / sub, ignore_errors=True)
            shutil.copytree(source, folder / sub)

    return tiny.build_folder(Path(root) / f"mini-{name}-v{tiny.TINY_VERSION}-{version_tag(weights_dir)}", build)
