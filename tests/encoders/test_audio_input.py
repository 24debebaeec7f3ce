"""av-benchmark's audio input rule (avgen/encoders/audio_input.py): mono, DC removal, resampling, cut, model pad."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from avgen.encoders.audio_input import AudioInput
from avgen.encoders.passt import PaSST
from avgen.media import read_audio

PASST_INPUT = AudioInput(sample_rate=32000, seconds=8, pad_to=320000)


def harness(stereo: np.ndarray, sr: int) -> torch.Tensor:
    """av_bench/data/audio_dataset.py:124-139 and extract.py:166-169 @050a5cd written out: (C, S) → (320000,)."""
    waveform = torch.from_numpy(stereo).float().mean(dim=0)
    waveform = waveform - waveform.mean()
    audio = torchaudio.transforms.Resample(sr, 32000)(waveform)[:int(32000 * 8.0)]
    return torch.nn.functional.pad(audio, (0, 320000 - audio.shape[-1])) if audio.shape[-1] < 320000 else \
        audio[:320000]


def test_a_twelve_second_stereo_file_becomes_eight_seconds_at_32k_padded_to_ten(tmp_path):
    sr = 44100
    t = np.arange(12 * sr) / sr
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 330 * t) + 0.2, 0.3 * np.sin(2 * np.pi * 1234 * t) - 0.05])
    soundfile.write(tmp_path / "long.wav", stereo.T.astype(np.float32), sr, subtype="FLOAT")
    audio, rate = read_audio(tmp_path / "long.wav")
    out = PASST_INPUT(audio, rate)
    assert rate == sr and out.shape == (320000,) and out.dtype == torch.float32
    assert torch.all(out[256000:] == 0) and out[255000:256000].abs().max() > 0.1  # 8 s of sound, then zeros
    expected = harness(stereo.astype(np.float32), sr)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(PASST_INPUT(stereo.astype(np.float32), sr), expected, rtol=0, atol=1e-6)  # (C, S)
    assert out[:256000].mean().abs() < 1e-3  # the 0.075 DC offset of the mono mix is gone


def test_a_dc_offset_does_not_change_the_input_or_the_features():
    t = np.arange(5 * 16000) / 16000
    clean = (0.3 * np.sin(2 * np.pi * 500 * t) * np.sin(2 * np.pi * 0.7 * t)).astype(np.float32)
    a, b = PASST_INPUT(clean, 16000), PASST_INPUT(clean + 0.25, 16000)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    torch.manual_seed(0)
    model = PaSST.tiny()
    for x, y in zip(model(a[None]), model(b[None])):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    kept = AudioInput(sample_rate=16000, seconds=None, remove_dc=False)(clean + 0.25, 16000)
    assert kept.mean().item() == pytest.approx(0.25, abs=1e-3)  # remove_dc=False keeps it


def test_a_short_file_is_zero_padded_never_repeated():
    rng = np.random.default_rng(0)
    short = rng.uniform(-0.5, 0.5, 3 * 32000).astype(np.float32)
    out = PASST_INPUT(short, 32000)
    assert out.shape == (320000,)
    torch.testing.assert_close(out[:96000], torch.from_numpy(short - short.mean()), rtol=0, atol=1e-7)
    assert torch.count_nonzero(out[96000:]) == 0
    unpadded = AudioInput(sample_rate=32000, seconds=8)(short, 32000)
    assert unpadded.shape == (96000,)  # the harness's cut never pads
    assert AudioInput(sample_rate=32000, seconds=None, pad_to=1000)(short, 32000).shape == (1000,)


def test_the_rule_is_described_and_bad_inputs_refused():
    info = PASST_INPUT.describe()
    assert info["rule"] == ("mono (mean over channels), DC removed over the whole file, resampled to 32000 Hz, cut to "
                            "8 s (256000 samples, not padded), then zero-padded or cut to 320000 samples")
    assert info["resampler"].startswith("torchaudio.transforms.Resample") and "050a5cd" in info["source"]
    with pytest.raises(ValueError, match="non-empty audio"):
        PASST_INPUT(np.zeros(0, np.float32), 32000)
    with pytest.raises(ValueError, match="NaN"):
        PASST_INPUT(np.array([0.0, np.nan], np.float32), 32000)
    with pytest.raises(ValueError, match="positive"):
        AudioInput(sample_rate=32000, seconds=0)
