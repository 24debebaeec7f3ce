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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: the sidecar format (manifest ``format``); a change of layout or meaning bumps the number
CACHE_FORMAT = "avgen-feature-cache/1"
#: the part names a system may offer, in the order they are computed and listed
PART_NAMES = ("video_latents", "audio_latents", "text", "encoder", "flow")
MODALITIES = ("video", "audio")


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
