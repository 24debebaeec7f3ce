"""Shared data pipeline: shard format, writer, decoding, the datamodule and the synthetic dataset.

Names are imported lazily so that light users (``prepare``, the CLI) do not pay for Lightning.
"""

import importlib

_EXPORTS = {
    "AVDataModule": "avgen.data.datamodule",
    "ClipGeometry": "avgen.data.geometry",
    "Manifest": "avgen.data.shards",
    "ShardWriter": "avgen.data.shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avgen.data' has no attribute {name!r}")
