"""Training's feature cache: the outputs of a system's frozen parts, computed once per clip by
``python -m avgen cache`` and read by ``fit`` with ``data.features=<cache name>``.

A system names the frozen computations it runs on every training step as **parts** (:class:`FeaturePart`):
``video_latents`` (the video VAE's posterior), ``audio_latents`` (mel + the audio VAE's posterior), ``text`` (the
frozen text encoders' outputs for the clip's caption), ``encoder`` (the frozen conditioning encoder: BEATs,
the VTA-LDM frame encoder) and ``flow`` (VTA-LDM's optical-flow tokens). Each part has a description in the
evaluation feature store's namespace format (:mod:`avgen.data.feature_store`: extractor, weights SHA-256,
preprocessing, dtype), so a cache made with other weights, another preprocessing or another clip geometry is
refused by name.

Batch contract with a cache: ``batch["features"]`` is ``{part: {tensor name: Tensor (B, ...)}}`` (float32 on the
device, whatever dtype is stored), holding the parts the cache has; a modality whose every reading part is
cached is not decoded in training (``video`` (B, 0, 3, H, W), ``audio`` (B, 0)).

Format ``avgen-feature-cache/1`` (this is the specification; a change of layout or meaning bumps the number):

- ``<data.root>/cache/<cache.name>/<split>/``: ``manifest.json`` and one **sidecar** tar per data shard, with the
  data shard's file name, holding members ``<clip key>.<part>.safetensors`` in the data shard's clip order (a
  clip that could not be cached has no member: readers skip it, counted, naming the clip and the cache), and
  beside each sidecar ``<shard stem>.json`` (what making it counted: clips, skipped clips and why, bytes,
  the float16 error sums), written after the sidecar: a shard is done when both exist and the json names the
  same making (``python -m avgen cache`` resumes at the shards that are not).
- a member's bytes are a feature-store entry (:func:`avgen.data.feature_store.encode_entry`): namespace id
  :func:`namespace_id` of the part's description (:meth:`FeaturePart.description` with the stored dtype), identity
  :func:`~avgen.data.feature_store.split_identity` (the data split manifest's SHA-256, the clip key), tensors by
  name (``mean``, ``std``, ``clip``, ...), each of the cache's dtype. Readers check the namespace and identity of
  every member they use (:class:`SidecarReader`).
- ``manifest.json`` (written when every shard is done): ``format``, ``name``, ``split``, ``data_manifest_sha256``,
  ``clip`` (``data.clip``), ``store`` (``data.store``), ``view`` (:data:`EVAL_VIEW`: features are computed on the
  evaluation view of each clip, window from 0 s and centre crop), ``system`` (class path), ``dtype``, ``parts``
  (``{part: {namespace, description (the namespace.json content), tensors: {name: {shape}}, fp16_error: {name:
  {max_abs, rel_rms}} or null}}``), ``shards`` (``[{name, clips, skipped}]``), ``clips``, ``skipped``,
  ``bytes``, ``data_bytes`` (of the data shards), ``command``, ``created``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from avgen.data.feature_store import FORMAT, canonical_json, decode_entry, digest, encode_entry, split_identity
from avgen.errors import ConfigError
from avgen.media import atomic_write

log = logging.getLogger(__name__)

#: the sidecar format (manifest ``format``); a change of layout or meaning bumps the number
CACHE_FORMAT = "avgen-feature-cache/1"
#: the part names a system may offer, in the order they are computed and listed
PART_NAMES = ("video_latents", "audio_latents", "text", "encoder", "flow")
MODALITIES = ("video", "audio")
#: the folder under ``data.root`` that holds the caches, one folder per ``cache.name``
CACHE_DIR = "cache"
MANIFEST = "manifest.json"
#: the clip view every cached feature is computed on (the evaluation view of :func:`avgen.data.decode.decode_sample`)
EVAL_VIEW = {"window_start_s": 0, "crop": "centre"}
#: the dtypes a cache may store (``cache.dtype``)
DTYPES = ("float16", "float32")
SUFFIX = ".safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def module_weights_sha256(*modules: nn.Module) -> str:
    """SHA-256 (64 hex digits) of the weights of ``modules``, in order: for each module its ``state_dict``
    entries sorted by name, each hashed as ``name``, dtype, shape and the tensor's bytes (CPU, contiguous).
    The same weights give the same digest whatever file they were loaded from; any changed value, name, shape or
    dtype gives another one. Cost: one pass over the bytes (about 1 s per GB)."""
    h = hashlib.sha256()
    for index, module in enumerate(modules):
        h.update(f"module {index}\n".encode())
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class FeaturePart:
    """One frozen computation of a system that the cache can store.

    Attributes:
        name: one of :data:`PART_NAMES`.
        extractor: what computes it (``animatediff_vae``, ``audioldm_vae``, ``beats``, ``clip4clip`` ...): the
            namespace description's ``extractor``.
        weights_sha256: ``{role: hex digest}`` of the frozen weights it runs (:func:`module_weights_sha256`).
        preprocessing: everything besides the weights that changes its output (resolution, crop, fps, frame
            count, sample rate, mel settings, layers, padding ...), JSON-serialisable.
        reads: the batch modalities it reads (``video``, ``audio``; ``()`` for ``text``, which reads the caption).
    """

    name: str
    extractor: str
    weights_sha256: dict[str, str]
    preprocessing: dict[str, Any]
    reads: tuple[str, ...] = field(default=())

    def description(self, dtype: str) -> dict[str, Any]:
        """The namespace description (:mod:`avgen.data.feature_store`) of this part stored as ``dtype``."""
        return {"extractor": self.extractor, "weights_sha256": dict(self.weights_sha256),
                "preprocessing": dict(self.preprocessing), "dtype": dtype}


def skipped_modalities(parts: dict[str, FeaturePart], cached: set[str] | frozenset[str]) -> frozenset[str]:
    """The modalities training need not decode: those read by at least one of the system's ``parts`` and only by
    parts in ``cached``."""
    out = set()
    for modality in MODALITIES:
        readers = [name for name, part in parts.items() if modality in part.reads]
        if readers and all(name in cached for name in readers):
            out.add(modality)
    return frozenset(out)


# ------------------------------------------------------------------------------------------- names and bytes
def namespace_id(description: Mapping[str, Any]) -> str:
    """The feature store's namespace id (16 hex digits) of a part's ``description`` (:meth:`FeaturePart.description`;
    ``format`` is added): the folder name :meth:`avgen.data.feature_store.FeatureStore.namespace` gives it."""
    return digest({"format": FORMAT, **description})[:16]


def full_description(description: Mapping[str, Any]) -> dict[str, Any]:
    """``description`` with ``format`` as the feature store's ``namespace.json`` holds it (plain JSON types)."""
    return json.loads(canonical_json({"format": FORMAT, **description}))


def check_name(name: Any, key: str) -> str:
    """``name`` when it can name a cache folder (letters, digits and ``. _ + = -``, not starting with a dot).

    Raises:
        ConfigError: any other value, naming ``key`` (``cache.name``, ``data.features``).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{key}={name!r}: a cache name is letters, digits and . _ + = - (a folder name under "
                          f"<data.root>/{CACHE_DIR}/)")
    return name


def cache_folder(data_root: str | Path, name: str) -> Path:
    """``<data.root>/cache/<name>``: the cache's folder (one sub-folder per split)."""
    return Path(data_root) / CACHE_DIR / name


def member_name(key: str, part: str) -> str:
    """The sidecar member of clip ``key``'s ``part``: ``<key>.<part>.safetensors``."""
    return f"{key}.{part}{SUFFIX}"


def encode_part(namespace: str, data_manifest_sha256: str, key: str, tensors: Mapping[str, np.ndarray]) -> bytes:
    """The member bytes of one clip's part: :func:`~avgen.data.feature_store.encode_entry` with the split identity
    of ``key`` in the split whose manifest has SHA-256 ``data_manifest_sha256``. ``tensors``: ``{name: array}`` of the
    cache's dtype, without the batch axis."""
    return encode_entry(namespace, split_identity(data_manifest_sha256, key), tensors)


def remedy(data_group: str, name: str) -> str:
    """What to do about a cache that does not fit (the end of every refusal)."""
    return (f"make a cache for this model and data: python -m avgen cache data={data_group} experiment=<experiment> "
            f"cache.name=<another name> (then data.features=<that name>), or replace this one with "
            f"cache.name={name} cache.overwrite=true")


# ------------------------------------------------------------------------------------------- sidecar tars
class SidecarWriter:
    """One sidecar tar, written through a temporary file beside ``path`` (``.<name>.tmp-<pid>``, the temporaries
    :func:`avgen.checkpoint.remove_stale_temporaries` recognises) and renamed over ``path`` by :meth:`commit`: a
    reader sees a complete sidecar or none. Members carry mtime 0 and mode 0444, so equal features give equal
    bytes. :meth:`abort` removes the temporary."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.bytes = 0
        self._stack = ExitStack()
        f = self._stack.enter_context(atomic_write(self.path, "wb", overwrite=True))
        self._tar = tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT)  # PAX: keys of any length

    def add(self, key: str, part: str, data: bytes) -> None:
        """Append the member ``<key>.<part>.safetensors`` holding ``data`` (:func:`encode_part`)."""
        info = tarfile.TarInfo(member_name(key, part))
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._tar.addfile(info, io.BytesIO(data))
        self.bytes += len(data)

    def commit(self) -> Path:
        """Close the tar, fsync it and rename it into place; returns ``path``."""
        self._tar.close()
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (nothing appears at ``path``)."""
        self._tar.close()
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def read_sidecar(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(clip key, {part: member bytes})`` of a sidecar tar, in tar order (members of one clip are consecutive),
    streamed: one clip's members in memory at a time.

    Raises:
        OSError, tarfile.TarError: the file cannot be read (missing, truncated).
    """
    key, parts = None, {}
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(SUFFIX):
                continue
            clip, _, part = member.name[:-len(SUFFIX)].rpartition(".")
            if clip != key:
                if key is not None:
                    yield key, parts
                key, parts = clip, {}
            parts[part] = tar.extractfile(member).read()
    if key is not None:
        yield key, parts


class SidecarCursor:
    """The sidecar of one data shard read in lockstep with it: :meth:`take` is called with each data clip's key in
    the data shard's order and returns that clip's members, or why there are none (a string: the clip is not in
    the cache, or the sidecar is missing or unreadable). The sidecar's clips are a subsequence of the data shard's,
    so a clip whose key is not the sidecar's next one has no members."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._clips = read_sidecar(path)
        self._error: str | None = None
        self._head: tuple[str, dict[str, bytes]] | None = None
        self._advance()

    def _advance(self) -> None:
        if self._error is not None:
            return
        try:
            self._head = next(self._clips, None)
        except (OSError, EOFError, tarfile.TarError) as exc:
            self._head = None
            self._error = (f"sidecar {self.path} unreadable ({type(exc).__name__}: {exc}); make it again with "
                           f"python -m avgen cache (it redoes missing sidecars)")

    def take(self, key: str) -> dict[str, bytes] | str:
        """The members of clip ``key`` (``{part: bytes}``), or the reason it has none."""
        if self._head is not None and self._head[0] == key:
            parts = self._head[1]
            self._advance()
            return parts
        if self._error is not None:
            return f"clip {key}: {self._error}"
        return f"clip {key} is not in the feature cache ({self.path} holds no member for it)"


@dataclass(frozen=True)
class SidecarReader:
    """Decodes and checks one clip's sidecar members (in the DataLoader workers).

    Attributes:
        folder: the cache split folder (messages).
        data_manifest_sha256: of the data split the cache was made from (the members' identities).
        namespaces: ``{part: namespace id}`` of the parts read (the other members are ignored).
        shapes: ``{part: {tensor: shape}}`` from the manifest.
    """

    folder: str
    data_manifest_sha256: str
    namespaces: dict[str, str]
    shapes: dict[str, dict[str, tuple[int, ...]]]

    def decode(self, key: str, members: Mapping[str, bytes]) -> dict[str, dict[str, np.ndarray]]:
        """``{part: {tensor: array (the stored dtype, no batch axis)}}`` of clip ``key``.

        Raises:
            ValueError: a part missing, bytes that are not an entry, an entry of another namespace or clip, or a
                tensor of another name or shape than the manifest's.
        """
        missing = [p for p in self.namespaces if p not in members]
        if missing:
            raise ValueError(f"no member for part(s) {missing}")
        identity = canonical_json(split_identity(self.data_manifest_sha256, key))
        out = {}
        for part, namespace in self.namespaces.items():
            meta, tensors = decode_entry(members[part])
            if meta.get("namespace") != namespace:
                raise ValueError(f"{part}: a member of namespace {meta.get('namespace')}, the manifest's is "
                                 f"{namespace}")
            if meta.get("identity") != identity:
                raise ValueError(f"{part}: a member of another clip or split ({meta.get('identity')})")
            shapes = {name: tuple(t.shape) for name, t in tensors.items()}
            if shapes != self.shapes[part]:
                raise ValueError(f"{part}: tensors {shapes}, the manifest says {self.shapes[part]}")
            out[part] = tensors
        return out


# ------------------------------------------------------------------------------------------- a cache split
@dataclass
class CacheSplit:
    """One split of a cache: ``<data.root>/cache/<name>/<split>/`` and its ``manifest.json`` (see the module doc)."""

    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path) -> CacheSplit:
        """Read ``<folder>/manifest.json``.

        Raises:
            FileNotFoundError: no manifest (the cache split was not made, or is not finished).
            ConfigError: a manifest that cannot be read or is of another format, naming the file.
        """
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable feature cache manifest ({type(exc).__name__}: {exc}); make the "
                              f"cache again (python -m avgen cache ... cache.overwrite=true)") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ConfigError(f"{path}: format {found!r}, this avgen reads {CACHE_FORMAT!r}; make the cache again "
                              f"(python -m avgen cache ... cache.overwrite=true)")
        return cls(Path(folder), data)

    @property
    def parts(self) -> dict[str, dict[str, Any]]:
        """``{part: {namespace, description, tensors, fp16_error}}``."""
        return self.manifest["parts"]

    def sidecar(self, shard_name: str) -> Path:
        """The sidecar of data shard ``shard_name`` (whether or not it exists)."""
        return self.folder / shard_name

    def check(self, parts: Mapping[str, FeaturePart], data_manifest_sha256: str,
              clip: Mapping[str, Any]) -> list[str]:
        """Every way this cache differs from what a model with ``parts`` reads from data split of manifest SHA-256
        ``data_manifest_sha256`` at clip geometry ``clip`` (``data.clip``, as ``ClipGeometry.to_dict`` gives it),
        each naming the part and the key (``part video_latents: weights_sha256.vae ...``); empty: it fits. Only the
        parts both hold are compared (the others are not read)."""
        problems = []
        made = self.manifest.get("data_manifest_sha256")
        if made != data_manifest_sha256:
            problems.append(f"data_manifest_sha256 is {str(made)[:12]}…, the {self.manifest.get('split')} split's is "
                            f"{data_manifest_sha256[:12]}… (the split was prepared again since)")
        cached = self.manifest.get("clip") or {}
        for key in sorted(set(cached) | set(clip)):
            if cached.get(key) != clip.get(key):
                problems.append(f"clip.{key} is {cached.get(key)!r}, data.clip.{key} is {clip.get(key)!r}")
        for name in [p for p in PART_NAMES if p in self.parts and p in parts]:
            have = self.parts[name]["description"]
            want = full_description(parts[name].description(have.get("dtype")))
            before = len(problems)
            if have.get("extractor") != want["extractor"]:
                problems.append(f"part {name}: extractor is {have.get('extractor')!r}, the model's is "
                                f"{want['extractor']!r}")
            for field_name in ("weights_sha256", "preprocessing"):
                a, b = have.get(field_name) or {}, want[field_name] or {}
                for key in sorted(set(a) | set(b)):
                    if a.get(key) != b.get(key):
                        problems.append(f"part {name}: {field_name}.{key} is {_shown(a.get(key))}, the model's is "
                                        f"{_shown(b.get(key))}")
            if len(problems) == before and namespace_id(want) != self.parts[name]["namespace"]:
                problems.append(f"part {name}: namespace {self.parts[name]['namespace']}, the model's is "
                                f"{namespace_id(want)}")
        return problems

    def reader(self, parts: list[str]) -> SidecarReader:
        """The :class:`SidecarReader` of ``parts`` (a subset of :attr:`parts`)."""
        return SidecarReader(str(self.folder), self.manifest["data_manifest_sha256"],
                             {p: self.parts[p]["namespace"] for p in parts},
                             {p: {t: tuple(v["shape"]) for t, v in self.parts[p]["tensors"].items()} for p in parts})


def _shown(value: Any) -> str:
    """A value in a refusal: digests shortened to 12 hex digits, the rest as repr (None: absent)."""
    if value is None:
        return "absent"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    return repr(value)
