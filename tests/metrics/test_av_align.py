"""AV-Align (avgen.metrics.av_align): the three variants on hand-made onset/peak lists, the
no-event convention, ground-truth synthetic clips against shifted audio, file loading, the
torchmetrics Metric under a DDP-style merge, and the figure."""

from __future__ import annotations

import functools

import cv2
import librosa
import numpy as np
import pytest
import torch

from avgen.data.synthetic import ClipGeometry, SyntheticClip, generate_clip
from avgen.errors import ConfigError
from avgen.media import MediaError, write_mp4, write_wav
from avgen.metrics.av_align import (
    NO_EVENTS_SCORE,
    AVAlignConfig,
    align_clip,
    flow_magnitudes,
    load_av,
    match,
    plot_alignment,
    score,
    video_peaks,
)
from avgen.metrics.av_align_metric import AVAlign
from tests.avsync import flow_magnitudes as reference_flow_magnitudes
from tests.avsync import local_maxima

GEO = ClipGeometry(seconds=4, fps=8, height=128, width=128)
SEEDS = range(8)
CFG = AVAlignConfig()


@functools.lru_cache(maxsize=None)
def clip(seed: int, geometry: ClipGeometry = GEO) -> SyntheticClip:
    return generate_clip(seed, geometry)


def official_loop(audio_peaks, video_peaks, fps):
    """The official TempoTokens ``calc_intersection_over_union`` (Feb 2025), written out as is."""
    intersection_length = 0
    used_video_peaks = [False] * len(video_peaks)
    for audio_peak in audio_peaks:
        for j, video_peak in enumerate(video_peaks):
            if not used_video_peaks[j] and video_peak - 1 / fps < audio_peak < video_peak + 1 / fps:
                intersection_length += 1
                used_video_peaks[j] = True
                break
    return intersection_length / (len(audio_peaks) + len(video_peaks) - intersection_length)


# ------------------------------------------------------------------------------------------
# Scores from onset and peak lists


def test_one_peak_near_two_onsets_separates_the_variants():
    # fps 8: window (0.375, 0.625) around the peak at 0.5; both onsets fall in it.
    onsets, peaks = [0.4375, 0.5625], [0.5]
    assert score(onsets, peaks, 8, "official") == official_loop(onsets, peaks, 8) == 0.5  # 1 / (2 + 1 - 1)
    assert score(onsets, peaks, 8, "paper") == 0.75  # (2 + 1) / (2 * (2 + 1 - 1))
    assert score(onsets, peaks, 8, "pr") == 1.0      # p = r = 1
    # Plus an unmatched onset and an unmatched peak: 1 pair; onset hits 2/3, peak hits 1/2.
    onsets, peaks = [0.45, 0.55, 1.5], [0.5, 1.0]
    assert score(onsets, peaks, 8, "official") == official_loop(onsets, peaks, 8) == 0.25   # 1 / (3 + 2 - 1)
    assert score(onsets, peaks, 8, "paper") == pytest.approx(3 / 8, abs=1e-15)            # (2 + 1) / (2 * 4)
    assert score(onsets, peaks, 8, "pr") == pytest.approx(0.4, abs=1e-15)                 # (1/3) / (2/3 + 1/2 - 1/3)
    m = match(onsets, peaks, 8)
    assert m.pairs.tolist() == [[0, 0]]
    assert m.onset_hit.tolist() == [True, True, False] and m.peak_hit.tolist() == [True, False]


@pytest.mark.parametrize("onsets, peaks, fps", [
    ([0.1, 0.5, 0.9, 1.3], [0.5, 1.0, 1.25], 8),
    ([0.52, 0.48, 1.02], [1.0, 0.5], 10),            # unsorted: the official loop keeps the given order
    ([0.31, 0.33, 0.35, 2.0], [0.3, 0.36, 1.9, 2.1], 25),
    ([0.0697, 1.556, 3.204], [1.5, 3.125], 8),
    ([1.0], [], 8),
    ([], [1.0, 2.0], 8),
])
def test_official_equals_the_official_loop(onsets, peaks, fps):
    assert score(onsets, peaks, fps, "official") == official_loop(onsets, peaks, fps)


def test_official_equals_the_official_loop_and_all_variants_stay_in_unit_interval_on_random_lists():
    rng = np.random.default_rng(0)
    for _ in range(300):
        fps = float(rng.choice([8, 10, 24, 30]))
        onsets = list(np.sort(rng.uniform(0, 2, rng.integers(1, 9))))
        peaks = list(np.flatnonzero(rng.random(int(2 * fps)) < 0.3) / fps)
        assert score(onsets, peaks, fps, "official") == official_loop(onsets, peaks, fps)
        for variant in ("official", "paper", "pr"):
            assert 0.0 <= score(onsets, peaks, fps, variant) <= 1.0


def test_greedy_pairs_on_sorted_lists_are_a_maximum_matching():
    """|A ∪ V| of ``paper`` relies on it: compare with brute force over all one-to-one matchings."""
    def most_pairs(near, i=0, used=frozenset()):
        if i == len(near):
            return 0
        return max([most_pairs(near, i + 1, used)] +
                   [1 + most_pairs(near, i + 1, used | {j}) for j, ok in enumerate(near[i]) if ok and j not in used])

    rng = np.random.default_rng(1)
    for _ in range(300):
        onsets = np.sort(rng.uniform(0, 1, rng.integers(1, 7)))
        peaks = np.sort(rng.choice(np.arange(1, 8), rng.integers(1, 6), replace=False) / 8)
        near = [[v - 1 / 8 < a < v + 1 / 8 for v in peaks] for a in onsets]
        assert len(match(onsets, peaks, 8).pairs) == most_pairs(near)


def test_window_is_open_one_frame_each_side():
    # fps 8, peak at 0.5: the window is (0.375, 0.625), and all these numbers are exact in binary.
    for edge in (0.375, 0.625):
        assert score([edge], [0.5], 8, "official") == 0.0
        assert score([edge], [0.5], 8, "pr") == 0.0
    for inside in (0.375 + 1e-9, 0.625 - 1e-9, 0.5):
        assert score([inside], [0.5], 8, "official") == 1.0
        assert score([inside], [0.5], 8, "paper") == 1.0
    wide = AVAlignConfig(window_frames=2)
    assert score([0.375], [0.5], 8, "official", wide) == 1.0
    assert score([0.25], [0.5], 8, "official", wide) == 0.0


def test_peaks_are_strict_local_maxima_and_the_threshold_is_per_variant():
    m = np.array([0.0, 0.0, 0.05, 0.0, 0.0, 0.1, 0.0, 0.3, 0.2, 0.2, 0.5])
    assert video_peaks(m, 10).tolist() == [0.2, 0.5, 0.7]          # index 10 is the last frame: never a peak
    assert video_peaks(m, 10, CFG.min_magnitude("official")).tolist() == [0.5, 0.7]  # 0.05 dropped, 0.1 kept
    assert CFG.min_magnitude("paper") == CFG.min_magnitude("pr") == 0.0
    assert video_peaks(np.array([0.0, 1.0, 1.0, 0.0]), 8).size == 0   # plateau: not strict
    assert video_peaks(np.array([5.0, 0.0, 0.0, 5.0]), 8).size == 0   # ends never count
    assert video_peaks(np.array([0.0, 1.0]), 8).size == 0
    rng = np.random.default_rng(3)
    x = rng.random(50)
    assert np.array_equal(video_peaks(x, 12), local_maxima(x) / 12)


def test_no_events_and_one_sided_events_are_documented_values():
    assert NO_EVENTS_SCORE == 0.0
    for variant in ("official", "paper", "pr"):
        assert score([], [], 8, variant) == NO_EVENTS_SCORE
        assert score([0.5], [], 8, variant) == 0.0
        assert score([], [0.5], 8, variant) == 0.0


def test_config_rejects_unknown_variants_and_bad_window():
    with pytest.raises(ValueError, match="av_align.variants"):
        AVAlignConfig(variants=("official", "iou"))
    with pytest.raises(ValueError, match="av_align.window_frames"):
        AVAlignConfig(window_frames=0)
    assert AVAlignConfig(variants=["pr"]).variants == ("pr",)  # lists from YAML become tuples


# ------------------------------------------------------------------------------------------
# Clips


def _static_frames(n=12, size=128) -> np.ndarray:
    texture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 0)
    return np.repeat(texture[None], n, axis=0)


def test_static_silent_clip_has_no_events_and_scores_the_no_event_value():
    result = align_clip(_static_frames(), 8, np.zeros(16000, np.float32), 16000)
    # Identical frame pairs give bit-identical magnitudes (no ulp jitter that would fake maxima).
    assert np.unique(result.magnitudes).size == 1
    assert result.onsets.size == 0 and all(p.size == 0 for p in result.peaks.values())
    assert result.scores == {"official": NO_EVENTS_SCORE, "paper": NO_EVENTS_SCORE, "pr": NO_EVENTS_SCORE}


def test_one_silent_modality_scores_zero():
    c = clip(1)
    still = align_clip(_static_frames(GEO.num_frames), GEO.fps, c.audio, GEO.sample_rate)
    silent = align_clip(c.frames, GEO.fps, np.zeros_like(c.audio), GEO.sample_rate)
    assert still.onsets.size > 0 and silent.peaks["pr"].size > 0
    assert set(still.scores.values()) == {0.0} and set(silent.scores.values()) == {0.0}


def test_flow_magnitudes_agree_with_the_test_helper():
    frames = clip(2).frames
    np.testing.assert_allclose(flow_magnitudes(frames), reference_flow_magnitudes(frames), rtol=1e-5, atol=1e-7)


def test_ground_truth_clips_align_and_shifted_audio_does_not():
    fps, sr = GEO.fps, GEO.sample_rate
    shift = 3 * sr // fps  # three frame periods
    scores, shifted = [], []
    for seed in SEEDS:
        c = clip(seed)
        events = np.array(c.meta["events"])
        result = align_clip(c.frames, fps, c.audio, sr)
        # Every hit is detected in both modalities within one frame, and every video peak is matched.
        for t in events:
            assert np.abs(result.onsets - t).min() < 1 / fps, (seed, t)
            assert np.abs(result.peaks["pr"] - t).min() < 1 / fps, (seed, t)
        m = result.matches["pr"]
        assert m.peak_hit.all(), seed
        # The only unmatched onset is the one librosa reports where any audio with a noise floor
        # begins (3 hops, 0.07 s): no video peak can sit there, so a clip with n hits scores n / (n + 1).
        assert (result.onsets[~m.onset_hit] < 0.1).all(), (seed, result.onsets)
        assert result.scores["pr"] == pytest.approx(len(events) / (len(events) + 1)), seed
        late = np.concatenate([np.zeros(shift, np.float32), c.audio[:-shift]])
        scores.append(result.scores)
        shifted.append(align_clip(c.frames, fps, late, sr).scores)
    for variant in ("official", "paper", "pr"):
        mean = np.mean([s[variant] for s in scores])
        mean_shifted = np.mean([s[variant] for s in shifted])
        assert mean >= 0.6, (variant, mean)
        assert mean_shifted < 0.5 * mean, (variant, mean, mean_shifted)


def test_load_av_sounding_mp4_and_mp4_wav_pair_match_the_clip_in_memory(tmp_path):
    c = clip(1)
    fps, sr = GEO.fps, GEO.sample_rate
    write_mp4(tmp_path / "sounding.mp4", c.frames, fps, audio=c.audio, sample_rate=sr)
    write_mp4(tmp_path / "pair.mp4", c.frames, fps)
    write_wav(tmp_path / "pair.wav", c.audio, sr)
    write_mp4(tmp_path / "silent.mp4", c.frames, fps)
    reference = align_clip(c.frames, fps, c.audio, sr)
    loaded = {"sounding": load_av(tmp_path / "sounding.mp4"), "pair": load_av(tmp_path / "pair.mp4"),
              "explicit": load_av(tmp_path / "silent.mp4", wav=tmp_path / "pair.wav")}
    # Still stretches of an h264 video carry small codec flicker; with a threshold on every
    # variant all three sources agree with the frames in memory.
    thresholded = AVAlignConfig(paper_min_magnitude=0.1, pr_min_magnitude=0.1)
    reference_t = align_clip(c.frames, fps, c.audio, sr, thresholded)
    for name, (frames, f, audio, rate) in loaded.items():
        assert frames.shape == c.frames.shape and f == fps and rate == sr, name
        result = align_clip(frames, f, audio, rate)
        assert np.array_equal(result.onsets, reference.onsets), name
        np.testing.assert_allclose(result.magnitudes, reference.magnitudes, atol=0.02)
        assert result.scores["official"] == reference.scores["official"], name
        assert align_clip(frames, f, audio, rate, thresholded).scores == reference_t.scores, name
    # The wav route gives the onsets of the official librosa.load path, bit for bit.
    y, y_sr = librosa.load(tmp_path / "pair.wav")
    official = librosa.frames_to_time(
        librosa.onset.onset_detect(onset_envelope=librosa.onset.onset_strength(y=y, sr=y_sr), sr=y_sr), sr=y_sr)
    assert np.array_equal(align_clip(*loaded["pair"]).onsets, official)
    with pytest.raises(MediaError, match="no audio stream and no silent.wav"):
        load_av(tmp_path / "silent.mp4")


# ------------------------------------------------------------------------------------------
# Metric and figure

SMALL = ClipGeometry(seconds=2, fps=8, height=96, width=96)


def _as_model_video(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 → (F, 3, H, W) float in [-1, 1], the generators' layout."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_metric_means_per_variant_and_ddp_style_merge_equals_one_process():
    clips = [clip(seed, SMALL) for seed in range(4)]
    fps, sr = SMALL.fps, SMALL.sample_rate
    expected = [align_clip(c.frames, fps, c.audio, sr).scores for c in clips]

    whole = AVAlign()
    whole.update([_as_model_video(c.frames) for c in clips], fps, [torch.from_numpy(c.audio) for c in clips], sr)
    result = whole.compute()
    for variant in ("official", "paper", "pr"):
        assert result[variant].item() == pytest.approx(np.mean([s[variant] for s in expected]), abs=1e-12)

    rank0, rank1 = AVAlign(), AVAlign()
    rank0.update(torch.stack([_as_model_video(c.frames) for c in clips[:2]]), [fps, fps],
                 torch.stack([torch.from_numpy(c.audio) for c in clips[:2]]), sr)       # a (B, F, 3, H, W) batch
    rank1.update(torch.from_numpy(clips[2].frames), fps, torch.from_numpy(clips[2].audio), sr)  # uint8 (F, H, W, 3)
    rank1.update(clips[3].frames, fps, clips[3].audio, sr)                              # numpy
    # What DDP's all-reduce does: sum each state over ranks.
    summed = {k: getattr(rank0, k) + getattr(rank1, k) for k in rank0._defaults}
    assert summed["clips"].item() == 4
    for variant in ("official", "paper", "pr"):
        torch.testing.assert_close(summed[f"score_sum_{variant}"] / 4, result[variant])
    rank0.merge_state(rank1)
    torch.testing.assert_close(rank0.compute(), result)


def test_metric_selected_variants_and_empty_compute():
    metric = AVAlign(variants=["pr"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = metric.compute()
    assert set(empty) == {"pr"} and torch.isnan(empty["pr"])
    c = clip(0, SMALL)
    metric.update(c.frames, SMALL.fps, c.audio, SMALL.sample_rate)
    assert set(metric.compute()) == {"pr"}
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\) float in \[-1, 1\] or \(F, H, W, 3\) uint8"):
        metric.update(c.frames.astype(np.float32), SMALL.fps, c.audio, SMALL.sample_rate)


def test_plot_writes_a_readable_png(tmp_path):
    c = clip(1)
    result = align_clip(c.frames, GEO.fps, c.audio, GEO.sample_rate)
    path = plot_alignment(tmp_path / "plots" / "clip.png", c.frames, GEO.fps, c.audio, GEO.sample_rate, result)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[1] == 960 and 400 <= img.shape[0] <= 1000
    assert img.std() > 20  # frames, curves and text, not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == ["clip.png"]  # written through a temporary name
    # Matched onsets are drawn green, unmatched red: both colours are on the canvas.
    assert (np.abs(img.astype(int) - (40, 160, 40)).sum(-1) == 0).any()
    assert (np.abs(img.astype(int) - (40, 40, 220)).sum(-1) == 0).any()


def test_tuned_detection_scores_ground_truth_one_and_shifted_audio_low():
    """With the detection tuned on annotated clips (reflect-padded onset envelope, delta 0.15, a 0.05 flow
    floor), ground-truth synthetic pairs score 1 in every variant (the official defaults: n / (n + 1)),
    and the same clips with audio 3 frames late stay far below."""
    from avgen.metrics.av_align import TUNED_ON_SYNTHETIC_HITS

    cfg = AVAlignConfig(**TUNED_ON_SYNTHETIC_HITS)
    fps, sr = GEO.fps, GEO.sample_rate
    shift = 3 * sr // fps
    for seed in SEEDS:
        c = clip(seed)
        result = align_clip(c.frames, fps, c.audio, sr, cfg)
        assert len(result.onsets) == len(c.meta["events"]), (seed, result.onsets)  # no start-of-audio onset
        assert all(v == pytest.approx(1.0) for v in result.scores.values()), (seed, result.scores)
        late = np.concatenate([np.zeros(shift, np.float32), c.audio[:-shift]])
        assert max(align_clip(c.frames, fps, late, sr, cfg).scores.values()) <= 0.5, seed


def test_onset_options_are_checked():
    with pytest.raises(ConfigError, match="onset_pad_mode"):
        AVAlignConfig(onset_pad_mode="zeros")
    with pytest.raises(ConfigError, match="onset_delta"):
        AVAlignConfig(onset_delta=-1)


def test_matchable_onsets_are_those_some_detectable_peak_could_match():
    """Exact window on 8 frames at 8 fps (open interval (1/8, 7/8) s), and the invariant behind it: on random
    flow trajectories every peak video_peaks reports is at a frame 2..F-2, so every onset any peak matches is
    matchable, and each matchable onset is matched by a peak at one of those frames."""
    from avgen.metrics.av_align import match, matchable_onsets, video_peaks

    onsets = [0.0, 0.125, 0.13, 0.5, 0.87, 0.875, 0.95]
    assert matchable_onsets(onsets, 8, 8.0).tolist() == [False, False, True, True, True, False, False]
    assert matchable_onsets([0.18, 0.82], 8, 8.0, window_frames=0.5).tolist() == [False, False]  # (1.5/8, 6.5/8) s
    assert matchable_onsets([0.19, 0.8], 8, 8.0, window_frames=0.5).tolist() == [True, True]
    rng = np.random.default_rng(0)
    for _ in range(300):
        frames = int(rng.integers(3, 12))
        pairs = rng.random(frames - 1)
        m = np.array([pairs[0], *pairs])  # flow_magnitudes' layout: frame 0 repeats frame 1
        peaks = video_peaks(m, 8.0)
        assert set(np.round(peaks * 8).astype(int)) <= set(range(2, frames - 1))
        a = rng.uniform(0, frames / 8.0, size=6)
        assert not (match(a, peaks, 8.0).onset_hit & ~matchable_onsets(a, frames, 8.0)).any()
    every = np.arange(2, 7) / 8.0  # a peak at each possible frame of an 8-frame clip
    a = rng.uniform(0, 1, size=200)
    assert np.array_equal(match(a, every, 8.0).onset_hit, matchable_onsets(a, 8, 8.0))
    with pytest.raises(ValueError, match="at least 3 frames"):
        matchable_onsets([0.1], 2, 8.0)
