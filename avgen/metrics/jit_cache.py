"""Fill numba's on-disk cache with librosa's compiled kernels, once, at install time.

librosa compiles its numba kernels (``librosa.util.utils._localmax`` / ``_localmin`` / ``__peak_pick``,
``_cabs2``, ``_phasor_angles``, and the ``guvectorize`` wrappers of ``librosa.core.audio`` and
``librosa.core.pitch`` that compile at import) with ``cache=True``: the first process that needs one
compiles it and writes it beside librosa's sources (``__pycache__/*.nbi``, ``*.nbc``, or under
``$NUMBA_CACHE_DIR``); later processes load it. On an empty cache the compilation costs about 23 s of
CPU per process (measured: the AV-Align onset pipeline on 1 s of audio, 30.6 s cold vs 7.4 s warm), and
processes that start together each compile their own copy, since none has written it yet: a fresh
install running avgen's tests, an ``evaluate`` launched with ``torchrun`` or a SLURM array of evaluations
paid it once per process.

``make setup`` runs this module after installing (``python -m avgen.metrics.jit_cache``), so every later
process finds the kernels compiled. It runs the librosa paths avgen's metrics use (AV-Align's onsets,
the onset-accuracy protocol's detection, resampling) on float32 and float64 audio, which compiles each
kernel for the argument types those paths give it.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _signal(dtype: type, sample_rate: int = 16_000, seconds: float = 1.0) -> np.ndarray:
    """(S,) noise floor with three decaying clicks, in ``dtype``."""
    rng = np.random.default_rng(0)
    y = 0.01 * rng.standard_normal(int(sample_rate * seconds))
    for start in (0.2, 0.5, 0.8):
        i = int(start * sample_rate)
        y[i:i + 400] += np.exp(-np.arange(400) / 80.0)
    return y.astype(dtype)


def warm() -> list[str]:
    """Run the librosa paths of avgen's audio metrics once per input dtype (float32, float64), compiling
    librosa's numba kernels into numba's on-disk cache. Returns the paths run, for the log line.
    Only side effect: the cache files numba writes (nothing when they are already there)."""
    import librosa

    from avgen.metrics.av_align import DEFAULT_CONFIG, audio_onsets
    from avgen.metrics.onset import OnsetConfig, detect_onsets, prepare_audio

    paths = []
    for dtype in (np.float32, np.float64):
        y = _signal(dtype)
        audio_onsets(y.astype(np.float32), 16_000, DEFAULT_CONFIG)
        onsets = detect_onsets(prepare_audio(y[None], 16_000, OnsetConfig(seconds=None)))
        envelope = librosa.onset.onset_strength(y=y, sr=16_000)
        librosa.onset.onset_detect(onset_envelope=envelope, sr=16_000)
        librosa.stft(y, n_fft=512, hop_length=160)
        paths.append(f"{np.dtype(dtype).name}: {len(onsets)} onsets")
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m avgen.metrics.jit_cache``: run :func:`warm` and print one line; exit 0."""
    start = time.perf_counter()
    paths = warm()
    print(f"numba cache of librosa's kernels ready ({'; '.join(paths)}; {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
