"""CAVP score: the mean cosine between CAVP's per-step audio and video embeddings (Diff-Foley's contrastive
audio-visual encoder, ``cavp_epoch66.ckpt``), the audio-video alignment column of VTA-LDM's Table 1 (``CAVP ↑``,
ground truth 0.813) and of the SVG baseline's evaluation (0.8232 on its Greatest Hits test clips).

Reproduced from Sony's ``py_scripts/evaluation/cavp_score.py`` (SonyResearch/SVG_baseline@e8ebd06; Diff-Foley ships
no such script), cited ``file:line`` in ``py_scripts/evaluation/``:

- length (``cavp_score.py:69-83``): ``d = int(duration)`` whole seconds from the clip's start, ``duration`` being
  moviepy's for the file (the container's, ``min`` of the same file's video and audio readers); a clip under 1 s is
  skipped (``:79-80``). Here: ``int`` of the longer of the decoded streams (video frames / fps, audio samples /
  rate), rounded to 1 ms first (:func:`score_seconds`); a clip under 1 s is a failure.
- video (``demo_util.py:37-64,130-179``, ``cavp_score.py:37-47,89-92``): the first ``d`` seconds re-encoded at 4 fps
  (FFmpeg's ``fps`` filter: ``4 d`` frames), each frame ``Resize((224, 224))`` (squash, PIL bilinear) and
  ``ToTensor`` ([0, 1], no mean/std), fed in chunks of 40 frames (``batch_size = 40  # Don't change it``), each chunk
  one clip for ``encode_video(normalize=True, pool=False)``: SlowOnly R3D-50 → ``video_project_head`` → L2 norm,
  one 512-d token per frame (:class:`~avgen.encoders.cavp_video.CAVPVideoEncoder`).
- audio (``cavp_score.py:67-73,85,94-100``, ``wav2spec.py:142-189``): the clip's own audio stream, mono at 16 kHz,
  zero-padded or cut to ``16000 d`` samples, its last sample dropped (``y[:length - 1]``); ``|librosa.stft|``
  (n_fft 1024, **hop 250**, centred, librosa 0.9.2's zero padding: ``requirements.txt``), slaney mel bank 128 bins
  125–7600 Hz, ``clip((20 log10(max(x, 1e-5)) − 20 + 100) / 100, 0, 1)``; then ``spec_encoder`` (CAVP's Cnn14, time
  pooled 16×) → ``spec_project_head`` (identity) → L2 norm: (64 d frames → 4 d steps) one token per 0.25 s, in step
  with the 4-fps video tokens.
- score (``cavp_score.py:102-110``): ``nn.CosineSimilarity(dim=1, eps=1e-6)`` between the video token and the audio
  token of each step, averaged over the steps; the reported number is the mean over clips.

Where avgen departs: the frames are decoded straight from the clip at 4 fps (the script re-encodes them with FFmpeg's
default H.264 encoder and reads that lossy copy with OpenCV); the audio is resampled from the decoded stream by
:data:`~avgen.encoders.audio_input.RESAMPLER` (the script writes it through moviepy as 44.1-kHz 16-bit PCM and resamples
with librosa 0.9.2's ``kaiser_best``, i.e. resampy); ``d`` comes from the decoded streams, not the container header;
cosines are taken in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avgen.metrics.cosine import MeanCosine

SOURCE = "SonyResearch/SVG_baseline@e8ebd06"
FPS = 4              # cavp_score.py:37 "CAVP default FPS=4, Don't change it."
CHUNK_FRAMES = 40    # cavp_score.py:38 batch_size: frames per encode_video call
SAMPLE_RATE = 16_000  # wav2spec.py:142
HOP_LENGTH = 250     # wav2spec.py:146 (Diff-Foley's own wav2spec: 256); 16000 / 250 / 16 = 4 steps per second
PAD_MODE = "constant"  # librosa 0.9.2's stft default (requirements.txt: librosa==0.9.2)
MIN_SECONDS = 1      # cavp_score.py:79-80


def score_seconds(video_seconds: float, audio_seconds: float) -> int:
    """``d``: whole seconds scored, ``int`` of the longer stream's duration rounded to 1 ms (moviepy's file duration
    is the container's, which covers both streams; the rounding keeps 3.9999 s of AAC-trimmed audio at 4)."""
    return int(round(max(float(video_seconds), float(audio_seconds)), 3))


def cavp_audio_input(audio: Any, sample_rate: int, seconds: int) -> Tensor:
    """The waveform ``get_spectrogram(path, 16000 · seconds)`` spectrograms (``wav2spec.py:170-184@e8ebd06``).

    Args:
        audio: (S,) mono, any float, at ``sample_rate`` Hz.
        sample_rate: its rate (Hz); resampled to 16 kHz with :data:`~avgen.encoders.audio_input.RESAMPLER`.
        seconds: ``d`` (:func:`score_seconds`).

    Returns:
        (16000 · seconds − 1,) float32: zero-padded or cut to 16000 · seconds samples, then the last one dropped.

    Raises:
        ValueError: not 1-D, empty or non-finite audio.
    """
    from avgen.encoders.audio_input import _resampler

    wave = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
    if wave.ndim != 1 or wave.numel() == 0 or not torch.isfinite(wave).all():
        raise ValueError(f"the CAVP score takes finite mono (S,) audio, got shape {tuple(wave.shape)}")
    if sample_rate != SAMPLE_RATE:
        wave = _resampler(int(sample_rate), SAMPLE_RATE)(wave)
    length = SAMPLE_RATE * int(seconds)
    wave = F.pad(wave, (0, max(0, length - wave.shape[0])))[:length]
    return wave[:length - 1]


def step_cosines(video_tokens: Tensor, audio_tokens: Tensor) -> Tensor:
    """Cosine of each step's video and audio token (``nn.CosineSimilarity(dim=1, eps=1e-6)``,
    ``cavp_score.py:102-103``).

    Args:
        video_tokens: (T, D), axis 0 time (one token per frame at 4 fps).
        audio_tokens: (T, D), axis 0 time (one token per 0.25 s).

    Returns:
        (T,) float64.

    Raises:
        ValueError: the two sequences differ in length (the script would stop on the shape mismatch).

    >>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); a = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    >>> [round(c, 6) for c in step_cosines(v, a).tolist()]
    [0.707107, -1.0]
    """
    if video_tokens.ndim != 2 or video_tokens.shape != audio_tokens.shape:
        raise ValueError(f"CAVP score: {tuple(video_tokens.shape)} video tokens and {tuple(audio_tokens.shape)} audio "
                         f"tokens; expected one of each per 0.25 s step")
    return F.cosine_similarity(video_tokens.double(), audio_tokens.double(), dim=1, eps=1e-6)


class CAVPScore(MeanCosine):
    """CAVP score over clips: per clip the mean over 0.25-s steps of cos(video token, audio token), then the mean over
    clips (module docstring). States are the score sum and the clip count (float64, summed across processes).

    Args:
        audio_model: CAVP's audio branch (:func:`~avgen.encoders.cavp.load_cavp`).
        video_encoder: CAVP's video branch (:func:`~avgen.encoders.cavp_video.load_cavp_video`) at 4 fps.
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "cavp"

    def __init__(self, audio_model: torch.nn.Module, video_encoder: torch.nn.Module, **kwargs: Any):
        from avgen.encoders.cavp import CAVPMelSpectrogram

        super().__init__(audio_model, **kwargs)
        self.video = video_encoder
        self.hold_frozen(video_encoder)
        self.spec = CAVPMelSpectrogram(hop_length=HOP_LENGTH, pad_mode=PAD_MODE)

    def audio_tokens(self, wave: Tensor) -> Tensor:
        """(T, D) unit-norm tokens of :func:`cavp_audio_input`'s waveform: spectrogram (hop 250, zero padding) →
        ``spec_encoder`` → ``spec_project_head`` → L2 norm (``cavp_score.py:94-100``), T = 4 · seconds."""
        spec = self.spec(wave.to(self.device)[None]).to(self.model.spec_encoder.fc1.weight.dtype)
        return F.normalize(self.model.spec_project_head(self.model.spec_encoder(spec))[0].float(), dim=-1)

    def video_tokens(self, frames: np.ndarray) -> Tensor:
        """(F, D) unit-norm tokens of (F, H, W, 3) uint8 frames at 4 fps, encoded in chunks of :data:`CHUNK_FRAMES`
        frames, each chunk a clip of its own (``demo_util.py:163-174``)."""
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        return torch.cat([self.video.encode([chunk]).embeds[0] for chunk in clip.split(CHUNK_FRAMES)])

    def clip_score(self, frames: np.ndarray, audio: Any, sample_rate: int, seconds: int) -> Tensor:
        """One clip's score, a 0-dim float64 tensor.

        Args:
            frames: (4 · seconds, H, W, 3) uint8, the clip's first ``seconds`` at 4 fps.
            audio: (S,) mono at ``sample_rate`` Hz.
            seconds: ``d`` (:func:`score_seconds`), at least 1.

        Raises:
            ValueError: ``seconds`` < 1, frames not 4 · seconds, or audio :func:`cavp_audio_input` refuses.
        """
        if seconds < MIN_SECONDS:
            raise ValueError(f"shorter than {MIN_SECONDS} s: the CAVP score skips it (cavp_score.py:79-80)")
        if len(frames) != FPS * seconds:
            raise ValueError(f"{len(frames)} frames at {FPS} fps for {seconds} s; expected {FPS * seconds}")
        wave = cavp_audio_input(audio, sample_rate, seconds)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            return step_cosines(self.video_tokens(frames).to(self.device), self.audio_tokens(wave)).mean()

    def update(self, frames: np.ndarray, audio: Any, sample_rate: int, seconds: int) -> None:
        """Add one clip (see :meth:`clip_score`)."""
        self.add_scores(self.clip_score(frames, audio, sample_rate, seconds)[None])

    def describe(self) -> dict[str, Any]:
        """The protocol, the model file's hash, the frame and audio rules, for ``metrics.json``."""
        from avgen.encoders.audio_input import RESAMPLER

        return {"protocol": f"CAVP score, {SOURCE} (py_scripts/evaluation/cavp_score.py:37-110, demo_util.py:130-179, "
                            f"wav2spec.py:142-189)",
                "fps": FPS, "chunk_frames": CHUNK_FRAMES, "image_size": self.video.image_size,
                "video": "the clip's video at 4 fps (FFmpeg fps-filter slots), first 4 d frames, Resize((224, 224)) "
                         "bilinear squash, [0, 1], encode_video(normalize=True, pool=False) in chunks of 40 frames",
                "audio": f"the clip's audio, mono, resampled to 16 kHz, zero-padded or cut to 16000 d samples, last "
                         f"sample dropped; mel 128 bins 125-7600 Hz, n_fft 1024, hop {HOP_LENGTH}, {PAD_MODE} padding; "
                         f"spec_encoder -> spec_project_head -> L2 norm",
                "length_rule": "d = int(duration) whole seconds from the start (the longer decoded stream, rounded to "
                               "1 ms); under 1 s: a failure", "resampler": RESAMPLER,
                "score": "mean over 0.25-s steps of cos(video token, audio token), then mean over clips; raw cosine"}
