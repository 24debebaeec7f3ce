"""Two frozen base U-Nets joined into one joint audio+video denoiser (SVG baseline, Sec. III-A, Fig. 1).

Each modality gets a connector that turns its current noisy latent (and the self-conditioning
estimate x̂0) into a feature sequence along its time axis; the other modality's U-Net receives those
features through cross-modal blocks (CMC-PE, or the CoDi-style cross-attention baseline) inserted
after chosen blocks — by default after the last two down blocks and the first two up blocks of each
U-Net (paper Sec. III-E), four per modality.

The blocks are inserted with forward hooks on the diffusers blocks, so the base U-Nets' own code
runs unchanged: called outside :meth:`JointUNet.forward` (no cross-modal context set), a base
U-Net computes exactly what it computed before. The cross-modal blocks are zero-initialised, so at
initialisation the joint model's outputs equal the two base U-Nets' outputs.

Layouts: video latents (B, C, F, H, W) (AnimateDiff's ``UNetMotionModel``, frames folded into the
batch inside it: (B·F, C, h, w)); audio latents (B, C, T, M) (AudioLDM, time on axis 2). The
cross-modal blocks see the time view (B, C, T, S) of a U-Net feature map.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from avgen.errors import ConfigError
from avgen.modules.cmcpe import CMCPE, interpolate_time
from avgen.modules.connector import Connector
from avgen.modules.cross_modal_attention import CrossModalAttention

#: ``model.block.time_span``: CMC-PE maps time over the ``clip`` (avgen) or the ``padded`` audio axis (public code)
TIME_SPANS = ("clip", "padded")
CROSS_MODAL = {"cmcpe": CMCPE, "cross_attention": CrossModalAttention}
DEFAULT_POSITIONS = ("down.2", "down.3", "up.0", "up.1")


def parse_position(position: str, unet: nn.Module, config_key: str) -> tuple[str, int, int]:
    """``"down.2"`` → ("down", 2, output channels of that block)."""
    kind, _, index = str(position).partition(".")
    channels = list(unet.config.block_out_channels)
    count = len(channels)
    if kind not in ("down", "up") or not index.isdigit() or not 0 <= int(index) < count:
        raise ConfigError(f"{config_key}: position {position!r} is not one of down.0 … down.{count - 1}, "
                         f"up.0 … up.{count - 1}")
    i = int(index)
    return kind, i, channels[i] if kind == "down" else channels[::-1][i]


class JointUNet(nn.Module):
    """The joint denoiser ε_θ(x_v, x_a, t_v, t_a) of the SVG baseline.

    Args:
        video_unet: AnimateDiff ``UNetMotionModel`` (frozen by the caller; its motion modules may train).
        audio_unet: AudioLDM ``UNet2DConditionModel`` (frozen by the caller).
        cross_modal: ``cmcpe`` (paper) or ``cross_attention`` (CoDi-style baseline, Table I).
        video_positions, audio_positions: blocks after which a cross-modal block is inserted.
        connector: keyword arguments of both :class:`Connector` s (``out_dim``, ``channels``, ...).
        block: keyword arguments of the cross-modal blocks (``head_dim``, ``norm_groups``, ...), and
            ``time_span``: ``clip`` (default) or ``padded``, how CMC-PE maps time (:meth:`clip_time_span`).
        video_connector_attention: spatio-temporal attention in the video connector (CoDi's design).
        gradient_checkpointing: recompute connectors and cross-modal blocks in the backward pass.
        audio_clip_fraction: the share of the audio latents' time axis that holds the clip, the rest being mel
            padding (:meth:`avgen.systems.joint.JointAudioVideo.audio_clip_fraction`); 1 = no padding.
        fps: the video's frame rate (frames per second), for the video connector's temporal position embedding.
    """

    def __init__(self, video_unet: nn.Module, audio_unet: nn.Module, *, cross_modal: str = "cmcpe",
                 video_positions: Sequence[str] = DEFAULT_POSITIONS, audio_positions: Sequence[str] = DEFAULT_POSITIONS,
                 connector: Mapping[str, Any] | None = None, block: Mapping[str, Any] | None = None,
                 video_connector_attention: bool = True, gradient_checkpointing: bool = False,
                 audio_clip_fraction: float = 1.0, fps: float = 8.0):
        super().__init__()
        if cross_modal not in CROSS_MODAL:
            raise ConfigError(f"model.cross_modal={cross_modal!r}: expected one of {sorted(CROSS_MODAL)}")
        connector = dict(connector or {})
        block = dict(block or {})
        self.time_span = block.pop("time_span", "clip")
        if self.time_span not in TIME_SPANS:
            raise ConfigError(f"model.block.time_span={self.time_span!r}: expected one of {', '.join(TIME_SPANS)}")
        if not 0 < float(audio_clip_fraction) <= 1:
            raise ValueError(f"audio_clip_fraction={audio_clip_fraction}: expected a fraction in (0, 1]")
        self.audio_clip_fraction = float(audio_clip_fraction)
        if cross_modal != "cmcpe":
            block.pop("interpolation", None)  # a CMC-PE setting; the pooled cross-attention has no time axis
        self.video_unet = video_unet
        self.audio_unet = audio_unet
        self.cross_modal = cross_modal
        self.gradient_checkpointing = gradient_checkpointing
        out_dim = connector.get("out_dim", 1280)
        self.video_connector = Connector(video_unet.config.in_channels, spatial_dims=2,
                                         attention=video_connector_attention, fps=fps, **connector)
        self.audio_connector = Connector(audio_unet.config.in_channels, spatial_dims=1, attention=False, **connector)
        self.video_blocks = nn.ModuleDict()
        self.audio_blocks = nn.ModuleDict()
        self._context: dict[str, Any] | None = None
        self._hooks = []
        for modality, unet, positions, blocks in (("video", video_unet, video_positions, self.video_blocks),
                                                  ("audio", audio_unet, audio_positions, self.audio_blocks)):
            for position in positions:
                kind, index, channels = parse_position(position, unet, f"model.positions.{modality}")
                name = f"{kind}_{index}"
                if name in blocks:
                    raise ConfigError(f"model.positions.{modality}: {position!r} is listed twice")
                blocks[name] = CROSS_MODAL[cross_modal](channels, cond_dim=out_dim, **block)
                target = (unet.down_blocks if kind == "down" else unet.up_blocks)[index]
                # a partial of a bound method, not a closure: copy.deepcopy of the model (torch's AveragedModel,
                # an EMA copy) maps it to the copy's own blocks; a closure would keep calling the original's
                self._hooks.append(target.register_forward_hook(
                    functools.partial(self._cross_modal_hook, modality, kind, name)))

    # ------------------------------------------------------------------------------ hooks
    def _cross_modal_hook(self, modality: str, kind: str, name: str, block: nn.Module, args: Any, output: Any):
        """Forward hook of a base U-Net block: its output with the cross-modal block ``name`` applied (inside a
        joint call only; a plain base-model call is left alone)."""
        ctx = self._context
        if ctx is None:  # a plain base-model call: leave the block's output alone
            return None
        module = (self.video_blocks if modality == "video" else self.audio_blocks)[name]
        cond = ctx["audio_features" if modality == "video" else "video_features"]
        hidden = output[0] if kind == "down" else output
        new = self._condition(module, hidden, cond, modality, ctx["frames"])
        if kind == "up":
            return new
        states = output[1]
        # diffusers down blocks return their final hidden state as the last skip connection too;
        # the skip must carry the conditioned features (CoDi appends after the cross-modal block).
        if not states or states[-1] is not hidden:
            raise RuntimeError(f"{type(block).__name__} does not return its output as the last skip "
                               f"state; cannot insert a cross-modal block after {kind}.{name}")
        return new, states[:-1] + (new,)

    def _condition(self, module: nn.Module, hidden: torch.Tensor, cond: torch.Tensor, modality: str,
               frames: int) -> torch.Tensor:
        if modality == "video":  # (B·F, C, h, w) → time view (B, C, F, h·w)
            bf, c, h, w = hidden.shape
            view = hidden.reshape(bf // frames, frames, c, h * w).permute(0, 2, 1, 3)
        else:  # (B, C, T, M) is already a time view
            view = hidden
        if self.cross_modal == "cmcpe" and self.time_span == "clip" and self.audio_clip_fraction < 1:
            cond = self.clip_time_span(cond, modality, view.shape[2], module.interpolation)
        out = self._call(module, view, cond.to(view.dtype))
        if modality == "video":
            out = out.permute(0, 2, 1, 3).reshape(bf, c, h, w)
        return out

    def clip_time_span(self, cond: torch.Tensor, modality: str, time_frames: int, interpolation: str
                       ) -> torch.Tensor:
        """CMC-PE's condition (B, T_c, D) mapped by time over the clip, not over the audio's mel padding
        (``model.block.time_span=clip``). The audio latents' time axis holds the clip in its first
        ``audio_clip_fraction`` (AudioLDM pads the mel to a multiple of 32 frames: 400 → 416 for 4 s, 100 → 128
        for 1 s), so the video's blocks read the audio features of those frames only (the first
        ⌈T_c·fraction⌉), and the audio's blocks get the video features stretched over the first
        ⌈T·fraction⌉ of their T frames, the padding frames holding the last one. Stretching over the whole
        padded axis, as the public code does (``time_span=padded``), conditions audio at time t with the
        video at t·fraction: 0.15 s early at the end of a 4-s clip, 0.22 s (1.8 frames at 8 fps) of a 1-s one.
        The stretch happens here on the raw features, by ``interpolation``; CMC-PE's own resampling is then
        the identity (for ``nearest`` exactly what CMC-PE would compute, its per-frame projection commuting
        with frame repetition)."""
        fraction = self.audio_clip_fraction
        if modality == "video":  # the audio connector's frames that hold the clip
            keep = max(1, math.ceil(cond.shape[1] * fraction - 1e-9))
            return cond[:, :keep]
        keep = max(1, math.ceil(time_frames * fraction - 1e-9))
        stretched = interpolate_time(cond, keep, interpolation)
        if keep == time_frames:
            return stretched
        return torch.cat([stretched, stretched[:, -1:].expand(-1, time_frames - keep, -1)], dim=1)

    def _call(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    # ------------------------------------------------------------------------------ forward
    def connect(self, video: torch.Tensor, audio: torch.Tensor, video_t: torch.Tensor, audio_t: torch.Tensor,
                video_x0: torch.Tensor | None = None, audio_x0: torch.Tensor | None = None,
                video_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The connectors: video features (B, F', D) and audio features (B, T', D) from the noisy
        latents and the self-conditioning estimates (zeros when ``None``). ``video_features`` (B, F', D), when
        given, stands in for the video connector's output, which is then not computed (teacher forcing,
        :mod:`avgen.modules.connector_events`)."""
        audio_x0 = torch.zeros_like(audio) if audio_x0 is None else audio_x0
        if video_features is None:
            video_features = self.video_features(video, video_t, video_x0)
        return video_features, self._call(self.audio_connector, audio, audio_x0, audio_t)

    def video_features(self, video: torch.Tensor, video_t: torch.Tensor, video_x0: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """The video connector alone: noisy video latents (B, C, F, h, w) at timesteps (B,) and their x̂0 (zeros
        when ``None``) -> (B, F, D), checkpointed like every connector call."""
        video_x0 = torch.zeros_like(video) if video_x0 is None else video_x0
        return self._call(self.video_connector, video, video_x0, video_t)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, video_t: torch.Tensor, audio_t: torch.Tensor,
                video_text: torch.Tensor, audio_text: torch.Tensor, video_x0: torch.Tensor | None = None,
                audio_x0: torch.Tensor | None = None, features: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict both modalities' noise (or v / x0, whatever the base models predict).

        Args:
            video: noisy video latents x_v (B, C_v, F, h, w) at local timesteps ``video_t`` (B,).
            audio: noisy audio latents x_a (B, C_a, T, M) at local timesteps ``audio_t`` (B,).
            video_text: CLIP text states (B, L, D), one per clip (repeated per frame here).
            audio_text: CLAP text embeddings (B, P), AudioLDM's class condition.
            video_x0, audio_x0: self-conditioning estimates x̂0 (zeros when ``None``).
            features: the connectors' outputs from :meth:`connect`, when already computed (the
                sampler's conditional and unconditional rows share latents, so it runs the
                connectors once per step for both); ``video_x0``/``audio_x0`` are then unused.
        Returns:
            (video output (B, C_v, F, h, w), audio output (B, C_a, T, M)).
        """
        if features is None:
            features = self.connect(video, audio, video_t, audio_t, video_x0, audio_x0)
        self._context = {"video_features": features[0], "audio_features": features[1], "frames": video.shape[2]}
        try:
            video_out = self.video_unet(video, video_t,
                                        encoder_hidden_states=video_text.repeat_interleave(video.shape[2], dim=0)
                                        ).sample
            audio_out = self.audio_unet(audio, audio_t, encoder_hidden_states=None, class_labels=audio_text).sample
        finally:
            self._context = None
        return video_out, audio_out

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules this class adds (all trainable): connectors and cross-modal blocks."""
        return {"video_connector": self.video_connector, "audio_connector": self.audio_connector,
                "video_blocks": self.video_blocks, "audio_blocks": self.audio_blocks}
