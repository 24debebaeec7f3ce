"""How av-benchmark (hkchengrex/av-benchmark@050a5cd, the harness of the video-to-audio papers' tables) turns an
audio file into a model input: :class:`AudioInput`.

``AudioDataset.read_from_file`` (``av_bench/data/audio_dataset.py:124-141@050a5cd``) does, in this order:
``torchaudio.load`` → mono = mean over channels → DC removal over the whole file (``waveform − waveform.mean()``)
→ ``torchaudio.transforms.Resample(sr, target)`` with its defaults → cut to ``int(target · audio_length)``
samples (``--audio_length``, "maximum length; does not pad if under", ``av_bench/args.py:8-9@050a5cd``; MMAudio
evaluates with 8 s). Some models then pad or cut to their own length: PaSST to 320 000 samples
(``av_bench/extract.py:166-169@050a5cd``). The same rule feeds PaSST (32 kHz), PANNs and VGGish (16 kHz) and
LAION-CLAP (48 kHz) there, so it is one object with those as fields.

Unlike the harness, a file that cannot be decoded is reported by the caller, never replaced by the next file
(``audio_dataset.py:109-119@050a5cd`` substitutes it silently).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch

# The harness's resampler object: its kernel is computed in float64 and cached as float32, which differs from
# torchaudio.functional.resample on float32 audio (kernel computed in float32) by up to ~4e-6 (measured, 44.1 → 32 kHz).
RESAMPLER = ("torchaudio.transforms.Resample (sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99; kernel "
             "computed in float64, cached as float32)")


@lru_cache(maxsize=8)
def _resampler(orig: int, new: int):
    import torchaudio

    return torchaudio.transforms.Resample(orig, new)


@dataclass(frozen=True)
class AudioInput:
    """One harness input rule: mono → DC removal → resample → cut to ``seconds`` → pad-or-cut to ``pad_to``.

    Attributes:
        sample_rate: the model's rate (Hz); the audio is resampled to it with :data:`RESAMPLER`, the
            ``torchaudio.transforms.Resample(sr, sample_rate)`` object the harness builds, defaults unchanged.
        seconds: the harness's ``audio_length``: longer audio is cut to ``int(sample_rate · seconds)`` samples
            after resampling; shorter audio is left as it is (never padded here). ``None``: no cut.
        remove_dc: subtract the mean of the whole (mono, original-rate) file first, as the harness does.
        pad_to: the model's own length (samples), applied last: zero-padded at the end or cut to exactly this
            many (PaSST: 320 000). ``None``: the length after the cut.
    """

    sample_rate: int
    seconds: float | None = 8.0
    remove_dc: bool = True
    pad_to: int | None = None

    def __post_init__(self):
        if self.sample_rate <= 0 or self.seconds is not None and self.seconds <= 0 or \
                self.pad_to is not None and self.pad_to <= 0:
            raise ValueError(f"AudioInput needs a positive sample_rate, seconds and pad_to, got {self}")

    @property
    def max_samples(self) -> int | None:
        """The cut: ``int(sample_rate · seconds)`` samples (the harness's ``int``, not ``round``), or None."""
        return None if self.seconds is None else int(self.sample_rate * self.seconds)

    def __call__(self, audio: Any, sample_rate: int) -> torch.Tensor:
        """audio (S,) mono or (C, S) channels-first (``torchaudio.load``'s layout), any float, at ``sample_rate``
        Hz → (S',) float32 at ``self.sample_rate`` on the CPU.

        Raises:
            ValueError: empty audio, more than 2 axes, or non-finite samples.
        """
        wave = torch.as_tensor(audio).to("cpu", torch.float32)
        if wave.ndim not in (1, 2) or wave.numel() == 0:
            raise ValueError(f"expected non-empty audio (S,) or (channels, S), got shape {tuple(wave.shape)}")
        if not torch.isfinite(wave).all():
            raise ValueError("audio holds NaN or infinite samples")
        if wave.ndim == 2:
            wave = wave.mean(dim=0)
        if self.remove_dc:
            wave = wave - wave.mean()
        if int(sample_rate) != self.sample_rate:
            with torch.no_grad():
                wave = _resampler(int(sample_rate), self.sample_rate)(wave)
        if self.max_samples is not None:
            wave = wave[:self.max_samples]
        if self.pad_to is not None:
            wave = torch.nn.functional.pad(wave[:self.pad_to], (0, max(0, self.pad_to - wave.shape[0])))
        return wave

    def rule(self) -> str:
        """The rule in words, for ``metrics.json``, e.g. ``"mono, DC removed, 32000 Hz, cut to 8 s (256000 samples,
        not padded), then zero-padded or cut to 320000 samples"``."""
        parts = ["mono (mean over channels)"] + (["DC removed over the whole file"] if self.remove_dc else [])
        parts.append(f"resampled to {self.sample_rate} Hz")
        if self.seconds is not None:
            parts.append(f"cut to {self.seconds:g} s ({self.max_samples} samples, not padded)")
        if self.pad_to is not None:
            parts.append(f"then zero-padded or cut to {self.pad_to} samples")
        return ", ".join(parts)

    def describe(self) -> dict[str, Any]:
        """The settings, the rule in words and the resampler, for ``metrics.json``."""
        return {**asdict(self), "rule": self.rule(), "resampler": RESAMPLER,
                "source": "av_bench/data/audio_dataset.py:124-141@050a5cd"}
