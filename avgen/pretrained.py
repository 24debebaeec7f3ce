"""Pretrained weights: where every pinned file comes from, how avgen requires and reads it, and the
frozen-module rule.

avgen never downloads weights. A pretrained part is loaded from a local file (or a local folder / the
local Hugging Face cache, :func:`avgen.backbones.loader.load_pretrained`) named by a config key; when
it is absent the error names the key, the expected file, what the original is and where it is
published (:data:`ORIGINS`). Files are read without running code (``torch.load(weights_only=True)``,
:func:`load_weights_file`) and their SHA-256 (:func:`sha256_file`) goes into ``metrics.json`` and
into cache keys. A pretrained module is frozen for good (:class:`FrozenModule`): no gradients, and a
parent's ``train()`` never switches it out of eval mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, TypeVar

import torch
from torch import nn


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a pinned weight file comes from, for error messages and the README."""

    file: str          # the published file name
    config_key: str    # the avgen config key that points at the local copy
    metric: str        # the metric in ``evaluate.metrics`` that needs it
    what: str          # what the original is
    where: str         # where it is published
    env: str | None = None  # the environment variable the config reads the path from


ORIGINS: dict[str, WeightsOrigin] = {
    "i3d": WeightsOrigin(
        file="i3d_torchscript.pt", config_key="evaluate.fvd.i3d_path", metric="fvd",
        what="the Kinetics-400 I3D as TorchScript: StyleGAN-V's port of the tf.hub i3d-kinetics-400 model "
             "that the original FVD (google-research frechet_video_distance) uses",
        where="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1, linked from "
              "universome/stylegan-v src/metrics/frechet_video_distance.py", env="AVGEN_I3D_PATH"),
    "c3d": WeightsOrigin(
        file="c3d_ucf101.pt", config_key="evaluate.is_video.c3d_path", metric="is_video",
        what="the UCF-101-finetuned C3D as TorchScript: StyleGAN-V's exact port of TGANv2's chainer C3D, "
             "the classifier of the video Inception Score (TGAN, TGANv2, StyleGAN-V, TempoTokens' IS column)",
        where="https://www.dropbox.com/s/jxpu7avzdc9n97q/c3d_ucf101.pt?dl=1, linked from "
              "universome/stylegan-v src/metrics/video_inception_score.py", env="AVGEN_C3D_PATH"),
    "vggish": WeightsOrigin(
        file="vggish-10086976.pth", config_key="evaluate.fad.vggish_path", metric="fad",
        what="Google's AudioSet VGGish converted to a PyTorch state dict by torchvggish "
             "(torch.hub harritaylor/torchvggish)",
        where="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
        env="AVGEN_VGGISH_PATH"),
    "vggish_pca": WeightsOrigin(
        file="vggish_pca_params.npz", config_key="evaluate.fad.vggish_pca_path", metric="fad",
        what="the PCA/whitening parameters of Google's AudioSet VGGish embedding release "
             "(arrays pca_eigen_vectors, pca_means)",
        where="https://storage.googleapis.com/audioset/vggish_pca_params.npz"),
    "panns": WeightsOrigin(
        file="Cnn14_16k_mAP=0.438.pth", config_key="evaluate.panns.path",
        metric="is' and 'kl",  # both metrics use it; the message quotes this as 'is' and 'kl'
        what="the PANNs CNN14 AudioSet tagger trained on 16 kHz audio (Kong et al. 2020), the classifier of "
             "audioldm_eval's Inception Score and KL",
        where="https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth (Zenodo record 3987831)",
        env="AVGEN_PANNS_PATH"),
    "imagebind": WeightsOrigin(
        file="imagebind_huge.pth", config_key="evaluate.imagebind.path", metric="imagebind",
        what="Meta's ImageBind-Huge state dict (Girdhar et al. 2023, facebookresearch/ImageBind); only its vision "
             "and audio towers are used",
        where="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth, linked from facebookresearch/ImageBind "
              "imagebind/models/imagebind_model.py", env="AVGEN_IMAGEBIND_PATH"),
    "passt": WeightsOrigin(
        file="passt-s-f128-p16-s10-ap.476-swa.pt", config_key="evaluate.passt.path",
        metric="fd_passt', 'kl_passt' and 'is_passt",  # quoted in the message as the three metric names
        what="PaSST-S (Koutini et al. 2022) trained on AudioSet, SWA weights, mAP 0.476: the tagger of "
             "av-benchmark's FD-PASST, KL-PASST and ISC-PASST (hear21passt's get_basic_model)",
        where="https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt "
              "(kkoutini/PaSST release v0.0.1-audioset)", env="AVGEN_PASST_PATH"),
    "laion_clap": WeightsOrigin(
        file="music_speech_audioset_epoch_15_esc_89.98.pt", config_key="evaluate.clap_laion.path",
        metric="clap_laion",
        what="LAION-CLAP (Wu et al. 2023) HTSAT-base + RoBERTa trained on music, speech and AudioSet, without "
             "fusion: the model of av-benchmark's LAION-CLAP-Score, converted here into transformers' ClapModel",
        where="https://huggingface.co/lukewys/laion_clap/resolve/main/music_speech_audioset_epoch_15_esc_89.98.pt "
              "(linked from LAION-AI/CLAP README.md)", env="AVGEN_LAION_CLAP_PATH"),
    "ms_clap": WeightsOrigin(
        file="CLAP_weights_2023.pth", config_key="evaluate.clap_ms.path", metric="clap_ms",
        what="MS-CLAP 2023 (Elizalde et al. 2023) HTSAT + GPT-2: the model of av-benchmark's MS-CLAP-Score, its HTSAT "
             "read here into transformers' ClapAudioModel, with a local GPT-2 folder (evaluate.clap_ms.text_model)",
        where="https://huggingface.co/microsoft/msclap/resolve/main/CLAP_weights_2023.pth (microsoft/CLAP "
              "msclap/CLAPWrapper.py:29-34)", env="AVGEN_MSCLAP_PATH"),
    "synchformer": WeightsOrigin(
        file="synchformer_state_dict.pth", config_key="evaluate.desync.path", metric="desync",
        what="the AudioSet-trained Synchformer (Iashin et al. 2024) as MMAudio republished it: the plain state dict "
             "of v-iashin/Synchformer's 24-01-04T16-39-21.pt (whose {'model': ...} layout is also read)",
        where="https://github.com/hkchengrex/MMAudio/releases/download/v0.1/synchformer_state_dict.pth "
              "(md5 5b2f5594b0730f70e41e549b7c94390c, MMAudio mmaudio/utils/download_utils.py)",
        env="AVGEN_SYNCHFORMER_PATH"),
    # conditioning encoders of TempoTokens (model.encoder.path; a tiny twin at scale=tiny)
    "beats": WeightsOrigin(
        file="BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt", config_key="model.encoder.path", metric="",
        what="the BEATs iter3+ (AS2M) checkpoint fine-tuned on AudioSet-2M that TempoTokens uses",
        where="the download table of the microsoft/unilm repository's beats/README.md "
              "(https://github.com/microsoft/unilm/tree/master/beats, row Iter3+ (AS2M), column 'AudioSet "
              "Fine-Tuned Model 2'; the links point to Microsoft's OneDrive / Azure blob storage)",
        env="AVGEN_BEATS_PATH"),
    "cavp": WeightsOrigin(
        file="cavp_epoch66.ckpt", config_key="model.encoder.path", metric="",
        what="Diff-Foley's stage-1 CAVP checkpoint",
        where="the Hugging Face model repository SimianLuo/Diff-Foley, folder diff_foley_ckpt "
              "(https://huggingface.co/SimianLuo/Diff-Foley/tree/main/diff_foley_ckpt)",
        env="AVGEN_CAVP_PATH"),
}

# Hugging Face models (a local folder or the local hub cache; avgen/backbones/loader.py loads them): the config
# key that names each, and the hub id of the original it stands for.
HUB_MODELS: dict[str, str] = {
    "evaluate.clipsim.model": "openai/clip-vit-base-patch32",
    "evaluate.clap.model": "laion/clap-htsat-unfused",
    # The paper fine-tunes on any SD1.5 checkpoint; AnimateDiff's public examples use this one.
    "model.video.base": "SG161222/Realistic_Vision_V5.1_noVAE",
    "model.video.motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2",
    # The public AnimateDiff code pairs the noVAE checkpoint with the fine-tuned SD VAE.
    "model.video.vae": "stabilityai/sd-vae-ft-mse",
    "model.audio.base": "cvssp/audioldm-m-full",
    # TempoTokens' text-to-video base (its code names damo-vilab/text-to-video-ms-1.7b as the alternative).
    "model.t2v.base": "cerspense/zeroscope_v2_576w",
}

# Hugging Face models of one system whose config keys other systems give other defaults: by the experiment whose
# composed config holds them (model.audio.base is audioldm-m-full in the joint system).
SYSTEM_HUB_MODELS: dict[str, dict[str, str]] = {
    "vta_ldm": {
        # The text condition's CLIP text tower (avgen/encoders/clip_text.py). The video encoders' hub ids are
        # by encoder name, in avgen.encoders.video_tokens.DEFAULT_SOURCES (model.encoder.path: null).
        "model.text_encoder.path": "openai/clip-vit-large-patch14",
        # audioldm-s-full (Zenodo 7600541) converted to diffusers' layout: VTA-LDM's VAE and HiFi-GAN.
        "model.audio.base": "cvssp/audioldm",
    },
}


class ExtractorWeightsMissing(FileNotFoundError):
    """A pinned extractor's weight file is not where the config says."""

    def __init__(self, role: str, path: str | os.PathLike | None, config_key: str | None = None):
        origin = ORIGINS[role]
        key = config_key or origin.config_key
        where = "no path is set" if path is None else f"{path} does not exist"
        super().__init__(
            f"{role} extractor weights missing: {where} (config key {key}). Expected {origin.file}, "
            f"{origin.what}; published at {origin.where}. avgen loads extractor weights from local files "
            f"only: download the file where there is network, copy it here and set {key}=/path/to/"
            f"{origin.file}, or leave '{origin.metric}' out of evaluate.metrics.")
        self.role, self.path, self.config_key = role, path, key


def require_file(role: str, path: str | os.PathLike | None, config_key: str | None = None) -> Path:
    """``path`` as a :class:`~pathlib.Path` when it is a file; else :class:`ExtractorWeightsMissing` for the
    registered ``role`` (naming ``config_key``, default the registry's)."""
    if path is None or not Path(path).is_file():
        raise ExtractorWeightsMissing(role, path, config_key)
    return Path(path)


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
        reason = (str(exc).strip().splitlines() or [""])[0]  # torch's refusal runs over many lines
        raise unreadable(f"{path} (config key {config_key}) cannot be read with torch.load(weights_only=True) "
                         f"({type(exc).__name__}: {reason}). {conversion}") from exc


def load_state_dict_file(path: str | os.PathLike | None, config_key: str, missing: type[Exception],
                         unreadable: type[Exception], wrapper: str, origin: WeightsOrigin
                         ) -> Mapping[str, torch.Tensor]:
    """The state dict (name → tensor) of a published checkpoint that is either a plain state dict or
    ``{wrapper: state dict, ...}`` (LAION-CLAP's ``state_dict``, MS-CLAP's ``model``), read with
    :func:`load_weights_file` (no code runs; callers add the pickle globals their format needs with
    ``torch.serialization.safe_globals``).

    Raises:
        missing: no file at ``path`` (``missing(path, config_key)``).
        unreadable: the safe loader refuses the file, or it holds something else than such a state dict; one line
            naming ``config_key`` and, from ``origin``, the expected file and where it is published.
    """
    checkpoint = load_weights_file(
        path, config_key, missing, unreadable,
        f"A file you trust that holds other objects (an optimizer, args) can be converted once: in a separate "
        f"session run torch.save({{'{wrapper}': torch.load(path, weights_only=False)['{wrapper}']}}, "
        f"'{origin.file}') and point {config_key} at the new file.")
    state = checkpoint.get(wrapper, checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise unreadable(f"{path} (config key {config_key}) holds a {type(checkpoint).__name__} that is not a state "
                         f"dict of tensors or {{'{wrapper}': ...}}; expected {origin.file} from {origin.where}")
    return state


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the libraries' per-load chatter: transformers 5's weight-loading progress bars and
    diffusers' "modules that should be kept in float32: []" warning, which ``UNetMotionModel.from_unet2d``
    triggers on every build (its own guard is always true in diffusers 0.42)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    level = diffusers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bars:
            transformers_logging.enable_progress_bar()


M = TypeVar("M", bound=nn.Module)


def freeze(module: M) -> M:
    """The frozen-module rule for a pretrained part: no gradients, eval mode. Returns ``module``. A parent
    keeps it in eval mode through its own ``train()`` with :class:`HoldsFrozen` (or the part is a
    :class:`FrozenModule`)."""
    module.requires_grad_(False)
    module.eval()
    return module


class FrozenModule(nn.Module):
    """A pretrained module of avgen's own that stays frozen: :meth:`freeze` applies :func:`freeze`, and
    ``train()`` is a no-op, so a parent's ``.train()`` never switches it to batch statistics or dropout."""

    def freeze(self) -> FrozenModule:
        return freeze(self)

    def train(self, mode: bool = True) -> FrozenModule:
        return super().train(False)


def computed_tables(compute) -> tuple[torch.Tensor, ...]:
    """The tensors ``compute()`` returns (a front end's filterbank, window: values derived from its arguments),
    computed on the CPU and moved to the current default device (``torch.device(...)`` context), except that on
    the ``meta`` device they stay on the CPU: a model built there (``scale=paper_random``'s parameter counts)
    has no values, and these tables are tiny and needed as values."""
    with torch.device("cpu"):
        tables = tuple(compute())
    target = torch.get_default_device()
    return tables if target.type in ("cpu", "meta") else tuple(t.to(target) for t in tables)


class HoldsFrozen(nn.Module):
    """A module (a system, a metric) holding pretrained parts it does not train (a Hugging Face model, a
    diffusers UNet): :meth:`hold_frozen` applies :func:`freeze` to them, and ``train(mode)`` puts them
    back in eval mode after switching everything else."""

    def hold_frozen(self, *modules: nn.Module) -> None:
        held = self.__dict__.setdefault("_held_frozen", [])
        for module in modules:
            held.append(freeze(module))

    def frozen_modules(self) -> list[nn.Module]:
        return list(self.__dict__.get("_held_frozen", []))

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.__dict__.get("_held_frozen", []):
            module.eval()
        return self
