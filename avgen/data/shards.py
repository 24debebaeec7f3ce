"""The shard format: writing clips into WebDataset tar shards, and the per-split ``manifest.json``.

One sample = one clip, with members (the README's "Shards and the batch contract"):

- ``__key__``: ``<dataset>/<source id>/<start ms>`` (parts percent-encoded: :func:`key_part`)
- ``mp4``: the frames at the stored rate and size (``data.store``: short side ``short_side``, or a
  ``short_side``² centre crop), no audio stream
- ``flac``: mono audio at the stored sample rate
- ``json``: dataset, source id, start/end seconds (in the source), label, caption, split, fps,
  height, width, optional ``events`` (onset seconds relative to the clip start) and source-specific
  fields (e.g. Greatest Hits' ``event_labels``: material, action, reaction per event)

Every split folder ``<root>/<split>/`` holds ``shard-NNNNNN.tar`` files and a ``manifest.json``
with the shard names, clips per shard, the stored geometry (``store``) and the prepare command +
config (format ``avgen-shards/2``; ``avgen-shards/1`` manifests, which hold a fixed ``clip``
geometry instead, are still read). Frame
rates are exact: a whole rate is stored as a number (``8``), any other as ``"num/den"`` text
(``"30000/1001"`` for 29.97), never as a truncated or rounded decimal. A split
is written into a temporary folder and renamed into place when complete, so an interrupted
``prepare`` never leaves a folder that looks finished; an existing split is only replaced when the
caller passes ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from avgen.data.geometry import ClipGeometry, StoreGeometry, fps_json
from avgen.media import encode_flac, encode_mp4, write_text_atomic

MANIFEST = "manifest.json"
FORMAT = "avgen-shards/2"
READABLE_FORMATS = ("avgen-shards/1", FORMAT)
SPLITS = ("train", "val", "test")


class TarShardWriter:
    """Write samples into one tar shard as WebDataset reads them: a member ``<key>.<ext>`` per field,
    in the order given. Members carry a fixed mtime (0) and mode, so a shard's bytes depend only on
    its samples (no webdataset/torch import: prepare workers start fast).

    Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path):
        import tarfile

        self._tarfile = tarfile
        self.path = Path(path)
        self._tar = tarfile.open(self.path, "w", format=tarfile.PAX_FORMAT)  # PAX: member names of any length

    def write(self, sample: dict[str, Any]) -> None:
        """``sample``: ``__key__`` and ``{extension: bytes}`` members."""
        import io

        key = sample["__key__"]
        for ext, data in sample.items():
            if ext.startswith("__"):
                continue
            info = self._tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def key_part(text: str) -> str:
    """``text`` as one part of a sample key: percent-encoded (UTF-8) except letters, digits, ``_``, ``-``
    and ``~``, so ``.`` (WebDataset splits a member name at its first dot into key and extension) and
    ``/`` never appear, and different ids never share a key (``a.b`` → ``a%2Eb``, ``a_b`` stays,
    ``犬`` → ``%E7%8A%AC``)."""
    from urllib.parse import quote

    return quote(text, safe="").replace(".", "%2E")


def clip_key(dataset: str, source_id: str, start_seconds: float) -> str:
    """``<dataset>/<source id>/<start ms>``, each part encoded by :func:`key_part`."""
    return f"{key_part(dataset)}/{key_part(source_id)}/{int(round(start_seconds * 1000))}"


@dataclass
class ShardInfo:
    name: str
    clips: int


@dataclass
class Manifest:
    """One split's ``manifest.json``. ``store``: the stored geometry (a :class:`ClipGeometry` given
    here, as by shards written before ``data.store`` existed, is kept as :attr:`clip` and converted)."""

    dataset: str
    split: str
    store: StoreGeometry | ClipGeometry
    shards: list[ShardInfo]
    prepare: dict[str, Any]
    created: str = ""

    def __post_init__(self) -> None:
        self._clip = self.store if isinstance(self.store, ClipGeometry) else None
        self.store = StoreGeometry.from_config(self.store)

    @property
    def clip(self) -> ClipGeometry:
        """The clip geometry a reader without one of its own decodes these shards at: the fixed frames
        of an ``avgen-shards/1`` split, else :meth:`StoreGeometry.default_clip`."""
        return self._clip or self.store.default_clip()

    @property
    def num_clips(self) -> int:
        return sum(s.clips for s in self.shards)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "store": self.store.to_dict(),
            "clips": self.num_clips,
            "shards": [{"name": s.name, "clips": s.clips} for s in self.shards],
            "prepare": self.prepare,
            "created": self.created,
        }

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable manifest ({exc}); re-run the dataset's prepare command") from exc
        if data.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{path}: format {data.get('format')!r}, expected one of {READABLE_FORMATS}")
        geometry = (StoreGeometry.from_config(data["store"]) if "store" in data
                    else ClipGeometry.from_config(data["clip"]))
        return cls(dataset=data["dataset"], split=data["split"], store=geometry,
                   shards=[ShardInfo(s["name"], int(s["clips"])) for s in data["shards"]],
                   prepare=data.get("prepare", {}), created=data.get("created", ""))


def encode_clip(geo: ClipGeometry | StoreGeometry, frames: np.ndarray, audio: np.ndarray, name: str = "clip"
                ) -> tuple[bytes, bytes]:
    """Check a clip against the split geometry and encode it: (mp4 bytes without audio, flac bytes).

    ``frames`` (F, H, W, 3) uint8: ``F = geo.num_frames``; ``(H, W)`` = the clip geometry's size, or
    for a :class:`StoreGeometry` a size whose short side is ``short_side`` (square when ``square``),
    both even. ``audio`` (S,) float mono, ``S = geo.num_samples``.

    The video is encoded with one x264 thread (prepare runs one process per core; the bytes are the
    same on every machine).

    Raises:
        ValueError: a shape that does not match, naming ``name``.
    """
    if isinstance(geo, StoreGeometry):
        h, w = frames.shape[1:3]
        ok = (frames.shape[0] == geo.num_frames and min(h, w) == geo.short_side and h % 2 == 0 and w % 2 == 0
              and (h == w or not geo.square))
        expected = (f"({geo.num_frames}, H, W, 3) with min(H, W) = {geo.short_side}, even"
                    + (", H = W" if geo.square else ""))
    else:
        ok = frames.shape[0] == geo.num_frames and frames.shape[1:3] == (geo.height, geo.width)
        expected = f"({geo.num_frames}, {geo.height}, {geo.width}, 3)"
    if not ok:
        raise ValueError(f"{name}: frames {frames.shape} do not match the split's geometry {expected}")
    if audio.ndim != 1 or audio.shape[0] != geo.num_samples:
        raise ValueError(f"{name}: audio {audio.shape} is not ({geo.num_samples},)")
    return encode_mp4(frames, geo.fps, threads=1), encode_flac(audio, geo.sample_rate)


class ShardWriter:
    """Write clips of one split into tar shards of ``clips_per_shard`` clips plus a manifest.

    Use as a context manager; the split appears at ``<root>/<split>`` only when the block exits
    without an exception::

        with ShardWriter(root, "synthetic_hits", "train", geometry, clips_per_shard=16) as w:
            w.write("clip0001", 0.0, frames, audio, {"label": ..., "caption": ...})
    """

    def __init__(self, root: str | Path, dataset: str, split: str, clip: ClipGeometry | StoreGeometry, *,
                 clips_per_shard: int = 64, prepare: dict[str, Any] | None = None, overwrite: bool = False):
        if clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
        self.final = Path(root) / split
        if self.final.exists() and not overwrite:
            raise FileExistsError(
                f"{self.final} already exists; pass overwrite=true (prepare ... overwrite=true) to replace it")
        self.dataset, self.split, self.clip = dataset, split, clip
        self.clips_per_shard = clips_per_shard
        self.prepare = prepare or {}
        self.overwrite = overwrite
        self.tmp = self.final.with_name(f".{split}.tmp-{os.getpid()}")
        self.shards: list[ShardInfo] = []
        self._tar: TarShardWriter | None = None
        self._keys: set[str] = set()

    def __enter__(self) -> "ShardWriter":
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def _rotate(self) -> TarShardWriter:
        if self._tar is None or self.shards[-1].clips >= self.clips_per_shard:
            if self._tar is not None:
                self._tar.close()
            name = f"shard-{len(self.shards):06d}.tar"
            self._tar = TarShardWriter(self.tmp / name)
            self.shards.append(ShardInfo(name, 0))
        return self._tar

    def write(self, source_id: str, start_seconds: float, frames: np.ndarray, audio: np.ndarray,
              meta: dict[str, Any]) -> str:
        """Encode one clip and append it. ``frames`` (F, H, W, 3) uint8, ``audio`` (S,) float mono."""
        mp4, flac = encode_clip(self.clip, frames, audio, name=f"{source_id}@{start_seconds}s")
        return self.write_encoded(source_id, start_seconds, mp4, flac, meta)

    def write_encoded(self, source_id: str, start_seconds: float, mp4: bytes, flac: bytes,
                      meta: dict[str, Any]) -> str:
        """Append a clip already encoded by :func:`encode_clip` (e.g. in a worker process)."""
        key = clip_key(self.dataset, source_id, start_seconds)
        if key in self._keys:
            raise ValueError(f"duplicate clip key {key}")
        self._keys.add(key)
        geo = self.clip
        record = {
            "dataset": self.dataset, "source_id": source_id, "start": float(start_seconds),
            "end": float(start_seconds) + geo.seconds, "split": self.split, "fps": fps_json(geo.fps),
            "label": "", "caption": "", **meta,
        }
        self._rotate().write({"__key__": key, "mp4": mp4, "flac": flac, "json": json.dumps(record).encode()})
        self.shards[-1].clips += 1
        return key

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tar is not None:
            self._tar.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        manifest = Manifest(self.dataset, self.split, self.clip, self.shards, self.prepare,
                            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_text_atomic(self.tmp / MANIFEST, json.dumps(manifest.to_json(), indent=2))
        if self.final.exists():
            old = self.final.with_name(f".{self.split}.old-{os.getpid()}")
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)


def read_shard_samples(path: str | Path, extensions: set[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of every sample of one tar shard, in tar order, without decoding (only
    the members with ``extensions``, when given)."""
    import tarfile

    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.rpartition(".")
            if member.isfile() and (extensions is None or ext in extensions):
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    yield from samples.items()


def read_split_samples(split_dir: str | Path, extensions: set[str] | None = None
                       ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of every sample of a prepared split, in manifest order, read straight
    from the tar files without decoding (only the members with ``extensions``, when given)."""
    for shard in Manifest.load(split_dir).shards:
        yield from read_shard_samples(Path(split_dir) / shard.name, extensions)
