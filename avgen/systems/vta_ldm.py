"""VTA-LDM, video → audio (Xu et al., "Video-to-Audio Generation with Hidden Alignment", arXiv 2407.07464).

Frozen CLIP4Clip frame features f_V (per-frame CLIP ViT-L/14 ``image_embeds`` at 2 fps, 768-d) → a
trained linear projection φ (768 → 2048) → the cross-attention context of a latent diffusion U-Net
(diffusers ``UNet2DConditionModel``, 8 latent channels, trained from scratch) that denoises AudioLDM
VAE latents of the clip's log-mel spectrogram (Sec. 3 and App. C–E of the paper):

- audio: the clip's waveform zero-padded to ``model.audio_seconds`` (10.24 s = 163,840 samples at
  16 kHz for 10-s clips) → 1024 mel frames → latents (B, 8, 256, 16); the loss covers every latent
  frame; generated audio is cropped back to the clip;
- objective: Eq. 1 with ``model.prediction_type`` ε (the paper) or v (the public code), optionally
  Min-SNR-γ weighted (:func:`avgen.diffusion.min_snr_weights`);
- classifier-free guidance (Eq. 2) against a trained null: the all-zero context after φ, of the same
  length, attention mask all true; in training the context is replaced by it with probability
  ``model.cond_drop_prob`` (0.1). The public code never drops the condition yet guides at inference;
  avgen does not reproduce that.

Two departures from the public code are on purpose (``../shared/reference/official-code-notes.md``
section 2): φ is trained (the public code leaves it out of the optimizer), and CLIP's mean/std
normalisation is applied (``model.encoder.normalize=false`` reproduces the public code's skip).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from torch import nn

from avgen.backbones.audioldm import decode_audio, encode_audio, latent_frames, load_audio_codec, vae_downsampling
from avgen.data.geometry import ClipGeometry
from avgen.diffusion import (
    MIN_SNR_FORMS,
    add_noise,
    classifier_free_guidance,
    min_snr_weights,
    seeded_noise,
    training_target,
)
from avgen.errors import ConfigError
from avgen.media import equal_power_crossfade, frame_count, quantize_unit_range, uint8_to_unit_range
from avgen.pretrained import quiet_loading
from avgen.samples import SampleReport, clip_caption, split_samples
from avgen.systems.base import DiffusionSystem, plain_config, system_arguments
from avgen.systems.settings import SamplingSettings, guidance_scale, setting

log = logging.getLogger("avgen")

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}
# DPM-Solver++ (2M) as diffusers configures it for Stable Diffusion
SAMPLER_OVERRIDES = {"ddpm": {}, "ddim": {"set_alpha_to_one": False, "steps_offset": 1},
                     "dpm_solver": {"algorithm_type": "dpmsolver++", "solver_order": 2}}


def sampler_name(key: str, value: Any) -> str:
    """One of :data:`SAMPLERS` (``ddpm``: the paper's 300-step sampler)."""
    if value not in SAMPLERS:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(SAMPLERS)}")
    return value


@dataclass(frozen=True)
class VTALDMSampling(SamplingSettings):
    """``model.sampling`` of VTA-LDM (defaults: ``configs/model/vta_ldm.yaml``): the ``sampler``
    (``ddpm``, the paper's, with 300 ``steps``; ``ddim`` or ``dpm_solver`` with fewer), the classifier-free
    guidance scale ``guidance`` (Eq. 2; paper 3), and ``batch_size``."""

    guidance: float = setting(guidance_scale, "classifier-free guidance scale (Eq. 2; 1 = none)")
    sampler: str = setting(sampler_name, "ddpm | ddim | dpm_solver")


class VTALDM(DiffusionSystem):
    """VTA-LDM as a LightningModule (module docstring for the method).

    Args:
        encoder: ``{name: clip4clip, path, normalize}``: the frozen frame encoder (a CLIP folder or hub
            id, ``tiny:clip4clip`` for the tiny twin) and whether CLIP's mean/std normalisation is applied.
            It embeds every frame of the clip, at ``data.clip.fps`` (the paper: 2 fps, experiment ``vta_ldm``).
        audio: ``{base}``: AudioLDM's VAE and vocoder (a folder or hub id in diffusers' AudioLDM layout,
            ``tiny:audioldm`` for the tiny twin).
        unet: ``UNet2DConditionModel`` arguments (the paper's large 2048 configuration by default);
            ``cross_attention_dim`` is the width of φ's output.
        noise_scheduler: ``DDPMScheduler`` arguments of the training noise schedule (Stable Diffusion
            2.1's: scaled_linear β 0.00085–0.012, 1000 steps); ``prediction_type`` is set from ``prediction_type``.
        clip: the clip geometry (``data.clip``), held as a :class:`~avgen.data.geometry.ClipGeometry`.
        audio_seconds: the padded audio length every clip is diffused at (10.24 s for 10-s clips); its
            mel frames must divide by the VAE × U-Net downsampling.
        prediction_type: ``epsilon`` (paper Eq. 1) or ``v_prediction`` (public code).
        min_snr_gamma: γ of Min-SNR weighting (``None``: plain MSE, the paper; 5: the public code).
        min_snr_form: ``target`` (weight carried to the target) or ``epsilon`` (public code:
            min(SNR, γ)/SNR on any target).
        released: path of the authors' released ``pytorch_model.bin`` to start from
            (:func:`load_released`), or ``None``.
        gradient_checkpointing: recompute the U-Net's blocks in the backward pass.
        scale, tiny, tiny_dir: as the other systems (``scale=tiny`` merges ``tiny`` over the arguments).
        sampling, validation: typed blocks (:class:`VTALDMSampling`,
            :class:`~avgen.systems.settings.ValidationSettings`).

    Raises:
        ConfigError: a bad setting (before any network loads), a clip longer than ``audio_seconds`` or an
            ``audio_seconds`` the latents cannot tile, or an unsupported ``prediction_type``.
    """

    MODEL_CONFIG = "vta_ldm"
    sampling_settings = VTALDMSampling
    SAMPLER_CONFIG = ()

    def __init__(self, encoder: Mapping, audio: Mapping, unet: Mapping, noise_scheduler: Mapping, clip: Mapping, *,
                 audio_seconds: float = 10.24, prediction_type: str = "epsilon", min_snr_gamma: float | None = None,
                 min_snr_form: str = "target", released: str | None = None, scale: str = "paper",
                 tiny: Mapping | None = None, tiny_dir: str | None = None, gradient_checkpointing: bool = False,
                 sampling: Mapping | None = None, validation: Mapping | None = None, optimizer=None, scheduler=None,
                 ema_decay: float | None = None, cond_drop_prob: float = 0.1):
        super().__init__(optimizer=optimizer, scheduler=scheduler, ema_decay=ema_decay, cond_drop_prob=cond_drop_prob)
        args = system_arguments(scale, tiny, encoder=encoder, audio=audio, unet=unet, noise_scheduler=noise_scheduler,
                                audio_seconds=audio_seconds, sampling=sampling, validation=validation)
        audio_seconds = float(args["audio_seconds"])
        self.configure_settings(args, scale)  # before any network loads
        self.clip = ClipGeometry.from_config(plain_config(clip))
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"model.prediction_type={prediction_type!r}: expected epsilon (paper) or v_prediction "
                              f"(public code)")
        if min_snr_gamma is not None and (isinstance(min_snr_gamma, bool) or not min_snr_gamma > 0):
            raise ConfigError(f"model.min_snr_gamma={min_snr_gamma!r}: expected a value > 0 (public code: 5) or null "
                              f"(the paper's plain MSE)")
        if min_snr_form not in MIN_SNR_FORMS:
            raise ConfigError(f"model.min_snr_form={min_snr_form!r}: expected one of {', '.join(MIN_SNR_FORMS)}")
        self.prediction_type, self.min_snr_gamma, self.min_snr_form = prediction_type, min_snr_gamma, min_snr_form
        enc = args["encoder"]
        if enc.get("name", "clip4clip") != "clip4clip":
            raise ConfigError(f"model.encoder.name={enc.get('name')!r}: this version of VTA-LDM has the clip4clip "
                              f"encoder")
        if not audio_seconds >= self.clip.seconds:
            raise ConfigError(f"model.audio_seconds={audio_seconds}: shorter than the clip (data.clip.seconds="
                              f"{self.clip.seconds}); the clip's audio is zero-padded to it")
        self.audio_samples = int(round(audio_seconds * self.clip.sample_rate))

        self.noise_scheduler = DDPMScheduler(**{**args["noise_scheduler"], "prediction_type": prediction_type})
        self.encoder = build_frame_encoder(enc, tiny_dir)
        self.codec = load_audio_codec(args["audio"]["base"], "model.audio.base", tiny_dir=tiny_dir)
        if self.codec.mel.sample_rate != self.clip.sample_rate:
            rate = self.codec.mel.sample_rate
            raise ConfigError(f"data.clip.sample_rate={self.clip.sample_rate}: AudioLDM's codec works at {rate} Hz; "
                              f"set data.clip.sample_rate={rate}")
        self.vae, self.vocoder, self.mel = self.codec.vae, self.codec.vocoder, self.codec.mel
        unet_args = dict(args["unet"])
        unet_args["in_channels"] = unet_args["out_channels"] = self.vae.config.latent_channels
        with quiet_loading():
            self.unet = UNet2DConditionModel(**unet_args)
        self.time_multiple = vae_downsampling(self.vae) * 2 ** (len(self.unet.config.block_out_channels) - 1)
        mel_frames = self.mel.num_frames(self.audio_samples)
        if mel_frames % self.time_multiple:
            good = math.ceil(mel_frames / self.time_multiple) * self.time_multiple * self.mel.hop_length
            raise ConfigError(f"model.audio_seconds={audio_seconds}: {mel_frames} mel frames do not divide by the "
                              f"VAE × U-Net downsampling ({self.time_multiple}); use {good / self.clip.sample_rate:g}")
        self.projection = nn.Linear(self.encoder.embed_dim, self.unet.config.cross_attention_dim)
        self.freeze(self.encoder, self.vae, self.vocoder, self.mel)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.register_buffer("alphas", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)
        if released:
            unet_state, projection_state = load_released(released)
            self.unet.load_state_dict(unet_state)
            self.projection.load_state_dict(projection_state)

    # ------------------------------------------------------------------------------ geometry
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, T', F') of the latents of one padded clip (8, 256, 16 at the paper's settings)."""
        frames, width = latent_frames(self.codec, self.audio_samples, self.time_multiple)
        return self.vae.config.latent_channels, frames, width

    # ------------------------------------------------------------------------------ conditioning
    def context(self, video: torch.Tensor, lengths: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """φ(f_V): video (B, F, 3, H, W) float in [-1, 1] at ``data.clip.fps`` → context (B, F, D_φ) and its
        attention mask (B, F) bool: clip i has ``lengths[i]`` real frames (default all F); the context of
        the padded frames is zero and masked out."""
        pixels = quantize_unit_range(video)  # the uint8 frames the encoder takes (exact for decoded frames)
        clips = list(pixels.unbind(0)) if lengths is None else [pixels[i, :n] for i, n in enumerate(lengths)]
        out = self.encoder(clips)  # embeds (B, F, 768) float32, zero past each clip's end
        context = self.projection(out.embeds.to(self.projection.weight.dtype))
        mask = out.mask.to(context.device)
        return context * mask[..., None], mask

    @staticmethod
    def null_context(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained null of Eq. 2: an all-zero context of the same shape, mask all true."""
        return torch.zeros_like(context), torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The U-Net's output (ε or v) for latents (B, C, T', F') at timesteps t (B,) or scalar."""
        return self.unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample

    # ------------------------------------------------------------------------------ training
    def padded_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (B, S) zero-padded (or cut) to :attr:`audio_samples`."""
        if audio.shape[1] >= self.audio_samples:
            return audio[:, :self.audio_samples]
        return F.pad(audio, (0, self.audio_samples - audio.shape[1]))

    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                       ) -> dict[str, torch.Tensor]:
        video, audio = batch["video"], batch["audio"]
        b = video.shape[0]
        with torch.no_grad():
            latents = encode_audio(self.codec, self.padded_audio(audio.float()), generator=generator,
                                   time_multiple=self.time_multiple)
        context, mask = self.context(video)
        if self.training and self.cond_drop_prob > 0:
            keep = (torch.rand(b, generator=generator) >= self.cond_drop_prob).to(context.device)
            context = torch.where(keep[:, None, None], context, torch.zeros_like(context))
            mask = torch.where(keep[:, None], mask, torch.ones_like(mask))
        t = torch.randint(0, len(self.alphas), (b,), generator=generator).to(latents.device)
        noise = (torch.randn_like(latents) if generator is None
                 else torch.randn(latents.shape, generator=generator).to(latents))
        noisy = add_noise(latents, noise, self.alphas, t)
        out = self.denoise(noisy.to(self.unet.dtype), t, context.to(self.unet.dtype), mask)
        target = training_target(self.prediction_type, latents, noise, self.alphas, t)
        per_sample = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weights = min_snr_weights(self.alphas, t, self.prediction_type, self.min_snr_gamma, self.min_snr_form)
        loss = (weights * per_sample).mean()
        return {"loss": loss, "mse": per_sample.mean().detach()}

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        if batch_idx == 0:
            self.validation_batch["video"] = batch["video"].detach()

    def on_validation_epoch_end(self) -> None:
        count = self.validation_sample_count()
        if count <= 0:
            return
        video, captions = self.validation_batch["video"][:count], self.validation_batch["caption"][:count]
        with self.ema_weights():
            audio = self.generate(video, steps=self.validation_settings.steps, seed=0)
        self.log_validation_samples(captions, video, audio)

    # ------------------------------------------------------------------------------ sampling
    def sampler(self, name: str):
        """A fresh diffusers scheduler of kind ``name`` on the training noise schedule."""
        return SAMPLERS[name].from_config({**self.noise_scheduler.config, **SAMPLER_OVERRIDES[name]})

    @torch.no_grad()
    def generate_latents(self, context: torch.Tensor, mask: torch.Tensor, *, steps: int, guidance: float,
                         sampler: str, seed: int = 0, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised latents (B, C, T', F') for a context (B, F, D_φ) with mask (B, F): the ``sampler``'s
        ``steps`` with classifier-free guidance (Eq. 2) against :meth:`null_context` unless ``guidance`` is 1.
        Clip i starts from noise seeded with ``seed + i`` (or from ``latents``); a stochastic sampler (DDPM)
        draws clip i's step noise from :func:`step_generators` (``seed``), so a clip does not depend on its batch."""
        b, device = context.shape[0], context.device
        if latents is None:
            (latents,) = seeded_noise([self.latent_shape], b, seed)
        generators = step_generators(b, seed)
        scheduler = self.sampler(sampler)
        scheduler.set_timesteps(steps, device=device)
        x = latents.to(device, self.unet.dtype) * scheduler.init_noise_sigma
        guided = guidance != 1.0
        if guided:
            null, null_mask = self.null_context(context)
            context, mask = torch.cat([null, context]), torch.cat([null_mask, mask])
        context = context.to(self.unet.dtype)
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            out = self.denoise(model_in, t, context, mask)
            if guided:
                out = classifier_free_guidance(*out.chunk(2), guidance)
            x = scheduler.step(out, t, x, **step_options(scheduler, generators)).prev_sample
        return x

    @torch.no_grad()
    def generate(self, video: torch.Tensor, *, lengths: Sequence[int] | None = None, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, seed: int = 0) -> torch.Tensor:
        """Audio (B, S) in [-1, 1] at ``clip.sample_rate`` for video (B, F, 3, H, W) in [-1, 1] at the
        encoder's rate: S covers the clip (``data.clip.seconds``) of the padded length that was diffused."""
        settings = self.sampling.updated("sample", steps=steps, guidance=guidance, sampler=sampler)
        device = self.alphas.device
        context, mask = self.context(video.to(device), lengths)
        latents = self.generate_latents(context, mask, steps=settings.steps, guidance=settings.guidance,
                                        sampler=settings.sampler, seed=seed)
        audio = decode_audio(self.codec, latents, self.audio_samples)
        return audio[:, :self.clip.num_samples].float().clamp(-1, 1)

    # ------------------------------------------------------------------------------ sample command
    def sample_to_files(self, out_dir: str | Path, n: int = 4, video: str | None = None, steps: int | None = None,
                        guidance: float | None = None, sampler: str | None = None, seed: int = 0,
                        batch_size: int | None = None, device: str = "auto", overwrite: bool = False,
                        **unused: Any) -> SampleReport:
        """``python -m avgen sample``: audio for every readable input video, dubbed onto it.

        Inputs: ``video`` = a file or a folder of files of any container FFmpeg reads
        (:func:`avgen.media.scan_media`; other systems' sample folders too); default: the first ``n``
        clips of the training data's test split. Per input ``<stem>``: ``<stem>.wav`` (the generated
        audio, 16 kHz), ``<stem>.mp4`` (the input's video stream, copied when its codec fits mp4, else
        h264 CRF 18, with the generated audio: :func:`avgen.media.dub_video`), ``<stem>.txt`` (the
        caption, data clips only) and ``<stem>.json`` (source, how the video was carried, the windows).

        The audio covers the video stream's duration (last pts + frame duration − first pts). Frames are
        taken at ``data.clip.fps``; an input longer than the clip is generated in clip-long windows
        overlapping by 1 s (:func:`window_overlap`), joined with an equal-power crossfade
        (:func:`avgen.media.crossfade_windows`, :func:`avgen.media.equal_power_crossfade`).
        Window k (over every input, in order) starts from noise seeded with ``seed + k``. An input that
        cannot be read is in the report's ``refused``; one that fails to write is in ``failed``.

        Raises:
            ConfigError: a bad ``sample.*`` value (before any input is read), or no input.
            FileExistsError: an output exists and ``overwrite`` is false (checked before generating).
        """
        settings = self.sampling.updated("sample", steps=steps, guidance=guidance, sampler=sampler,
                                         batch_size=batch_size)  # checked before any input is read
        self.warn_unused_sample_options(unused)
        out_dir = Path(out_dir)
        with tempfile.TemporaryDirectory(prefix="avgen-vta-inputs-") as scratch:
            inputs, refused = self._video_inputs(video, int(n), Path(scratch))
            for entry in refused:
                log.warning("input %s refused: %s", entry["file"], entry["reason"])
            report = SampleReport(refused=refused)
            if not inputs:
                return report
            existing = [p for item in inputs for p in (out_dir / f"{item.stem}{sfx}" for sfx in (".mp4", ".wav"))
                        if p.exists()]
            if existing and not overwrite:
                raise FileExistsError(f"{existing[0]} exists; pass sample.overwrite=true to replace the samples, "
                                      f"or choose another run folder")
            self.to_sampling_device(device)
            out_dir.mkdir(parents=True, exist_ok=True)
            windows = [(i, start, end) for i, item in enumerate(inputs) for start, end in item.windows]
            chunks: list[np.ndarray] = []
            with self.ema_weights():
                for first in range(0, len(windows), settings.batch_size):
                    group = windows[first:first + settings.batch_size]
                    frames = [inputs[i].window_frames(start, end, self.clip) for i, start, end in group]
                    lengths = [len(f) for f in frames]
                    h, w = frames[0].shape[1:3]
                    video_batch = torch.zeros(len(group), max(lengths), 3, h, w)
                    for j, f in enumerate(frames):
                        video_batch[j, :len(f)] = uint8_to_unit_range(f)
                    audio = self.generate(video_batch, lengths=lengths, steps=settings.steps,
                                          guidance=settings.guidance, sampler=settings.sampler, seed=seed + first)
                    chunks += [audio[j, :end - start].cpu().numpy() for j, (_, start, end) in enumerate(group)]
            for i, item in enumerate(inputs):
                mine = [(chunk, start) for chunk, (k, start, _) in zip(chunks, windows) if k == i]
                wave = equal_power_crossfade([c for c, _ in mine], [s for _, s in mine], item.num_samples)
                report.extend(self._write_dubbed(out_dir, item, wave, overwrite))
        report.written.sort()
        print(f"wrote {len(report.written)} dubbed videos to {out_dir}")
        return report

    def _write_dubbed(self, out_dir: Path, item: VideoInput, wave: np.ndarray, overwrite: bool) -> SampleReport:
        """``<stem>.mp4/.wav/.txt/.json`` of one input, whole or not at all."""
        from avgen.media import MediaError, dub_video, write_bytes_atomic, write_wav

        paths = [out_dir / f"{item.stem}{sfx}" for sfx in (".mp4", ".wav", ".txt", ".json")]
        try:
            info = dub_video(item.path, wave, self.clip.sample_rate, paths[0], overwrite=overwrite)
            write_wav(paths[1], wave, self.clip.sample_rate, overwrite=overwrite)
            write_bytes_atomic(paths[2], item.caption.encode(), overwrite=overwrite)
            meta = {"source": item.source, "prompt": item.caption, "dub": {**info.to_json(), "path": paths[0].name},
                    "windows_s": [[s / self.clip.sample_rate, e / self.clip.sample_rate] for s, e in item.windows]}
            write_bytes_atomic(paths[3], json.dumps(meta, indent=1).encode(), overwrite=overwrite)
        except (MediaError, OSError) as exc:
            for path in paths:
                path.unlink(missing_ok=True)
            log.warning("%s not written: %s", item.stem, exc)
            return SampleReport(failed=[{"sample": item.stem, "reason": str(exc)}])
        return SampleReport(written=[paths[0]])

    def _video_inputs(self, video: str | None, n: int, scratch: Path) -> tuple[list[VideoInput], list[dict[str, str]]]:
        """Every input video, decoded at the clip's rate and size before any model runs; refused ones with
        the reason. Data clips (``video`` unset) are written to ``scratch`` first."""
        from avgen.media import MediaError, scan_media

        if video is None:
            samples = split_samples(((self.run_config or {}).get("data") or {}).get("root"), n)
            if not samples:
                raise ConfigError("sample.video is not set and the training data's test clips cannot be read; pass "
                                  "sample.video=<video file (any container), or a folder of them>")
            files = []
            for key, parts in samples:
                path = scratch / f"{key.replace('/', '__')}.mp4"
                path.write_bytes(parts["mp4"])
                files.append((path, key, clip_caption(parts)))
            skipped: list[tuple[Path, str]] = []
        else:
            source = Path(video)
            if source.is_dir():
                found = scan_media(source, "video")
                if not found.files and not found.skipped:
                    raise ConfigError(f"sample.video={video}: the folder is empty")
                files = [(p, str(p.resolve()), "") for p in found.files]
                skipped = found.skipped
            elif source.is_file():
                files, skipped = [(source, str(source.resolve()), "")], []
            else:
                raise ConfigError(f"sample.video={video}: no such file or folder")
        stems = [p.stem for p, _, _ in files]
        usable, refused = [], [{"file": p.name, "reason": r} for p, r in skipped]
        for path, key, caption in files:
            stem = path.stem if stems.count(path.stem) == 1 else path.name.replace(".", "_")
            try:
                usable.append(VideoInput.read(path, key, caption, stem, self.clip))
            except MediaError as exc:
                refused.append({"file": path.name, "reason": " ".join(str(exc).split())})
        return usable, sorted(refused, key=lambda entry: entry["file"])


def window_overlap(clip: ClipGeometry) -> int:
    """Samples two generation windows share: 1 s (VTA-LDM's 10-s clips), at most a quarter of a clip."""
    return min(clip.sample_rate, clip.num_samples // 4)


@dataclass
class VideoInput:
    """One input of :meth:`VTALDM.sample_to_files`: its frames (F, H, W, 3) uint8 at ``clip.fps`` over the
    whole video stream, the audio length that covers the stream (samples), and the generation windows."""

    path: Path
    source: str
    caption: str
    stem: str
    frames: np.ndarray
    num_samples: int
    windows: list[tuple[int, int]]

    @classmethod
    def read(cls, path: Path, source: str, caption: str, stem: str, clip: ClipGeometry) -> "VideoInput":
        """Decode ``path`` (raises :class:`~avgen.media.MediaError` when it cannot be read)."""
        from avgen.media import MediaError, crossfade_windows, decode_video, frame_count, video_stream_duration

        duration = video_stream_duration(path)
        num_samples = frame_count(duration, clip.sample_rate)
        if num_samples < 1:
            raise MediaError(f"{path}: the video stream lasts {float(duration):.3f} s; nothing to generate")
        frames, _ = decode_video(path, fps=clip.fps, fit_to=(clip.height, clip.width))
        windows = crossfade_windows(num_samples, clip.num_samples, window_overlap(clip))
        return cls(path=path, source=source, caption=caption, stem=stem, frames=frames, num_samples=num_samples,
                   windows=windows)

    def window_frames(self, start: int, end: int, clip: ClipGeometry) -> np.ndarray:
        """The frames (F_w, H, W, 3) uint8 shown during samples [start, end): slots ``round(start/sr · fps)``
        up to ``round(end/sr · fps)`` (at least one frame)."""
        first = min(frame_count(Fraction(start, clip.sample_rate), clip.fps), len(self.frames) - 1)
        last = max(first + 1, min(frame_count(Fraction(end, clip.sample_rate), clip.fps), len(self.frames)))
        return self.frames[first:last]


# ------------------------------------------------------------------------------ parts
STEP_SEED_OFFSET = 1_000_003  # keeps a clip's step noise apart from the initial noise of another clip


def step_generators(batch: int, seed: int) -> list[torch.Generator]:
    """One CPU generator per clip for a stochastic sampler's step noise: clip i's is seeded with
    ``seed + i + STEP_SEED_OFFSET`` (diffusers' ``randn_tensor`` draws sample i from generator i)."""
    return [torch.Generator().manual_seed(seed + i + STEP_SEED_OFFSET) for i in range(batch)]


def step_options(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """``generator=`` for a scheduler whose ``step`` draws noise (as diffusers' pipelines pass it), else nothing."""
    import inspect

    return {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}


def build_frame_encoder(cfg: Mapping[str, Any], tiny_dir: str | None) -> nn.Module:
    """The frozen frame encoder of ``model.encoder`` (CLIP4Clip)."""
    from avgen.encoders.clip4clip import HUB_ID, load_clip4clip

    return load_clip4clip(cfg.get("path") or HUB_ID, "model.encoder.path", tiny_dir=tiny_dir,
                          normalize=cfg.get("normalize", True))


RELEASED_UNET = "unet."
RELEASED_PROJECTION = "vid_fea_extractor.linear_layer."
RELEASED_FROZEN = ("vid_fea_extractor.clip_vision.", "vid_fea_extractor.clip_text.")


class ReleasedCheckpointError(ValueError):
    """The released VTA-LDM file does not hold what its layout promises."""


def load_released(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The U-Net and φ state dicts of the authors' released checkpoint (``ariesssxu/vta-ldm-clip4clip-v-large``,
    ``pytorch_model.bin``: the state dict of their ``AudioDiffusion`` module), read with
    ``torch.load(weights_only=True)``.

    Keys ``unet.*`` → the U-Net, ``vid_fea_extractor.linear_layer.*`` → φ; the frozen CLIP towers
    (``vid_fea_extractor.clip_vision.*`` / ``clip_text.*``), when present, are skipped (avgen loads CLIP
    from ``model.encoder.path``).

    Raises:
        ConfigError: no file at ``path`` (config key ``model.released``).
        ReleasedCheckpointError: unreadable, missing the U-Net or φ, or holding other keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.released={path}: no such file; download pytorch_model.bin of "
                          f"ariesssxu/vta-ldm-clip4clip-v-large and give its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ReleasedCheckpointError(f"{path} (model.released) cannot be read with torch.load(weights_only=True): "
                                      f"{type(exc).__name__}: {exc}") from exc
    state = state.get("state_dict", state) if isinstance(state, Mapping) else state
    if not isinstance(state, Mapping):
        raise ReleasedCheckpointError(f"{path} (model.released): expected a state dict, got {type(state).__name__}")
    unet = {k[len(RELEASED_UNET):]: v for k, v in state.items() if k.startswith(RELEASED_UNET)}
    projection = {k[len(RELEASED_PROJECTION):]: v for k, v in state.items() if k.startswith(RELEASED_PROJECTION)}
    other = sorted(k for k in state if not k.startswith((RELEASED_UNET, RELEASED_PROJECTION, *RELEASED_FROZEN)))
    if not unet or set(projection) != {"weight", "bias"} or other:
        raise ReleasedCheckpointError(
            f"{path} (model.released): expected the keys unet.* and {RELEASED_PROJECTION}{{weight,bias}} of the "
            f"released VTA-LDM; found {len(unet)} unet keys, projection keys {sorted(projection)}, other keys "
            f"{other[:5]}")
    return unet, projection
