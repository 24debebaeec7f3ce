"""The pinned feature extractors by name (``i3d``, ``c3d``, ``vggish``), as the metric configs name them."""

from __future__ import annotations

import os
from typing import Any

from avgen.encoders.base import FeatureExtractor
from avgen.encoders.vggish import VGGishFeatures
from avgen.encoders.video_classifiers import C3DProbabilities, I3DFeatures
from avgen.errors import ConfigError
from avgen.pretrained import ExtractorWeightsMissing

EXTRACTORS: dict[str, type[FeatureExtractor]] = {"i3d": I3DFeatures, "c3d": C3DProbabilities, "vggish": VGGishFeatures}


def build_extractor(name: str, path: str | os.PathLike | None, **kwargs: Any) -> FeatureExtractor:
    """A pinned extractor by name (``i3d``, ``c3d``, ``vggish``) from a local weight file; ``kwargs`` go to
    its class."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; available: {sorted(EXTRACTORS)}")
    if path is None:
        raise ExtractorWeightsMissing(name, None, kwargs.get("config_key"))
    return EXTRACTORS[name](path, **kwargs)
