"""The video base model of TempoTokens: a ModelScope text-to-video UNet3D (zeroscope_v2_576w).

ModelScope's text-to-video model (and its fine-tune zeroscope) is Stable Diffusion's VAE and
OpenCLIP text tower around diffusers' ``UNet3DConditionModel``, whose blocks interleave spatial
layers (resnets, ``Transformer2DModel`` with self- and cross-attention) with temporal ones (1-D
convolutions over frames, ``TransformerTemporalModel`` with self-attention over frames).
Latents are ``(B, C, F, h, w)``: axis 2 is time.

``UNet3DConditionModel.forward`` (diffusers 0.42) takes text states ``(B, L, D)``, repeats them
for every frame and hands the ``(B·F, L, D)`` rows to the spatial cross-attention only: the
temporal transformers are built with a cross-attention width but with ``double_self_attention``,
so both of their attentions are self-attention over frames and never see the text. TempoTokens
conditions every frame on its own tokens; :class:`PerFrameUNet3D` gives each frame's spatial
cross-attention its own row of ``(B, F, L, D)`` states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet3DConditionModel,
)
from diffusers.models.attention_processor import Attention
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from avgen.backbones.animatediff import decode_video, encode_video, encode_video_posterior, sample_video_latents
from avgen.backbones.loader import load_pretrained, load_scheduler, resolve_source
from avgen.errors import ConfigError

# Both backbones run an SD-family VAE frame by frame and read nothing but ``backbone.vae``: one
# encode / decode recipe serves both.
from avgen.pretrained import freeze

__all__ = ["BASE_KEY", "SAMPLERS", "FrameContextProcessor", "PerFrameUNet3D", "Text2VideoBackbone",
           "decode_video", "encode_video", "encode_video_posterior", "load_text2video", "sample_video_latents"]

BASE_KEY = "model.t2v.base"
SCHEDULER_KEY = "model.t2v.scheduler"
SCHEDULER_OVERRIDES_KEY = "model.t2v.scheduler_overrides"

# Samplers by name, and the settings each applies over the folder's scheduler config. TempoTokens
# samples with DPMSolverMultistepScheduler.from_config(the folder's config), whose default
# algorithm is DPM-Solver++ (written out here so a diffusers default change cannot move it).
SAMPLERS: dict[str, tuple[type, dict[str, Any]]] = {
    "dpm_solver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "ddim": (DDIMScheduler, {}),
}


@dataclass
class Text2VideoBackbone:
    """The frozen parts of the text-to-video model; every module is in eval mode with
    ``requires_grad=False``.

    ``noise_scheduler`` is the training noise schedule: a ``DDPMScheduler`` built from the folder's
    stored scheduler config, unchanged (what TempoTokens trains with). ``scheduler`` is the sampler
    (same betas, see :data:`SAMPLERS`); mutate copies of it, not the shared one, when setting steps.
    """

    unet: UNet3DConditionModel
    vae: AutoencoderKL
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    scheduler: DPMSolverMultistepScheduler | DDIMScheduler
    noise_scheduler: DDPMScheduler


def load_text2video(base: str, *, tiny_dir: str | Path | None = None, scheduler: str = "dpm_solver",
                    scheduler_overrides: dict[str, Any] | None = None) -> Text2VideoBackbone:
    """A ModelScope-layout text-to-video model from a local folder or the local hub cache (never downloads).

    Args:
        base: ``model.t2v.base``: a folder or hub id in the diffusers layout of
            ``cerspense/zeroscope_v2_576w`` / ``damo-vilab/text-to-video-ms-1.7b`` (subfolders unet,
            vae, text_encoder, tokenizer, scheduler), or ``tiny:zeroscope``.
        tiny_dir: where ``tiny:`` sources are written (see :func:`~avgen.backbones.loader.resolve_source`).
        scheduler: ``model.t2v.scheduler``: the sampler, one of :data:`SAMPLERS`.
        scheduler_overrides: ``model.t2v.scheduler_overrides``: arguments of the sampler's class applied
            over the stored config and the sampler's settings. The training schedule is never overridden.
    """
    if scheduler not in SAMPLERS:
        raise ConfigError(f"{SCHEDULER_KEY}={scheduler!r}: unknown sampler; expected one of {', '.join(SAMPLERS)}")
    base = resolve_source(base, tiny_dir, BASE_KEY)
    sampler_cls, settings = SAMPLERS[scheduler]
    # First, so a wrong scheduler setting stops the run before any weights are read.
    sampler = load_scheduler(sampler_cls, base, BASE_KEY, {**settings, **(scheduler_overrides or {})},
                             SCHEDULER_OVERRIDES_KEY)
    noise_scheduler = load_pretrained(DDPMScheduler, base, BASE_KEY, subfolder="scheduler")
    unet = load_pretrained(UNet3DConditionModel, base, BASE_KEY, subfolder="unet")
    vae = load_pretrained(AutoencoderKL, base, BASE_KEY, subfolder="vae")
    tokenizer = load_pretrained(CLIPTokenizer, base, BASE_KEY, subfolder="tokenizer")
    text_encoder = load_pretrained(CLIPTextModel, base, BASE_KEY, subfolder="text_encoder")
    for module in (unet, vae, text_encoder):
        freeze(module)
    return Text2VideoBackbone(unet=unet, vae=vae, tokenizer=tokenizer, text_encoder=text_encoder,
                              scheduler=sampler, noise_scheduler=noise_scheduler)


class FrameContextProcessor:
    """An attention processor around another that lets a cross-attention take per-frame states.

    Called with ``frame_contexts`` (B·F, L, D) (a ``cross_attention_kwargs`` entry), a
    cross-attention attends to those rows instead of its ``encoder_hidden_states``; every other call,
    and every self-attention, runs the wrapped processor unchanged. diffusers hands
    ``cross_attention_kwargs`` to every attention of the UNet (self-attention and temporal layers
    too) and warns about keys a processor does not accept, so all of them get this wrapper.

    Args:
        processor: the processor to run (the module's own, e.g. ``AttnProcessor2_0``).
    """

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 frame_contexts: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B·F, N, C) → (B·F, N, C); frame_contexts (B·F, L, D), row b·F + f for frame f of clip b."""
        if frame_contexts is not None and attn.is_cross_attention:
            if frame_contexts.shape[0] != hidden_states.shape[0]:
                raise ValueError(f"frame_contexts has {frame_contexts.shape[0]} rows, the attention "
                                 f"{hidden_states.shape[0]} (batch × frames); expected one context per frame "
                                 f"of every clip")
            encoder_hidden_states = frame_contexts
        return self.processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask)


class PerFrameUNet3D(nn.Module):
    """A ``UNet3DConditionModel`` whose spatial cross-attention reads a different context per frame.

    Frame f of clip b attends to ``contexts[b, f]`` in every spatial cross-attention (the ``attn2``
    of each ``Transformer2DModel``); nothing else of the UNet reads text states. With the same
    context for every frame the output equals ``unet(sample, t, encoder_hidden_states=context)``.

    The contexts travel through the forward call (``cross_attention_kwargs``), not through state
    set on the model, so layers recomputed in the backward pass (gradient checkpointing, see
    :mod:`avgen.backbones.unet3d_checkpointing`) see the same contexts. The UNet's processors are
    wrapped in :class:`FrameContextProcessor` on every call, so processors set on the UNet later
    (SDPA, xformers) are wrapped too; a wrapped processor without ``frame_contexts`` computes what
    it computed before, so ``unet`` itself still runs as a plain UNet3D.

    Args:
        unet: the (frozen) ``UNet3DConditionModel``; held as a submodule, modified only by wrapping
            its attention processors.
    """

    def __init__(self, unet: UNet3DConditionModel):
        super().__init__()
        self.unet = unet

    def wrap_processors(self) -> None:
        """Wrap every attention processor of the UNet not yet wrapped in :class:`FrameContextProcessor`."""
        for name, module in self.unet.named_modules():
            if not isinstance(module, Attention) or isinstance(module.processor, FrameContextProcessor):
                continue
            if isinstance(module.processor, nn.Module):
                # set_processor would drop a processor that holds weights from the UNet's submodules.
                raise TypeError(f"{name} runs {type(module.processor).__name__}, a processor with weights; "
                                f"PerFrameUNet3D wraps weightless processors only (e.g. AttnProcessor2_0)")
            module.set_processor(FrameContextProcessor(module.processor))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, contexts: torch.Tensor) -> torch.Tensor:
        """Noise prediction for ``sample`` (B, C, F, h, w) (axis 2 is time) at ``timestep`` (a number or (B,)),
        conditioned frame by frame on ``contexts`` (B, F, L, D) → (B, C_out, F, h, w).

        A classifier-free-guidance batch stacks the conditional and unconditional rows: sample
        (2B, C, F, h, w) with contexts (2B, F, L, D).
        """
        b, _, frames = sample.shape[:3]
        if contexts.ndim != 4 or contexts.shape[:2] != (b, frames):
            raise ValueError(f"PerFrameUNet3D expects contexts (B, F, L, D) = ({b}, {frames}, L, D) for sample "
                             f"{tuple(sample.shape)}, got {tuple(contexts.shape)}")
        self.wrap_processors()
        # UNet3D repeats encoder_hidden_states for every frame; the spatial cross-attention reads
        # frame_contexts instead, so this stand-in only has to have the right shape.
        stand_in = contexts[:, 0].detach()
        return self.unet(sample, timestep, encoder_hidden_states=stand_in,
                         cross_attention_kwargs={"frame_contexts": contexts.flatten(0, 1)}, return_dict=False)[0]
