"""Training of the base generators of the mini twins: the U-Nets the three systems start from, from scratch.

Part 2 of the mini twins (``python -m avgen pretrain-twins part=generators``, :mod:`avgen.pretraining`). The base
models the papers build on were trained by others before the papers (Stable Diffusion + AnimateDiff's motion
modules for the joint model's video, zeroscope's UNet3D for TempoTokens, AudioLDM for the joint model's audio);
at the mini scale avgen trains them itself, the same way, on the synthetic captions, in the latent spaces of the
mini codecs (part 1). The classes are the backbones' own diffusers classes, so the weights load through the same
``from_pretrained`` calls as the real ones (:mod:`avgen.backbones.mini`).

Stages (each a LightningModule; step ``k`` draws its batch, timesteps, noise and caption drops from a generator
seeded by ``(seed, k)`` alone, so a resumed stage computes what an uninterrupted one does):

* :class:`ImageUNetTraining` (``animatediff_image``): Stable Diffusion's text-to-image objective on single frames —
  an SD1.5-layout ``UNet2DConditionModel`` with cross-attention to the CLIP text states (Rombach et al. 2022).
* :class:`MotionModuleTraining` (``animatediff_motion``): AnimateDiff's (Guo et al. 2024, Sec. 4.2) — the trained
  image U-Net frozen, a ``MotionAdapter``'s motion modules inserted (their output projections zero-initialised,
  as AnimateDiff's, so training starts from the image model) and trained alone on clips.
* :class:`VideoFinetuning` (``animatediff_video``): the image U-Net and the motion modules trained together on
  clips (as ModelScope T2V trains its whole U-Net on video), with an optional loss on the frames' mean-latent
  changes (:func:`avgen.diffusion.frame_difference_loss`); it replaces the pair that the AnimateDiff twin
  publishes (:data:`CONTINUES`).
* :class:`Video3DUNetTraining` (``zeroscope_unet``): ModelScope T2V's (Wang et al. 2023; zeroscope is a fine-tune
  of it) — a ``UNet3DConditionModel`` trained whole on clips (from scratch here; ModelScope started from SD's
  spatial weights).
* :class:`AudioUNetTraining` (``audioldm_unet``): AudioLDM's (Liu et al. 2023) U-Net on mel-VAE latents, the CLAP
  embedding as its class embedding. AudioLDM trains on the CLAP *audio* embedding and samples with the *text*
  one, which works because CLAP aligns the two; the mini CLAP towers are random, so the U-Net trains on the text
  embedding of the caption (as AudioLDM 2 / Make-An-Audio condition on text).

Objective, all stages: the MSE of the schedule's ``prediction_type`` target (ε, DDPM, Ho et al. 2020, Eq. 14; or v,
Salimans & Ho 2022) at a timestep drawn uniformly from the model's noise schedule, the caption replaced by the empty
prompt with probability ``cond_drop_prob`` (classifier-free guidance training, Ho & Salimans 2022; SD and AudioLDM use
0.1). The noise schedule of each stage is the one its system samples with (``noise_schedule``): the twin's, except
the audio U-Net's, whose betas are rescaled to zero terminal SNR with v-prediction (Lin et al. 2024; see
``configs/part/generators.yaml`` for why) and which ships that scheduler with its weights
(:data:`avgen.pretraining.STAGE_SCHEDULERS`); tests check each system's schedule against its generator's.

The text encoders (the tiny twins' CLIP and CLAP text towers) stay random and frozen: fixed random features of a
caption's bytes still separate the captions, and the U-Nets learn what they mean. The latents are precomputed
once per clip (:class:`LatentBank`): the posterior of every frame through the frame VAE and of every 1-s audio
window through the mel VAE; each step samples from the posteriors with its own generator, as SD training does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from avgen.diffusion import add_noise, mixed_noise, training_target
from avgen.systems.codec_twins import TwinTraining, _nested_lists

#: the noise-schedule settings a stage takes (DDPM betas; what the systems' DDIM schedulers were configured with)
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr",
                 "prediction_type")


def alphas_cumprod(schedule: Mapping[str, Any]) -> torch.Tensor:
    """ᾱ_t (float32 ``(num_train_timesteps,)``) of a DDPM noise schedule given as diffusers' scheduler settings
    (``beta_start``, ``beta_end``, ``beta_schedule`` ``linear`` or ``scaled_linear``, ``num_train_timesteps``,
    ``rescale_betas_zero_snr``: ᾱ at the last timestep exactly 0, Lin et al. 2024, Algorithm 1),
    computed by diffusers' ``DDPMScheduler`` (the class the systems' DDIM schedulers share the formula with).

    Raises:
        ValueError: a setting outside :data:`SCHEDULE_KEYS` or a beta schedule diffusers does not know.
    """
    from diffusers import DDPMScheduler

    unknown = set(schedule) - set(SCHEDULE_KEYS)
    if unknown:
        raise ValueError(f"noise_schedule takes {', '.join(SCHEDULE_KEYS)}; got {', '.join(sorted(unknown))}")
    settings = {k: v for k, v in schedule.items() if k != "prediction_type"}
    try:
        return DDPMScheduler(**settings).alphas_cumprod.float()
    except NotImplementedError as exc:
        raise ValueError(f"noise_schedule.beta_schedule={schedule.get('beta_schedule')!r}: {exc}") from exc


@dataclass
class LatentBank:
    """The training clips in the mini codecs' latent spaces, with their captions' text embeddings.

    Attributes:
        video_mean, video_std: float32 ``(N, F_store, C, h, w)``: the frame VAE posterior of every frame of every clip
            (unscaled; axis 1 is time at the store's frame rate).
        audio_mean, audio_std: float32 ``(N, K, C_a, T', M')``: the mel VAE posterior of the audio window of each
            clip that starts at frame ``k · audio_stride`` (``k = 0 .. K-1``, every start that leaves room for a
            window) and lasts ``clip_frames`` frame periods (the training clip), its log-mel padded with silence to a
            multiple of 32 frames as :func:`avgen.backbones.audioldm.encode_audio_posterior` does.
        clip_frames: frames per training clip (the systems' ``data.clip``: seconds × fps).
        video_scaling, audio_scaling: the VAEs' ``scaling_factor`` (latents = sample × factor).
        caption_index: int64 ``(N,)``: each clip's caption, a row of the text tables.
        captions: the distinct captions, then ``""`` last (the classifier-free guidance's empty prompt).
        text: per text encoder name (``clip``, ``clap``), its embedding of every caption: CLIP states ``(U + 1, L, D)``,
            CLAP embeddings ``(U + 1, P)``; row ``U`` is the empty prompt's.
    """

    video_mean: torch.Tensor
    video_std: torch.Tensor
    audio_mean: torch.Tensor
    audio_std: torch.Tensor
    clip_frames: int
    video_scaling: float
    audio_scaling: float
    caption_index: torch.Tensor
    captions: list[str]
    text: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.caption_index.shape[0])

    @property
    def starts(self) -> int:
        """The number of clip start frames per stored clip: every frame that leaves room for a clip."""
        return int(self.video_mean.shape[1]) - self.clip_frames + 1

    @classmethod
    @torch.no_grad()
    def build(cls, bank, clip_frames: int, frames_vae, mel_vae, mel, text_encoders: Mapping[str, Callable],
              chunk: int = 64, audio_stride: int = 1) -> LatentBank:
        """Encode a :class:`~avgen.data.clip_bank.ClipBank` (its frames and audio) with the codecs.

        Args:
            bank: the clips (frames uint8 ``(N, F_store, 3, H, W)``, audio float32 ``(N, S)``, captions).
            clip_frames: frames per training clip; windows start on every frame that leaves room for one.
            frames_vae, mel_vae: the mini codecs (``AutoencoderKL``), ``mel`` AudioLDM's mel front end.
            text_encoders: name → function from a list of prompts to their embeddings (a float tensor per prompt).
            chunk: frames or windows per VAE call.
            audio_stride: audio windows start every ``audio_stride`` frames (the mel VAE encodes each window
                alone: fewer windows, a faster build, less memory).

        Raises:
            ValueError: the clips have fewer than ``clip_frames`` frames, or ``audio_stride`` < 1.
        """
        from avgen.backbones.audioldm import padded_frames

        n, store_frames = bank.frames.shape[:2]
        if clip_frames > store_frames:
            raise ValueError(f"training clips of {clip_frames} frames asked from stored clips of {store_frames}")
        if int(audio_stride) < 1:
            raise ValueError(f"audio_stride={audio_stride}: expected a number of frames >= 1")
        frames = bank.frames.flatten(0, 1)
        means, stds = [], []
        for part in frames.split(chunk):
            posterior = frames_vae.encode(part.float().div(127.5).sub(1.0)).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
        video_mean = torch.cat(means).unflatten(0, (n, store_frames))
        video_std = torch.cat(stds).unflatten(0, (n, store_frames))
        fps_samples = bank.audio.shape[1] / store_frames  # samples per frame period
        if abs(fps_samples - round(fps_samples)) > 1e-6:
            raise ValueError(f"{bank.audio.shape[1]} audio samples are not a whole number per frame "
                             f"({store_frames} frames)")
        per_frame = int(round(fps_samples))
        length = clip_frames * per_frame
        starts = range(0, store_frames - clip_frames + 1, int(audio_stride))
        windows = torch.stack([bank.audio[:, k * per_frame:k * per_frame + length] for k in starts], dim=1)
        log_mel = mel(windows.flatten(0, 1))  # (N·K, T, M)
        pad = padded_frames(log_mel.shape[1]) - log_mel.shape[1]
        log_mel = F.pad(log_mel, (0, 0, 0, pad), value=mel.silence).unsqueeze(1)
        means, stds = [], []
        for part in log_mel.split(chunk):
            posterior = mel_vae.encode(part).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
        audio_mean = torch.cat(means).unflatten(0, (n, len(starts)))
        audio_std = torch.cat(stds).unflatten(0, (n, len(starts)))
        captions = sorted(set(bank.captions))
        lookup = {c: i for i, c in enumerate(captions)}
        captions.append("")
        text = {name: encode(captions).float() for name, encode in text_encoders.items()}
        # contiguous: the VAEs return channels-last strides, and a U-Net fed those sums in another order than one
        # fed a bank read back from a file (resumed runs must compute what uninterrupted ones do)
        return cls(video_mean=video_mean.float().contiguous(), video_std=video_std.float().contiguous(),
                   audio_mean=audio_mean.float().contiguous(), audio_std=audio_std.float().contiguous(),
                   clip_frames=int(clip_frames),
                   video_scaling=float(frames_vae.config.scaling_factor),
                   audio_scaling=float(mel_vae.config.scaling_factor),
                   caption_index=torch.tensor([lookup[c] for c in bank.captions], dtype=torch.long),
                   captions=captions, text=text)

    def save(self, path: str | Path) -> Path:
        """Write the bank to ``path`` (safetensors: the tensors, and in its metadata the captions, clip frames and
        scaling factors), atomically (a temporary file renamed into place); returns ``path``."""
        import json
        import os

        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"video_mean": self.video_mean, "video_std": self.video_std, "audio_mean": self.audio_mean,
                   "audio_std": self.audio_std, "caption_index": self.caption_index,
                   **{f"text.{name}": table for name, table in self.text.items()}}
        meta = {"captions": json.dumps(self.captions), "clip_frames": str(self.clip_frames),
                "video_scaling": repr(self.video_scaling), "audio_scaling": repr(self.audio_scaling)}
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=meta)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatentBank:
        """A bank written by :meth:`save`.

        Raises:
            ValueError: the file is not a latent bank (missing tensors or metadata).
        """
        import json

        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            return cls(video_mean=tensors["video_mean"], video_std=tensors["video_std"],
                       audio_mean=tensors["audio_mean"], audio_std=tensors["audio_std"],
                       clip_frames=int(meta["clip_frames"]), video_scaling=float(meta["video_scaling"]),
                       audio_scaling=float(meta["audio_scaling"]), caption_index=tensors["caption_index"],
                       captions=json.loads(meta["captions"]),
                       text={k.removeprefix("text."): v for k, v in tensors.items() if k.startswith("text.")})
        except Exception as exc:  # safetensors' own errors too (a header it cannot read)
            raise ValueError(f"{path}: not a latent bank ({type(exc).__name__}: {exc})") from exc

    def generator(self, seed: int, step: int) -> torch.Generator:
        """The random generator of training step ``step`` under ``seed`` (:func:`avgen.data.clip_bank.step_generator`,
        as the codecs' :meth:`ClipBank.generator`)."""
        from avgen.data.clip_bank import step_generator

        return step_generator(seed, step)

    def _conditions(self, clips: torch.Tensor, encoder: str, drop_prob: float, generator: torch.Generator
                    ) -> torch.Tensor:
        """The text embeddings of ``clips``' captions (``encoder``'s table), each replaced by the empty prompt's with
        probability ``drop_prob``."""
        if encoder not in self.text:
            raise KeyError(f"the latent bank has no {encoder!r} text embeddings (it has {', '.join(self.text)})")
        rows = self.caption_index[clips]
        dropped = torch.rand(len(clips), generator=generator) < drop_prob
        rows = torch.where(dropped, torch.full_like(rows, len(self.captions) - 1), rows)
        return self.text[encoder][rows]

    def frames(self, n: int, generator: torch.Generator, encoder: str = "clip", drop_prob: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` single frames drawn over every clip and time: latents float32 ``(n, C, h, w)`` (a posterior sample
        × the scaling factor) and the text embeddings of their clips' captions."""
        count, per_clip = self.video_mean.shape[:2]
        flat = torch.randint(count * per_clip, (n,), generator=generator)
        mean, std = self.video_mean.flatten(0, 1)[flat], self.video_std.flatten(0, 1)[flat]
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * self.video_scaling
        return latents, self._conditions(flat // per_clip, encoder, drop_prob, generator)

    def clips(self, n: int, generator: torch.Generator, encoder: str = "clip", drop_prob: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training clips (random clip, random start frame): video latents float32 ``(n, C, F, h, w)`` (axis 2 is
        time, F = ``clip_frames``) and the text embeddings of their captions."""
        clips = torch.randint(len(self), (n,), generator=generator)
        starts = torch.randint(self.starts, (n,), generator=generator)
        index = starts[:, None] + torch.arange(self.clip_frames)[None, :]
        mean, std = self.video_mean[clips[:, None], index], self.video_std[clips[:, None], index]
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * self.video_scaling
        return latents.permute(0, 2, 1, 3, 4), self._conditions(clips, encoder, drop_prob, generator)

    def audio(self, n: int, generator: torch.Generator, encoder: str = "clap", drop_prob: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training clips' audio: latents float32 ``(n, C_a, T', M')`` and their captions' text embeddings."""
        clips = torch.randint(len(self), (n,), generator=generator)
        windows = torch.randint(self.audio_mean.shape[1], (n,), generator=generator)
        mean, std = self.audio_mean[clips, windows], self.audio_std[clips, windows]
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * self.audio_scaling
        return latents, self._conditions(clips, encoder, drop_prob, generator)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 (hex) of a module's state: every tensor's name, shape, dtype and bytes, in ``state_dict`` order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class DenoiserTraining(TwinTraining):
    """A text-conditioned latent diffusion U-Net trained with ε-prediction MSE (module docstring).

    Args:
        config: the U-Net's (or motion adapter's) constructor arguments, kept in checkpoints.
        noise_schedule: the DDPM schedule (:data:`SCHEDULE_KEYS`): ``prediction_type`` ``epsilon``, ``v_prediction``
            or ``sample`` sets the regression target (:func:`avgen.diffusion.training_target`).
        cond_drop_prob: probability that a caption is replaced by the empty prompt.
        text_encoder: which of the bank's text tables conditions the model (``clip`` or ``clap``).
        frame_noise_correlation: r in [0, 1): the noise of a clip's frames is PYoCo's mixed noise
            (:func:`avgen.diffusion.mixed_noise`; Ge et al. 2023), correlated by r across frames; 0 (the default):
            independent frames, as AnimateDiff and ModelScope train. Only for the stages that train on clips.
        **kwargs: :class:`~avgen.systems.codec_twins.TwinTraining`'s (steps, batch size, optimiser, seed).

    Set :attr:`bank` (a :class:`LatentBank`) before ``fit``.

    Raises:
        ValueError: ``cond_drop_prob`` outside [0, 1], ``frame_noise_correlation`` outside [0, 1) or above 0 for a
            stage that trains on single frames or audio, an unknown ``prediction_type``.
    """

    def __init__(self, config: Mapping[str, Any], *, noise_schedule: Mapping[str, Any], cond_drop_prob: float = 0.1,
                 text_encoder: str = "clip", frame_noise_correlation: float = 0.0, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.noise_schedule = dict(noise_schedule)
        if not 0.0 <= float(cond_drop_prob) <= 1.0:
            raise ValueError(f"cond_drop_prob={cond_drop_prob}: expected a probability in [0, 1]")
        if not 0.0 <= float(frame_noise_correlation) < 1.0:
            raise ValueError(f"frame_noise_correlation={frame_noise_correlation}: expected r in [0, 1) "
                             f"(0: independent frames)")
        if float(frame_noise_correlation) > 0 and self.batch_kind != "clips":
            raise ValueError(f"frame_noise_correlation={frame_noise_correlation}: only a stage that trains on clips "
                             f"has frames to correlate ({type(self).__name__} trains on {self.batch_kind})")
        self.frame_noise_correlation = float(frame_noise_correlation)
        self.cond_drop_prob, self.text_encoder = float(cond_drop_prob), str(text_encoder)
        self.register_buffer("alphas_cumprod", alphas_cumprod(self.noise_schedule), persistent=False)
        self.prediction_type = str(self.noise_schedule.get("prediction_type", "epsilon"))
        training_target(self.prediction_type, torch.zeros(1), torch.zeros(1), self.alphas_cumprod,
                        torch.zeros(1, dtype=torch.long))  # an unknown prediction type fails here, not at step 1

    #: which :class:`LatentBank` draw a step trains on: ``frames``, ``clips`` or ``audio``
    batch_kind = "frames"

    @classmethod
    def build(cls, config: Mapping[str, Any]) -> torch.nn.Module:
        """``component_class(**config)`` (a diffusers class), randomly initialised."""
        import diffusers

        return getattr(diffusers, cls.component_class)(**config)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean latents x0, condition) of one step: the bank's :attr:`batch_kind` draw."""
        draw = getattr(self.bank, self.batch_kind)
        return draw(self.batch_size, generator, self.text_encoder, self.cond_drop_prob)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The network's output for ``noisy`` latents at ``timesteps`` (B,) under ``condition``."""
        raise NotImplementedError

    def denoise(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One step's draws (batch, then timesteps, then noise, all from ``generator``) and the network's output on
        them: ``x0``, ``noisy``, ``t``, ``output``, ``target`` (the schedule's, float32) and ``mse``."""
        x0, condition = self.batch(generator)
        t = torch.randint(len(self.alphas_cumprod), (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        if self.frame_noise_correlation > 0:  # drawn after the rest: r = 0 keeps the stage's earlier draws
            noise = mixed_noise(noise, self.frame_noise_correlation, generator)
        x0, noise, t = x0.to(self.device), noise.to(self.device), t.to(self.device)
        noisy = add_noise(x0, noise, self.alphas_cumprod, t)
        output = self.predict(noisy, t, condition.to(self.device)).float()
        target = training_target(self.prediction_type, x0, noise, self.alphas_cumprod, t)
        return {"x0": x0, "noisy": noisy, "t": t, "output": output, "target": target,
                "mse": F.mse_loss(output, target)}

    def losses(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": self.denoise(generator)["mse"]}

    @torch.no_grad()
    def held_out_loss(self, bank: LatentBank, batches: int = 4, batch_size: int = 16, seed: int = 4321) -> float:
        """The mean of the training loss over ``batches`` batches of ``bank`` (held-out clips) drawn with ``seed``,
        without caption drops: the same draws for every model, so two models' values compare."""
        saved_bank, saved_size, saved_drop = self.bank, self.batch_size, self.cond_drop_prob
        self.bank, self.batch_size, self.cond_drop_prob = bank, batch_size, 0.0
        try:
            values = [float(self.losses(bank.generator(seed, i))["loss"]) for i in range(batches)]
        finally:
            self.bank, self.batch_size, self.cond_drop_prob = saved_bank, saved_size, saved_drop
        return sum(values) / len(values)


class ImageUNetTraining(DenoiserTraining):
    """Stable Diffusion's objective on single frames: a ``UNet2DConditionModel`` (SD1.5's layout) on frame latents
    ``(B, C, h, w)`` with cross-attention to the CLIP text states ``(B, L, D)``."""

    component_class = "UNet2DConditionModel"
    batch_kind = "frames"

    def predict(self, noisy, timesteps, condition):
        return self.model(noisy, timesteps, encoder_hidden_states=condition).sample


class MotionModuleTraining(DenoiserTraining):
    """AnimateDiff's motion-module training: a trained SD1.5-layout image U-Net (``unet``, frozen) joined with a
    ``MotionAdapter(**config)`` into diffusers' ``UNetMotionModel``; only the motion modules train, on clip latents
    ``(B, C, F, h, w)`` with the text states repeated per frame (what ``AnimateDiffPipeline`` gives the model).

    The motion transformers' output projections start at zero (AnimateDiff's ``zero_initialize``): at step 0 the
    model is the image U-Net applied to every frame. :meth:`component` is the trained ``MotionAdapter``.

    Args:
        unet: the image U-Net (the ``animatediff_image`` stage's); None builds a random one from ``unet_config``
            (only to check the settings before that stage has trained).
        unet_config: its constructor arguments, used when ``unet`` is None.
    """

    component_class = "MotionAdapter"
    batch_kind = "clips"

    def __init__(self, config: Mapping[str, Any], *, unet=None, unet_config: Mapping[str, Any] | None = None,
                 **kwargs: Any):
        self._unet_source = (unet, dict(unet_config or {}))  # read by build(), before nn.Module's init
        super().__init__(config, **kwargs)
        # which image U-Net the motion modules are trained over: a checkpoint of other spatial weights is stale
        self.hparams["unet_digest"] = state_digest(unet) if unet is not None else None

    def resume_problem(self, saved: Mapping[str, Any]) -> str | None:
        """A checkpoint trained over another image U-Net than this module's (the ``animatediff_image`` stage was
        retrained or continued since) may not be continued or reused: its motion modules fit the old spatial
        weights."""
        was, now = saved.get("unet_digest"), self.hparams.get("unet_digest")
        if now is not None and was != now:
            return (f"its motion modules were trained over another image U-Net (digest {str(was)[:12]}, now "
                    f"{now[:12]}): animatediff_image changed since")
        return None

    def build(self, config: Mapping[str, Any]) -> torch.nn.Module:  # type: ignore[override]
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        from avgen.pretrained import quiet_loading

        unet, unet_config = self._unet_source
        unet = unet if unet is not None else UNet2DConditionModel(**unet_config)
        adapter = MotionAdapter(**config)
        for name, module in adapter.named_modules():
            if name.endswith("proj_out") and isinstance(module, torch.nn.Linear):
                torch.nn.init.zeros_(module.weight)
                torch.nn.init.zeros_(module.bias)
        with quiet_loading():
            model = UNetMotionModel.from_unet2d(unet, adapter)
        model.freeze_unet2d_params()
        return model

    def component(self) -> torch.nn.Module:
        """The trained motion modules as a ``MotionAdapter`` of ``config`` (what AnimateDiff releases)."""
        from diffusers import MotionAdapter

        adapter = MotionAdapter(**self.config)
        state = {k: v for k, v in self.model.state_dict().items() if "motion_modules" in k}
        adapter.load_state_dict(state, strict=True)
        return adapter.eval()

    def predict(self, noisy, timesteps, condition):
        frames = noisy.shape[2]
        return self.model(noisy, timesteps, encoder_hidden_states=condition.repeat_interleave(frames, 0)).sample


class VideoFinetuning(MotionModuleTraining):
    """The AnimateDiff twin's last stage: the trained image U-Net and motion modules joined into diffusers'
    ``UNetMotionModel`` and trained *together* on clips — the motion modules at ``lr``, the spatial layers at
    ``unet_lr`` — as ModelScope T2V trains its whole U-Net on video (Wang et al. 2023) where AnimateDiff keeps the
    image model frozen (Guo et al. 2024, Sec. 4.2). At the mini scale the frozen image U-Net's per-frame errors
    are what the sampled clips show: a per-frame latent offset of 0.02 (2 % of the latents' spread) already
    changes a frame's mean colour by 1.2 levels of 255 when decoded, and the motion modules alone could not
    cancel it (``configs/part/generators.yaml`` has the measurements).

    Optional ``frame_difference_weight`` λ adds λ · :func:`avgen.diffusion.frame_difference_loss` (the temporal
    differences of each frame's mean latent, predicted against true, in x̂0 with truncated-SNR weights) to the
    objective, and optional ``temporal_difference_weight`` λ_Δ adds λ_Δ times the same loss at every latent element
    (``grid=None``: the part of the x̂0 error that is new in each frame, which the decoded clip shows as texture
    redrawn frame by frame and optical flow reads as motion; the frame means miss it). Optional ``motion_weight`` μ
    weights the denoising MSE per element by
    :func:`avgen.diffusion.motion_weights` (1 + μ · the clean clip's relative frame-to-frame change², Latent
    Temporal Discrepancy's idea): the mini scenes' falls are a few latent elements of a mostly static clip, which a
    plain mean hardly weighs.

    :meth:`component` is the whole ``UNetMotionModel``; :func:`split_motion_model` gives the image U-Net and the
    ``MotionAdapter`` that the AnimateDiff twin publishes (what ``scale=mini`` loads).

    Args:
        config: the ``MotionAdapter`` config (the ``animatediff_motion`` stage's).
        unet: the trained image U-Net (``animatediff_image``), adapter: the trained motion modules
            (``animatediff_motion``); their weights are copied, they are not changed. Both None: a model of random
            weights, only to check the settings before those stages have trained.
        unet_lr: the spatial layers' peak learning rate (the motion modules': ``lr``).
        frame_difference_weight: λ ≥ 0.
        temporal_difference_weight: λ_Δ ≥ 0.
        motion_weight: μ ≥ 0 (0: the plain MSE).

    Raises:
        ValueError: only one of ``unet`` and ``adapter`` given, ``adapter``'s config differs from ``config``,
            ``unet``'s from ``unet_config``, a negative ``unet_lr``, λ, λ_Δ or μ, or λ or λ_Δ > 0 with ε-prediction on a
            zero-terminal-SNR schedule (no x̂0 at the last timestep).
    """

    component_class = "UNetMotionModel"

    def __init__(self, config: Mapping[str, Any], *, unet=None, adapter=None,
                 unet_config: Mapping[str, Any] | None = None, unet_lr: float = 1e-4,
                 frame_difference_weight: float = 0.0, temporal_difference_weight: float = 0.0,
                 motion_weight: float = 0.0, **kwargs: Any):
        if (unet is None) != (adapter is None):
            raise ValueError("animatediff_video continues the trained image U-Net and motion modules: train the "
                             "animatediff_image and animatediff_motion stages first (or take them with "
                             "pretrain_twins.start_from=avgen/backbones/mini_generators)")
        weights = {"unet_lr": unet_lr, "frame_difference_weight": frame_difference_weight,
                   "temporal_difference_weight": temporal_difference_weight, "motion_weight": motion_weight}
        bad = {}
        for key, value in weights.items():
            try:
                if not float(value) >= 0:
                    bad[key] = value
            except (TypeError, ValueError):
                bad[key] = value
        if bad:
            raise ValueError(", ".join(f"{k}={v}" for k, v in bad.items()) + ": expected numbers >= 0")
        schedule = dict(kwargs.get("noise_schedule") or {})
        for key in ("frame_difference_weight", "temporal_difference_weight"):
            if float(weights[key]) > 0 and schedule.get("rescale_betas_zero_snr") \
                    and schedule.get("prediction_type", "epsilon") == "epsilon":
                raise ValueError(f"{key} > 0 needs x̂0 at every timestep; an ε prediction gives none at zero terminal "
                                 f"SNR (ᾱ_T = 0): use v_prediction or {key}=0")
        if unet is not None and unet_config:
            mismatch = [k for k, v in dict(unet_config).items()
                        if _nested_lists(unet.config.get(k)) != _nested_lists(v)]
            if mismatch:
                raise ValueError(f"unet_config differs from the trained image U-Net's in {', '.join(mismatch)}; give "
                                 f"pretrain_twins.generators.animatediff_image.model as it was trained")
        super().__init__(config, unet=unet, unet_config=unet_config, **kwargs)
        self.unet_lr, self.frame_difference_weight = float(unet_lr), float(frame_difference_weight)
        self.temporal_difference_weight = float(temporal_difference_weight)
        self.motion_weight = float(motion_weight)
        if adapter is not None:
            mismatch = [k for k, v in dict(config).items() if _nested_lists(adapter.config.get(k)) != _nested_lists(v)]
            if mismatch:
                raise ValueError(f"its model config differs from the trained motion adapter's in "
                                 f"{', '.join(mismatch)}; give pretrain_twins.generators.animatediff_motion.model")
            result = self.model.load_state_dict(adapter.state_dict(), strict=False)
            if result.unexpected_keys:
                raise ValueError(f"the motion adapter does not fit the model: {result.unexpected_keys[:3]}")
        self.hparams["adapter_digest"] = state_digest(adapter) if adapter is not None else None
        self.model.requires_grad_(True)

    def resume_problem(self, saved: Mapping[str, Any]) -> str | None:
        """A checkpoint that continued another image U-Net or other motion modules may not be continued."""
        was, now = saved.get("unet_digest"), self.hparams.get("unet_digest")
        problem = None
        if now is not None and was != now:
            problem = (f"it continued another image U-Net (digest {str(was)[:12]}, now {now[:12]}): "
                       f"animatediff_image changed since")
        if problem is None:
            was, now = saved.get("adapter_digest"), self.hparams.get("adapter_digest")
            if now is not None and was != now:
                problem = (f"it continued other motion modules (digest {str(was)[:12]}, now {now[:12]}): "
                           f"animatediff_motion changed since")
        return problem

    def component(self) -> torch.nn.Module:
        """The whole trained ``UNetMotionModel`` (spatial layers and motion modules)."""
        return self.model

    def losses(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        from avgen.diffusion import frame_difference_loss, motion_weights, split_prediction

        step = self.denoise(generator)
        loss, logged = step["mse"], {"mse": step["mse"].detach()}
        if self.motion_weight > 0:
            weights = motion_weights(step["x0"], self.motion_weight)
            loss = (weights * (step["output"] - step["target"]).pow(2)).mean()
            logged["motion_weighted_mse"] = loss.detach()
        if self.frame_difference_weight > 0 or self.temporal_difference_weight > 0:
            predicted, _ = split_prediction(self.prediction_type, step["noisy"], step["output"],
                                            self.alphas_cumprod, step["t"])
            for key, grid, weight in (("frame_difference", 1, self.frame_difference_weight),
                                      ("temporal_difference", None, self.temporal_difference_weight)):
                if weight > 0:
                    term = frame_difference_loss(predicted, step["x0"], self.alphas_cumprod, step["t"], grid=grid)
                    loss = loss + weight * term
                    logged[key] = term.detach()
        return {"loss": loss, **logged}

    def configure_optimizers(self):
        """One AdamW, two parameter groups: the motion modules (``lr``) and the spatial layers (``unet_lr``); the
        warm-up and cosine of :meth:`lr_factor` scale both."""
        motion = [p for n, p in self.model.named_parameters() if "motion_modules" in n]
        spatial = [p for n, p in self.model.named_parameters() if "motion_modules" not in n]
        optimizer = torch.optim.AdamW([{"params": motion, "lr": self.lr}, {"params": spatial, "lr": self.unet_lr}],
                                      betas=self.betas, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def split_motion_model(model, unet_config: Mapping[str, Any], adapter_config: Mapping[str, Any]):
    """(image ``UNet2DConditionModel(**unet_config)``, ``MotionAdapter(**adapter_config)``) holding a
    ``UNetMotionModel``'s spatial layers and motion modules: the two components AnimateDiff ships, which
    ``UNetMotionModel.from_unet2d(unet, adapter)`` joins back into ``model``.

    Raises:
        ValueError: a weight of ``model`` fits neither (other configs than the model was built from).
    """
    from diffusers import MotionAdapter, UNet2DConditionModel

    state = model.state_dict()
    unet, adapter = UNet2DConditionModel(**unet_config), MotionAdapter(**adapter_config)
    spatial = {k: v for k, v in state.items() if "motion_modules" not in k}
    motion = {k: v for k, v in state.items() if "motion_modules" in k}
    for part, weights in ((unet, spatial), (adapter, motion)):
        result = part.load_state_dict(weights, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"the UNetMotionModel does not split into {type(part).__name__} of the given config: "
                             f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return unet.eval(), adapter.eval()


class Video3DUNetTraining(DenoiserTraining):
    """ModelScope T2V's objective: a ``UNet3DConditionModel`` (zeroscope's layout) trained whole on clip latents
    ``(B, C, F, h, w)`` with cross-attention to the CLIP text states."""

    component_class = "UNet3DConditionModel"
    batch_kind = "clips"

    def predict(self, noisy, timesteps, condition):
        return self.model(noisy, timesteps, encoder_hidden_states=condition).sample


class AudioUNetTraining(DenoiserTraining):
    """AudioLDM's U-Net (a ``UNet2DConditionModel`` with a projected class embedding, self-attention only) on mel-VAE
    latents ``(B, C, T', M')``, the L2-normalised CLAP text embedding ``(B, P)`` as ``class_labels``."""

    component_class = "UNet2DConditionModel"
    batch_kind = "audio"

    def __init__(self, config: Mapping[str, Any], *, text_encoder: str = "clap", **kwargs: Any):
        super().__init__(config, text_encoder=text_encoder, **kwargs)

    def predict(self, noisy, timesteps, condition):
        return self.model(noisy, timesteps, encoder_hidden_states=None, class_labels=condition).sample


TRAINERS = {"audioldm_unet": AudioUNetTraining, "animatediff_image": ImageUNetTraining,
            "animatediff_motion": MotionModuleTraining, "animatediff_video": VideoFinetuning,
            "zeroscope_unet": Video3DUNetTraining}
#: a stage that continues other stages' models → the components it replaces in the published generators
CONTINUES: dict[str, tuple[str, ...]] = {"animatediff_video": ("animatediff_image", "animatediff_motion")}
