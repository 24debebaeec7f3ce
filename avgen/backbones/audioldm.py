"""The audio base model of the joint system: AudioLDM (Liu et al. 2023), and its mel front end.

AudioLDM diffuses in the latent space of a VAE trained on log-mel spectrograms treated as
one-channel images ``(B, 1, T, M)``: axis 2 is time (frames), axis 3 the mel bins. Its UNet has no
cross-attention to text: the CLAP text embedding of the prompt enters as a class embedding (a
linear projection concatenated to the timestep embedding), and the attention layers attend to the
latent itself (``encoder_hidden_states=None``). A HiFi-GAN vocoder turns mels back into waveforms.

Shapes at the defaults (16 kHz, hop 160, 64 mels, VAE 4× down):
waveform (B, S) → mel (B, T = S // 160, 64) → padded to a multiple of ``time_multiple`` frames →
latents (B, 8, T'/4, 16). One second: 16,000 samples → 100 frames → 128 → latents (B, 8, 32, 16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import ClapTextModelWithProjection, RobertaTokenizer, SpeechT5HifiGan

from avgen.backbones.loader import load_pretrained, load_scheduler, resolve_source
from avgen.diffusion import sample_latents
from avgen.errors import ConfigError
from avgen.pretrained import freeze

BASE_KEY = "model.audio.base"
SCHEDULER_KEY = "model.audio.scheduler"


class AudioLDMMel(nn.Module):
    """Log-mel spectrogram as AudioLDM's VAE was trained on (AudioLDM's ``TacotronSTFT``).

    The waveform is reflect-padded by (n_fft − hop) / 2 on each side and framed without centring, so
    a clip of S samples gives exactly S // hop frames (4 s at 16 kHz: 400). Per frame: magnitude
    (not power) of the STFT with a periodic Hann window, a Slaney-scale, Slaney-normalised mel
    filterbank (librosa's ``filters.mel`` defaults), natural log of the values clamped to ``log_floor``.

    Args:
        sample_rate: waveform rate in Hz.
        n_fft: FFT size.
        win_length: window length (≤ n_fft; centred in the FFT frame when shorter).
        hop_length: samples between frames.
        n_mels: mel bins.
        f_min, f_max: filterbank range in Hz.
        log_floor: smallest mel magnitude before the log; log(log_floor) is the value of silence.
    """

    def __init__(self, sample_rate: int = 16_000, n_fft: int = 1024, win_length: int = 1024, hop_length: int = 160,
                 n_mels: int = 64, f_min: float = 0.0, f_max: float = 8_000.0, log_floor: float = 1e-5):
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError(f"AudioLDMMel pads (n_fft - hop_length) / 2 samples on each side; n_fft={n_fft} and "
                             f"hop_length={hop_length} must differ by an even number")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.f_min, self.f_max, self.log_floor = n_mels, f_min, f_max, log_floor
        self.padding = (n_fft - hop_length) // 2
        from avgen.pretrained import computed_tables

        # values, even when the model is built under torch.device("meta") (scale=paper_random)
        fbank, window = computed_tables(lambda: (
            torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm="slaney",
                                                  mel_scale="slaney").T.contiguous(),
            torch.hann_window(win_length, periodic=True)))
        # Derived from the arguments: rebuilt, not stored in checkpoints.
        self.register_buffer("mel_basis", fbank, persistent=False)  # (n_mels, n_fft // 2 + 1)
        self.register_buffer("window", window, persistent=False)

    def settings(self) -> dict[str, float | int]:
        """The constructor's arguments (sample rate in Hz, sizes in samples, range in Hz): everything that
        sets the output, for feature-cache descriptions (the module has no weights)."""
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "win_length": self.win_length,
                "hop_length": self.hop_length, "n_mels": self.n_mels, "f_min": self.f_min, "f_max": self.f_max,
                "log_floor": self.log_floor}

    @property
    def silence(self) -> float:
        """The log-mel value of silence, log(log_floor)."""
        return math.log(self.log_floor)

    def num_frames(self, num_samples: int) -> int:
        """Frames T of a clip of ``num_samples`` samples (= num_samples // hop_length)."""
        return (num_samples + 2 * self.padding - self.n_fft) // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform (B, S) float → log-mel (B, T, n_mels) float32, T = :meth:`num_frames` (S); axis 1 is time."""
        if waveform.ndim != 2:
            raise ValueError(f"AudioLDMMel expects a waveform (B, S), got {tuple(waveform.shape)}")
        if waveform.shape[1] <= self.padding:
            raise ValueError(f"AudioLDMMel needs more than {self.padding} samples per clip (reflect padding), "
                             f"got {waveform.shape[1]}")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = F.pad(waveform.float().unsqueeze(1), (self.padding, self.padding), mode="reflect").squeeze(1)
            spec = torch.stft(x, self.n_fft, self.hop_length, self.win_length, window=self.window, center=False,
                              return_complex=True).abs()  # (B, n_fft // 2 + 1, T)
            mel = torch.matmul(self.mel_basis, spec)
            return torch.log(torch.clamp(mel, min=self.log_floor)).transpose(1, 2)


@dataclass
class AudioCodec:
    """AudioLDM's mel front end, VAE and HiFi-GAN vocoder: waveform ↔ latents (:func:`encode_audio`,
    :func:`decode_audio`). Every module is frozen (eval mode, ``requires_grad=False``)."""

    vae: AutoencoderKL
    vocoder: SpeechT5HifiGan
    mel: AudioLDMMel


@dataclass
class AudioBackbone(AudioCodec):
    """The frozen parts of the joint system's audio model: the codec plus AudioLDM's UNet, CLAP text
    encoder and scheduler (a system unfreezes what it trains)."""

    unet: UNet2DConditionModel
    tokenizer: RobertaTokenizer
    text_encoder: ClapTextModelWithProjection
    scheduler: DDIMScheduler


def load_audio_codec(source: str, config_key: str = BASE_KEY, *, tiny_dir: str | Path | None = None) -> AudioCodec:
    """AudioLDM's VAE and vocoder (subfolders ``vae`` and ``vocoder``) from a local folder or the local hub
    cache (never downloads), with the mel front end they were trained on.

    Args:
        source: a folder or hub id in the diffusers layout of ``cvssp/audioldm-s-full-v2`` /
            ``cvssp/audioldm-m-full`` (only ``vae`` and ``vocoder`` are read), or ``tiny:audioldm``.
        config_key: the config key named in errors.
        tiny_dir: where ``tiny:`` sources are written (see :func:`~avgen.backbones.loader.resolve_source`).

    Raises:
        ConfigError: a vocoder whose rate, mel bins or hop disagree with AudioLDM's mel front end.
        PretrainedModelMissing: no such folder or cached hub model.
    """
    source = resolve_source(source, tiny_dir, config_key)
    vae = load_pretrained(AutoencoderKL, source, config_key, subfolder="vae")
    vocoder = load_pretrained(SpeechT5HifiGan, source, config_key, subfolder="vocoder")
    mel = AudioLDMMel()
    # The mel front end is fixed by the VAE's training; a vocoder that disagrees with it is another model.
    vocoder_hop = math.prod(vocoder.config.upsample_rates)
    if (vocoder.config.sampling_rate, vocoder.config.model_in_dim, vocoder_hop) != \
            (mel.sample_rate, mel.n_mels, mel.hop_length):
        raise ConfigError(f"{config_key}={source}: its vocoder expects {vocoder.config.model_in_dim} mel bins at "
                          f"{vocoder.config.sampling_rate} Hz with hop {vocoder_hop}, but AudioLDM's mel front end "
                          f"has {mel.n_mels} bins at {mel.sample_rate} Hz with hop {mel.hop_length}; "
                          f"give an AudioLDM (v1) folder")
    for module in (vae, vocoder, mel):
        freeze(module)
    return AudioCodec(vae=vae, vocoder=vocoder, mel=mel.to(vae.device))


def load_audioldm(source: str, *, tiny_dir: str | Path | None = None,
                  scheduler_overrides: dict[str, Any] | None = None) -> AudioBackbone:
    """AudioLDM from a local folder or the local hub cache (never downloads).

    Args:
        source: ``model.audio.base``: a folder or hub id in the layout of ``cvssp/audioldm-m-full``
            (subfolders unet, vae, text_encoder, tokenizer, vocoder, scheduler), or ``tiny:audioldm``.
        tiny_dir: where ``tiny:`` sources are written (see :func:`~avgen.backbones.loader.resolve_source`).
        scheduler_overrides: ``model.audio.scheduler``: ``DDIMScheduler`` arguments applied over the
            stored scheduler config.
    """
    source = resolve_source(source, tiny_dir, BASE_KEY)
    # First, so a wrong scheduler setting stops the run before any weights are read.
    scheduler = load_scheduler(DDIMScheduler, source, BASE_KEY, dict(scheduler_overrides or {}), SCHEDULER_KEY)
    codec = load_audio_codec(source, BASE_KEY)
    unet = load_pretrained(UNet2DConditionModel, source, BASE_KEY, subfolder="unet")
    tokenizer = load_pretrained(RobertaTokenizer, source, BASE_KEY, subfolder="tokenizer")
    text_encoder = load_pretrained(ClapTextModelWithProjection, source, BASE_KEY, subfolder="text_encoder")
    for module in (unet, text_encoder):
        freeze(module)
    return AudioBackbone(vae=codec.vae, vocoder=codec.vocoder, mel=codec.mel.to(unet.device), unet=unet,
                         tokenizer=tokenizer, text_encoder=text_encoder, scheduler=scheduler)


@torch.no_grad()
def encode_prompts(backbone: AudioBackbone, prompts: list[str]) -> torch.Tensor:
    """L2-normalised CLAP text embeddings (B, P), P the CLAP projection width: the UNet's ``class_labels``.

    As AudioLDM: prompts padded to the tokenizer's ``model_max_length`` and truncated, the attention
    mask passed, ``text_embeds`` normalised.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"encode_prompts expects a list of strings, one per clip, got {prompts!r}")
    tokens = backbone.tokenizer(list(prompts), padding="max_length", max_length=backbone.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    device = backbone.text_encoder.device
    out = backbone.text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return F.normalize(out.text_embeds, dim=-1)


def vae_downsampling(vae: AutoencoderKL) -> int:
    """The VAE's downsampling factor per axis: 2 per block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def padded_frames(num_frames: int, time_multiple: int = 32) -> int:
    """``num_frames`` rounded up to a multiple of ``time_multiple``."""
    return -(-num_frames // time_multiple) * time_multiple


def latent_frames(backbone: AudioCodec, num_samples: int, time_multiple: int = 32) -> tuple[int, int]:
    """(T', F'): latent frames and latent mel width of what :func:`encode_audio` makes from ``num_samples``
    samples, without running the VAE (the latents are (B, C, T', F'), C = ``vae.config.latent_channels``)."""
    factor = vae_downsampling(backbone.vae)
    frames = padded_frames(backbone.mel.num_frames(num_samples), time_multiple)
    return frames // factor, backbone.mel.n_mels // factor


@torch.no_grad()
def encode_audio_posterior(backbone: AudioCodec, waveform: torch.Tensor, time_multiple: int = 32
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveform (B, S) at the mel's rate → the VAE posterior of its padded log-mel: ``mean`` and ``std``
    (B, C, T', F') (axis 2 is time, see :func:`latent_frames`), unscaled (before ``vae.config.scaling_factor``),
    in the VAE's dtype, on its device; ``std`` is diffusers' ``exp(logvar / 2)`` with logvar clamped to [-30, 20].

    The mel's time axis is padded with silence (log(log_floor)) up to a multiple of ``time_multiple``
    frames, so the latent length divides by the UNet's downsampling (default 32 = VAE 4× · UNet 8×).
    """
    mel = backbone.mel(waveform.to(backbone.mel.window.device))
    extra = padded_frames(mel.shape[1], time_multiple) - mel.shape[1]
    mel = F.pad(mel, (0, 0, 0, extra), value=backbone.mel.silence)
    vae = backbone.vae
    posterior = vae.encode(mel.unsqueeze(1).to(vae.device, vae.dtype)).latent_dist
    return posterior.mean, posterior.std


@torch.no_grad()
def encode_audio(backbone: AudioCodec, waveform: torch.Tensor, generator: torch.Generator | None = None,
                 time_multiple: int = 32) -> torch.Tensor:
    """Waveform (B, S) at the mel's rate → latents (B, C, T', F') (axis 2 is time), see :func:`latent_frames`.

    :func:`encode_audio_posterior`, then a posterior sample (with ``generator``, one draw for the batch as
    diffusers' ``latent_dist.sample``: :func:`avgen.diffusion.sample_latents`) times ``vae.config.scaling_factor``.
    """
    mean, std = encode_audio_posterior(backbone, waveform, time_multiple)
    return sample_latents(mean, std, generator, backbone.vae.config.scaling_factor)


@torch.no_grad()
def decode_audio(backbone: AudioCodec, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Latents (B, C, T', F') → waveform (B, num_samples) float32: VAE → log-mel (B, T, n_mels) → vocoder,
    cut (or zero-padded) to ``num_samples``.

    Only the latent frames that cover ``num_samples`` are decoded: ⌈⌈num_samples / hop⌉ / f⌉ of them (hop = the
    vocoder's samples per mel frame, f = the VAE's time downsampling), the rest being the padding that
    :func:`encode_audio_posterior` adds for the U-Net's downsampling. The VAE decoder's mid-block attention spans
    the whole latent, so a decoded pad changes the clip itself: on the mini twins, decoding a silence-padded
    latent (1-s clips, 25 latent frames of 32) lowered the impact contrast of real audio's round trip from 11.6
    to 5.8 and the clips with every onset at a flow peak from 0.81 to 0.72 (2026-12-02, 32 held-out clips).
    """
    vae = backbone.vae
    hop = math.prod(backbone.vocoder.config.upsample_rates)
    needed = -(-(-(-num_samples // hop)) // vae_downsampling(vae))
    latents = latents[:, :, :needed]
    mel = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample.squeeze(1)
    waveform = backbone.vocoder(mel.to(backbone.vocoder.dtype)).float()
    if waveform.shape[1] >= num_samples:
        return waveform[:, :num_samples]
    return F.pad(waveform, (0, num_samples - waveform.shape[1]))
