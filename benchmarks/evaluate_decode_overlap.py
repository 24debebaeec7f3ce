"""Decode-ahead in ``evaluate``'s feature pass: clips decoded by threads while the extractors run.

The main process of ``python -m avgen evaluate`` decodes every clip and feeds it to the feature
extractors (I3D, VGGish, CLIP, ...). On a GPU the extractor call mostly waits for the device without
holding the GIL, so decoding the next clips meanwhile hides the decoder. This benchmark times
``avgen.samples.load_clips`` over a folder of clips with a consumer that waits ``--consumer-ms``
per clip without holding the GIL (``time.sleep``, standing in for a GPU forward) and prints the time
with 0 decode threads (decode, then wait, clip by clip) and with ``--threads`` (``evaluate.decode_threads``),
and their ratio. It does not measure a real GPU: on a CPU-only run the extractors hold the cores and
the overlap buys nothing (measured on 2 cores: 2.0-3.0 s either way for 24 clips, FVD + video IS).

    .venv/bin/python benchmarks/evaluate_decode_overlap.py [--clips 24] [--consumer-ms 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.media import write_mp4
from avgen.samples import load_clips


def run(paths: list[Path], threads: int, consumer_s: float) -> float:
    start = time.perf_counter()
    for _ in load_clips(paths, [], threads=threads):
        time.sleep(consumer_s)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--consumer-ms", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="decode threads (evaluate.decode_threads default: 2)")
    args = p.parse_args()
    geo = ClipGeometry(seconds=4.0, fps=8, height=256, width=256)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.clips):
            clip = generate_clip(i, geo)
            write_mp4(Path(tmp) / f"c{i:03d}.mp4", clip.frames, geo.fps, audio=clip.audio, sample_rate=geo.sample_rate)
        paths = sorted(Path(tmp).glob("*.mp4"))
        run(paths, 0, 0.0)  # warm the decoder and the page cache
        plain, ahead = [], []
        for _ in range(args.repeats):
            plain.append(run(paths, 0, args.consumer_ms / 1000))
            ahead.append(run(paths, args.threads, args.consumer_ms / 1000))
    base, new = statistics.median(plain), statistics.median(ahead)
    print(f"{args.clips} clips of 4 s, 256x256; consumer {args.consumer_ms:.0f} ms per clip (GIL released)")
    print(f"  decode then consume (0 threads):        {base:.3f} s")
    print(f"  decode ahead ({args.threads} threads):               {new:.3f} s")
    print(f"  ratio: {base / new:.2f}x faster; per repeat {[round(a / b, 2) for a, b in zip(plain, ahead)]}")


if __name__ == "__main__":
    main()
