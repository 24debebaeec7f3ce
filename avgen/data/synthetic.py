"""Synthetic sounding videos with exact ground truth: objects dropped onto a floor.

This is the default data set of the project and the fixture of its tests. ``generate_clip(seed,
geometry)`` draws one clip from ``np.random.default_rng(seed)`` alone (no global RNG, no file I/O,
numpy only), so the same arguments always give bit-identical frames, audio and metadata.

Scene
-----
A static side view of a floor slab of one surface material (``SURFACES``: wood, metal, glass,
stone) under a wall, and one object per hit, all of one class: a shape (``SHAPES``: ball, cube,
ring), a named colour (``COLOURS``) and a size. The wall is a vertical gradient between two
random colours whose luma stays at least 85 levels from the object's, so the object also stands
out in grayscale; the floor is textured by its material (planks and grain, brushed metal, glass
reflections, speckled stone). Objects are drawn with anti-aliased edges from a signed-distance
function (soft coverage mask, evaluated only inside the object's bounding box) and shading.

Events and motion
-----------------
1. Hit times are drawn first, on a 1e-4 s grid: ``n`` in ``[min_events, max_events]`` (capped at
   ``max_events_that_fit``), uniformly among all placements with every gap at least
   ``min_event_gap(geometry) = max(3 / fps, 0.25 s)`` and every hit inside
   ``event_window(geometry) = [2 / fps, seconds - 2 / fps]``.
2. Object ``k`` hangs still above its own landing spot (spots at least 2.5 radii apart) until it
   is released, falls with constant acceleration for 3 to 6 frame periods and lands dead (no
   bounce) on the floor at ``events[k]``, where it stays. Its speed is therefore largest at the
   hit, it is at rest before its release and after its hit, and the camera, the background and
   every other object are still meanwhile. The object's frame-to-frame displacement grows over
   the frame pairs up to the hit and is zero after it, so the mean optical-flow magnitude peaks
   once per hit, on the last frame pair before the hit or on the pair that contains it (checked
   with OpenCV Farneback on about 2,000 hits at 64x64 to 256x256, 4 to 30 fps; at 32x32 the
   flow estimate itself is unreliable).
3. Why not bouncing: across a frame pair that contains a bounce, the way down and the way up
   cancel, and for some sub-frame phases of the hit the flow peak lands on the next pair, more
   than a frame after the hit. Why short falls: over a long fall the displacement grows by only
   a few percent per frame, less than the estimation noise of dense optical flow.
4. The landing speed is capped at 0.7 object radii per frame period (and 2.5 frame heights per
   second); beyond about one radius per frame Farneback optical flow stops growing with the
   displacement near the floor. The drop height is capped so the object starts inside the frame.
5. Choices that keep dense optical flow well posed on the static parts: floor and wall carry a
   faint aperiodic isotropic grain (periodic or streaky texture lets the flow of a still floor
   lock onto a wrong displacement); pixel values are soft-clipped to [2, 253] (no saturated flat
   patches); the horizon's grayscale step is 20 to 40 levels (against a high-contrast straight
   edge Farneback's per-pixel solve is near singular and returns spurious flow even between
   identical frames); shading is vertical (quantised diagonal ramps on flat faces make flow
   jitter), and the cube has well-rounded corners.

Sound
-----
Every hit is an impact sound that starts sample-exactly at the hit time ``t``: sample ``n``
carries the sound at time ``n / sample_rate - t`` for every ``n >= ceil(t * sample_rate)``
(``meta["event_samples"]``) and nothing before. It is modal synthesis: a sum of exponentially
damped sinusoids starting at phase zero, whose frequencies, decays and gains come from the
surface material (wood: low and short; stone: low, very short and noisy; metal: inharmonic and
ringing; glass: high and ringing) and from the object (a few modes of its own, pitched by its
size), jittered per clip and per hit, plus a short band-limited noise burst at the attack. The
amplitude is proportional to the landing speed. Modes at or above 0.45 * sample_rate are
dropped. A quiet coloured background noise (level drawn per clip, ``meta["noise_db"]``: its RMS
relative to the impacts' peak) runs through the clip; the sum is peak-normalised to ``PEAK``.

Ground-truth guarantees
-----------------------
* ``frames``: ``(num_frames, height, width, 3)`` uint8 RGB; frame ``f`` shows the scene at time
  ``f / fps`` (any rational rate: 29.97 fps is 30000/1001, 30 frames per second of clip); object
  ``k`` is drawn landed from frame ``ceil(events[k] · fps)`` on, computed exactly.
  ``audio``: ``(num_samples,)`` float32 mono with ``max |audio| == PEAK < 1``.
* ``meta["events"]``: the hit times in seconds, sorted, multiples of 1e-4 s that are exactly the
  values the renderer used; gaps ``>= min_event_gap``; inside ``event_window``;
  ``min_events <= len(events) <= max_events``.
* At ``events[k]`` object ``k`` (centre ``meta["positions"][k]``, in pixels) touches the floor
  (row ``meta["floor_y"]``) at its top speed (``meta["impact_speeds"][k]``, frame heights per
  second) and its impact sound begins; before it the audio holds only the background noise and
  the decaying tails of earlier impacts.
* ``meta`` is JSON-serialisable (str, int, float, lists and dicts of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from avgen.data.geometry import ClipGeometry, fps_json

__all__ = [
    "CLASS_NAMES",
    "COLOURS",
    "ClipGeometry",
    "PEAK",
    "SHAPES",
    "SURFACES",
    "SyntheticClip",
    "event_window",
    "generate_clip",
    "max_events_that_fit",
    "min_event_gap",
]

SHAPES: tuple[str, ...] = ("ball", "cube", "ring")
SURFACES: tuple[str, ...] = ("wood", "metal", "glass", "stone")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (250, 128, 20),
    "yellow": (240, 215, 40),
    "green": (44, 160, 44),
    "blue": (35, 90, 220),
    "purple": (148, 80, 189),
    "white": (238, 238, 238),
    "black": (28, 28, 28),
}
#: ``meta["label"]`` values, in a fixed order (``meta["class_index"]`` indexes this tuple).
CLASS_NAMES: tuple[str, ...] = tuple(f"{s} hitting {m}" for s in SHAPES for m in SURFACES)
PEAK = 0.9  # peak of every clip's audio

TICK = 1e-4  # event times are multiples of this (seconds)
MIN_GAP_FRAMES = 3
MIN_GAP_SECONDS = 0.25
EDGE_FRAMES = 2  # no event within this many frame periods of either end

_ADJECTIVE = {"wood": "wooden", "metal": "metal", "glass": "glass", "stone": "stone"}
_NUMBER = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}

# Motion.
_CONTACT_STEP = 0.7     # max displacement per frame at landing, in object radii
_MAX_SPEED = 2.5        # max landing speed, in frame heights per second
_SEPARATION = 2.5       # min distance between two objects' centres, in radii
_FALL_FRAMES = (3.0, 6.0)  # duration of a fall, in frame periods


@dataclass
class SyntheticClip:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB, time is axis 0
    audio: np.ndarray   # (S,) float32 mono in [-1, 1]
    meta: dict          # JSON-serialisable ground truth (see module docstring)


# --------------------------------------------------------------------------------------------
# Event times


def min_event_gap(geometry: ClipGeometry) -> float:
    """Smallest gap between two hits, seconds: ``max(3 / fps, 0.25)``."""
    return max(MIN_GAP_FRAMES / float(geometry.fps), MIN_GAP_SECONDS)


def event_window(geometry: ClipGeometry) -> tuple[float, float]:
    """``(first, last)``: every hit time lies in this closed interval (seconds)."""
    edge = EDGE_FRAMES / float(geometry.fps)
    return edge, geometry.seconds - edge


def _tick_bounds(geometry: ClipGeometry) -> tuple[int, int, int]:
    lo, hi = event_window(geometry)
    return (math.ceil(lo / TICK - 1e-6), math.floor(hi / TICK + 1e-6),
            math.ceil(min_event_gap(geometry) / TICK - 1e-6))


def max_events_that_fit(geometry: ClipGeometry) -> int:
    """How many hits fit in ``event_window`` with gaps of at least ``min_event_gap``."""
    lo, hi, gap = _tick_bounds(geometry)
    return 0 if hi < lo else (hi - lo) // gap + 1


def _sample_event_ticks(rng: np.random.Generator, geometry: ClipGeometry,
                        min_events: int, max_events: int) -> np.ndarray:
    if min_events < 1 or max_events < min_events:
        raise ValueError(f"need 1 <= min_events <= max_events, got {min_events}, {max_events}")
    fit = max_events_that_fit(geometry)
    if fit < min_events:
        raise ValueError(f"{geometry} fits at most {fit} hits (gap {min_event_gap(geometry):.3f} s, "
                         f"window {event_window(geometry)}), min_events={min_events}")
    n = int(rng.integers(min_events, min(max_events, fit) + 1))
    lo, hi, gap = _tick_bounds(geometry)
    slack = hi - lo - (n - 1) * gap  # >= 0 because n <= fit
    # Uniform over all placements: sorted offsets in [0, slack], then spread by the minimum gap.
    offsets = np.sort(rng.integers(0, slack + 1, size=n))
    return lo + offsets + np.arange(n) * gap


# --------------------------------------------------------------------------------------------
# Colours and background


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _with_luma(rgb: np.ndarray, target: float) -> np.ndarray:
    """Mix ``rgb`` with black or white so its luma is ``target``."""
    rgb = np.asarray(rgb, dtype=np.float64)
    luma = _luma(rgb)
    if target <= luma:
        return rgb * (target / max(luma, 1e-6))
    beta = (target - luma) / max(255.0 - luma, 1e-6)
    return rgb + (255.0 - rgb) * beta


def _match_luma(image: np.ndarray, target: float) -> np.ndarray:
    """Scale toward black, or mix toward white, so the mean luma of ``image`` becomes ``target``."""
    luma = float(np.mean(image @ np.array([0.299, 0.587, 0.114])))
    if target <= luma:
        return image * (target / max(luma, 1e-6))
    return image + (255.0 - image) * ((target - luma) / max(255.0 - luma, 1e-6))


def _soft_clip(x: np.ndarray, lo: float = 12.0, hi: float = 243.0, knee: float = 10.0) -> np.ndarray:
    """Squash values smoothly into ``(lo - knee, hi + knee)``: no saturated flat patches (on which
    optical flow is undefined, and Farneback returns garbage even between identical frames)."""
    x = x.copy()
    high, low = x > hi, x < lo
    x[high] = hi + knee * np.tanh((x[high] - hi) / knee)
    x[low] = lo - knee * np.tanh((lo - x[low]) / knee)
    return x


def _contrasting_lumas(rng: np.random.Generator, object_luma: float, count: int,
                       distance: float = 85.0) -> np.ndarray:
    """``count`` lumas in [15, 240], all on the same side of ``object_luma`` and at least
    ``distance`` away from it (so a gradient between them never crosses the object's luma)."""
    below = (15.0, object_luma - distance)
    above = (object_luma + distance, 240.0)
    lengths = np.array([max(0.0, b - a) for a, b in (below, above)])
    lo, hi = below if rng.uniform(0.0, lengths.sum()) < lengths[0] else above
    return rng.uniform(lo, hi, size=count)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: blotchy noise in [0, 1] of shape (h, w)."""
    gh, gw = max(2, round(cells * h / max(h, w)) + 1), max(2, cells + 1)
    grid = rng.random((gh, gw))
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0 = np.minimum(ys.astype(int), gh - 2)
    x0 = np.minimum(xs.astype(int), gw - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def _streaks(rng: np.random.Generator, h: int, w: int, length: float) -> np.ndarray:
    """Noise of unit variance smeared along x over ``length`` pixels (grain, brushing)."""
    k = max(1, int(round(length)))
    c = np.cumsum(rng.standard_normal((h, w + k)), axis=1)
    return (c[:, k:] - c[:, :-k]) / math.sqrt(k)


def _floor_texture(rng: np.random.Generator, surface: str, h: int, w: int, scale: float,
                   sky_bottom: np.ndarray) -> np.ndarray:
    """(h, w, 3) float RGB texture of the floor slab; ``scale`` is the frame size in pixels.

    All textures are aperiodic (noise based): on a periodic texture, dense optical flow can lock
    onto a displacement of one whole period although the floor never moves.
    """
    yy = np.arange(h, dtype=np.float64)[:, None]
    if surface == "wood":
        base = np.array([(150, 100, 55), (120, 78, 40), (175, 125, 75), (95, 62, 35)][rng.integers(4)], float)
        # Planks of random heights, each with its own tone, separated by dark seams; streaky grain.
        edges = np.cumsum(np.maximum(rng.uniform(0.025, 0.06, size=h) * scale, 2.0))
        plank = np.searchsorted(edges, np.arange(h), side="right")
        seam = np.isin(np.arange(h), np.floor(edges).astype(int))
        tone = 1.0 + 0.10 * (rng.random(h + 1)[plank] - 0.5)
        grain = 0.06 * _streaks(rng, h, w, scale * 0.08)
        tex = base * ((tone[:, None] + grain) * np.where(seam, 0.7, 1.0)[:, None])[..., None]
    elif surface == "metal":
        g = rng.uniform(125, 175)
        base = np.array([g, g * 1.02, g * 1.08])
        brushed = 0.03 * _streaks(rng, h, w, scale * 0.15) + 0.015 * rng.standard_normal((h, w))
        sheen = 0.18 * np.exp(-((yy - 0.3 * h) / max(1.0, 0.35 * h)) ** 2)
        tex = base * (1.0 + brushed + sheen)[..., None]
    elif surface == "glass":
        base = 0.55 * np.array([175.0, 215.0, 230.0]) + 0.45 * sky_bottom
        xx = np.arange(w, dtype=np.float64)[None, :]
        shine = np.zeros((h, w))
        for _ in range(int(rng.integers(2, 4))):  # a few diagonal reflections at random places
            offset, width = rng.uniform(0, w + 1.6 * h), max(1.5, scale * rng.uniform(0.01, 0.03))
            shine += 0.22 * np.exp(-(((xx + 1.6 * yy) - offset) / width) ** 2)
        depth = 0.12 * (yy / max(1, h))
        tex = base * (1.0 + shine - depth + 0.012 * rng.standard_normal((h, w)))[..., None]
    elif surface == "stone":
        g = rng.uniform(115, 160)
        base = np.array([g * 1.04, g, g * 0.93])
        blotch = _smooth_noise(rng, h, w, cells=max(2, round(w / max(4.0, scale * 0.08))))
        speckle = rng.standard_normal((h, w)) * 0.06
        tex = base * (0.85 + 0.3 * blotch + speckle)[..., None]
    else:
        raise ValueError(f"unknown surface {surface!r}; expected one of {SURFACES}")
    tex[0] *= 1.25  # lit top edge of the slab
    # Fine isotropic grain on every material: it pins the optical flow of the static floor to
    # zero (streaky or flat texture alone leaves the flow along the streaks unconstrained).
    return tex * (1.0 + 0.05 * rng.standard_normal((h, w)))[..., None]


# --------------------------------------------------------------------------------------------
# Object rendering


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape of outer radius ``radius``."""
    if shape == "ball":
        return np.sqrt(dx * dx + dy * dy) - radius
    if shape == "cube":
        half, corner = 0.86 * radius, 0.4 * radius  # well rounded: flat edges make flow jumpy
        qx = np.abs(dx) - (half - corner)
        qy = np.abs(dy) - (half - corner)
        outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0.0) - corner
    if shape == "ring":
        mid, half_width = 0.74 * radius, 0.26 * radius
        return np.abs(np.sqrt(dx * dx + dy * dy) - mid) - half_width
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _draw_object(frame: np.ndarray, shape: str, colour: np.ndarray, cx: float, cy: float,
                 radius: float) -> None:
    """Alpha-blend the object centred at ``(cx, cy)`` (pixels) into ``frame`` in place."""
    height, width = frame.shape[:2]
    reach = radius + 2.0
    x0, x1 = max(0, int(math.floor(cx - reach))), min(width, int(math.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(math.floor(cy - reach))), min(height, int(math.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    # Pixel (i, j) covers [j, j+1) x [i, i+1); sample at its centre.
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    alpha = np.clip(0.5 - _signed_distance(shape, dx, dy, radius), 0.0, 1.0)  # pixel coverage
    # Shading: lit from above (a vertical ramp only: quantised diagonal ramps on flat faces make
    # optical flow jitter); the ball also gets a specular highlight.
    shade = 1.0 + 0.22 * np.clip(-dy / radius, -1.0, 1.0)
    rgb = colour[None, None, :] * shade[..., None]
    if shape == "ball":
        spot = np.exp(-((dx + 0.35 * radius) ** 2 + (dy + 0.4 * radius) ** 2) / (0.09 * radius * radius))
        rgb = rgb + (255.0 - rgb) * (0.6 * spot)[..., None]
    patch = frame[y0:y1, x0:x1].astype(np.float32)
    alpha = alpha[..., None]
    blended = patch + (np.clip(rgb, 0.0, 255.0) - patch) * alpha
    frame[y0:y1, x0:x1] = (blended + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Motion


def _drop_heights(times: np.ndarray, hit: float, speed: float, start: float) -> np.ndarray:
    """Height above the floor of an object's bottom, dropped from rest at height ``start`` so that
    it lands at time ``hit`` with ``speed`` (constant acceleration), and resting after."""
    duration = 2.0 * start / speed
    s = np.clip(hit - times, 0.0, duration)  # time left before the landing
    return speed * s - (0.5 * speed / duration) * s * s


# --------------------------------------------------------------------------------------------
# Sound


@dataclass(frozen=True)
class _Modes:
    freqs: tuple[float, ...]    # Hz
    decays: tuple[float, ...]   # exponential time constants, seconds
    gains: tuple[float, ...]


@dataclass(frozen=True)
class _Material:
    modes: _Modes
    noise_gain: float
    noise_decay: float          # seconds
    noise_band: tuple[float, float]  # Hz


_MATERIALS: dict[str, _Material] = {
    "wood": _Material(_Modes((165, 400, 730, 1140, 1650), (0.040, 0.028, 0.018, 0.012, 0.008),
                             (1.0, 0.7, 0.45, 0.3, 0.2)), 0.7, 0.004, (80, 2500)),
    "stone": _Material(_Modes((260, 610, 1180, 1900, 2800), (0.016, 0.011, 0.008, 0.006, 0.004),
                              (1.0, 0.8, 0.6, 0.45, 0.3)), 1.2, 0.006, (100, 4000)),
    # Inharmonic partials (ratios 1, 2.39, 4.02, 6.17, 8.54, 11.1), long decays.
    "metal": _Material(_Modes((540, 1290, 2170, 3330, 4610, 5990), (0.18, 0.15, 0.12, 0.09, 0.07, 0.05),
                              (1.0, 0.8, 0.7, 0.5, 0.35, 0.25)), 0.35, 0.0015, (1000, 7000)),
    "glass": _Material(_Modes((1650, 2890, 4250, 5700), (0.12, 0.09, 0.07, 0.05),
                              (1.0, 0.75, 0.55, 0.4)), 0.4, 0.0015, (2500, 7500)),
}
# The object's own modes, for an object of radius 0.08 * frame size (pitch scales as 1 / size).
_OBJECT_MODES: dict[str, _Modes] = {
    "ball": _Modes((300, 630), (0.03, 0.02), (0.35, 0.15)),
    "cube": _Modes((420, 670, 1130, 1640), (0.04, 0.03, 0.02, 0.015), (0.3, 0.25, 0.18, 0.1)),
    "ring": _Modes((700, 1930, 3780), (0.09, 0.07, 0.05), (0.3, 0.2, 0.12)),
}


def _band_noise(rng: np.random.Generator, n: int, band: tuple[float, float], sr: int) -> np.ndarray:
    """``n`` samples of unit-RMS noise band-limited to ``band`` (FFT mask, numpy only)."""
    size = max(16, 1 << (n - 1).bit_length())
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    spectrum[(freqs < band[0]) | (freqs > min(band[1], 0.48 * sr))] = 0.0
    out = np.fft.irfft(spectrum, size)[:n]
    return out / max(float(np.sqrt(np.mean(out * out))), 1e-12)


def _impact(rng: np.random.Generator, modes: _Modes, material: _Material, t: float, amplitude: float,
            num_samples: int, sr: int) -> tuple[int, np.ndarray]:
    """One impact starting at time ``t``: ``(first sample, samples)``."""
    start = math.ceil(t * sr - 1e-9)
    longest = max(max(modes.decays), material.noise_decay)
    length = min(num_samples - start, int(math.ceil(7.0 * longest * sr)))
    if length <= 0:
        return start, np.zeros(0)
    tau = (start + np.arange(length)) / sr - t  # time since the hit, >= 0
    out = np.zeros(length)
    nyquist_guard = 0.45 * sr
    for f, d, g in zip(modes.freqs, modes.decays, modes.gains):
        f *= 1.0 + rng.uniform(-0.015, 0.015)
        g *= rng.uniform(0.8, 1.2)
        if f >= nyquist_guard:
            continue
        m = min(length, int(math.ceil(7.0 * d * sr)))
        out[:m] += g * np.exp(-tau[:m] / d) * np.sin(2.0 * np.pi * f * tau[:m])
    m = min(length, int(math.ceil(7.0 * material.noise_decay * sr)))
    burst = _band_noise(rng, m, material.noise_band, sr) * np.exp(-tau[:m] / material.noise_decay)
    out[:m] += material.noise_gain * burst
    return start, amplitude * out


def _clip_modes(rng: np.random.Generator, surface: str, shape: str, size_frac: float) -> _Modes:
    """Surface modes plus object modes, detuned once per clip."""
    surf = _MATERIALS[surface].modes
    obj = _OBJECT_MODES[shape]
    pitch = 0.08 / size_frac
    freqs = [f * rng.uniform(0.95, 1.05) for f in surf.freqs] + \
            [f * pitch * rng.uniform(0.95, 1.05) for f in obj.freqs]
    decays = [d * rng.uniform(0.9, 1.1) for d in surf.decays + obj.decays]
    return _Modes(tuple(freqs), tuple(decays), surf.gains + obj.gains)


def _background_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS coloured noise (1/f^alpha, alpha drawn in [0.5, 1.5]) below ~sr/2."""
    size = max(16, 1 << (n - 1).bit_length())
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    alpha = rng.uniform(0.5, 1.5)
    spectrum *= 1.0 / np.maximum(freqs, 40.0) ** (alpha / 2.0)
    out = np.fft.irfft(spectrum, size)[:n]
    return out / max(float(np.sqrt(np.mean(out * out))), 1e-12)


# --------------------------------------------------------------------------------------------
# The clip


def generate_clip(seed: int, geometry: ClipGeometry, *, min_events: int = 1, max_events: int = 4,
                  shape: str | None = None, colour: str | None = None,
                  surface: str | None = None) -> SyntheticClip:
    """One synthetic sounding video; bit-identical for identical arguments.

    ``shape``, ``colour`` and ``surface`` override the drawn attribute; everything else (event
    times, motion, background, noise) stays what ``seed`` gives, so clips that differ only in
    one attribute can be compared. Raises ``ValueError`` when ``min_events`` hits cannot fit the
    geometry (see ``max_events_that_fit``).
    """
    for name, value, allowed in (("shape", shape, SHAPES), ("colour", colour, tuple(COLOURS)),
                                 ("surface", surface, SURFACES)):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
    rng = np.random.default_rng(seed)
    F, S = geometry.num_frames, geometry.num_samples
    H, W, fps, sr = geometry.height, geometry.width, float(geometry.fps), geometry.sample_rate
    if F < 1 or S < 1 or H < 8 or W < 8:
        raise ValueError(f"geometry too small: {geometry}")

    # Attributes (always drawn, so overrides do not shift the random stream).
    drawn_shape = SHAPES[rng.integers(len(SHAPES))]
    drawn_colour = tuple(COLOURS)[rng.integers(len(COLOURS))]
    drawn_surface = SURFACES[rng.integers(len(SURFACES))]
    shape, colour, surface = shape or drawn_shape, colour or drawn_colour, surface or drawn_surface
    ticks = _sample_event_ticks(rng, geometry, min_events, max_events)
    events = ticks * TICK
    n = len(events)

    # Layout (pixels). One object per hit, all alike; they must fit side by side on the floor.
    scale = float(min(H, W))
    size_frac = rng.uniform(0.06, 0.09)
    radius = min(size_frac * scale, W / (2.6 + _SEPARATION * (n - 1)))
    size_frac = radius / scale
    floor_y = int(round(H * rng.uniform(0.78, 0.86)))
    margin = 1.3 * radius
    free = max(0.0, W - 2 * margin - _SEPARATION * radius * (n - 1))
    xs = margin + np.sort(rng.uniform(0.0, free, size=n)) + _SEPARATION * radius * np.arange(n)
    xs = xs[rng.permutation(n)]  # which object lands first

    # Vertical motion: each object hangs still at its drop height until it is released, falls
    # with constant acceleration for 3 to 6 frame periods and lands dead at its hit time.
    headroom = max(1.0, floor_y - 2.0 * radius - 0.04 * H)  # highest drop (object's bottom)
    nominal_speed = min(_CONTACT_STEP * radius * fps, _MAX_SPEED * H)  # pixels per second
    fall_time = rng.uniform(_FALL_FRAMES[0], _FALL_FRAMES[1], size=n) / fps
    drop = np.minimum(0.5 * nominal_speed * rng.uniform(0.75, 1.0, size=n) * fall_time, headroom)
    speeds = 2.0 * drop / fall_time  # landing speeds

    # Background: a vertical gradient contrasting with the object, then the floor slab.
    obj_rgb = np.array(COLOURS[colour], dtype=np.float64)
    obj_luma = _luma(obj_rgb)
    sky = [_with_luma(rng.uniform(0, 255, 3), luma) for luma in _contrasting_lumas(rng, obj_luma, 2)]
    ramp = np.linspace(0.0, 1.0, floor_y)[:, None]
    background = np.empty((H, W, 3), dtype=np.float64)
    background[:floor_y] = (sky[0] * (1 - ramp) + sky[1] * ramp)[:, None, :]
    # Faint wall grain, for the same reason as the floor grain (flat areas leave flow unpinned).
    background[:floor_y] *= (1.0 + 0.03 * rng.standard_normal((floor_y, W)))[..., None]
    floor = _floor_texture(rng, surface, H - floor_y, W, scale, sky[1])
    # The horizon is a long straight edge; keep its grayscale contrast moderate (20 to 40 levels):
    # against a high-contrast straight edge Farneback's per-pixel solve is near singular and
    # returns large spurious flow even between identical frames.
    sky_luma = _luma(sky[1])
    step = rng.uniform(20.0, 40.0)
    floor_luma = sky_luma - step if sky_luma - step >= 30.0 else sky_luma + step
    background[floor_y:] = _match_luma(floor, floor_luma)
    background = (_soft_clip(background) + 0.5).astype(np.uint8)

    # Frames: landed objects are baked into the static layer once; falling ones drawn per frame.
    times = np.arange(F) / fps
    lifts = np.stack([_drop_heights(times, events[k], speeds[k], drop[k]) for k in range(n)])
    obj_f32 = obj_rgb.astype(np.float32)
    # First frame showing object k landed: ceil(events[k] * fps), in exact integer arithmetic
    # (events[k] = ticks[k] / ticks_per_second, fps = numerator / denominator).
    rate = geometry.fps
    land_frame = -((-ticks * rate.numerator) // (round(1.0 / TICK) * rate.denominator))
    static = background.copy()
    landed = 0  # objects land in index order (events are sorted)
    frames = np.empty((F, H, W, 3), dtype=np.uint8)
    for f in range(F):
        while landed < n and land_frame[landed] <= f:
            _draw_object(static, shape, obj_f32, float(xs[landed]), floor_y - radius, radius)
            landed += 1
        frames[f] = static
        for k in range(landed, n):
            cy = floor_y - lifts[k, f] - radius
            _draw_object(frames[f], shape, obj_f32, float(xs[k]), float(cy), radius)

    # Audio.
    material = _MATERIALS[surface]
    modes = _clip_modes(rng, surface, shape, size_frac)
    amplitudes = speeds / nominal_speed
    audio = np.zeros(S)
    starts = []
    for t, a in zip(events, amplitudes):
        start, samples = _impact(rng, modes, material, float(t), float(a), S, sr)
        starts.append(start)
        audio[start:start + len(samples)] += samples
    noise_db = float(rng.uniform(-52.0, -34.0))
    peak = float(np.max(np.abs(audio)))
    noise = _background_noise(rng, S, sr) * (peak * 10.0 ** (noise_db / 20.0))
    audio += noise
    audio *= PEAK / max(float(np.max(np.abs(audio))), 1e-12)

    label = f"{shape} hitting {surface}"
    floor_name = f"{_ADJECTIVE[surface]} floor"
    if n == 1:
        caption = f"a {colour} {shape} dropping onto a {floor_name}"
    else:
        caption = f"{_NUMBER.get(n, str(n))} {colour} {shape}s dropping onto a {floor_name} one after another"
    meta: dict[str, Any] = {
        "label": label,
        "class_index": CLASS_NAMES.index(label),
        "caption": caption,
        "events": [round(float(t), 4) for t in events],
        "event_samples": [int(s) for s in starts],
        "impact_speeds": [round(float(v) / H, 4) for v in speeds],  # frame heights per second
        "positions": [[round(float(x), 3), round(floor_y - float(radius), 3)] for x in xs],  # landed (x, y)
        "object": shape,
        "colour": colour,
        "surface": surface,
        "background": {"top": [int(round(c)) for c in sky[0]], "bottom": [int(round(c)) for c in sky[1]]},
        "object_radius": round(float(radius), 3),
        "floor_y": floor_y,
        "noise_db": round(noise_db, 2),
        "seed": int(seed),
        "geometry": {"seconds": float(geometry.seconds), "fps": fps_json(geometry.fps), "height": int(H),
                     "width": int(W), "sample_rate": int(sr)},
    }
    return SyntheticClip(frames=frames, audio=audio.astype(np.float32), meta=meta)


def caption_attributes(caption: str) -> dict[str, str]:
    """The object's ``colour`` (a key of :data:`COLOURS`) and ``shape`` (one of :data:`SHAPES`) stated by a caption
    :func:`generate_clip` wrote ("a red cube dropping onto …", "three red cubes dropping onto …").

    Raises:
        ValueError: the caption names no known colour or shape (not a synthetic_hits caption).
    """
    words = caption.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w.removesuffix("s") for w in words if w.removesuffix("s") in SHAPES), None)
    if colour is None or shape is None:
        raise ValueError(f"caption {caption!r} names no synthetic_hits colour ({', '.join(COLOURS)}) and shape "
                         f"({', '.join(SHAPES)})")
    return {"colour": colour, "shape": shape}
