"""AV-Align: how well audio onsets and video motion peaks line up (Yariv et al. 2024, Eq. 9).

Detection, shared by every variant
----------------------------------
* Audio onsets ``A`` (seconds): the audio is resampled to ``audio_sample_rate`` (22,050 Hz, what
  ``librosa.load`` hands the official script) with ``soxr_hq`` (``librosa.load``'s resampler),
  then ``librosa.onset.onset_strength`` + ``onset_detect`` (librosa defaults, hop 512) and
  ``frames_to_time``. The official defaults report a spurious onset 0.07 s into any audio with a
  noise floor (zero padding at the start), so a clip with n true hits scores at most n / (n + 1);
  ``onset_pad_mode="reflect"`` with ``onset_delta=0.15`` removes it on annotated synthetic clips
  (choose yours with :mod:`avgen.metrics.av_align_tuning`, as the SVG baseline tuned its detection
  against GreatestHits' hit annotations).
* Video peaks ``V`` (seconds): frames to grayscale; Farneback optical flow between consecutive
  frames (``0.5, 3, 15, 3, 5, 1.2, 0``); the mean flow magnitude of each pair, ``m_1 .. m_{F-1}``;
  the trajectory ``m = (m_1, m_1, m_2, .., m_{F-1})`` has one value per frame (the first repeated).
  Peaks are the strict local maxima ``m[i-1] < m[i] > m[i+1]``, ``1 <= i <= F-2``, with
  ``m[i] >= threshold``, at time ``i / fps``.
* Window: onset ``a`` and peak ``v`` agree when ``v - k/fps < a < v + k/fps`` (open interval,
  ``k = window_frames = 1``: the papers' "window of three frames"). ``a ∈ V`` below means "some
  peak agrees with ``a``", ``v ∈ A`` likewise.

Variants (``AVAlignConfig.variants``; all three by default)
-----------------------------------------------------------
``official``
    The public TempoTokens ``av_align.py`` (version of February 2025). Peaks with ``m < 0.1``
    are dropped. One-to-one matching: onsets in order, each takes the first unused peak in its
    window; ``I`` = number of pairs. ``score = I / (|A| + |V| - I)`` (Eq. 13 of Hayakawa et al.,
    with the one-to-one matching added since). Equal, bit for bit, to the official loop on the
    same onset and peak lists.
``paper``
    Eq. 9 of Yariv et al. 2024 (TempoTokens; Eq. 12 of Hayakawa et al.)::

        score = (Σ_a 1[a ∈ V] + Σ_v 1[v ∈ A]) / (2 |A ∪ V|)

    The two sums are many-to-one (a peak may vouch for several onsets and vice versa). The paper
    does not say how to count ``|A ∪ V|`` when one peak sits near several onsets; here
    ``|A ∪ V| = |A| + |V| - I`` with ``I`` the size of a *maximum* one-to-one matching (the loop of
    ``official`` on time-sorted lists is maximum for windows of equal width). Each sum is at most
    its set's size and ``I <= min(|A|, |V|)``, so the numerator is at most
    ``|A| + |V| <= 2(|A| + |V| - I)``: the score stays in [0, 1] and is 1 exactly when onsets and
    peaks pair off one-to-one. No magnitude threshold.
``pr``
    Eqs. 14-16 of Hayakawa et al. 2025 (appendix VI-A; the joint sounding-video baseline), IoU
    written through two fractions so that several onsets near one peak cannot push it above 1
    (their Eq. 13, the official score without one-to-one matching, can exceed 1)::

        p = Σ_a 1[a ∈ V] / |A|,   r = Σ_v 1[v ∈ A] / |V|,   score = p·r / (p + r - p·r)

    ``score = 0`` when ``p = r = 0``. No magnitude threshold.

Caveats of the shared detection (they hold for the official script too)
-----------------------------------------------------------------------
* librosa reports an onset about 3 hops (0.07 s) after the start of any audio whose noise floor
  is within 80 dB of its peak (the zero padding of the first analysis frames reads as a rise).
  A video peak can match it only at frame 1, so on clips that start still it caps the score
  at ``n / (n + 1)`` for ``n`` true hits.
* Without a magnitude threshold (``paper``, ``pr``) still stretches of a lossy video count the
  codec's frame-to-frame flicker (mean flow ~0.005 px) as peaks; the official 0.1 threshold is
  there to drop them. ``paper_min_magnitude`` / ``pr_min_magnitude`` set one if wanted.

No events
---------
When a clip has neither onsets nor peaks (``|A| = |V| = 0``: a static, silent clip) every
variant scores ``NO_EVENTS_SCORE = 0.0`` (the official script divides by zero there). Not 1.0:
a metric of generated clips must not give its best score to a model that outputs still, silent
video. When exactly one side is empty nothing can agree and every variant gives 0.0 (for ``pr``
the fraction over the empty set is taken as 0).

Entry points: ``align_clip`` (arrays in memory), ``load_av`` (an mp4 with sound, or an mp4 + wav
pair), :class:`avgen.metrics.av_align_metric.AVAlign` (a torchmetrics ``Metric``: mean score per variant,
DDP-safe) and
``plot_alignment`` (a figure like Fig. 4 of TempoTokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from avgen._lazy import lazy_module
from avgen.errors import ConfigError
from avgen.media import OpticalFlow, read_clip, write_bytes_atomic

cv2 = lazy_module("cv2", "optical flow and plots")
librosa = lazy_module("librosa", "audio onset detection")

VARIANTS: tuple[str, ...] = ("official", "paper", "pr")
NO_EVENTS_SCORE = 0.0


PAD_MODES = ("constant", "reflect", "edge", "symmetric", "wrap")


@dataclass(frozen=True)
class AVAlignConfig:
    """Every parameter of AV-Align; defaults are those of the official TempoTokens script."""

    variants: tuple[str, ...] = VARIANTS
    # Audio onsets. None analyses the audio at its own rate.
    audio_sample_rate: int | None = 22050
    resample_type: str = "soxr_hq"
    onset_hop_length: int = 512
    # Padding of the onset envelope's centred STFT frames (librosa's ``pad_mode``). "constant" (zeros) is
    # the official value: where any audio with a noise floor starts, the step from the zero padding to the
    # noise gives a spurious onset 3 hops (0.07 s) in, so a clip with n true hits scores at most n/(n+1).
    # "reflect" removes most of them (synthetic_hits, 40 clips: 8 spurious onsets instead of 42, no hit
    # missed), as the SVG baseline re-tuned its detection against annotated hit times.
    onset_pad_mode: str = "constant"
    # Peak-picking threshold of librosa's onset_detect on the normalised envelope (its default, 0.07, is the
    # official value). Against synthetic_hits annotations (40 clips, 96 hits; avgen.metrics.av_align_tuning),
    # "reflect" with delta 0.1-0.3 gave no spurious and no missed onset.
    onset_delta: float = 0.07
    # Farneback optical flow (cv2.calcOpticalFlowFarneback argument order).
    flow_pyr_scale: float = 0.5
    flow_levels: int = 3
    flow_winsize: int = 15
    flow_iterations: int = 3
    flow_poly_n: int = 5
    flow_poly_sigma: float = 1.2
    flow_flags: int = 0
    # Half-width of the open matching window, in frames (1: the papers' three-frame window).
    window_frames: float = 1.0
    # Peaks with a mean flow magnitude below these are ignored, per variant.
    official_min_magnitude: float = 0.1
    paper_min_magnitude: float = 0.0
    pr_min_magnitude: float = 0.0

    def __post_init__(self):
        variants = (self.variants,) if isinstance(self.variants, str) else tuple(self.variants)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise ConfigError(f"av_align.variants={list(variants)}: expected a non-empty subset of {list(VARIANTS)}")
        object.__setattr__(self, "variants", variants)
        if not self.window_frames > 0:
            raise ConfigError(f"av_align.window_frames={self.window_frames}: expected a positive number of frames")
        if self.onset_pad_mode not in PAD_MODES:
            raise ConfigError(f"av_align.onset_pad_mode={self.onset_pad_mode!r}: expected one of {list(PAD_MODES)} "
                              f"('constant' is the official setting)")
        if not self.onset_delta >= 0:
            raise ConfigError(f"av_align.onset_delta={self.onset_delta}: expected a threshold >= 0 (official: 0.07)")
        if self.audio_sample_rate is not None and self.audio_sample_rate <= 0:
            raise ConfigError(f"av_align.audio_sample_rate={self.audio_sample_rate}: expected a rate in Hz or null "
                             "(analyse at the input rate)")

    def min_magnitude(self, variant: str) -> float:
        return float(getattr(self, f"{variant}_min_magnitude"))


DEFAULT_CONFIG = AVAlignConfig()

# Detection tuned on annotated synthetic_hits clips with avgen.metrics.av_align_tuning (48 clips of 4 s,
# 128x128 at 8 fps, 121 hits): no missed or spurious onset or peak, and the ground-truth pairs score
# 0.965 (pr) where the official defaults score 0.517 (107 detection errors: the start-of-audio onset and
# h264 flicker peaks on still stretches). On the command line:
# 'evaluate.av_align={onset_pad_mode: reflect, onset_delta: 0.15, paper_min_magnitude: 0.05, pr_min_magnitude: 0.05}'
TUNED_ON_SYNTHETIC_HITS = {"onset_pad_mode": "reflect", "onset_delta": 0.15, "paper_min_magnitude": 0.05,
                           "pr_min_magnitude": 0.05}


@dataclass
class Matching:
    """Onsets against peaks for one variant.

    ``pairs``: (I, 2) int indices ``(onset, peak)`` of the one-to-one matching;
    ``onset_hit``: (|A|,) bool, some peak within the window; ``peak_hit``: (|V|,) bool likewise.
    """

    pairs: np.ndarray
    onset_hit: np.ndarray
    peak_hit: np.ndarray


@dataclass
class ClipAlignment:
    """Everything AV-Align measured on one clip (times in seconds, time axis 0 of every array)."""

    fps: float
    onsets: np.ndarray             # (|A|,) audio onset times
    magnitudes: np.ndarray         # (F,) mean optical-flow magnitude per frame
    peaks: dict[str, np.ndarray]   # variant -> (|V|,) video peak times (after that variant's threshold)
    matches: dict[str, Matching]   # variant -> onsets against those peaks
    scores: dict[str, float]       # variant -> score in [0, 1]
    cfg: AVAlignConfig = field(default_factory=AVAlignConfig)


# ------------------------------------------------------------------------------------------
# Detection


def audio_onsets(audio: np.ndarray, sample_rate: int, cfg: AVAlignConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Onset times (seconds, sorted) of mono audio ``(S,)`` sampled at ``sample_rate``."""
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"audio must be mono (S,) with S > 0, got shape {y.shape}; average the channels first")
    sr = int(cfg.audio_sample_rate or sample_rate)
    if sr != sample_rate:
        y = librosa.resample(y, orig_sr=sample_rate, target_sr=sr, res_type=cfg.resample_type)
    hop = cfg.onset_hop_length
    envelope = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop, pad_mode=cfg.onset_pad_mode)
    frames = librosa.onset.onset_detect(onset_envelope=envelope, sr=sr, hop_length=hop, delta=cfg.onset_delta)
    return librosa.frames_to_time(frames, sr=sr, hop_length=hop)


def flow_magnitudes(frames: np.ndarray, cfg: AVAlignConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Mean Farneback flow magnitude per frame, ``(F,)`` float64, from ``(F, H, W, 3)`` uint8 RGB
    (or ``(F, H, W)`` grayscale) frames. Value ``i >= 1`` is the flow from frame ``i - 1`` to ``i``;
    value 0 repeats value 1, as in the official script."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3):
        raise ValueError(f"frames must be uint8 (F, H, W, 3) RGB or (F, H, W) gray, got {frames.dtype} {frames.shape}")
    if len(frames) < 2:
        raise ValueError(f"AV-Align needs at least 2 frames for optical flow, got {len(frames)}")
    gray = frames if frames.ndim == 3 else [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    farneback = OpticalFlow("farneback", cfg.flow_pyr_scale, cfg.flow_levels, cfg.flow_winsize, cfg.flow_iterations,
                            cfg.flow_poly_n, cfg.flow_poly_sigma, cfg.flow_flags)
    pairs = []
    for flow in farneback.between(gray):
        fx, fy = flow[..., 0], flow[..., 1]
        # float32 sqrt(x*x + y*y) in numpy, not cv2.magnitude: OpenCV's SIMD path fuses the
        # multiply-add and its scalar path does not, so which one a pixel takes depends on the
        # buffer's address and the mean moves by an ulp from call to call. On a still stretch
        # (identical frames, identical flow) that jitter makes strict "local maxima" out of
        # nothing, which the unthresholded variants would count as peaks.
        pairs.append(cv2.mean(np.sqrt(fx * fx + fy * fy))[0])
    return np.array([pairs[0], *pairs], dtype=np.float64)


def video_peaks(magnitudes: np.ndarray, fps: float, threshold: float = 0.0) -> np.ndarray:
    """Times ``i / fps`` of the strict local maxima ``m[i-1] < m[i] > m[i+1]`` (``1 <= i <= F-2``)
    of the ``(F,)`` trajectory with ``m[i] >= threshold``."""
    m = np.asarray(magnitudes, dtype=np.float64)
    if len(m) < 3:
        return np.zeros(0)
    i = np.arange(1, len(m) - 1)
    return i[(m[i - 1] < m[i]) & (m[i] > m[i + 1]) & (m[i] >= threshold)] / float(fps)


def match(onsets: Sequence[float], peaks: Sequence[float], fps: float, window_frames: float = 1.0) -> Matching:
    """Onsets against peaks within the open window ``v - k/fps < a < v + k/fps``, ``k = window_frames``.

    The one-to-one pairs follow the official loop: onsets in the given order, each takes the
    first unused peak (in the given order) in its window. On time-sorted lists, which is what
    the detectors return, this greedy matching is a maximum one.
    """
    a = np.asarray(onsets, dtype=np.float64).reshape(-1)
    v = np.asarray(peaks, dtype=np.float64).reshape(-1)
    w = window_frames / fps
    near = (v[None, :] - w < a[:, None]) & (a[:, None] < v[None, :] + w)  # (|A|, |V|)
    used = np.zeros(len(v), dtype=bool)
    pairs = []
    for i in range(len(a)):
        free = np.flatnonzero(near[i] & ~used)
        if len(free):
            used[free[0]] = True
            pairs.append((i, int(free[0])))
    return Matching(pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2), onset_hit=near.any(axis=1),
                    peak_hit=near.any(axis=0))


def matchable_onsets(onsets: Sequence[float], n_frames: int, fps: float, window_frames: float = 1.0) -> np.ndarray:
    """``(|A|,)`` bool: which onsets (seconds) some video peak of an ``n_frames`` clip could match at all.

    :func:`video_peaks` can only report frames ``2 <= i <= F-2``: frame 0 and the last frame have no
    neighbour on one side, and frame 1 never is a strict maximum because the trajectory repeats ``m_1``
    at frame 0 (the official script's layout). An onset is matchable when it lies in some such peak's
    window, ``(2 - k)/fps < a < (F - 2 + k)/fps`` with ``k = window_frames``; with ``k = 1``:
    ``1/fps < a < (F-1)/fps``. An event in the first or last frame interval (a landing cut by the clip's
    start or end) has no peak to match whatever the video shows, so a per-onset check of whether the
    video moved at the sound cannot judge it (1-s windows at 8 fps: 1 frame in 4 is outside).

    Raises:
        ValueError: fewer than 3 frames (no peak is possible) or a non-positive ``fps``.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive frame rate, got {fps}")
    if n_frames < 3:
        raise ValueError(f"a video peak needs at least 3 frames, got {n_frames}")
    a = np.asarray(onsets, dtype=np.float64).reshape(-1)
    return ((2 - window_frames) / fps < a) & (a < (n_frames - 2 + window_frames) / fps)


# ------------------------------------------------------------------------------------------
# Scores


def _variant_score(m: Matching, variant: str) -> float:
    n_a, n_v, n_pairs = len(m.onset_hit), len(m.peak_hit), len(m.pairs)
    if n_a == 0 and n_v == 0:
        return NO_EVENTS_SCORE
    if variant == "official":
        return n_pairs / (n_a + n_v - n_pairs)
    if variant == "paper":
        return (int(m.onset_hit.sum()) + int(m.peak_hit.sum())) / (2 * (n_a + n_v - n_pairs))
    if variant == "pr":
        p = float(m.onset_hit.mean()) if n_a else 0.0
        r = float(m.peak_hit.mean()) if n_v else 0.0
        return 0.0 if p == 0.0 and r == 0.0 else p * r / (p + r - p * r)
    raise ValueError(f"unknown AV-Align variant {variant!r}; expected one of {list(VARIANTS)}")


def score(onsets: Sequence[float], peaks: Sequence[float], fps: float, variant: str = "official",
          cfg: AVAlignConfig = DEFAULT_CONFIG) -> float:
    """AV-Align of one clip from onset and peak times (seconds); ``peaks`` are the variant's peaks,
    already thresholded (see ``video_peaks``). ``official`` keeps the lists' order (the official
    loop); ``paper`` and ``pr`` sort them (their values do not depend on order)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown AV-Align variant {variant!r}; expected one of {list(VARIANTS)}")
    if variant != "official":
        onsets, peaks = np.sort(np.asarray(onsets, dtype=np.float64)), np.sort(np.asarray(peaks, dtype=np.float64))
    return _variant_score(match(onsets, peaks, fps, cfg.window_frames), variant)


def align_clip(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int,
               cfg: AVAlignConfig = DEFAULT_CONFIG) -> ClipAlignment:
    """AV-Align of one clip: frames ``(F, H, W, 3)`` uint8 RGB at ``fps``, audio ``(S,)`` float mono."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive frame rate, got {fps}")
    onsets = audio_onsets(audio, int(sample_rate), cfg)
    magnitudes = flow_magnitudes(frames, cfg)
    peaks = {v: video_peaks(magnitudes, fps, cfg.min_magnitude(v)) for v in cfg.variants}
    matches = {v: match(onsets, peaks[v], fps, cfg.window_frames) for v in cfg.variants}
    scores = {v: _variant_score(matches[v], v) for v in cfg.variants}
    return ClipAlignment(fps=float(fps), onsets=onsets, magnitudes=magnitudes, peaks=peaks, matches=matches,
                         scores=scores, cfg=cfg)


# ------------------------------------------------------------------------------------------
# Files


def load_av(path: str | Path, wav: str | Path | None = None, *, fps=None) -> tuple[np.ndarray, float, np.ndarray, int]:
    """``(frames (F, H, W, 3) uint8 RGB upright, fps, audio (S,) float32 mono, sample_rate)`` of a clip.

    Frames are placed by their timestamps at a constant rate (``fps``, default the file's nominal
    rate), so a variable-frame-rate clip is scored on its real time axis; audio comes from ``wav``
    when given, else from the file's own audio stream (native rate, aligned to the video's start),
    else from the audio file of the same stem beside a silent video (the layout the official
    script reads). See :func:`avgen.media.read_clip`; raises :class:`~avgen.media.MediaError`.
    """
    clip = read_clip(path, fps=fps, audio=wav)
    return clip.frames, float(clip.fps), clip.audio, clip.sample_rate


# ------------------------------------------------------------------------------------------
# Figure

_BG, _INK, _GRID = (255, 255, 255), (40, 40, 40), (225, 225, 225)
_CURVE, _MATCHED, _UNMATCHED, _WAVE = (180, 90, 30), (40, 160, 40), (40, 40, 220), (140, 140, 140)  # BGR
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX (a constant: OpenCV is imported lazily)


def _text(img, s: str, org: tuple[int, int], scale: float = 0.45, color=_INK, thickness: int = 1) -> None:
    cv2.putText(img, s, org, _FONT, scale, color, thickness, cv2.LINE_AA)


def plot_alignment(path: str | Path, frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int,
                   alignment: ClipAlignment, *, n_frames: int = 4, variant: str | None = None,
                   width: int = 960, overwrite: bool = True) -> Path:
    """Draw a clip's alignment as a PNG (like Fig. 4 of TempoTokens) and return its path.

    Rows: ``n_frames`` frames evenly spaced in time; the flow-magnitude trajectory with the video
    peaks (filled: matched, hollow: below the variant's threshold); the waveform with the onsets
    (green: matched, red: not); the one-to-one pairs of ``variant`` (default: ``official`` when
    computed, else the first) joined by lines. The title holds every variant's score. Written
    atomically; an existing file is replaced unless ``overwrite=False``.
    """
    frames = np.asarray(frames)
    fps = float(fps)  # an exact Fraction rate cannot be formatted with :.2f
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    variant = variant or ("official" if "official" in alignment.scores else next(iter(alignment.scores)))
    if variant not in alignment.matches:
        raise ValueError(f"variant {variant!r} was not computed; have {list(alignment.matches)}")
    left, right, gap = 60, 20, 10
    plot_w = width - left - right
    duration = max(len(frames) / fps, len(audio) / sample_rate, 1e-6)

    def x_of(t) -> np.ndarray:
        return np.round(left + np.asarray(t, dtype=np.float64) / duration * plot_w).astype(np.int32)

    # Frame row.
    n_frames = max(1, min(n_frames, len(frames)))
    tile_w = (plot_w - gap * (n_frames - 1)) // n_frames
    tile_h = max(1, round(tile_w * frames.shape[1] / frames.shape[2]))
    picks = np.round(np.linspace(0, len(frames) - 1, n_frames)).astype(int)
    title_h, frames_h, panel_h, legend_h = 44, tile_h + 24, 150, 40
    height = title_h + frames_h + 2 * (panel_h + gap) + legend_h
    img = np.full((height, width, 3), _BG, dtype=np.uint8)

    scores = "   ".join(f"{v} {s:.3f}" for v, s in alignment.scores.items())
    _text(img, f"AV-Align   {scores}", (left, 28), 0.65, thickness=2)
    y0 = title_h
    for k, f in enumerate(picks):
        x = left + k * (tile_w + gap)
        tile = cv2.resize(frames[f], (tile_w, tile_h), interpolation=cv2.INTER_AREA)
        img[y0:y0 + tile_h, x:x + tile_w] = tile[..., ::-1]  # RGB -> BGR
        _text(img, f"frame {f}  t={f / fps:.2f} s", (x, y0 + tile_h + 17), 0.42)

    m = alignment.matches[variant]
    all_peak_idx = np.round(video_peaks(alignment.magnitudes, 1.0)).astype(int)  # every strict maximum
    peak_times = alignment.peaks[variant]
    peak_idx = np.round(peak_times * fps).astype(int)

    # Flow panel.
    fy0 = title_h + frames_h + gap
    mags = alignment.magnitudes
    top = float(mags.max()) * 1.1 or 1.0

    def y_flow(v) -> np.ndarray:
        return np.round(fy0 + panel_h - np.asarray(v) / top * (panel_h - 8)).astype(np.int32)

    cv2.rectangle(img, (left, fy0), (left + plot_w, fy0 + panel_h), _GRID, 1)
    threshold = alignment.cfg.min_magnitude(variant)
    if 0 < threshold < top:
        ty = int(y_flow(threshold))
        for xs in range(left, left + plot_w, 12):
            cv2.line(img, (xs, ty), (min(xs + 6, left + plot_w), ty), _WAVE, 1)
        _text(img, f"threshold {threshold:g}", (left + plot_w - 110, ty - 4), 0.38, _WAVE)
    pts = np.stack([x_of(np.arange(len(mags)) / fps), y_flow(mags)], axis=1)
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, _CURVE, 2, cv2.LINE_AA)
    for i in all_peak_idx:
        if i not in peak_idx:
            cv2.circle(img, tuple(int(c) for c in pts[i]), 5, _WAVE, 1, cv2.LINE_AA)
    for j, i in enumerate(peak_idx):
        cv2.circle(img, tuple(int(c) for c in pts[i]), 6, _MATCHED if m.peak_hit[j] else _UNMATCHED, -1, cv2.LINE_AA)
    _text(img, "flow", (8, fy0 + 20), 0.45)
    _text(img, f"max {top / 1.1:.2f}", (8, fy0 + 40), 0.38)

    # Waveform panel: min/max envelope per pixel column.
    wy0 = fy0 + panel_h + gap
    mid, half = wy0 + panel_h // 2, panel_h // 2 - 6
    cv2.rectangle(img, (left, wy0), (left + plot_w, wy0 + panel_h), _GRID, 1)
    peak_amp = float(np.abs(audio).max()) or 1.0
    cols = x_of(np.arange(len(audio)) / sample_rate) - left
    starts = np.flatnonzero(np.r_[True, np.diff(cols) > 0])
    lo, hi = np.minimum.reduceat(audio, starts), np.maximum.reduceat(audio, starts)
    for c, a, b in zip(cols[starts], lo, hi):
        cv2.line(img, (left + int(c), int(mid - b / peak_amp * half)), (left + int(c), int(mid - a / peak_amp * half)),
                 _WAVE, 1)
    for t, hit in zip(alignment.onsets, m.onset_hit):
        x = int(x_of(t))
        cv2.line(img, (x, wy0), (x, wy0 + panel_h), _MATCHED if hit else _UNMATCHED, 2)
    _text(img, "audio", (8, wy0 + 20), 0.45)

    # One-to-one pairs: peak on the curve to the onset line.
    for a, j in m.pairs:
        px, py = (int(c) for c in pts[peak_idx[j]])
        cv2.line(img, (px, py), (int(x_of(alignment.onsets[a])), wy0), _MATCHED, 1, cv2.LINE_AA)

    # Time axis and legend.
    ly = wy0 + panel_h + 16
    for t in np.arange(0.0, duration + 1e-9, 0.5 if duration <= 8 else 1.0 if duration <= 20 else 5.0):
        x = int(x_of(t))
        cv2.line(img, (x, wy0 + panel_h), (x, wy0 + panel_h + 4), _INK, 1)
        _text(img, f"{t:g}", (x - 6, ly), 0.38)
    _text(img, f"pairs and colours: {variant}  ({len(alignment.onsets)} onsets, {len(peak_times)} peaks, "
               f"{len(m.pairs)} pairs; seconds)", (left, ly + 14), 0.4)

    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the AV-Align plot for {path}")
    return write_bytes_atomic(path, png.tobytes(), overwrite=overwrite)


__all__ = [
    "AVAlignConfig",
    "ClipAlignment",
    "Matching",
    "NO_EVENTS_SCORE",
    "VARIANTS",
    "align_clip",
    "audio_onsets",
    "flow_magnitudes",
    "load_av",
    "match",
    "plot_alignment",
    "score",
    "video_peaks",
]
