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


class SpatioTemporalAttention(nn.Module):
    """Self-attention within each frame, then across frames at each position (video connector).

    Both are pre-norm (LayerNorm) with a residual. The temporal attention carries no position
    information, so it mixes frames without knowing their order; the time index of the features is
    kept by the frame axis itself, which is what CMC-PE aligns on. A simplified form of the public
    code's ``SpatioTemporalAttention`` (no frame shift, no relative position bias).

    Args:
        channels: C.
        num_heads: heads of both attentions (head width C // num_heads).
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ConfigError(f"num_heads={num_heads} does not divide the connector width {channels}; "
                              f"set num_heads to a divisor of {channels} (paper: 8).")
        self.spatial_norm = nn.LayerNorm(channels)
        self.spatial = MultiHeadAttention(channels, num_heads, channels // num_heads)
        self.temporal_norm = nn.LayerNorm(channels)
        self.temporal = MultiHeadAttention(channels, num_heads, channels // num_heads)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """x: (B·T, C, H, W) frames folded into the batch, frame-major per clip -> same shape."""
        n, c, height, width = x.shape
        b, positions = n // frames, height * width
        tokens = x.permute(0, 2, 3, 1).reshape(n, positions, c)
        tokens = tokens + self.spatial(self.spatial_norm(tokens))
        tokens = tokens.view(b, frames, positions, c).transpose(1, 2).reshape(b * positions, frames, c)
        tokens = tokens + self.temporal(self.temporal_norm(tokens))
        return tokens.view(b, positions, frames, c).permute(0, 2, 3, 1).reshape(n, c, height, width)


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
    """

    def __init__(self, latent_channels: int, out_dim: int = 1280, channels: int = 320, spatial_dims: int = 2,
                 attention: bool = False, num_heads: int = 8, norm_groups: int = 32, timestep_dim: int | None = None):
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
        self.attn1 = SpatioTemporalAttention(2 * channels, num_heads) if attention else None
        self.downsample = nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1)
        self.block2 = ResBlock(2 * channels, 4 * channels, timestep_dim, norm_groups)
        self.attn2 = SpatioTemporalAttention(4 * channels, num_heads) if attention else None
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
