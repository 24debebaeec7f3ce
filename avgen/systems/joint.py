"""Joint sounding-video generation: AnimateDiff + AudioLDM joined by connectors and CMC-PE, with
per-modality timestep adjustment (Hayakawa et al., "A Simple but Strong Baseline for Sounding Video
Generation", arXiv 2409.17550).

Training (Sec. III-D): loss = ‖ε̂_v − ε_v‖² + ‖ε̂_a − ε_a‖² with the two local timesteps drawn
independently (``timesteps.train=independent``; the public code's shared draw is ``shared``), the
self-conditioning estimate x̂0 from a no-grad pass fed to the connectors with probability
``self_condition_prob`` (zeros otherwise), and the text dropped to "" with probability
``cond_drop_prob`` for classifier-free guidance. Trainable: connectors, cross-modal blocks and
(``train_motion_modules``) AnimateDiff's motion modules; everything else is frozen in eval mode.

Sampling (Algorithm 1): DDIM over ``steps`` global timesteps t; the video and audio latents are
denoised at their local timesteps m(t), n(t) (Eq. 9, ``gamma``), each with its own classifier-free
guidance scale, the conditional and unconditional passes batched into one joint call per step;
x̂0 of the previous step self-conditions the connectors (zeros at the first step).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from avgen.backbones.animatediff import decode_video, encode_video_posterior, load_animatediff, sample_video_latents
from avgen.backbones.animatediff import encode_prompts as encode_video_prompts
from avgen.backbones.audioldm import decode_audio, encode_audio_posterior, latent_frames, load_audioldm, padded_frames
from avgen.backbones.audioldm import encode_prompts as encode_audio_prompts
from avgen.data.feature_cache import FeaturePart
from avgen.data.geometry import ClipGeometry
from avgen.diffusion import (
    LOSS_WEIGHTINGS,
    add_noise,
    classifier_free_guidance,
    ddim_step,
    final_alpha_cumprod,
    mixed_noise,
    sample_latents,
    seeded_noise,
    shared_frame_noise,
    split_prediction,
    training_target,
    v_loss_weights,
)
from avgen.errors import ConfigError
from avgen.modules.connector_events import EventCode, VideoConnectorEvents, event_frame_labels
from avgen.modules.joint_unet import DEFAULT_POSITIONS, JointUNet
from avgen.modules.timestep_adjust import (
    adjust_timesteps,
    check_gamma,
    check_training_timesteps,
    sample_training_timesteps,
)
from avgen.samples import SampleReport, VideoInput, refuse_existing, split_captions, write_sounding_videos
from avgen.systems.base import DiffusionSystem, plain_config, system_arguments
from avgen.systems.settings import SamplingSettings, ddim_eta, guidance_scale, optional_text, setting

log = logging.getLogger("avgen")



def video_frame_noise_correlation(value: Any, source: str) -> float:
    """``model.video.frame_noise_correlation``: r in [0, 1) as given, or for ``None`` the one the video generator
    ``source`` (``model.video.motion_adapter``) was trained with
    (:func:`avgen.backbones.mini.trained_frame_noise_correlation`).

    Raises:
        ConfigError: not a number in [0, 1) or null (the message names the key).
    """
    if value is None:
        from avgen.backbones.mini import trained_frame_noise_correlation

        return trained_frame_noise_correlation(source)
    try:
        r = float(value)
    except (TypeError, ValueError):
        r = float("nan")
    if isinstance(value, bool) or not 0.0 <= r < 1.0:
        raise ConfigError(f"model.video.frame_noise_correlation={value!r}: expected r in [0, 1) (the correlation of "
                          f"a clip's frames' noise, 0: independent) or null (the video generator's own)")
    return r


def timestep_gamma(key: str, value) -> float:
    """γ of Eq. 9 (> 0; :func:`~avgen.modules.timestep_adjust.check_gamma`)."""
    return check_gamma(value, key)


@dataclass(frozen=True)
class JointSampling(SamplingSettings):
    """``model.sampling`` of the joint system (defaults: ``configs/model/joint.yaml``): DDIM ``steps``
    (paper 25), the timestep adjustment ``gamma`` (Eq. 9; 1 = none), a classifier-free guidance scale
    per modality, the ``negative_prompt`` of the unconditional pass (None: the empty prompt), DDIM's
    ``eta`` (Song et al. 2021, Eq. 16; paper: 0, deterministic), ``cross_modal_guidance`` (classifier-free
    guidance of the audio on the video's motion, :meth:`JointAudioVideo.generate`; paper: 1, none) and
    ``batch_size``."""

    gamma: float = setting(timestep_gamma, "timestep adjustment γ (Eq. 9)")
    guidance_video: float = setting(guidance_scale, "video classifier-free guidance scale (1 = none)")
    guidance_audio: float = setting(guidance_scale, "audio classifier-free guidance scale (1 = none)")
    negative_prompt: str | None = setting(optional_text, "prompt of the unconditional pass (null: empty)")
    eta: float = setting(ddim_eta, "DDIM stochasticity η (0 = deterministic, as the paper; 1 = ancestral)")
    cross_modal_guidance: float = setting(guidance_scale, "guidance of the audio on the video's motion (1 = none, "
                                                          "as the paper)")

# What the DDIMScheduler settings of model.{video,audio}.scheduler do here. The sampler (generate)
# steps on ONE global grid, the video scheduler's, maps it to each modality's local timesteps by Eq. 9
# and takes its own DDIM step (avgen/diffusion.py::ddim_step); training reads each scheduler's
# noise schedule (alphas_cumprod, prediction_type).
_GRID = ("the joint sampler steps on one global grid, the video scheduler's (model.video.scheduler."
         "timestep_spacing / steps_offset), mapped to the audio's local timesteps by Eq. 9 (model.sampling.gamma); "
         "the audio scheduler never sets timesteps")
_NO_CLIP = "the joint sampler's DDIM step (avgen/diffusion.py::ddim_step) never clips or thresholds x̂0"
SCHEDULER_NO_EFFECT = {"audio": {"timestep_spacing": _GRID, "steps_offset": _GRID},
                       "both": dict.fromkeys(("clip_sample", "clip_sample_range", "thresholding",
                                              "dynamic_thresholding_ratio", "sample_max_value"), _NO_CLIP)}
# the settings that act at sampling only, so a trained checkpoint may change them
SCHEDULER_SAMPLING_ONLY = {"video": ("timestep_spacing", "steps_offset", "set_alpha_to_one"),
                           "audio": ("set_alpha_to_one",)}


def scheduler_setting_refusal(modality: str, name: str, *, trained: bool) -> str | None:
    """Why ``model.<modality>.scheduler.<name>`` is refused, or None when it takes effect.

    Refused always: settings with no effect (:data:`SCHEDULER_NO_EFFECT`). Refused on a trained
    checkpoint (``trained``): the noise-schedule settings its weights were fit to (beta schedule,
    ``num_train_timesteps``, ``prediction_type``, ...); only :data:`SCHEDULER_SAMPLING_ONLY` may change.
    """
    no_effect = {**SCHEDULER_NO_EFFECT["both"], **SCHEDULER_NO_EFFECT.get(modality, {})}
    if name in no_effect:
        return f"has no effect: {no_effect[name]}"
    if trained and name not in SCHEDULER_SAMPLING_ONLY[modality]:
        return (f"sets the {modality} noise schedule the checkpoint's weights were trained with; it can change only at "
                f"fit (sampling-only settings: {', '.join(SCHEDULER_SAMPLING_ONLY[modality])})")
    return None


def modality_pair(value: Any, key: str, default: Any) -> tuple[Any, Any]:
    """``{video: x, audio: y}`` (or one value for both; ``None``: ``default``) as (x, y).

    Raises:
        ConfigError: a mapping with keys other than ``video`` and ``audio`` (the message names ``key``)."""
    if value is None:
        return default, default
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"video", "audio"})
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; expected video and audio")
        return value.get("video", default), value.get("audio", default)
    return value, value


def loss_settings(loss: Mapping | None) -> tuple[tuple[str, str], float]:
    """``model.loss`` as ((video weighting, audio weighting), max_weight); ``None``: the paper's plain MSE.

    Raises:
        ConfigError: an unknown key or weighting, or ``max_weight`` < 1 (the message names the key)."""
    loss = dict(plain_config(loss or {}))
    unknown = sorted(set(loss) - {"weighting", "max_weight"})
    if unknown:
        raise ConfigError(f"model.loss: unknown key(s) {unknown}; expected weighting and max_weight")
    weighting = modality_pair(loss.get("weighting"), "model.loss.weighting", "uniform")
    for name, value in zip(("video", "audio"), weighting):
        if value not in LOSS_WEIGHTINGS:
            raise ConfigError(f"model.loss.weighting.{name}={value!r}: expected one of {', '.join(LOSS_WEIGHTINGS)}")
    max_weight = loss.get("max_weight", 20.0)
    if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float)) or not max_weight >= 1:
        raise ConfigError(f"model.loss.max_weight={max_weight!r}: expected a number ≥ 1 (the cap of the v weights)")
    return weighting, float(max_weight)


# why a list sample.prompt is refused with sample.video
ONE_CAPTION_PER_VIDEO = ("with sample.video the joint model takes one caption for every input video (or none: each "
                         "input's <stem>.txt, else no text)")


class JointAudioVideo(DiffusionSystem):
    """The SVG baseline as a LightningModule.

    Args:
        video: ``{base, motion_adapter, vae, scheduler, frame_noise_correlation}`` — AnimateDiff sources (hub ids or
            folders; ``tiny:animatediff`` builds the tiny twin), DDIM config overrides, and the noise prior the video
            generator was trained on: r of PYoCo's mixed noise (:func:`~avgen.diffusion.mixed_noise`), the
            correlation of a clip's frames' noise, which training (the video loss and the connector-events loss)
            and sampling (the starting noise and DDIM's step noise) then draw from; ``None``: the generator's own
            (:func:`avgen.backbones.mini.trained_frame_noise_correlation`: its manifest for ``mini:`` twins, 0 for
            AnimateDiff's independent per-frame noise). Held as :attr:`frame_noise_correlation`.
        audio: ``{base, scheduler}`` — AudioLDM source (``tiny:audioldm`` for the tiny twin).
        clip: training clip geometry ``{seconds, fps, height, width, sample_rate}`` (the data's
            ``data.clip``), held as a :class:`~avgen.data.geometry.ClipGeometry` (``self.clip``);
            sampling produces clips of this geometry.
        scale: ``paper``, ``tiny`` or ``mini``; with ``tiny`` the ``tiny`` mapping is merged over these arguments,
            with ``mini`` the ``tiny`` and then the ``mini`` mapping (:func:`~avgen.systems.base.system_arguments`).
        tiny: argument overrides for ``scale=tiny`` (tiny backbones and module sizes).
        mini: argument overrides for ``scale=mini`` over ``tiny``'s (the mini twins, ``mini:<name>`` sources).
        paper_random: argument overrides for ``scale=paper_random`` (``random:<name>`` sources: the papers'
            architectures with random weights, :mod:`avgen.backbones.paper_random`).
        tiny_dir: where tiny backbones are materialised.
        cross_modal: ``cmcpe`` (paper) or ``cross_attention`` (CoDi-style baseline, Table I).
        positions: ``{video: [...], audio: [...]}`` blocks after which cross-modal blocks go.
        connector, block: keyword arguments of the connectors and cross-modal blocks (``block.time_span``: CMC-PE's
            time mapping over the clip or, as the public code, over the audio's mel padding too).
        train_motion_modules: fine-tune AnimateDiff's motion modules (paper Sec. III-E).
        timesteps: ``{train: independent|shared, high_noise_prob: {video: p, audio: p}}``: how the local training
            timesteps are drawn (:func:`~avgen.modules.timestep_adjust.sample_training_timesteps`; p = 0, the
            paper's uniform draw, by default).
        loss: ``{weighting: {video: uniform|v, audio: uniform|v}, max_weight: 20}``: ``uniform`` is the paper's MSE
            of each base model's target; ``v`` weighs it as the MSE of v (:func:`~avgen.diffusion.v_loss_weights`:
            up to ``max_weight`` times more at high noise, mean 1 over the schedule).
        self_condition_prob: probability of feeding the no-grad x̂0 to the connectors in training.
        gradient_checkpointing: checkpoint both U-Nets, the connectors and the cross-modal blocks.
        sampling: ``model.sampling`` (:class:`JointSampling`): defaults of :meth:`generate` and ``sample``;
            missing keys come from ``configs/model/joint.yaml`` at ``scale``.
        validation: ``model.validation`` (:class:`~avgen.systems.settings.ValidationSettings`): sounding
            videos sampled and logged after each validation, and whether their AV-Align is computed.
        video_connector_events: ``model.video_connector_events``
            (:class:`~avgen.modules.connector_events.VideoConnectorEvents`; avgen's aid, not the paper's, off by
            default): the video connector also learns to mark the frames of ``batch["events"]``, optionally alone
            for its first steps, and a share of batches teach the audio blocks that code in its place.

    Raises:
        ConfigError: a bad ``model.sampling`` / ``model.validation`` / ``model.video_connector_events`` /
            ``data.clip`` value or a scheduler setting that has no effect (before any backbone loads).
    """

    # the sampling settings (model.sampling) and the config nodes of the sampler, for the commands
    # that run a checkpoint (avgen.commands.checkpoint_config)
    MODEL_CONFIG = "joint"
    sampling_settings = JointSampling
    SAMPLE_INPUT = ("generates sounding videos from sample.prompt (unset: the data's captions), or the audio for "
                    "sample.video (a video file of any container, or a folder of them)")
    SAMPLER_CONFIG = ("video.scheduler", "audio.scheduler")
    # model.video_connector_events: training batches in a row without an event before the run is stopped
    EVENTLESS_BATCHES = 50

    @classmethod
    def upgrade_model_config(cls, model_config: dict[str, Any]) -> dict[str, Any]:
        """Checkpoints and exports written before ``model.connector.spatio_temporal`` existed (2026-12-02) were
        built with the video connector's order-blind attention blocks: their config gets ``unordered``."""
        config = dict(model_config)
        blocks = [config.get("connector")] + [(config.get(scale) or {}).get("connector") for scale in
                                               ("tiny", "mini", "paper_random")]
        if not any(isinstance(b, Mapping) and "spatio_temporal" in b for b in blocks):
            config["connector"] = {**dict(config.get("connector") or {}), "spatio_temporal": "unordered"}
        return config

    @classmethod
    def pinned_export_settings(cls, setting: Callable[[str], Any]) -> dict[str, Any]:
        """The settings an export must pin before it relocates the backbones (``mini:`` twins copied to folders):
        ``setting(key)`` is the model config's effective value of a dotted key; a ``null``
        ``video.frame_noise_correlation`` becomes the value its video generator source gives now
        (:func:`video_frame_noise_correlation`), so the export samples from the prior the model was trained on."""
        if setting("video.frame_noise_correlation") is not None:
            return {}
        return {"video.frame_noise_correlation":
                video_frame_noise_correlation(None, str(setting("video.motion_adapter")))}

    def trainable_keys_hint(self, missing: set[str], unexpected: set[str]) -> str:
        """Which of the joint model's options the checkpoint was trained with, when its weights say so."""
        differ = missing | unexpected
        hints = []
        if any(".video_connector.attn" in key for key in differ):
            current = self.denoiser.video_connector.attn1
            other = "unordered" if current is None or current.variant == "public" else "public"
            hints.append(f"the video connector's attention blocks differ (a run started before 2026-12-02 has "
                         f"model.connector.spatio_temporal=unordered, public is the default now): pass "
                         f"model.connector.spatio_temporal={other}")
        if any("motion_modules" in key for key in differ):
            hints.append(f"the checkpoint was trained with model.train_motion_modules="
                         f"{str(not self.train_motion_modules).lower()}: pass it")
        return ("To continue or load it: " + "; ".join(hints) + ".") if hints else ""

    @staticmethod
    def sampler_override_refusal(key: str) -> str | None:
        """Why ``model.<key>`` (under :attr:`SAMPLER_CONFIG`) cannot change on a trained checkpoint;
        None when it may (see :func:`scheduler_setting_refusal`)."""
        modality, _, name = key.partition(".scheduler.")
        return scheduler_setting_refusal(modality, name, trained=True) if name else None

    def __init__(self, video: Mapping, audio: Mapping, clip: Mapping, *, scale: str = "paper",
                 tiny: Mapping | None = None, mini: Mapping | None = None,
                 paper_random: Mapping | None = None,
                 tiny_dir: str | None = None, cross_modal: str = "cmcpe",
                 positions: Mapping | None = None, connector: Mapping | None = None, block: Mapping | None = None,
                 video_connector_attention: bool = True, train_motion_modules: bool = True,
                 timesteps: Mapping | None = None, self_condition_prob: float = 0.5,
                 gradient_checkpointing: bool = False, sampling: Mapping | None = None,
                 validation: Mapping | None = None, optimizer=None, scheduler=None, ema_decay: float | None = None,
                 cond_drop_prob: float = 0.1, loss: Mapping | None = None,
                 video_connector_events: Mapping | None = None):
        super().__init__(optimizer=optimizer, scheduler=scheduler, ema_decay=ema_decay, cond_drop_prob=cond_drop_prob)
        args = system_arguments(scale, tiny, mini=mini, paper_random=paper_random,
                                video=video, audio=audio, connector=connector,
                                block=block, positions=positions, video_connector_attention=video_connector_attention,
                                sampling=sampling, validation=validation)
        self.configure_settings(args, scale)  # before any backbone loads
        self.clip = ClipGeometry.from_config(plain_config(clip))
        self.cross_modal = cross_modal
        self.train_motion_modules = train_motion_modules
        timesteps = dict(plain_config(timesteps or {}))
        self.timestep_mode = timesteps.get("train", "independent")
        self.high_noise_prob = check_training_timesteps(  # draws nothing
            self.timestep_mode, modality_pair(timesteps.get("high_noise_prob"), "model.timesteps.high_noise_prob", 0.0))
        self.loss_weighting, self.loss_max_weight = loss_settings(loss)
        self.self_condition_prob = self_condition_prob
        self.connector_events = VideoConnectorEvents.from_config(plain_config(video_connector_events or {}))
        self._batches_without_events = 0

        v, a = args["video"], args["audio"]
        for modality, part in (("video", v), ("audio", a)):
            for name in part.get("scheduler") or {}:
                reason = scheduler_setting_refusal(modality, name, trained=False)
                if reason:
                    raise ConfigError(f"model.{modality}.scheduler.{name} {reason}; remove it")
        self.frame_noise_correlation = video_frame_noise_correlation(v.get("frame_noise_correlation"),
                                                                     v["motion_adapter"])
        self.video = load_animatediff(v["base"], v["motion_adapter"], v.get("vae"), tiny_dir=tiny_dir,
                                      scheduler_overrides=v.get("scheduler"))
        self.audio = load_audioldm(a["base"], tiny_dir=tiny_dir, scheduler_overrides=a.get("scheduler"))
        positions = args["positions"]
        self.denoiser = JointUNet(self.video.unet, self.audio.unet, cross_modal=cross_modal,
                                  video_positions=positions.get("video", DEFAULT_POSITIONS),
                                  audio_positions=positions.get("audio", DEFAULT_POSITIONS),
                                  connector=args["connector"], block=args["block"],
                                  video_connector_attention=args["video_connector_attention"],
                                  gradient_checkpointing=gradient_checkpointing,
                                  audio_clip_fraction=self.audio_clip_fraction(), fps=float(self.clip.fps))
        # the event code's directions (non-persistent buffers: checkpoints are unchanged)
        self.event_code = (EventCode(self.denoiser.video_connector.conv_out.out_channels, self.connector_events.seed)
                           if self.connector_events.enabled else None)
        # frozen parts as submodules, so they follow the system across devices and dtypes
        self.video_vae, self.video_text_encoder = self.video.vae, self.video.text_encoder
        self.audio_vae, self.audio_text_encoder = self.audio.vae, self.audio.text_encoder
        self.vocoder, self.mel = self.audio.vocoder, self.audio.mel
        self.freeze(self.video_vae, self.video_text_encoder, self.audio_vae, self.audio_text_encoder, self.vocoder,
                    self.mel, self.video.unet, self.audio.unet)
        if train_motion_modules:
            for name, param in self.video.unet.named_parameters():
                if "motion_modules" in name:
                    param.requires_grad_(True)
        if gradient_checkpointing:
            self.video.unet.enable_gradient_checkpointing()
            self.audio.unet.enable_gradient_checkpointing()
        self.register_buffer("video_alphas", self.video.scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.register_buffer("audio_alphas", self.audio.scheduler.alphas_cumprod.clone().float(), persistent=False)

    # ------------------------------------------------------------------------------ geometry
    @property
    def num_frames(self) -> int:
        return self.clip.num_frames

    @property
    def num_samples(self) -> int:
        return self.clip.num_samples

    def audio_clip_fraction(self) -> float:
        """The share of the audio latents' time axis that holds the clip (AudioLDM's mel frames of
        ``clip.seconds`` over the frames padded to a multiple of 32): 400/416 at 4 s, 100/128 at 1 s."""
        frames = self.audio.mel.num_frames(self.num_samples)
        return frames / padded_frames(frames)

    def video_noise(self, noise: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The video's noise under the generator's prior: ``noise`` (B, C, F, h, w) standard normal, mixed by
        :func:`~avgen.diffusion.mixed_noise` with :attr:`frame_noise_correlation` r (its shared part drawn from
        ``generator``, or torch's global stream of ``noise``'s device when None); r = 0 returns ``noise`` itself and
        draws nothing."""
        return mixed_noise(noise, self.frame_noise_correlation, generator)

    def latent_shapes(self, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the video (B, C, F, h, w) and audio (B, C, T, M) latents of one clip geometry."""
        factor = 2 ** (len(self.video_vae.config.block_out_channels) - 1)
        video = (batch, self.video.unet.config.in_channels, self.num_frames,
                 self.clip.height // factor, self.clip.width // factor)
        frames, bins = latent_frames(self.audio, self.num_samples)
        return video, (batch, self.audio.unet.config.in_channels, frames, bins)

    # ------------------------------------------------------------------------------ conditions
    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Video (B, L, D) CLIP states and audio (B, P) CLAP embeddings of the same prompts."""
        return encode_video_prompts(self.video, list(prompts)), encode_audio_prompts(self.audio, list(prompts))

    def encode_batch(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch video (B, F, 3, H, W) and audio (B, S) → latents (B, C, F, h, w), (B, C, T, M): samples of the
        VAE posteriors (:meth:`part_features` ``video_latents`` / ``audio_latents``, or ``batch["features"]``'s
        when the feature cache carries them), drawn with ``generator``, the video's ε first (per 16 frames, as
        :func:`~avgen.backbones.animatediff.encode_video`), then the audio's (as
        :func:`~avgen.backbones.audioldm.encode_audio`); in the VAEs' dtype."""
        video, audio = self.step_features(batch, "video_latents"), self.step_features(batch, "audio_latents")
        v, a = self.video_vae, self.audio_vae
        with torch.no_grad():
            z_v = sample_video_latents(*(video[k].to(v.device, v.dtype) for k in ("mean", "std")), generator,
                                       v.config.scaling_factor)
            z_a = sample_latents(*(audio[k].to(a.device, a.dtype) for k in ("mean", "std")), generator,
                                 a.config.scaling_factor)
        return z_v, z_a

    def caption_text(self, batch: Mapping[str, Any], keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text conditions of the batch's captions with condition dropout: CLIP states (B, L, D) and CLAP
        embeddings (B, P) of :meth:`encode_text` (or ``batch["features"]["text"]``), clip i's replaced by the
        encoders' output for ``""`` where ``keep[i]`` (B,) bool is False (computed once per device and kept)."""
        text = self.step_features(batch, "text")
        clip_encoder, clap_encoder = self.video_text_encoder, self.audio_text_encoder
        text_v = text["clip"].to(clip_encoder.device, clip_encoder.dtype)
        text_a = text["clap"].to(clap_encoder.device, clap_encoder.dtype)
        if bool(keep.all()):
            return text_v, text_a
        null_v, null_a = self.kept_output("null_text", (clip_encoder, clap_encoder), text_v.device,
                                          lambda: self.encode_text([""]))
        keep = keep.to(text_v.device)
        return torch.where(keep[:, None, None], text_v, null_v), torch.where(keep[:, None], text_a, null_a)

    # ------------------------------------------------------------------------------ feature cache
    def feature_part_names(self) -> tuple[str, ...]:
        return ("video_latents", "audio_latents", "text")

    def feature_parts(self) -> dict[str, FeaturePart]:
        """The joint system's frozen parts (:mod:`avgen.data.feature_cache`), their tensors per clip:

        - ``video_latents``: AnimateDiff's VAE posterior of every frame, ``mean`` and ``std`` (C, F, h, w)
          unscaled (:func:`~avgen.backbones.animatediff.encode_video_posterior`); reads ``video``;
        - ``audio_latents``: AudioLDM's mel (silence-padded to a multiple of 32 frames) and VAE posterior,
          ``mean`` and ``std`` (C, T', F') unscaled (:func:`~avgen.backbones.audioldm.encode_audio_posterior`);
          reads ``audio``;
        - ``text``: ``clip`` (L, D) the SD1.5 CLIP text states and ``clap`` (P,) the normalised CLAP text
          embedding of the caption (:meth:`encode_text`); reads the caption only.
        """
        clip = self.clip.to_dict()
        video_tok, audio_tok = self.video.tokenizer, self.audio.tokenizer
        return {
            "video_latents": FeaturePart(
                "video_latents", "animatediff_vae", {"vae": self.weights_sha256(self.video_vae)},
                {"height": clip["height"], "width": clip["width"], "fps": clip["fps"], "seconds": clip["seconds"],
                 "frames": self.num_frames, "input": "RGB in [-1, 1]", "posterior": "per frame, unscaled"},
                reads=("video",)),
            "audio_latents": FeaturePart(
                "audio_latents", "audioldm_vae", {"vae": self.weights_sha256(self.audio_vae)},
                {"seconds": clip["seconds"], "samples": self.num_samples, "mel": self.mel.settings(),
                 "time_multiple": 32, "pad": "log-mel silence", "posterior": "unscaled"},
                reads=("audio",)),
            "text": FeaturePart(
                "text", "sd15_clip_text+audioldm_clap_text",
                {"clip_text": self.weights_sha256(self.video_text_encoder),
                 "clap_text": self.weights_sha256(self.audio_text_encoder)},
                {"clip": {"max_length": video_tok.model_max_length, "vocab": len(video_tok),
                          "padding": "max_length", "output": "last_hidden_state"},
                 "clap": {"max_length": audio_tok.model_max_length, "vocab": len(audio_tok),
                          "padding": "max_length", "output": "text_embeds, L2-normalised"}}),
        }

    def part_features(self, batch: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
        if name == "video_latents":
            mean, std = encode_video_posterior(self.video, batch["video"])
            return {"mean": mean, "std": std}
        if name == "audio_latents":
            mean, std = encode_audio_posterior(self.audio, batch["audio"])
            return {"mean": mean, "std": std}
        if name == "text":
            clip, clap = self.encode_text(list(batch["caption"]))
            return {"clip": clip, "clap": clap}
        return super().part_features(batch, name)

    # ------------------------------------------------------------------------------ training
    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                       ) -> dict[str, torch.Tensor]:
        """The loss of Sec. III-D for one batch (the batch contract). With ``batch["features"]`` (the feature
        cache) the cached posteriors and text outputs replace the frozen encoders; the batch's video / audio are
        then not read and may be empty ((B, 0, 3, H, W), (B, 0)). The draws from ``generator``, in order: video ε,
        audio ε, condition dropout, timesteps, noise, self-conditioning; with ``model.video_connector_events``
        then teacher forcing (training only) and the event loss's draws (:meth:`_event_loss`); in a connector-only
        step only the posterior draws (video ε, audio ε) and the event loss's.

        With ``model.video_connector_events.weight`` w > 0 (:mod:`avgen.modules.connector_events`) the result also
        holds ``loss_events``, the event-code loss of the video connector on ``draws_per_clip`` noisy versions of
        each clip's latent (:meth:`_event_loss`), and in training ``loss`` gains w · ``loss_events``; for the first
        ``connector_only_steps`` optimizer steps only w · ``loss_events`` is trained (the U-Nets do not run), and in
        a ``teacher_forcing`` share of training batches the audio blocks read the exact code of the batch's events
        in the video connector's place. Validation and test losses keep ``loss`` the diffusion loss alone.

        Returns:
            ``loss``, ``loss_video``, ``loss_audio`` (plain MSEs) and with the event loss ``loss_events``:
            scalar float32 tensors; in a connector-only step only ``loss`` and ``loss_events``.

        Raises:
            ConfigError: the event loss is on and a training batch has no ``events``, or no clip of
                :attr:`EVENTLESS_BATCHES` training batches in a row has an event (the data has none:
                synthetic_hits and Greatest Hits do). Outside training a batch without ``events`` gets no
                ``loss_events``.
        """
        z_v, z_a = self.encode_batch(batch, generator)
        events = self.connector_events
        labels = (self._event_labels(batch, z_v.shape[2]).to(z_v.device)
                  if events.enabled and (self.training or "events" in batch) else None)
        if labels is not None and self.connector_only_step():
            loss_events = self._event_loss(z_v, labels, generator)
            return {"loss": events.weight * loss_events + self._untouched_parameters_term(), "loss_events": loss_events}
        _, keep = self.drop_conditions(list(batch["caption"]), "", generator=generator)
        text_v, text_a = self.caption_text(batch, keep)
        b, device = z_v.shape[0], z_v.device
        t_v, t_a = sample_training_timesteps(b, len(self.video_alphas), len(self.audio_alphas), self.timestep_mode,
                                             generator=generator, device=device, high_noise_prob=self.high_noise_prob)
        # float32 noise and noising, whatever dtype the VAE encoded in (bf16 autocast)
        noise_v, noise_a = (torch.randn_like(z, dtype=torch.float32) if generator is None
                            else torch.randn(z.shape, generator=generator).to(z.device) for z in (z_v, z_a))
        noise_v = self.video_noise(noise_v, generator)
        x_v = add_noise(z_v, noise_v, self.video_alphas, t_v)
        x_a = add_noise(z_a, noise_a, self.audio_alphas, t_a)
        x0_v = x0_a = None
        self_condition = (self.self_condition_prob > 0
                          and torch.rand((), generator=generator).item() < self.self_condition_prob)
        taught = None  # teacher forcing: the exact event code in the video connector's place
        if labels is not None and self.training and events.teacher_forcing > 0 \
                and torch.rand((), generator=generator).item() < events.teacher_forcing:
            taught = self.event_code.code(labels).to(x_v.dtype)
        if self_condition:
            with torch.no_grad():
                out_v, out_a = self.denoiser(x_v, x_a, t_v, t_a, text_v, text_a,
                                             features=self._features(x_v, x_a, t_v, t_a, None, None, taught))
                x0_v = split_prediction(self._prediction("video"), x_v, out_v, self.video_alphas, t_v)[0]
                x0_a = split_prediction(self._prediction("audio"), x_a, out_a, self.audio_alphas, t_a)[0]
        out_v, out_a = self.denoiser(x_v, x_a, t_v, t_a, text_v, text_a,
                                     features=self._features(x_v, x_a, t_v, t_a, x0_v, x0_a, taught))
        target_v = training_target(self._prediction("video"), z_v, noise_v, self.video_alphas, t_v)
        target_a = training_target(self._prediction("audio"), z_a, noise_a, self.audio_alphas, t_a)
        per_v = (out_v.float() - target_v.float()).pow(2).flatten(1).mean(1)  # (B,) per-sample MSE
        per_a = (out_a.float() - target_a.float()).pow(2).flatten(1).mean(1)
        loss = self._weighted(per_v, "video", self.video_alphas, t_v) + self._weighted(per_a, "audio",
                                                                                      self.audio_alphas, t_a)
        # loss_video / loss_audio: the plain MSE whatever the weighting, so that runs compare
        out = {"loss": loss, "loss_video": per_v.mean(), "loss_audio": per_a.mean()}
        if labels is not None:
            out["loss_events"] = self._event_loss(z_v, labels, generator)
            if self.training:
                out["loss"] = loss + events.weight * out["loss_events"]
        return out

    def connector_only_step(self) -> bool:
        """Whether this training step trains the video connector alone (``model.video_connector_events``: the
        first ``connector_only_steps`` optimizer steps; ``global_step`` is 0 without a trainer)."""
        events = self.connector_events
        return events.enabled and self.training and self.global_step < events.connector_only_steps

    def on_after_backward(self) -> None:
        """In a connector-only step, drop the (zero) gradients :meth:`_untouched_parameters_term` gave every other
        trainable parameter once DDP has reduced them, so the optimizer skips those parameters: a zero gradient
        would still count an Adam step for them, and after thousands of such steps Adam's bias correction has run
        out and their first real updates come out several times the learning rate (3× at the first step, 6.5× at the
        tenth, after 4,000 empty steps)."""
        super().on_after_backward()
        if self.connector_only_step():
            connector = {id(p) for p in self.denoiser.video_connector.parameters()}
            for p in self.parameters():
                if p.requires_grad and id(p) not in connector:
                    p.grad = None

    def on_fit_start(self) -> None:
        """Warns when ``model.video_connector_events.connector_only_steps`` reaches ``trainer.max_steps``: the
        U-Nets' adapters then never train in this run (a run meant to be resumed with more steps may want that)."""
        super().on_fit_start()
        steps = self.connector_events.connector_only_steps
        most = self.trainer.max_steps if self.connector_events.enabled and steps and self._trainer is not None else 0
        if 0 < most <= steps:
            log.warning("model.video_connector_events.connector_only_steps=%d ≥ trainer.max_steps=%d: this run "
                        "trains only the video connector", steps, most)

    def _features(self, x_v, x_a, t_v, t_a, x0_v, x0_a, taught) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The connectors' outputs with ``taught`` (B, F, D) in the video connector's place; None (the
        denoiser computes them) when nothing is taught."""
        if taught is None:
            return None
        return self.denoiser.connect(x_v, x_a, t_v, t_a, x0_v, x0_a, video_features=taught)

    def _event_labels(self, batch: Mapping[str, Any], frames: int) -> torch.Tensor:
        """(B, frames) event labels of ``batch["events"]``; counts training batches without any event.

        Raises:
            ConfigError: no ``events`` in the batch, or :attr:`EVENTLESS_BATCHES` training batches in a row
                without an event (on any rank, under DDP)."""
        if "events" not in batch:
            raise ConfigError("model.video_connector_events.weight > 0 needs batch['events'] (event times per clip), "
                              "which this batch lacks; set model.video_connector_events.weight=0")
        labels = event_frame_labels(batch["events"], frames, float(self.clip.fps))
        if self.training:
            seen = bool(labels.any())
            if self._trainer is not None and self.trainer.world_size > 1:  # every rank counts alike, and stops alike
                seen = self.trainer.strategy.reduce_boolean_decision(seen, all=False)
            self._batches_without_events = 0 if seen else self._batches_without_events + 1
            if self._batches_without_events >= self.EVENTLESS_BATCHES:
                raise ConfigError(f"model.video_connector_events.weight > 0, but no clip of the last "
                                  f"{self.EVENTLESS_BATCHES} training batches has an event time (meta 'events'): "
                                  f"this data set carries none (synthetic_hits and greatest_hits do); set "
                                  f"model.video_connector_events.weight=0")
        return labels

    def _event_loss(self, z_v: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None
                    ) -> torch.Tensor:
        """:meth:`~avgen.modules.connector_events.EventCode.loss` of the video connector on ``draws_per_clip``
        noisy versions of each clip's latent z_v (B, C, F, h, w): per draw (clip-major) a timestep t ~ U{0, T−1},
        its noise, and as x̂0 the clean latent with probability ``clean_x0_prob``, zeros otherwise; labels (B, F).
        The draws from ``generator``, in order: timesteps, noise, x̂0 choices (then, with
        :attr:`frame_noise_correlation` r > 0, the noise's shared part: :meth:`video_noise`)."""
        settings, device = self.connector_events, z_v.device
        z = z_v.float().repeat_interleave(settings.draws_per_clip, dim=0)
        n = z.shape[0]
        if generator is None:
            t = torch.randint(0, len(self.video_alphas), (n,), device=device)
            noise = torch.randn_like(z)
            clean = torch.rand(n, device=device) < settings.clean_x0_prob
        else:
            t = torch.randint(0, len(self.video_alphas), (n,), generator=generator).to(device)
            noise = torch.randn(z.shape, generator=generator).to(device)
            clean = (torch.rand(n, generator=generator) < settings.clean_x0_prob).to(device)
        noise = self.video_noise(noise, generator)
        x_t = add_noise(z, noise, self.video_alphas, t).to(z_v.dtype)
        x0 = torch.where(clean[:, None, None, None, None], z, torch.zeros_like(z)).to(z_v.dtype)
        output = self.denoiser.video_features(x_t, t, x0)
        return self.event_code.loss(output, labels.repeat_interleave(settings.draws_per_clip, dim=0))

    def _untouched_parameters_term(self) -> torch.Tensor:
        """0 · Σ of every trainable parameter outside the video connector: in the connector-only steps it gives
        each of them a zero gradient, so DDP's reducer (which expects a gradient for every parameter) and the
        optimizer see the usual set."""
        connector = {id(p) for p in self.denoiser.video_connector.parameters()}
        rest = [p.sum() for p in self.parameters() if p.requires_grad and id(p) not in connector]
        return torch.stack(rest).sum() * 0.0 if rest else torch.zeros((), device=self.video_alphas.device)

    def _weighted(self, per_sample: torch.Tensor, modality: str, alphas: torch.Tensor, t: torch.Tensor
                  ) -> torch.Tensor:
        """The batch mean of the per-sample MSE (B,), weighted by ``model.loss.weighting.<modality>``."""
        if self.loss_weighting[0 if modality == "video" else 1] == "uniform":
            return per_sample.mean()
        return (v_loss_weights(alphas, t, self._prediction(modality), self.loss_max_weight) * per_sample).mean()

    def _prediction(self, modality: str) -> str:
        scheduler = self.video.scheduler if modality == "video" else self.audio.scheduler
        return scheduler.config.prediction_type

    def on_validation_epoch_end(self) -> None:
        count = self.validation_sample_count()
        prompts = (self.validation_batch or {}).get("caption")
        if count <= 0 or not prompts:
            return
        prompts = [prompts[i % len(prompts)] for i in range(count)]
        with self.ema_weights(), self.precision_context():
            video, audio = self.generate(prompts, steps=self.validation_settings.steps, seed=0)
        self.log_validation_samples(prompts, video, audio)

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, steps: int | None = None, gamma: float | None = None,
                 guidance_video: float | None = None, guidance_audio: float | None = None,
                 negative_prompt: str | None = None, seed: int = 0, eta: float | None = None,
                 latents: tuple[torch.Tensor, torch.Tensor] | None = None,
                 video_latents: torch.Tensor | None = None, cross_modal_guidance: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample sounding videos for ``prompts`` (Algorithm 1 with DDIM and per-modality CFG).

        Sample i starts from noise seeded with ``seed + i``, so a clip does not depend on the batch
        it was generated in; ``latents`` = (video (B, C, F, h, w), audio (B, C, T, M)) starting noise
        drawn by the caller instead (diffusers pipelines' ``latents``; shapes: :meth:`latent_shapes`);
        ``seed`` then sets only the stochastic steps' noise (``eta`` > 0). Returns video (B, F, 3, H, W)
        in [-1, 1] and audio (B, S) in [-1, 1]. With :attr:`frame_noise_correlation` r > 0 (a video generator
        trained on PYoCo's mixed noise), the seeded video noise and each stochastic step's video noise are mixed
        by :func:`~avgen.diffusion.mixed_noise`, each sample's shared part drawn next from its own stream; given
        ``latents`` are used as they are (already drawn from the prior).

        ``video_latents`` (B, C, F, h, w): clean video latents (the frame VAE's, scaled) to generate the audio
        *for*, by the replacement method (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
        App. I.2 (imputation); MM-Diffusion's zero-shot video-to-audio, Ruan et al. 2023): at every step the video
        is those latents noised to its local timestep m(t) with the starting video noise,
        sqrt(ᾱ_m)·z0 + sqrt(1 − ᾱ_m)·ε_v, and the video connector's x̂0 is z0 itself; only the audio is
        sampled (with ``eta`` > 0 the video's step noise is still drawn, and unused, so the audio's stream is
        the unconditional run's). ``video_latents`` may be of any float dtype and device (used as float32).
        The returned video is then the decoded ``video_latents``.

        ``cross_modal_guidance`` s (``model.sampling.cross_modal_guidance``; 1 = off, the paper's sampler):
        classifier-free guidance (Ho & Salimans 2022) of the audio on the video's *motion*. Each step also runs the
        denoiser with the video connector's features of a still video, the video's x̂0 averaged over its frames
        with x_t moved by √ᾱ_m times the same change (x_t = √ᾱ_m·x̂0 + √(1 − ᾱ_m)·ε̂ keeps its noise), and the
        audio output becomes ``still + s·(video − still)`` (after each branch's text guidance: the two commute);
        the video output is unchanged. The audio's dependence on *when* things happen in the video is scaled by
        s, what a static frame implies (material, loudness) is kept. The null condition is avgen's, not from a
        paper: the SVG paper guides each modality on its text only. Twice the denoiser's batch when s ≠ 1.

        Raises:
            ValueError: ``latents`` or ``video_latents`` of other shapes than :meth:`latent_shapes` of the batch.
            ConfigError: a bad ``steps``, ``gamma``, guidance scale, ``negative_prompt``, ``eta`` or
                ``cross_modal_guidance`` (the message names ``sample.<key>``).

        Timesteps: the video scheduler's ``set_timesteps(steps)`` gives one global grid
        t_1 > … > t_N (``model.video.scheduler.timestep_spacing`` and ``steps_offset``; the audio
        scheduler's grid settings are not used). Step k denoises the video at m(t_k) and the audio at
        n(t_k) (Eq. 9) and takes the DDIM step (Song et al. 2021, Eq. 12, on the subsequence of Sec. 4.2;
        deterministic at ``eta`` = 0, the paper's sampler) to the next grid point, m(t_{k+1}) and
        n(t_{k+1}); after t_N to each scheduler's final ᾱ (:func:`~avgen.diffusion.ddim_step`). With
        ``eta`` > 0 each step adds σ·z (Eq. 16) per modality, z drawn per sample from a CPU generator
        seeded with ``seed + i`` past the draws of that sample's starting noise (whether ``seed`` or the
        caller drew it), the video's then the audio's, so a stochastic clip too is the same in any batch
        and ``latents=seeded_noise(..., seed)`` gives the clips ``seed`` gives. diffusers'
        ``DDIMScheduler.step`` steps from t to t − ⌊T/N⌋ instead (T = ``num_train_timesteps``),
        wherever the next grid point is. The two agree on ``leading`` grids
        (t_k = (N − k)·⌊T/N⌋ + ``steps_offset``, with ``steps_offset`` < ⌊T/N⌋), on ``trailing``
        grids only when N divides T, and on ``linspace`` grids (AnimateDiff's) only for N = 1 or T:
        at N = 25 the joint sampler steps 999 → 957, diffusers 999 → 959 and then evaluates its
        U-Net at 957. So with γ = 1, zero-initialised cross-modal blocks, a ``leading`` grid and
        guidance scales > 1 (diffusers skips guidance at ≤ 1, this sampler does not), the final
        latents are those of diffusers' ``AnimateDiffPipeline`` and ``AudioLDMPipeline`` from the same
        initial latents, steps, scales and negative prompt (``tests/systems/test_joint_vs_diffusers.py``).
        """
        cfg = self.sampling.updated("sample", steps=steps, gamma=gamma, guidance_video=guidance_video,
                                    guidance_audio=guidance_audio, negative_prompt=negative_prompt, eta=eta,
                                    cross_modal_guidance=cross_modal_guidance)
        steps, gamma, g_v, g_a, eta = cfg.steps, cfg.gamma, cfg.guidance_video, cfg.guidance_audio, cfg.eta
        g_x = cfg.cross_modal_guidance
        negative = cfg.negative_prompt
        b, device = len(prompts), self.video_alphas.device
        shape_v, shape_a = self.latent_shapes(b)
        streams: list[torch.Generator] = []  # per sample, the stochastic steps' noise (eta > 0)
        r = self.frame_noise_correlation
        if latents is None:
            noise_v, noise_a = seeded_noise([shape_v[1:], shape_a[1:]], b, seed, generators=streams)
            # the video generator's prior: each sample's shared part next from its own stream
            noise_v = mixed_noise(noise_v, r, streams=streams)
        else:  # the streams still start past the starting noise ``seed`` would draw, never repeating it
            seeded_noise([shape_v[1:], shape_a[1:]], b, seed, generators=streams)
            if r > 0:
                shared_frame_noise(shape_v, streams)
            noise_v, noise_a = latents
            if tuple(noise_v.shape) != shape_v or tuple(noise_a.shape) != shape_a:
                raise ValueError(f"latents must be video {shape_v} and audio {shape_a} for {b} prompts, got "
                                 f"{tuple(noise_v.shape)} and {tuple(noise_a.shape)}")
        x_v, x_a = noise_v.to(device, self.dtype), noise_a.to(device, self.dtype)
        given = None
        if video_latents is not None:
            if tuple(video_latents.shape) != shape_v:
                raise ValueError(f"video_latents must be {shape_v} for {b} prompts, got {tuple(video_latents.shape)}")
            given, given_noise = video_latents.to(device, torch.float32), noise_v.to(device)
        text_v, text_a = self.encode_text(prompts)
        guided = g_v != 1.0 or g_a != 1.0
        if guided:
            null_v, null_a = self.encode_text([negative or ""] * b)
            text_v, text_a = torch.cat([null_v, text_v]), torch.cat([null_a, text_a])

        scheduler = copy.deepcopy(self.video.scheduler)
        scheduler.set_timesteps(steps)
        grid = [int(t) for t in scheduler.timesteps]
        total = int(scheduler.config.num_train_timesteps)
        final_v, final_a = final_alpha_cumprod(self.video.scheduler), final_alpha_cumprod(self.audio.scheduler)
        pred_v, pred_a = self._prediction("video"), self._prediction("audio")
        x0_v, x0_a = torch.zeros_like(x_v), torch.zeros_like(x_a)
        for k, t in enumerate(grid):
            m, n = (int(x) for x in adjust_timesteps(t, gamma, total, len(self.video_alphas), len(self.audio_alphas)))
            if k + 1 < len(grid):
                m_prev, n_prev = (int(x) for x in adjust_timesteps(grid[k + 1], gamma, total, len(self.video_alphas),
                                                                   len(self.audio_alphas)))
            else:
                m_prev = n_prev = -1
            reps = 2 if guided else 1
            t_v = torch.full((b,), m, device=device, dtype=torch.long)
            t_a = torch.full((b,), n, device=device, dtype=torch.long)
            if given is not None:  # replacement: the given video at this step's noise level, its x̂0 known
                x_v = add_noise(given, given_noise, self.video_alphas, t_v).to(self.dtype)
                x0_v = given.to(self.dtype)
            # the unconditional and conditional rows share latents, so they share the connectors' output
            feat_v, feat_a = self.denoiser.connect(x_v, x_a, t_v, t_a, x0_v, x0_a)
            feat_v, feat_a = feat_v.repeat(reps, 1, 1), feat_a.repeat(reps, 1, 1)
            rows, texts = reps, (text_v, text_a)
            if g_x != 1.0:  # the same rows again, the video connector reading the still video
                still = x0_v.mean(dim=2, keepdim=True).expand_as(x0_v)
                root = self.video_alphas[t_v].sqrt().view(-1, 1, 1, 1, 1).to(x_v.dtype)
                feat_still = self.denoiser.connect(x_v - root * (x0_v - still), x_a, t_v, t_a, still, x0_a)[0]
                feat_v = torch.cat([feat_v, feat_still.repeat(reps, 1, 1)])
                feat_a, rows = feat_a.repeat(2, 1, 1), 2 * reps
                texts = (text_v.repeat(2, *[1] * (text_v.ndim - 1)), text_a.repeat(2, *[1] * (text_a.ndim - 1)))
            out_v, out_a = self.denoiser(x_v.repeat(rows, 1, 1, 1, 1), x_a.repeat(rows, 1, 1, 1), t_v.repeat(rows),
                                         t_a.repeat(rows), *texts, features=(feat_v, feat_a))
            if g_x != 1.0:
                out_v, (out_a, out_still) = out_v[:reps * b], out_a.chunk(2)
            if guided:
                out_v = classifier_free_guidance(*out_v.chunk(2), g_v)
                out_a = classifier_free_guidance(*out_a.chunk(2), g_a)
                if g_x != 1.0:
                    out_still = classifier_free_guidance(*out_still.chunk(2), g_a)
            if g_x != 1.0:
                out_a = classifier_free_guidance(out_still, out_a, g_x)
            z_v = z_a = None
            if eta > 0:  # each sample's stream: its video noise (and its shared part, r > 0), then its audio noise
                z_v = torch.stack([torch.randn(shape_v[1:], generator=g) for g in streams])
                z_v = mixed_noise(z_v, r, streams=streams).to(device, torch.float32)
                z_a = torch.stack([torch.randn(shape_a[1:], generator=g) for g in streams]).to(device, torch.float32)
            x_v, x0_v = ddim_step(pred_v, x_v, out_v, self.video_alphas, m, m_prev, final_v, eta, z_v)
            x_a, x0_a = ddim_step(pred_a, x_a, out_a, self.audio_alphas, n, n_prev, final_a, eta, z_a)
        video = decode_video(self.video, x_v if given is None else given.to(self.dtype))
        audio = decode_audio(self.audio, x_a, self.num_samples)
        return video.float().clamp(-1, 1), audio.float().clamp(-1, 1)

    def sample_to_files(self, out_dir: str | Path, n: int = 4, prompt: str | Sequence[str] | None = None,
                        steps: int | None = None, gamma: float | None = None, guidance_video: float | None = None,
                        guidance_audio: float | None = None, negative_prompt: str | None = None, seed: int = 0,
                        batch_size: int | None = None, device: str = "auto", overwrite: bool = False,
                        eta: float | None = None, video: str | None = None,
                        cross_modal_guidance: float | None = None, **unused: Any) -> SampleReport:
        """``python -m avgen sample``: ``n`` sounding mp4s (+ wav and the prompt as txt) in ``out_dir``; with
        ``video`` (``sample.video``), the audio for those videos instead (:meth:`dub_to_files`).

        A sample whose output holds NaN/inf, or that cannot be written, is in the report's ``failed``
        with its name and reason; the others are written (:func:`write_sounding_videos`).

        Raises:
            ConfigError: a bad ``sample.*`` value or one this system does not use (:meth:`sample_options`), a list
                ``prompt`` with ``video``, or no prompt (before any input is read or weight moves).
            FileExistsError: a sample exists and ``overwrite`` is false (checked before generating).
        """
        options = self.sample_options(unused, n=n, prompt=prompt, seed=seed, device=device, overwrite=overwrite,
                                      video=video, one_prompt=None if video is None else ONE_CAPTION_PER_VIDEO)
        settings = self.sampling.updated("sample", steps=steps, gamma=gamma, guidance_video=guidance_video,
                                         guidance_audio=guidance_audio, negative_prompt=negative_prompt,
                                         batch_size=batch_size, eta=eta,
                                         cross_modal_guidance=cross_modal_guidance)  # checked before any model runs
        seed, overwrite = options.seed, options.overwrite
        if video is not None:
            return self.dub_to_files(out_dir, video, settings, prompt=options.prompt, seed=seed, device=options.device,
                                     overwrite=overwrite)
        prompts, sources = self._prompts(options.prompt, options.n)
        self.to_sampling_device(options.device)
        batch_size = settings.batch_size
        out_dir = Path(out_dir)
        refuse_existing(out_dir, len(prompts), overwrite)
        report = SampleReport()
        with self.ema_weights():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                video, audio = self.generate(chunk, steps=settings.steps, gamma=settings.gamma,
                                             guidance_video=settings.guidance_video,
                                             guidance_audio=settings.guidance_audio,
                                             negative_prompt=settings.negative_prompt, seed=seed + start,
                                             eta=settings.eta, cross_modal_guidance=settings.cross_modal_guidance)
                report.extend(write_sounding_videos(out_dir, chunk, video, audio, self.clip, overwrite=overwrite,
                                                    first=start, sources=sources[start:start + batch_size]))
                log.info("sampled %d/%d", min(start + batch_size, len(prompts)), len(prompts))
        print(f"wrote {len(report.written)} sounding videos to {out_dir}")
        return report

    def dub_to_files(self, out_dir: str | Path, video: str, settings: JointSampling, *, prompt: str | None = None,
                     seed: int = 0, device: str = "auto", overwrite: bool = False) -> SampleReport:
        """``python -m avgen sample sample.video=<file or folder>``: the joint model as a video-to-audio model.

        The audio of every readable input video is generated *for* its frames by the replacement method
        (:meth:`generate` with ``video_latents``: Song et al. 2021, App. I.2; MM-Diffusion's zero-shot video-to-audio,
        Ruan et al. 2023), with the model's own sampler (``settings``: steps, γ, guidance, η), and dubbed onto the
        input. Inputs: a file or a folder of files of any container FFmpeg reads
        (:func:`~avgen.samples.read_video_inputs`), decoded at ``data.clip``'s rate and size (fit and centre-cropped).
        The text condition is ``prompt`` (one string for every input) or else the input's caption (a ``<stem>.txt``
        next to it; empty when there is none: the audio is then conditioned on the video alone).

        An input longer than a clip is generated in clip-long windows overlapping by
        :func:`~avgen.samples.window_overlap` and joined by an equal-power crossfade, each window conditioned on the
        frames shown during it; a window with fewer frames than the model's ``F`` (the last one of a short input)
        repeats its last frame, and its audio is cut to the window. The frames' latents are the frame VAE's
        posterior mean (scaled). Window k (over every input, in order) starts from noise seeded ``seed + k``.
        Per input ``<stem>``: ``.mp4`` (the input's video stream with the generated audio), ``.wav``, ``.txt`` (the
        caption used) and ``.json`` (:func:`~avgen.samples.write_dubbed`); outputs are written input by input: one
        that cannot be read is in the report's ``refused``, one whose generation or writing fails in ``failed``.

        Raises:
            ConfigError: ``prompt`` is a list (:data:`ONE_CAPTION_PER_VIDEO`), or no input (naming ``sample.video``).
            FileExistsError: an output exists and ``overwrite`` is false (checked before generating).
        """
        import tempfile

        from avgen.media import MediaError
        from avgen.samples import read_video_inputs, refuse_existing_dubs, write_dubbed

        if prompt is not None and not isinstance(prompt, str):  # a public entry point: checked here as well
            raise ConfigError(f"sample.prompt={prompt!r}: {ONE_CAPTION_PER_VIDEO}")
        out_dir = Path(out_dir)
        report = SampleReport()
        with tempfile.TemporaryDirectory(prefix="avgen-joint-inputs-") as scratch:
            data_root = ((self.run_config or {}).get("data") or {}).get("root")
            inputs, report.refused = read_video_inputs(str(video), 0, Path(scratch), self.clip, data_root)
            for entry in report.refused:
                log.warning("%s refused: %s", entry["file"], entry["reason"])
            if not inputs:
                return report
            refuse_existing_dubs(inputs, out_dir, overwrite)
            self.to_sampling_device(device)
            out_dir.mkdir(parents=True, exist_ok=True)
            first_window = 0
            with self.ema_weights():
                for item in inputs:
                    caption = item.caption if prompt is None else prompt
                    generation = {**settings.to_dict(), "seed": seed + first_window, "windows": len(item.windows),
                                  "method": "replacement"}
                    try:
                        wave = self.audio_for_input(item, caption, settings, seed + first_window)
                    except (RuntimeError, ValueError, MediaError) as exc:  # e.g. out of memory: the next input runs
                        reason = " ".join(str(exc).split())[:500]
                        log.warning("%s not generated: %s", item.stem, reason)
                        report.failed.append({"sample": item.stem, "reason": reason})
                    else:
                        report.extend(write_dubbed(out_dir, item, wave, self.clip.sample_rate, caption, generation,
                                                   overwrite))
                    first_window += len(item.windows)
        report.written.sort()
        count = len(report.written)
        print(f"wrote {count} dubbed video{'' if count == 1 else 's'} to {out_dir}")
        return report

    def audio_for_input(self, item: VideoInput, caption: str, settings: JointSampling, seed: int) -> np.ndarray:
        """The audio (S,) float32 of one ``sample.video`` input (:meth:`dub_to_files`): its windows generated
        ``settings.batch_size`` at a time (window j from noise ``seed + j``; a window of fewer than ``F`` frames
        repeats its last one), each cut to its length, joined by the equal-power crossfade.

        Raises:
            ValueError: the audio holds NaN or inf.
        """
        from avgen.media import equal_power_crossfade, uint8_to_unit_range

        chunks = []
        for first in range(0, len(item.windows), settings.batch_size):
            group = item.windows[first:first + settings.batch_size]
            frames = [item.window_frames(start, end, self.clip) for start, end in group]
            clips = torch.stack([uint8_to_unit_range(np.concatenate([f, np.repeat(f[-1:], self.num_frames - len(f), 0)])
                                                     if len(f) < self.num_frames else f[:self.num_frames])
                                 for f in frames])
            audio = self.audio_for_frames(clips, [caption] * len(group), settings, seed + first)
            chunks += [audio[j, :end - start].cpu().numpy() for j, (start, end) in enumerate(group)]
        wave = equal_power_crossfade(chunks, [start for start, _ in item.windows], item.num_samples)
        if not np.isfinite(wave).all():
            raise ValueError("the generated audio holds NaN or inf")
        return wave

    @torch.no_grad()
    def audio_for_frames(self, video: torch.Tensor, prompts: Sequence[str], settings: JointSampling, seed: int
                         ) -> torch.Tensor:
        """Audio (B, S) in [-1, 1] for video (B, F, 3, H, W) in [-1, 1] of exactly the model's ``F`` frames at
        ``data.clip`` size: the frame VAE's posterior mean (scaled) as :meth:`generate`'s ``video_latents`` (the
        replacement method), with ``settings``' sampler and ``prompts``' text; sample i from noise ``seed + i``.

        Raises:
            ValueError: video of another shape than the model's clips.
        """
        shape = (self.num_frames, 3, self.clip.height, self.clip.width)
        if video.ndim != 5 or tuple(video.shape[1:]) != shape:
            raise ValueError(f"video must be (B, {', '.join(map(str, shape))}) in [-1, 1], got {tuple(video.shape)}")
        vae = self.video_vae
        mean, _ = encode_video_posterior(self.video, video.to(vae.device, vae.dtype))
        latents = mean * vae.config.scaling_factor
        return self.generate(list(prompts), steps=settings.steps, gamma=settings.gamma,
                             guidance_video=settings.guidance_video, guidance_audio=settings.guidance_audio,
                             negative_prompt=settings.negative_prompt, seed=seed, eta=settings.eta,
                             video_latents=latents, cross_modal_guidance=settings.cross_modal_guidance)[1]

    def _prompts(self, prompt: str | Sequence[str] | None, n: int) -> tuple[list[str], list[str | None]]:
        """``n`` prompts and, for captions of the data, the key of their clip (else None)."""
        if prompt is None:
            captions = split_captions(((self.run_config or {}).get("data") or {}).get("root"), n)
            if not captions:
                raise ConfigError("sample.prompt is not set and the training data's captions cannot be read; "
                                 "pass sample.prompt=\"...\" (or a list: 'sample.prompt=[a,b]')")
            sources, prompts = [k for k, _ in captions], [c for _, c in captions]
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            sources = [None] * len(prompts)
        return [prompts[i % len(prompts)] for i in range(n)], [sources[i % len(sources)] for i in range(n)]
