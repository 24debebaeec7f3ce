"""Training's feature cache (issue 19), the systems' side: the time of ``compute_features`` (the frozen parts of a
training step: VAE posteriors, text encoders, audio / frame encoders, optical flow) against the rest of the step,
per system, at the ``tiny`` and ``small`` scales of the systems' cost benchmarks (``joint_costs.py``,
``tempotokens_costs.py``, ``vta_ldm_costs.py``: the same twins, clip geometries and U-Nets).

Per system and scale, in one process, one thread set by ``--threads``, after one warm-up step, median of
``--repeats``:

- ``features``: ``compute_features(batch, every part)``;
- ``full step``: ``diffusion_loss(batch)`` + backward, the frozen parts computed (training without a cache);
- ``cached step``: the same from ``batch["features"]`` (float16-stored, the batch's video / audio left empty
  where every reading part is cached): what training with a cache runs.

Printed: the three times, the frozen share ``features / full step`` and the speed-up ``full / cached``. These are
CPU times of random twins: the ratio of frozen to trainable FLOPs of a twin is not the paper-scale model's (the
twins' frozen encoders are tiny), so the numbers show the mechanism and the overheads, not the paper-scale gain.

    .venv/bin/python benchmarks/feature_cache_steps.py [--scales tiny small] [--systems joint tempotokens vta_ldm]
                                                       [--batch 2] [--repeats 3] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SYSTEMS = ("joint", "tempotokens", "vta_ldm")


def build(system: str, scale: str, tiny_dir: str):
    """The system of ``benchmarks/<system>_costs.py`` at ``scale``, in training mode."""
    torch.manual_seed(0)
    if system == "joint":
        import joint_costs

        model = joint_costs.build(scale, tiny_dir)
    elif system == "tempotokens":
        import tempotokens_costs

        model = tempotokens_costs.build(scale, tiny_dir)
    else:
        import vta_ldm_costs

        model = vta_ldm_costs.build(scale, tiny_dir)
        model.cond_drop_prob = 0.1  # the paper's dropout (the cost benchmark turns it off)
    return model.train()


def batch_for(model, b: int) -> dict:
    """B random clips of the system's geometry (the batch contract)."""
    g = torch.Generator().manual_seed(0)
    c = model.clip
    return {"video": torch.rand(b, c.num_frames, 3, c.height, c.width, generator=g) * 2 - 1,
            "audio": (torch.rand(b, c.num_samples, generator=g) * 2 - 1) * 0.3,
            "caption": (["a red ball drops onto a wooden floor", "rain falls on a tin roof"] * b)[:b],
            "key": [f"clip{i}" for i in range(b)]}


def cached(model, batch: dict, features: dict) -> dict:
    """``batch`` as the datamodule gives it with a float16 cache of every part."""
    from avgen.data.feature_cache import skipped_modalities

    out = {**batch, "features": {part: {k: v.half().float() for k, v in tensors.items()}
                                 for part, tensors in features.items()}}
    skipped = skipped_modalities(model.feature_parts(), set(features))
    if "video" in skipped:
        out["video"] = batch["video"][:, :0]
    if "audio" in skipped:
        out["audio"] = batch["audio"][:, :0]
    return out


def step(model, batch: dict, seed: int) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    model.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))["loss"].backward()
    return time.perf_counter() - start


def measure(system: str, scale: str, tiny_dir: str, b: int, repeats: int) -> dict:
    model = build(system, scale, tiny_dir)
    batch = batch_for(model, b)
    parts = list(model.feature_part_names())
    features = model.compute_features(batch, parts)  # warm-up
    with_cache = cached(model, batch, features)
    step(model, batch, 0), step(model, with_cache, 0)
    rows = {"features": [], "full": [], "cached": []}
    for r in range(repeats):
        start = time.perf_counter()
        model.compute_features(batch, parts)
        rows["features"].append(time.perf_counter() - start)
        rows["full"].append(step(model, batch, r))
        rows["cached"].append(step(model, with_cache, r))
    med = {k: statistics.median(v) for k, v in rows.items()}
    trainable = sum(p.numel() for _, p in model.trainable_parameters())
    frozen = sum(p.numel() for p in model.parameters()) - trainable
    return {"system": system, "scale": scale, "batch": b, "parts": parts, "seconds": med, "samples": rows,
            "frozen_share": med["features"] / med["full"], "speedup": med["full"] / med["cached"],
            "params": {"trainable": trainable, "frozen": frozen},
            "cache_values_per_clip": {p: {k: int(v[0].numel()) for k, v in t.items()} for p, t in features.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=str, default=None, help="write every sample here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tiny_dir:
        for scale in args.scales:
            for system in args.systems:
                r = measure(system, scale, tiny_dir, args.batch, args.repeats)
                results.append(r)
                s = r["seconds"]
                print(f"{system:<12} {scale:<6} B={r['batch']} parts={','.join(r['parts'])}: features "
                      f"{s['features'] * 1e3:8.1f} ms, full step {s['full'] * 1e3:8.1f} ms, cached step "
                      f"{s['cached'] * 1e3:8.1f} ms; frozen share {r['frozen_share']:.2f}, speed-up "
                      f"{r['speedup']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
