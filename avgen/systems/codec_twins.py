"""Training of the codecs of the mini twins: a frame VAE, a mel VAE and a vocoder, each from scratch.

The classes are the published backbones' own (diffusers' ``AutoencoderKL`` for Stable Diffusion's frame VAE and
AudioLDM's mel VAE, transformers' ``SpeechT5HifiGan`` for AudioLDM's HiFi-GAN vocoder), so the trained weights
load through the same ``from_pretrained`` calls as the real ones (:mod:`avgen.backbones.mini`). Each is trained
as a LightningModule on a :class:`~avgen.data.clip_bank.ClipBank` (a split held in memory): training step ``k``
draws its batch, and any noise, from a generator seeded by ``(seed, k)`` alone, so a run stopped anywhere and
resumed from its checkpoint computes exactly what an uninterrupted one does.

Losses (what the papers' codecs use, less the terms that need pretrained weights or a discriminator):

* :class:`FramesVAETraining` / :class:`MelVAETraining` — the LDM autoencoder objective (Rombach et al. 2022,
  ``taming``'s ``LPIPSWithDiscriminator`` with its perceptual and adversarial weights at 0): per example the L1
  reconstruction error summed over elements, plus ``kl_weight`` (LDM: 1e-6) times the KL divergence of the
  diagonal-Gaussian posterior to N(0, I) summed over latent elements, averaged over the batch. The decoder
  reconstructs a posterior sample. Frames in [-1, 1] (``(B, 3, H, W)``); mels as AudioLDM's VAE sees them: the
  natural-log mel of :class:`~avgen.backbones.audioldm.AudioLDMMel`, ``(B, 1, T, n_mels)``, T frames of time.
* :class:`VocoderTraining` — HiFi-GAN's mel-spectrogram L1 (Kong et al. 2020, Eq. 3: L1 between the log-mels of
  the real and the generated waveform) plus the multi-resolution STFT loss of Parallel WaveGAN (Yamamoto et al.
  2020, Eq. 4-6: spectral convergence + log STFT magnitude, averaged over 3 resolutions; auraloss'
  ``MultiResolutionSTFTLoss``). No discriminators: the adversarial terms are left out (they sharpen fine
  structure; onsets and envelopes, what the mini scale needs, come from the two spectral terms).

Optimiser: AdamW with ``betas`` (default (0.9, 0.99): Adam's usual β1 with HiFi-GAN's β2; LDM's autoencoder uses
(0.5, 0.9) and HiFi-GAN (0.8, 0.99), both tuned for training against a discriminator, which is left out here), a
linear warm-up over ``warmup_steps`` and a cosine decay to ``final_lr_fraction`` of the peak learning rate at
``steps``. The schedule is a function of ``steps``: raising ``steps`` of a finished stage continues it on the new,
longer schedule (not the same run as one trained with the larger ``steps`` from the start).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import IterableDataset

from avgen.backbones.audioldm import AudioLDMMel
from avgen.data.clip_bank import ClipBank


class StepIndices(IterableDataset):
    """The training steps still to run: ``start(), start() + 1, ..., steps - 1`` (``start`` read when iterated, so a
    resumed trainer's restored global step). Each item is a step index; the module builds the batch from it."""

    def __init__(self, start: Any, steps: int):
        super().__init__()
        self.start, self.steps = start, int(steps)

    def __iter__(self):
        return iter(range(int(self.start()), self.steps))


class TwinTraining(pl.LightningModule):
    """Base of the codec trainers: step-seeded batches from :attr:`bank`, AdamW with warm-up and cosine decay.

    Args:
        config: the model's constructor arguments (a diffusers / transformers config), kept in checkpoints.
        steps: optimiser steps of the whole run (the schedule's length).
        batch_size: examples per step.
        lr: peak learning rate; ``warmup_steps``: linear warm-up; ``final_lr_fraction``: the cosine's floor.
        weight_decay: AdamW's decoupled weight decay; ``betas``: its moment decays.
        seed: with the step, seeds each batch (and each posterior sample).

    Set :attr:`bank` (the training clips) before ``fit``; it is not part of the checkpoint.
    """

    def __init__(self, config: Mapping[str, Any], *, steps: int, batch_size: int, lr: float, warmup_steps: int = 100,
                 final_lr_fraction: float = 0.1, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.99),
                 seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["bank", "unet"])
        self.config = dict(config)
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)
        self.warmup_steps, self.final_lr_fraction = int(warmup_steps), float(final_lr_fraction)
        self.weight_decay, self.seed = float(weight_decay), int(seed)
        self.betas = (float(betas[0]), float(betas[1]))
        self.bank: ClipBank | None = None
        self.model = self.build(self.config)

    #: the class name (diffusers or transformers) of what :meth:`component` returns
    component_class = ""

    # to implement
    @staticmethod
    def build(config: Mapping[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def component(self) -> torch.nn.Module:
        """What the stage trains, as the backbone component saved and published (``save_pretrained``): the model."""
        return self.model

    def resume_problem(self, saved: Mapping[str, Any]) -> str | None:
        """Why this module may not continue from a checkpoint whose hyperparameters are ``saved`` (None: it may).
        The base checks nothing beyond the model config (:func:`avgen.pretraining.train_stage` does that)."""
        return None

    def losses(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The step's losses; ``loss`` is minimised, the others are logged."""
        raise NotImplementedError

    # Lightning
    def train_dataloader(self):
        return torch.utils.data.DataLoader(StepIndices(lambda: self.trainer.global_step, self.steps), batch_size=None)

    def training_step(self, step: int, batch_idx: int) -> torch.Tensor:
        if self.bank is None:
            raise RuntimeError(f"{type(self).__name__}.bank is not set: give it the training clips before fit")
        losses = self.losses(self.bank.generator(self.seed, int(step)))
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True, batch_size=self.batch_size)
        return losses["loss"]

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` as a fraction of ``lr``: linear warm-up, then a cosine to
        ``final_lr_fraction`` at ``steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


class _VAETraining(TwinTraining):
    """An ``AutoencoderKL`` with the LDM objective (module docstring); ``kl_weight`` weighs the KL term."""

    component_class = "AutoencoderKL"

    def __init__(self, config: Mapping[str, Any], *, kl_weight: float = 1e-6, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.kl_weight = float(kl_weight)

    @staticmethod
    def build(config: Mapping[str, Any]) -> torch.nn.Module:
        from diffusers import AutoencoderKL

        return AutoencoderKL(**config)

    def inputs(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = self.inputs(generator).to(self.device)
        posterior = self.model.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(self.device, posterior.mean.dtype)
        z = posterior.mean + posterior.std * noise
        recon = self.model.decode(z).sample
        batch = x.shape[0]
        rec = (recon - x).abs().sum() / batch
        kl = posterior.kl().sum() / batch
        return {"loss": rec + self.kl_weight * kl, "l1": (recon - x).abs().mean().detach(), "kl": kl.detach()}


class FramesVAETraining(_VAETraining):
    """Stable Diffusion's frame VAE class trained on single frames ``(B, 3, H, W)`` in [-1, 1] drawn from every clip
    and time of the bank (``frames_per_step`` = ``batch_size``)."""

    def inputs(self, generator: torch.Generator) -> torch.Tensor:
        return self.bank.random_frames(self.batch_size, generator).float().div(127.5).sub(1.0)


class MelVAETraining(_VAETraining):
    """AudioLDM's mel VAE class trained on log-mel crops ``(B, 1, mel_frames, n_mels)`` of random audio segments
    (``mel_frames`` · hop samples each, starts on the hop grid), computed by AudioLDM's mel front end."""

    def __init__(self, config: Mapping[str, Any], *, mel_frames: int = 64, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.mel_frames = int(mel_frames)
        self.mel = AudioLDMMel()

    def inputs(self, generator: torch.Generator) -> torch.Tensor:
        hop = self.mel.hop_length
        audio = self.bank.random_segments(self.batch_size, self.mel_frames * hop, generator, multiple=hop)
        return self.mel(audio.to(self.device)).unsqueeze(1)  # (B, 1, T, n_mels)


class VocoderTraining(TwinTraining):
    """AudioLDM's HiFi-GAN class (``SpeechT5HifiGan``) trained to turn the log-mel of a random segment of
    ``mel_frames`` frames back into its ``mel_frames`` · hop samples (module docstring for the losses; ``mel_weight``
    and ``stft_weight`` weigh them)."""

    component_class = "SpeechT5HifiGan"

    def __init__(self, config: Mapping[str, Any], *, mel_frames: int = 48, mel_weight: float = 1.0,
                 stft_weight: float = 1.0, **kwargs: Any):
        super().__init__(config, **kwargs)
        import auraloss

        self.mel_frames, self.mel_weight, self.stft_weight = int(mel_frames), float(mel_weight), float(stft_weight)
        self.mel = AudioLDMMel()
        hop = math.prod(self.model.config.upsample_rates)
        if hop != self.mel.hop_length:
            raise ValueError(f"the vocoder's upsample_rates {list(self.model.config.upsample_rates)} make {hop} "
                             f"samples per mel frame, but AudioLDM's mel hop is {self.mel.hop_length}; make their "
                             f"product {self.mel.hop_length} (e.g. [5, 4, 2, 2, 2])")
        # Parallel WaveGAN's three resolutions (FFT 1024/2048/512, hop 120/240/50, window 600/1200/240)
        self.stft_loss = auraloss.freq.MultiResolutionSTFTLoss()

    @staticmethod
    def build(config: Mapping[str, Any]) -> torch.nn.Module:
        """``SpeechT5HifiGan(config)`` with PyTorch's default initialisation of its convolutions.

        transformers initialises them as HiFi-GAN's code does (normal, std 0.01); at a few dozen channels the five
        upsampling stages then shrink the output to about 1e-8, below the floors of both losses' logarithms (the
        mel clamp at 1e-5, auraloss' power clamp at 1e-8), where their gradients are exactly zero: training never
        starts. PyTorch's default (Kaiming-uniform) init keeps the first output near unit scale.
        """
        from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

        model = SpeechT5HifiGan(SpeechT5HifiGanConfig(**config))
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                module.reset_parameters()
        return model

    def losses(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        hop = self.mel.hop_length
        audio = self.bank.random_segments(self.batch_size, self.mel_frames * hop, generator, multiple=hop)
        audio = audio.to(self.device)
        mel = self.mel(audio)                                    # (B, T, n_mels)
        generated = self.model(mel)                              # (B, ≈ T · hop)
        generated = generated[:, :audio.shape[1]]  # kernels with an odd k - rate add a sample per layer
        mel_l1 = (self.mel(generated) - mel).abs().mean()
        stft = self.stft_loss(generated.unsqueeze(1), audio.unsqueeze(1))
        return {"loss": self.mel_weight * mel_l1 + self.stft_weight * stft, "mel_l1": mel_l1.detach(),
                "stft": stft.detach()}


TRAINERS = {"frames_vae": FramesVAETraining, "mel_vae": MelVAETraining, "vocoder": VocoderTraining}
