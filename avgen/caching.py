"""``python -m avgen cache``: run a system's frozen parts once over every clip of a prepared dataset and store their
outputs as the feature cache that ``fit`` reads with ``data.features=<cache.name>`` (format and reading:
:mod:`avgen.data.feature_cache`).

What is computed: for each split of ``cache.splits``, every clip's evaluation view (window from 0 s, centre crop,
at ``data.clip``) is decoded in DataLoader workers (only the modalities the cached parts read) and batched, and
``system.compute_features(batch, parts)`` gives each part's tensors (float32), stored as ``cache.dtype``
(``float16`` by default: the largest absolute and the relative RMS error against float32 are accumulated per
tensor, printed and kept in the manifest).

How it is run:

- per data shard: its sidecar tar is written through a temporary file and renamed into place when the shard is done,
  then ``<shard stem>.json`` (counts, skipped clips with their reasons, error sums, the making id). A shard is done
  when both exist and the json names this making; a rerun (after a crash, Ctrl-C, a deleted sidecar) computes only
  the shards that are not done, and removes the temporaries of killed processes.
- the making (``making.json``): the system class, each part's namespace description (extractor, weights SHA-256,
  preprocessing, dtype), the data split manifest's SHA-256, ``data.clip``, ``data.store`` and the view. A cache of
  the same name made otherwise is refused (naming what differs) unless ``cache.overwrite=true``, which recomputes
  every shard.
- torchrun: data shard i (numbered over the requested splits in order) goes to rank ``i % WORLD_SIZE``, which runs
  on ``cuda:<LOCAL_RANK>`` (``cache.device=auto``); no rank waits for another: ``manifest.json`` is written by
  whichever rank finds every shard of the split done.
- one clip that cannot be decoded, or whose features are not finite, is skipped (no member; counted, with its
  reason, in the shard json and the manifest); the command fails (exit 1) when no clip was cached.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from avgen.checkpoint import remove_stale_temporaries
from avgen.data.decode import SampleError, collate, decode_sample, to_model_batch
from avgen.data.feature_cache import (
    CACHE_FORMAT,
    DTYPES,
    EVAL_VIEW,
    MANIFEST,
    MODALITIES,
    PART_NAMES,
    FeaturePart,
    SidecarWriter,
    cache_folder,
    check_name,
    encode_part,
    full_description,
    namespace_id,
)
from avgen.data.feature_store import digest
from avgen.data.geometry import ClipGeometry
from avgen.data.shards import Manifest
from avgen.data.stream import Health, Shard, iter_shard
from avgen.data.subset import manifest_sha256
from avgen.errors import CommandUnavailable, ConfigError, NothingProduced
from avgen.media import write_text_atomic

log = logging.getLogger(__name__)
MAKING = "making.json"


@dataclass(frozen=True)
class CacheOptions:
    """The ``cache.*`` block.

    Attributes:
        name: the cache's folder under ``<data.root>/cache`` (``data.features=<name>`` reads it).
        splits: the splits to cache (a split that is not prepared is left out, except ``train``).
        parts: the parts to store; ``None``: every part the system's config runs (``system.feature_parts()``).
        dtype: ``float16`` (default) or ``float32``.
        device: ``auto`` (``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``) or a torch device.
        batch_size: clips per ``compute_features`` call; ``None``: ``data.eval_batch_size`` / ``data.batch_size``.
        overwrite: recompute a cache of this name made by another model, description or data version.
        progress: show the progress bar (``None``: when stderr is a terminal).

    Raises:
        ConfigError: a bad value, naming ``cache.<key>``.
    """

    name: str = "default"
    splits: tuple[str, ...] = ("train", "val")
    parts: tuple[str, ...] | None = None
    dtype: str = "float16"
    device: str = "auto"
    batch_size: int | None = None
    overwrite: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "cache.name")
        if not self.splits or len(set(self.splits)) != len(self.splits) or not all(
                s in ("train", "val", "test") for s in self.splits):
            raise ConfigError(f"cache.splits={list(self.splits)}: expected distinct names of train, val, test")
        if self.parts is not None and (not self.parts or len(set(self.parts)) != len(self.parts)):
            raise ConfigError(f"cache.parts={list(self.parts)}: expected distinct part names (null: every part)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"cache.dtype={self.dtype!r}: expected one of {list(DTYPES)}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ConfigError(f"cache.batch_size={self.batch_size!r}: expected an int >= 1 (null: data.batch_size)")
        for key in ("overwrite",):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"cache.{key}={getattr(self, key)!r}: expected true or false")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> CacheOptions:
        """From the ``cache`` block (missing keys: the defaults above).

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"cache.{unknown[0]}: no such key (known: {', '.join(cls.__dataclass_fields__)})")
        for key in ("splits", "parts"):
            if isinstance(cfg.get(key), str):
                cfg[key] = [cfg[key]]
            if cfg.get(key) is not None:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg)


def select_parts(available: Mapping[str, FeaturePart], requested: Sequence[str] | None,
                 system: str) -> dict[str, FeaturePart]:
    """The parts to cache, in :data:`PART_NAMES` order: ``requested`` (``cache.parts``), or all of ``available``.

    Raises:
        ConfigError: a requested part the system's config does not run (or that cannot be cached, like
            TempoTokens' text, which is encoded with the trained audio tokens), naming ``cache.parts`` and the
            parts available.
    """
    if not available:
        raise CommandUnavailable(f"{system} runs no frozen part that can be cached (feature_parts() is empty)")
    names = list(available) if requested is None else list(requested)
    missing = [p for p in names if p not in available]
    if missing:
        raise ConfigError(f"cache.parts={list(names)}: {system} with this config has no cacheable part(s) {missing}; "
                          f"its parts are {list(available)} (null: all of them)")
    return {p: available[p] for p in PART_NAMES if p in names}


def making(system: str, parts: Mapping[str, FeaturePart], dtype: str, data_sha: str, clip: Mapping[str, Any],
           store: Mapping[str, Any]) -> dict[str, Any]:
    """What a cache split's features depend on (``making.json``; its digest marks every done shard)."""
    return json.loads(json.dumps({
        "format": CACHE_FORMAT, "system": system, "dtype": dtype, "data_manifest_sha256": data_sha,
        "clip": dict(clip), "store": dict(store), "view": EVAL_VIEW,
        "parts": {name: {"namespace": namespace_id(part.description(dtype)),
                         "description": full_description(part.description(dtype))} for name, part in parts.items()},
    }))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class SplitJob:
    """One split to cache: its data folder and manifest, its cache folder, and the making."""

    split: str
    data_dir: Path
    manifest: Manifest
    folder: Path
    making: dict[str, Any]

    @property
    def making_id(self) -> str:
        return digest(self.making)[:16]

    def shard_info(self, name: str) -> dict[str, Any] | None:
        """The json of a done shard of this making, else None."""
        stem = Path(name).stem
        try:
            info = json.loads((self.folder / f"{stem}.json").read_text())
        except (OSError, ValueError):
            return None
        if info.get("making") != self.making_id or not (self.folder / name).is_file():
            return None
        return info

    def done(self) -> bool:
        return all(self.shard_info(s.name) is not None for s in self.manifest.shards)


def _check_existing(job: SplitJob, overwrite: bool) -> None:
    """Refuse a cache split of this name made otherwise (``making.json``), unless ``overwrite``; then record this
    making."""
    path = job.folder / MAKING
    try:
        old = json.loads(path.read_text())
    except FileNotFoundError:
        old = None
    except (OSError, ValueError):
        old = {}
    if old == job.making:
        return
    if old is not None and not overwrite:
        diff = _differences(old, job.making)
        raise FileExistsError(
            f"{job.folder} holds a cache made otherwise (differs in: {', '.join(diff[:6])}"
            f"{', ...' if len(diff) > 6 else ''}); pass cache.overwrite=true to recompute it, or cache.name=<another "
            f"name> to keep both")
    job.folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(job.making, indent=1))
    (job.folder / MANIFEST).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- decoding
class ShardBatches(IterableDataset):
    """The evaluation view of every clip of ``jobs`` (``(url, clips)`` per data shard), batched per shard: each
    DataLoader worker reads whole shards (shard j by worker ``j % workers``) and yields, in the shard's order,
    ``{"job": j, "batch": collated clips or None, "skipped": [[key, reason], ...], "end": bool}``; the last item
    of a shard has ``end`` true. ``skip``: modalities not decoded (no cached part reads them)."""

    def __init__(self, jobs: list[tuple[str, int]], clip: ClipGeometry, batch_size: int, skip: frozenset[str]):
        super().__init__()
        self.jobs, self.clip, self.batch_size, self.skip = jobs, clip, batch_size, skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for j, (url, clips) in enumerate(self.jobs):
            if j % workers == worker:
                yield from self._shard(j, url, clips)

    def _shard(self, j: int, url: str, count: int) -> Iterator[dict[str, Any]]:
        health = Health()
        clips: list[dict] = []
        skipped: list[list[str]] = []
        for sample in iter_shard(Shard(url, count), health):
            try:
                clips.append(decode_sample(sample, self.clip, None, skip=self.skip))
            except SampleError as exc:
                skipped.append([sample.get("__key__", "?"), str(exc)])
            if len(clips) == self.batch_size:
                yield {"job": j, "batch": collate(clips), "skipped": skipped, "end": False}
                clips, skipped = [], []
        if health.skipped:  # clips the shard promises but does not deliver (truncated): no key to name
            skipped += [["?", health.reasons[0] if health.reasons else url]] * health.skipped
        yield {"job": j, "batch": collate(clips) if clips else None, "skipped": skipped, "end": True}


# ------------------------------------------------------------------------------------------- writing
class _ShardWork:
    """The sidecar of one data shard being written, with its counts and float16 error sums."""

    def __init__(self, job: SplitJob, name: str, namespaces: dict[str, str], dtype: str):
        self.job, self.name, self.namespaces, self.dtype = job, name, namespaces, np.dtype(dtype)
        self.writer = SidecarWriter(job.folder / name)
        self.clips = 0
        self.skipped: list[dict[str, str]] = []
        self.tensors: dict[str, dict[str, list[int]]] = {}
        self.error: dict[str, dict[str, dict[str, float]]] = {}

    def add_batch(self, keys: list[str], features: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Store each clip's features (``{part: {tensor: (B, ...)}}``, float32), skipping clips with non-finite
        values."""
        arrays = {p: {t: v.detach().float().cpu().numpy() for t, v in features[p].items()} for p in self.namespaces}
        for i, key in enumerate(keys):
            clip = {p: {t: a[i] for t, a in tensors.items()} for p, tensors in arrays.items()}
            bad = [f"{p}.{t}" for p, tensors in clip.items() for t, a in tensors.items() if not np.isfinite(a).all()]
            if bad:
                self.skipped.append({"key": key, "reason": f"non-finite features in {bad}"})
                continue
            for part, tensors in clip.items():
                stored = {t: a.astype(self.dtype) for t, a in tensors.items()}
                self._account(part, tensors, stored)
                self.writer.add(key, part, encode_part(self.namespaces[part], self.job.making["data_manifest_sha256"],
                                                       key, stored))
            self.clips += 1

    def _account(self, part: str, exact: Mapping[str, np.ndarray], stored: Mapping[str, np.ndarray]) -> None:
        shapes = self.tensors.setdefault(part, {t: list(a.shape) for t, a in exact.items()})
        if shapes != {t: list(a.shape) for t, a in exact.items()}:
            raise RuntimeError(f"compute_features gave {part} tensors of shapes "
                               f"{ {t: list(a.shape) for t, a in exact.items()} } after {shapes}: one clip geometry "
                               f"must give one shape")
        if self.dtype == np.float32:
            return
        sums = self.error.setdefault(part, {})
        for t, a in exact.items():
            diff = stored[t].astype(np.float64) - a.astype(np.float64)
            s = sums.setdefault(t, {"max_abs": 0.0, "sq_err": 0.0, "sq_ref": 0.0})
            s["max_abs"] = max(s["max_abs"], float(np.abs(diff).max(initial=0.0)))
            s["sq_err"] += float((diff ** 2).sum())
            s["sq_ref"] += float((a.astype(np.float64) ** 2).sum())

    def finish(self, data_bytes: int) -> dict[str, Any]:
        """Rename the sidecar into place, then write the shard json (the mark of a done shard)."""
        self.writer.commit()
        info = {"making": self.job.making_id, "name": self.name, "clips": self.clips, "skipped": len(self.skipped),
                "skipped_items": self.skipped, "bytes": (self.job.folder / self.name).stat().st_size,
                "data_bytes": data_bytes, "tensors": self.tensors,
                "error": self.error if self.dtype != np.float32 else None}
        write_text_atomic(self.job.folder / f"{Path(self.name).stem}.json", json.dumps(info, indent=1))
        return info


def write_manifest(job: SplitJob, command: str) -> dict[str, Any]:
    """``manifest.json`` of a split whose every shard is done: the counts summed, each tensor's shape and float16
    error (``max_abs``, ``rel_rms`` = √(Σ err² / Σ ref²))."""
    infos = [job.shard_info(s.name) for s in job.manifest.shards]
    parts = {}
    for name, made in job.making["parts"].items():
        tensors = next((i["tensors"][name] for i in infos if name in i["tensors"]), {})
        error = None
        if job.making["dtype"] != "float32":
            error = {}
            for t in tensors:
                sums = [i["error"][name][t] for i in infos if (i.get("error") or {}).get(name, {}).get(t)]
                sq_ref = sum(s["sq_ref"] for s in sums)
                error[t] = {"max_abs": max((s["max_abs"] for s in sums), default=0.0),
                            "rel_rms": math.sqrt(sum(s["sq_err"] for s in sums) / sq_ref) if sq_ref else 0.0}
        parts[name] = {**made, "tensors": {t: {"shape": shape} for t, shape in tensors.items()}, "fp16_error": error}
    manifest = {
        "format": CACHE_FORMAT, "name": job.folder.parent.name, "split": job.split,
        "data_manifest_sha256": job.making["data_manifest_sha256"], "clip": job.making["clip"],
        "store": job.making["store"], "view": job.making["view"], "system": job.making["system"],
        "dtype": job.making["dtype"], "making": job.making_id, "parts": parts,
        "shards": [{"name": i["name"], "clips": i["clips"], "skipped": i["skipped"]} for i in infos],
        "clips": sum(i["clips"] for i in infos), "skipped": sum(i["skipped"] for i in infos),
        "skipped_items": [s for i in infos for s in i["skipped_items"]][:100],
        "bytes": sum(i["bytes"] for i in infos), "data_bytes": sum(i["data_bytes"] for i in infos),
        "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(job.folder / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


# ------------------------------------------------------------------------------------------- the command
def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"cache.device={device!r}: {exc}; use auto, cpu or cuda[:<index>]") from None


def plan_splits(datamodule, system_name: str, parts: Mapping[str, FeaturePart], options: CacheOptions
                ) -> list[SplitJob]:
    """The splits to cache (``train`` must be prepared; val/test are left out, with a note, when they are not)."""
    from avgen.data.shards import MANIFEST as DATA_MANIFEST

    jobs = []
    for split in options.splits:
        if split != "train" and not (datamodule.root / split / DATA_MANIFEST).exists():
            print(f"cache: no {split} split in {datamodule.root}: left out")
            continue
        manifest = datamodule.manifest(split)
        data_dir = datamodule.root / split
        made = making(system_name, parts, options.dtype, manifest_sha256(data_dir), datamodule.clip.to_dict(),
                      manifest.store.to_dict())
        jobs.append(SplitJob(split, data_dir, manifest, cache_folder(datamodule.root, options.name) / split, made))
    return jobs


def cache_features(datamodule, system, options: CacheOptions, *, command: str = "python -m avgen cache"
                   ) -> dict[str, Any]:
    """Cache ``system``'s frozen parts over the splits of ``datamodule`` (see the module doc). Returns
    ``{"name", "folder", "parts", "splits": {split: manifest or None (other ranks still at work)}, "computed":
    shards computed by this rank, "clips": clips this rank cached, "skipped"}``.

    Raises:
        ConfigError: a bad ``cache.*`` value or a part the system does not run.
        FileExistsError: a cache of this name made otherwise, without ``cache.overwrite``.
        MissingShardsError: the train split is not prepared.
        NothingProduced: no clip could be cached.
    """
    system_name = f"{type(system).__module__}.{type(system).__qualname__}"
    if not hasattr(system, "feature_parts") or not hasattr(system, "compute_features"):
        raise CommandUnavailable(f"{system_name} does not offer its frozen parts for caching (feature_parts, "
                                 f"compute_features)")
    parts = select_parts(system.feature_parts(), options.parts, system_name)
    rank, world, local_rank = _dist()
    device = _device(options.device, local_rank)
    jobs = plan_splits(datamodule, system_name, parts, options)
    for job in jobs:
        _check_existing(job, options.overwrite)
        remove_stale_temporaries(job.folder)
    todo = []  # (split job, shard) of this rank: shard i of all requested splits goes to rank i % world
    index = 0
    for job in jobs:
        for shard in job.manifest.shards:
            if index % world == rank and job.shard_info(shard.name) is None:
                todo.append((job, shard))
            index += 1
    report = {"name": options.name, "folder": str(cache_folder(datamodule.root, options.name)), "parts": list(parts),
              "splits": {}, "computed": len(todo), "clips": 0, "skipped": 0}
    if todo:
        report.update(_compute(todo, datamodule, system, parts, options, device))
    for job in jobs:
        report["splits"][job.split] = (write_manifest(job, command) if job.done() else None)
    finished = [m for m in report["splits"].values() if m is not None]
    if (todo and report["clips"] == 0) or (finished and len(finished) == len(jobs)
                                           and not sum(m["clips"] for m in finished)):
        raise NothingProduced(f"cache {options.name}: no clip could be cached; the reasons are in the shard jsons "
                              f"of {report['folder']}")
    return report


def _compute(todo: list[tuple[SplitJob, Any]], datamodule, system, parts: Mapping[str, FeaturePart],
             options: CacheOptions, device: torch.device) -> dict[str, int]:
    """Run ``system.compute_features`` over the shards ``todo`` and write their sidecars."""
    from tqdm import tqdm

    reads = {m for p in parts.values() for m in p.reads}
    skip = frozenset(m for m in MODALITIES if m not in reads)
    batch_size = options.batch_size or datamodule.eval_batch_size
    dataset = ShardBatches([(str(job.data_dir / s.name), s.clips) for job, s in todo], datamodule.clip, batch_size,
                           skip)
    workers = min(datamodule.num_workers, len(todo))
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    system.to(device).eval()
    names = list(parts)
    open_work: dict[int, _ShardWork] = {}
    counts = {"clips": 0, "skipped": 0}
    bar = tqdm(total=sum(s.clips for _, s in todo), unit="clip", desc=f"cache {options.name}", file=sys.stderr,
               disable=options.progress is False or (options.progress is None and not sys.stderr.isatty()),
               dynamic_ncols=True)
    try:
        for item in loader:
            job, shard = todo[item["job"]]
            work = open_work.get(item["job"])
            if work is None:
                namespaces = {p: job.making["parts"][p]["namespace"] for p in names}
                work = open_work[item["job"]] = _ShardWork(job, shard.name, namespaces, options.dtype)
            before = work.clips + len(work.skipped)
            work.skipped += [{"key": k, "reason": r} for k, r in item["skipped"]]
            if item["batch"] is not None:
                batch = _to_device(to_model_batch(item["batch"]), device)
                with torch.no_grad():
                    features = system.compute_features(batch, names)
                _check_output(features, names, len(batch["key"]), type(system).__name__)
                work.add_batch(list(batch["key"]), features)
            bar.update(work.clips + len(work.skipped) - before)
            if item["end"]:
                info = open_work.pop(item["job"]).finish((job.data_dir / shard.name).stat().st_size)
                counts["clips"] += info["clips"]
                counts["skipped"] += info["skipped"]
                for s in work.skipped[:3]:
                    log.warning("cache: skipped %s: %s", s["key"], s["reason"])
            bar.set_postfix(cached=counts["clips"] + sum(w.clips for w in open_work.values()),
                            skipped=counts["skipped"] + sum(len(w.skipped) for w in open_work.values()), refresh=False)
    finally:
        for work in open_work.values():
            work.writer.abort()
        bar.close()
    return counts


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _check_output(features: Any, names: list[str], batch: int, system: str) -> None:
    """``compute_features`` must give ``{part: {tensor: (B, ...)}}`` for every requested part."""
    if not isinstance(features, Mapping) or any(p not in features for p in names):
        got = sorted(features) if isinstance(features, Mapping) else type(features).__name__
        raise RuntimeError(f"{system}.compute_features gave {got}, expected the parts {names}")
    for p in names:
        for t, v in features[p].items():
            if not isinstance(v, torch.Tensor) or v.ndim < 1 or v.shape[0] != batch:
                raise RuntimeError(f"{system}.compute_features: {p}.{t} is not a (B={batch}, ...) tensor")


def summary(report: Mapping[str, Any]) -> list[str]:
    """The lines ``cache`` prints: per split the clips cached and skipped, the bytes per clip against the data
    shards', and each tensor's float16 error against float32."""
    lines = [f"cache {report['name']}: {report['folder']} (parts {', '.join(report['parts'])})"]
    for split, m in report["splits"].items():
        if m is None:
            lines.append(f"  {split}: other ranks are still at work (the last to finish writes its manifest)")
            continue
        per_clip = m["bytes"] / m["clips"] if m["clips"] else 0.0
        total = m["clips"] + m["skipped"]
        data_per_clip = m["data_bytes"] / total if total else 0.0
        ratio = f" = {per_clip / data_per_clip:.1%} of the data shards' {_size(data_per_clip)}" if data_per_clip else ""
        lines.append(f"  {split}: {m['clips']} clips cached, {m['skipped']} skipped; {_size(per_clip)} per clip{ratio}")
        for s in m.get("skipped_items", [])[:3]:
            lines.append(f"    skipped {s['key']}: {' '.join(s['reason'].split())}")
    errors = next((m for m in report["splits"].values() if m is not None and m["dtype"] != "float32"), None)
    if errors is not None:
        lines.append("  float16 error against float32 (train, else the first split):")
        for part, info in errors["parts"].items():
            for t, e in (info["fp16_error"] or {}).items():
                lines.append(f"    {part}.{t} {info['tensors'][t]['shape']}: max |err| {e['max_abs']:.3g}, "
                             f"relative RMS {e['rel_rms']:.3g}")
    return lines


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} GB"
