"""Training of the codecs of the mini twins: a frame VAE, a mel VAE and a vocoder, each from scratch.

The classes are the published backbones' own (diffusers' ``AutoencoderKL`` for Stable Diffusion's frame VAE and
AudioLDM's mel VAE, transformers' ``SpeechT5HifiGan`` for AudioLDM's HiFi-GAN vocoder), so the trained weights
load through the same ``from_pretrained`` calls as the real ones (:mod:`avgen.backbones.mini`). Each is trained
as a LightningModule on a :class:`~avgen.data.clip_bank.ClipBank` (a split held in memory): training step ``k``
draws its batch, and any noise, from a generator seeded by ``(seed, k)`` alone, so a run stopped anywhere and
resumed from its checkpoint computes exactly what an uninterrupted one does.

Losses (what the papers' codecs use, less the terms that need pretrained weights; a discriminator only where a
stage says so):

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
* :class:`MelVAEDecoderTraining` — the trained mel VAE's decoder fine-tuned with its encoder frozen, so the latent
  space (and every generator trained in it) stays as it was, as Stability AI fine-tuned Stable Diffusion's decoder
  (``sd-vae-ft-ema`` / ``-mse``). Objective: LDM's, now with its adversarial term (``taming``'s
  ``LPIPSWithDiscriminator``, perceptual weight 0): the summed L1 of the decoded posterior sample, plus
  ``disc_weight`` times the adaptive weight λ = ‖∇L_rec‖ / (‖∇L_G‖ + 10⁻⁴) (gradients at the decoder's last
  layer, λ clamped to [0, 10⁴]) times the generator's hinge loss L_G = −mean D(x̂), against a PatchGAN
  discriminator D (Isola et al. 2017; ``taming``'s ``NLayerDiscriminator``, GroupNorm for BatchNorm) trained with
  the hinge loss ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂))). An L1-only mel VAE blurs each impact over its
  4-frame latent cell (a lower attack, energy before it), which an onset detector reads as weaker impacts among
  noise; the discriminator penalises that blur.
* :class:`VocoderFinetuning` — HiFi-GAN's fine-tuning on the mels the upstream model produces (Kong et al. 2020,
  Sec. 4.4, there Tacotron 2's): the trained vocoder continues with :class:`VocoderTraining`'s losses, its input
  the mel VAE's reconstruction (posterior mean, decoded) of each segment's log-mel instead of the log-mel itself,
  its target still the segment's waveform, so it learns to undo what the VAE loses (a raised noise floor, a
  lower attack) on what the generators' latents decode to.

Optimiser: AdamW with ``betas`` (default (0.9, 0.99): Adam's usual β1 with HiFi-GAN's β2; LDM's autoencoder uses
(0.5, 0.9) and HiFi-GAN (0.8, 0.99), both tuned for training against a discriminator; the mel VAE decoder's
discriminator takes LDM's), a
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
        self.save_hyperparameters(ignore=["bank", "unet", "adapter", "vae", "vocoder"])
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


def log_mel_crops(bank: ClipBank, mel: AudioLDMMel, n: int, frames: int, generator: torch.Generator,
                  device: torch.device | str) -> torch.Tensor:
    """``n`` log-mel crops ``(n, 1, frames, n_mels)`` float32 on ``device``: random audio segments of ``frames`` ·
    hop samples of ``bank`` (starts on the hop grid, drawn with ``generator``) through AudioLDM's mel front end."""
    hop = mel.hop_length
    audio = bank.random_segments(n, frames * hop, generator, multiple=hop)
    return mel(audio.to(device)).unsqueeze(1)


def posterior_sample(posterior, generator: torch.Generator) -> torch.Tensor:
    """A draw ``mean + std · ε`` of a diagonal-Gaussian posterior (diffusers' ``latent_dist``), ε drawn on the CPU
    with ``generator`` (the same on every device), in the mean's dtype and device."""
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device, posterior.mean.dtype)
    return posterior.mean + posterior.std * noise


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
        recon = self.model.decode(posterior_sample(posterior, generator)).sample
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
        return log_mel_crops(self.bank, self.mel, self.batch_size, self.mel_frames, generator, self.device)


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


class PatchDiscriminator(torch.nn.Module):
    """A PatchGAN discriminator (Isola et al. 2017; ``taming``'s ``NLayerDiscriminator``): 4×4 convolutions, the
    first ``layers`` with stride 2, then one with stride 1 and a 1-channel output, LeakyReLU(0.2), GroupNorm (8
    groups) after every convolution but the first and the last (``taming`` uses BatchNorm; GroupNorm does not
    depend on the batch).

    Input ``(B, in_channels, H, W)`` float; output ``(B, 1, H', W')`` float: one real/fake logit per patch.
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, layers: int = 2):
        super().__init__()
        blocks: list[torch.nn.Module] = [torch.nn.Conv2d(in_channels, channels, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, layers + 1):
            out = channels * min(2 ** index, 8)
            blocks += [torch.nn.Conv2d(width, out, 4, 2 if index < layers else 1, 1), torch.nn.GroupNorm(8, out),
                       torch.nn.LeakyReLU(0.2)]
            width = out
        blocks.append(torch.nn.Conv2d(width, 1, 4, 1, 1))
        self.net = torch.nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MelVAEDecoderTraining(TwinTraining):
    """The mel VAE's decoder (``decoder`` and ``post_quant_conv``) fine-tuned against a PatchGAN, its encoder and
    ``quant_conv`` frozen (module docstring for the objective and the source).

    Args:
        config: the mel VAE's ``AutoencoderKL`` config (``pretrain_twins.codecs.mel_vae.model``); it must be the
            config of ``vae``.
        vae: the trained mel VAE (the ``mel_vae`` stage); its weights are copied, it is not changed.
        mel_frames: frames of each log-mel crop (a multiple of the VAE's time downsampling).
        disc_weight: the weight of the adversarial term (LDM: 0.5).
        disc_channels, disc_layers: the discriminator's width and depth (:class:`PatchDiscriminator`).
        disc_lr: the discriminator's learning rate (the decoder's: ``lr``); its Adam betas are LDM's (0.5, 0.9).

    Raises:
        ValueError: ``vae`` is missing or its config differs from ``config``.
    """

    component_class = "AutoencoderKL"

    def __init__(self, config: Mapping[str, Any], *, vae: torch.nn.Module | None = None, mel_frames: int = 64,
                 disc_weight: float = 0.5, disc_channels: int = 32, disc_layers: int = 2, disc_lr: float = 3e-4,
                 **kwargs: Any):
        super().__init__(config, **kwargs)
        self.mel_frames, self.disc_weight, self.disc_lr = int(mel_frames), float(disc_weight), float(disc_lr)
        self.mel = AudioLDMMel()
        self.discriminator = PatchDiscriminator(int(config.get("out_channels", 1)), int(disc_channels),
                                                int(disc_layers))
        if vae is None:
            raise ValueError("mel_vae_decoder fine-tunes a trained mel VAE: train the mel_vae stage first (or give "
                             "its model with pretrain_twins.start_from)")
        mismatch = {k: (v, vae.config.get(k)) for k, v in self.config.items()
                    if _nested_lists(vae.config.get(k)) != _nested_lists(v)}
        if mismatch:
            differences = ", ".join(f"{k}: {a} here, {b} there" for k, (a, b) in mismatch.items())
            raise ValueError(f"its model config differs from the trained mel VAE's ({differences}); give "
                             f"pretrain_twins.codecs.mel_vae.model")
        self.model.load_state_dict(vae.state_dict())
        self.model.register_to_config(scaling_factor=float(vae.config.scaling_factor))
        for frozen in (self.model.encoder, self.model.quant_conv):
            frozen.requires_grad_(False)

    @staticmethod
    def build(config: Mapping[str, Any]) -> torch.nn.Module:
        from diffusers import AutoencoderKL

        return AutoencoderKL(**config)

    def decoder_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.model.decoder.parameters(), *self.model.post_quant_conv.parameters()]

    def losses(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``loss``: the decoder's objective (L1 + adaptive weight × generator hinge term, the discriminator's
        weights held fixed in it) plus the discriminator's hinge loss (on the reconstruction detached), so one
        backward pass gives each its own gradient; the others are logged."""
        from torch.func import functional_call

        x = log_mel_crops(self.bank, self.mel, self.batch_size, self.mel_frames, generator, self.device)
        with torch.no_grad():
            z = posterior_sample(self.model.encode(x).latent_dist, generator)
        recon = self.model.decode(z).sample
        batch = x.shape[0]
        rec = (recon - x).abs().sum() / batch
        fixed = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        g_loss = -functional_call(self.discriminator, fixed, (recon,)).mean()
        last = self.model.decoder.conv_out.weight
        grad_rec = torch.autograd.grad(rec, last, retain_graph=True)[0].norm()
        grad_g = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
        weight = (grad_rec / (grad_g + 1e-4)).clamp(0.0, 1e4).detach() * self.disc_weight
        d_loss = 0.5 * (torch.relu(1.0 - self.discriminator(x)).mean()
                        + torch.relu(1.0 + self.discriminator(recon.detach())).mean())
        return {"loss": rec + weight * g_loss + d_loss, "l1": (recon - x).abs().mean().detach(),
                "g_loss": g_loss.detach(), "d_loss": d_loss.detach(), "adaptive_weight": weight}

    def configure_optimizers(self):
        """One AdamW, two parameter groups: the decoder (``lr``, ``betas``) and the discriminator (``disc_lr``,
        LDM's (0.5, 0.9)); the warm-up and cosine of :meth:`lr_factor` scale both."""
        optimizer = torch.optim.AdamW([
            {"params": self.decoder_parameters(), "lr": self.lr, "betas": self.betas},
            {"params": list(self.discriminator.parameters()), "lr": self.disc_lr, "betas": (0.5, 0.9)},
        ], weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class VocoderFinetuning(VocoderTraining):
    """The trained vocoder fine-tuned on the mel VAE's reconstructions (module docstring): each step's segments of
    ``mel_frames`` frames go through ``vae`` (log-mel → posterior mean → decoded log-mel, frozen) into the
    vocoder, whose output is compared with the segments' waveforms by :class:`VocoderTraining`'s losses.

    Args:
        config: the vocoder's ``SpeechT5HifiGan`` config (``pretrain_twins.codecs.vocoder.model``), that of
            ``vocoder``.
        vocoder: the trained vocoder (the ``vocoder`` stage); its weights are copied, it is not changed.
        vae: the mel VAE whose decoder the published codecs use (``mel_vae_decoder``'s, else ``mel_vae``'s).
        mel_frames: frames per segment (a multiple of the VAE's time downsampling).

    Raises:
        ValueError: ``vocoder`` or ``vae`` is missing, or ``vocoder``'s config differs from ``config``.
    """

    def __init__(self, config: Mapping[str, Any], *, vocoder: torch.nn.Module | None = None,
                 vae: torch.nn.Module | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        if vocoder is None or vae is None:
            raise ValueError("vocoder_finetune continues a trained vocoder on a trained mel VAE's reconstructions: "
                             "train the mel_vae and vocoder stages first (or give them with "
                             "pretrain_twins.start_from)")
        mismatch = [k for k, v in self.config.items()
                    if _nested_lists(getattr(vocoder.config, k, None)) != _nested_lists(v)]
        if mismatch:
            raise ValueError(f"its model config differs from the trained vocoder's in {', '.join(mismatch)}; give "
                             f"pretrain_twins.codecs.vocoder.model")
        self.model.load_state_dict(vocoder.state_dict())
        self.vae = vae.eval().requires_grad_(False)

    def losses(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        hop = self.mel.hop_length
        audio = self.bank.random_segments(self.batch_size, self.mel_frames * hop, generator, multiple=hop)
        audio = audio.to(self.device)
        mel = self.mel(audio)                                    # (B, T, n_mels)
        with torch.no_grad():  # self.vae is a submodule: it is already on self.device
            decoded = self.vae.decode(self.vae.encode(mel.unsqueeze(1)).latent_dist.mean).sample.squeeze(1)
        generated = self.model(decoded)[:, :audio.shape[1]]
        mel_l1 = (self.mel(generated) - mel).abs().mean()
        stft = self.stft_loss(generated.unsqueeze(1), audio.unsqueeze(1))
        return {"loss": self.mel_weight * mel_l1 + self.stft_weight * stft, "mel_l1": mel_l1.detach(),
                "stft": stft.detach()}


def _nested_lists(value: Any) -> Any:
    """Tuples → lists, recursively (configs compare equal however they were stored)."""
    if isinstance(value, (list, tuple)):
        return [_nested_lists(v) for v in value]
    return value


TRAINERS = {"frames_vae": FramesVAETraining, "mel_vae": MelVAETraining, "mel_vae_decoder": MelVAEDecoderTraining,
            "vocoder": VocoderTraining, "vocoder_finetune": VocoderFinetuning}
#: a stage that continues another stage's model → the component (and stage) it replaces in the published codecs
CONTINUES: dict[str, str] = {"mel_vae_decoder": "mel_vae", "vocoder_finetune": "vocoder"}
