"""The reference side of the Fréchet distances: the reference clips (a shard split or a folder), what
their statistics depend on (:func:`reference_identity`), and the statistics from the cache or from one
pass shared by every metric and process (:func:`set_references`)."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from avgen.errors import ConfigError
from avgen.evaluation.processes import Processes
from avgen.samples import find_clips, load_clips

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ Fréchet distances
def reference_clips(ref_dir: str | Path, rank: int = 0, world: int = 1, decode_threads: int = 0,
                    audio: str = "stream") -> Iterator[tuple[str, np.ndarray, float, np.ndarray, int]]:
    """(name, frames (F, H, W, 3) uint8, fps, audio, sample rate) of each reference clip (process
    ``rank``'s share of them out of ``world``): a shard split folder (``manifest.json``) or a folder of clips,
    whose sound is read as ``audio`` says (:func:`avgen.samples.load_clips`)."""
    from avgen.data.shards import MANIFEST, Manifest

    folder = Path(ref_dir)
    if (folder / MANIFEST).exists():
        from avgen.data.stream import EvalStream, Shard

        manifest = Manifest.load(folder)
        stream = EvalStream([Shard(str(folder / s.name), s.clips) for s in manifest.shards], manifest.clip, 1,
                            split=manifest.split, max_skip_fraction=1.0, rank=rank, world_size=world)
        for batch in stream:
            yield (batch["key"][0], batch["video"][0].numpy(), float(manifest.clip.fps), batch["audio"][0].numpy(),
                   manifest.clip.sample_rate)
        return
    unreadable: list[dict] = []
    for name, clip in load_clips(find_clips(folder, "evaluate.ref_dir").files[rank::world], unreadable,
                                  decode_threads, audio):
        yield name, clip.frames, float(clip.fps), clip.audio, clip.sample_rate
    for failure in unreadable:  # not counted, but never dropped without a word
        log.warning("evaluate.ref_dir: reference clip %s skipped: %s", failure["clip"], failure["reason"])


def reference_identity(ref_dir: str | Path) -> dict[str, Any]:
    """What the reference statistics depend on besides the extractor: the split manifest's hash, or
    the listing (names, sizes, mtimes) of a folder of clips."""
    from avgen.data.shards import MANIFEST
    from avgen.pretrained import sha256_file

    folder = Path(ref_dir).absolute()
    if (folder / MANIFEST).exists():
        return {"manifest_sha256": sha256_file(folder / MANIFEST)}
    listing = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()]
    return {"folder": str(folder), "listing_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def set_references(scorers: list, ref_dir, cache_dir, procs: Processes,
                    decode_threads: int = 0, audio: str = "stream", per_clip: list | None = None) -> None:
    """Set the reference statistics of ``scorers`` (:class:`~avgen.evaluation.scorers.FrechetScorer`) from the
    cache, or from one shared pass over the reference clips (each process its share, the sums then reduced).
    ``per_clip`` scorers (``kvd``) keep one feature row per reference clip (``update_reference``; their
    ``reference_metric`` rows are concatenated across processes); they are fed in the same pass, which then
    runs whether or not the statistics are cached."""
    from avgen.metrics.frechet import cached_reference_stats, reference_stats_path

    cached = [reference_stats_path(cache_dir, s.key(ref_dir)).is_file() for s in scorers]
    # one decision for all processes: a file another process writes meanwhile must not split them
    cached = [all(flags) for flags in zip(*procs.gather(cached))]
    missing = [s for s, hit in zip(scorers, cached) if not hit] + list(per_clip or [])
    if missing:
        used = {s.name: 0 for s in missing}
        skipped: dict[str, list[str]] = {s.name: [] for s in missing}
        for name, frames, _, audio, sr in reference_clips(ref_dir, procs.rank, procs.world, decode_threads, audio):
            for scorer in missing:
                try:
                    scorer.update_reference(frames, audio, sr)
                    used[scorer.name] += 1
                except ValueError as exc:  # a reference clip the extractor cannot take: skipped, logged
                    log.warning("%s reference clip %s skipped: %s", scorer.name, name, exc)
                    skipped[scorer.name].append(f"{name}: {exc}")
        for scorer in missing:
            procs.reduce(scorer.reference_metric)
        parts = procs.gather((used, skipped))
        for scorer in missing:  # fewer than 2 usable reference clips: say why, not "no covariance"
            total = sum(u[scorer.name] for u, _ in parts)
            reasons = [r for _, k in parts for r in k[scorer.name]]
            if total < 2:
                why = f"; the first skipped: {reasons[0]}" if reasons else ""
                raise ConfigError(f"{scorer.name}: {total} usable reference clips in evaluate.ref_dir={ref_dir} "
                                  f"({len(reasons)} skipped), at least 2 are needed{why}")
    for scorer, hit in zip(scorers, cached):
        key = scorer.key(ref_dir)
        if hit or procs.rank == 0:  # computed by this run: every process holds the same sums; the first writes
            stats = cached_reference_stats(cache_dir, key, partial(scorer.reference_metric.stats, real=True))
        else:
            stats = _stats_with_key(scorer.reference_metric.stats(real=True), key)
        scorer.set_reference(stats)


def _stats_with_key(stats, key: dict):
    from avgen.metrics.frechet import canonical_json

    stats.key = json.loads(canonical_json(key))
    return stats

