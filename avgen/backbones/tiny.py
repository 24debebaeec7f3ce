"""Tiny random-initialised twins of the backbones, written with ``save_pretrained``.

Each twin has the classes, the folder layout and the block structure of the published original
(the connector positions of the joint model depend on the block layout), with a few channels, so
``scale=tiny`` runs every code path on a CPU in seconds and loads through the same
``from_pretrained`` calls as the paper scale. Weights are seeded: a folder written twice holds the
same bytes, because avgen checkpoints leave out frozen weights and rebuild them from the config.

Tokenizers are made here too, without downloads: byte-level BPE vocabularies with every one of the
256 byte symbols and no merges, so any text (any script, emoji) tokenises to ids within the vocab.

:func:`materialize` writes a twin once into ``<root>/<name>-v<TINY_VERSION>``; bump
``TINY_VERSION`` whenever a builder's output changes, so stale folders are not reused.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNet3DConditionModel
from diffusers.models.resnet import TemporalConvLayer
from tokenizers import pre_tokenizers
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    GPT2Tokenizer,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from avgen.pretrained import quiet_loading

TINY_VERSION = 3  # 3: tiny:cavp holds CAVP's video branch too
SEED = 0

# The 256 printable symbols byte-level BPE uses for the bytes 0-255, in a fixed order.
BYTE_SYMBOLS = sorted(pre_tokenizers.ByteLevel.alphabet())

# Shared by the video twin's UNets and motion modules: channel counts per block, and a GroupNorm
# group count dividing all of them.
VIDEO_CHANNELS = (32, 32, 64, 64)
AUDIO_CHANNELS = (32, 32, 64, 64)
NORM_GROUPS = 8
CLIP_DIM = 32   # CLIP text hidden size = the video UNet's cross-attention width
CLAP_DIM = 32   # CLAP text projection = the audio UNet's class-embedding input
CLAP_MAX_LENGTH = 32


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """Byte-level BPE CLIPTokenizer: ``<|startoftext|>`` 0, ``<|endoftext|>`` 1 (also padding), then the
    256 byte symbols and their end-of-word (``</w>``) forms; no merges."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({symbol + suffix: len(vocab) + i for i, symbol in enumerate(BYTE_SYMBOLS)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def roberta_tokenizer(model_max_length: int = CLAP_MAX_LENGTH) -> RobertaTokenizer:
    """Byte-level BPE RobertaTokenizer: RoBERTa's special tokens ``<s> <pad> </s> <unk> <mask>`` (ids 0-4),
    then the 256 byte symbols; no merges."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({symbol: len(vocab) + i for i, symbol in enumerate(BYTE_SYMBOLS)})
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def gpt2_tokenizer(model_max_length: int = 1024) -> GPT2Tokenizer:
    """Byte-level BPE GPT2Tokenizer: the 256 byte symbols (ids 0-255, ``!`` at 0 as in GPT-2's vocabulary, the pad
    token MS-CLAP chooses), then ``<|endoftext|>`` (256, GPT-2's bos/eos/unk); no merges."""
    vocab = {symbol: i for i, symbol in enumerate(BYTE_SYMBOLS)}
    vocab["<|endoftext|>"] = len(vocab)
    return GPT2Tokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def save_tiny_sd_vae(folder: str | os.PathLike) -> None:
    """The Stable Diffusion VAE's classes and latent format, small: RGB → 4 latent channels, 2 blocks (frames
    downsampled 2×: 32×32 → 16×16 latents), SD's scaling factor 0.18215."""
    torch.manual_seed(SEED)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=NORM_GROUPS, sample_size=32,
        scaling_factor=0.18215,
    ).save_pretrained(folder)


def save_tiny_clip_text(folder: str | os.PathLike) -> None:
    """``text_encoder/`` (a 2-layer CLIP text model, hidden size ``CLIP_DIM``) and ``tokenizer/``
    (:func:`clip_tokenizer`) under ``folder``."""
    folder = Path(folder)
    tokenizer = clip_tokenizer()
    torch.manual_seed(SEED)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLIP_DIM, intermediate_size=2 * CLIP_DIM, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=CLIP_DIM,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")


def save_tiny_animatediff(folder: str | os.PathLike, channels: tuple[int, ...] = VIDEO_CHANNELS,
                          layers_per_block: int = 1, heads: int = 2) -> None:
    """An SD1.5-layout folder (unet, vae, text_encoder, tokenizer, scheduler) plus ``motion_adapter/``.

    UNet: SD1.5's blocks (3 cross-attention down blocks + a plain one, mirrored up) with
    ``channels`` (default ``VIDEO_CHANNELS``), ``layers_per_block`` and ``heads`` (also the motion
    adapter's), 32-wide cross-attention. VAE: 2 blocks, so
    frames are downsampled 2× (32×32 → 16×16 latents), 4 latent channels, SD's scaling factor.
    Scheduler: AnimateDiff's DDIM settings.
    """
    folder = Path(folder)
    torch.manual_seed(SEED)
    UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=channels, layers_per_block=layers_per_block, attention_head_dim=heads,
        cross_attention_dim=CLIP_DIM, norm_num_groups=NORM_GROUPS,
    ).save_pretrained(folder / "unet")
    torch.manual_seed(SEED)
    # motion_layers_per_block must equal the UNet's layers_per_block for from_unet2d.
    MotionAdapter(
        block_out_channels=channels, motion_layers_per_block=layers_per_block, motion_num_attention_heads=heads,
        motion_norm_num_groups=NORM_GROUPS, motion_max_seq_length=32, use_motion_mid_block=True,
    ).save_pretrained(folder / "motion_adapter")
    save_tiny_sd_vae(folder / "vae")
    save_tiny_clip_text(folder)
    DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="linspace", prediction_type="epsilon",
    ).save_pretrained(folder / "scheduler")


def save_tiny_audioldm(folder: str | os.PathLike, channels: tuple[int, ...] = AUDIO_CHANNELS,
                       layers_per_block: int = 1, heads: int = 2) -> None:
    """A ``cvssp/audioldm-m-full``-layout folder (unet, vae, text_encoder, tokenizer, vocoder, scheduler).

    UNet (``channels``, ``layers_per_block``, ``heads`` as for the video twin): AudioLDM's blocks as
    its diffusers conversion builds them (attention at the 2×, 4× and 8×
    downsampled levels: a plain down block then 3 attention blocks, mirrored up), self-attention only
    (``cross_attention_dim`` = the block widths, run with ``encoder_hidden_states=None``), conditioned
    on the CLAP text embedding through a projected class embedding concatenated to the time
    embedding. VAE: 1 → 8 latent channels, 3 blocks (4× down: 64 mel bins → 16). Vocoder: HiFi-GAN
    with AudioLDM's upsampling (5·4·2·2·2 = 160 = the mel hop) and a few channels.
    """
    folder = Path(folder)
    torch.manual_seed(SEED)
    UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        block_out_channels=channels, layers_per_block=layers_per_block, attention_head_dim=heads,
        cross_attention_dim=channels, norm_num_groups=NORM_GROUPS,
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=CLAP_DIM,
        class_embeddings_concat=True,
    ).save_pretrained(folder / "unet")
    torch.manual_seed(SEED)
    AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=NORM_GROUPS, sample_size=64,
        scaling_factor=0.9,
    ).save_pretrained(folder / "vae")
    tokenizer = roberta_tokenizer()
    torch.manual_seed(SEED)
    # RoBERTa positions start after padding_idx (1), so the table holds max_length + 2 rows.
    ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLAP_DIM, intermediate_size=2 * CLAP_DIM, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLAP_MAX_LENGTH + 2, projection_dim=CLAP_DIM,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
    )).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    torch.manual_seed(SEED)
    SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16_000, upsample_initial_channel=64, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    )).save_pretrained(folder / "vocoder")
    DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    ).save_pretrained(folder / "scheduler")


def save_tiny_zeroscope(folder: str | os.PathLike, channels: tuple[int, ...] = VIDEO_CHANNELS,
                        layers_per_block: int = 1, head_dim: int = 8) -> None:
    """A ``cerspense/zeroscope_v2_576w``-layout folder (unet, vae, text_encoder, tokenizer, scheduler).

    UNet: ``UNet3DConditionModel`` with zeroscope's blocks (3 cross-attention down blocks + a plain
    one, mirrored up, a cross-attention mid block) at ``channels``, ``layers_per_block``,
    ``head_dim`` channels per spatial attention head (UNet3D's ``attention_head_dim``), 32-wide
    cross-attention. ``TemporalConvLayer`` zero-initialises its last convolution (an identity at
    init); a trained model's is not, and the tests need every temporal layer to mix frames, so it
    gets PyTorch's default init here. VAE and text encoder as the AnimateDiff twin's (zeroscope's are
    SD2's VAE and OpenCLIP text tower, the same classes). Scheduler: zeroscope's stored config, a
    ``DDIMScheduler`` with SD's scaled-linear betas 0.00085–0.012, ε-prediction, no clipping,
    ``set_alpha_to_one`` False, ``steps_offset`` 1.
    """
    folder = Path(folder)
    torch.manual_seed(SEED)
    unet = UNet3DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        block_out_channels=channels, layers_per_block=layers_per_block, attention_head_dim=head_dim,
        cross_attention_dim=CLIP_DIM, norm_num_groups=NORM_GROUPS,
    )
    for module in unet.modules():
        if isinstance(module, TemporalConvLayer):
            module.conv4[-1].reset_parameters()
    unet.save_pretrained(folder / "unet")
    save_tiny_sd_vae(folder / "vae")
    save_tiny_clip_text(folder)
    DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    ).save_pretrained(folder / "scheduler")


# Wider twins for benchmarks that need the U-Nets to dominate the cost, as at paper scale.
SMALL = {"channels": (64, 128, 256, 256), "layers_per_block": 2, "heads": 8}

# tiny:<name> sources and the builder that writes each.
def save_tiny_beats(folder: str | os.PathLike) -> None:
    """``BEATs_tiny.pt``: a 2-layer, 32-wide BEATs (``BEATsConfig.tiny()``) in the official checkpoint
    format, read by the same loader as ``BEATs_iter3_plus_AS2M*.pt``."""
    from avgen.encoders.beats import BEATs, BEATsConfig, save_official_format

    torch.manual_seed(SEED)
    save_official_format(BEATs(BEATsConfig.tiny()), Path(folder) / "BEATs_tiny.pt")


def save_tiny_cavp(folder: str | os.PathLike) -> None:
    """``cavp_tiny.ckpt``: both branches of CAVP in the layout of ``cavp_epoch66.ckpt``, so one file serves
    TempoTokens (the audio branch, ``TINY_CAVP`` widths and the real front end) and VTA-LDM (the video branch,
    ``TINY_CAVP_VIDEO`` sizes), each read by the same loader as the real file."""
    from avgen.encoders.cavp import TINY_CAVP, TINY_FILE, CAVPAudio, save_tiny_format
    from avgen.encoders.slowonly import tiny_cavp_video

    torch.manual_seed(SEED)
    audio = CAVPAudio(**TINY_CAVP)  # first: the audio twin holds the weights it held before the video branch
    save_tiny_format([audio, tiny_cavp_video()], Path(folder) / TINY_FILE)


def save_tiny_clip_vision(folder: str | os.PathLike) -> None:
    """``openai/clip-vit-large-patch14``'s layout, small: a ``CLIPModel`` (``config.json`` + ``model.safetensors``)
    with both towers, as the hub repository holds them, so the CLIP4Clip loader's path from a full CLIP folder to
    its vision tower runs. Vision: ViT-L/14's patch size 14 and image size 224 (so the real preprocessing runs),
    2 layers 32 wide, projection 16 (≠ the width, as 768 ≠ 1024 in ViT-L/14); text: 2 layers 32 wide, with its
    tokenizer (:func:`clip_tokenizer`) beside it as in the hub repository (VTA-LDM's text condition)."""
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "projection_dim": 16}
    tokenizer = clip_tokenizer()
    torch.manual_seed(SEED)
    CLIPModel(CLIPConfig(
        text_config={**tower, "vocab_size": len(tokenizer), "max_position_embeddings": 77, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tower, "image_size": 224, "patch_size": 14}, projection_dim=16,
    )).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


#: name → writer of the tiny twin; an encoder module whose twin is written by its own code registers it on import
#: (``TINY_BUILDERS["vivit"] = save_tiny_vivit`` in avgen/encoders/vivit.py: this module never imports encoders)
TINY_BUILDERS: dict[str, Callable[[str | os.PathLike], None]] = {
    "animatediff": save_tiny_animatediff,
    "audioldm": save_tiny_audioldm,
    "animatediff_small": functools.partial(save_tiny_animatediff, **SMALL),
    "audioldm_small": functools.partial(save_tiny_audioldm, **SMALL),
    "zeroscope": save_tiny_zeroscope,
    "zeroscope_small": functools.partial(save_tiny_zeroscope, channels=SMALL["channels"],
                                         layers_per_block=SMALL["layers_per_block"]),
    "beats": save_tiny_beats,
    "cavp": save_tiny_cavp,
    "clip4clip": save_tiny_clip_vision,
}


def materialize(name: str, root: str | os.PathLike) -> Path:
    """``<root>/<name>-v<TINY_VERSION>``, written by ``TINY_BUILDERS[name]`` unless it already exists
    (:func:`build_folder`)."""
    return build_folder(Path(root) / f"{name}-v{TINY_VERSION}", TINY_BUILDERS[name])


def build_folder(final: Path, build: Callable[[Path], None]) -> Path:
    """``final``, written by ``build(folder)`` unless it already exists; returns ``final``.

    The folder is built in a temporary folder beside it and renamed into place, so concurrent DDP
    ranks and an interrupted write never leave a half-written folder; an existing one is reused (it
    holds the same bytes: the builders are deterministic). ``build`` runs with the libraries' loading
    chatter silenced and on a fork of torch's global random state: the builders seed it, and the caller's
    random state (which initialises its trainable modules) must not depend on whether the folder had to
    be written.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{uuid.uuid4().hex}"
    partial.mkdir()
    try:
        with quiet_loading(), torch.random.fork_rng(devices=[]):
            build(partial)
        os.rename(partial, final)
    except OSError:
        # Another process renamed its copy into place first; it holds the same bytes.
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final
