"""What placing frames by their timestamps costs: ``avgen.media.decode_video`` against index-based decoding.

Both paths decode the same clip windows out of the same mp4 bytes and write the same resized,
centre-cropped RGB frames into one preallocated array:

- baseline (index): PyAV decode, frames ``start .. start + n - 1`` by their position in the stream,
  each converted with swscale (what avgen did before frames were placed by timestamp);
- avgen (timestamps): ``decode_video(fps=, start=, out=)``: every frame's presentation time mapped
  to an output slot as FFmpeg's ``fps`` filter does, display rotation, exact rational rates.

Sources: ``--clips`` synthetic clips (``synthetic_hits`` generator) of ``--seconds`` s at ``--fps`` and
``--size``, h264 as in the shards; windows of ``--window`` s at random starts (the data pipeline's
training pattern), fit to ``--crop``. Timed samples alternate between the paths; the printed ratio
is the median of per-repeat ratios (avgen / baseline wall time; < 1: avgen is faster).

    .venv/bin/python benchmarks/decode_timestamps.py            # about 30 s on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time
from fractions import Fraction

import av
import numpy as np

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.media import centre_origin, cover_size, decode_video, encode_mp4, frame_count


def index_decode(data: bytes, start_frame: int, out: np.ndarray) -> None:
    """The baseline: frames by position in the stream, resized to cover the crop, centre-cropped."""
    import io

    h, w = out.shape[1:3]
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        size = cover_size((stream.height, stream.width), (h, w))
        y, x = centre_origin(size, (h, w))
        n = 0
        for i, frame in enumerate(container.decode(stream)):
            if i < start_frame:
                continue
            if n >= len(out):
                break
            out[n] = frame.to_ndarray(format="rgb24", height=size[0], width=size[1], interpolation="BILINEAR",
                                      threads=1)[y:y + h, x:x + w]
            n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", default="8")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    geo = ClipGeometry(seconds=args.seconds, fps=args.fps, height=args.size, width=args.size)
    sources = [encode_mp4(generate_clip(seed, geo).frames, geo.fps) for seed in range(args.clips)]
    n = frame_count(args.window, geo.fps)
    rng = np.random.default_rng(0)
    starts = [int(s) for s in rng.integers(0, geo.num_frames - n + 1, size=args.clips)]
    out_a = np.empty((n, args.crop, args.crop, 3), np.uint8)
    out_b = np.empty_like(out_a)
    # both paths give the same frames (constant-rate sources): the comparison is like for like
    index_decode(sources[0], starts[0], out_a)
    decode_video(sources[0], fps=geo.fps, start=Fraction(starts[0]) / geo.fps, fit_to=(args.crop, args.crop), out=out_b)
    assert np.array_equal(out_a, out_b), "the two paths decode different frames"

    def run_index() -> float:
        t = time.perf_counter()
        for data, s in zip(sources, starts):
            index_decode(data, s, out_a)
        return time.perf_counter() - t

    def run_avgen() -> float:
        t = time.perf_counter()
        for data, s in zip(sources, starts):
            decode_video(data, fps=geo.fps, start=Fraction(s) / geo.fps, fit_to=(args.crop, args.crop), out=out_b)
        return time.perf_counter() - t

    run_index(), run_avgen()  # warm-up
    base, ours = [], []
    for _ in range(args.repeats):
        base.append(run_index())
        ours.append(run_avgen())
    ratios = [o / b for o, b in zip(ours, base)]
    per_window = lambda ts: 1000 * statistics.median(ts) / args.clips  # noqa: E731
    print(f"sources: {args.clips} clips of {args.seconds} s at {geo.fps} fps, {args.size}x{args.size}; windows of "
          f"{n} frames at random starts, fit to {args.crop}x{args.crop}; {args.repeats} timed repeats")
    print(f"  baseline (index decode)      {per_window(base):7.2f} ms per window")
    print(f"  avgen (timestamps)           {per_window(ours):7.2f} ms per window")
    print(f"  ratio avgen / baseline       {statistics.median(ratios):7.2f}   per repeat: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
