"""Onset accuracy and onset AP: do the sound's hits fall where the annotated events are? (Foley timing)

The protocol of CondFoleyGen (Du et al., "Conditional Generation of Audio from Video via Foley
Analogies", CVPR 2023; XYPB/CondFoleyGen ``predict_onset.py@c565db7``) as MMAudio runs it on Greatest
Hits (hkchengrex/MMAudio ``eval_onsets.py@974010a``, "Modified from CondFoleyGen/predict_onset.py"), per
clip, then averaged over clips:

1. Audio (``prepare_audio``): mono (mean of the channels), resampled to 22 050 Hz (``librosa.load``'s
   ``soxr_hq``: ``eval_onsets.py:37``), the first ``seconds`` kept (8: ``eval_onsets.py:15,38``).
2. Onsets (``detect_onsets``): ``librosa.onset.onset_detect(y, sr=22050, units="samples", delta=0.3)``,
   every other argument librosa's default (hop 512, ``normalize=True``) (``eval_onsets.py:39``,
   ``predict_onset.py:45-47``).
3. Amplitude (``normalised_amplitude``): MMAudio ``(x - min) / (max - min + 1e-6)`` of the signed
   waveform (``eval_onsets.py:40``, ``amplitude="signed"``); CondFoleyGen ``|x|`` min-max scaled without
   epsilon (``predict_onset.py:72-73``, ``amplitude="abs"``). An onset's **confidence** is the largest
   amplitude within ``± confidence_window`` (0.05 s, ``int(0.05 · 22050)`` samples: ``eval_onsets.py:14,19``).
4. Non-maximum suppression (``onset_nms``): onsets by decreasing confidence; each kept one drops the
   others closer than ``nms_window`` (0.05 s) (``eval_onsets.py:18-33``).
5. Matching (``match_events``): events in time order; each takes, among the unused onsets with
   ``|onset − event| < window`` (0.3 s: MMAudio compares with ``delta · 22050``, the detection threshold
   reused as the tolerance, ``eval_onsets.py:61,91``; CondFoleyGen ``--delta 0.1``, ``predict_onset.py:16,86``),
   the one of largest amplitude at its own sample → a hit, scored with the onset's confidence; no
   candidate → a miss, scored 0. Unused onsets are false positives scored with their confidence
   (``eval_onsets.py:89-114``).
6. ``acc = hits / events`` (``eval_onsets.py:117``) — recall within the tolerance, MMAudio's "Acc." and
   CondFoleyGen's "Onset Acc." — and ``ap`` = average precision of (hit or miss = 1, false positive = 0)
   ranked by score, sklearn's ``average_precision_score`` (``eval_onsets.py:118``; :func:`average_precision`).
   ``count_acc = 1[#events == #onsets before NMS]``, CondFoleyGen's "# Onset Acc." (``predict_onset.py:190``).

Ground truth (``ground_truth``): ``events`` (default) — the annotated event times, as MMAudio reads
Greatest Hits' ``_times.txt`` (``eval_onsets.py:45-54``: times < ``seconds``); ``detected`` —
onsets detected (step 2, no NMS) on the reference audio, as CondFoleyGen's ``predict_onset.py:162-185``
does (its test clips carry no annotations).

What the protocol implies (kept): AP ranks only the detected onsets' confidences against each other and
against the misses' 0, so a clip whose every detected onset is matched gets AP 1 however many events it
misses (every item is then a positive) — a clip with events and no onset gets AP 1 and accuracy 0;
accuracy is the column that counts misses. (The scripts also stop matching once every onset is used,
``eval_onsets.py:109-110``; as every item is then a positive, that changes nothing and is not kept.)

Where avgen departs from the scripts (bugs, not protocol):

* Candidates are compared by the amplitude at their own sample, as CondFoleyGen does
  (``predict_onset.py:91``); MMAudio's ``eval_onsets.py:96`` indexes the *full* onset list with positions
  in the shrinking list of unused ones.
* NMS drops every onset within the window; the scripts remove items from the list they iterate over
  (``eval_onsets.py:30-32``), which skips the neighbour of each removed onset.
* The confidence window is clipped at the start of the audio; the scripts' slice with a negative
  start is empty for an onset in the first 0.05 s, and ``np.max`` of it raises.
* Ties (equal confidence in NMS, equal amplitude among candidates) go to the later onset, as the
  scripts' ``np.argsort`` (stable for their list lengths) does.
* A clip without events is not scored (reported); the scripts give it accuracy 0 and sklearn's AP
  of an item list without positives.
* CondFoleyGen's audio is decoded by moviepy (FFmpeg's resampler) and cut to 2 s; here
  ``librosa.resample(soxr_hq)`` and ``seconds`` (set 2 for its setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics import Metric

GROUND_TRUTHS = ("events", "detected")
AMPLITUDES = ("signed", "abs")


@dataclass(frozen=True)
class OnsetConfig:
    """The ``evaluate.onset`` block; defaults are MMAudio's ``eval_onsets.py@974010a`` (module docstring).

    ``sample_rate`` (Hz) the audio is resampled to; ``seconds`` it is cut to (None: whole clip), and events
    at or after it are dropped; ``delta``: ``onset_detect``'s threshold; ``window``: matching tolerance (s,
    open); ``nms_window`` and ``confidence_window`` (s); ``amplitude``: ``signed`` (MMAudio) or ``abs``
    (CondFoleyGen); ``ground_truth``: ``events`` or ``detected``. Raises ``ValueError`` for a value outside
    its range."""

    sample_rate: int = 22050
    seconds: float | None = 8.0
    delta: float = 0.3
    window: float = 0.3
    nms_window: float = 0.05
    confidence_window: float = 0.05
    amplitude: str = "signed"
    ground_truth: str = "events"

    def __post_init__(self):
        if self.ground_truth not in GROUND_TRUTHS:
            raise ValueError(f"ground_truth={self.ground_truth!r}: expected one of {GROUND_TRUTHS}")
        if self.amplitude not in AMPLITUDES:
            raise ValueError(f"amplitude={self.amplitude!r}: expected one of {AMPLITUDES}")
        for name in ("window", "nms_window", "confidence_window", "sample_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive number")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds={self.seconds!r}: expected a positive length or null (the whole clip)")

    def samples(self, seconds: float) -> int:
        """``int(seconds · sample_rate)``, as the scripts' ``int(0.05 * 22050)``."""
        return int(seconds * self.sample_rate)


def prepare_audio(audio: np.ndarray, sample_rate: int, cfg: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Mono float32 ``(S',)`` at ``cfg.sample_rate``, cut to ``cfg.seconds``, from ``(S,)`` or channels-first
    ``(C, S)`` audio at ``sample_rate`` Hz (channels averaged, as ``librosa.load(mono=True)``). Raises
    ``ValueError`` for empty audio."""
    import librosa

    y = np.asarray(audio, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=0)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"audio must be (S,) or (C, S) with S > 0, got shape {np.shape(audio)}")
    if int(sample_rate) != cfg.sample_rate:
        y = librosa.resample(y, orig_sr=int(sample_rate), target_sr=cfg.sample_rate, res_type="soxr_hq")
    if cfg.seconds is not None:
        y = y[:cfg.samples(cfg.seconds)]
    return np.ascontiguousarray(y, dtype=np.float32)


def detect_onsets(y: np.ndarray, cfg: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Onset positions (int64 samples at ``cfg.sample_rate``, sorted) of prepared audio ``y`` (S,):
    ``librosa.onset.onset_detect(y=y, sr, units="samples", delta=cfg.delta)``, librosa's defaults otherwise."""
    import librosa

    return np.asarray(librosa.onset.onset_detect(y=y, sr=cfg.sample_rate, units="samples", delta=cfg.delta),
                      dtype=np.int64)


def normalised_amplitude(y: np.ndarray, kind: str = "signed") -> np.ndarray:
    """``(S,)`` float64 in [0, 1]: ``signed`` = (y − min) / (max − min + 1e-6) (MMAudio), ``abs`` = |y| scaled
    to [0, 1] by its min and max (CondFoleyGen; a constant |y| gives zeros instead of the script's NaN)."""
    y = np.asarray(y, dtype=np.float64)
    if kind == "signed":
        return (y - y.min()) / (y.max() - y.min() + 1e-6)
    if kind != "abs":
        raise ValueError(f"amplitude={kind!r}: expected one of {AMPLITUDES}")
    a = np.abs(y)
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def onset_confidence(amplitude: np.ndarray, onsets: Sequence[int], half_width: int) -> np.ndarray:
    """``(N,)`` float64: the largest ``amplitude`` in ``[o − half_width, o + half_width)`` (clipped to the audio)
    for each onset ``o`` (samples)."""
    return np.array([amplitude[max(int(o) - half_width, 0):int(o) + half_width].max() for o in onsets],
                    dtype=np.float64)


def _last_argmax(values: np.ndarray) -> int:
    """Index of the largest value, the last one among ties (``np.argsort(v, kind="stable")[-1]``)."""
    return int(len(values) - 1 - np.argmax(values[::-1]))


def onset_nms(onsets: Sequence[int], confidence: Sequence[float], window: int) -> np.ndarray:
    """Non-maximum suppression: onsets (samples) by decreasing confidence (ties: the later one first), each kept
    one dropping every remaining onset closer than ``window`` samples. Returns the kept onsets, sorted."""
    onsets = np.asarray(onsets, dtype=np.int64)
    order = np.argsort(np.asarray(confidence, dtype=np.float64), kind="stable")[::-1]
    alive = np.ones(len(onsets), dtype=bool)
    kept = []
    for i in order:
        if not alive[i]:
            continue
        kept.append(onsets[i])
        alive &= np.abs(onsets - onsets[i]) >= window
    return np.sort(np.asarray(kept, dtype=np.int64))


@dataclass
class EventMatch:
    """What :func:`match_events` found: ``hits`` (events matched), ``labels`` (1 = event, 0 = false positive)
    and ``scores`` of the items AP ranks, ``matched`` ((event index, onset sample) pairs)."""

    hits: int
    labels: np.ndarray
    scores: np.ndarray
    matched: list[tuple[int, int]]


def match_events(events: Sequence[float], onsets: Sequence[int], amplitude: np.ndarray,
                 cfg: OnsetConfig = OnsetConfig()) -> EventMatch:
    """Greedy matching of ground-truth ``events`` (samples, float, in time order) with detected ``onsets``
    (samples, after NMS) on ``amplitude`` (:func:`normalised_amplitude`), step 5 of the module docstring."""
    window = cfg.window * cfg.sample_rate
    half = cfg.samples(cfg.confidence_window)
    unused = [int(o) for o in onsets]
    labels: list[int] = []
    scores: list[float] = []
    matched: list[tuple[int, int]] = []
    for k, event in enumerate(events):
        candidates = [o for o in unused if abs(o - event) < window]
        if not candidates:
            labels.append(1)
            scores.append(0.0)
            continue
        best = candidates[_last_argmax(amplitude[candidates])]
        labels.append(1)
        scores.append(float(onset_confidence(amplitude, [best], half)[0]))
        matched.append((k, best))
        unused.remove(best)
    for o in unused:
        labels.append(0)
        scores.append(float(onset_confidence(amplitude, [o], half)[0]))
    return EventMatch(len(matched), np.array(labels, dtype=np.int64), np.array(scores, dtype=np.float64), matched)


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """sklearn's ``average_precision_score``: AP = Σ_n (R_n − R_{n−1}) P_n over the distinct scores taken as
    thresholds in decreasing order (P_n, R_n: precision and recall of the items scoring ≥ the n-th threshold;
    R_0 = 0). ``labels`` 1 (positive) / 0, ``scores`` (N,). Raises ``ValueError`` without a positive.

    >>> average_precision([1, 0, 1], [0.9, 0.8, 0.1])  # P = 1, 2/3 at R = 1/2, 1
    0.8333333333333333
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0:
        raise ValueError("average precision needs at least one positive item")
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last item of each run of equal scores
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def reference_onsets(audio: np.ndarray, sample_rate: int, cfg: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """The ground truth of ``ground_truth="detected"``: onsets (int64 samples at ``cfg.sample_rate``) detected on
    the reference's audio ((S,) or (C, S) at ``sample_rate`` Hz), without NMS (CondFoleyGen ``predict_onset.py``).
    Raises ``ValueError`` for empty audio."""
    return detect_onsets(prepare_audio(audio, sample_rate, cfg), cfg)


def clip_onset_scores(audio: np.ndarray, sample_rate: int, events: Sequence[float] | None = None,
                      reference: tuple[np.ndarray, int] | None = None,
                      cfg: OnsetConfig = OnsetConfig(), truth_onsets: np.ndarray | None = None) -> dict[str, float]:
    """One clip's ``{"onset_acc", "onset_ap", "onset_count_acc", "onset_events", "onset_detected"}`` (the last
    two: ground-truth events after the ``seconds`` cut, onsets after NMS) of generated ``audio`` ((S,) or
    (C, S) at ``sample_rate`` Hz) against ``events`` (seconds from the clip start; ``ground_truth="events"``)
    or the onsets detected on ``reference`` = (audio, rate) (``ground_truth="detected"``), or given already
    detected as ``truth_onsets`` (:func:`reference_onsets`, e.g. from the feature store).

    Raises:
        ValueError: no ground truth (no events, or none before ``seconds``), empty audio.
    """
    if cfg.ground_truth == "detected":
        if truth_onsets is None and reference is None:
            raise ValueError("ground_truth=detected needs the reference audio")
        detected = reference_onsets(*reference, cfg) if truth_onsets is None else np.asarray(truth_onsets)
        truth = detected.astype(np.float64)
    else:
        if events is None:
            raise ValueError("no annotated events")
        times = np.asarray(events, dtype=np.float64)
        if cfg.seconds is not None:
            times = times[times < cfg.seconds]
        truth = np.sort(times) * cfg.sample_rate
    if len(truth) == 0:
        raise ValueError("no ground-truth onset" + (f" before {cfg.seconds:g} s" if cfg.seconds else "")
                         + f" ({'in the reference audio' if cfg.ground_truth == 'detected' else 'events'})")
    y = prepare_audio(audio, sample_rate, cfg)
    raw = detect_onsets(y, cfg)
    amplitude = normalised_amplitude(y, cfg.amplitude)
    onsets = onset_nms(raw, onset_confidence(amplitude, raw, cfg.samples(cfg.confidence_window)),
                       cfg.samples(cfg.nms_window))
    m = match_events(truth, onsets, amplitude, cfg)
    return {"onset_acc": m.hits / len(truth), "onset_ap": average_precision(m.labels, m.scores),
            "onset_count_acc": float(len(truth) == len(raw)), "onset_events": len(truth),
            "onset_detected": len(onsets)}


class OnsetScores(Metric):
    """Mean over clips of onset accuracy, onset AP and onset-count accuracy (:func:`clip_onset_scores`); states
    are the three sums and the clip count (float64, summed across processes)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    KEYS = ("onset_acc", "onset_ap", "onset_count_acc")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for key in self.KEYS:
            self.add_state(key, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: dict[str, float]) -> None:
        """Add one clip's :func:`clip_onset_scores`."""
        for key in self.KEYS:
            setattr(self, key, getattr(self, key) + float(scores[key]))
        self.count = self.count + 1

    def compute(self) -> dict[str, float]:
        """``{key: mean over clips}``; raises ``ValueError`` before any clip."""
        if self.count.item() == 0:
            raise ValueError("OnsetScores has no clips: call update(...) before compute()")
        return {key: float(getattr(self, key) / self.count) for key in self.KEYS}
