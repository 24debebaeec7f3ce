"""The reference side of the metrics that compare with ``evaluate.ref_dir``, through the feature store
(:mod:`avgen.data.feature_store`, rooted at ``evaluate.cache_dir``).

A **reference user** is whatever needs features of reference clips: a Fréchet scorer (``fvd``, ``fad``,
``fd_vggish_frames``), the paired references of ``kl`` and of the PaSST metrics, and any scorer added later
that follows the same protocol:

- ``name``: the metric, for messages; ``feature_namespace()``: the store namespace description of its extractor
  (:func:`extractor_namespace`); ``reference_features(frames, audio, sr) -> {name: float32 array}``: pure
  extraction for one reference clip (``frames`` (F, H, W, 3) uint8, or None for an audio-only read; ``audio``
  (S,) float32 at ``sr`` Hz); raises ``ValueError`` for a clip the extractor cannot take;
- a user without ``feature_namespace`` takes part unstored: its features are extracted on every run;
- unpaired users (every clip of ``ref_dir``): ``add_reference(features)`` accumulates one clip's features, in
  reference order; optional ``min_references`` (the least usable clips over all processes, else a ConfigError)
  and ``reduce_references(procs)`` (merge the processes' states once all are added);
- paired users (``paired = True``): ``paired_references()`` lists the :class:`ReferenceClip` s its generated
  clips name, and ``add_paired_reference(name, features_or_error)`` receives each.

:func:`set_references` lists each user's clips with their identities, looks every one up in the store, decodes
only the clips some user misses (each once, shared by users of one namespace: ``fvd`` and ``kvd`` share I3D
features), extracts and stores them, then adds every clip's features in reference order, so a warm store gives
bit-identical results to a cold one. Each process handles its share (``rank::world`` of the reference list, or
the references of its own generated clips); entries are written atomically, so processes never corrupt one.

The Fréchet statistics are recomputed from the stored per-clip features on every run (no statistics cache):
measured by ``benchmarks/feature_store.py``, reading the entries costs little next to the extraction they replace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from avgen.data.feature_store import FeatureStore, Namespace, digest, file_identity, split_identity
from avgen.errors import ConfigError
from avgen.evaluation.processes import Processes

log = logging.getLogger(__name__)


def extractor_namespace(extractor, preprocessing: dict[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """The store namespace description of features of a :class:`~avgen.encoders.base.FeatureExtractor`: its name,
    the SHA-256 of its weight files, its config plus ``preprocessing`` (what is done to a clip before it), ``dtype``."""
    identity = extractor.identity()
    return {"extractor": identity["name"], "weights_sha256": identity["sha256"],
            "preprocessing": {"extractor_config": identity["config"], **preprocessing}, "dtype": dtype}


@dataclass(frozen=True, eq=False)
class ReferenceClip:
    """One reference clip to look up and, on a miss, decode: ``name`` (its file name, or its split key),
    ``identity`` (:mod:`avgen.data.feature_store`), and where it is read from: ``path`` (a file, its sound as
    ``audio`` says) or ``sample`` (a :class:`~avgen.data.stream.SampleRef` of a shard split, decoded at
    ``geometry``). ``audio_only``: only the sound is decoded."""

    name: str
    identity: dict
    path: Path | None = None
    sample: Any = None
    geometry: Any = None
    audio: str = "stream"
    audio_only: bool = False

    @property
    def key(self) -> str:
        return digest(self.identity)

    def load(self) -> tuple[np.ndarray | None, np.ndarray, int]:
        """(frames (F, H, W, 3) uint8 or None when ``audio_only``, audio (S,) float32, sample rate).

        Raises:
            ValueError: an unreadable clip (reported for this clip only).
        """
        from avgen.data.decode import SampleError, decode_sample
        from avgen.media import (
            VIDEO_SUFFIXES,
            MediaError,
            audio_companion,
            check_finite,
            decode_flac,
            read_audio,
            read_clip,
        )

        try:
            if self.sample is not None:
                if self.audio_only:
                    audio, sr = decode_flac(self.sample.read()["flac"])
                    return None, audio, sr
                clip = decode_sample(self.sample.read(), self.geometry, None)
                return clip["video"], clip["audio"], self.geometry.sample_rate
            if self.audio_only and self.path.suffix.lower() not in VIDEO_SUFFIXES:
                audio, sr = read_audio(self.path)
                check_finite(audio, str(self.path))
                return None, audio, sr
            clip = read_clip(self.path, audio=audio_companion(self.path) if self.audio == "file" else None)
            return (None if self.audio_only else clip.frames), clip.audio, clip.sample_rate
        except (SampleError, MediaError, OSError, KeyError, ValueError) as exc:
            raise ValueError(f"reference {self.name}: {type(exc).__name__}: {exc}") from exc


def file_clip(path: Path, audio: str = "stream", audio_only: bool = False) -> ReferenceClip:
    """A clip file as a :class:`ReferenceClip`; its identity covers the audio file beside it (read when the video
    has no sound, or with ``audio="file"``) and which sound is read (``audio``)."""
    from avgen.media import audio_companion

    companion = audio_companion(path)
    return ReferenceClip(path.name, file_identity(path, *([companion] if companion else []), audio=audio),
                         path=path, audio=audio, audio_only=audio_only)


def split_clips(split_dir: str | Path, audio_only: bool = False, keys: set[str] | None = None) -> list[ReferenceClip]:
    """The clips of a prepared shard split (``keys`` only, when given), in manifest order, located by one pass
    over the tar headers and json members (nothing decoded); clips a shard promises but cannot deliver are
    logged."""
    from avgen.data.shards import MANIFEST, Manifest
    from avgen.data.stream import Shard, index_shards
    from avgen.pretrained import sha256_file

    folder = Path(split_dir)
    manifest = Manifest.load(folder)
    manifest_sha = sha256_file(folder / MANIFEST)
    refs, missing = index_shards([Shard(str(folder / s.name), s.clips) for s in manifest.shards])
    for reason in missing.reasons:
        log.warning("evaluate.ref_dir: %s", reason)
    clips = []
    for ref in refs:
        if keys is not None and ref.key not in keys:
            continue
        if audio_only:
            ref = replace(ref, members=tuple(m for m in ref.members if m[0] == "flac"))
        clips.append(ReferenceClip(ref.key, split_identity(manifest_sha, ref.key), sample=ref,
                                   geometry=manifest.clip, audio_only=audio_only))
    return clips


def reference_set(ref_dir: str | Path, audio: str = "stream") -> list[ReferenceClip]:
    """Every clip of ``ref_dir``, in order: a shard split folder (``manifest.json``; decoded at its stored geometry)
    or a folder of clips (:func:`avgen.samples.find_clips`; sound as ``audio`` says)."""
    from avgen.data.shards import MANIFEST
    from avgen.samples import find_clips

    folder = Path(ref_dir)
    if (folder / MANIFEST).exists():
        return split_clips(folder)
    return [file_clip(p, audio) for p in find_clips(folder, "evaluate.ref_dir").files]


class Unstored:
    """The stand-in namespace of a reference user without ``feature_namespace``: every look-up misses, nothing is
    written (its features are extracted on every run)."""

    def __init__(self, user):
        self.id, self.folder = f"unstored-{id(user)}", None

    def get(self, identity) -> None:
        return None

    def put(self, identity, features) -> None:
        pass


@dataclass
class _Plan:
    user: Any
    namespace: Namespace
    clips: list[ReferenceClip]


def _decoded(clips: list[ReferenceClip], threads: int) -> Iterator[tuple[ReferenceClip, Any]]:
    """(clip, (frames, audio, sr) or the ValueError) of each clip in order; ``threads`` decode ahead (at most
    ``2 * threads`` clips held)."""
    if threads <= 0:
        for clip in clips:
            try:
                yield clip, clip.load()
            except ValueError as exc:
                yield clip, exc
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def load(clip):
        try:
            return clip.load()
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(threads) as pool:
        ahead: deque = deque()
        for clip in clips:
            ahead.append((clip, pool.submit(load, clip)))
            if len(ahead) >= 2 * threads:
                done, future = ahead.popleft()
                yield done, future.result()
        while ahead:
            done, future = ahead.popleft()
            yield done, future.result()


def set_references(users: list, ref_dir, store: FeatureStore, procs: Processes, decode_threads: int = 0,
                   audio: str = "stream") -> None:
    """Give every reference user (module docstring) its reference features, from ``store`` where it has them and
    from one decoding pass over the clips it misses (each process its share). Each user's ``store_report`` is set
    to ``{namespace, folder, hits, misses, damaged}`` over all processes (``hits``: clips whose features came from
    the store; ``misses``: clips extracted by this run, or that failed; ``damaged``: the namespace's entries that
    could not be used, counted in ``misses`` too).

    Raises:
        ConfigError: an unpaired user with fewer than its ``min_references`` usable clips over all processes.
    """
    shared: list[ReferenceClip] | None = None
    namespaces: dict[str, Namespace] = {}
    plans = []
    for user in users:
        if getattr(user, "paired", False):
            clips = user.paired_references()
        else:
            if shared is None:
                shared = reference_set(ref_dir, audio)[procs.rank::procs.world]
            clips = shared
        ns = store.namespace(user.feature_namespace()) if hasattr(user, "feature_namespace") else Unstored(user)
        plans.append(_Plan(user, namespaces.setdefault(ns.id, ns), clips))

    stored: dict[tuple[str, str], dict] = {}  # (namespace, clip) → features read from the store
    missed: dict[tuple[str, bool], tuple[ReferenceClip, list[_Plan]]] = {}  # (clip, audio only) → the plans missing it
    looked: set[tuple[str, str]] = set()
    for plan in plans:
        for clip in plan.clips:
            slot = (plan.namespace.id, clip.key)
            if slot in looked:  # a second user of the namespace (fvd and kvd): one look-up, one extraction
                continue
            looked.add(slot)
            features = plan.namespace.get(clip.identity)
            if features is not None:
                stored[slot] = features
            else:
                missed.setdefault((clip.key, clip.audio_only), (clip, []))[1].append(plan)

    extracted: dict[tuple[str, str], dict | ValueError] = {}
    for clip, loaded in _decoded([clip for clip, _ in missed.values()], decode_threads):
        for plan in missed[(clip.key, clip.audio_only)][1]:
            slot = (plan.namespace.id, clip.key)
            if isinstance(loaded, ValueError):
                extracted[slot] = loaded
                continue
            try:
                features = plan.user.reference_features(*loaded)
            except ValueError as exc:  # a reference clip the extractor cannot take: skipped, reported
                extracted[slot] = ValueError(f"{clip.name}: {exc}")
                continue
            plan.namespace.put(clip.identity, features)
            extracted[slot] = features

    reports = []
    for plan in plans:
        used, skipped, hits = 0, [], 0
        for clip in plan.clips:
            slot = (plan.namespace.id, clip.key)
            hits += slot in stored
            features = stored.get(slot, extracted.get(slot))
            if getattr(plan.user, "paired", False):
                plan.user.add_paired_reference(clip.name, features)
            elif isinstance(features, ValueError):
                log.warning("%s reference clip %s skipped: %s", plan.user.name, clip.name, features)
                skipped.append(str(features))
            else:
                plan.user.add_reference(features)
                used += 1
        damaged = plan.namespace.counts.damaged if hasattr(plan.namespace, "counts") else 0
        reports.append((used, skipped, hits, len(plan.clips) - hits, damaged))
    parts = procs.gather(reports)
    for i, plan in enumerate(plans):
        used = sum(p[i][0] for p in parts)
        reasons = [r for p in parts for r in p[i][1]]
        least = getattr(plan.user, "min_references", 0)
        if used < least:  # too few usable reference clips: say why, not "no covariance"
            why = f"; the first skipped: {reasons[0]}" if reasons else ""
            raise ConfigError(f"{plan.user.name}: {used} usable reference clips in evaluate.ref_dir={ref_dir} "
                              f"({len(reasons)} skipped), at least {least} are needed{why}")
        stored_in = plan.namespace.folder
        plan.user.store_report = {"namespace": plan.namespace.id if stored_in else None,
                                  "folder": str(stored_in.absolute()) if stored_in else None,
                                  "hits": sum(p[i][2] for p in parts), "misses": sum(p[i][3] for p in parts),
                                  "damaged": sum(p[i][4] for p in parts)}
        if hasattr(plan.user, "reduce_references"):
            plan.user.reduce_references(procs)


class PredCache:
    """Generated clips' features in the store (``evaluate.cache_pred``), keyed by file identity
    (:func:`file_clip`: the clip, the audio file beside it, ``audio``), in the extractor's namespace."""

    def __init__(self, namespace: Namespace, audio: str = "stream"):
        self.namespace, self.audio = namespace, audio

    def features(self, path: Path, compute) -> dict[str, np.ndarray]:
        """The stored features of the generated clip ``path``, else ``compute()``'s, stored."""
        identity = file_clip(Path(path), self.audio).identity
        found = self.namespace.get(identity)
        if found is None:
            found = compute()
            self.namespace.put(identity, found)
        return found


def generated_features(user, path: Path, frames, audio, sr) -> dict[str, np.ndarray]:
    """The features of generated clip ``path`` by ``user``'s extractor (``reference_features``), through its
    ``pred_cache`` (:class:`PredCache`) when ``evaluate.cache_pred`` set one."""
    cache = getattr(user, "pred_cache", None)
    if cache is None:
        return user.reference_features(frames, audio, sr)
    return cache.features(path, lambda: user.reference_features(frames, audio, sr))
