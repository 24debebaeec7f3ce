"""The mini twins: the tiny twins' layouts with the parts avgen has trained on the synthetic data (``scale=mini``).

``scale=tiny`` builds every backbone with random weights: its frame VAE decodes colour noise, its vocoder
near-silence and its U-Nets noise. ``scale=mini`` keeps the tiny twins' folders (classes, block layout,
tokenizers, schedulers, text towers) and swaps in the parts trained by ``python -m avgen pretrain-twins``
(:mod:`avgen.pretraining`), committed in one folder per part, each with a ``manifest.json`` (recipe commit,
config, data seed, SHA-256 of every file, measured quality):

* part 1, the codecs (``avgen/backbones/mini_weights/``): ``frames_vae`` (an ``AutoencoderKL``, RGB 32×32 →
  4×8×8 latents), ``mel_vae`` (an ``AutoencoderKL``, log-mel (T, 64) → 8×T/4×16) and ``vocoder`` (a
  ``SpeechT5HifiGan``, 64 mel bins at hop 160 → 16 kHz);
* part 2, the base generators (``avgen/backbones/mini_generators/``), trained in those codecs' latent spaces (the
  manifest records the codecs' tag, and a mismatch is refused): ``audioldm_unet``, ``animatediff_image`` (SD1.5's
  U-Net layout), ``animatediff_motion`` (a ``MotionAdapter``) and ``zeroscope_unet`` (a ``UNet3DConditionModel``).

A source ``mini:<name>`` (:data:`MINI_TWINS`) resolves like ``tiny:<name>``: :func:`materialize` writes the tiny
twin, replaces the subfolders the mini twin trains with copies of the committed weights (each file checked
against its manifest's SHA-256 first), and returns the folder, which the systems then load with the same
``from_pretrained`` calls as a downloaded model. ``$AVGEN_MINI_WEIGHTS`` / ``$AVGEN_MINI_GENERATORS`` point a part
at another folder (a ``<run>/twins`` of one's own recipe run).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from avgen.errors import ConfigError
from avgen.pretrained import sha256_file

MINI_PREFIX = "mini:"
#: the committed codecs (part 1: a folder per trained component, and manifest.json); ``$AVGEN_MINI_WEIGHTS``
#: replaces it (a ``<run>/twins`` folder of one's own recipe run, without touching the installed package)
WEIGHTS_DIR = Path(__file__).resolve().parent / "mini_weights"
WEIGHTS_ENV = "AVGEN_MINI_WEIGHTS"
#: the committed base generators (part 2), trained in the codecs' latent spaces; ``$AVGEN_MINI_GENERATORS`` replaces it
GENERATORS_DIR = Path(__file__).resolve().parent / "mini_generators"
GENERATORS_ENV = "AVGEN_MINI_GENERATORS"
PART_DIRS = {"codecs": WEIGHTS_DIR, "generators": GENERATORS_DIR}
PART_ENV = {"codecs": WEIGHTS_ENV, "generators": GENERATORS_ENV}
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "avgen-mini-twins/1"

#: ``mini:<name>`` → (the tiny twin it starts from, {subfolder of the twin: (part, trained component)})
MINI_TWINS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "animatediff": ("animatediff", {"vae": ("codecs", "frames_vae"), "unet": ("generators", "animatediff_image"),
                                    "motion_adapter": ("generators", "animatediff_motion")}),
    "zeroscope": ("zeroscope", {"vae": ("codecs", "frames_vae"), "unet": ("generators", "zeroscope_unet")}),
    "audioldm": ("audioldm", {"vae": ("codecs", "mel_vae"), "vocoder": ("codecs", "vocoder"),
                              "unet": ("generators", "audioldm_unet"),
                              "scheduler": ("generators", "audioldm_scheduler")}),
}


class MiniWeightsError(ConfigError):
    """The committed mini-twin weights are missing, or a file's bytes disagree with the manifest."""


def active_weights_dir(part: str = "codecs") -> Path:
    """The folder of ``part``'s weights in use: ``$AVGEN_MINI_WEIGHTS`` (codecs) / ``$AVGEN_MINI_GENERATORS``
    (generators) when set, else the committed :data:`WEIGHTS_DIR` / :data:`GENERATORS_DIR`."""
    return Path(os.environ.get(PART_ENV[part]) or PART_DIRS[part])


def read_manifest(weights_dir: str | os.PathLike = WEIGHTS_DIR) -> dict[str, Any]:
    """The manifest of the committed mini twins (``<weights_dir>/manifest.json``).

    Raises:
        MiniWeightsError: no manifest, or not one of this format.
    """
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        for part, env in PART_ENV.items():
            if os.environ.get(env) and Path(os.environ[env]) == Path(weights_dir):
                raise MiniWeightsError(f"{env}={weights_dir}: no mini twins there ({path} is missing); point it at a "
                                       f"folder written by `python -m avgen pretrain-twins part={part}` (<run>/twins) "
                                       f"or unset it to use the committed ones")
        part = next((p for p, d in PART_DIRS.items() if Path(weights_dir).resolve() == d.resolve()), "codecs")
        raise MiniWeightsError(f"{path}: the mini twins' manifest is missing; scale=mini needs the weights written by "
                               f"`python -m avgen pretrain-twins part={part}` (committed with avgen); reinstall avgen "
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
            committed = any(Path(weights_dir).resolve() == d.resolve() for d in PART_DIRS.values())
            fix = f"restore it (git checkout -- {path})" if committed else "restore the folder as the recipe wrote it"
            raise MiniWeightsError(f"{path}: its SHA-256 differs from {MANIFEST}'s; the file was changed or is a "
                                   f"Git LFS pointer: {fix}, or run the recipe again")
    return folder


def version_tag(weights_dir: str | os.PathLike = WEIGHTS_DIR) -> str:
    """A short tag of the committed weights (the manifest's hash), naming the materialised folders, so a folder
    built from older weights is never reused."""
    return sha256_file(Path(weights_dir) / MANIFEST)[:12]


def twin_parts(name: str, weights_dirs: dict[str, Path] | None = None) -> dict[str, Path]:
    """The parts mini twin ``name`` takes trained components from → their folders (``weights_dirs`` overrides
    :func:`active_weights_dir` per part).

    Raises:
        ConfigError: ``name`` has no mini twin.
    """
    if name not in MINI_TWINS:
        raise ConfigError(f"unknown mini twin {name!r}; expected one of "
                          f"{', '.join(MINI_PREFIX + n for n in MINI_TWINS)}")
    parts = sorted({part for part, _ in MINI_TWINS[name][1].values()}, key=list(PART_DIRS).index)
    return {part: Path((weights_dirs or {}).get(part) or active_weights_dir(part)) for part in parts}


def twin_tag(name: str, weights_dirs: dict[str, Path] | None = None) -> str:
    """The tag of the weights mini twin ``name`` is built from: :func:`version_tag` of its one part's folder, or a
    hash of the parts' tags (codecs, then generators) when it takes from both."""
    import hashlib

    tags = [version_tag(folder) for folder in twin_parts(name, weights_dirs).values()]
    return tags[0] if len(tags) == 1 else hashlib.sha256("+".join(tags).encode()).hexdigest()[:12]


#: the codecs whose encoders define the generators' latent spaces
LATENT_CODECS = ("frames_vae", "mel_vae")
#: the ``AutoencoderKL`` config keys that shape what its encoder computes (``scaling_factor`` scales the latents)
ENCODER_CONFIG = ("in_channels", "latent_channels", "down_block_types", "block_out_channels", "layers_per_block",
                  "norm_num_groups", "act_fn", "mid_block_add_attention", "scaling_factor")


#: each generators component → the codec whose latent space it was trained in (the ``vae`` of the mini twin that
#: takes it): video generators the frames VAE, audio ones the mel VAE
LATENT_CODEC_OF: dict[str, str] = {component: replaced["vae"][1] for _, replaced in MINI_TWINS.values()
                                   for part, component in replaced.values() if part == "generators"}


def latent_space_tag(codecs_dir: str | os.PathLike = WEIGHTS_DIR, codecs: Sequence[str] = LATENT_CODECS) -> str:
    """A short tag of the latent spaces a codecs folder defines: SHA-256 over, for each VAE in ``codecs`` (default
    ``frames_vae`` and ``mel_vae``; one of them: that modality's latent space alone, :func:`latent_space_tags`), the
    encoder's config (:data:`ENCODER_CONFIG`) and the bytes, dtypes and shapes of its ``encoder.*`` and
    ``quant_conv.*`` tensors, in name order. Codecs that differ only in their decoders or vocoder (a decoder
    fine-tuned with the encoder frozen, ``pretrain_twins.stages=[mel_vae_decoder, vocoder_finetune]``) share it,
    and so serve the same generators.

    Raises:
        MiniWeightsError: a VAE's files are missing.
    """
    import hashlib

    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    for name in codecs:
        folder = Path(codecs_dir) / name
        weights = sorted(folder.glob("*.safetensors"))
        if not (folder / "config.json").is_file() or not weights:
            raise MiniWeightsError(f"{folder}: no VAE there (config.json and a .safetensors file); the codecs folder "
                                   f"{codecs_dir} is incomplete")
        config = json.loads((folder / "config.json").read_text())
        digest.update(json.dumps([name, {k: config.get(k) for k in ENCODER_CONFIG}], sort_keys=True).encode())
        for path in weights:
            with safe_open(str(path), framework="pt") as tensors:
                for key in sorted(k for k in tensors.keys() if k.startswith(("encoder.", "quant_conv."))):
                    tensor = tensors.get_tensor(key).contiguous()
                    digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                    digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def latent_space_tags(codecs_dir: str | os.PathLike = WEIGHTS_DIR) -> dict[str, str]:
    """Each VAE of :data:`LATENT_CODECS` → :func:`latent_space_tag` of it alone, so generators of one modality are
    checked against their own latent space only (16×16 video generators beside the audio U-Net of the committed
    mel VAE).

    Raises:
        MiniWeightsError: a VAE's files are missing.
    """
    return {name: latent_space_tag(codecs_dir, (name,)) for name in LATENT_CODECS}


def check_generators_codecs(generators_dir: Path, codecs_dir: Path, manifest: dict[str, Any] | None = None,
                            components: Sequence[str] | None = None) -> None:
    """Refuse generators trained in the latent spaces of other codecs than those in use. With per-modality tags in
    the manifest (``codecs.latent_spaces``): for each of ``components`` (default: all the folder's), the tag of the
    VAE it was trained in (:data:`LATENT_CODEC_OF`) against :func:`latent_space_tag` of that VAE in ``codecs_dir``,
    so a folder's video generators may come from codecs whose mel VAE is the same and frame VAE another. An older
    manifest: the combined tag (``codecs.latent_space``), or before that the codecs' :func:`version_tag`
    (``codecs.tag``).

    Raises:
        MiniWeightsError: the tags differ.
    """
    manifest = read_manifest(generators_dir) if manifest is None else manifest
    recorded = manifest.get("codecs") or {}
    spaces = recorded.get("latent_spaces")
    if spaces:
        names = list(manifest.get("components") or {}) if components is None else list(components)
        for vae in LATENT_CODECS:
            users = [name for name in names if LATENT_CODEC_OF.get(name) == vae]
            if not users:
                continue
            here = latent_space_tag(codecs_dir, (vae,))
            if spaces.get(vae) != here:
                raise MiniWeightsError(f"{generators_dir / MANIFEST}: {', '.join(users)} "
                                       f"{'was' if len(users) == 1 else 'were'} trained in the latent space "
                                       f"{spaces.get(vae)} of {vae}, but the {vae} in use ({codecs_dir}) has {here}; "
                                       f"point {GENERATORS_ENV} and {WEIGHTS_ENV} at a matching pair, or train the "
                                       f"generators again (python -m avgen pretrain-twins part=generators)")
        return
    if recorded.get("latent_space") is not None:
        trained_on, here, what = recorded["latent_space"], latent_space_tag(codecs_dir), "latent spaces"
    else:
        trained_on, here, what = recorded.get("tag"), version_tag(codecs_dir), "codecs"
    if trained_on != here:
        raise MiniWeightsError(f"{generators_dir / MANIFEST}: these generators were trained on the {what} "
                               f"{trained_on}, "
                               f"but the codecs in use ({codecs_dir}) have {here}; point {GENERATORS_ENV} and "
                               f"{WEIGHTS_ENV} at a matching pair, or train the generators again "
                               f"(python -m avgen pretrain-twins part=generators)")


def trained_frame_noise_correlation(source: str, generators_dir: str | os.PathLike | None = None) -> float:
    """The frames' noise correlation r that a video generator source was trained with (PYoCo's mixed noise prior,
    :func:`avgen.diffusion.mixed_noise`; the recipe's ``pretrain_twins.generators.<stage>.frame_noise_correlation``),
    so that the system samples and fine-tunes it on the same prior.

    ``mini:<name>``: the ``trained_with`` record of the generators the twin takes, in the manifest of
    ``generators_dir`` (default :func:`active_weights_dir`); a record without the setting (a stage on single frames,
    or a run before the setting existed) trained on independent noise. Any other source: 0 (AnimateDiff, ModelScope
    and zeroscope train on independent per-frame noise).

    Raises:
        ConfigError: an unknown mini twin.
        MiniWeightsError: no manifest, or the twin's generators were trained with different values.
    """
    if not str(source).startswith(MINI_PREFIX):
        return 0.0
    name = str(source)[len(MINI_PREFIX):]
    folders = twin_parts(name, {"generators": Path(generators_dir)} if generators_dir is not None else None)
    if "generators" not in folders:
        return 0.0
    manifest = read_manifest(folders["generators"])
    found = {}
    for part, component in MINI_TWINS[name][1].values():
        record = (manifest.get("components") or {}).get(component) or {}
        value = (record.get("trained_with") or {}).get("frame_noise_correlation")
        if part == "generators" and value is not None:
            found[component] = float(value)
    if len(set(found.values())) > 1:
        raise MiniWeightsError(f"{folders['generators'] / MANIFEST}: the generators of mini:{name} were trained with "
                               f"different frame noise correlations ({found}); set "
                               f"model.video.frame_noise_correlation explicitly")
    return next(iter(found.values()), 0.0)


def materialize(name: str, root: str | os.PathLike, weights_dir: str | os.PathLike | None = None,
                generators_dir: str | os.PathLike | None = None) -> Path:
    """``<root>/mini-<name>-v<TINY_VERSION>-<tag>``: the tiny twin of ``MINI_TWINS[name]`` with its trained
    subfolders replaced by the committed weights of each part it uses (``weights_dir``: the codecs',
    ``generators_dir``: the generators'; default :func:`active_weights_dir`), written once (into a temporary folder
    renamed into place) and reused after; ``tag`` is :func:`twin_tag` (the manifests' hashes), so new weights get a
    new folder, and the tiny twins' version is in the name as in theirs.

    Raises:
        ConfigError: ``name`` has no mini twin.
        MiniWeightsError: the committed weights are missing or altered (:func:`verify_component`), or the generators
            were trained on other codecs (:func:`check_generators_codecs`).
    """
    from avgen.backbones import tiny

    given = {part: Path(folder) for part, folder in (("codecs", weights_dir), ("generators", generators_dir))
             if folder is not None}
    folders = twin_parts(name, given)
    base, replaced = MINI_TWINS[name]
    manifests = {part: read_manifest(folder) for part, folder in folders.items()}
    if "generators" in folders:
        check_generators_codecs(folders["generators"], Path(given.get("codecs") or active_weights_dir("codecs")),
                                manifests["generators"],
                                [component for part, component in replaced.values() if part == "generators"])
    sources = {sub: verify_component(component, folders[part], manifests[part])
               for sub, (part, component) in replaced.items()}

    def build(folder: Path) -> None:
        tiny.TINY_BUILDERS[base](folder)
        for sub, source in sources.items():
            shutil.rmtree(folder / sub, ignore_errors=True)
            shutil.copytree(source, folder / sub)

    return tiny.build_folder(Path(root) / f"mini-{name}-v{tiny.TINY_VERSION}-{twin_tag(name, given)}", build)
