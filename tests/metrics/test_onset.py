"""Onset accuracy and onset AP (avgen/metrics/onset.py): the protocol's steps on hand cases, and whole clips
with known hits against shifted, missing and extra events."""

from __future__ import annotations

import numpy as np
import pytest

from avgen.metrics.onset import (
    OnsetConfig,
    OnsetScores,
    average_precision,
    clip_onset_scores,
    match_events,
    normalised_amplitude,
    onset_confidence,
    onset_nms,
)


def test_average_precision_hand_cases_and_sklearn():
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx((1 / 2) * 1 + (1 / 2) * (2 / 3))
    assert average_precision([1, 1], [0.0, 0.0]) == 1.0  # only positives: 1 whatever the scores
    assert average_precision([0, 1], [0.5, 0.5]) == 0.5  # a tie is one threshold: P = 1/2 at R = 1
    with pytest.raises(ValueError, match="positive"):
        average_precision([0, 0], [0.1, 0.2])
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(50):  # scores on a coarse grid, so ties happen
        n = int(rng.integers(1, 10))
        labels = rng.integers(0, 2, n)
        labels[rng.integers(n)] = 1
        scores = rng.integers(0, 4, n) / 3
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_amplitude_confidence_and_nms():
    y = np.array([-1.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalised_amplitude(y, "signed"), (y + 1) / (2 + 1e-6))
    np.testing.assert_allclose(normalised_amplitude(y, "abs"), [1.0, 0.0, 0.5, 1.0])
    amp = np.arange(10, dtype=float) / 10
    # [o - 3, o + 3), clipped at the start (the scripts' negative slice start would be empty)
    np.testing.assert_allclose(onset_confidence(amp, [1, 5, 9], 3), [0.3, 0.7, 0.9])
    # the most confident first; every onset within the window of a kept one goes (the scripts' loop skips 100)
    assert onset_nms([0, 100, 200, 5000], [0.1, 0.2, 0.9, 0.3], 1102).tolist() == [200, 5000]
    assert onset_nms([1000, 1500], [0.5, 0.5], 1102).tolist() == [1500]  # ties: the later onset
    assert onset_nms([0, 2000], [0.5, 0.4], 1102).tolist() == [0, 2000]


def test_match_events_hits_misses_and_false_positives():
    cfg = OnsetConfig(sample_rate=1000, window=0.2, confidence_window=0.001)  # window 200 samples, confidence = amp[o]
    amp = np.zeros(13000)
    amp[[1100, 5300, 12000]] = [0.8, 0.6, 0.5]
    m = match_events([1000, 5000, 9000], [1100, 5300, 12000], amp, cfg)
    # 1000 takes 1100; 5000 is 300 from 5300 (outside the open window): a miss; 9000 a miss; 5300 and 12000 FPs
    assert m.hits == 1 and m.matched == [(0, 1100)]
    assert m.labels.tolist() == [1, 1, 1, 0, 0] and m.scores.tolist() == [0.8, 0.0, 0.0, 0.6, 0.5]
    # the candidate of largest amplitude at its own sample wins, the later one on a tie
    amp[[900, 1100]] = [0.9, 0.4]
    assert match_events([1000], [900, 1100], amp, cfg).matched == [(0, 900)]
    amp[900] = 0.4
    assert match_events([1000], [900, 1100], amp, cfg).matched == [(0, 1100)]
    # an onset is used once: the second event near it misses
    assert match_events([1000, 1050], [1100], amp, cfg).labels.tolist() == [1, 1]
    assert match_events([1000, 1050], [1100], amp, cfg).hits == 1


SR = 22050
HITS = (0.5, 1.2, 2.0)


@pytest.fixture(scope="module")
def hits_audio() -> np.ndarray:
    """3 s at 22.05 kHz: decaying 1 kHz bursts at HITS with peaks 1.0, 0.8, 0.5 over a faint noise floor."""
    rng = np.random.default_rng(0)
    y = rng.normal(0, 1e-3, 3 * SR)
    t = np.arange(int(0.15 * SR)) / SR
    for start, peak in zip(HITS, (1.0, 0.8, 0.5)):
        i = int(start * SR)
        y[i:i + len(t)] += peak * np.exp(-t / 0.02) * np.sin(2 * np.pi * 1000 * t)
    return y.astype(np.float32)


def test_clip_scores_on_known_hits(hits_audio):
    perfect = clip_onset_scores(hits_audio, SR, HITS)
    assert perfect == {"onset_acc": 1.0, "onset_ap": 1.0, "onset_count_acc": 1.0, "onset_events": 3,
                       "onset_detected": 3}
    # within the 0.3 s tolerance: still perfect; 0.35 s late (gaps 0.7, 0.8 s): every event misses, every onset a
    # false positive, AP = 1/2 (the misses' 0 ranks last: P = 3/6 at R = 1)
    assert clip_onset_scores(hits_audio, SR, [t + 0.1 for t in HITS])["onset_acc"] == 1.0
    late = clip_onset_scores(hits_audio, SR, [t + 0.35 for t in HITS])
    assert late["onset_acc"] == 0.0 and late["onset_ap"] == pytest.approx(0.5)
    # the loudest hit not annotated: a false positive ranked first; AP = 1/2 · 1/2 + 1/2 · 2/3 = 7/12
    unannotated = clip_onset_scores(hits_audio, SR, HITS[1:])
    assert unannotated["onset_acc"] == 1.0 and unannotated["onset_ap"] == pytest.approx(7 / 12)
    assert unannotated["onset_count_acc"] == 0.0
    # an event with no sound: accuracy 3/4; AP stays 1 (every detected onset matched: no negatives)
    silent = clip_onset_scores(hits_audio, SR, [*HITS, 2.6])
    assert silent["onset_acc"] == 0.75 and silent["onset_ap"] == 1.0
    # events past `seconds` are dropped with the audio; none left: refused (reported per clip by evaluate)
    assert clip_onset_scores(hits_audio, SR, [*HITS, 2.6], cfg=OnsetConfig(seconds=1.0))["onset_events"] == 1
    with pytest.raises(ValueError, match="no ground-truth onset before 0.4 s"):
        clip_onset_scores(hits_audio, SR, HITS, cfg=OnsetConfig(seconds=0.4))
    # CondFoleyGen's ground truth: the onsets detected on the reference audio (here the same audio, at 16 kHz)
    import librosa

    ref = librosa.resample(hits_audio, orig_sr=SR, target_sr=16000)
    detected = clip_onset_scores(hits_audio, SR, reference=(ref, 16000), cfg=OnsetConfig(ground_truth="detected"))
    assert detected["onset_acc"] == 1.0 and detected["onset_ap"] == 1.0 and detected["onset_events"] == 3


def test_onset_scores_merge_two_processes_as_one():
    """Two processes' states merged equal one process fed every clip."""
    clips = [{"onset_acc": a, "onset_ap": p, "onset_count_acc": c} for a, p, c in
             [(1.0, 1.0, 1.0), (0.5, 7 / 12, 0.0), (0.0, 0.5, 1.0)]]
    one, first, second = OnsetScores(), OnsetScores(), OnsetScores()
    for i, scores in enumerate(clips):
        one.update(scores)
        (first if i % 2 else second).update(scores)
    first.merge_state(second)  # what Processes.reduce does under torchrun: the states summed
    assert first.compute() == pytest.approx(one.compute())
    assert one.compute() == pytest.approx({"onset_acc": 0.5, "onset_ap": (1 + 7 / 12 + 0.5) / 3,
                                           "onset_count_acc": 2 / 3})


def test_config_refuses_unknown_choices():
    with pytest.raises(ValueError, match="ground_truth"):
        OnsetConfig(ground_truth="annotations")
    with pytest.raises(ValueError, match="amplitude"):
        OnsetConfig(amplitude="rms")
    with pytest.raises(ValueError, match="window"):
        OnsetConfig(window=0)
