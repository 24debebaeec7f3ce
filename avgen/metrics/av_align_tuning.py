"""Tune AV-Align's detection against annotated event times.

AV-Align compares audio onsets with optical-flow peaks, and both detectors have parameters
(:class:`~avgen.metrics.av_align.AVAlignConfig`). The SVG baseline (Hayakawa et al., Sec. IV and
appendix VI-A) tuned them "to accurately estimate hitting timing using annotated timestamps in the
Greatest Hits dataset". This module does that for any prepared shard split whose clips carry their
event times in the sample json (``"events"``, seconds from the clip start: ``synthetic_hits`` does;
a Greatest Hits ``prepare`` should write its hit annotations there):

- :func:`detection_errors`: detected times against annotated ones, within the matching window
  (open interval of ``window_frames / fps`` around each event, one-to-one): hits, missed events,
  spurious detections;
- :func:`evaluate_setting`: for one config, onset and peak errors summed over the clips, their F1
  and the mean score of the ground-truth pairs per variant (what a perfect generator would get);
- :func:`grid_search`: every combination of a grid of config values, best first (fewest errors,
  then highest F1). Optical flow is computed once per distinct set of flow parameters and onsets
  once per distinct set of onset parameters.

Command line (prints a table and the best setting as an ``evaluate.av_align`` override)::

    python -m avgen.metrics.av_align_tuning data/synthetic_hits/<...>/val \\
        --grid onset_pad_mode=constant,reflect --grid onset_delta=0.07,0.1,0.15,0.2 --max-clips 64
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from avgen.errors import ConfigError
from avgen.metrics.av_align import (
    AVAlignConfig,
    _variant_score,
    audio_onsets,
    flow_magnitudes,
    match,
    video_peaks,
)

ONSET_FIELDS = ("audio_sample_rate", "resample_type", "onset_hop_length", "onset_pad_mode", "onset_delta")
FLOW_FIELDS = ("flow_pyr_scale", "flow_levels", "flow_winsize", "flow_iterations", "flow_poly_n",
               "flow_poly_sigma", "flow_flags")


def detection_errors(detected: Sequence[float], events: Sequence[float], fps: float,
                     window_frames: float = 1.0) -> dict[str, int]:
    """``{"hits", "missed", "spurious"}`` of detected times against annotated event times: the largest
    one-to-one matching within the AV-Align window (``|t - e| < window_frames / fps``)."""
    m = match(detected, events, fps, window_frames)
    hits = int(len(m.pairs))
    return {"hits": hits, "missed": len(events) - hits, "spurious": len(detected) - hits}


def _f1(errors: dict[str, int]) -> float:
    denominator = 2 * errors["hits"] + errors["missed"] + errors["spurious"]
    return 2 * errors["hits"] / denominator if denominator else 1.0


def annotated_clips(split_dir: str | Path, max_clips: int | None = None
                    ) -> list[tuple[str, np.ndarray, float, np.ndarray, int, np.ndarray]]:
    """(key, frames (F, H, W, 3) uint8, fps, audio, sample rate, event times) of the first ``max_clips``
    clips of a prepared shard split, in manifest order (a clip without events is a clip with none)."""
    from avgen.data.shards import MANIFEST, Manifest
    from avgen.data.stream import EvalStream, Shard

    folder = Path(split_dir)
    if not (folder / MANIFEST).is_file():
        raise ConfigError(f"{folder} is not a prepared shard split (no {MANIFEST}); give e.g. "
                          f"data/synthetic_hits/<geometry>/val")
    manifest = Manifest.load(folder)
    stream = EvalStream([Shard(str(folder / s.name), s.clips) for s in manifest.shards], manifest.clip, 1,
                        split=manifest.split, max_skip_fraction=1.0)
    clips = []
    for batch in stream:
        events = batch["events"][0].numpy().astype(np.float64)
        clips.append((batch["key"][0], batch["video"][0].numpy(), float(manifest.clip.fps),
                      batch["audio"][0].numpy(), manifest.clip.sample_rate, events))
        if max_clips is not None and len(clips) >= max_clips:
            break
    if not any(len(c[5]) for c in clips):
        raise ConfigError(f"no clip of {folder} has annotated events (an 'events' list of seconds in its json); "
                          f"tuning needs annotated hits, e.g. synthetic_hits or Greatest Hits")
    return clips


def _subset(cfg: AVAlignConfig, names: Sequence[str]) -> tuple:
    return tuple(getattr(cfg, n) for n in names)


def evaluate_setting(clips: Sequence[tuple], cfg: AVAlignConfig, *, _onsets: dict | None = None,
                     _flows: dict | None = None) -> dict[str, Any]:
    """Detection errors of ``cfg`` on annotated ``clips`` (as :func:`annotated_clips` returns) and the
    mean AV-Align score of the ground-truth pairs per variant."""
    onsets_cache = {} if _onsets is None else _onsets
    flows_cache = {} if _flows is None else _flows
    onset_errors = {"hits": 0, "missed": 0, "spurious": 0}
    peak_errors = {variant: {"hits": 0, "missed": 0, "spurious": 0} for variant in cfg.variants}
    scores: dict[str, list[float]] = {variant: [] for variant in cfg.variants}
    for key, frames, fps, audio, sr, events in clips:
        onset_key, flow_key = (key, _subset(cfg, ONSET_FIELDS)), (key, _subset(cfg, FLOW_FIELDS))
        if onset_key not in onsets_cache:
            onsets_cache[onset_key] = audio_onsets(audio, sr, cfg)
        onsets = onsets_cache[onset_key]
        if flow_key not in flows_cache:
            flows_cache[flow_key] = flow_magnitudes(frames, cfg)
        magnitudes = flows_cache[flow_key]
        for k, v in detection_errors(onsets, events, fps, cfg.window_frames).items():
            onset_errors[k] += v
        for variant in cfg.variants:
            peaks = video_peaks(magnitudes, fps, cfg.min_magnitude(variant))
            for k, v in detection_errors(peaks, events, fps, cfg.window_frames).items():
                peak_errors[variant][k] += v
            scores[variant].append(_variant_score(match(onsets, peaks, fps, cfg.window_frames), variant))
    return {
        "onsets": {**onset_errors, "f1": _f1(onset_errors)},
        "peaks": {variant: {**e, "f1": _f1(e)} for variant, e in peak_errors.items()},
        "ground_truth_score": {variant: float(np.mean(v)) for variant, v in scores.items()},
        "clips": len(clips),
    }


def grid_search(clips: Sequence[tuple], grid: dict[str, Sequence[Any]], base: AVAlignConfig | None = None,
                variant: str = "pr") -> list[dict[str, Any]]:
    """Every combination of ``grid`` (config field → values) applied to ``base``; rows
    ``{"setting", "errors", "f1", "ground_truth_score", "result"}`` sorted best first: fewest onset +
    ``variant`` peak errors (missed + spurious), then the highest ground-truth score of ``variant``."""
    base = base or AVAlignConfig()
    known = {f.name for f in fields(AVAlignConfig)} - {"variants"}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ConfigError(f"AV-Align tuning grid: unknown config keys {unknown}; known: {sorted(known)}")
    if variant not in base.variants:
        raise ConfigError(f"variant {variant!r} is not among the config's variants {list(base.variants)}")
    onsets_cache: dict = {}
    flows_cache: dict = {}
    rows = []
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        setting = dict(zip(names, values))
        cfg = replace(base, **setting)
        result = evaluate_setting(clips, cfg, _onsets=onsets_cache, _flows=flows_cache)
        peaks = result["peaks"][variant]
        errors = result["onsets"]["missed"] + result["onsets"]["spurious"] + peaks["missed"] + peaks["spurious"]
        rows.append({"setting": setting, "errors": errors, "f1": {"onsets": result["onsets"]["f1"],
                                                                "peaks": peaks["f1"]},
                     "ground_truth_score": result["ground_truth_score"][variant], "result": result})
    rows.sort(key=lambda r: (r["errors"], -r["ground_truth_score"]))
    return rows


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"null": None, "none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["onset_delta=0.07,0.15", ...]`` → ``{"onset_delta": [0.07, 0.15], ...}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,...")
        grid[name.strip()] = [_parse_value(v.strip()) for v in values.split(",")]
    return grid


def override(setting: dict[str, Any]) -> str:
    """The ``evaluate.av_align`` override that selects ``setting`` on the command line."""
    body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in setting.items())
    return f"'evaluate.av_align={{{body}}}'"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avgen.metrics.av_align_tuning",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("split_dir", help="prepared shard split whose sample json holds 'events' (seconds)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="AVAlignConfig field and the values to try (repeatable)")
    parser.add_argument("--max-clips", type=int, default=None)
    parser.add_argument("--variant", default="pr", help="variant whose peaks and score rank the settings")
    parser.add_argument("--json", default=None, help="also write every row to this file")
    args = parser.parse_args(argv)
    grid = parse_grid(args.grid) or {"onset_pad_mode": ["constant", "reflect"], "onset_delta": [0.07, 0.1, 0.15, 0.2]}
    clips = annotated_clips(args.split_dir, args.max_clips)
    rows = grid_search(clips, grid, variant=args.variant)
    events = sum(len(c[5]) for c in clips)
    print(f"{len(clips)} clips, {events} annotated events; errors = missed + spurious onsets and "
          f"{args.variant} peaks")
    print(f"{'errors':>6}  {'onset F1':>8}  {'peak F1':>7}  {'GT score':>8}  setting")
    for r in rows:
        f1 = r["f1"]
        print(f"{r['errors']:>6}  {f1['onsets']:>8.3f}  {f1['peaks']:>7.3f}  {r['ground_truth_score']:>8.3f}  "
              f"{r['setting']}")
    print(f"best: {override(rows[0]['setting'])}")
    if args.json:
        Path(args.json).write_text(json.dumps([{**r, "config": asdict(replace(AVAlignConfig(), **r["setting"]))}
                                               for r in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
