"""Reconstruction metrics of the codecs (the VAEs and the vocoder): how much of a clip survives a round trip.

Used by ``python -m avgen pretrain-twins part=codecs`` to measure the mini twins on held-out clips
(:mod:`avgen.pretraining`), and usable on any codec:

* :func:`frame_psnr` — peak signal-to-noise ratio of decoded frames, per frame in dB over the 8-bit range
  (torchmetrics' ``peak_signal_noise_ratio`` with ``data_range=255``), the measure image VAEs report.
* :func:`log_spectral_distance` — LSD between two waveforms (Gray & Markel 1976; the form of NU-Wave /
  AudioSR's evaluation): per STFT frame the RMS over frequency bins of the difference of log10 power spectra,
  then the mean over frames.
* :func:`onset_f1` — F-measure of detected onsets against ground-truth event times, with mir_eval's one-to-one
  matching within a tolerance (``mir_eval.util.match_events``, the matching of ``mir_eval.onset.f_measure``),
  the counts pooled over clips (micro average). Onsets are detected as avgen's onset metric detects them
  (:func:`avgen.metrics.onset.detect_onsets`: librosa's ``onset_detect`` at 22,050 Hz, ``delta`` 0.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from avgen.metrics.onset import OnsetConfig, detect_onsets, prepare_audio


def frame_psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each frame: ``10 log10(255² / MSE)`` over its pixels and channels.

    Args:
        reference, estimate: uint8 frames ``(N, 3, H, W)`` (or float in [0, 255]), the same shape.

    Returns:
        float32 ``(N,)``; ``inf`` for a frame reproduced exactly.

    Raises:
        ValueError: the shapes differ or are not ``(N, C, H, W)``.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if reference.shape != estimate.shape or reference.ndim != 4:
        raise ValueError(f"frame_psnr expects two (N, C, H, W) tensors of one shape, got {tuple(reference.shape)} "
                         f"and {tuple(estimate.shape)}")
    return peak_signal_noise_ratio(estimate.double(), reference.double(), data_range=255.0, reduction="none",
                                   dim=(1, 2, 3)).float()


def log_spectral_distance(reference: torch.Tensor, estimate: torch.Tensor, n_fft: int = 2048, hop_length: int = 512,
                          eps: float = 1e-10) -> torch.Tensor:
    """Log-spectral distance per clip: ``mean_t sqrt(mean_f (log10 |X(t,f)|² − log10 |X̂(t,f)|²)²)``.

    STFT with a Hann window of ``n_fft`` samples, ``hop_length`` hop, centred frames (torch.stft's default);
    ``eps`` is added to each power before the log (silence against silence counts 0).

    Args:
        reference, estimate: waveforms ``(B, S)`` float at one sample rate, the same shape.

    Returns:
        float32 ``(B,)`` in log10 units (bels; 0 for identical audio).

    Raises:
        ValueError: the shapes differ or are not ``(B, S)``.
    """
    if reference.shape != estimate.shape or reference.ndim != 2:
        raise ValueError(f"log_spectral_distance expects two (B, S) waveforms of one shape, got "
                         f"{tuple(reference.shape)} and {tuple(estimate.shape)}")
    window = torch.hann_window(n_fft, dtype=torch.float64)

    def log_power(x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x.double(), n_fft, hop_length, window=window, return_complex=True)
        return torch.log10(spec.abs() ** 2 + eps)  # (B, F, T)

    diff = log_power(reference) - log_power(estimate)
    return diff.pow(2).mean(dim=1).sqrt().mean(dim=1).float()


@dataclass(frozen=True)
class OnsetF1:
    """Pooled onset detection scores: ``f1``, ``precision`` (NaN without any onset), ``recall`` (NaN without any
    event; ``f1`` is NaN only when there are neither), the counts ``matched``, ``events`` and ``onsets``, and the
    tolerance ``window`` (seconds). (mir_eval's ``f_measure`` returns 0 where these are NaN.)"""

    f1: float
    precision: float
    recall: float
    matched: int
    events: int
    onsets: int
    window: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}f1": self.f1, f"{prefix}precision": self.precision, f"{prefix}recall": self.recall,
                f"{prefix}matched": float(self.matched), f"{prefix}events": float(self.events),
                f"{prefix}onsets": float(self.onsets)}


def matched_onsets(events: Sequence[float], onsets: Sequence[float], window: float) -> int:
    """Size of the largest one-to-one matching of ``onsets`` to ``events`` (both in seconds) with
    ``|onset − event| <= window``: ``mir_eval.util.match_events`` (Hopcroft-Karp), as ``mir_eval.onset.f_measure``."""
    import mir_eval

    if len(events) == 0 or len(onsets) == 0:
        return 0
    return len(mir_eval.util.match_events(np.asarray(events, float), np.asarray(onsets, float), window))


def clip_onsets(audio: np.ndarray | torch.Tensor, sample_rate: int, cfg: OnsetConfig = OnsetConfig(seconds=None)
                ) -> np.ndarray:
    """Onset times (seconds, float64, sorted) of one waveform ``(S,)`` at ``sample_rate`` Hz, detected as
    :func:`avgen.metrics.onset.detect_onsets` does (librosa at ``cfg.sample_rate``, threshold ``cfg.delta``)."""
    y = prepare_audio(np.asarray(audio, dtype=np.float32), sample_rate, cfg)
    return detect_onsets(y, cfg).astype(np.float64) / cfg.sample_rate


#: envelope peak / envelope median above which a clip counts as having an impact (:func:`impact_contrast`): the
#: synthetic clips' 1-s windows measure a median of 21 (87 % above 4), their mel-VAE + vocoder round trips 8 (81 %
#: above 4), stationary noise about 1.5
IMPACT_CONTRAST = 4.0


def impact_contrast(audio: np.ndarray | torch.Tensor, sample_rate: int, window_seconds: float = 0.025) -> float:
    """How much a waveform's loudest moment stands above its floor: the amplitude envelope (max |x| over
    consecutive windows of ``window_seconds``; a partial last window dropped) peak divided by its median.

    An impact (a transient over a quiet floor) gives a large value, stationary noise about 1–2 however loud, so it
    tells sampled audio with impacts from noise that an onset detector still finds onsets in. Silence (a zero
    median) gives ``inf`` when anything is louder, 1.0 when nothing is.

    Args:
        audio: one waveform ``(S,)``, float.
        sample_rate: Hz.
        window_seconds: the envelope's window (seconds; 25 ms = 400 samples at 16 kHz).

    Raises:
        ValueError: ``audio`` is not 1-D or shorter than one window, or ``window_seconds`` ≤ 0.
    """
    x = np.abs(np.asarray(audio, dtype=np.float64))
    if window_seconds <= 0:
        raise ValueError(f"window_seconds={window_seconds}: expected > 0")
    hop = max(1, int(round(window_seconds * sample_rate)))
    if x.ndim != 1 or len(x) < hop:
        raise ValueError(f"expected one waveform (S,) of at least {hop} samples; got shape {x.shape}")
    envelope = x[:len(x) // hop * hop].reshape(-1, hop).max(axis=1)
    peak, floor = float(envelope.max()), float(np.median(envelope))
    if floor == 0.0:
        return 1.0 if peak == 0.0 else float("inf")
    return peak / floor


def onset_f1(events: Sequence[Sequence[float]], onsets: Sequence[Sequence[float]], window: float) -> OnsetF1:
    """Onset F-measure pooled over clips: matches (:func:`matched_onsets`, tolerance ``window`` seconds) summed
    over clips, precision = matched / onsets, recall = matched / events, F1 their harmonic mean (0 when both are
    0 but there were events or onsets).

    Args:
        events: per clip, the ground-truth event times (seconds).
        onsets: per clip, the detected onset times (seconds).
        window: the tolerance, seconds (> 0).

    Raises:
        ValueError: the lists differ in length, or ``window`` <= 0.
    """
    if len(events) != len(onsets):
        raise ValueError(f"onset_f1: {len(events)} clips of events but {len(onsets)} of onsets")
    if not window > 0:
        raise ValueError(f"onset_f1: window={window!r}, expected a positive tolerance in seconds")
    matched = sum(matched_onsets(e, o, window) for e, o in zip(events, onsets))
    n_events, n_onsets = sum(len(e) for e in events), sum(len(o) for o in onsets)
    precision = matched / n_onsets if n_onsets else float("nan")
    recall = matched / n_events if n_events else float("nan")
    if n_events == 0 and n_onsets == 0:
        f1 = float("nan")
    else:
        f1 = 2 * matched / (n_events + n_onsets)
    return OnsetF1(f1=f1, precision=precision, recall=recall, matched=matched, events=n_events, onsets=n_onsets,
                   window=window)
