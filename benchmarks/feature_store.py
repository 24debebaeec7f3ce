"""Re-scoring new samples against the same test set: ``evaluate`` with a cold feature store vs a warm one.

A reference folder of ``--ref-clips`` sounding clips and a folder of ``--pred-clips`` generated ones (stems shared
with the references, for ``kl``'s pairs) are scored with ``fad`` (VGGish) and ``kl`` (PANNs CNN14), both at their
published sizes with random weights saved in the published layouts (``--size paper``; ``tiny`` for a quick look),
once with an empty ``evaluate.cache_dir`` (cold: every reference clip decoded and extracted) and then again with
the store the first run filled (warm: the reference side reads one entry per clip and per extractor, decodes
nothing). Prints both wall times, their ratio, the reference side's share of each, and the warm reference pass
per clip, which is what a separate statistics cache could still save (the Fréchet statistics are recomputed from
the stored per-clip features on every run).

    PYTHONPATH=. .venv/bin/python benchmarks/feature_store.py [--ref-clips 48] [--pred-clips 8] [--size paper]
        [--repeats 2] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.encoders.panns import TINY_CNN14, Cnn14
from avgen.encoders.vggish import TINY_VGGISH, VGGishFeatures
from avgen.evaluation import evaluate_folder, scorers
from avgen.media import write_mp4


def make_clips(root: Path, refs: int, preds: int, seconds: float) -> tuple[Path, Path]:
    geo = ClipGeometry(seconds=seconds, fps=8, height=64, width=64)
    ref, pred = root / "ref", root / "pred"
    ref.mkdir()
    pred.mkdir()
    for i in range(refs):
        clip = generate_clip(i, geo)
        write_mp4(ref / f"c{i:03d}.mp4", clip.frames, geo.fps, audio=clip.audio, sample_rate=geo.sample_rate)
    for i in range(preds):
        clip = generate_clip(1000 + i, geo)
        write_mp4(pred / f"c{i:03d}.mp4", clip.frames, geo.fps, audio=clip.audio * 0.5, sample_rate=geo.sample_rate)
    return ref, pred


def weights(root: Path, size: str) -> dict:
    torch.manual_seed(0)
    vggish, cnn14 = root / "vggish.pth", root / "cnn14.pth"
    tiny = size == "tiny"
    torch.save((VGGishFeatures.tiny() if tiny else VGGishFeatures(None)).state_dict(), vggish)
    torch.save({"model": (Cnn14.tiny() if tiny else Cnn14()).state_dict()}, cnn14)
    return dict(fad={"vggish_path": str(vggish), **(TINY_VGGISH if tiny else {})},
                panns={"path": str(cnn14), "splits": 1, **(TINY_CNN14 if tiny else {})})


def timed_run(pred: Path, ref: Path, out: Path, cache: Path, options: dict, spent: list, device: str
              ) -> tuple[float, float, dict]:
    """(wall seconds, seconds in the reference pass, metrics) of one evaluate run."""
    spent.clear()
    start = time.perf_counter()
    result = evaluate_folder(pred, out, metrics=["fad", "kl"], ref_dir=ref, cache_dir=cache, device=device,
                             decode_threads=0, **options)
    return time.perf_counter() - start, sum(spent), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref-clips", type=int, default=48)
    p.add_argument("--pred-clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--size", choices=("paper", "tiny"), default="paper")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", help="evaluate.device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: several times faster on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spent: list[float] = []
    original = scorers.set_references

    def measured(*a, **k):
        start = time.perf_counter()
        original(*a, **k)
        spent.append(time.perf_counter() - start)

    scorers.set_references = measured
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref, pred = make_clips(root, args.ref_clips, args.pred_clips, args.seconds)
        options = weights(root, args.size)
        cold, warm = [], []
        for r in range(args.repeats):
            cache = root / f"cache{r}"
            cold.append(timed_run(pred, ref, root / f"cold{r}", cache, options, spent, args.device))
            warm.append(timed_run(pred, ref, root / f"warm{r}", cache, options, spent, args.device))
            assert warm[-1][2]["metrics"] == cold[-1][2]["metrics"], "a warm store must give the cold store's values"
        c, w = statistics.median(x[0] for x in cold), statistics.median(x[0] for x in warm)
        cr, wr = statistics.median(x[1] for x in cold), statistics.median(x[1] for x in warm)
        report = warm[-1][2]["extractors"]
        print(f"{args.ref_clips} reference clips, {args.pred_clips} generated, {args.seconds:g} s, fad (VGGish) + kl "
              f"(CNN14) at size {args.size}, {args.device}, {torch.get_num_threads()} torch threads, median of "
              f"{args.repeats}")
        print(f"cold store: {c:.2f} s (reference pass {cr:.2f} s)")
        print(f"warm store: {w:.2f} s (reference pass {wr:.2f} s = {1000 * wr / args.ref_clips:.1f} ms per "
              f"reference clip: listing, {sum(v['feature_store']['reference']['hits'] for v in report.values())} "
              f"entry reads, statistics)")
        print(f"re-score speed-up cold/warm: {c / w:.2f}x; reference pass: {cr / wr:.1f}x")


if __name__ == "__main__":
    main()
