"""Test utilities: motion peaks and sound onsets of a clip, to check that synthetic events line up."""

from __future__ import annotations

import cv2
import librosa
import numpy as np


def flow_magnitudes(frames: np.ndarray) -> np.ndarray:
    """Mean Farneback optical-flow magnitude per consecutive frame pair, first value repeated: (F,)."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for prev, nxt in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return np.array([mags[0]] + mags)


def local_maxima(x: np.ndarray) -> np.ndarray:
    """Indices i in [1, n-2] with x[i-1] < x[i] > x[i+1]."""
    i = np.arange(1, len(x) - 1)
    return i[(x[i] > x[i - 1]) & (x[i] > x[i + 1])]


def onset_times(audio: np.ndarray, sample_rate: int, hop: int = 128) -> np.ndarray:
    """librosa onsets in seconds. hop 128 (8 ms at 16 kHz): librosa's default hop of 512 is 32 ms,
    coarser than the ~30 ms tolerances the tests check."""
    envelope = librosa.onset.onset_strength(y=audio, sr=sample_rate, hop_length=hop)
    return librosa.onset.onset_detect(onset_envelope=envelope, sr=sample_rate, hop_length=hop, units="time")
