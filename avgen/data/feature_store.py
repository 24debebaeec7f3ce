"""A store of per-clip features of frozen extractors, shared by evaluation (reference and generated clips) and,
in the same format, by training's feature cache.

Features of one clip depend on three things: the extractor (its weights), what was done to the clip before
it (resampling, crop, frame count, ...) and the clip itself. The store keys them that way: a **namespace**
per (extractor, weights SHA-256, preprocessing, dtype, format version), and inside it one **entry** per
clip identity. Re-scoring new samples against the same test set then extracts only the clips whose entries
are missing; a clip that changed gets a new identity, so exactly that clip is extracted again.

Format ``avgen-features/1`` (this is the specification; a change of layout or meaning bumps the number):

- ``<root>/<namespace id>/`` with namespace id = the first 16 hex digits of SHA-256 of the namespace
  description in canonical JSON (sorted keys, no whitespace, :func:`canonical_json`). The description is a
  JSON object with exactly the keys ``format`` (``"avgen-features/1"``), ``extractor`` (a name),
  ``weights_sha256`` (``{role: hex digest}`` of every weights file the extractor read; ``null`` for an extractor that
  reads no weights file, such as the onset detector of ``onset_acc``), ``preprocessing`` (a JSON
  object: everything besides the weights that changes the features) and ``dtype`` (of every stored tensor,
  numpy's name: ``float32``, ``float16``, ...).
- ``<root>/<namespace id>/namespace.json``: that description, indented, written once (atomically). It documents
  the folder; nothing is read through it (every entry names its namespace id), so one that is unreadable or holds
  another description is damage: it is logged and written again.
- ``<root>/<namespace id>/<2 hex>/<64 hex>.safetensors``: one entry, the name being SHA-256 of the clip
  identity's canonical JSON and the folder its first two hex digits (at most 256 files per folder per 65 k clips).
- an entry is a safetensors file: tensors by name (``features``, ``logits``, ``embedding``, ... — the extractor's
  parts, each with its own shape, all of the namespace's dtype) and string metadata ``format``
  (``avgen-features/1``), ``namespace`` (the namespace id) and ``identity`` (the clip identity, canonical JSON).
  The bytes are self-describing (:func:`decode_entry` checks them without the path) and deterministic: equal
  features, namespace and identity give equal bytes (:func:`encode_entry`: header JSON with sorted keys).
- clip identity (a JSON object): for a clip of a prepared shard split, ``{"kind": "split", "manifest_sha256":
  <SHA-256 of the split's manifest.json>, "key": <the clip's __key__>}`` (a re-prepared split with another
  manifest is a new set of identities); for a file, ``{"kind": "file", "files": [[absolute path, size in bytes,
  mtime in ns], ...]}`` over every file the clip is read from (the video and the audio file beside it), plus
  what the caller adds (which sound is read). A file written again, even with the same bytes, has another
  mtime and is a miss: identity by metadata, so nothing is read to look an entry up.
- writes are atomic: the bytes go to a uniquely named temporary file in the entry's folder (``.<name>.tmp-<pid>-
  <random>``), are flushed and fsynced, and are renamed over the entry. Processes (torchrun ranks, separate
  runs) that write the same entry at once each rename a complete file; the last one wins and readers see one
  complete version or none. A damaged or foreign entry (wrong format, namespace or identity, or a path that
  cannot be read: a folder, no permission) reads as a miss, is counted (``damaged``) and is replaced by the next
  write.
- a store that can be read but not written (a shared store on a read-only mount or of another user) is used
  read-only: what is there is read, entries that miss are extracted but not stored, and this is logged once
  (:attr:`FeatureStore.writable`). A root that cannot be created or read is a ``ConfigError`` naming the key.

Training's sidecar shards (the feature cache of issue 19) carry the same entry bytes as tar members
``<clip key>.<part>.safetensors`` (``part`` names the namespace in the sidecar's manifest, which holds each
part's ``namespace.json`` description verbatim), with the split identity above; :func:`encode_entry` and
:func:`decode_entry` are the one implementation of the bytes for both.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from avgen.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "avgen-features/1"
DESCRIPTION_KEYS = ("format", "extractor", "weights_sha256", "preprocessing", "dtype")
NAMESPACE_FILE = "namespace.json"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings (and digests)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    """SHA-256 (64 hex digits) of ``obj``'s canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def file_identity(*paths: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """The identity of a clip read from ``paths`` (its video, and the audio file beside it when there is one):
    ``{"kind": "file", "files": [[absolute path, size, mtime_ns], ...], **extra}``. A file rewritten with the same
    bytes has a new mtime, so it is a new identity (a miss), never a stale hit.

    Raises:
        OSError: a path that does not exist.
    """
    files = []
    for p in paths:
        st = Path(p).stat()
        files.append([str(Path(p).absolute()), int(st.st_size), int(st.st_mtime_ns)])
    return {"kind": "file", "files": files, **extra}


def split_identity(manifest_sha256: str, key: str) -> dict[str, Any]:
    """The identity of clip ``key`` of a prepared shard split whose ``manifest.json`` has SHA-256 ``manifest_sha256``
    (its member bytes are not read: looking an entry up costs no tar read)."""
    return {"kind": "split", "manifest_sha256": manifest_sha256, "key": key}


# safetensors' dtype names (https://github.com/huggingface/safetensors, README "Format")
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                      "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
                      "bool": "BOOL"}


def encode_entry(namespace_id: str, identity: Mapping[str, Any], features: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes of one entry: ``features`` (``{name: array}``) and the metadata ``format``, ``namespace``,
    ``identity``. Written here rather than by ``safetensors.numpy.save`` so that equal inputs give equal bytes (the
    library orders the metadata by a hash map): an 8-byte little-endian header length, the header JSON (sorted keys,
    no whitespace, padded with spaces to a multiple of 8), then each tensor's little-endian C-order bytes in name
    order.

    Raises:
        ValueError: no tensor, or a dtype safetensors has no name for.
    """
    if not features:
        raise ValueError("an entry needs at least one tensor")
    header: dict[str, Any] = {"__metadata__": {"format": FORMAT, "namespace": namespace_id,
                                               "identity": canonical_json(identity)}}
    blobs, offset = [], 0
    for name in sorted(features):
        value = np.asarray(features[name])
        if value.dtype.name not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {value.dtype} cannot be stored "
                             f"(known: {list(SAFETENSORS_DTYPES)})")
        blob = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[value.dtype.name], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = canonical_json(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def decode_entry(data: bytes) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, ``{name: array}``) of entry bytes.

    Raises:
        ValueError: not safetensors bytes, or not of format ``avgen-features/1``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        tensors = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise ValueError(f"not a safetensors entry: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"entry format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta, tensors


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file of a name no other process or thread uses, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class StoreStats:
    """What one :class:`Namespace` object did: entries found (``hits``), not found (``misses``; damaged ones
    counted also in ``damaged``), written (``writes``; ``unwritten``: not stored, the store not being writable), and
    bytes read and written."""

    hits: int = 0
    misses: int = 0
    damaged: int = 0
    writes: int = 0
    unwritten: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Namespace:
    """The entries of one (extractor, weights, preprocessing, dtype): :meth:`get` and :meth:`put` by clip identity.

    Counts are per object (:meth:`stats`); two objects on one folder (the reference side and the generated side
    of a run) count apart.
    """

    def __init__(self, folder: Path, description: dict[str, Any], store: FeatureStore | None = None):
        self.folder, self.description, self.store = folder, description, store
        self.id = folder.name
        self.dtype = np.dtype(description["dtype"])
        self.counts = StoreStats()

    def path(self, identity: Mapping[str, Any]) -> Path:
        """Where the entry of ``identity`` lives (whether or not it exists)."""
        name = digest(identity)
        return self.folder / name[:2] / f"{name}.safetensors"

    def get(self, identity: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The stored features of ``identity`` (``{name: array}`` of the namespace's dtype), or None (a miss). A
        damaged entry, one that holds another namespace's or identity's features, or a path that cannot be read (a
        folder, no permission) is a miss, counted in ``damaged`` and logged."""
        path = self.path(identity)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.counts.misses += 1
            return None
        except OSError as exc:  # a folder in its place, no permission
            return self._damaged(path, f"{type(exc).__name__}: {exc.strerror or exc}")
        try:
            meta, tensors = decode_entry(data)
            if meta.get("namespace") != self.id or meta.get("identity") != canonical_json(identity):
                raise ValueError(f"holds namespace {meta.get('namespace')} identity {meta.get('identity')}")
        except ValueError as exc:
            return self._damaged(path, str(exc))
        self.counts.hits += 1
        self.counts.bytes_read += len(data)
        return tensors

    def _damaged(self, path: Path, why: str) -> None:
        log.warning("feature store entry %s unusable (%s): extracted again", path, why)
        self.counts.misses += 1
        self.counts.damaged += 1

    def put(self, identity: Mapping[str, Any], features: Mapping[str, np.ndarray]) -> Path | None:
        """Store ``features`` (``{name: array}``) as the entry of ``identity``, atomically (an empty folder in the
        entry's place, damage, is removed first); returns its path, or None when the store is not writable (the
        first failed write makes it read-only: :meth:`FeatureStore.read_only`).

        Raises:
            ValueError: a tensor whose dtype is not the namespace's (the store never casts silently).
        """
        wrong = {k: str(np.asarray(v).dtype) for k, v in features.items() if np.asarray(v).dtype != self.dtype}
        if wrong:
            raise ValueError(f"feature store namespace {self.id} holds {self.dtype} tensors, got {wrong}")
        data = encode_entry(self.id, identity, features)
        path = self.path(identity)
        if self.store is not None and not self.store.writable:
            self.counts.unwritten += 1
            return None
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            write_atomic(path, data)
        except OSError as exc:
            if self.store is None:
                raise
            self.store.read_only(f"writing {path}: {type(exc).__name__}: {exc.strerror or exc}")
            self.counts.unwritten += 1
            return None
        self.counts.writes += 1
        self.counts.bytes_written += len(data)
        return path

    def stats(self) -> dict[str, int]:
        """``{hits, misses, damaged, writes, bytes_read, bytes_written}`` of this object."""
        return self.counts.to_dict()


class FeatureStore:
    """The namespaces under ``root`` (evaluation: ``evaluate.cache_dir``, named by ``key`` in messages).

    The root is checked, and created when missing, by the first :meth:`namespace` (a store no metric uses is never
    touched). ``writable`` turns false, with a warning logged once, when the root is not writable or a write fails:
    the store is then used read-only (``write_error`` says why).
    """

    def __init__(self, root: str | os.PathLike, key: str = "the feature store root"):
        self.root, self.key = Path(root), key
        self.writable, self.write_error = True, None
        self._checked = False

    def read_only(self, reason: str) -> None:
        """Use the store read-only from now on (logged once): entries that miss are extracted but not stored."""
        if self.writable:
            self.writable, self.write_error = False, reason
            log.warning("feature store %s=%s is not writable (%s): it is read, but the features it lacks are not "
                        "stored (extracted again by every run); results are unaffected", self.key, self.root, reason)

    def _check_root(self) -> None:
        """Create the root when missing; a root that cannot be created or read is a ConfigError."""
        if self._checked:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.R_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "the folder cannot be read")
        except OSError as exc:
            raise ConfigError(f"{self.key}={self.root} cannot be used as the feature store ({type(exc).__name__}: "
                              f"{exc.strerror or exc}); set {self.key} to a folder that can be created and read "
                              f"(writable, to store new features)") from None
        if not os.access(self.root, os.W_OK):
            self.read_only("no write permission on the folder")
        self._checked = True

    def namespace(self, description: Mapping[str, Any]) -> Namespace:
        """The namespace of ``description`` (``extractor``, ``weights_sha256``, ``preprocessing``, ``dtype``; ``format``
        is added), its folder and ``namespace.json`` created when new.

        A ``namespace.json`` that cannot be read, is not JSON or describes another namespace is damage (entries name
        their namespace id, so none is misread through it): it is logged and written again.

        Raises:
            ValueError: a key missing or unknown, an unknown dtype, ``weights_sha256`` neither an object nor null.
            ConfigError: a root that cannot be created or read (named by ``key``).
        """
        full = {"format": FORMAT, **description}
        if sorted(full) != sorted(DESCRIPTION_KEYS) or full["format"] != FORMAT:
            raise ValueError(f"a namespace description has exactly the keys {list(DESCRIPTION_KEYS[1:])}, got "
                             f"{sorted(description)}")
        full = json.loads(canonical_json(full))
        np.dtype(full["dtype"])  # an unknown dtype name fails here, before anything is written
        if full["weights_sha256"] is not None and not isinstance(full["weights_sha256"], dict):
            raise ValueError(f"weights_sha256 is {{role: hex digest}} or null, got {full['weights_sha256']!r}")
        self._check_root()
        folder = self.root / digest(full)[:16]
        info = folder / NAMESPACE_FILE
        try:
            found = json.loads(info.read_bytes())
        except FileNotFoundError:
            found = None
        except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
            found = exc
        if found is None or canonical_json(found) != canonical_json(full):
            if found is not None:
                what = f"{type(found).__name__}: {found}" if isinstance(found, Exception) else "another description"
                log.warning("feature store %s damaged (%s): written again", info, what)
            if self.writable:
                try:
                    if info.is_dir() and not info.is_symlink():
                        info.rmdir()
                    write_atomic(info, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
                except OSError as exc:
                    self.read_only(f"writing {info}: {type(exc).__name__}: {exc.strerror or exc}")
        return Namespace(folder, full, self)
