"""AV-Align throughput: ``python -m avgen evaluate`` machinery vs the official single-process loop.

Both score the same folder of clips (silent mp4 + wav with the same stem, the layout the official
TempoTokens script reads). The baseline is a plain loop of the official algorithm, per file:
frames with ``cv2.VideoCapture``, audio with ``librosa.load`` (22.05 kHz), Farneback flow, strict
local maxima with the 0.1 threshold, ``onset_strength`` + ``onset_detect``, one-to-one matching
within ±1 frame, IoU = I / (|A| + |V| − I). avgen runs ``avgen.evaluation.evaluate_folder`` with
its clip-parallel workers. Printed: clips/s of both, their ratio (target ≥ 1.5 on 2 cores) and the
agreement of the per-clip ``official`` scores.

    .venv/bin/python benchmarks/av_align_throughput.py [--clips 24] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import librosa
import numpy as np

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.evaluation import evaluate_folder
from avgen.media import write_mp4, write_wav

TARGET = 1.5


def official_score(mp4: str, wav: str) -> float:
    """The official per-file algorithm, written out as a plain loop."""
    y, sr = librosa.load(wav)
    onset_env = librosa.onset.onset_strength(y=y, sr=sr)
    onsets = librosa.frames_to_time(librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr), sr=sr)

    cap = cv2.VideoCapture(mp4)
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    mags = []
    prev = cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY)
    for frame in frames[1:]:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        flow = cv2.calcOpticalFlowFarneback(prev, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mag = cv2.magnitude(flow[..., 0], flow[..., 1])
        mags.append(cv2.mean(mag)[0])
        prev = gray
    mags = [mags[0]] + mags
    peaks = [i / fps for i in range(1, len(mags) - 1)
             if mags[i] > mags[i - 1] and mags[i] > mags[i + 1] and mags[i] >= 0.1]
    used, hits = set(), 0
    for a in onsets:
        for j, v in enumerate(peaks):
            if j not in used and v - 1 / fps < a < v + 1 / fps:
                used.add(j)
                hits += 1
                break
    union = len(onsets) + len(peaks) - hits
    return hits / union if union else 0.0


def make_clips(folder: Path, n: int, geo: ClipGeometry) -> list[tuple[str, str]]:
    pairs = []
    for i in range(n):
        clip = generate_clip(7000 + i, geo)
        mp4, wav = folder / f"clip{i:04d}.mp4", folder / f"clip{i:04d}.wav"
        write_mp4(mp4, clip.frames, geo.fps, overwrite=True)
        write_wav(wav, clip.audio, geo.sample_rate, overwrite=True)
        pairs.append((str(mp4), str(wav)))
    return pairs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="6 clips of 2 s at 128x128, 1 repeat")
    p.add_argument("--baseline-cv2-threads", type=int, default=None,
                   help="cv2.setNumThreads for the official loop (default: OpenCV's own default, which already "
                        "spreads Farneback over all cores)")
    args = p.parse_args(argv)
    if args.baseline_cv2_threads is not None:
        cv2.setNumThreads(args.baseline_cv2_threads)
    geo = ClipGeometry(seconds=2.0, fps=8, height=128, width=128) if args.quick else ClipGeometry()
    n, repeats = (6, 1) if args.quick else (args.clips, args.repeats)
    with tempfile.TemporaryDirectory(prefix="avgen-avalign-") as tmp:
        clips_dir = Path(tmp) / "clips"
        clips_dir.mkdir()
        pairs = make_clips(clips_dir, n, geo)
        base_rates, ours_rates, ratios = [], [], []
        for r in range(repeats):
            t0 = time.perf_counter()
            baseline = [official_score(mp4, wav) for mp4, wav in pairs]
            t_base = time.perf_counter() - t0
            out = Path(tmp) / f"eval{r}"
            t0 = time.perf_counter()
            evaluate_folder(clips_dir, out, metrics=["av_align"], workers=args.workers)
            t_ours = time.perf_counter() - t0
            base_rates.append(n / t_base)
            ours_rates.append(n / t_ours)
            ratios.append(t_base / t_ours)
        with open(out / "per_clip.csv") as f:
            ours = {row["clip"]: row for row in csv.DictReader(f)}
        diffs = [abs(float(ours[Path(mp4).name]["av_align_official"]) - b) for (mp4, _), b in zip(pairs, baseline)]
    ratio = statistics.median(ratios)
    print(f"AV-Align throughput: {n} clips of {geo.seconds:g} s at {geo.fps} fps, {geo.height}x{geo.width} "
          f"(mp4 + wav pairs), {repeats} repeat(s), {args.workers} workers for avgen")
    print(f"  official loop (cv2.VideoCapture + librosa.load, 1 process, {cv2.getNumThreads()} OpenCV threads): "
          f"{statistics.median(base_rates):6.2f} clips/s")
    print(f"  avgen evaluate_folder ({args.workers} single-threaded worker processes, start-up included): "
          f"{statistics.median(ours_rates):6.2f} clips/s")
    print(f"  ratio avgen / official: {ratio:.2f}  (target >= {TARGET}: {'PASS' if ratio >= TARGET else 'MISS'}); "
          f"per repeat {[round(x, 2) for x in ratios]}")
    print(f"  agreement of per-clip official scores: max |diff| = {max(diffs):.3g}, "
          f"identical on {sum(d == 0 for d in diffs)}/{len(diffs)} clips; mean baseline score "
          f"{np.mean(baseline):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
