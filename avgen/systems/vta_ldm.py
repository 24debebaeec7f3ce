"""VTA-LDM, video → audio (Xu et al., "Video-to-Audio Generation with Hidden Alignment", arXiv 2407.07464).

Frozen CLIP4Clip frame features f_V (per-frame CLIP ViT-L/14 ``image_embeds`` at 2 fps, 768-d) → a
trained linear projection φ (768 → 2048) → the cross-attention context of a latent diffusion U-Net
(diffusers ``UNet2DConditionModel``, 8 latent channels, trained from scratch) that denoises AudioLDM
VAE latents of the clip's log-mel spectrogram (Sec. 3 and App. C–E of the paper):

- audio: the clip's waveform zero-padded to ``model.audio.seconds`` (10.24 s = 163,840 samples at
  16 kHz for 10-s clips) → 1024 mel frames → latents (B, 8, 256, 16); the loss covers every latent
  frame; generated audio is cropped back to the clip;
- objective: Eq. 1 with ``model.objective.prediction_type`` ε (the paper) or v (the public code), optionally
  Min-SNR-γ weighted (:func:`avgen.diffusion.min_snr_weights`);
- conditions (Table 3, ``model.conditions``): the frame tokens, the caption's CLIP text embedding, a sinusoidal
  position table, the tokens of the clip's optical-flow images (``model.flow``; :mod:`avgen.media.optical_flow`);
  the context's layout is :mod:`avgen.modules.vta_condition`'s;
- classifier-free guidance (Eq. 2) against a trained null: the all-zero context after φ, of the same
  length, attention mask all true; in training the context is replaced by it with probability
  ``model.cond_drop_prob`` (0.1). The public code never drops the condition yet guides at inference;
  avgen does not reproduce that.

Departures from the public code, on purpose (``../shared/reference/official-code-notes.md`` section 2):
φ is trained (the public code leaves it out of the optimizer); the null condition is trained (the
public code never drops the condition, yet guides at inference); CLIP's mean/std normalisation is
applied (``model.encoder.normalize=false`` reproduces the public code's skip).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

from avgen.backbones.audioldm import (
    decode_audio,
    encode_audio_posterior,
    latent_frames,
    load_audio_codec,
    vae_downsampling,
)
from avgen.data.feature_cache import PART_NAMES, FeaturePart
from avgen.data.geometry import ClipGeometry
from avgen.diffusion import (
    MIN_SNR_FORMS,
    add_noise,
    min_snr_weights,
    sample_latents,
    seeded_noise,
    training_target,
)
from avgen.encoders.base import VideoTokens
from avgen.encoders.clip_text import load_clip_text
from avgen.encoders.video_tokens import DEFAULT_SOURCES, VIDEO_ENCODERS, build_video_encoder
from avgen.errors import ConfigError, WeightsFileError
from avgen.media import (
    MediaError,
    OpticalFlow,
    as_fps,
    equal_power_crossfade,
    flow_images,
    fps_text,
    quantize_unit_range,
    uint8_to_unit_range,
)
from avgen.modules.vta_condition import VTACondition, check_conditions
from avgen.pretrained import quiet_loading
from avgen.samples import SampleReport, VideoInput, read_video_inputs, refuse_existing_dubs, write_dubbed
from avgen.systems.base import DiffusionSystem, plain_config, system_arguments
from avgen.systems.saliency import SALIENCY_TIMESTEPS, input_saliency, write_saliency
from avgen.systems.settings import SamplingSettings, guidance_scale, setting, text

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
    guidance scales of the video (``guidance``, Eq. 2; paper 3) and text (``guidance_text``) conditions, the
    ``negative_prompt`` (the text condition's null; ``""`` as in training), and ``batch_size``."""

    guidance: float = setting(guidance_scale, "video classifier-free guidance scale w_v (Eq. 2; 1 = none)")
    guidance_text: float = setting(guidance_scale, "text guidance scale w_t (model.conditions with text)")
    negative_prompt: str = setting(text, "the text condition's null at sampling")
    sampler: str = setting(sampler_name, "ddpm | ddim | dpm_solver")


@dataclass(frozen=True)
class Objective:
    """``model.objective``: what the U-Net regresses and how the per-clip errors are weighted.

    ``prediction_type``: ``epsilon`` (paper Eq. 1) or ``v_prediction`` (public code, Stable Diffusion
    2.1's scheduler). ``min_snr_gamma``: γ of Min-SNR weighting (``None``: the paper's plain MSE; 5: the
    public code). ``min_snr_form``: ``target`` (min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v) or
    ``epsilon`` (the public code: min(SNR, γ)/SNR on any target); see :func:`avgen.diffusion.min_snr_weights`.
    """

    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = None
    min_snr_form: str = "target"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Objective":
        """Checked ``model.objective``; raises ConfigError naming the key."""
        unknown = sorted(set(cfg) - {"prediction_type", "min_snr_gamma", "min_snr_form"})
        if unknown:
            raise ConfigError(f"model.objective.{unknown[0]}: not an objective setting; expected prediction_type, "
                              f"min_snr_gamma or min_snr_form")
        out = cls(**cfg)
        if out.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"model.objective.prediction_type={out.prediction_type!r}: expected epsilon (paper) or "
                              f"v_prediction (public code)")
        gamma = out.min_snr_gamma
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0):
            raise ConfigError(f"model.objective.min_snr_gamma={gamma!r}: expected a value > 0 (public code: 5) or "
                              f"null (the paper's plain MSE)")
        if out.min_snr_form not in MIN_SNR_FORMS:
            raise ConfigError(f"model.objective.min_snr_form={out.min_snr_form!r}: expected one of "
                              f"{', '.join(MIN_SNR_FORMS)}")
        return out


class VTALDM(DiffusionSystem):
    """VTA-LDM as a LightningModule (module docstring for the method).

    Args:
        encoder: ``{name: clip4clip, path, normalize, fps}``: the frozen frame encoder (a CLIP folder or hub
            id, ``tiny:clip4clip`` for the tiny twin), whether CLIP's mean/std normalisation is applied, and
            the rate it embeds frames at (the paper: 2); ``data.clip.fps`` must equal it.
        audio: ``{base, seconds}``: AudioLDM's VAE and vocoder (a folder or hub id in diffusers' AudioLDM
            layout, ``tiny:audioldm`` for the tiny twin) and the padded length every clip's audio is
            diffused at (10.24 s for 10-s clips; its mel frames must divide by the VAE × U-Net downsampling).
        unet: ``UNet2DConditionModel`` arguments (the paper's large 2048 configuration by default);
            ``cross_attention_dim`` is the width of φ's output.
        noise_scheduler: ``DDPMScheduler`` arguments of the training noise schedule (Stable Diffusion
            2.1's: scaled_linear β 0.00085–0.012, 1000 steps); its ``prediction_type`` is the objective's.
        clip: the clip geometry (``data.clip``), held as a :class:`~avgen.data.geometry.ClipGeometry`.
        objective: :class:`Objective` (``prediction_type``, ``min_snr_gamma``, ``min_snr_form``).
        conditions: ``model.conditions``, a subset of video, text, pe, flow (Table 3;
            :mod:`avgen.modules.vta_condition`); default ``[video]``.
        flow: ``model.flow``, how the ``flow`` condition's optical flow is computed
            (:class:`~avgen.media.optical_flow.OpticalFlow`: ``method`` farneback or dis, Farneback's parameters);
            read only when ``flow`` is a condition.
        text_encoder: ``{path}``: the CLIP text tower of the ``text`` condition (its width must be the video
            encoder's: both go through φ); read only when ``text`` is a condition.
        released: path of the authors' released ``pytorch_model_2.bin`` to start a new run from
            (:func:`load_released`), or ``None``; ignored when a checkpoint is restored (``INIT_ONLY``).
        gradient_checkpointing: recompute the U-Net's blocks in the backward pass.
        scale, tiny, mini, paper_random, tiny_dir: as the other systems (``scale=tiny`` merges ``tiny`` over the
            arguments, ``scale=mini`` ``tiny`` then ``mini``, ``scale=paper_random`` ``paper_random``).
        sampling, validation: typed blocks (:class:`VTALDMSampling`,
            :class:`~avgen.systems.settings.ValidationSettings`).
        optimizer, scheduler, ema_decay: as :class:`~avgen.systems.base.AVSystem` (AdamW 6e-5, 300 warm-up
            steps then linear decay: the released run's).
        cond_drop_prob: probability of the null condition in training (0.1).

    Raises:
        ConfigError: a bad setting, a frame rate other than the encoder's, a clip longer than
            ``audio.seconds`` or a length the latents cannot tile: all before the frame encoder and the
            U-Net load. ReleasedCheckpointError: ``released`` does not fit the U-Net or φ.
    """

    MODEL_CONFIG = "vta_ldm"
    sampling_settings = VTALDMSampling
    SAMPLE_INPUT = ("generates the audio for sample.video (a video file of any container, or a folder of them; "
                    "unset: the data's test clips)")
    SAMPLER_CONFIG = ()
    #: model keys that only initialise a new run: a restored checkpoint's weights replace them
    INIT_ONLY = ("released",)

    def __init__(self, encoder: Mapping, audio: Mapping, unet: Mapping, noise_scheduler: Mapping, clip: Mapping, *,
                 objective: Mapping | None = None, conditions: Sequence[str] = ("video",),
                 text_encoder: Mapping | None = None, flow: Mapping | None = None, released: str | None = None,
                 scale: str = "paper", tiny: Mapping | None = None, mini: Mapping | None = None,
                 paper_random: Mapping | None = None,
                 tiny_dir: str | None = None,
                 gradient_checkpointing: bool = False,
                 sampling: Mapping | None = None, validation: Mapping | None = None, optimizer=None, scheduler=None,
                 ema_decay: float | None = None, cond_drop_prob: float = 0.1):
        super().__init__(optimizer=optimizer, scheduler=scheduler, ema_decay=ema_decay, cond_drop_prob=cond_drop_prob)
        args = system_arguments(scale, tiny, mini=mini, paper_random=paper_random,
                                encoder=encoder, audio=audio, unet=unet,
                                noise_scheduler=noise_scheduler,
                                objective=objective, conditions=list(conditions), text_encoder=text_encoder,
                                flow=flow, sampling=sampling, validation=validation)
        self.configure_settings(args, scale)
        self.clip = ClipGeometry.from_config(plain_config(clip))
        self.objective = Objective.from_config(args["objective"])
        try:
            self.conditions = check_conditions(args["conditions"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.flow = OpticalFlow.from_config(args["flow"])
        enc = args["encoder"]
        # what sets the encoder's tokens besides its weights (the feature cache's description)
        self.encoder_settings = {"name": enc.get("name", "clip4clip"),
                                 **{k: v for k, v in enc.items() if k not in ("name", "path")}}
        if enc.get("name", "clip4clip") not in VIDEO_ENCODERS:
            raise ConfigError(f"model.encoder.name={enc.get('name')!r}: not a video encoder; expected one of "
                              f"{', '.join(VIDEO_ENCODERS)}")
        if self.clip.fps != as_fps(enc.get("fps", 2)):
            raise ConfigError(f"data.clip.fps={fps_text(self.clip.fps)}: VTA-LDM's encoder embeds frames at "
                              f"{enc.get('fps', 2)} fps (model.encoder.fps); set data.clip.fps={enc.get('fps', 2)}")
        seconds = float(args["audio"].get("seconds", 10.24))
        if not seconds >= self.clip.seconds:
            raise ConfigError(f"model.audio.seconds={seconds}: shorter than the clip (data.clip.seconds="
                              f"{self.clip.seconds}); the clip's audio is zero-padded to it")
        self.audio_samples = int(round(seconds * self.clip.sample_rate))
        self.noise_scheduler = DDPMScheduler(**{**args["noise_scheduler"],
                                                "prediction_type": self.objective.prediction_type})

        # the codec first (small): the clip's rate and padded length are checked before the big networks load
        self.codec = load_audio_codec(args["audio"]["base"], "model.audio.base", tiny_dir=tiny_dir)
        self.vae, self.vocoder, self.mel = self.codec.vae, self.codec.vocoder, self.codec.mel
        if self.mel.sample_rate != self.clip.sample_rate:
            rate = self.mel.sample_rate
            raise ConfigError(f"data.clip.sample_rate={self.clip.sample_rate}: AudioLDM's codec works at {rate} Hz; "
                              f"set data.clip.sample_rate={rate}")
        unet_args = {**args["unet"], "in_channels": self.vae.config.latent_channels,
                     "out_channels": self.vae.config.latent_channels}
        self.time_multiple = vae_downsampling(self.vae) * 2 ** (len(unet_args.get("block_out_channels", (0,) * 4)) - 1)
        mel_frames = self.mel.num_frames(self.audio_samples)
        if mel_frames % self.time_multiple:
            good = math.ceil(mel_frames / self.time_multiple) * self.time_multiple * self.mel.hop_length
            raise ConfigError(f"model.audio.seconds={seconds}: {mel_frames} mel frames do not divide by the VAE × "
                              f"U-Net downsampling ({self.time_multiple}); use {good / self.clip.sample_rate:g}")

        self.encoder = build_video_encoder(enc, tiny_dir) if "video" in self.conditions else None
        self.text_encoder = None
        if "text" in self.conditions:
            self.text_encoder = load_clip_text((args["text_encoder"] or {}).get("path") or DEFAULT_SOURCES["clip4clip"],
                                               "model.text_encoder.path", tiny_dir=tiny_dir)
        widths = {name: part.embed_dim for name, part in (("model.encoder", self.encoder),
                                                          ("model.text_encoder", self.text_encoder)) if part}
        if len(set(widths.values())) > 1:
            raise ConfigError(f"model.conditions={list(self.conditions)}: the text and video tokens both go through φ "
                              f"and must have one width; got {widths}")
        with quiet_loading():
            self.unet = UNet2DConditionModel(**unet_args)
        self.condition = VTACondition(next(iter(widths.values())), self.unet.config.cross_attention_dim,
                                      self.conditions)
        self.freeze(*(part for part in (self.encoder, self.text_encoder) if part), self.vae, self.vocoder, self.mel)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.register_buffer("alphas", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)
        if released:
            load_released_into(released, self.unet, self.condition.projection)

    # ------------------------------------------------------------------------------ geometry
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, T', F') of the latents of one padded clip (8, 256, 16 at the paper's settings)."""
        frames, width = latent_frames(self.codec, self.audio_samples, self.time_multiple)
        return self.vae.config.latent_channels, frames, width

    # ------------------------------------------------------------------------------ conditioning
    def reads_video(self) -> bool:
        return "video" in self.conditions

    def audio_only_hint(self) -> str:
        return (f" (model.conditions={list(self.conditions)}; Table 4's Pretrain-Audio trains on audio with "
                f"model.conditions=[text]: text or the null)")

    @staticmethod
    def uint8_clips(video: torch.Tensor, lengths: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Clip i of video (B, F, 3, H, W) float in [-1, 1] as its ``lengths[i]`` (default F) real frames
        (F_i, 3, H, W) uint8: the frames the encoder takes (exact for decoded frames)."""
        pixels = quantize_unit_range(video)
        return list(pixels.unbind(0)) if lengths is None else [pixels[i, :n] for i, n in enumerate(lengths)]

    def video_tokens(self, video: torch.Tensor, lengths: Sequence[int] | None = None) -> VideoTokens:
        """The encoder's tokens of video (B, F, 3, H, W) float in [-1, 1] at ``data.clip.fps``; clip i has
        ``lengths[i]`` real frames (default all F)."""
        return self.encoder(self.uint8_clips(video, lengths))

    def flow_frames(self, video: torch.Tensor, lengths: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The optical-flow images of each clip of video (B, F, 3, H, W) float in [-1, 1]: clip i's
        (``lengths[i]``, 3, H, W) uint8 RGB on the CPU, image 0 white, image k the flow from frame k − 1 to k
        (:func:`avgen.media.optical_flow.flow_images` with ``model.flow``), computed with OpenCV on the CPU from
        the uint8 frames the encoder sees. A clip of one frame gives one white image."""
        clips = self.uint8_clips(video, lengths)
        return [torch.from_numpy(flow_images(clip.permute(0, 2, 3, 1).cpu().numpy(), self.flow)).permute(0, 3, 1, 2)
                for clip in clips]

    def flow_tokens(self, video: torch.Tensor, lengths: Sequence[int] | None = None) -> VideoTokens:
        """The frozen video encoder's tokens (B, T, D) of :meth:`flow_frames`: the same time axis and mask as
        :meth:`video_tokens` (the same frame counts go through the same encoder)."""
        return self.encoder(self.flow_frames(video, lengths))

    def context(self, video: torch.Tensor, lengths: Sequence[int] | None = None,
                captions: Sequence[str] | None = None, *, keep_video: torch.Tensor | None = None,
                tokens: VideoTokens | None = None, flow_tokens: VideoTokens | None = None,
                text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention context (B, T_c, D_φ) and mask (B, T_c) bool of :attr:`conditions`
        (:class:`~avgen.modules.vta_condition.VTACondition`): φ(f_V) with padded frames zero and masked out, the
        captions' text embeddings before it when ``text`` is a condition (``captions`` default: ``""``), the flow
        tokens' φ after it when ``flow`` is, the video null (video and flow slots) where ``keep_video`` is False.
        ``tokens``, ``flow_tokens``, ``text`` ((B, D)): the video and flow tokens and the text embeddings when
        already computed (``video`` is then not read for them; ``captions`` are not read with ``text``)."""
        b = video.shape[0]
        if "video" in self.conditions and tokens is None:
            tokens = self.video_tokens(video, lengths)
        if "flow" in self.conditions and flow_tokens is None:
            flow_tokens = self.flow_tokens(video, lengths)
        if self.text_encoder is None:
            text = None
        elif text is None:
            text = self.text_encoder(list(captions) if captions is not None else [""] * b)
        # text only: one text token per frame slot of the clip (audio-only clips carry no frames)
        slots = max(lengths) if lengths is not None else (video.shape[1] or self.clip.num_frames)
        return self.condition(tokens.embeds if tokens is not None else None,
                              tokens.mask if tokens is not None else None, text, num_slots=slots,
                              keep_video=keep_video, flow=flow_tokens.embeds if flow_tokens is not None else None,
                              flow_mask=flow_tokens.mask if flow_tokens is not None else None)

    def guidance_branches(self, video: torch.Tensor, lengths: Sequence[int] | None, captions: Sequence[str] | None,
                          negative_prompt: str, guidance: float, guidance_text: float
                          ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[float]]:
        """The contexts c_0 … c_K and weights w_1 … w_K of classifier-free guidance,
        ε̂ = ε(c_0) + Σ_k w_k (ε(c_k) − ε(c_{k−1})):

        - video: c = (∅, v), w = (w_v): Eq. 2;
        - text: c = (neg, t), w = (w_t);
        - text + video: c = ((∅, neg), (v, neg), (v, t)), w = (w_v, w_t): ε(∅, neg) + w_v[ε(v, neg) − ε(∅, neg)]
          + w_t[ε(v, t) − ε(v, neg)].

        ``pe`` and ``flow`` belong to the video condition (v; its null ∅ zeroes the flow slots too). With every
        weight 1 the sum telescopes to ε(c_K): one pass, no branches. The video and flow tokens are computed once.
        """
        b = video.shape[0]
        has_video, has_text = "video" in self.conditions, "text" in self.conditions
        tokens = self.video_tokens(video, lengths) if has_video else None
        flow = self.flow_tokens(video, lengths) if "flow" in self.conditions else None
        negative = [negative_prompt] * b
        full = self.context(video, lengths, captions, tokens=tokens, flow_tokens=flow)
        weights = ([guidance] if has_video else []) + ([guidance_text] if has_text else [])
        if all(w == 1.0 for w in weights):
            return [full], []
        off = torch.zeros(b, dtype=torch.bool)
        if has_video and has_text:
            branches = [self.context(video, lengths, negative, tokens=tokens, flow_tokens=flow, keep_video=off),
                        self.context(video, lengths, negative, tokens=tokens, flow_tokens=flow), full]
        elif has_video:
            branches = [self.context(video, lengths, captions, tokens=tokens, flow_tokens=flow, keep_video=off), full]
        else:
            branches = [self.context(video, lengths, negative), full]
        return branches, weights

    def denoise(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The U-Net's output (ε or v) for latents (B, C, T', F') at timesteps t (B,) or scalar."""
        return self.unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample

    # ------------------------------------------------------------------------------ training
    def padded_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (B, S) zero-padded (or cut) to :attr:`audio_samples`."""
        if audio.shape[1] >= self.audio_samples:
            return audio[:, :self.audio_samples]
        return F.pad(audio, (0, self.audio_samples - audio.shape[1]))

    # ------------------------------------------------------------------------------ feature cache
    def feature_part_names(self) -> tuple[str, ...]:
        names = {"audio_latents"} | {name for condition, name in (("text", "text"), ("video", "encoder"),
                                                                  ("flow", "flow")) if condition in self.conditions}
        return tuple(name for name in PART_NAMES if name in names)

    def feature_parts(self) -> dict[str, FeaturePart]:
        """VTA-LDM's frozen parts under its ``model.conditions`` (:mod:`avgen.data.feature_cache`), their tensors
        per clip:

        - ``audio_latents``: AudioLDM's VAE posterior of the clip's audio zero-padded to ``model.audio.seconds``
          (:meth:`padded_audio`), ``mean`` and ``std`` (C, T', F') unscaled; reads ``audio``;
        - ``text`` (``text`` a condition): ``embeds`` (D,), the CLIP text embedding of the caption; reads the
          caption only;
        - ``encoder`` (``video`` a condition): the frame encoder's tokens of the clip's uint8 frames, ``embeds``
          (T, D) and ``mask`` (T,) 1 at real tokens, 0 at padding; reads ``video``;
        - ``flow`` (``flow`` a condition): the same encoder's tokens of the clip's optical-flow images
          (:meth:`flow_frames`, ``model.flow``), ``embeds`` (T, D) and ``mask`` (T,); reads ``video``.
        """
        clip = self.clip.to_dict()
        frames = {"height": clip["height"], "width": clip["width"], "fps": clip["fps"], "seconds": clip["seconds"],
                  "frames": self.clip.num_frames, "input": "uint8 RGB (quantised from [-1, 1])"}
        names = self.feature_part_names()
        parts = {}
        if "audio_latents" in names:
            parts["audio_latents"] = FeaturePart(
                "audio_latents", "audioldm_vae", {"vae": self.weights_sha256(self.vae)},
                {"seconds": clip["seconds"], "samples": self.clip.num_samples, "padded_samples": self.audio_samples,
                 "mel": self.mel.settings(), "time_multiple": self.time_multiple,
                 "pad": "zeros to padded_samples, then log-mel silence", "posterior": "unscaled"},
                reads=("audio",))
        if "text" in names:
            parts["text"] = FeaturePart(
                "text", "clip_text", {"text_encoder": self.weights_sha256(self.text_encoder)},
                {"max_length": self.text_encoder.max_length, "vocab": len(self.text_encoder.tokenizer),
                 "padding": "longest", "output": "text_embeds"})
        if "encoder" in names:
            parts["encoder"] = FeaturePart(
                "encoder", self.encoder_settings["name"], {"encoder": self.weights_sha256(self.encoder)},
                {"encoder": dict(self.encoder_settings), **frames}, reads=("video",))
        if "flow" in names:
            parts["flow"] = FeaturePart(
                "flow", f"{self.encoder_settings['name']}_flow", {"encoder": self.weights_sha256(self.encoder)},
                {"encoder": dict(self.encoder_settings), **frames, "flow": dataclasses.asdict(self.flow)},
                reads=("video",))
        return parts

    def part_features(self, batch: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
        if name == "audio_latents":
            mean, std = encode_audio_posterior(self.codec, self.padded_audio(batch["audio"].float()),
                                               time_multiple=self.time_multiple)
            return {"mean": mean, "std": std}
        if name == "text":
            b = len(batch["audio"])
            return {"embeds": self.text_encoder(list(batch.get("caption") or [""] * b))}
        if name in ("encoder", "flow"):
            tokens = (self.video_tokens if name == "encoder" else self.flow_tokens)(batch["video"])
            return {"embeds": tokens.embeds, "mask": tokens.mask}
        return super().part_features(batch, name)

    def step_tokens(self, batch: Mapping[str, Any], name: str) -> VideoTokens | None:
        """The ``encoder`` or ``flow`` tokens of a training step (cached or computed), or None when that part is
        not run; a cached mask (0/1 in the cache's dtype) becomes bool."""
        if name not in self.feature_part_names():
            return None
        tokens = self.step_features(batch, name)
        device = self.alphas.device
        return VideoTokens(embeds=tokens["embeds"].to(device).float(), mask=tokens["mask"].to(device) > 0.5,
                           seconds_per_token=1 / self.clip.fps)

    def step_text(self, batch: Mapping[str, Any], keep: torch.Tensor | None) -> torch.Tensor | None:
        """The text condition's embeddings (B, D) of a training step (cached or computed), clip i's replaced by the
        embedding of ``""`` where ``keep[i]`` is False (computed once per device and kept); None without text."""
        if "text" not in self.feature_part_names():
            return None
        text = self.step_features(batch, "text")["embeds"].to(self.alphas.device).float()
        if keep is None or bool(keep.all()):
            return text
        null = self.kept_output("null_text", (self.text_encoder,), text.device, lambda: self.text_encoder([""]))
        return torch.where(keep.to(text.device)[:, None], text, null.to(text.device).float())

    # ------------------------------------------------------------------------------ training
    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                       ) -> dict[str, torch.Tensor]:
        """Eq. 1 (Min-SNR weighted when set) for one batch (the batch contract). With ``batch["features"]`` (the
        feature cache) the cached posterior, tokens and text embeddings replace the frozen codec, frame encoder and
        text encoder; the batch's video / audio are then not read and may be empty ((B, 0, 3, H, W), (B, 0)). The
        draws from ``generator``, in order: the latents' ε, the video and text dropout, timesteps, noise."""
        posterior, vae = self.step_features(batch, "audio_latents"), self.vae
        with torch.no_grad():
            latents = sample_latents(*(posterior[k].to(vae.device, vae.dtype) for k in ("mean", "std")), generator,
                                     vae.config.scaling_factor)
        b = latents.shape[0]
        # the conditions are dropped independently (p = cond_drop_prob each): the video to its null, the text to ""
        keep_video = keep_text = None
        if self.training and self.cond_drop_prob > 0:
            keep_video = torch.rand(b, generator=generator) >= self.cond_drop_prob
            keep_text = torch.rand(b, generator=generator) >= self.cond_drop_prob
        with torch.no_grad():
            tokens, flow = self.step_tokens(batch, "encoder"), self.step_tokens(batch, "flow")
            text = self.step_text(batch, keep_text)
        context, mask = self.context(batch["video"], keep_video=keep_video, tokens=tokens, flow_tokens=flow,
                                     text=text)
        t = torch.randint(0, len(self.alphas), (b,), generator=generator).to(latents.device)
        # float32 noise and noising, whatever dtype the VAE encoded in (bf16 autocast rounds ᾱ_0, ᾱ_1 to 1)
        noise = (torch.randn_like(latents, dtype=torch.float32) if generator is None
                 else torch.randn(latents.shape, generator=generator).to(latents.device))
        noisy = add_noise(latents, noise, self.alphas, t)
        out = self.denoise(noisy.to(self.unet.dtype), t, context.to(self.unet.dtype), mask)
        target = training_target(self.objective.prediction_type, latents, noise, self.alphas, t)
        per_sample = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        objective = self.objective
        weights = min_snr_weights(self.alphas, t, objective.prediction_type, objective.min_snr_gamma,
                                  objective.min_snr_form)
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
        if video.shape[1] == 0:  # data.audio_only: no frames to dub
            return
        with self.ema_weights(), self.precision_context():
            # DDIM: the validation budget of steps is far below DDPM's 300
            audio = self.generate(video, captions=captions, steps=self.validation_settings.steps, sampler="ddim",
                                  seed=0)
        self.log_validation_samples(captions, video, audio)

    # ------------------------------------------------------------------------------ sampling
    def sampler(self, name: str):
        """A fresh diffusers scheduler of kind ``name`` on the training noise schedule, with
        :data:`SAMPLER_OVERRIDES` (as keyword arguments: a merged dict would lose every key the training config
        lists in ``_use_default_values``, which diffusers resets to its defaults)."""
        return SAMPLERS[name].from_config(self.noise_scheduler.config, **SAMPLER_OVERRIDES[name])

    @torch.no_grad()
    def generate_latents(self, branches: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float], *,
                         steps: int, sampler: str, seed: int = 0, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised latents (B, C, T', F'): the ``sampler``'s ``steps`` with classifier-free guidance over the
        context ``branches`` (each (B, T_c, D_φ) with its mask) and ``weights`` of :meth:`guidance_branches`,
        ε̂ = ε(c_0) + Σ_k w_k (ε(c_k) − ε(c_{k−1})), all branches in one U-Net batch; one branch: no guidance.
        Clip i starts from noise seeded with ``seed + i`` (or from ``latents``); a stochastic sampler (DDPM)
        draws clip i's step noise from :func:`step_generators` (``seed``), so a clip does not depend on its batch."""
        b, device = branches[0][0].shape[0], branches[0][0].device
        if latents is None:
            (latents,) = seeded_noise([self.latent_shape], b, seed)
        scheduler = self.sampler(sampler)
        scheduler.set_timesteps(steps, device=device)
        x = latents.to(device, self.unet.dtype) * scheduler.init_noise_sigma
        context = torch.cat([c for c, _ in branches]).to(self.unet.dtype)
        mask = torch.cat([m for _, m in branches])
        options = step_options(scheduler, step_generators(b, seed))
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([x] * len(branches)), t)
            outs = self.denoise(model_in, t, context, mask).chunk(len(branches))
            out = outs[0]
            for k, w in enumerate(weights, start=1):
                out = out + w * (outs[k] - outs[k - 1])
            x = scheduler.step(out, t, x, **options).prev_sample
        return x

    @torch.no_grad()
    def generate(self, video: torch.Tensor, *, lengths: Sequence[int] | None = None,
                 captions: Sequence[str] | None = None, steps: int | None = None, guidance: float | None = None,
                 guidance_text: float | None = None, negative_prompt: str | None = None, sampler: str | None = None,
                 seed: int = 0, return_latents: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Audio (B, S) in [-1, 1] at ``clip.sample_rate`` for video (B, F, 3, H, W) in [-1, 1] at the
        encoder's rate (and the ``captions`` of the text condition): S covers the clip (``data.clip.seconds``)
        of the padded length that was diffused. Unset settings come from ``model.sampling``. With
        ``return_latents``: ``(audio, latents)``, the denoised latents (B, C, T', F') too (saliency maps)."""
        settings = self.sampling.updated("sample", steps=steps, guidance=guidance, guidance_text=guidance_text,
                                         negative_prompt=negative_prompt, sampler=sampler)
        device = self.alphas.device
        branches, weights = self.guidance_branches(video.to(device), lengths, captions, settings.negative_prompt,
                                                   settings.guidance, settings.guidance_text)
        latents = self.generate_latents(branches, weights, steps=settings.steps, sampler=settings.sampler, seed=seed)
        audio = decode_audio(self.codec, latents, self.audio_samples)
        audio = audio[:, :self.clip.num_samples].float().clamp(-1, 1)
        return (audio, latents) if return_latents else audio

    def saliency(self, clips: Sequence[torch.Tensor], latents: torch.Tensor, captions: Sequence[str] | None = None,
                 *, timesteps: Sequence[int] = SALIENCY_TIMESTEPS, seed: int = 0) -> list[torch.Tensor]:
        """Saliency maps of the input frames for the generated audio (§4.2, Figs. 2, 3, 6; the protocol is in
        :mod:`avgen.evaluation.saliency`): per clip S_f = max_c mean_t |∂L_t/∂frames|, normalised per clip, with
        L_t the denoising loss of the generated latents at timestep t under one fixed noise (``seed``).

        Args:
            clips: B clips (F_b, 3, H, W) uint8 RGB at ``data.clip.fps``, the frames the audio was generated for.
            latents: (B, C, T', F') the generated latents (:meth:`generate` with ``return_latents``).
            captions: the captions used (text condition); default ``""``.
            timesteps: the diffusion timesteps averaged over (default 100, 300, 500).
            seed: seeds the noise ε shared by every timestep (clip i: its own slice of one draw).

        With the ``flow`` condition the flow tokens are held constant: OpenCV's optical flow is not differentiable,
        so the maps show what reaches the model through the video tokens.

        Returns:
            B maps (F_b, H, W) float32 in [0, 1] on the CPU.

        Raises:
            ConfigError: the model has no video condition (``model.conditions``), or a timestep outside
                [0, num_train_timesteps).
        """
        if self.encoder is None:
            raise ConfigError(f"sample.saliency=true: model.conditions={list(self.conditions)} has no video "
                              f"condition, so no frame reaches the model; saliency maps need video")
        bad = [t for t in timesteps if not 0 <= int(t) < len(self.alphas)]
        if bad:
            raise ConfigError(f"saliency timesteps {list(timesteps)}: {bad[0]} is outside [0, {len(self.alphas)}) "
                              f"(model.noise_scheduler.num_train_timesteps)")
        device = self.alphas.device
        lengths = [len(clip) for clip in clips]
        inputs = [clip.to(device).float().requires_grad_() for clip in clips]
        video = torch.zeros(len(clips), max(lengths), *clips[0].shape[1:], device=device)
        for i, clip in enumerate(clips):
            video[i, :len(clip)] = clip.to(device).float() / 127.5 - 1.0  # (F, 3, H, W) channels first
        z0 = latents.detach().to(device, torch.float32)
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(int(seed))).to(device)
        with torch.enable_grad():
            tokens = self.encoder.differentiable(inputs)  # one encoder pass, differentiated once per timestep
            context, mask = self.context(video, lengths, captions, tokens=tokens)
            losses = []
            for t in timesteps:
                steps = torch.full((len(clips),), int(t), dtype=torch.long, device=device)
                noisy = add_noise(z0, noise, self.alphas, steps)
                out = self.denoise(noisy.to(self.unet.dtype), steps, context.to(self.unet.dtype), mask)
                target = training_target(self.objective.prediction_type, z0, noise, self.alphas, steps)
                # a sum over clips: clip i's gradient is its own loss's (the U-Net treats clips independently)
                losses.append(F.mse_loss(out.float(), target.float(), reduction="sum"))
            maps = input_saliency(inputs, losses)
        return [m.cpu() for m in maps]

    # ------------------------------------------------------------------------------ sample command
    def sample_to_files(self, out_dir: str | Path, n: int = 4, video: str | None = None, prompt: str | None = None,
                        steps: int | None = None, guidance: float | None = None, guidance_text: float | None = None,
                        negative_prompt: str | None = None, sampler: str | None = None, seed: int = 0,
                        batch_size: int | None = None, device: str = "auto", overwrite: bool = False,
                        saliency: bool | None = None, **unused: Any) -> SampleReport:
        """``python -m avgen sample``: audio for every readable input video, dubbed onto it.

        Inputs: ``video`` = a file or a folder of files of any container FFmpeg reads
        (:func:`avgen.media.scan_media`; other systems' sample folders too); default: the first ``n``
        clips of the training data's test split. Per input ``<stem>``: ``<stem>.wav`` (the generated
        audio), ``<stem>.mp4`` (the input's video stream, copied when its codec fits mp4, else h264 CRF 18,
        with the generated audio: :func:`avgen.media.dub_video`), ``<stem>.txt`` (the clip's caption; empty
        for files) and ``<stem>.json`` (source, how the video was carried, the windows).

        The audio covers the video stream's duration (last pts + frame duration − first pts). An input
        longer than the clip is generated in clip-long windows overlapping by 1 s (:func:`window_overlap`),
        each conditioned on the frames shown during it (at ``data.clip.fps`` from the window's start), and
        joined with an equal-power crossfade (:func:`avgen.media.crossfade_windows`,
        :func:`avgen.media.equal_power_crossfade`). Window k (over every input, in order) starts from noise
        seeded with ``seed + k``. With ``saliency`` (``sample.saliency=true``) each input also gets
        ``<stem>.saliency.png`` (the frames of every window with their saliency maps drawn over them, in rows of
        8) and ``<stem>.saliency.npz`` (the maps (F, H, W) float16 in [0, 1] and each frame's time in seconds),
        computed per window by :meth:`saliency` on the window's generated latents. Inputs are written one by one
        as they are done: one that cannot be read is in the report's ``refused``, one whose generation or writing
        fails is in ``failed`` with the reason, and the others are written.

        Raises:
            ConfigError: a bad ``sample.*`` value or one this system does not use (:meth:`sample_options`; before any
                input is read), or no input.
            FileExistsError: an output exists and ``overwrite`` is false (checked before generating).
        """
        options = self.sample_options(unused, n=n, prompt=prompt, seed=seed, device=device, overwrite=overwrite,
                                      video=video, one_prompt="VTA-LDM takes one caption for every input (the text "
                                                              "condition); data clips use their own captions when it "
                                                              "is unset")
        settings = self.sampling.updated("sample", steps=steps, guidance=guidance, guidance_text=guidance_text,
                                         negative_prompt=negative_prompt, sampler=sampler,
                                         batch_size=batch_size)  # checked before any input is read
        prompt, seed, overwrite = options.prompt, options.seed, options.overwrite
        if saliency not in (None, True, False):
            raise ConfigError(f"sample.saliency={saliency!r}: expected true (write saliency maps of the input frames) "
                              f"or false")
        if saliency and self.encoder is None:
            raise ConfigError(f"sample.saliency=true: model.conditions={list(self.conditions)} has no video "
                              f"condition, so no frame reaches the model; saliency maps need video")
        out_dir = Path(out_dir)
        with tempfile.TemporaryDirectory(prefix="avgen-vta-inputs-") as scratch:
            data_root = ((self.run_config or {}).get("data") or {}).get("root")
            inputs, refused = read_video_inputs(video, options.n, Path(scratch), self.clip, data_root)
            for entry in refused:
                log.warning("input %s refused: %s", entry["file"], entry["reason"])
            report = SampleReport(refused=refused)
            if not inputs:
                return report
            refuse_existing_dubs(inputs, out_dir, overwrite,
                                 (lambda item: saliency_paths(out_dir, item.stem)) if saliency else None)
            self.to_sampling_device(options.device)
            out_dir.mkdir(parents=True, exist_ok=True)
            first_window = 0
            with self.ema_weights():
                for item in inputs:
                    caption = item.caption if prompt is None else prompt
                    generation = {**settings.to_dict(), "seed": seed + first_window, "windows": len(item.windows)}
                    try:
                        wave, maps = self._dub_audio(item, settings, seed + first_window, caption, bool(saliency))
                    except (RuntimeError, ValueError, MediaError) as exc:  # e.g. out of memory: the next input runs
                        reason = " ".join(str(exc).split())[:500]
                        log.warning("%s not generated: %s", item.stem, reason)
                        report.failed.append({"sample": item.stem, "reason": reason})
                    else:
                        written = write_dubbed(out_dir, item, wave, self.clip.sample_rate, caption, generation,
                                               overwrite)
                        if saliency and written.written:
                            frames, values, times = (np.concatenate(part) for part in zip(*maps))
                            try:
                                write_saliency(out_dir / item.stem, frames, values, times, overwrite=overwrite)
                            except OSError as exc:  # the dubbed video stays; the maps are reported missing
                                reason = f"saliency maps not written: {' '.join(str(exc).split())}"
                                log.warning("%s %s", item.stem, reason)
                                report.failed.append({"sample": item.stem, "reason": reason})
                        report.extend(written)
                    first_window += len(item.windows)
        report.written.sort()
        count = len(report.written)
        print(f"wrote {count} dubbed video{'' if count == 1 else 's'} to {out_dir}")
        return report

    def _dub_audio(self, item: VideoInput, settings: VTALDMSampling, seed: int, caption: str,
                   saliency: bool = False) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """The audio (S,) float32 of one input: its windows generated ``settings.batch_size`` at a time
        (window j from noise ``seed + j``), joined by the equal-power crossfade; with ``saliency``, per window its
        frames (F, 3, H, W) uint8, maps (F, H, W) float32 (:meth:`saliency`, noise seeded ``seed + j``) and the
        frames' times (F,) in seconds from the input's start (else an empty list)."""
        chunks: list[np.ndarray] = []
        maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for first in range(0, len(item.windows), settings.batch_size):
            group = item.windows[first:first + settings.batch_size]
            frames = [item.window_frames(start, end, self.clip) for start, end in group]
            lengths = [len(f) for f in frames]
            h, w = frames[0].shape[1:3]
            video = torch.zeros(len(group), max(lengths), 3, h, w)
            for j, f in enumerate(frames):
                video[j, :len(f)] = uint8_to_unit_range(f)
            generated = self.generate(video, lengths=lengths, captions=[caption] * len(group), steps=settings.steps,
                                      guidance=settings.guidance, guidance_text=settings.guidance_text,
                                      negative_prompt=settings.negative_prompt, sampler=settings.sampler,
                                      seed=seed + first, return_latents=saliency)
            audio = generated[0] if saliency else generated
            chunks += [audio[j, :end - start].cpu().numpy() for j, (start, end) in enumerate(group)]
            if saliency:
                clips = [torch.as_tensor(f).permute(0, 3, 1, 2) for f in frames]
                values = self.saliency(clips, generated[1], [caption] * len(group), seed=seed + first)
                for j, (start, _) in enumerate(group):
                    times = start / self.clip.sample_rate + np.arange(lengths[j]) / float(self.clip.fps)
                    maps.append((clips[j].numpy(), values[j].numpy(), times))
        return equal_power_crossfade(chunks, [start for start, _ in item.windows], item.num_samples), maps

# ------------------------------------------------------------------------------ parts
def saliency_paths(out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.saliency.png`` and ``<stem>.saliency.npz`` in ``out_dir``
    (:func:`avgen.systems.saliency.write_saliency`)."""
    return [out_dir / f"{stem}.saliency.png", out_dir / f"{stem}.saliency.npz"]


STEP_SEED_OFFSET = 1_000_003  # keeps a clip's step noise apart from the initial noise of another clip


def step_generators(batch: int, seed: int) -> list[torch.Generator]:
    """One CPU generator per clip for a stochastic sampler's step noise: clip i's is seeded with
    ``seed + i + STEP_SEED_OFFSET`` (diffusers' ``randn_tensor`` draws sample i from generator i)."""
    return [torch.Generator().manual_seed(seed + i + STEP_SEED_OFFSET) for i in range(batch)]


def step_options(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """``generator=`` for a scheduler whose ``step`` draws noise (as diffusers' pipelines pass it), else nothing."""
    return {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}


RELEASED_UNET = "unet."
RELEASED_PROJECTION = "vid_fea_extractor.linear_layer."
RELEASED_FROZEN = ("vid_fea_extractor.clip_vision.", "vid_fea_extractor.clip_text.")


def load_released_into(path: str | Path, unet: nn.Module, projection: nn.Module) -> None:
    """Load :func:`load_released`'s U-Net and φ weights (strict: every key, every shape).

    Raises:
        ReleasedCheckpointError: the file's U-Net or φ does not match ``model.unet.*`` / the encoder width.
    """
    unet_state, projection_state = load_released(path)
    for name, module, state, key in (("U-Net", unet, unet_state, "model.unet.*"),
                                     ("projection φ", projection, projection_state, "the encoder and model.unet")):
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise ReleasedCheckpointError(f"{path} (model.released): its {name} does not fit the one {key} builds "
                                          f"(use experiment=vta_ldm_public): {first}") from exc


class ReleasedCheckpointError(WeightsFileError):
    """The released VTA-LDM file does not hold what its layout promises."""


def load_released(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The U-Net and φ state dicts of the authors' released checkpoint (``ariesssxu/vta-ldm-clip4clip-v-large``,
    ``pytorch_model_2.bin``: the state dict of their ``AudioDiffusion`` module, the file their
    ``inference_from_video.sh`` loads; the folder's other ``pytorch_model*.bin`` files are accelerate's saves of
    the other prepared modules), read with ``torch.load(weights_only=True)``.

    Keys ``unet.*`` → the U-Net, ``vid_fea_extractor.linear_layer.*`` → φ; the frozen CLIP towers
    (``vid_fea_extractor.clip_vision.*`` / ``clip_text.*``), when present, are skipped (avgen loads CLIP
    from ``model.encoder.path``).

    Raises:
        ConfigError: no file at ``path`` (config key ``model.released``).
        ReleasedCheckpointError: unreadable, missing the U-Net or φ, or holding other keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.released={path}: no such file; download pytorch_model_2.bin of "
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
            f"{other[:5]}" + ("; the model is the release's pytorch_model_2.bin (the file the authors' "
                              "inference_from_video.sh loads), not pytorch_model.bin" if not unet else ""))
    return unet, projection
