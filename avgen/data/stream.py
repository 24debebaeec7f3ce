"""Shard streams: the resampled training stream and the deterministic evaluation stream.

Both are ``IterableDataset`` s that batch inside the pipeline (the DataLoader runs with
``batch_size=None``), decode in the workers, and account for every clip they could not use.

Training (``TrainStream``): each worker draws shards with replacement from its own seeded RNG,
shuffles samples in a buffer of raw bytes (decoding happens after the shuffle, so the buffer is
cheap), and yields exactly ``batches_per_worker`` full batches per epoch. Every rank therefore
yields the same number of batches whatever the shard sizes, and DDP never waits on a rank that
ran dry. The seed mixes the data seed, rank, worker, the global step at which the loader was built
(so a resumed run does not replay the first run's stream) and the worker's epoch counter (workers
are persistent).

Evaluation (``EvalStream``): every rank and worker reads the shards in manifest order and keeps
the clips whose global index falls in its slot (``index % (world * workers) == slot``), so each
clip is seen exactly once across all ranks and workers, ranks get equal shares up to one clip,
and the order is deterministic. Batches may be partial.

Concatenated test set (``ConcatEvalStream``, ``data.concat_test``): the same slots over a fixed list
of pairs (:class:`avgen.data.concat.ConcatTest`) instead of the shards' clips; a pair's two clips may
lie in any shard, so they are read by their byte offsets in the tars (:func:`index_shards`, one pass
over the tar headers and json members) and joined by :func:`avgen.data.concat.join`.

Feature cache (``data.features``, :mod:`avgen.data.feature_cache`): a shard with a ``sidecar`` is read in
lockstep with it by key (:class:`~avgen.data.feature_cache.SidecarCursor`); each clip carries its members, decoded
and checked with its frames (a clip the cache lacks, or whose members are damaged, is a counted skip naming the clip
and the cache), and the batch gains ``features``. Modalities in a stream's ``skip`` are not decoded; with a cache,
training reads each clip's evaluation view (``eval_view``: window from 0 s, centre crop), the view the cache was
computed on.

Clip accounting: a clip that fails to decode, and every clip a shard's manifest (or subset) promises
but the tar does not deliver (truncated or unreadable shard), is counted as skipped, with its shard. The
counts travel with the next batch under ``"_health"`` (tagged with the split) and are summed in the main process
(``AVDataModule.health``). If, after ``min_clips_for_check`` attempts, a worker has skipped more
than ``max_skip_fraction`` of its clips, it stops the run with a ``DataHealthError`` naming the
shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from avgen.data.concat import ConcatAugment, ConcatPair, join
from avgen.data.decode import SampleError, collate, decode_sample
from avgen.data.feature_cache import SidecarCursor, SidecarReader
from avgen.data.geometry import ClipGeometry
from avgen.errors import DataHealthError


@dataclass(frozen=True)
class Shard:
    """One tar shard to read: ``clips`` it holds (or, with ``keys``, the clips of it to use). ``keys``: the
    sample keys to use (a curated subset, :mod:`avgen.data.subset`); the shard's other samples are
    passed over undecoded. ``None``: all of them. ``sidecar``: its feature cache tar (``data.features``), read
    in lockstep; ``None``: no cache."""

    url: str
    clips: int
    keys: frozenset[str] | None = None
    sidecar: str | None = None


@dataclass
class Health:
    """Clips seen (decoded) and skipped, with the shards the skipped ones came from."""

    seen: int = 0
    skipped: int = 0
    shards: Counter = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)

    def skip(self, shard: str, reason: str, n: int = 1) -> None:
        self.skipped += n
        self.shards[shard] += n
        if len(self.reasons) < 10:
            self.reasons.append(reason)

    def merge(self, other: dict | "Health") -> None:
        other = other if isinstance(other, Health) else Health.from_dict(other)
        self.seen += other.seen
        self.skipped += other.skipped
        self.shards.update(other.shards)
        self.reasons.extend(other.reasons[: max(0, 10 - len(self.reasons))])

    @property
    def fraction(self) -> float:
        total = self.seen + self.skipped
        return self.skipped / total if total else 0.0

    def to_dict(self) -> dict:
        return {"seen": self.seen, "skipped": self.skipped, "shards": dict(self.shards), "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, d: dict) -> "Health":
        return cls(d["seen"], d["skipped"], Counter(d["shards"]), list(d["reasons"]))

    def describe(self) -> str:
        worst = ", ".join(f"{s} ({n})" for s, n in self.shards.most_common(8))
        why = "; ".join(self.reasons[:3])
        return (f"{self.skipped} of {self.seen + self.skipped} clips skipped ({self.fraction:.1%}); "
                f"shards: {worst}; first reasons: {why}")


def _record(errors: list):
    def handler(exc: Exception) -> bool:
        errors.append(exc)
        return False  # stop reading this shard; the missing clips are counted from the manifest

    return handler


def iter_shard(shard: Shard, health: Health) -> Iterator[dict]:
    """Yield the raw samples of one shard; clips it promises but cannot deliver are counted as skipped. With a
    ``sidecar``, each sample carries ``__features__``: its members ``{part: bytes}``, or why it has none (a str)."""
    errors: list[Exception] = []
    handler = _record(errors)
    produced = 0
    opened = wds.tariterators.url_opener([{"url": shard.url}], handler=handler)
    expanded = wds.tariterators.tar_file_expander(opened, handler=handler)
    sidecar = None if shard.sidecar is None else SidecarCursor(shard.sidecar)
    for sample in wds.tariterators.group_by_keys(expanded, handler=handler):
        if sidecar is not None:  # every key, in the shard's order, before the subset is applied
            sample["__features__"] = sidecar.take(sample.get("__key__", ""))
        if shard.keys is not None and sample.get("__key__") not in shard.keys:
            continue  # outside the subset
        produced += 1
        yield sample
    missing = shard.clips - produced
    if missing > 0:
        reason = f"{shard.url}: {missing} clip(s) unreadable ({errors[0].args[0] if errors else 'shard ended early'})"
        health.skip(shard.url, reason, missing)


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor for one batch. Inside a DataLoader worker it is allocated in shared memory
    right away: otherwise the worker copies every batch into shared memory to hand it over
    (measured: half of the hand-over cost per clip)."""
    if get_worker_info() is not None:
        try:
            storage = torch.UntypedStorage._new_shared(math.prod(shape))
            return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)
        except (AttributeError, RuntimeError):  # private API; plain memory works too, one copy slower
            pass
    return torch.empty(shape, dtype=torch.uint8)


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Stream(IterableDataset):
    split = "train"

    skip: frozenset[str] = frozenset()  # modalities not decoded (data.audio_only, data.features; set on the instance)
    features: SidecarReader | None = None  # decodes the sidecar members (data.features; set on the instance)

    def __init__(self, shards: list[Shard], clip: ClipGeometry, batch_size: int, *, rank: int, world_size: int,
                 max_skip_fraction: float, min_clips_for_check: int):
        super().__init__()
        if not shards:
            raise ValueError("no shards to read")
        self.shards, self.clip, self.batch_size = shards, clip, batch_size
        self.rank, self.world_size = rank, world_size
        self.max_skip_fraction, self.min_clips_for_check = max_skip_fraction, min_clips_for_check
        self._total = Health()

    def _batches(self, samples: Iterator[dict], health: Health, rng, *, partial: bool
                 ) -> Iterator[tuple[list[dict], torch.Tensor]]:
        """Decode samples straight into batch tensors (no per-clip copies); an unusable clip is
        counted and its slot reused. Yields (clips, video (B, F, H, W, 3) uint8; F = 0 when ``video`` is in
        ``skip``)."""
        geo = self.clip
        shape = (self.batch_size, 0 if "video" in self.skip else geo.num_frames, geo.height, geo.width, 3)
        while True:
            video = _batch_tensor(shape)
            clips: list[dict] = []
            for sample in samples:
                try:
                    clips.append(self._decode(sample, rng, video[len(clips)].numpy()))
                except SampleError as exc:
                    health.skip(sample.get("__url__", "?"), str(exc))
                    self._check(health)
                    continue
                health.seen += 1
                if len(clips) == self.batch_size:
                    break
            if len(clips) < self.batch_size:  # the stream ended
                if clips and partial:
                    yield clips, video[:len(clips)]
                return
            yield clips, video

    def _decode(self, sample: dict, rng: np.random.Generator | None, out: np.ndarray) -> dict:
        """One clip decoded into ``out`` (F, H, W, 3) uint8, a slot of the batch, with its cached features when the
        stream reads a cache; raises ``SampleError``."""
        features = self._features(sample)
        clip = decode_sample(sample, self.clip, rng, out=out, skip=self.skip)
        if features is not None:
            clip["features"] = features
        return clip

    def _features(self, sample: dict) -> dict | None:
        """The clip's cached features (``{part: {tensor: array}}``), None without a cache; raises ``SampleError``
        for a clip the cache lacks or whose members are damaged, naming the clip and the cache."""
        if self.features is None:
            return None
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        members = sample.get("__features__")
        if not isinstance(members, dict):
            raise SampleError(f"clip {key} in {url}: {members or 'no feature cache sidecar'}")
        try:
            return self.features.decode(key, members)
        except ValueError as exc:
            raise SampleError(f"clip {key} in {url}: feature cache {self.features.folder}: {exc}; make the cache "
                              f"again (python -m avgen cache ... cache.overwrite=true)") from exc

    def _check(self, health: Health) -> None:
        total = self._total.seen + self._total.skipped + health.seen + health.skipped
        if total < self.min_clips_for_check:
            return
        merged = Health()
        merged.merge(self._total)
        merged.merge(health)
        if merged.fraction > self.max_skip_fraction:
            raise DataHealthError(
                f"too many unusable clips (data.max_skip_fraction={self.max_skip_fraction}): {merged.describe()}. "
                f"Re-create the listed shards with the dataset's prepare command, or raise data.max_skip_fraction.")

    def _take(self, health: Health) -> dict:
        """Counts since the last batch; ``health`` is reset in place (the generators keep writing to it)."""
        self._check(health)
        out = health.to_dict()
        self._total.merge(health)
        health.seen, health.skipped = 0, 0
        health.shards.clear()
        health.reasons.clear()
        return out

    def _emit(self, clips: list[dict], video: torch.Tensor, health: Health) -> dict:
        """Collate ``clips`` and attach the clip accounting since the previous batch."""
        batch = collate(clips, video)
        batch["_health"] = {"split": self.split, **self._take(health)}
        return batch


class TrainStream(_Stream):
    """Infinite resampled stream cut into epochs of ``batches_per_worker`` full batches per worker."""

    def __init__(self, shards: list[Shard], clip: ClipGeometry, batch_size: int, *, batches_per_worker: int,
                 shuffle_buffer: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1,
                 max_skip_fraction: float = 0.05, min_clips_for_check: int = 64, num_workers: int = 0,
                 fixed: bool = False, concat: ConcatAugment | None = None):
        super().__init__(shards, clip, batch_size, rank=rank, world_size=world_size,
                         max_skip_fraction=max_skip_fraction, min_clips_for_check=min_clips_for_check)
        self.concat = concat  # VTA-LDM's concat augmentation (avgen.data.concat), applied per batch
        self.batches_per_worker, self.shuffle_buffer = batches_per_worker, shuffle_buffer
        self.seed, self.start_step, self.num_workers = seed, start_step, max(1, num_workers)
        self.fixed = fixed  # every epoch replays the first one (debug=overfit)
        self.eval_view = False  # decode each clip's evaluation view (data.features: the view the cache holds)
        self._epoch = 0

    def __len__(self) -> int:
        return self.batches_per_worker * self.num_workers

    def seed_for(self, worker: int, epoch: int) -> int:
        return _seed(self.seed, self.rank, worker, self.start_step, epoch)

    def _samples(self, rng: random.Random, health: Health) -> Iterator[dict]:
        while True:
            shard = rng.choice(self.shards)
            yield from iter_shard(shard, health)
            self._check(health)

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buf: list[dict] = []
        for sample in samples:
            if len(buf) < self.shuffle_buffer:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample

    def __iter__(self) -> Iterator[dict]:
        worker, _ = _worker()
        seed = self.seed_for(worker, 0 if self.fixed else self._epoch)
        self._epoch += 1
        rng, np_rng = random.Random(seed), np.random.default_rng(seed)
        health = Health()
        view_rng = None if self.eval_view else np_rng
        batches = self._batches(self._shuffled(self._samples(rng, health), rng), health, view_rng, partial=False)
        for _ in range(self.batches_per_worker):
            clips, video = next(batches)
            if self.concat is not None:
                self.concat.apply(clips, video, self.clip, np_rng)
            yield self._emit(clips, video, health)


class EvalStream(_Stream):
    """Every clip once across ranks and workers, in manifest order, centre crops, partial last batch."""

    def __init__(self, shards: list[Shard], clip: ClipGeometry, batch_size: int, *, split: str = "val", rank: int = 0,
                 world_size: int = 1, max_skip_fraction: float = 0.05, min_clips_for_check: int = 64):
        super().__init__(shards, clip, batch_size, rank=rank, world_size=world_size,
                         max_skip_fraction=max_skip_fraction, min_clips_for_check=min_clips_for_check)
        self.split = split

    def slot_clips(self, slot: int, slots: int) -> int:
        """How many clips (per the manifests) the given slot owns."""
        total = sum(s.clips for s in self.shards)
        return len(range(slot, total, slots))

    def _mine(self, slot: int, slots: int, health: Health) -> Iterator[dict]:
        offset = 0
        for shard in self.shards:
            # a shard that delivers fewer clips than promised: only this slot's share is counted here
            shard_health = Health()
            produced = 0
            for i, sample in enumerate(iter_shard(shard, shard_health)):
                produced = i + 1
                if (offset + i) % slots == slot:
                    yield sample
            missing = sum(1 for i in range(produced, shard.clips) if (offset + i) % slots == slot)
            if missing:
                health.skip(shard.url, shard_health.reasons[0] if shard_health.reasons else shard.url, missing)
            offset += shard.clips

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        slot, slots = self.rank * workers + worker, self.world_size * workers
        health = Health()
        pending = None  # held back one step so skips found after the last batch still travel with it
        for batch in self._batches(self._mine(slot, slots, health), health, None, partial=True):
            if pending is not None:
                yield self._emit(*pending, health)
            pending = batch
        if pending is not None:
            yield self._emit(*pending, health)


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lies in a tar shard: ``members`` ``(extension, byte offset of the data, size in bytes)``,
    and its ``label`` (from its json; ``""`` when it has none)."""

    url: str
    key: str
    label: str
    members: tuple[tuple[str, int, int], ...]

    def read(self) -> dict[str, Any]:
        """The raw sample as the shard reader yields it: ``__key__``, ``__url__`` and ``{extension: bytes}``.

        Raises:
            SampleError: the shard cannot be read, naming the clip and the shard.
        """
        sample: dict[str, Any] = {"__key__": self.key, "__url__": self.url}
        try:
            with open(self.url, "rb") as f:
                for ext, offset, size in self.members:
                    f.seek(offset)
                    sample[ext] = f.read(size)
                    if len(sample[ext]) != size:
                        raise OSError(f"{ext} member ends early")
        except OSError as exc:
            raise SampleError(f"clip {self.key} in {self.url}: {exc}") from exc
        return sample


def index_shards(shards: list[Shard]) -> tuple[list[SampleRef], Health]:
    """The samples of ``shards`` (a subset's keys only, when a shard has ``keys``), located by one pass over the
    tar headers and json members; and, as skipped clips, those a shard promises (``Shard.clips``) but does not
    deliver or whose json is unreadable."""
    refs: list[SampleRef] = []
    missing = Health()
    for shard in shards:
        members: dict[str, list[tuple[str, int, int]]] = {}
        labels: dict[str, str] = {}
        reason = "shard ended early"
        try:
            with tarfile.open(shard.url, "r:") as tar:  # uncompressed, as prepare writes: offsets are file offsets
                for member in tar:
                    key, _, ext = member.name.rpartition(".")
                    if not member.isfile() or shard.keys is not None and key not in shard.keys:
                        continue
                    members.setdefault(key, []).append((ext, member.offset_data, member.size))
                    if ext == "json":
                        labels[key] = str(json.loads(tar.extractfile(member).read()).get("label") or "")
        except (OSError, tarfile.TarError, ValueError) as exc:
            reason = f"{exc} (the concatenated test set reads uncompressed tar shards, as prepare writes them)"
        found = [SampleRef(shard.url, key, labels[key], tuple(parts)) for key, parts in members.items()
                 if key in labels]
        refs += found
        if shard.clips > len(found):
            missing.skip(shard.url, f"{shard.url}: {shard.clips - len(found)} clip(s) unreadable ({reason})",
                         shard.clips - len(found))
    return refs, missing


class ConcatEvalStream(EvalStream):
    """The concatenated test set (``data.concat_test``): ``pairs`` (``ConcatPair`` of keys) served like
    :class:`EvalStream` serves clips, pair p by slot ``p % (world * workers)``, each joined by
    :func:`avgen.data.concat.join` (``first``'s frames and audio up to the cut, then ``second``'s). ``refs``:
    every sample of the split by key (:func:`index_shards`); ``missing``: the split's unreadable clips, counted
    as skipped by the slots their indices after the last pair fall in."""

    def __init__(self, shards: list[Shard], clip: ClipGeometry, batch_size: int, *, pairs: list[ConcatPair],
                 refs: dict[str, SampleRef], missing: Health | None = None, split: str = "test", rank: int = 0,
                 world_size: int = 1, max_skip_fraction: float = 0.05, min_clips_for_check: int = 64):
        super().__init__(shards, clip, batch_size, split=split, rank=rank, world_size=world_size,
                         max_skip_fraction=max_skip_fraction, min_clips_for_check=min_clips_for_check)
        self.pairs, self.refs, self.missing = pairs, refs, missing or Health()

    def slot_clips(self, slot: int, slots: int) -> int:
        return len(range(slot, len(self.pairs) + self.missing.skipped, slots))

    def _mine(self, slot: int, slots: int, health: Health) -> Iterator[dict]:
        for p in range(slot, len(self.pairs), slots):
            first, second, cut = self.pairs[p]
            yield {"__key__": f"{first}+{second}@{cut}", "__url__": self.refs[first].url,
                   "pair": (self.refs[first], self.refs[second], cut)}
        mine = self.slot_clips(slot, slots) - len(range(slot, len(self.pairs), slots))
        if mine:
            url = next(iter(self.missing.shards))
            health.skip(url, self.missing.reasons[0] if self.missing.reasons else url, mine)

    def _decode(self, sample: dict, rng: np.random.Generator | None, out: np.ndarray) -> dict:
        first, second, cut = sample["pair"]
        mine = decode_sample(first.read(), self.clip, None, out=out, skip=self.skip)
        theirs = decode_sample(second.read(), self.clip, None, skip=self.skip)
        return join(mine, theirs, cut, self.clip)
