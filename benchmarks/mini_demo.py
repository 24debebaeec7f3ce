"""Did the demo's model learn? Measurements of a folder of generated sounding videos of the synthetic scenes.

Issue 23's checks of ``make demo``'s samples (any folder written by ``python -m avgen sample``: ``sample_NNNN.mp4``
with its ``.wav`` and ``.txt`` prompt), each against a baseline computed in the same command:

1. **Onsets at landings**: per clip, AV-Align's detection with the README's tuned setting
   (:data:`avgen.metrics.av_align.TUNED_ON_SYNTHETIC_HITS`: audio onsets, optical-flow peaks of the ``pr`` variant);
   a clip counts as aligned when it has an audio onset and every onset lies within ±1 frame of a flow peak (the
   papers' three-frame window). Reported: the fraction of aligned clips, for the samples and for the same samples
   with their audio delayed by 3 frames (the shifted baseline; zeros in front, the end cut).
2. **AV-Align against shifted audio**: the per-clip AV-Align (``pr``, tuned) of the samples minus that of the same
   clips with audio delayed by 3 frames; the mean difference with a paired bootstrap 95 % interval (scipy's
   ``bootstrap``, percentile method, 10,000 resamples, seeded).
3. **Prompted colour and shape**: a frame classifier (:mod:`avgen.metrics.frame_classifier`) trained on real
   synthetic clips (``--train-clips`` clips from seeds no prepare run uses, at the mini store geometry) says which
   colour and shape each sample shows; the fraction that matches the prompt, with an exact binomial test against
   chance (1/8 colours, 1/3 shapes). The same on ``--real-clips`` real clips (the classifier's ceiling).

With ``--real-clips N`` the real clips' onset and AV-Align numbers are reported too (the ceiling of 1 and 2).

    .venv/bin/python benchmarks/mini_demo.py runs/demo/sample/samples [--out runs/demo/checks.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRAIN_SEEDS = 700_000   # real clips for the classifier: seeds of this form are never drawn by prepare
REAL_SEEDS = 800_000
SHIFT_FRAMES = 3


def delayed(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` delayed by ``samples`` (zeros in front, the end cut): same length."""
    return np.concatenate([np.zeros(samples, dtype=audio.dtype), audio[:len(audio) - samples]])


def onset_checks(clips: list[tuple[np.ndarray, float, np.ndarray, int]]) -> dict:
    """Items 1 and 2 of the module docstring on ``clips`` (frames (F, H, W, 3) uint8, fps, audio (S,), rate)."""
    from scipy.stats import bootstrap

    from avgen.metrics.av_align import TUNED_ON_SYNTHETIC_HITS, AVAlignConfig, align_clip

    cfg = AVAlignConfig(**TUNED_ON_SYNTHETIC_HITS)
    out: dict = {}
    scores = {}
    for name, shift in (("generated", 0), ("shifted", SHIFT_FRAMES)):
        aligned, values = [], []
        for frames, fps, audio, rate in clips:
            a = align_clip(frames, fps, delayed(audio, int(round(shift * rate / fps))), rate, cfg)
            hit = a.matches["pr"].onset_hit
            aligned.append(bool(len(hit) and hit.all()))
            values.append(a.scores["pr"])
        scores[name] = np.asarray(values)
        out[name] = {"aligned_clips": float(np.mean(aligned)), "av_align_pr": float(np.mean(values))}
    diff = scores["generated"] - scores["shifted"]
    if len(diff) > 1 and np.ptp(diff) > 0:
        ci = bootstrap((scores["generated"], scores["shifted"]), lambda a, b, axis=-1: np.mean(a - b, axis=axis),
                       paired=True, vectorized=True, n_resamples=10_000, confidence_level=0.95, method="percentile",
                       random_state=0).confidence_interval
        interval = [float(ci.low), float(ci.high)]
    else:
        interval = [float(diff.mean()), float(diff.mean())] if len(diff) else [float("nan")] * 2
    out["av_align_minus_shifted"] = {"mean": float(diff.mean()), "ci95": interval}
    return out


def real_clips(seeds: range, geometry) -> list:
    """Real synthetic clips (frames uint8 (F, H, W, 3), fps, audio, rate, caption) at ``geometry``."""
    from avgen.data.synthetic import generate_clip

    clips = []
    for seed in seeds:
        clip = generate_clip(seed, geometry)
        clips.append((clip.frames, float(geometry.fps), clip.audio, geometry.sample_rate, clip.meta["caption"]))
    return clips


def main() -> None:
    import torch

    from avgen.data.geometry import ClipGeometry
    from avgen.metrics.av_align import load_av
    from avgen.metrics.frame_classifier import prompt_agreement, train_frame_classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, help="a folder of sample_NNNN.mp4 (+ .wav, .txt)")
    parser.add_argument("--train-clips", type=int, default=256)
    parser.add_argument("--classifier-steps", type=int, default=600)
    parser.add_argument("--real-clips", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    videos = sorted(args.samples.glob("sample_*.mp4"))
    if not videos:
        sys.exit(f"{args.samples}: no sample_*.mp4 there; give the samples folder of `python -m avgen sample`")
    generated, prompts = [], []
    for mp4 in videos:
        frames, fps, audio, rate = load_av(mp4, mp4.with_suffix(".wav"))
        generated.append((frames, fps, audio, rate))
        prompts.append(mp4.with_suffix(".txt").read_text().strip())
    frames0, fps = generated[0][0], generated[0][1]
    seconds = len(frames0) / fps
    store = ClipGeometry(seconds=seconds, fps=fps, height=frames0.shape[1], width=frames0.shape[2],
                         sample_rate=generated[0][3])
    report: dict = {"samples": len(generated), "folder": str(args.samples), "geometry": store.__dict__
                    if hasattr(store, "__dict__") else str(store)}
    report["onsets"] = onset_checks(generated)
    train = real_clips(range(TRAIN_SEEDS, TRAIN_SEEDS + args.train_clips), store)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    classifier = train_frame_classifier(torch.from_numpy(np.stack([c[0] for c in train])).permute(0, 1, 4, 2, 3),
                                        [c[4] for c in train], steps=args.classifier_steps)
    stacked = torch.from_numpy(np.stack([g[0] for g in generated])).permute(0, 1, 4, 2, 3)
    report["prompt_agreement"] = prompt_agreement(classifier, stacked, prompts)
    if args.real_clips:
        real = real_clips(range(REAL_SEEDS, REAL_SEEDS + args.real_clips), store)
        report["real"] = {
            "onsets": onset_checks([c[:4] for c in real]),
            "prompt_agreement": prompt_agreement(
                classifier, torch.from_numpy(np.stack([c[0] for c in real])).permute(0, 1, 4, 2, 3),
                [c[4] for c in real]),
        }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
