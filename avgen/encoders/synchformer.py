"""Synchformer (Iashin et al. 2024, "Synchformer: Efficient Synchronization from Sparse Cues"), the
audio-visual offset classifier of the DeSync metric, as av-benchmark runs it, with its input transforms.

Written here from hkchengrex/av-benchmark@050a5cd ``av_bench/synchformer/{synchformer,motionformer,
video_model_builder,vit_helper,ast,transformer}.py`` and ``hf_src/modeling_ast.py`` (a copy of
transformers 4's Audio Spectrogram Transformer). The state-dict keys are the published ones, so
:func:`load_synchformer` reads MMAudio's ``synchformer_state_dict.pth`` (a plain state dict that
av-benchmark loads with ``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``,
``av_bench/evaluate.py:28-30``) and the original ``24-01-04T16-39-21.pt`` (``{"model": <the same keys>,
...}``, v-iashin/Synchformer@b66668a ``example.py:133-134``) when that file loads with
``weights_only=True``. The AST is written here under its transformers-4 names
(``afeat_extractor.ast.encoder.layer.0.attention.attention.query``): transformers 5 renamed them.

Network (sizes of the published file; :class:`Synchformer` takes them as arguments, the loader reads
width, depths and image size from the file):

- ``vfeat_extractor`` (:class:`MotionFormer`): a segment of 16 frames (3, 16, 224, 224) in [-1, 1] →
  ``Conv3d(3, 768, (2, 16, 16), stride (2, 16, 16))`` → 8 × 14 × 14 tokens + CLS; positions = the spatial
  ``pos_embed`` (1, 197, 768) tiled over the 8 time slots + ``temp_embed`` (1, 8, 768) repeated over the
  196 patches (``video_model_builder.py:226-233``); 12 divided space-time blocks (:class:`DividedSpaceTimeBlock`,
  ``vit_helper.py:119-186``, 12 heads); ``norm`` (LayerNorm eps 1e-6) on the patch tokens (CLS dropped,
  ``motionformer.py:225-227``); per time slot a :class:`ClsEncoderLayer` over its 196 patches
  (``spatial_attn_agg``, ``motionformer.py:147-150,340-365``) → (8, 768). The unused 2-D
  ``patch_embed.proj`` is in the file (``motionformer.py:194-196``) and is kept.
- ``afeat_extractor`` (:class:`AudioFeatures`): a log-mel segment (128 mel, 66 frames) → AST
  (``ASTConfig()`` defaults: 768 wide, 12 layers, 12 heads, MLP 3072, GELU, LayerNorm eps 1e-12, patch 16,
  strides 10/10, ``max_length=66`` → 12 × 6 patches, position embeddings cut to 74, ``ast.py:221-227``);
  CLS and distillation tokens dropped; per time column a :class:`ClsEncoderLayer` over its 12 frequency
  patches (``freq_attn_agg``, ``ast.py:235-261``) → (6, 768).
- ``vproj``/``aproj`` Linear(768, 768) and ``transformer`` (:class:`GlobalTransformer`,
  ``transformer.py:9-68``): ``[OFF, 14·8 video tokens, MOD, 14·6 audio tokens]`` + learnt positions
  (1, 198, 768), 3 minGPT blocks (8 heads), ``ln_f``, ``off_head`` Linear(768, 21) on the OFF token: the
  logits of the 21 offsets −2.0 … +2.0 s (:data:`OFFSET_GRID_SECONDS`).

Dropouts and drop path are inference no-ops and are not built.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from avgen.encoders.base import FeatureExtractor
from avgen.errors import WeightsFileError
from avgen.pretrained import ORIGINS, require_file

# ------------------------------------------------------------------------------------------ constants
# fixed by the published model and the harness (av-benchmark@050a5cd unless said otherwise)
VIDEO_FPS = 25                 # av_bench/data/video_dataset.py:19 (_SYNC_FPS)
IMAGE_SIZE = 224               # video_dataset.py:19 (_SYNC_SIZE); divided_224_16x4.yaml TRAIN_CROP_SIZE
VIDEO_MEAN = VIDEO_STD = 0.5   # video_dataset.py:56 Normalize(0.5, 0.5): [0, 1] → [-1, 1]
SEGMENT_FRAMES = 16            # extract_video.py:44 segment_size
SEGMENT_STEP_FRAMES = 8        # extract_video.py:45 step_size
PATCH_SIZE = 16                # divided_224_16x4.yaml VIT.PATCH_SIZE
TEMPORAL_PATCH = 2             # divided_224_16x4.yaml VIT.PATCH_SIZE_TEMP: 16 frames → 8 time slots
AUDIO_RATE = 16000             # av_bench/data/audio_dataset.py:198
SEGMENT_SAMPLES = 10240        # av_bench/extract.py:23 (0.64 s)
SEGMENT_STEP_SAMPLES = 5120    # av_bench/extract.py:24 (0.32 s)
# torchaudio.transforms.MelSpectrogram of av_bench/extraction_models.py (the harness's sync_mel_spectrogram);
# the other arguments are torchaudio's defaults: periodic Hann, power 2, center, reflect, HTK mel, no norm
MEL_ARGS = {"sample_rate": AUDIO_RATE, "n_fft": 1024, "win_length": 400, "hop_length": 160, "n_mels": 128}
LOG_EPS = 1e-6                 # av_bench/extract.py:31
SPEC_FRAMES = 66               # extract.py:32 pad_or_truncate(x, 66); synchformer.py:44 max_spec_t=66
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974   # extract.py:34-36: x ← (x − mean) / (2 · std)
AST_PATCH, AST_STRIDE = 16, 10  # ASTConfig defaults (patch_size, frequency_stride = time_stride)
WINDOW_SEGMENTS = 14           # transformer.py:35: 198 = 1 + 14·8 + 1 + 14·6 positions; evaluate.py:180,185
OFFSET_GRID_SECONDS = tuple(round(-2.0 + 0.2 * k, 10) for k in range(21))  # synchformer.py:12-30, evaluate.py:177
#: the published sizes (synchformer.py:38-57, divided_224_16x4.yaml VIT.*, ASTConfig defaults)
PUBLISHED_SIZES = {"width": 768, "video_depth": 12, "video_heads": 12, "audio_depth": 12, "audio_heads": 12,
                   "sync_depth": 3, "sync_heads": 8, "image_size": IMAGE_SIZE, "n_mels": 128}
TINY_SYNCHFORMER = {"width": 16, "video_depth": 1, "video_heads": 2, "audio_depth": 1, "audio_heads": 2,
                    "sync_depth": 1, "sync_heads": 2, "image_size": 32, "n_mels": 128}


# ------------------------------------------------------------------------------------- video tower


class DividedAttention(nn.Module):
    """MotionFormer's divided attention (``vit_helper.py:36-116``) with the original keys ``qkv``, ``proj``.

    Tokens (N, 1 + F·P, D) = CLS then frame-major patches (frame f, patch p at ``1 + f·P + p``). The CLS
    query attends to every token; a patch query attends to the CLS token and the patches of its group:
    ``over="time"`` the same patch in the F frames, ``over="space"`` the P patches of its frame. Scale d^-0.5.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, over: str) -> torch.Tensor:
        n, length, dim = x.shape
        h = self.num_heads
        patches = (length - 1) // frames
        q, k, v = (t.reshape(n, length, h, dim // h).transpose(1, 2).reshape(n * h, length, dim // h)
                   for t in self.qkv(x).chunk(3, dim=-1))
        q = q * (dim // h) ** -0.5
        cls_out = torch.softmax(q[:, :1] @ k.transpose(1, 2), dim=-1) @ v  # (N·h, 1, d)

        def grouped(t: torch.Tensor) -> torch.Tensor:  # (N·h, F·P, d) → (N·h·G, L, d)
            t = t.reshape(n * h, frames, patches, -1)
            if over == "time":
                t = t.transpose(1, 2)  # '(b) (f n) d -> (b n) f d'
            return t.reshape(-1, t.shape[2], t.shape[3])

        q_, k_, v_ = grouped(q[:, 1:]), grouped(k[:, 1:]), grouped(v[:, 1:])
        groups = q_.shape[0] // (n * h)
        k_ = torch.cat([k[:, :1].repeat_interleave(groups, 0), k_], dim=1)
        v_ = torch.cat([v[:, :1].repeat_interleave(groups, 0), v_], dim=1)
        out = torch.softmax(q_ @ k_.transpose(1, 2), dim=-1) @ v_  # (N·h·G, L, d)
        if over == "time":
            out = out.reshape(n * h, patches, frames, -1).transpose(1, 2)
        out = torch.cat([cls_out, out.reshape(n * h, frames * patches, -1)], dim=1)
        out = out.reshape(n, h, length, dim // h).transpose(1, 2).reshape(n, length, dim)
        return self.proj(out)


class Mlp(nn.Module):
    """``fc1`` → GELU → ``fc2`` (``vit_helper.py:189-211``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """``x + timeattn(norm3(x))``, then ``+ attn(norm1(·))`` over space, then ``+ mlp(norm2(·))``
    (``vit_helper.py:163-186``); LayerNorms eps 1e-6 (``video_model_builder.py:40``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DividedAttention(dim, num_heads)
        self.timeattn = DividedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, over="time")
        x = x + self.attn(self.norm1(x), frames, over="space")
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Holds ``proj``; a Conv2d for the unused 2-D stem (in the file), a Conv3d for the 3-D one."""

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj


class ClsEncoderLayer(nn.TransformerEncoderLayer):
    """Synchformer's ``BaseEncoderLayer`` (``motionformer.py:259-324``) as used by ``spatial_attn_agg`` and
    ``freq_attn_agg``: a learnt ``cls_token`` prepended, one pre-norm ``nn.TransformerEncoderLayer`` (GELU,
    LayerNorm eps 1e-6, MLP ×4, batch first) and the CLS output. (N, L, D) → (N, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__(dim, num_heads, dim * mlp_ratio, dropout=0.0, activation=nn.GELU(), layer_norm_eps=1e-6,
                         batch_first=True, norm_first=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


class MotionFormer(nn.Module):
    """The video feature extractor: segments (N, 3, 16, S, S) float in [-1, 1] (axis 2 is time) →
    (N, 8, width) float, one token per pair of frames. Keys as ``vfeat_extractor.*`` of the file."""

    def __init__(self, width: int = 768, depth: int = 12, num_heads: int = 12, image_size: int = IMAGE_SIZE):
        super().__init__()
        if image_size % PATCH_SIZE:
            raise ValueError(f"MotionFormer image_size must be a multiple of {PATCH_SIZE}, got {image_size}")
        self.grid = image_size // PATCH_SIZE
        self.time_slots = SEGMENT_FRAMES // TEMPORAL_PATCH
        self.patch_embed = PatchEmbed(nn.Conv2d(3, width, PATCH_SIZE, stride=PATCH_SIZE))
        self.patch_embed_3d = PatchEmbed(nn.Conv3d(3, width, (TEMPORAL_PATCH, PATCH_SIZE, PATCH_SIZE),
                                                   stride=(TEMPORAL_PATCH, PATCH_SIZE, PATCH_SIZE)))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2 + 1, width))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.time_slots, width))
        self.blocks = nn.ModuleList([DividedSpaceTimeBlock(width, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.spatial_attn_agg = ClsEncoderLayer(width, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.patch_embed_3d.proj(x).flatten(2).transpose(1, 2)  # (N, 8·P, D), frame-major
        patches = self.grid ** 2
        pos = self.pos_embed[:, 1:].repeat(1, self.time_slots, 1) + self.temp_embed.repeat_interleave(patches, 1)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + torch.cat([self.pos_embed[:, :1], pos], dim=1)
        for block in self.blocks:
            x = block(x, self.time_slots)
        x = self.norm(x[:, 1:])  # (N, 8·P, D)
        x = x.reshape(n * self.time_slots, patches, -1)
        return self.spatial_attn_agg(x).reshape(n, self.time_slots, -1)


# ------------------------------------------------------------------------------------- audio tower


class ASTEmbeddings(nn.Module):
    """``cls_token``, ``distillation_token``, ``position_embeddings`` (1, 2 + f·t, D) and
    ``patch_embeddings.projection`` Conv2d(1, D, 16, stride 10) (``modeling_ast.py:57-118``)."""

    def __init__(self, width: int, n_mels: int, spec_frames: int = SPEC_FRAMES):
        super().__init__()
        self.freq = (n_mels - AST_PATCH) // AST_STRIDE + 1
        self.time = (spec_frames - AST_PATCH) // AST_STRIDE + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, width))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(1, width, AST_PATCH, stride=AST_STRIDE)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.freq * self.time + 2, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, F) → (N, 2 + f·t, D); patches frequency-major (patch ``(i, j)`` at ``2 + i·t + j``)."""
        x = self.patch_embeddings.projection(x.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
        tokens = [self.cls_token.expand(x.shape[0], -1, -1), self.distillation_token.expand(x.shape[0], -1, -1), x]
        return torch.cat(tokens, dim=1) + self.position_embeddings


class ASTLayer(nn.Module):
    """transformers-4 ``ASTLayer`` (``modeling_ast.py:121-323``) under its key names: pre-norm attention
    (``attention.attention.{query,key,value}``, ``attention.output.dense``) and MLP
    (``intermediate.dense``, GELU, ``output.dense``), LayerNorms eps 1e-12."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.attention = nn.Module()
        self.attention.attention = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.attention, name, nn.Linear(width, width))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(width, width)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(width, width * mlp_ratio)
        self.output = nn.Module()
        self.output.dense = nn.Linear(width * mlp_ratio, width)
        self.layernorm_before = nn.LayerNorm(width, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        h, att = self.num_heads, self.attention.attention
        y = self.layernorm_before(x)
        q, k, v = (m(y).reshape(n, length, h, width // h).transpose(1, 2) for m in (att.query, att.key, att.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // h)
        y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
        x = x + self.attention.output.dense(y)
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ASTModel(nn.Module):
    """``embeddings``, ``encoder.layer.N`` and the final ``layernorm`` (eps 1e-12) (``modeling_ast.py:456-556``)."""

    def __init__(self, width: int, depth: int, num_heads: int, n_mels: int):
        super().__init__()
        self.embeddings = ASTEmbeddings(width, n_mels)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([ASTLayer(width, num_heads) for _ in range(depth)])
        self.layernorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(x)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AudioFeatures(nn.Module):
    """The audio feature extractor (Synchformer's ``AST`` wrapper, ``ast.py:11-232``): log-mel segments
    (N, T=66, F=n_mels) → (N, t=6, width). Keys as ``afeat_extractor.{ast,freq_attn_agg}.*`` of the file."""

    def __init__(self, width: int = 768, depth: int = 12, num_heads: int = 12, n_mels: int = 128):
        super().__init__()
        self.ast = ASTModel(width, depth, num_heads, n_mels)
        self.freq_attn_agg = ClsEncoderLayer(width, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        f, t = self.ast.embeddings.freq, self.ast.embeddings.time
        x = self.ast(x)[:, 2:]  # (N, f·t, D), CLS and distillation tokens dropped (ast.py:213-214)
        x = x.reshape(n, f, t, -1).transpose(1, 2).reshape(n * t, f, -1)  # per time column (ast.py:248-249)
        return self.freq_attn_agg(x).reshape(n, t, -1)


# ---------------------------------------------------------------------------------- sync transformer


class SelfAttention(nn.Module):
    """minGPT attention without a mask (``transformer.py:91-139``): ``key``, ``query``, ``value``, ``proj``."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.key = nn.Linear(width, width)
        self.query = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        h = self.num_heads
        q, k, v = (m(x).reshape(n, length, h, width // h).transpose(1, 2) for m in (self.query, self.key, self.value))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(width // h), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(n, length, width))


class Block(nn.Module):
    """``x + attn(ln1(x))``, ``x + mlp(ln2(x))``; ``mlp = [Linear(D, 4D), GELU, Linear(4D, D), Dropout]``
    (``transformer.py:142-160``); LayerNorms eps 1e-5."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.ln2 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, num_heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GlobalTransformer(nn.Module):
    """The synchronisation transformer (``transformer.py:9-68``): video tokens (B, Sv, D) and audio tokens
    (B, Sa, D) → offset logits (B, classes) from ``[OFF, v…, MOD, a…]`` + ``pos_emb_cfg.pos_emb``."""

    def __init__(self, width: int = 768, depth: int = 3, num_heads: int = 8, positions: int = 198,
                 classes: int = len(OFFSET_GRID_SECONDS)):
        super().__init__()
        self.vis_in_lnorm = nn.LayerNorm(width)
        self.aud_in_lnorm = nn.LayerNorm(width)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, width))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_emb_cfg = nn.Module()
        self.pos_emb_cfg.pos_emb = nn.Parameter(torch.zeros(1, positions, width))
        self.blocks = nn.Sequential(*[Block(width, num_heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.off_head = nn.Linear(width, classes)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(v), self.MOD_tok.expand(b, -1, -1),
                       self.aud_in_lnorm(a)], dim=1)
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


# --------------------------------------------------------------------------------------- the model


class Synchformer(FeatureExtractor):
    """Synchformer with the published keys (``synchformer.py:33-92``). Frozen, eval mode.

    Args (defaults: the published model, :data:`PUBLISHED_SIZES`): ``width`` (all towers), ``video_depth``
    / ``video_heads`` (MotionFormer), ``audio_depth`` / ``audio_heads`` (AST), ``sync_depth`` /
    ``sync_heads`` (global transformer), ``image_size`` (video side, a multiple of 16), ``n_mels`` (mel
    bins of the audio input), ``window_segments`` (segments per comparison; sets the global positions).
    """

    name = "synchformer"

    def __init__(self, width: int = 768, video_depth: int = 12, video_heads: int = 12, audio_depth: int = 12,
                 audio_heads: int = 12, sync_depth: int = 3, sync_heads: int = 8, image_size: int = IMAGE_SIZE,
                 n_mels: int = 128, window_segments: int = WINDOW_SEGMENTS):
        super().__init__()
        self.sizes = {"width": width, "video_depth": video_depth, "video_heads": video_heads,
                      "audio_depth": audio_depth, "audio_heads": audio_heads, "sync_depth": sync_depth,
                      "sync_heads": sync_heads, "image_size": image_size, "n_mels": n_mels,
                      "window_segments": window_segments}
        self.image_size, self.n_mels, self.window_segments = image_size, n_mels, window_segments
        self.vfeat_extractor = MotionFormer(width, video_depth, video_heads, image_size)
        self.afeat_extractor = AudioFeatures(width, audio_depth, audio_heads, n_mels)
        self.vproj = nn.Linear(width, width)
        self.aproj = nn.Linear(width, width)
        self.video_tokens = self.vfeat_extractor.time_slots
        self.audio_tokens = self.afeat_extractor.ast.embeddings.time
        positions = 2 + window_segments * (self.video_tokens + self.audio_tokens)
        self.transformer = GlobalTransformer(width, sync_depth, sync_heads, positions)
        self.num_features = width
        self._freeze()

    @classmethod
    def tiny(cls) -> Synchformer:
        """Tiny widths and depths (:data:`TINY_SYNCHFORMER`, 32-px frames), the same code path (tests)."""
        return cls(**TINY_SYNCHFORMER)

    def config(self) -> dict[str, Any]:
        return dict(self.sizes)

    @torch.no_grad()
    def extract_vfeats(self, video: torch.Tensor) -> torch.Tensor:
        """Video segments (B, S, 16, 3, image_size, image_size) float in [-1, 1] (:func:`sync_video_segments`;
        axis 2 is time) → (B, S, 8, width) float32 (``synchformer.py:76-82``)."""
        b, s, t, c, h, w = video.shape
        if (t, c, h, w) != (SEGMENT_FRAMES, 3, self.image_size, self.image_size):
            raise ValueError(f"Synchformer video segments must be (B, S, {SEGMENT_FRAMES}, 3, {self.image_size}, "
                             f"{self.image_size}), got {tuple(video.shape)}")
        x = self.vfeat_extractor(video.reshape(b * s, t, c, h, w).transpose(1, 2).float())
        return x.reshape(b, s, *x.shape[1:])

    @torch.no_grad()
    def extract_afeats(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio segments (B, S, n_mels, 66) normalised log-mel (:func:`sync_audio_segments`; axis 3 is time)
        → (B, S, 6, width) float32 (``synchformer.py:84-89``)."""
        b, s, f, t = audio.shape
        if (f, t) != (self.n_mels, SPEC_FRAMES):
            raise ValueError(f"Synchformer audio segments must be (B, S, {self.n_mels}, {SPEC_FRAMES}), got "
                             f"{tuple(audio.shape)}")
        x = self.afeat_extractor(audio.reshape(b * s, f, t).transpose(1, 2).float())
        return x.reshape(b, s, *x.shape[1:])

    @torch.no_grad()
    def compare_v_a(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """Features (B, window_segments, 8, D) and (B, window_segments, 6, D) → offset logits (B, 21)
        (``synchformer.py:59-74``); class k is :data:`OFFSET_GRID_SECONDS` ``[k]``."""
        if vis.shape[1] != self.window_segments or aud.shape[1] != self.window_segments:
            raise ValueError(f"Synchformer compares {self.window_segments} segments at a time (its positions), got "
                             f"{vis.shape[1]} video and {aud.shape[1]} audio segments")
        b = vis.shape[0]
        return self.transformer(self.vproj(vis).reshape(b, -1, vis.shape[-1]),
                                self.aproj(aud).reshape(b, -1, aud.shape[-1]))


# ------------------------------------------------------------------------------------- transforms


def segment_starts(length: int, size: int, step: int) -> list[int]:
    """Starts of the segments ``[start, start + size)`` the harness cuts from ``length`` items:
    ``num = (length − size) // step + 1`` segments at ``0, step, 2·step, …`` (extract.py:22-28,
    extract_video.py:43-50); none when ``length < size``."""
    if length < size:
        return []
    return [i * step for i in range((length - size) // step + 1)]


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) → shorter side ``size``, the longer ``int(size · long / short)``, bicubic with
    antialiasing on the uint8 tensor: torchvision's ``v2.Resize(size, BICUBIC)`` as the harness calls it
    (video_dataset.py:52; torchvision's ``_compute_resized_output_size`` and, on CPU, its native uint8 path
    ``_do_native_uint8_resize_on_cpu`` → ``F.interpolate(uint8, antialias=True)``)."""
    h, w = frames.shape[-2:]
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    return F.interpolate(frames, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)


def centre_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(…, H, W) → (…, size, size) at top ``int(round((H − size) / 2))``, left likewise (torchvision
    ``center_crop``, video_dataset.py:53)."""
    h, w = frames.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frames[..., top:top + size, left:left + size]


def sync_video_segments(frames: np.ndarray | torch.Tensor, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Frames at 25 fps (T, H, W, 3) uint8, already cut to the clip length → segments
    (S, 16, 3, image_size, image_size) float32 in [-1, 1], segment i = frames ``[8i, 8i + 16)``.

    The harness's ``sync_transform`` (video_dataset.py:51-57: short side to ``image_size`` bicubic
    antialiased on uint8, centre crop, /255, ``(x − 0.5) / 0.5``) and partition (extract_video.py:39-50).
    Raises ``ValueError`` when fewer than 16 frames are given.
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"Synchformer video: expected frames (T, H, W, 3) uint8, got {tuple(x.shape)} {x.dtype}")
    starts = segment_starts(x.shape[0], SEGMENT_FRAMES, SEGMENT_STEP_FRAMES)
    if not starts:
        raise ValueError(f"Synchformer video: {x.shape[0]} frames at {VIDEO_FPS} fps, fewer than one segment "
                         f"of {SEGMENT_FRAMES}")
    x = centre_crop(resize_short_side(x.permute(0, 3, 1, 2), image_size), image_size)
    x = (x.float() / 255 - VIDEO_MEAN) / VIDEO_STD
    return torch.stack([x[s:s + SEGMENT_FRAMES] for s in starts])


_MEL: dict[int, torchaudio.transforms.MelSpectrogram] = {}


def sync_audio_segments(wave: np.ndarray | torch.Tensor, n_mels: int = 128) -> torch.Tensor:
    """16-kHz mono audio (N,) float, already cut to the clip length → normalised log-mel segments
    (S, n_mels, 66) float32 (axis 2 is time), segment i = samples ``[5120·i, 5120·i + 10240)`` (0.64 s
    every 0.32 s).

    av_bench/extract.py:18-40: per segment ``MelSpectrogram(16000, n_fft=1024, win_length=400,
    hop_length=160, n_mels)`` (:data:`MEL_ARGS`; 65 frames) → ``log(x + 1e-6)`` → zero-padded to 66 frames in
    the log domain (``pad_or_truncate``, audio_dataset.py:67-80) → ``(x + 4.2677393) / (2 · 4.5689974)``.
    Raises ``ValueError`` for audio shorter than one segment.
    """
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32) if not isinstance(wave, torch.Tensor) else wave).float()
    if x.ndim != 1:
        raise ValueError(f"Synchformer audio: expected mono samples (N,), got {tuple(x.shape)}")
    starts = segment_starts(x.shape[0], SEGMENT_SAMPLES, SEGMENT_STEP_SAMPLES)
    if not starts:
        raise ValueError(f"Synchformer audio: {x.shape[0]} samples at {AUDIO_RATE} Hz, fewer than one segment of "
                         f"{SEGMENT_SAMPLES}")
    if n_mels not in _MEL:
        _MEL[n_mels] = torchaudio.transforms.MelSpectrogram(**{**MEL_ARGS, "n_mels": n_mels})
    mel = _MEL[n_mels].to(x.device)(torch.stack([x[s:s + SEGMENT_SAMPLES] for s in starts]))
    mel = torch.log(mel + LOG_EPS)
    mel = F.pad(mel, (0, SPEC_FRAMES - mel.shape[-1]))
    return (mel - MEL_MEAN) / (2 * MEL_STD)


def sync_audio(audio: np.ndarray | torch.Tensor, sample_rate: int, seconds: float) -> torch.Tensor:
    """A clip's audio (N,) or (C, N) / (N, C) float at ``sample_rate`` → (int(16000 · seconds),) float32:
    mono by the mean over channels, ``torchaudio.functional.resample`` to 16 kHz (the defaults of the
    harness's ``T.Resample``), cut; no DC removal (audio_dataset.py:208-222). A channel axis is the shorter
    one. Raises ``ValueError`` when the audio is shorter than ``seconds``."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, torch.Tensor) else audio).float()
    if x.ndim == 2:
        x = x.mean(dim=0 if x.shape[0] <= x.shape[1] else 1)
    if sample_rate != AUDIO_RATE:
        x = torchaudio.functional.resample(x, sample_rate, AUDIO_RATE)
    need = int(AUDIO_RATE * seconds)
    if x.shape[0] < need:
        raise ValueError(f"DeSync: audio of {x.shape[0] / AUDIO_RATE:.3f} s at 16 kHz, shorter than {seconds} s "
                         f"(evaluate.desync.seconds)")
    return x[:need]


# ---------------------------------------------------------------------------------- weight files


def _count(state: Mapping[str, Any], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def sizes_from_state(state: Mapping[str, Any]) -> dict[str, int]:
    """Width, depths and image size read off a state dict in the published layout. Heads cannot be read off
    weights, nor the mel bins (the AST's 12 frequency patches fit 126 to 135 bins): they keep
    :data:`PUBLISHED_SIZES`' values unless given."""
    sizes: dict[str, int] = {}
    if isinstance(state.get("vproj.weight"), torch.Tensor):
        sizes["width"] = int(state["vproj.weight"].shape[0])
    for key, pattern in (("video_depth", r"vfeat_extractor\.blocks\.(\d+)\."),
                         ("audio_depth", r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\."),
                         ("sync_depth", r"transformer\.blocks\.(\d+)\.")):
        if depth := _count(state, pattern):
            sizes[key] = depth
    pos = state.get("vfeat_extractor.pos_embed")
    if isinstance(pos, torch.Tensor) and pos.ndim == 3:
        grid = math.isqrt(pos.shape[1] - 1)
        if grid * grid == pos.shape[1] - 1:
            sizes["image_size"] = grid * PATCH_SIZE
    return sizes


class SynchformerFileError(WeightsFileError):
    """A Synchformer weight file that cannot be read or does not fit."""


def load_synchformer(path: str | os.PathLike | None, config_key: str = "evaluate.desync.path",
                     **sizes: Any) -> Synchformer:
    """:class:`Synchformer` with the weights of ``path``: MMAudio's ``synchformer_state_dict.pth`` (a plain
    state dict) or the original ``24-01-04T16-39-21.pt`` (``{"model": state dict, ...}``), read with
    ``torch.load(map_location="cpu", weights_only=True)``.

    Width, depths and image size are read off the file (:func:`sizes_from_state`); ``**sizes``
    (constructor arguments) set the rest (heads, mel bins) or override. The keys must equal the model's key for key
    and shape. Raises :class:`~avgen.pretrained.ExtractorWeightsMissing` (no file, naming ``config_key``)
    or :class:`SynchformerFileError` (one line naming the file and ``config_key``: unreadable with
    ``weights_only=True``, not a state dict, or missing / unexpected / mis-shaped keys). The SHA-256 is
    recorded under ``"synchformer"``.
    """
    file = require_file("synchformer", path, config_key)
    origin = ORIGINS["synchformer"]
    where = f"{file} (config key {config_key})"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SynchformerFileError(
            f"{where} cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: {first}); expected "
            f"{origin.file} from {origin.where}, or an original checkpoint re-saved as its plain 'model' state dict"
        ) from exc
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # the original layout (Synchformer example.py:133-134)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SynchformerFileError(f"{where} holds a {type(state).__name__}, not a state dict of tensors; expected "
                                   f"{origin.file} from {origin.where}")
    arguments = {**sizes_from_state(state), **sizes}
    try:
        with torch.device("meta"):
            model = Synchformer(**arguments)
    except (TypeError, ValueError) as exc:
        raise SynchformerFileError(f"{where}: cannot build Synchformer({arguments}): {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

        problems = [f"{len(keys)} {what}: {some(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatched", mismatched)) if keys]
        raise SynchformerFileError(f"{where} does not fit Synchformer({arguments}): {'; '.join(problems)}. Expected "
                                   f"{origin.file}, {origin.what}, from {origin.where}")
    model.load_state_dict(state, strict=True, assign=True)
    model.float()
    model._record("synchformer", file)
    model._freeze()
    return model


def save_official_format(model: Synchformer, path: str | os.PathLike, original: bool = False) -> None:
    """Write ``model``'s weights in the published layout: MMAudio's plain state dict, or with ``original``
    the original checkpoint's ``{"model": state dict, "epoch": 0}`` (tests: tiny "published" files)."""
    state = OrderedDict((k, v.detach().to("cpu").clone().contiguous()) for k, v in model.state_dict().items())
    torch.save({"model": state, "epoch": 0} if original else state, path)
