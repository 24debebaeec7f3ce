"""ImageBind audio–video score: how well a clip's soundtrack matches its pictures in ImageBind's joint space.

Per clip the score is ``cos(a, v)`` between ``a``, ImageBind's audio embedding of the soundtrack, and
``v``, its vision embedding of the frames, each the mean over the clip's sub-clips of the per-sub-clip
embeddings (what ``ImageBindModel.forward`` returns for (B, S, ...) inputs); the cosine normalises
both means. The metric is the mean of the per-clip cosines, raw (in [-1, 1], not ×100). The model and
its transforms are :mod:`avgen.encoders.imagebind` (Girdhar et al. 2023, "ImageBind: One Embedding
Space To Bind Them All", arXiv 2305.05665).

Under DDP each process scores its own clips; the states (score sum, clip count) are summed across
processes, so ``compute()`` is the mean over all clips whatever the split. Call ``compute()`` on every
rank (torchmetrics syncs in it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avgen.encoders.imagebind import ImageBindAV, load_imagebind
from avgen.metrics.cosine import MeanCosine


def av_cosine(audio_embedding: torch.Tensor, vision_embedding: torch.Tensor) -> torch.Tensor:
    """Per-clip cosine (B,) float64 of two (B, D) embeddings (each L2-normalised in float64 first)."""
    a = F.normalize(audio_embedding.double(), dim=-1)
    v = F.normalize(vision_embedding.double(), dim=-1)
    return (a * v).sum(dim=-1)


class ImageBindScore(MeanCosine):
    """Mean over clips of cos(ImageBind audio embedding, ImageBind vision embedding), raw in [-1, 1].

    States ``score_sum`` and ``count`` (float64, summed across processes). The model stays frozen and
    in eval mode whatever its parent does.

    Args:
        model: an :class:`ImageBindAV` (:func:`load_imagebind`, or random for tests).
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "imagebind"

    def __init__(self, model: ImageBindAV, **kwargs: Any):
        super().__init__(model, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike | None, config_key: str = "evaluate.imagebind.path",
                  sizes: Mapping[str, Any] | None = None, **kwargs: Any) -> ImageBindScore:
        """The metric over :func:`load_imagebind` ``(path, config_key, **sizes)``."""
        return cls(load_imagebind(path, config_key, **dict(sizes or {})), **kwargs)

    def clip_scores(self, frames: torch.Tensor | Sequence[Any], audio: torch.Tensor | Sequence[Any],
                    sample_rate: int = 16000, fps: float | Sequence[float] | None = None) -> torch.Tensor:
        """Per-clip cosines (B,) float64; same inputs as :meth:`update`."""
        n_video = frames.shape[0] if isinstance(frames, torch.Tensor) else len(frames)
        n_audio = audio.shape[0] if isinstance(audio, torch.Tensor) else len(audio)
        if n_video != n_audio:
            raise ValueError(f"ImageBindScore.update got {n_video} videos and {n_audio} audio tracks")
        if n_video == 0:
            raise ValueError("ImageBindScore.update got no clips")
        if fps is None:
            # the video spans the audio: fps = frames / audio seconds, clip by clip
            lengths = [int(np.shape(a)[-1]) if np.ndim(a) else 0 for a in audio]
            counts = [frames.shape[1]] * n_video if isinstance(frames, torch.Tensor) else [len(f) for f in frames]
            if min(lengths) == 0:
                raise ValueError("ImageBind audio: empty waveform")
            fps = [c * sample_rate / s for c, s in zip(counts, lengths)]
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sound = self.model.audio_embedding(audio, sample_rate)
            sight = self.model.vision_embedding(frames, fps)
        return av_cosine(sound, sight)

    def update(self, frames: torch.Tensor | Sequence[Any], audio: torch.Tensor | Sequence[Any],
               sample_rate: int = 16000, fps: float | Sequence[float] | None = None) -> None:
        """Add a batch: ``frames`` (B, F, 3, H, W) float in [-1, 1] or a list of B clips (F, H, W, 3) uint8;
        ``audio`` (B, S) float or a list of B (S,) waveforms at ``sample_rate`` (resampled to 16 kHz);
        ``fps`` one value or one per clip, by default ``frames / audio duration`` (the video spans the
        audio)."""
        self.add_scores(self.clip_scores(frames, audio, sample_rate, fps))

    def describe(self) -> dict[str, Any]:
        """Name, weight hash, model and transform config and scale, for ``metrics.json``."""
        identity = self.model.identity()
        return {"name": self.name, "sha256": identity["sha256"], "config": identity["config"],
                "scale": "raw cosine", "paths": {role: p for role, (p, _) in self.model.weights.items()}}
