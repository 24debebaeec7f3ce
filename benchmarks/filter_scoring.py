"""Curation cost: ``python -m avgen filter`` scoring against ``python -m avgen evaluate`` on the same split.

Both score AV-Align (all three variants, ``evaluate.av_align`` defaults) of every clip of one prepared
shard split with ``--workers`` worker processes:

- **evaluate** (baseline): ``evaluate_folder(split_dir, out, metrics=["av_align"])``: the split is
  exported to clip files once, then every clip is scored; ``metrics.json`` and ``per_clip.csv`` written.
- **filter, scoring**: ``filter_dataset(root, splits=["train"], min_av_align=...)`` with no saved scores:
  each shard is exported to a temporary folder, scored, its CSV saved, then the subset written.
- **filter, saved scores**: the same with other thresholds, reading the saved scores (what a threshold
  sweep costs after the first run).

The split: ``--clips`` synthetic clips (``avgen.data.synthetic_prepare``) of ``--seconds`` s at ``--fps``,
``--size``² frames, 64 clips per shard. Timing: one untimed warm-up of each path, then ``--repeats``
interleaved samples; printed: clips/s per path and the median per-repeat ratios filter ÷ evaluate
(target for scoring: >= 0.9, i.e. the per-shard export and bookkeeping cost under 10 %) and saved ÷
scoring. Ratios of one run are what to compare, not clips/s across machines.

Usage::

    python benchmarks/filter_scoring.py [--clips 128] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from avgen.curation import SCORES, Thresholds, filter_dataset
    from avgen.data.subset import SUBSETS
    from avgen.data.synthetic_prepare import prepare_synthetic_hits
    from avgen.evaluation import evaluate_folder

    work = Path(tempfile.mkdtemp(prefix="avgen-filter-bench-"))
    try:
        root = work / "data"
        store = {"seconds": args.seconds, "fps": args.fps, "short_side": args.size, "sample_rate": 16000,
                 "square": True}
        prepare_synthetic_hits(str(root), store, clips={"train": args.clips}, splits=["train"],
                               clips_per_shard=64, preview=0, workers=args.workers)
        evaluate = {"av_align": {}, "workers": args.workers, "decode_threads": 2, "device": "cpu"}

        def run_evaluate() -> float:
            out = work / "eval"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            result = evaluate_folder(root / "train", out, metrics=["av_align"], workers=args.workers)
            assert result["clips"] == args.clips, result["failures"][:2]
            return time.perf_counter() - t

        def run_filter(fresh: bool, threshold: float) -> float:
            if fresh:
                shutil.rmtree(root / SCORES, ignore_errors=True)
            shutil.rmtree(root / SUBSETS, ignore_errors=True)
            t = time.perf_counter()
            report = filter_dataset(root, dataset="synthetic_hits", splits=["train"],
                                    thresholds=Thresholds(min_av_align=threshold), evaluate=evaluate)
            assert report["splits"]["train"]["clips"] == args.clips
            return time.perf_counter() - t

        run_evaluate(), run_filter(True, 0.2)  # warm-up
        rows: dict[str, list[float]] = {"evaluate": [], "filter, scoring": [], "filter, saved scores": []}
        for i in range(args.repeats):
            order = [("evaluate", run_evaluate), ("filter, scoring", lambda: run_filter(True, 0.2))]
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                rows[name].append(args.clips / fn())
            rows["filter, saved scores"].append(args.clips / run_filter(False, 0.3 + 0.01 * i))
        print(f"{args.clips} clips of {args.seconds:g} s, {args.fps} fps, {args.size}x{args.size}; "
              f"{args.workers} AV-Align workers; {args.repeats} repeats")
        for name, values in rows.items():
            print(f"  {name:22s} {statistics.median(values):9.2f} clips/s  (samples: "
                  + ", ".join(f"{v:.2f}" for v in values) + ")")
        scoring = statistics.median(f / e for f, e in zip(rows["filter, scoring"], rows["evaluate"]))
        saved = statistics.median(s / f for s, f in zip(rows["filter, saved scores"], rows["filter, scoring"]))
        print(f"ratio filter scoring / evaluate: {scoring:.2f} (target >= 0.9: {'PASS' if scoring >= 0.9 else 'MISS'})")
        print(f"ratio filter with saved scores / filter scoring: {saved:.0f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
