"""The connector: reads one modality's latents and hands the other U-Net a feature sequence along time.

Hayakawa et al., Sec. III-C2 and III-E: "we followed the architecture of the environment encoder in
CoDi for our connector"; its input is the noisy latent concatenated with the estimate of the clean
one (self-conditioning, Chen et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.errors import ConfigError
from avgen.modules.attention import MultiHeadAttention, group_norm, timestep_embedding


class ResBlock(nn.Module):
    """Residual block with a timestep embedding (Ho et al. 2020; diffusers' ``ResnetBlock2D``)::

        h = conv_1(SiLU(GN_1(x))) + Linear(SiLU(emb))      the embedding shifts each channel
        out = skip(x) + conv_2(SiLU(GN_2(h)))              skip: 1×1 conv when the width changes

    Args:
        in_channels: input channels.
        out_channels: output channels.
        emb_dim: width of the timestep embedding.
        norm_groups: groups of both GroupNorms.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, norm_groups: int):
        super().__init__()
        self.norm1 = group_norm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = group_norm(norm_groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (N, in_channels, H, W); emb: (N, emb_dim) -> (N, out_channels, H, W)."""
        h = self.conv1(F.silu(self.norm1(x))) + self.emb_proj(F.silu(emb))[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def frame_shift(x: Tensor, chunks: int = 8) -> Tensor:
    """Shift channel chunk ``i`` of ``x`` by ``i`` frames forward in time, zero-filled (the public code's
    ``frame_shift``, after the latent shift of An et al. 2023): output frame ``f`` of chunk ``i`` is input frame
    ``f - i`` (zeros for ``f < i``), so one frame's features see the last ``chunks - 1`` frames.

    Args:
        x: (B, C, T, ...), axis 2 is time; C is split by ``torch.chunk`` (the last chunk may be smaller).
        chunks: number of channel chunks (the public code: 8).

    Returns:
        (B, C, T, ...).
    """
    parts = list(x.chunk(chunks, dim=1))
    for i in range(1, len(parts)):
        part = parts[i]
        shift = min(i, part.shape[2])
        parts[i] = torch.cat([torch.zeros_like(part[:, :, :shift]), part[:, :, :part.shape[2] - shift]], dim=2)
    return torch.cat(parts, dim=1)


def token_shift(tokens: Tensor) -> Tensor:
    """The second half of the channels of each frame replaced by the previous frame's (zeros at frame 0).

    tokens: (N, T, C), axis 1 is time -> same shape. The public code's ``shift_token`` in its temporal
    feed-forward."""
    keep, shifted = tokens.chunk(2, dim=-1)
    shifted = torch.cat([torch.zeros_like(shifted[:, :1]), shifted[:, :-1]], dim=1)
    return torch.cat([keep, shifted], dim=-1)


class ContinuousPositionBias(nn.Module):
    """An attention bias per head from the signed log distance between frames (Liu et al. 2022, Swin
    Transformer V2, Sec. 3.3; the public code's ``ContinuousPositionBias`` in its temporal attention)::

        d_ij = sign(i - j) · log(1 + |i - j|)              query frame i, key frame j
        bias[h, i, j] = MLP(d_ij)_h                        Linear(1, W), SiLU, Linear(W, W), SiLU, Linear(W, heads)

    Args:
        heads: attention heads.
        width: W, hidden width of the MLP (the public code: half the attention's channels).
    """

    def __init__(self, heads: int, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, heads))

    def forward(self, frames: int) -> Tensor:
        """-> (heads, frames, frames) float, on the module's device and dtype."""
        weight = self.mlp[0].weight
        position = torch.arange(frames, device=weight.device, dtype=torch.float32)
        distance = position[:, None] - position[None, :]
        distance = torch.sign(distance) * torch.log1p(distance.abs())
        return self.mlp(distance[..., None].to(weight.dtype)).permute(2, 0, 1)


#: ``model.connector.spatio_temporal``: the video connector's attention blocks
SPATIO_TEMPORAL = ("public", "unordered")


class SpatioTemporalAttention(nn.Module):
    """The video connector's attention block after each ResBlock, over the frames at each position.

    ``variant="public"`` (default): the public code's ``SpatioTemporalAttention`` (CoDi's, reproduced in the
    SVG baseline's ``modules_video.py``), which knows the order of the frames three ways::

        tokens = tokens + TempAttn(LN(tokens + PE(f / fps)), bias=ContinuousPositionBias)   (to_out zero at init)
        tokens = tokens + W_out · LN(token_shift(GEGLU(W_in · tokens)))        (half the channels from frame f-1)
        x      = x + frame_shift(conv3x3(SiLU(GN(x))))                         (conv zero at init)

    at each of the H·W positions over the T frames; PE is the sinusoidal embedding
    (:func:`~avgen.modules.attention.timestep_embedding`) of each frame's time in seconds; the attention has
    ``num_heads`` heads of width ``2·C / num_heads`` (the public code: 8 heads of C/4), the feed-forward an inner
    width of ``8·C / 3``.

    ``variant="unordered"``: avgen's earlier simplification, ``tokens + SelfAttn(LN(tokens))`` within each
    frame over its H·W positions, then ``tokens + TempAttn(LN(tokens))`` across frames at each position. Its
    temporal part is equivariant to a permutation of the frames, so it cannot tell the frame in which a falling
    object lands from the frames after it, where the object lies still: the connector cannot say *when*
    anything happened. Kept to compare with (measured: the CPU mini demo's joint model used the other modality
    not at all with it).

    Args:
        channels: C.
        num_heads: attention heads.
        variant: ``public`` or ``unordered`` (above).
        fps: frame rate of the latent frames (frames per second), for the time embedding.
        norm_groups: groups of the frame-shift block's GroupNorm.

    Raises:
        ConfigError: ``num_heads`` does not divide the attention width, an unknown ``variant``, ``fps <= 0``.
    """

    def __init__(self, channels: int, num_heads: int, *, variant: str = "public", fps: float = 8.0,
                 norm_groups: int = 32):
        super().__init__()
        if variant not in SPATIO_TEMPORAL:
            raise ConfigError(f"model.connector.spatio_temporal={variant!r}: expected one of "
                              f"{', '.join(SPATIO_TEMPORAL)}")
        inner = 2 * channels if variant == "public" else channels
        if num_heads < 1 or inner % num_heads:
            raise ConfigError(f"num_heads={num_heads} does not divide the connector's attention width {inner}; "
                              f"set model.connector.num_heads to a divisor of {inner} (paper: 8).")
        if not fps > 0:
            raise ConfigError(f"the video connector's fps={fps}: expected a positive frame rate (data.clip.fps)")
        self.variant = variant
        self.fps = float(fps)
        self.temporal_norm = nn.LayerNorm(channels)
        self.temporal = MultiHeadAttention(channels, num_heads, inner // num_heads)
        if variant == "unordered":
            self.spatial_norm = nn.LayerNorm(channels)
            self.spatial = MultiHeadAttention(channels, num_heads, channels // num_heads)
            return
        self.position_bias = ContinuousPositionBias(num_heads, max(channels // 2, 1))
        nn.init.zeros_(self.temporal.to_out.weight)
        nn.init.zeros_(self.temporal.to_out.bias)
        ff_inner = int(channels * 4 * 2 / 3)
        self.ff_in = nn.Linear(channels, 2 * ff_inner, bias=False)
        self.ff_norm = nn.LayerNorm(ff_inner)
        self.ff_out = nn.Linear(ff_inner, channels, bias=False)
        self.shift_norm = group_norm(norm_groups, channels)
        self.shift_conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.shift_conv.weight)
        nn.init.zeros_(self.shift_conv.bias)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """x: (B·T, C, H, W) frames folded into the batch, frame-major per clip -> same shape."""
        n, c, height, width = x.shape
        b, positions = n // frames, height * width
        tokens = x.permute(0, 2, 3, 1).reshape(n, positions, c)
        if self.variant == "unordered":
            tokens = tokens + self.spatial(self.spatial_norm(tokens))
        tokens = tokens.view(b, frames, positions, c).transpose(1, 2).reshape(b * positions, frames, c)
        if self.variant == "unordered":
            tokens = tokens + self.temporal(self.temporal_norm(tokens))
            return tokens.view(b, positions, frames, c).permute(0, 2, 3, 1).reshape(n, c, height, width)
        seconds = torch.arange(frames, device=x.device, dtype=torch.float32) / self.fps
        position = timestep_embedding(seconds, c).to(tokens.dtype)
        tokens = tokens + self.temporal(self.temporal_norm(tokens + position), bias=self.position_bias(frames))
        hidden, gate = self.ff_in(tokens).chunk(2, dim=-1)
        tokens = tokens + self.ff_out(self.ff_norm(token_shift(hidden * F.gelu(gate))))
        x = tokens.view(b, positions, frames, c).permute(0, 2, 3, 1).reshape(n, c, height, width)
        h = self.shift_conv(F.silu(self.shift_norm(x)))
        h = frame_shift(h.view(b, frames, c, height, width).transpose(1, 2)).transpose(1, 2)
        return x + h.reshape(n, c, height, width)


class Connector(nn.Module):
    """CoDi's environment encoder as the connector of Hayakawa et al. (Sec. III-C2, III-E).

    With ``C0 = channels``, on the input ``concat(x_t, x̂_0|t)`` (2·latent_channels)::

        conv 3×3 -> C0/2
        ResBlock -> 2·C0   (+ SpatioTemporalAttention, video with attention=True)
        Downsample: conv 3×3, stride 2
        ResBlock -> 4·C0   (+ SpatioTemporalAttention, video with attention=True)
        GroupNorm, SiLU, conv 3×3 -> out_dim
        mean over the non-time axes -> (B, T', out_dim)

    ``x̂_0|t`` is the clean-latent estimate of Eq. (7) from the previous sampling step (zeros when
    there is none), and the timestep goes through the connector's own sinusoidal embedding and MLP
    into every ResBlock (no class embedding). The public code borrows the base U-Net's time
    embedding instead.

    Video (``spatial_dims=2``): latents (B, C, T, H, W); every conv acts on one frame (frames folded
    into the batch), the stride-2 conv halves H and W only, so ``T' = T``: the output has one
    vector per video latent frame.
    Audio (``spatial_dims=1``): latents (B, C, T, M) are one 2-D image over (time, mel); the convs
    mix neighbouring time frames and the stride-2 conv halves both axes, so ``T' = ceil(T / 2)``.

    Args:
        latent_channels: C of the modality's latents (paper: 4 for AnimateDiff, 8 for AudioLDM).
        out_dim: width of the output features (paper: 1280).
        channels: C0, the base width (paper: 320, the first block width of the base U-Nets).
        spatial_dims: non-time axes of the latents: 2 for video (H, W), 1 for audio (M).
        attention: add spatio-temporal attention after each ResBlock (the public code does for video).
        num_heads: heads of the spatio-temporal attention.
        norm_groups: groups of every GroupNorm.
        timestep_dim: width of the timestep embedding MLP (``4·channels`` when ``None``).
        spatio_temporal: the video connector's attention blocks: ``public`` (the public code's, order-aware) or
            ``unordered`` (avgen's earlier simplification, blind to frame order); :class:`SpatioTemporalAttention`.
        fps: frame rate of the video latents (the clip's fps), for the temporal position embedding.
    """

    def __init__(self, latent_channels: int, out_dim: int = 1280, channels: int = 320, spatial_dims: int = 2,
                 attention: bool = False, num_heads: int = 8, norm_groups: int = 32, timestep_dim: int | None = None,
                 spatio_temporal: str = "public", fps: float = 8.0):
        super().__init__()
        if spatial_dims not in (1, 2):
            raise ConfigError(f"spatial_dims={spatial_dims}: expected 2 for video latents (B, C, T, H, W) "
                              f"or 1 for audio latents (B, C, T, M).")
        if attention and spatial_dims != 2:
            raise ConfigError("attention=true needs video latents (spatial_dims=2): the spatio-temporal "
                              "attention attends within frames and then across them.")
        timestep_dim = 4 * channels if timestep_dim is None else timestep_dim
        self.latent_channels = latent_channels
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.time_mlp = nn.Sequential(nn.Linear(channels, timestep_dim), nn.SiLU(),
                                      nn.Linear(timestep_dim, timestep_dim))
        self.conv_in = nn.Conv2d(2 * latent_channels, channels // 2, 3, padding=1)
        self.block1 = ResBlock(channels // 2, 2 * channels, timestep_dim, norm_groups)
        sta = dict(variant=spatio_temporal, fps=fps, norm_groups=norm_groups)
        self.attn1 = SpatioTemporalAttention(2 * channels, num_heads, **sta) if attention else None
        self.downsample = nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1)
        self.block2 = ResBlock(2 * channels, 4 * channels, timestep_dim, norm_groups)
        self.attn2 = SpatioTemporalAttention(4 * channels, num_heads, **sta) if attention else None
        self.norm_out = group_norm(norm_groups, 4 * channels)
        self.conv_out = nn.Conv2d(4 * channels, out_dim, 3, padding=1)

    def forward(self, x_t: Tensor, x0_hat: Tensor, timestep: Tensor) -> Tensor:
        """Encode one modality's latents into a sequence along its time axis.

        Args:
            x_t: noisy latents, (B, C, T, H, W) for video or (B, C, T, M) for audio; axis 2 is time.
            x0_hat: clean-latent estimate, same shape (zeros when not available).
            timestep: (B,) or scalar, the timestep of ``x_t``.

        Returns:
            (B, T', out_dim), axis 1 is time: ``T' = T`` for video, ``ceil(T / 2)`` for audio.
        """
        expected = 3 + self.spatial_dims
        if x_t.ndim != expected or x_t.shape[1] != self.latent_channels or x0_hat.shape != x_t.shape:
            layout = "(B, C, T, H, W)" if self.spatial_dims == 2 else "(B, C, T, M)"
            raise ValueError(f"Connector(spatial_dims={self.spatial_dims}) expects x_t and x0_hat of equal shape "
                             f"{layout} with C={self.latent_channels}, got {tuple(x_t.shape)} and "
                             f"{tuple(x0_hat.shape)}.")
        b, frames = x_t.shape[0], x_t.shape[2]
        x = torch.cat([x_t, x0_hat], dim=1)
        # the sinusoidal embedding is float32; the MLP runs in the module's dtype (fp16 / bf16 pipelines)
        emb = timestep_embedding(torch.as_tensor(timestep, device=x.device).expand(b), self.channels)
        emb = self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))
        if self.spatial_dims == 2:
            x = x.transpose(1, 2).flatten(0, 1)
            emb = emb.repeat_interleave(frames, dim=0)
        h = self.block1(self.conv_in(x), emb)
        if self.attn1 is not None:
            h = self.attn1(h, frames)
        h = self.block2(self.downsample(h), emb)
        if self.attn2 is not None:
            h = self.attn2(h, frames)
        h = self.conv_out(F.silu(self.norm_out(h)))
        if self.spatial_dims == 2:
            return h.mean(dim=(2, 3)).view(b, frames, -1)
        return h.mean(dim=3).transpose(1, 2)
