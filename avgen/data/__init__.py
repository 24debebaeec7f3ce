"""Shared data pipeline: shard format, writer, decoding, the datamodule and the synthetic dataset."""

from avgen.data.datamodule import AVDataModule, GeometryMismatchError, MissingShardsError
from avgen.data.geometry import ClipGeometry
from avgen.data.shards import Manifest, ShardWriter
from avgen.data.stream import DataHealthError

__all__ = ["AVDataModule", "ClipGeometry", "DataHealthError", "GeometryMismatchError", "Manifest",
           "MissingShardsError", "ShardWriter"]
