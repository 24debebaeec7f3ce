"""SlowOnly R3D, the video network of CAVP (Diff-Foley, Luo et al. 2023): ``CAVP_Inference``'s video branch
(luosiallen/Diff-Foley, commit 0ba1e8a, ``inference/model/cavp_model.py``: ``video_encoder =
ResNet3dSlowOnly(depth=50)`` from ``inference/model/cavp_modules.py``, mmaction2's SlowOnly R3D-50, here in plain
torch, and ``video_project_head = nn.Linear(2048, 512)``), with the published parameter names.

The network alone, importing only torch, so the tiny-weights writer (:mod:`avgen.backbones.tiny`) can build CAVP's
tiny twin (both branches in one file) without importing the encoder wrapper; the conditioning encoder, its
preprocessing and its loader are :mod:`avgen.encoders.cavp_video`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

STAGE_BLOCKS = (3, 4, 6, 3)  # ResNet3d.arch_settings[50]
BASE_CHANNELS = 64
EMBED_DIM = 512
EXPANSION = 4  # Bottleneck3d.expansion
SPATIAL_STRIDES = (1, 2, 2, 2)
INFLATE = (False, False, True, True)  # ResNet3dSlowOnly's inflate=(0, 0, 1, 1), inflate_style '3x1x1'
TINY_CAVP_VIDEO = {"stage_blocks": (1, 1, 1, 1), "base_channels": 4, "embed_dim": 16}


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` as ``ResNet3d`` builds it: ``Conv3d`` without bias, ``BatchNorm3d``, then ReLU unless
    ``relu`` is False. (N, C_in, T, H, W) → (N, C_out, T', H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class Bottleneck3d(nn.Module):
    """mmaction2's ``Bottleneck3d`` with style 'pytorch' and inflate style '3x1x1', temporal stride 1, no non-local
    block: ``relu(conv3(conv2(conv1(x))) + downsample(x))``.

    Args:
        inplanes: input channels.
        planes: the bottleneck width; the output has ``4 · planes`` channels.
        spatial_stride: stride of ``conv2`` (1, 3, 3) and of ``downsample``.
        inflate: ``conv1`` has kernel (3, 1, 1), padding (1, 0, 0) (it mixes three frames) instead of 1 × 1 × 1.
        downsample: the 1 × 1 × 1 projection of the identity, needed when the stride or the width changes.
    """

    def __init__(self, inplanes: int, planes: int, spatial_stride: int = 1, inflate: bool = False,
                 downsample: bool = False):
        super().__init__()
        self.conv1 = ConvModule(inplanes, planes, (3, 1, 1) if inflate else 1, padding=(1, 0, 0) if inflate else 0)
        self.conv2 = ConvModule(planes, planes, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                                padding=(0, 1, 1))
        self.conv3 = ConvModule(planes, planes * EXPANSION, 1, relu=False)
        self.downsample = (ConvModule(inplanes, planes * EXPANSION, 1, stride=(1, spatial_stride, spatial_stride),
                                      relu=False) if downsample else None)

    def forward(self, x: Tensor) -> Tensor:
        """(N, inplanes, T, H, W) → (N, 4 · planes, T, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet3dSlowOnly(nn.Module):
    """``ResNet3dSlowOnly(depth=50)`` of Diff-Foley's ``cavp_modules.py`` in eval mode, without ``pool2``
    (``with_pool2=False``) and with its ``adaptive_pool`` (``nn.AdaptiveAvgPool2d((1, 1))`` on the 5-D map, a mean over
    the last two axes).

    Args:
        stage_blocks: bottlenecks per stage (R3D-50: 3, 4, 6, 3).
        base_channels: stem width; stage i has width ``base_channels · 2^i`` and outputs 4 times that.
    """

    def __init__(self, stage_blocks: Sequence[int] = STAGE_BLOCKS, base_channels: int = BASE_CHANNELS):
        super().__init__()
        if len(stage_blocks) != len(INFLATE) or min(stage_blocks) < 1:
            raise ValueError(f"SlowOnly R3D has {len(INFLATE)} stages of at least one block; got "
                             f"stage_blocks={list(stage_blocks)}")
        self.stage_blocks, self.base_channels = tuple(int(n) for n in stage_blocks), int(base_channels)
        self.conv1 = ConvModule(3, base_channels, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3))
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        inplanes = base_channels
        for i, (blocks, stride, inflate) in enumerate(zip(self.stage_blocks, SPATIAL_STRIDES, INFLATE)):
            planes = base_channels * 2 ** i
            layer = [Bottleneck3d(inplanes, planes, stride, inflate,
                                  downsample=stride != 1 or inplanes != planes * EXPANSION)]
            layer += [Bottleneck3d(planes * EXPANSION, planes, 1, inflate) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = planes * EXPANSION
        self.feat_dim = inplanes

    @property
    def temporal_reach(self) -> int:
        """How many frames on each side of frame k token k sees: one per inflated block (R3D-50: 6 + 3 = 9)."""
        return sum(blocks for blocks, inflate in zip(self.stage_blocks, INFLATE) if inflate)

    def forward(self, video: Tensor) -> Tensor:
        """video (N, 3, T, H, W), axis 2 time → features (N, feat_dim, T), the spatial mean of layer4's map."""
        x = self.maxpool(self.conv1(video))
        for i in range(len(self.stage_blocks)):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(-2, -1))


class CAVPVideo(nn.Module):
    """CAVP's video branch: ``encode_video(video, normalize=True, pool=False)`` of ``CAVP_Inference``.

    Use :func:`load_cavp_video` for the Diff-Foley weights; the constructor alone gives random weights (tests,
    ``CAVPVideo(**TINY_CAVP_VIDEO)``).

    Args:
        stage_blocks, base_channels: see :class:`ResNet3dSlowOnly` (official: 3, 4, 6, 3 and 64).
        embed_dim: D, the output width of ``video_project_head`` (official: 512).
    """

    def __init__(self, stage_blocks: Sequence[int] = STAGE_BLOCKS, base_channels: int = BASE_CHANNELS,
                 embed_dim: int = EMBED_DIM):
        super().__init__()
        self.video_encoder = ResNet3dSlowOnly(stage_blocks, base_channels)
        self.video_project_head = nn.Linear(self.video_encoder.feat_dim, embed_dim)

    @property
    def embed_dim(self) -> int:
        return self.video_project_head.out_features

    def forward(self, video: Tensor) -> Tensor:
        """video (N, T, 3, H, W) float in [0, 1], axis 1 time → tokens (N, T, D), unit L2 norm over D."""
        features = self.video_encoder(video.permute(0, 2, 1, 3, 4))  # (N, feat_dim, T)
        return F.normalize(self.video_project_head(features.transpose(1, 2)), dim=-1)

def tiny_cavp_video() -> CAVPVideo:
    """A random :class:`CAVPVideo` of ``TINY_CAVP_VIDEO`` sizes (one block per stage, base width 4, D = 16) with
    non-trivial BatchNorm statistics and affine parameters, so a wrong normalisation axis or order shows up; seeded
    by the caller."""
    model = CAVPVideo(**TINY_CAVP_VIDEO)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


__all__ = ["BASE_CHANNELS", "EMBED_DIM", "INFLATE", "STAGE_BLOCKS", "TINY_CAVP_VIDEO", "CAVPVideo", "ResNet3dSlowOnly",
           "tiny_cavp_video"]
