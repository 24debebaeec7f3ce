"""Training steps per second with the feature cache vs without, per system, at the ``small`` scale whose frozen /
trainable FLOP ratio is within ±20 % of the paper-scale ratio (``paper_flops.py`` counts both).

For each system (joint, TempoTokens, VTA-LDM) at ``small`` (``paper_sizes.SMALL_SYSTEMS``: every width / 8, random
weights, CPU), in one process, same batch size, same number of steps, same generator seeds, the two paths
interleaved step by step so that other load on the machine hits both alike:

- **without the cache**: per step, the batch's clips are decoded from the data shard's sample bytes (mp4 + flac +
  json, held in memory: ``avgen.data.decode.decode_sample`` with a training rng, ``collate``, ``to_model_batch``),
  then ``diffusion_loss`` (which runs the frozen parts) + ``backward`` + the optimizer step;
- **with the cache**: per step, the clips' cache members (``encode_entry`` bytes of the parts, float16, made once
  beforehand with ``compute_features`` on the evaluation view) are decoded (``decode_entry``) into
  ``batch["features"]`` (float32), the captions read from the json, the modalities every reading part of which is
  cached left undecoded (``skipped_modalities``: video (B, 0, 3, H, W), audio (B, 0)), then the same loss, backward and
  optimizer step.

Also printed: the cache's bytes per clip (its members) vs the data shard's bytes per clip (the shard file's size / its
clips), and the float16 error of each cached tensor against float32 (max |Δ| and relative RMS). The first step of
each path is a warm-up and is not timed.

    PYTHONPATH=. .venv/bin/python benchmarks/feature_cache.py [--steps 4] [--systems joint tempotokens vta_ldm]
                                                              [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import paper_flops  # noqa: E402
import paper_sizes  # noqa: E402

DTYPE = "float16"


# ---------------------------------------------------------------------------------------------- data
def prepare_shard(root: Path, clip: Mapping[str, Any], clips: int) -> tuple[list[dict[str, Any]], int, str]:
    """One train shard of ``clips`` synthetic clips stored at ``clip``'s geometry: (the samples as
    ``{"__key__", "__url__", "mp4", "flac", "json"}`` with their bytes, the shard file's size, the split
    manifest's SHA-256)."""
    import hashlib

    from avgen.data.shards import read_split_samples
    from avgen.data.synthetic_prepare import prepare_synthetic_hits

    store = {"seconds": clip["seconds"], "fps": clip["fps"], "short_side": min(clip["height"], clip["width"]),
             "sample_rate": clip["sample_rate"]}
    prepare_synthetic_hits(str(root), store, clips={"train": clips}, clips_per_shard=clips, preview=0, workers=1)
    split = root / "train"
    shards = sorted(split.glob("*.tar"))
    samples = [{"__key__": key, "__url__": str(shards[0]), **parts} for key, parts in read_split_samples(split)]
    sha = hashlib.sha256((split / "manifest.json").read_bytes()).hexdigest()
    return samples, sum(s.stat().st_size for s in shards), sha


def decoded_batch(samples: Sequence[Mapping[str, Any]], clip, rng: np.random.Generator | None,
                  skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The batch contract of ``samples`` decoded as the training loader does (``rng``: training window and crop;
    None: the evaluation view); modalities in ``skip`` are not decoded (empty time axis)."""
    from avgen.data.decode import collate, decode_sample, to_model_batch

    return to_model_batch(collate([decode_sample(dict(s), clip, rng, skip=skip) for s in samples]))


# ---------------------------------------------------------------------------------------------- the cache
def cache_members(system, samples: Sequence[Mapping[str, Any]], clip, parts: Sequence[str], manifest_sha: str,
                  batch_size: int) -> tuple[list[dict[str, bytes]], Any, dict[str, dict[str, dict[str, float]]]]:
    """Per clip ``{part: member bytes}`` of ``parts`` (``compute_features`` on the evaluation view, stored as
    float16, :func:`avgen.data.feature_cache.encode_part`), the ``SidecarReader`` training decodes them with, and
    the float16 error of each tensor: ``{part: {tensor: {max_abs, rel_rms}}}`` over all clips."""
    from avgen.data.feature_cache import SidecarReader, encode_part, namespace_id

    described = system.feature_parts()
    namespaces = {p: namespace_id(described[p].description(DTYPE)) for p in parts}
    members: list[dict[str, bytes]] = []
    errors: dict[str, dict[str, list[np.ndarray]]] = {p: {} for p in parts}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    system.eval()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        with torch.no_grad():
            features = system.compute_features(decoded_batch(chunk, clip, None), list(parts))
        for i, sample in enumerate(chunk):
            entry = {}
            for part in parts:
                tensors = {name: value[i].float().cpu().numpy() for name, value in features[part].items()}
                stored = {name: value.astype(np.float16) for name, value in tensors.items()}
                shapes[part] = {name: tuple(value.shape) for name, value in stored.items()}
                for name, value in tensors.items():
                    errors[part].setdefault(name, []).append(np.stack([value, stored[name].astype(np.float32)]))
                entry[part] = encode_part(namespaces[part], manifest_sha, sample["__key__"], stored)
            members.append(entry)
    system.train()
    reader = SidecarReader(folder="(in memory)", data_manifest_sha256=manifest_sha, namespaces=namespaces,
                           shapes=shapes)
    report = {}
    for part, tensors in errors.items():
        report[part] = {}
        for name, pairs in tensors.items():
            ref, got = (np.concatenate([p[k].ravel() for p in pairs]) for k in (0, 1))
            rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
            diff = got.astype(np.float64) - ref
            report[part][name] = {"max_abs": float(np.abs(diff).max()),
                                  "rel_rms": float(np.sqrt(np.mean(diff**2)) / rms) if rms else 0.0}
    return members, reader, report


def cached_batch(samples: Sequence[Mapping[str, Any]], members: Sequence[Mapping[str, bytes]], reader, clip,
                 skip: frozenset[str]) -> dict[str, Any]:
    """The training batch from the cache: the modalities in ``skip`` undecoded, ``features`` decoded and checked
    by ``reader`` as training's data path does (float32)."""
    batch = decoded_batch(samples, clip, np.random.default_rng(0), skip)
    decoded = [reader.decode(sample["__key__"], entry) for sample, entry in zip(samples, members)]
    batch["features"] = {part: {name: torch.stack([torch.from_numpy(d[part][name]) for d in decoded]).float()
                                for name in tensors}
                         for part, tensors in decoded[0].items()}
    return batch


# ---------------------------------------------------------------------------------------------- timing
def optimizer_of(system) -> torch.optim.Optimizer:
    configured = system.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def train_step(system, optimizer, load, seed: int) -> tuple[float, float]:
    """(seconds, loss) of loading a batch (``load()``), ``diffusion_loss`` + ``backward`` + the optimizer step."""
    start = time.perf_counter()
    batch = load()
    loss = system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(loss.detach())


def bench_system(name: str, steps: int, workdir: Path) -> dict[str, Any]:
    """Both paths of ``name`` at ``small``: steps/s, speed-up, bytes per clip, float16 error."""
    from avgen.data.feature_cache import skipped_modalities
    from avgen.data.geometry import ClipGeometry

    setup = paper_sizes.SMALL_SYSTEMS[name]
    b = setup["batch"]
    clip = ClipGeometry.from_config(setup["clip"])
    samples, shard_bytes, manifest_sha = prepare_shard(workdir / name, setup["clip"], b * (steps + 1))
    system, _ = paper_flops.build_system(name, paper_sizes.SMALL, "cpu", paper_flops.small_overrides(name))
    parts = list(system.feature_parts())
    members, reader, fp16_error = cache_members(system, samples, clip, parts, manifest_sha, b)
    skip = skipped_modalities(system.feature_parts(), set(parts))
    optimizer = optimizer_of(system)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"decoded": [], "cached": []}
    losses: dict[str, list[float]] = {"decoded": [], "cached": []}
    for step in range(steps + 1):
        chunk = slice(step * b, (step + 1) * b)
        loaders = {"decoded": lambda: decoded_batch(samples[chunk], clip, rng),
                   "cached": lambda: cached_batch(samples[chunk], members[chunk], reader, clip, skip)}
        order = ("decoded", "cached") if step % 2 == 0 else ("cached", "decoded")
        for path in order:
            seconds, loss = train_step(system, optimizer, loaders[path], seed=step)
            if step:  # step 0 warms both paths up
                times[path].append(seconds)
                losses[path].append(loss)
    member_bytes = [sum(len(v) for v in entry.values()) for entry in members]
    rate = {path: len(t) / sum(t) for path, t in times.items()}
    return {"system": name, "batch": b, "steps": steps, "clip": setup["clip"], "parts": parts,
            "skipped_modalities": sorted(skip), "steps_per_s": rate, "speedup": rate["cached"] / rate["decoded"],
            "step_seconds": {path: statistics.median(t) for path, t in times.items()},
            "cache_bytes_per_clip": statistics.mean(member_bytes),
            "part_bytes_per_clip": {p: statistics.mean(len(e[p]) for e in members) for p in parts},
            "shard_bytes_per_clip": shard_bytes / len(samples),
            "cache_vs_shard_bytes": statistics.mean(member_bytes) / (shard_bytes / len(samples)),
            "fp16_error": fp16_error, "losses": losses}


def paper_cache_bytes(name: str) -> dict[str, Any]:
    """The float16 cache members of one clip of ``name`` at the papers' size and clip geometry: each part's tensor
    shapes (``compute_features`` of the system built on the meta device) and member bytes (:func:`encode_part` of
    zeros of those shapes, a 16-digit namespace and a key of VGGSound's length: header + data)."""
    from avgen.data.feature_cache import encode_part

    setup = paper_sizes.SYSTEMS[name]
    overrides = [*paper_flops.source_overrides(name, setup["sources"]),
                 "data.clip={" + ",".join(f"{k}:{v}" for k, v in setup["clip"].items()) + "}"]
    system, _ = paper_flops.build_system(name, paper_sizes.PAPER, "meta", overrides)
    parts = system.feature_part_names()  # feature_parts() would hash weights the meta device has none of
    batch = paper_flops.batch_for(setup["clip"], 1, "meta",
                                  audio_device="cpu" if name in paper_flops.AUDIO_ON_CPU else None)
    with paper_flops.meta_safe():
        features = system.compute_features(batch, list(parts))
    out = {}
    for part, tensors in features.items():
        shapes = {key: tuple(value.shape[1:]) for key, value in tensors.items()}
        zeros = {key: np.zeros(shape, np.float16) for key, shape in shapes.items()}
        member = encode_part("0" * 16, "0" * 64, "vggsound/abcdefghijk_000030/0", zeros)
        out[part] = {"shapes": shapes, "bytes": len(member)}
    return {"system": name, "parts": out, "bytes_per_clip": sum(p["bytes"] for p in out.values())}


# ---------------------------------------------------------------------------------------------- fit
def fit_overrides(name: str, root: Path, steps: int, workers: int) -> list[str]:
    """``fit`` of ``name`` at ``small`` on synthetic clips stored at the small clip geometry under ``root``:
    ``steps`` optimizer steps, no validation, checkpoint or logger."""
    setup = paper_sizes.SMALL_SYSTEMS[name]
    clip = setup["clip"]
    # synthetic frames are square (short_side²); a wider clip is cropped from them scaled up
    side = min(clip["height"], clip["width"])
    store = (f"data.store={{seconds:{clip['seconds']},fps:{clip['fps']},short_side:{side},"
             f"sample_rate:{clip['sample_rate']},square:true}}")
    clips = setup["batch"] * (steps + 2)
    return [*paper_flops.small_overrides(name), "data=synthetic_hits", f"data.root={root}", store,
            f"data.batch_size={setup['batch']}", f"data.num_workers={workers}",
            f"data.prepare.clips={{train:{clips},val:2,test:2}}", f"data.prepare.clips_per_shard={clips}",
            "data.prepare.preview=0", "data.prepare.workers=1", "trainer=cpu", f"trainer.max_steps={steps}",
            "trainer.accumulate_grad_batches=1", "trainer.limit_val_batches=0", "~callbacks.model_checkpoint",
            "~logger", "~callbacks.lr_monitor", "cache.splits=[train]", "model.validation.samples=0"]


def fit_steps_per_s(name: str, steps: int, workdir: Path, workers: int = 1) -> dict[str, Any]:
    """Steps/s of ``python -m avgen fit``'s training loop (the real datamodule, ``workers`` DataLoader workers) for
    ``name`` at ``small``, without and with ``data.features`` (a cache made by ``python -m avgen cache`` first);
    the time from the end of the first step to the end of the last, the mean of two runs of each path."""
    import lightning.pytorch as pl

    from avgen import commands

    class Clock(pl.Callback):
        def __init__(self):
            self.ticks: list[float] = []

        def on_train_batch_end(self, *args, **kwargs) -> None:
            self.ticks.append(time.perf_counter())

    root = workdir / f"fit_{name}"
    base = fit_overrides(name, root, steps, workers)
    out: dict[str, Any] = {"system": name, "steps": steps, "workers": workers}
    with paper_sizes.built_from_specs(paper_sizes.SMALL, "cpu"):
        commands.cache(paper_flops.compose(name, base, workdir / f"run_{name}_cache"))
        rates: dict[str, list[float]] = {"decoded": [], "cached": []}
        # two rounds in the order decoded, cached, cached, decoded: load on the machine hits both paths alike
        for run, path in enumerate(("decoded", "cached", "cached", "decoded")):
            extra = ["data.features=default"] if path == "cached" else []
            cfg = paper_flops.compose(name, [*base, *extra], workdir / f"run_{name}_{path}_{run}")
            pl.seed_everything(0)
            datamodule = commands.build_datamodule(cfg)
            model = commands.build_model(cfg)
            commands.use_features(datamodule, model)
            trainer = commands.build_trainer(cfg, datamodule)
            clock = Clock()
            trainer.callbacks.append(clock)
            trainer.fit(model, datamodule=datamodule)
            ticks = clock.ticks
            rates[path].append((len(ticks) - 1) / (ticks[-1] - ticks[0]))
    out["rounds"] = rates
    out.update({path: statistics.mean(r) for path, r in rates.items()})
    out["speedup"] = out["cached"] / out["decoded"]
    return out


def describe(r: Mapping[str, Any]) -> str:
    rate = r["steps_per_s"]
    return (f"{r['system']:<12} batch {r['batch']}, {r['steps']} steps: without cache {rate['decoded']:.4f} steps/s, "
            f"with cache {rate['cached']:.4f} steps/s, speed-up {r['speedup']:.2f}x; cache "
            f"{r['cache_bytes_per_clip']:.0f} B/clip vs shard {r['shard_bytes_per_clip']:.0f} B/clip "
            f"({r['cache_vs_shard_bytes']:.2f}); skips "
            f"{', '.join(r['skipped_modalities']) or 'nothing'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--systems", nargs="*", default=list(paper_sizes.SMALL_SYSTEMS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--paper-bytes", action="store_true",
                        help="only print the cache's bytes per clip at the papers' sizes (meta device)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine, two threads stall on each other's load)")
    parser.add_argument("--fit", action="store_true",
                        help="also time `fit`'s loop through the datamodule with and without data.features")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.paper_bytes:
        rows = [paper_cache_bytes(name) for name in args.systems]
        for r in rows:
            print(f"{r['system']:<12} paper scale: {r['bytes_per_clip']:,} B per clip (float16): "
                  + "; ".join(f"{part} {p['bytes']:,} B {p['shapes']}" for part, p in r["parts"].items()))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.systems:
            result = bench_system(name, args.steps, Path(tmp))
            print(describe(result), flush=True)
            if args.fit:
                result["fit"] = fit_steps_per_s(name, args.steps, Path(tmp))
                print(f"    fit (datamodule, 1 worker): without cache {result['fit']['decoded']:.4f} steps/s, with "
                      f"cache {result['fit']['cached']:.4f} steps/s, speed-up {result['fit']['speedup']:.2f}x",
                      flush=True)
            for part, tensors in result["fp16_error"].items():
                print("    fp16 error", part, {k: {m: f"{v:.2e}" for m, v in e.items()} for k, e in tensors.items()})
            results.append(result)
    print("\n| system | steps/s without cache | with cache | speed-up | cache B/clip | shard B/clip | cache/shard |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['system']} | {r['steps_per_s']['decoded']:.4f} | {r['steps_per_s']['cached']:.4f} | "
              f"{r['speedup']:.2f}x | {r['cache_bytes_per_clip']:.0f} | {r['shard_bytes_per_clip']:.0f} | "
              f"{r['cache_vs_shard_bytes']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
