"""TempoTokens: audio-to-video generation by adapting a frozen text-to-video model (Yariv et al.,
"Diverse and Aligned Audio-to-Video Generation via Text-to-Video Model Adaptation", arXiv 2309.16429).

Audio (16 kHz) → frozen BEATs → the outputs of H layers, pooled per video frame over the patches
whose time span covers that frame (``pool_to_frames``) → AudioMapper g (Eq. 1) → one temporal token
per frame (B, L, d_t); context-window means around every frame (Eqs. 2–3) and an attentive-pooling
class token (Eqs. 4–6). The tokens fill the placeholders of a prompt template, one CLIP text
sequence per frame, and each frame of the frozen text-to-video UNet3D attends to its own sequence
(Eq. 7).

Training: only the mapper and the pooling (and the course-project variant's self-attention) train;
loss = ε-MSE of the video latents + λ · mean|temporal tokens| (Eq. 8). The audio given to the
encoder spans exactly the frames being denoised: the clip, in training, validation and sampling.
Sampling: DPM-Solver++ (25 steps) with classifier-free guidance (scale 25, as the public code) against
the empty prompt.

Prompt templates (``model.prompt``, Table 2): ``{audio}`` expands to the audio placeholders of the
window setting — ``<temp> <local1> … <localK> <class>`` — and ``{caption}`` to the clip's text:
``"{audio}"`` (audio only, the paper's model), ``"{caption}"`` (text only), ``"A video of {audio}"``
or ``"{caption} {audio}"`` (text + audio).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avgen.backbones.text2video import (
    PerFrameUNet3D,
    decode_video,
    encode_video_posterior,
    load_text2video,
    sample_video_latents,
)
from avgen.backbones.unet3d_checkpointing import enable_unet3d_checkpointing
from avgen.data.feature_cache import FeaturePart
from avgen.data.geometry import ClipGeometry
from avgen.diffusion import add_noise, classifier_free_guidance, seeded_noise, training_target
from avgen.encoders.beats import FBANK_MEAN, FBANK_STD, BEATs, load_beats
from avgen.encoders.cavp import CAVPAudio, load_cavp
from avgen.errors import ConfigError
from avgen.media import frame_count
from avgen.modules.attentive_pooling import AttentivePooling
from avgen.modules.audio_mapper import AudioMapper, pool_to_frames
from avgen.modules.context_windows import resolutions, window_means
from avgen.modules.placeholder_prompt import PlaceholderPrompt
from avgen.samples import SampleReport, clip_caption, refuse_existing, split_samples, write_sounding_videos
from avgen.systems.base import DiffusionSystem, plain_config, system_arguments
from avgen.systems.settings import SamplingSettings, guidance_scale, setting, text

log = logging.getLogger("avgen")

@dataclass(frozen=True)
class TempoTokensSampling(SamplingSettings):
    """``model.sampling`` of TempoTokens (defaults: ``configs/model/tempotokens.yaml``): DPM-Solver++
    ``steps``, the classifier-free guidance scale ``guidance`` (public code 25), the ``negative_prompt``
    of the unconditional pass (``""``: the empty prompt), and ``batch_size``."""

    guidance: float = setting(guidance_scale, "classifier-free guidance scale (1 = none)")
    negative_prompt: str = setting(text, "prompt of the unconditional pass")


class TempoTokens(DiffusionSystem):
    """TempoTokens as a LightningModule.

    Args:
        t2v: ``{base, scheduler, scheduler_overrides}`` — the text-to-video model (zeroscope /
            ModelScope layout; ``tiny:zeroscope`` for the tiny twin) and its sampler.
        encoder: ``{name: beats, path, layers}`` — the frozen audio encoder (a BEATs checkpoint in
            the official format, ``tiny:beats`` for the tiny twin) and the layers whose outputs are
            concatenated (``null``: all).
        clip: the clip geometry ``{seconds, fps, height, width, sample_rate}`` (the data's ``data.clip``),
            held as a :class:`~avgen.data.geometry.ClipGeometry` (``self.clip``).
        scale, tiny, mini, paper_random, tiny_dir: as in the joint system: ``scale=tiny`` merges ``tiny`` over these
            arguments, ``scale=mini`` ``tiny`` then ``mini``, ``scale=paper_random`` ``paper_random`` (``random:``
            sources, :mod:`avgen.backbones.paper_random`); tiny and mini backbones are written to ``tiny_dir``.
        prompt: the prompt template (see the module docstring).
        windows: ``{resolutions, sizes, mode}`` — Table 3's setting: ``resolutions`` 0 (``vec.``: the
            class token only), 1 (the frame's own token), … 5 (windows of 1, 2, 4, 8, 16 frames; the
            paper's model); or explicit window ``sizes`` (the course-project variant: [1, 2, 4, 8]);
            ``mode`` ``centered`` (Eq. 2) or ``left`` (the public code's windows).
        mapper: AudioMapper arguments (``depth``, ``hidden_dims``, ``self_attention``, ...).
        pooling: AttentivePooling arguments (``dropout``, ...).
        l1_weight: λ of Eq. 8 (public code 0.01).
        gradient_checkpointing: recompute the frozen UNet3D's layers in the backward pass.
        sampling: ``model.sampling`` (:class:`TempoTokensSampling`): defaults of :meth:`generate` and
            ``sample``; missing keys come from ``configs/model/tempotokens.yaml`` at ``scale``.
        validation: ``model.validation`` (:class:`~avgen.systems.settings.ValidationSettings`): clips
            generated from validation audio and logged.

    Raises:
        ConfigError: a bad ``model.sampling`` / ``model.validation`` / ``data.clip`` value (before any
            backbone loads), or a prompt template that uses more windows than ``windows`` gives.
    """

    # the sampling settings (model.sampling) and the config nodes of the sampler, for the commands
    # that run a checkpoint (avgen.commands.checkpoint_config): training reads the folder's DDPM
    # schedule (t2v.noise_scheduler), never the sampler, so every sampler setting may change
    MODEL_CONFIG = "tempotokens"
    sampling_settings = TempoTokensSampling
    SAMPLE_INPUT = ("generates the video for sample.audio (an audio or video file of any container, or a folder of "
                    "them; unset: the data's test clips)")
    SAMPLER_CONFIG = ("t2v.scheduler", "t2v.scheduler_overrides")

    def __init__(self, t2v: Mapping, encoder: Mapping, clip: Mapping, *, scale: str = "paper",
                 tiny: Mapping | None = None, mini: Mapping | None = None,
                 paper_random: Mapping | None = None,
                 tiny_dir: str | None = None, prompt: str = "{audio}",
                 windows: Mapping | None = None, mapper: Mapping | None = None, pooling: Mapping | None = None,
                 l1_weight: float = 0.01, gradient_checkpointing: bool = False, sampling: Mapping | None = None,
                 validation: Mapping | None = None, optimizer=None, scheduler=None, ema_decay: float | None = None,
                 cond_drop_prob: float = 0.0):
        super().__init__(optimizer=optimizer, scheduler=scheduler, ema_decay=ema_decay, cond_drop_prob=cond_drop_prob)
        args = system_arguments(scale, tiny, mini=mini, paper_random=paper_random,
                                t2v=t2v, encoder=encoder, mapper=mapper,
                                pooling=pooling, windows=windows, sampling=sampling, validation=validation)
        self.configure_settings(args, scale)  # before any backbone loads
        self.clip = ClipGeometry.from_config(plain_config(clip))
        self.l1_weight = l1_weight

        t2v_args = args["t2v"]
        self.t2v = load_text2video(t2v_args["base"], tiny_dir=tiny_dir,
                                   scheduler=t2v_args.get("scheduler", "dpm_solver"),
                                   scheduler_overrides=t2v_args.get("scheduler_overrides"))
        self.encoder = build_encoder(args["encoder"], tiny_dir)
        self.encoder_name = args["encoder"].get("name", "beats")
        self.encoder_layers = args["encoder"].get("layers")
        self.unet = PerFrameUNet3D(self.t2v.unet)
        self.vae, self.text_encoder = self.t2v.vae, self.t2v.text_encoder
        self.freeze(self.encoder, self.unet, self.vae, self.text_encoder)
        if gradient_checkpointing:
            enable_unet3d_checkpointing(self.t2v.unet)

        windows_cfg = args["windows"]
        self.window_mode = windows_cfg.get("mode", "centered")
        sizes = windows_cfg.get("sizes")
        self.vector_only = sizes is None and int(windows_cfg.get("resolutions", 5)) == 0
        sizes = list(resolutions(int(windows_cfg.get("resolutions", 5)))) if sizes is None else list(sizes)
        # the 1-frame window is the frame's own token, <temp>; the others are <local1>, <local2>, ...
        self.window_sizes = [s for s in sizes if s != 1]
        layers = self.encoder_layers or list(range(1, self.encoder.config.encoder_layers + 1))
        width = self.text_encoder.get_input_embeddings().embedding_dim
        self.mapper = AudioMapper(len(layers) * self.encoder.config.encoder_embed_dim, width, **args["mapper"])
        self.pooling = AttentivePooling(width, **args["pooling"])
        self.prompt = PlaceholderPrompt(self.t2v.tokenizer, self.text_encoder, expand_prompt(prompt, self))
        if self.prompt.windows > len(self.window_sizes):
            raise ConfigError(f"model.prompt uses <local{self.prompt.windows}> but model.windows gives only "
                              f"{len(self.window_sizes)} windows besides the frame's own token")
        self.register_buffer("alphas", self.t2v.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)

    # ------------------------------------------------------------------------------ conditioning
    @property
    def num_frames(self) -> int:
        return self.clip.num_frames

    def encoder_features(self, audio: torch.Tensor, frames: int) -> torch.Tensor:
        """Audio (B, S) at 16 kHz spanning exactly ``frames`` video frames → the frozen encoder's outputs of
        ``model.encoder.layers``, pooled to one vector per frame over the patches of the frame's time span
        (:func:`~avgen.modules.audio_mapper.pool_to_frames`): (B, F, H·d) in the encoder's dtype, no gradient.
        The feature cache's ``encoder`` part; what :meth:`audio_tokens` maps."""
        with torch.no_grad():
            out = self.encoder(audio, layers=self.encoder_layers)
            return pool_to_frames(out.hidden, frames, time_patches=out.time_patches)

    def audio_tokens(self, audio: torch.Tensor | None, frames: int, features: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
        """Audio (B, S) at 16 kHz spanning exactly ``frames`` video frames (or its :meth:`encoder_features`
        ``features`` (B, F, H·d), then ``audio`` is not read) → the tokens of the prompt:
        ``temp`` (B, F, d_t), ``local`` (B, F, K, d_t), ``class`` (B, d_t)."""
        if features is None:
            features = self.encoder_features(audio, frames)
        temporal = self.mapper(features)
        if self.vector_only:
            temporal = temporal.mean(dim=1, keepdim=True).expand_as(temporal)
        class_token, _ = self.pooling(temporal)
        tokens = {"temp": temporal, "class": class_token}
        if self.window_sizes:
            tokens["local"] = window_means(temporal, self.window_sizes, self.window_mode)
        return tokens

    def contexts(self, captions: Sequence[str], tokens: Mapping[str, torch.Tensor], frames: int) -> torch.Tensor:
        """Per-frame text states (B, F, L, D)."""
        return self.prompt.encode(list(captions), tokens, frames)

    def null_contexts(self, batch: int, frames: int, text: str = "") -> torch.Tensor:
        """The unconditional contexts: ``text`` (default the empty prompt) in every frame, (B, F, L, D)."""
        enc = self.t2v.tokenizer([text], padding="max_length", max_length=self.t2v.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt")
        with torch.no_grad():
            states = self.text_encoder(enc.input_ids.to(self.alphas.device)).last_hidden_state
        return states[:, None].expand(batch, frames, *states.shape[1:])

    # ------------------------------------------------------------------------------ feature cache
    #: the prompt holds the trained audio tokens (Eq. 7): its text encoding is not a frozen computation
    UNCACHEABLE_PARTS = {"text": "TempoTokens encodes its prompt with the trained audio tokens inside (Eq. 7), so the "
                                 "text encoder's output changes with every step"}

    def feature_part_names(self) -> tuple[str, ...]:
        return ("video_latents", "encoder")

    def feature_parts(self) -> dict[str, FeaturePart]:
        """TempoTokens' frozen parts (:mod:`avgen.data.feature_cache`), their tensors per clip:

        - ``video_latents``: the text-to-video model's VAE posterior of every frame, ``mean`` and ``std``
          (C, F, h, w) unscaled (:func:`~avgen.backbones.animatediff.encode_video_posterior`); reads ``video``;
        - ``encoder``: ``features`` (F, H·d), the frozen audio encoder's outputs of the configured layers pooled to
          the clip's F frames (:meth:`encoder_features`), from which :meth:`audio_tokens` follows exactly; reads
          ``audio``.

        No ``text``: the prompt is encoded with the trained audio tokens inside (Eq. 7).
        """
        clip = self.clip.to_dict()
        layers = list(self.encoder_layers or range(1, getattr(self.encoder.config, "encoder_layers", 1) + 1))
        encoder = {"name": self.encoder_name, "layers": [int(i) for i in layers]}
        if isinstance(self.encoder, BEATs):
            encoder["fbank"] = {"mean": FBANK_MEAN, "std": FBANK_STD}
        return {
            "video_latents": FeaturePart(
                "video_latents", "text2video_vae", {"vae": self.weights_sha256(self.vae)},
                {"height": clip["height"], "width": clip["width"], "fps": clip["fps"], "seconds": clip["seconds"],
                 "frames": self.num_frames, "input": "RGB in [-1, 1]", "posterior": "per frame, unscaled"},
                reads=("video",)),
            "encoder": FeaturePart(
                "encoder", self.encoder_name, {"encoder": self.weights_sha256(self.encoder)},
                {**encoder, "sample_rate": clip["sample_rate"], "seconds": clip["seconds"],
                 "samples": self.clip.num_samples, "frames": self.num_frames,
                 "pooling": "pool_to_frames: time-overlap weights, mean over frequency patches"},
                reads=("audio",)),
        }

    def part_features(self, batch: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
        if name == "video_latents":
            mean, std = encode_video_posterior(self.t2v, batch["video"])
            return {"mean": mean, "std": std}
        if name == "encoder":
            video = batch.get("video")
            frames = video.shape[1] if video is not None and video.shape[1] else self.num_frames
            return {"features": self.encoder_features(batch["audio"], frames)}
        return super().part_features(batch, name)

    # ------------------------------------------------------------------------------ training
    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                       ) -> dict[str, torch.Tensor]:
        """Eq. 8 for one batch (the batch contract). With ``batch["features"]`` (the feature cache) the cached
        VAE posterior and pooled encoder outputs replace the frozen VAE and audio encoder; the batch's video /
        audio are then not read and may be empty ((B, 0, 3, H, W), (B, 0)); the frame count comes from the
        latents. The draws from ``generator``, in order: the latents' ε (per 16 frames), condition dropout,
        timesteps, noise."""
        posterior = self.step_features(batch, "video_latents")
        with torch.no_grad():
            latents = sample_video_latents(*(posterior[k].to(self.vae.device, self.vae.dtype) for k in ("mean", "std")),
                                           generator, self.vae.config.scaling_factor)
        frames = latents.shape[2]
        cached = (batch.get("features") or {}).get("encoder")
        encoder_weight = next(self.encoder.parameters())
        features = None if cached is None else cached["features"].to(encoder_weight.device, encoder_weight.dtype)
        tokens = self.audio_tokens(batch["audio"], frames, features=features)
        contexts = self.contexts(batch["caption"], tokens, frames)
        b = latents.shape[0]
        if self.training and self.cond_drop_prob > 0:
            keep = torch.rand(b, generator=generator) >= self.cond_drop_prob
            null = self.null_contexts(b, frames)
            contexts = torch.where(keep.to(contexts.device)[:, None, None, None], contexts, null)
        t = torch.randint(0, len(self.alphas), (b,), generator=generator).to(latents.device)
        # float32 noise and noising, whatever dtype the VAE encoded in (bf16 autocast rounds ᾱ_0, ᾱ_1 to 1)
        noise = (torch.randn_like(latents, dtype=torch.float32) if generator is None
                 else torch.randn(latents.shape, generator=generator).to(latents.device))
        noisy = add_noise(latents, noise, self.alphas, t)
        out = self.unet(noisy, t, contexts)
        target = training_target(self.t2v.noise_scheduler.config.prediction_type, latents, noise, self.alphas, t)
        mse = F.mse_loss(out.float(), target.float())
        l1 = tokens["temp"].abs().mean()
        return {"loss": mse + self.l1_weight * l1, "mse": mse, "l1": l1}

    def on_validation_epoch_end(self) -> None:
        count = self.validation_sample_count()
        if count <= 0:
            return
        audio, captions = self.validation_batch["audio"][:count], self.validation_batch["caption"][:count]
        with self.ema_weights(), self.precision_context():
            video = self.generate(audio, captions, steps=self.validation_settings.steps, seed=0)
        self.log_validation_samples(captions, video, audio)

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, audio: torch.Tensor, captions: Sequence[str] | None = None, *, steps: int | None = None,
                 guidance: float | None = None, negative_prompt: str | None = None, seed: int = 0) -> torch.Tensor:
        """Videos (B, F, 3, H, W) in [-1, 1] for audio (B, S) at 16 kHz, F = round(S / sr · fps) frames
        covering exactly the audio's duration. Clip i starts from noise seeded with ``seed + i``."""
        settings = self.sampling.updated("sample", steps=steps, guidance=guidance, negative_prompt=negative_prompt)
        steps, guidance, negative = settings.steps, settings.guidance, settings.negative_prompt
        b = audio.shape[0]
        frames = max(1, frame_count(Fraction(audio.shape[1], self.clip.sample_rate), self.clip.fps))
        captions = list(captions) if captions is not None else [""] * b
        device = self.alphas.device
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (self.t2v.unet.config.in_channels, frames, self.clip.height // factor,
                 self.clip.width // factor)
        (x,) = seeded_noise([shape], b, seed)
        x = x.to(device, self.dtype)
        contexts = self.contexts(captions, self.audio_tokens(audio.to(device), frames), frames)
        guided = guidance != 1.0
        if guided:
            contexts = torch.cat([self.null_contexts(b, frames, negative), contexts])
        scheduler = copy.deepcopy(self.t2v.scheduler)
        scheduler.set_timesteps(steps, device=device)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            out = self.unet(model_in, t, contexts)
            if guided:
                out = classifier_free_guidance(*out.chunk(2), guidance)
            x = scheduler.step(out, t, x).prev_sample
        return decode_video(self.t2v, x).float().clamp(-1, 1)

    def sample_to_files(self, out_dir: str | Path, n: int = 4, audio: str | None = None, prompt: str | None = None,
                        steps: int | None = None, guidance: float | None = None, negative_prompt: str | None = None,
                        seed: int = 0, batch_size: int | None = None, device: str = "auto", overwrite: bool = False,
                        **unused: Any) -> SampleReport:
        """``python -m avgen sample``: a video per input audio, the input audio muxed in.

        Inputs: ``audio`` = a file of any container FFmpeg reads (audio, or video with sound) or a
        folder of them; default: the first ``n`` clips of the training data's test split. Every input
        is checked before the model runs (:meth:`_inputs`); refused ones are logged and listed in the
        report's ``refused`` with the reason, and the others are generated. Sample i
        (``sample_NNNN``) comes from the i-th usable input in name order; one that cannot be written
        is in ``failed`` (:func:`write_sounding_videos`). Nothing is generated when every input is refused.

        Raises:
            ConfigError: a bad ``sample.*`` value or one this system does not use (:meth:`sample_options`), a list
                ``prompt`` (before any input is decoded); no input (:meth:`_inputs`).
            FileExistsError: a sample exists and ``overwrite`` is false (checked before generating).
        """
        options = self.sample_options(unused, n=n, prompt=prompt, seed=seed, device=device, overwrite=overwrite,
                                      audio=audio, one_prompt="TempoTokens takes one caption for every input audio "
                                                              "(unset: each data clip's own caption, none for files)")
        settings = self.sampling.updated("sample", steps=steps, guidance=guidance, negative_prompt=negative_prompt,
                                         batch_size=batch_size)  # checked before any input is decoded
        prompt, seed, overwrite = options.prompt, options.seed, options.overwrite
        inputs, refused = self._inputs(audio, options.n)
        for entry in refused:
            log.warning("input %s refused: %s", entry["file"], entry["reason"])
        report = SampleReport(refused=refused)
        if not inputs:
            return report
        self.to_sampling_device(options.device)
        out_dir = Path(out_dir)
        refuse_existing(out_dir, len(inputs), overwrite)
        rate = self.clip.sample_rate
        texts = [prompt or caption for _, _, caption in inputs]
        with self.ema_weights():
            for i, video in self.generate_inputs([wave for _, wave, _ in inputs], texts, settings, seed):
                wave = torch.from_numpy(inputs[i][1]).float()[None]
                report.extend(write_sounding_videos(out_dir, [texts[i]], video[None], wave, self.clip,
                                                    overwrite=overwrite, first=i, sources=[inputs[i][0]]))
        report.written.sort()
        report.failed.sort(key=lambda entry: entry["sample"])
        log.info("wrote %d videos (%d audio inputs, %d Hz)", len(report.written), len(inputs), rate)
        print(f"wrote {len(report.written)} videos with their audio to {out_dir}")
        return report

    def generate_inputs(self, waves: Sequence[np.ndarray], texts: Sequence[str], settings: TempoTokensSampling,
                        seed: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """``(i, video (F_i, 3, H, W) in [-1, 1])`` for each input audio ``waves[i]`` (S_i,) float32 at
        ``clip.sample_rate`` with its prompt text ``texts[i]``, as they are generated (not in input order).

        Inputs are taken ``settings.batch_size`` at a time in order of length; within a batch, clips of one
        length are generated together (:meth:`generate`, seeded ``seed + `` the group's first input index), and
        every clip gets frames for exactly its own duration. ``sample_to_files`` and
        :class:`avgen.pipelines.TempoTokensPipeline` both generate through here, so they agree for a seed."""
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        for start in range(0, len(order), settings.batch_size):
            group = order[start:start + settings.batch_size]
            for length in sorted({len(waves[i]) for i in group}):
                same = [i for i in group if len(waves[i]) == length]
                wave = torch.from_numpy(np.stack([waves[i] for i in same])).float()
                video = self.generate(wave, [texts[i] for i in same], steps=settings.steps,
                                      guidance=settings.guidance, negative_prompt=settings.negative_prompt,
                                      seed=seed + same[0])
                for j, i in enumerate(same):
                    yield i, video[j]

    def _inputs(self, audio: str | None, n: int) -> tuple[list[tuple[str, np.ndarray, str]], list[dict[str, str]]]:
        """Every input, checked before any model runs.

        Returns the usable inputs as (source: data key or absolute file path, waveform (S,) float32
        at the model's rate, caption), in the order given (a folder's: name order), and
        ``{"file", "reason"}`` for each refused one, by file: not decodable or without audio, NaN/inf
        samples, or too short (:meth:`_min_input_samples`).
        A folder gives every file with an audio stream, whatever its container, codec, extension case
        or name (:func:`avgen.media.scan_media`); its other files are refused with the reason.

        Raises:
            ConfigError: ``sample.audio`` names no file or folder, or an empty folder; or it is unset
                and the data's test clips cannot be read.
        """
        from avgen.media import MediaError, check_finite, decode_audio, probe, scan_media

        rate = self.clip.sample_rate
        decoded: list[tuple[str, str, np.ndarray, str]] = []  # (source, name in messages, waveform, caption)
        if audio is None:
            clips, refused = split_audio(((self.run_config or {}).get("data") or {}).get("root"), n, rate)
            if not clips and not refused:
                raise ConfigError("sample.audio is not set and the training data's test clips cannot be read; pass "
                                  "sample.audio=<audio or video file (any container), or a folder of them>")
            decoded = [(key, key, wave, caption) for key, wave, caption in clips]
        else:
            source = Path(audio)
            if source.is_dir():
                found = scan_media(source, "audio")
                files, refused = found.files, found.skipped_json()
            elif source.is_file():
                files, refused = [source], []
            else:
                raise ConfigError(f"sample.audio={audio}: no such file or folder")
            if not files and not refused:
                raise ConfigError(f"sample.audio={audio}: the folder is empty; put audio files (or videos with "
                                  f"sound) in it, or pass one file")
            for path in files:
                try:
                    wave = decode_audio(path, rate)
                    duration = probe(path).duration
                except MediaError as exc:
                    refused.append({"file": path.name, "reason": str(exc).removeprefix(f"{path}: ")})
                    continue
                if duration:  # codecs pad their last frame (AAC: up to 1024 samples); the container has the length
                    wave = wave[:max(1, round(duration * rate))]
                decoded.append((str(path.absolute()), path.name, wave, ""))
        need, why = self._min_input_samples()
        usable = []
        for source, name, wave, caption in decoded:
            try:
                check_finite(wave, name)
            except MediaError as exc:
                refused.append({"file": name, "reason": str(exc).removeprefix(f"{name}: ")})
                continue
            if len(wave) < need:
                refused.append({"file": name, "reason": f"too short: {len(wave) / rate:.3f} s ({len(wave)} samples "
                                                        f"at {rate} Hz); {why}"})
                continue
            usable.append((source, wave, caption))
        return usable, sorted(refused, key=lambda entry: entry["file"])

    def _min_input_samples(self) -> tuple[int, str]:
        """The shortest usable input audio in samples at the model's rate, and why: the audio encoder's
        minimum (BEATs: one row of fbank patches, a 25 ms window + 15 hops of 10 ms = 2800 samples;
        CAVP: one 16-frame step, 3840) or one video frame (half a frame period rounds up to a frame),
        whichever is longer."""
        from avgen.media import fps_label

        rate, fps = self.clip.sample_rate, self.clip.fps
        encoder, frame = self.encoder.min_samples, math.ceil(rate / (2 * fps))
        if encoder >= frame:
            return encoder, (f"the {type(self.encoder).__name__} audio encoder needs at least {encoder} samples "
                             f"({encoder / rate:.3f} s) for one time step of its features")
        return frame, f"one video frame at {fps_label(fps)} fps needs at least {frame} samples ({frame / rate:.3f} s)"


# ---------------------------------------------------------------------------------- helpers
def build_encoder(cfg: Mapping[str, Any], tiny_dir: str | None) -> BEATs | CAVPAudio:
    """The frozen audio encoder named by ``model.encoder``: ``beats`` (the paper) or ``cavp`` (the
    course-project variant, Diff-Foley's CAVP audio branch)."""
    from avgen.backbones.loader import resolve_source
    from avgen.backbones.paper_random import build_component, is_random

    loaders = {"beats": (load_beats, "*.pt"), "cavp": (load_cavp, "*.ckpt")}
    name = cfg.get("name", "beats")
    if name not in loaders:
        raise ConfigError(f"model.encoder.name={name!r}: expected one of {', '.join(loaders)}")
    load, pattern = loaders[name]
    path = cfg.get("path")
    if path is None:
        return load(None, config_key="model.encoder.path")
    source = resolve_source(str(path), tiny_dir, "model.encoder.path")
    if is_random(source):  # scale=paper_random: the encoder's architecture with random weights
        from avgen.pretrained import freeze

        encoder = build_component(BEATs if name == "beats" else CAVPAudio, source, "model.encoder.path")
        freeze(encoder)
        return encoder
    if Path(source).is_dir():
        source = str(next(Path(source).glob(pattern), Path(source) / pattern))
    return load(source, config_key="model.encoder.path")


def expand_prompt(template: str, system: TempoTokens) -> str:
    """``{audio}`` → the audio placeholders of the window setting."""
    if system.vector_only:
        audio = "<class>"
    else:
        audio = " ".join(["<temp>", *(f"<local{k + 1}>" for k in range(len(system.window_sizes))), "<class>"])
    return template.replace("{audio}", audio)


def split_audio(root: str | None, n: int, rate: int
                ) -> tuple[list[tuple[str, np.ndarray, str]], list[dict[str, str]]]:
    """The first ``n`` clips of a prepared dataset's test (or val, train) split: (key, audio (S,)
    float32 resampled to ``rate``, caption) of each clip whose audio decodes, and ``{"file": key,
    "reason"}`` of each other one."""
    from avgen.media import MediaError, decode_audio

    clips, refused = [], []
    for key, parts in split_samples(root, n):
        if "flac" not in parts:
            refused.append({"file": key, "reason": "the clip has no audio (no .flac in its shard sample)"})
            continue
        try:
            clips.append((key, decode_audio(parts["flac"], rate), clip_caption(parts)))
        except MediaError as exc:
            refused.append({"file": key, "reason": str(exc)})
    return clips, refused
