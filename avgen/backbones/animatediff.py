"""The video base model of the joint system: Stable Diffusion 1.5 with AnimateDiff motion modules.

AnimateDiff (Guo et al. 2024) inserts temporal attention ("motion modules") after the spatial
layers of a frozen SD1.5 UNet; diffusers builds the combined ``UNetMotionModel`` from an SD1.5
``UNet2DConditionModel`` and a ``MotionAdapter``. Latents are ``(B, C, F, h, w)``: axis 2 is time.

``UNetMotionModel.forward`` (diffusers 0.42) folds frames into the batch for the spatial layers and
repeats the timestep embedding per frame, but NOT ``encoder_hidden_states``: give it text states of
shape ``(B·F, L, D)``, e.g. ``encode_prompts(...).repeat_interleave(F, dim=0)`` (what
``AnimateDiffPipeline`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer

from avgen.backbones.loader import load_pretrained, load_scheduler, resolve_source
from avgen.diffusion import sample_latents
from avgen.pretrained import freeze, quiet_loading

BASE_KEY = "model.video.base"
ADAPTER_KEY = "model.video.motion_adapter"
VAE_KEY = "model.video.vae"
SCHEDULER_KEY = "model.video.scheduler"

# AnimateDiff's noise schedule (its public training and inference configs): plain linear betas between
# SD1.5's beta_start and beta_end, not SD's scaled_linear; no clipping of the predicted x0; steps_offset
# 1; sampling timesteps spread with linspace (diffusers' AnimateDiff examples).
ANIMATEDIFF_SCHEDULER: dict[str, Any] = {
    "beta_schedule": "linear",
    "clip_sample": False,
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}


@dataclass
class VideoBackbone:
    """The frozen parts of the video model; every module is in eval mode with ``requires_grad=False``
    (a system unfreezes what it trains)."""

    unet: UNetMotionModel
    vae: AutoencoderKL
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    scheduler: DDIMScheduler


def _adapter_subfolder(source: str) -> str | None:
    """``motion_adapter`` when ``source`` is a local folder that holds the adapter in that subfolder
    (a saved AnimateDiff pipeline or the tiny twin), else None (the adapter is the folder itself)."""
    folder = Path(source)
    if folder.is_dir() and not (folder / "config.json").is_file() \
            and (folder / "motion_adapter" / "config.json").is_file():
        return "motion_adapter"
    return None


def load_animatediff(base: str, motion_adapter: str, vae: str | None = None, *, tiny_dir: str | Path | None = None,
                     scheduler_overrides: dict[str, Any] | None = None) -> VideoBackbone:
    """SD1.5 + AnimateDiff from local folders or the local hub cache (never downloads).

    Args:
        base: ``model.video.base``: an SD1.5-layout folder or hub id with subfolders ``unet``,
            ``text_encoder``, ``tokenizer``, ``scheduler`` (and ``vae`` unless ``vae`` is given), or
            ``tiny:animatediff``.
        motion_adapter: ``model.video.motion_adapter``: a ``MotionAdapter`` folder or hub id, or a folder
            holding one in its ``motion_adapter/`` subfolder (a saved ``AnimateDiffPipeline``; the tiny
            twin, so ``tiny:animatediff`` serves for both keys).
        vae: ``model.video.vae``: an ``AutoencoderKL`` folder or hub id; None takes ``base``'s ``vae``.
        tiny_dir: where ``tiny:`` sources are written (see :func:`~avgen.backbones.loader.resolve_source`).
        scheduler_overrides: ``model.video.scheduler``: ``DDIMScheduler`` arguments applied over the
            base's scheduler config and :data:`ANIMATEDIFF_SCHEDULER`.
    """
    base = resolve_source(base, tiny_dir, BASE_KEY)
    adapter_source = resolve_source(motion_adapter, tiny_dir, ADAPTER_KEY)
    # First, so a wrong scheduler setting stops the run before any weights are read.
    scheduler = load_scheduler(DDIMScheduler, base, BASE_KEY, {**ANIMATEDIFF_SCHEDULER, **(scheduler_overrides or {})},
                               SCHEDULER_KEY)
    unet2d = load_pretrained(UNet2DConditionModel, base, BASE_KEY, subfolder="unet")
    adapter = load_pretrained(MotionAdapter, adapter_source, ADAPTER_KEY, subfolder=_adapter_subfolder(adapter_source))
    with quiet_loading():
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    if vae is None:
        autoencoder = load_pretrained(AutoencoderKL, base, BASE_KEY, subfolder="vae")
    else:
        autoencoder = load_pretrained(AutoencoderKL, resolve_source(vae, tiny_dir, VAE_KEY), VAE_KEY)
    tokenizer = load_pretrained(CLIPTokenizer, base, BASE_KEY, subfolder="tokenizer")
    text_encoder = load_pretrained(CLIPTextModel, base, BASE_KEY, subfolder="text_encoder")
    for module in (unet, autoencoder, text_encoder):
        freeze(module)
    return VideoBackbone(unet=unet, vae=autoencoder, tokenizer=tokenizer, text_encoder=text_encoder,
                         scheduler=scheduler)


@torch.no_grad()
def encode_prompts(backbone: VideoBackbone, prompts: list[str]) -> torch.Tensor:
    """CLIP text states (B, L, D), L = the tokenizer's ``model_max_length`` (77), D = the text width.

    Prompts are padded to L and truncated, and the encoder sees no attention mask: SD1.5's UNet was
    trained on all L states of padded prompts. The UNetMotionModel wants one copy per frame,
    ``(B·F, L, D)``: ``encode_prompts(...).repeat_interleave(F, dim=0)``.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"encode_prompts expects a list of strings, one per clip, got {prompts!r}")
    tokens = backbone.tokenizer(list(prompts), padding="max_length", max_length=backbone.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    return backbone.text_encoder(tokens.input_ids.to(backbone.text_encoder.device)).last_hidden_state


@torch.no_grad()
def encode_video_posterior(backbone: VideoBackbone, video: torch.Tensor, chunk: int = 16
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Video (B, F, 3, H, W) in [-1, 1] (axis 1 is time) → the VAE posterior of every frame: ``mean`` and
    ``std`` (B, C, F, H/s, W/s) (axis 2 is time; s the VAE's downsampling), unscaled (before
    ``vae.config.scaling_factor``), in the VAE's dtype, on its device.

    Each frame is encoded on its own, ``chunk`` frames per VAE call (the frames of all clips in a row, clip by
    clip); ``std`` is diffusers' ``exp(logvar / 2)`` with logvar clamped to [-30, 20].

    Raises:
        ValueError: ``video`` is not (B, F, 3, H, W).
    """
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"encode_video expects video (B, F, 3, H, W) in [-1, 1], got {tuple(video.shape)}")
    vae = backbone.vae
    frames = video.flatten(0, 1).to(vae.device, vae.dtype)
    posteriors = [vae.encode(part).latent_dist for part in frames.split(chunk)]
    mean = torch.cat([p.mean for p in posteriors]).unflatten(0, video.shape[:2]).permute(0, 2, 1, 3, 4)
    std = torch.cat([p.std for p in posteriors]).unflatten(0, video.shape[:2]).permute(0, 2, 1, 3, 4)
    return mean, std


def sample_video_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None,
                         scaling_factor: float = 1.0, chunk: int = 16) -> torch.Tensor:
    """Latents (B, C, F, h, w) (axis 2 is time) = (mean + std · ε) · ``scaling_factor`` from a per-frame posterior
    (:func:`encode_video_posterior`, or the feature cache's ``video_latents``), ε drawn as :func:`encode_video`
    draws it: per group of ``chunk`` frames of the clips' frames in a row (:func:`avgen.diffusion.sample_latents`),
    in ``mean``'s dtype and device.

    Raises:
        ValueError: ``mean`` is not (B, C, F, h, w) or ``std`` differs from it in shape.
    """
    if mean.ndim != 5:
        raise ValueError(f"sample_video_latents expects a posterior (B, C, F, h, w), got {tuple(mean.shape)}")
    b, frames = mean.shape[0], mean.shape[2]
    flat = [x.permute(0, 2, 1, 3, 4).flatten(0, 1) for x in (mean, std)]  # (B·F, C, h, w), clip by clip
    latents = sample_latents(*flat, generator, scaling_factor, chunk)
    return latents.unflatten(0, (b, frames)).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def encode_video(backbone: VideoBackbone, video: torch.Tensor, generator: torch.Generator | None = None,
                 chunk: int = 16) -> torch.Tensor:
    """Video (B, F, 3, H, W) in [-1, 1] (axis 1 is time) → latents (B, C, F, H/s, W/s), s the VAE's
    downsampling, scaled by ``vae.config.scaling_factor``.

    Each frame is encoded on its own, ``chunk`` frames per VAE call; latents are a sample of the
    posterior (with ``generator``), as in SD training: :func:`encode_video_posterior` then
    :func:`sample_video_latents` (the same draws as diffusers' ``latent_dist.sample`` per chunk).
    """
    mean, std = encode_video_posterior(backbone, video, chunk)
    return sample_video_latents(mean, std, generator, backbone.vae.config.scaling_factor, chunk)


@torch.no_grad()
def decode_video(backbone: VideoBackbone, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Latents (B, C, F, h, w) (axis 2 is time) → video (B, F, 3, h·s, w·s) clamped to [-1, 1].

    ``chunk`` frames per VAE call bound the decoder's memory: its full-resolution activations grow
    with the number of frames decoded together.
    """
    if latents.ndim != 5:
        raise ValueError(f"decode_video expects latents (B, C, F, h, w), got {tuple(latents.shape)}")
    vae = backbone.vae
    frames = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).flatten(0, 1).to(vae.device, vae.dtype)
    video = torch.cat([vae.decode(part).sample for part in frames.split(chunk)])
    return video.unflatten(0, (latents.shape[0], latents.shape[2])).clamp(-1, 1)
