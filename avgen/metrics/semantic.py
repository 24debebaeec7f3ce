"""Text alignment scores: CLIPSIM (prompt ↔ video frames) and CLAP score (prompt ↔ audio).

Both are the mean over clips of a cosine similarity between L2-normalised embeddings of a pretrained
two-tower model:

- CLIPSIM (Wu et al. 2021, GODIVA; used by CogVideo and the text-to-video literature that follows):
  per clip, the mean over its frames of cos(CLIP image embedding of the frame, CLIP text embedding of
  the prompt). The default model is ``openai/clip-vit-base-patch32`` (ViT-B/32), the model of
  GODIVA's and CogVideo's CLIPSIM; ViT-L/14 gives different, not comparable, numbers.
- CLAP score: per clip, cos(CLAP audio embedding, CLAP text embedding of the prompt), with
  ``laion/clap-htsat-unfused`` (HTSAT audio tower, RoBERTa text tower, 48 kHz input).
- LAION-CLAP score (:class:`LaionCLAPScore`): av-benchmark's column, LAION's own
  ``music_speech_audioset_epoch_15_esc_89.98.pt`` with the harness's input rule (:mod:`avgen.encoders.laion_clap`).

Scale: both report the raw cosine in [-1, 1]. Papers that print CLIPSIM as e.g. 30.1 multiply by 100;
divide their numbers by 100 before comparing.

Weights are never downloaded: :func:`load_pretrained` reads a local folder or the local Hugging Face
hub cache only and stops with :class:`PretrainedModelMissing` otherwise. The SHA-256 of the folder's
config and weight files goes into :meth:`describe` (and so into ``metrics.json``).

States are the sum of per-clip scores and the clip count, float64 with ``dist_reduce_fx="sum"``, so
the value does not depend on how clips are split across DDP ranks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

# PretrainedModelMissing is re-exported: callers of the metrics catch it from here.
from avgen.backbones.loader import PretrainedModelMissing, load_pretrained  # noqa: F401
from avgen.encoders.base import FeatureExtractor, unit_range_clips
from avgen.errors import ConfigError
from avgen.metrics.cosine import MeanCosine
from avgen.pretrained import sha256_file

# The metric models' entries of the config key → original hub id registry.

# OpenAI CLIP's image normalisation (CLIPImageProcessor's image_mean / image_std for every OpenAI CLIP).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Files whose bytes decide the embeddings; their hashes are recorded.
_HASHED_SUFFIXES = (".safetensors", ".bin")
_HASHED_NAMES = ("config.json", "preprocessor_config.json")


def local_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The folder holding ``name_or_path``'s files: itself, or its snapshot in the local hub cache."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:  # not a cached repo id: nothing to hash
        return None


def folder_hashes(folder: str | os.PathLike | None) -> dict[str, str]:
    """``{file name: sha256}`` of the config and weight files (``*.safetensors``, ``*.bin``) in ``folder``."""
    if folder is None:
        return {}
    files = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and (p.name in _HASHED_NAMES or p.name.endswith(_HASHED_SUFFIXES)))
    return {p.name: sha256_file(p) for p in files}


def _pooled(out: Any) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class _TextAlignment(MeanCosine):
    """A :class:`MeanCosine` against a prompt's embedding from the model's text tower."""

    _position_offset = 0  # position ids the text tower reserves (RoBERTa: padding_idx + 1 = 2)

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name_or_path: str | None = None, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path if name_or_path is not None else getattr(model, "name_or_path", None)
        # Hand-made or old tokenizers may not know the text tower's length; prompts are cut to it.
        positions = int(model.config.text_config.max_position_embeddings)
        self.max_text_length = min(int(getattr(tokenizer, "model_max_length", positions)),
                                   positions - self._position_offset)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (B, D) float32."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{type(self).__name__}.update expects texts as a list of strings, one per clip")
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_length,
                                return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return F.normalize(_pooled(self.model.get_text_features(**tokens)).float(), dim=-1)

    def _describe(self, **config: Any) -> dict[str, Any]:
        folder = None if self.name_or_path is None else local_folder(self.name_or_path)
        return {"name": self.name, "model": None if self.name_or_path is None else str(self.name_or_path),
                "sha256": folder_hashes(folder), "scale": "raw cosine", "config": config}


class CLIPSim(_TextAlignment):
    """CLIPSIM: mean over clips of the mean over frames of cos(CLIP(frame), CLIP(prompt)).

    Frames are preprocessed in torch the way CLIPImageProcessor does, without PIL: values to [0, 1],
    bicubic resize (antialiased) of the shorter side to the model's ``image_size``, centre crop to
    ``image_size``², clamp to [0, 1], then ``(x − mean) / std``. CLIPImageProcessor resizes uint8
    images with PIL, so pixels differ from it by resampling rounding (well under 1/255 on average).

    Args:
        model: a ``transformers.CLIPModel`` (``get_image_features`` / ``get_text_features``).
        tokenizer: its tokenizer (``CLIPTokenizer``); prompts longer than the text tower are truncated.
        image_mean, image_std: normalisation, OpenAI CLIP's by default.
        frame_batch: frames per forward pass of the image tower (memory only; the score is the same).
        name_or_path: where the model came from, for :meth:`describe`.
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "clipsim"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD, frame_batch: int = 64, name_or_path: str | None = None,
                 **kwargs: Any):
        super().__init__(model, tokenizer, name_or_path, **kwargs)
        self.image_size = int(model.config.vision_config.image_size)
        self.frame_batch = int(frame_batch)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None, config_key: str = "evaluate.clipsim.model",
                        **kwargs: Any) -> CLIPSim:
        """CLIPModel and tokenizer from a local folder or the local hub cache (see :func:`load_pretrained`)."""
        from transformers import AutoTokenizer, CLIPModel

        model = load_pretrained(CLIPModel, name_or_path, config_key)
        tokenizer = load_pretrained(AutoTokenizer, name_or_path, config_key)
        return cls(model, tokenizer, name_or_path=str(name_or_path), **kwargs)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, 3, H, W) float in [0, 1] → CLIP pixel values (N, 3, S, S), S = ``image_size``."""
        h, w = frames.shape[-2:]
        s = self.image_size
        scale = s / min(h, w)
        size = (max(s, round(h * scale)), max(s, round(w * scale)))
        x = F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[..., top:top + s, left:left + s].clamp(0, 1)
        return (x - self.image_mean) / self.image_std

    def _clips(self, frames: torch.Tensor | Sequence[Any]) -> list[torch.Tensor]:
        """Each clip as (F, 3, H, W) float32 in [0, 1] on the metric's device."""
        return unit_range_clips(frames, self.device, "CLIPSim.update")

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP pixel values (N, 3, S, S) → L2-normalised image embeddings (N, D) float32."""
        embs = [_pooled(self.model.get_image_features(pixel_values=chunk)).float()
                for chunk in pixels.split(self.frame_batch)]
        return F.normalize(torch.cat(embs), dim=-1)

    def clip_scores(self, frames: torch.Tensor | Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """Per-clip CLIPSIM (B,) float64; same inputs as :meth:`update`."""
        clips = self._clips(frames)
        if len(clips) != len(texts):
            raise ValueError(f"CLIPSim.update got {len(clips)} clips and {len(texts)} prompts; "
                             f"give one prompt per clip")
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            images = self.image_embeddings(torch.cat([self.preprocess(clip) for clip in clips]))
            text = self.text_embeddings(texts)
        per_frame = images.double() @ text.double().T  # (ΣF, B): frame i against every prompt
        scores, start = [], 0
        for b, clip in enumerate(clips):
            scores.append(per_frame[start:start + clip.shape[0], b].mean())
            start += clip.shape[0]
        return torch.stack(scores)

    def update(self, frames: torch.Tensor | Sequence[Any], texts: Sequence[str]) -> None:
        """Add a batch: ``frames`` (B, F, 3, H, W) float in [-1, 1], or a list of B clips (F, H, W, 3)
        uint8 (F, H and W may differ between clips); ``texts`` one prompt per clip."""
        self.add_scores(self.clip_scores(frames, texts))

    def describe(self) -> dict[str, Any]:
        """Model, file hashes, scale and preprocessing, for ``metrics.json``."""
        return self._describe(image_size=self.image_size, image_mean=self.image_mean.flatten().tolist(),
                              image_std=self.image_std.flatten().tolist(), resize="bicubic shorter side + centre crop")


class CLAPScore(_TextAlignment):
    """CLAP score: mean over clips of cos(CLAP(audio), CLAP(prompt)).

    Audio at ``sample_rate`` is resampled with ``torchaudio.functional.resample`` (windowed sinc, its
    defaults) to the feature extractor's rate (48 kHz for LAION CLAP) and turned into log-mel
    features by the ``ClapFeatureExtractor``. Clips longer than its ``max_length_s`` (10 s) are cut to
    their first ``max_length_s`` seconds here unless the extractor fuses crops (``truncation="fusion"``),
    because its ``"rand_trunc"`` would crop at a random position and make the score random.

    Args:
        model: a ``transformers.ClapModel`` (``get_audio_features`` / ``get_text_features``).
        tokenizer: its tokenizer (RoBERTa).
        feature_extractor: its ``ClapFeatureExtractor``.
        sample_rate: rate of the audio given to :meth:`update` (``data.clip.sample_rate``).
        name_or_path: where the model came from, for :meth:`describe`.
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "clap"
    _position_offset = 2

    def __init__(self, model: torch.nn.Module, tokenizer: Any, feature_extractor: Any, sample_rate: int = 16_000,
                 name_or_path: str | None = None, **kwargs: Any):
        super().__init__(model, tokenizer, name_or_path, **kwargs)
        self.feature_extractor = feature_extractor
        self.sample_rate = int(sample_rate)
        self.model_rate = int(feature_extractor.sampling_rate)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None, config_key: str = "evaluate.clap.model",
                        **kwargs: Any) -> CLAPScore:
        """ClapModel, tokenizer and feature extractor from a local folder or the local hub cache."""
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        model = load_pretrained(ClapModel, name_or_path, config_key)
        tokenizer = load_pretrained(AutoTokenizer, name_or_path, config_key)
        feature_extractor = load_pretrained(ClapFeatureExtractor, name_or_path, config_key)
        return cls(model, tokenizer, feature_extractor, name_or_path=str(name_or_path), **kwargs)

    def _waveforms(self, audio: torch.Tensor | Sequence[Any]) -> list[np.ndarray]:
        """Each clip resampled to the model's rate and cut as described, as float32 numpy (S',)."""
        clips = list(audio.unbind(0)) if isinstance(audio, torch.Tensor) and audio.ndim == 2 else list(audio)
        out = []
        for clip in clips:
            wav = torch.as_tensor(clip, dtype=torch.float32).cpu()
            if wav.ndim != 1:
                raise ValueError(f"CLAPScore.update expects audio (B, S) or a list of (S,) mono waveforms at "
                                 f"{self.sample_rate} Hz, got a clip of shape {tuple(wav.shape)}")
            if self.sample_rate != self.model_rate:
                wav = torchaudio.functional.resample(wav, self.sample_rate, self.model_rate)
            limit = int(self.feature_extractor.nb_max_samples)
            if self.feature_extractor.truncation != "fusion" and wav.shape[0] > limit:
                wav = wav[:limit]
            out.append(wav.numpy())
        return out

    def audio_embeddings(self, audio: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """L2-normalised CLAP audio embeddings (B, D) float32; same inputs as :meth:`update`."""
        feats = self.feature_extractor(self._waveforms(audio), sampling_rate=self.model_rate, return_tensors="pt")
        feats = {k: v.to(self.device) for k, v in feats.items()}
        return F.normalize(_pooled(self.model.get_audio_features(**feats)).float(), dim=-1)

    def clip_scores(self, audio: torch.Tensor | Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """Per-clip CLAP score (B,) float64; same inputs as :meth:`update`."""
        n = audio.shape[0] if isinstance(audio, torch.Tensor) else len(audio)
        if n != len(texts):
            raise ValueError(f"CLAPScore.update got {n} clips and {len(texts)} prompts; give one prompt per clip")
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sound = self.audio_embeddings(audio)
            text = self.text_embeddings(texts)
        return (sound.double() * text.double()).sum(-1)

    def update(self, audio: torch.Tensor | Sequence[Any], texts: Sequence[str]) -> None:
        """Add a batch: ``audio`` (B, S) float at ``sample_rate`` (or a list of (S,)); one prompt per clip."""
        self.add_scores(self.clip_scores(audio, texts))

    def describe(self) -> dict[str, Any]:
        """Model, file hashes, scale and audio settings, for ``metrics.json``."""
        fe = self.feature_extractor
        return self._describe(input_rate=self.sample_rate, model_rate=self.model_rate,
                              resampler="torchaudio.functional.resample (sinc, defaults)",
                              max_length_s=fe.max_length_s, truncation=fe.truncation, padding=fe.padding)


class ClapEmbedding(FeatureExtractor):
    """CLAP audio embeddings as a Fréchet-distance feature (FAD with CLAP, as fadtk's ``clap-laion-audio``):
    audio (B, S) at :attr:`sample_rate` → L2-normalised embeddings (B, D), one per clip, computed exactly
    as :class:`CLAPScore` computes them (first ``max_length_s`` seconds, the feature extractor's padding).

    Args:
        clap: a loaded :class:`CLAPScore`; its model, feature extractor and folder hashes are used.
    """

    name = "clap_audio_embedding"

    def __init__(self, clap: CLAPScore):
        super().__init__()
        self.clap = clap
        self.num_features = int(clap.model.config.projection_dim)
        folder = None if clap.name_or_path is None else local_folder(clap.name_or_path)
        self.weights = {name: (str(folder / name), sha) for name, sha in folder_hashes(folder).items()}
        self._freeze()

    @property
    def sample_rate(self) -> int:
        """The rate audio must have: the CLAP feature extractor's (48 kHz for LAION CLAP), so it is resampled once."""
        return self.clap.model_rate

    def config(self) -> dict[str, Any]:
        fe = self.clap.feature_extractor
        return {"model": self.clap.name_or_path, "sample_rate": self.clap.model_rate, "max_length_s": fe.max_length_s,
                "truncation": fe.truncation, "padding": fe.padding, "normalised": True}

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        self.clap.sample_rate = self.clap.model_rate
        with torch.autocast(device_type=audio.device.type, enabled=False):
            return self.clap.audio_embeddings(audio)


class LaionCLAPScore(MeanCosine):
    """av-benchmark's ``LAION-CLAP-Score`` (``av_bench/evaluate.py:193-198@050a5cd``): mean over clips of
    cos(LAION-CLAP audio embedding, LAION-CLAP caption embedding), raw (not ×100), with
    ``music_speech_audioset_epoch_15_esc_89.98.pt`` read into ``ClapModel`` (:mod:`avgen.encoders.laion_clap`).

    Each clip goes in as the harness feeds it (:func:`~avgen.encoders.laion_clap.laion_clap_input`: mono, DC removed,
    48 kHz, cut to ``seconds``, repeat-padded to 10 s, float32); captions are tokenised as laion_clap does (77 tokens,
    padded to the maximum length). Unlike :class:`CLAPScore`, the log-mel front end is the checkpoint's own (HTSAT's
    slaney mel 50–14 000 Hz), not ``ClapFeatureExtractor``'s.

    Args:
        clap: a loaded :class:`~avgen.encoders.laion_clap.LaionClap`.
        seconds: the harness's ``audio_length`` (MMAudio evaluates with 8); ``None``: no cut (clips over 10 s are
            then refused, as the harness never feeds them).
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "clap_laion"

    def __init__(self, clap: torch.nn.Module, seconds: float | None = 8.0, **kwargs: Any):
        super().__init__(clap, **kwargs)
        self.seconds = seconds

    def clip_scores(self, audio: Sequence[Any], texts: Sequence[str], sample_rate: int) -> torch.Tensor:
        """Per-clip scores (B,) float64 of B clips (each (S,) or (C, S) float at ``sample_rate`` Hz; lengths may
        differ) against one caption each.

        Raises:
            ValueError: not one caption per clip, or a clip the input rule refuses (empty, non-finite, > 10 s).
        """
        from avgen.encoders.laion_clap import laion_clap_input

        if len(audio) != len(texts):
            raise ValueError(f"LaionCLAPScore got {len(audio)} clips and {len(texts)} captions; give one per clip")
        waves = torch.stack([laion_clap_input(clip, sample_rate, self.seconds) for clip in audio]).to(self.device)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sound = self.model.audio_embeddings(waves)
            text = self.model.text_embeddings(texts)
        return (sound.double() * text.double()).sum(-1)

    def update(self, audio: Sequence[Any], texts: Sequence[str], sample_rate: int) -> None:
        """Add B clips and their captions (see :meth:`clip_scores`)."""
        self.add_scores(self.clip_scores(audio, texts, sample_rate))

    def describe(self) -> dict[str, Any]:
        """The protocol, the model file and tokenizer hashes, the sample rate, the length rule and the scaling, for
        ``metrics.json``."""
        from avgen.encoders import laion_clap as lc

        seconds = self.seconds if self.seconds is not None else float("inf")
        return {**self.model.describe(), "protocol": lc.PROTOCOL, "harness_key": lc.HARNESS_KEY,
                "sample_rate": lc.SAMPLE_RATE, "seconds": self.seconds,
                "length_rule": lc.LENGTH_RULE.format(seconds=seconds),
                "resampler": "torchaudio.transforms.Resample (sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99)",
                "scaling": 1, "scale": "raw cosine"}


class MsCLAPScore(MeanCosine):
    """av-benchmark's ``MS-CLAP-Score`` (``av_bench/evaluate.py:200-203@050a5cd``): mean over clips of
    cos(MS-CLAP audio embedding, MS-CLAP caption embedding), raw (not ×100), with ``CLAP_weights_2023.pth``
    (:mod:`avgen.encoders.ms_clap`).

    Each clip goes in as msclap reads its file (:func:`~avgen.encoders.ms_clap.ms_clap_input`: channels resampled to
    44.1 kHz and concatenated, repeated or cropped to 7 s; the crop seeded by ``seed`` and the clip's stem, or the
    first 7 s with ``crop='start'``); captions are tokenised and pooled as msclap does (GPT-2, ``!`` padding, the
    ``(ids != 0).sum() − 1`` index).

    Args:
        clap: a loaded :class:`~avgen.encoders.ms_clap.MsClap`.
        seed: seeds the 7-s crop of clips longer than 7 s (with the stem).
        crop: ``random`` (seeded, the harness's distribution) or ``start``.
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "clap_ms"

    def __init__(self, clap: torch.nn.Module, seed: int = 0, crop: str = "random", **kwargs: Any):
        from avgen.encoders.ms_clap import CROPS

        super().__init__(clap, **kwargs)
        if crop not in CROPS:
            raise ConfigError(f"evaluate.clap_ms.crop={crop!r}: expected one of {CROPS}")
        self.seed, self.crop = int(seed), crop

    def clip_scores(self, audio: Sequence[Any], texts: Sequence[str], sample_rate: int,
                    stems: Sequence[str]) -> torch.Tensor:
        """Per-clip scores (B,) float64 of B clips (each (S,) or (C, S) float at ``sample_rate`` Hz, channels-first;
        lengths may differ) against one caption each; ``stems`` seed the crops.

        Raises:
            ValueError: not one caption and one stem per clip, or a clip the input rule refuses (empty, non-finite).
        """
        from avgen.encoders.ms_clap import ms_clap_input

        if not len(audio) == len(texts) == len(stems):
            raise ValueError(f"MsCLAPScore got {len(audio)} clips, {len(texts)} captions and {len(stems)} stems; give "
                             f"one caption and one stem per clip")
        waves = torch.stack([ms_clap_input(clip, sample_rate, stem, self.seed, self.crop)
                             for clip, stem in zip(audio, stems)]).to(self.device)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sound = self.model.audio_embeddings(waves)
            text = self.model.text_embeddings(texts)
        return F.cosine_similarity(sound.double(), text.double(), dim=-1)

    def update(self, audio: Sequence[Any], texts: Sequence[str], sample_rate: int, stems: Sequence[str]) -> None:
        """Add B clips, their captions and stems (see :meth:`clip_scores`)."""
        self.add_scores(self.clip_scores(audio, texts, sample_rate, stems))

    def describe(self) -> dict[str, Any]:
        """The protocol, the model file and tokenizer hashes, the sample rate, the length and crop rules and the
        scaling, for ``metrics.json``."""
        from avgen.encoders import ms_clap as ms
        from avgen.encoders.audio_input import RESAMPLER

        return {**self.model.describe(), "protocol": ms.PROTOCOL, "harness_key": ms.HARNESS_KEY,
                "sample_rate": ms.SAMPLE_RATE, "seconds": ms.SECONDS, "seed": self.seed, "crop": self.crop,
                "length_rule": ms.LENGTH_RULE.format(crop=ms.CROP_RULE[self.crop].format(seed=self.seed)),
                "resampler": RESAMPLER, "scaling": 1, "scale": "raw cosine"}
