"""PAM and the CAVP score on hand cases: the two-prompt softmax on known embeddings, PAM's 7-s windows (repeat, the
overlapping last window, first-only, channels concatenated) and their mean; the CAVP score's waveform rule (pad, cut,
last sample dropped), its seconds, and the per-step cosine on known embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from avgen.errors import ConfigError
from avgen.metrics.cavp_score import cavp_audio_input, score_seconds, step_cosines
from avgen.metrics.pam import PROMPTS, WINDOW_SAMPLES, PAMScore, pam_probabilities, pam_windows

# the metric adds per-clip scores without update(), so torchmetrics warns at compute()
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
W = WINDOW_SAMPLES  # 308 700


def test_pam_is_the_softmax_probability_of_the_first_prompt():
    """cos = (0.6, −0.8) against the two prompts, scale e^ln(10) = 10: p = e^6 / (e^6 + e^−8)."""
    audio = torch.tensor([[3.0, 4.0], [0.0, 5.0]])                # normalised: (0.6, 0.8), (0, 1)
    text = torch.tensor([[2.0, 0.0], [0.0, -7.0]])                # normalised: (1, 0), (0, −1)
    p = pam_probabilities(audio, text, math.log(10.0))
    assert p.dtype == torch.float64
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-14.0)), 1 / (1 + math.exp(-10.0))], abs=1e-12)
    # equal cosines with both prompts: 1/2, whatever the scale
    assert pam_probabilities(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, -1.0]]), 4.6).item() == 0.5
    with pytest.raises(ValueError, match=r"\(2, D\)"):
        pam_probabilities(audio, text[:1], 0.0)


def test_pam_windows_follow_pam_dataset_rules():
    ramp = torch.arange(2 * W + 1000, dtype=torch.float32)
    every = pam_windows(ramp.numpy(), 44_100, "all")
    assert every.shape == (3, W)  # two full windows, then the last 7 s (overlapping the second)
    assert torch.equal(every[0], ramp[:W]) and torch.equal(every[1], ramp[W:2 * W])
    assert torch.equal(every[2], ramp[-W:])
    exact = pam_windows(ramp[:2 * W].numpy(), 44_100, "all")
    assert exact.shape == (2, W)  # a multiple of 7 s: no extra window
    first = pam_windows(ramp.numpy(), 44_100, "first")
    assert first.shape == (1, W) and torch.equal(first[0], ramp[:W])
    short = pam_windows(np.arange(100_000, dtype=np.float32), 44_100)  # repeated ceil(308700 / 1e5) = 4 times
    assert short.shape == (1, W) and short[0, 100_000].item() == 0 and short[0, -1].item() == (W - 1) % 100_000


def test_pam_resamples_each_channel_then_concatenates_them():
    """A stereo file at 22.05 kHz: each channel resampled to 44.1 kHz, then left followed by right (PAM's
    ``reshape(-1)``), 2 × 4 s = 8 s → one full window and the last 7 s."""
    import torchaudio

    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((2, 4 * 22_050)).astype(np.float32)
    windows = pam_windows(stereo, 22_050)
    flat = torchaudio.transforms.Resample(22_050, 44_100)(torch.from_numpy(stereo)).reshape(-1)
    assert flat.shape[0] == 8 * 44_100 and windows.shape == (2, W)
    torch.testing.assert_close(windows[0], flat[:W], atol=1e-6, rtol=0)
    torch.testing.assert_close(windows[1], flat[-W:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="finite"):
        pam_windows(np.array([0.0, np.nan], dtype=np.float32), 44_100)
    with pytest.raises(ConfigError, match="evaluate.pam.windows='middle'"):
        pam_windows(stereo, 22_050, "middle")


class _KnownClap(nn.Module):
    """Stands in for MS-CLAP: a window's embedding is (1, its mean); the prompts' are (1, 0) and (0, 1)."""

    logit_scale = 0.0

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.texts: list[list[str]] = []

    def audio_embeddings(self, waves):
        return torch.stack([torch.ones(len(waves)), waves.mean(dim=1)], dim=1)

    def text_embeddings(self, texts):
        self.texts.append(list(texts))
        return torch.eye(2)


def test_a_clips_pam_is_the_mean_over_its_windows():
    """Windows of constant value v: embedding (1, v), cos with the prompts 1/√(1+v²) and v/√(1+v²), scale 1."""
    model = _KnownClap()
    metric = PAMScore(model)
    clip = np.concatenate([np.zeros(W), np.full(W, 2.0), np.full(W // 2, 1.0)]).astype(np.float32)

    def p(v: float) -> float:
        a, b = 1 / math.sqrt(1 + v * v), v / math.sqrt(1 + v * v)
        return 1 / (1 + math.exp(b - a))

    last = (W // 2 * 2.0 + W // 2 * 1.0) / W  # the last 7 s: half of the 2.0 window, then the 1.0 tail
    windows = metric.window_scores(clip, 44_100)
    assert windows.tolist() == pytest.approx([p(0.0), p(2.0), p(last)], abs=1e-6)
    score = metric.clip_scores([clip], 44_100)
    assert score.item() == pytest.approx((p(0.0) + p(2.0) + p(last)) / 3, abs=1e-6)
    assert model.texts == [list(PROMPTS)]  # the prompts are embedded once, in PAM's order
    first = PAMScore(model, windows="first").clip_scores([clip], 44_100)
    assert first.item() == pytest.approx(p(0.0), abs=1e-6)
    metric.add_scores(score)
    metric.add_scores(first)
    assert metric.compute().item() == pytest.approx((score.item() + first.item()) / 2)
    assert metric.logit_scale == 0.0 and metric.logit_scale_source == "checkpoint"


def test_pam_without_a_logit_scale_in_the_file_uses_msclap_initial_value():
    model = _KnownClap()
    model.logit_scale = None
    metric = PAMScore(model)
    assert metric.logit_scale == pytest.approx(math.log(1 / 0.07)) and "initial" in metric.logit_scale_source


def test_cavp_waveform_is_padded_or_cut_to_whole_seconds_minus_one_sample():
    short = np.ones(20_000, dtype=np.float32)
    wave = cavp_audio_input(short, 16_000, 2)
    assert wave.shape == (31_999,) and wave[:20_000].eq(1).all() and wave[20_000:].eq(0).all()
    long = np.arange(40_000, dtype=np.float32)
    assert torch.equal(cavp_audio_input(long, 16_000, 2), torch.arange(31_999, dtype=torch.float32))
    assert cavp_audio_input(np.zeros(8000, dtype=np.float32), 8000, 1).shape == (15_999,)  # resampled first
    with pytest.raises(ValueError, match="mono"):
        cavp_audio_input(np.zeros((2, 100), dtype=np.float32), 16_000, 1)


def test_cavp_seconds_are_the_whole_seconds_of_the_longer_stream():
    assert score_seconds(4.0, 3.9999) == 4 and score_seconds(3.5, 4.2) == 4 and score_seconds(0.9, 0.5) == 0
    assert score_seconds(2.9994, 1.0) == 2  # rounded to 2.999 ms first: still 2 whole seconds


def test_cavp_step_cosines_on_known_embeddings():
    video = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    audio = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -3.0]])
    cos = step_cosines(video, audio)
    assert cos.dtype == torch.float64 and cos.tolist() == pytest.approx([1.0, 1 / math.sqrt(2), -1.0], abs=1e-12)
    assert cos.mean().item() == pytest.approx((1 + 1 / math.sqrt(2) - 1) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="one of each per 0.25 s step"):
        step_cosines(video, audio[:2])
