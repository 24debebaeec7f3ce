"""A split of a prepared dataset held in memory: the training set of small models that sample it at random.

The codecs of the mini twins (``python -m avgen pretrain-twins part=codecs``, :mod:`avgen.pretraining`) train on
single frames and short audio segments drawn from every clip. A few hundred small clips fit in memory (512 clips
of 2 s at 32×32 and 16 kHz: 25 MB of frames, 66 MB of audio), so the split is decoded once, through the same
shard reader and decoder as every avgen run (:class:`avgen.data.stream.EvalStream`: every clip once, in manifest
order, centre crops), and batches are then drawn by index: a batch is a function of a seed and the step alone,
so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from avgen.data.geometry import ClipGeometry

if TYPE_CHECKING:
    from avgen.data.stream import Shard


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU random generator of training step ``step`` under ``seed``: every batch drawn from it is a function of
    both (the mini twins' trainers draw batches, noise and timesteps from it, so a resumed run repeats them)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63 - 1))


@dataclass
class ClipBank:
    """Every clip of one split, decoded.

    Attributes:
        frames: uint8 ``(N, F, 3, H, W)`` RGB (time axis 1).
        audio: float32 ``(N, S)`` mono in [-1, 1] at ``geometry.sample_rate`` Hz.
        events: per clip, float64 ground-truth event times in seconds (empty when the dataset has none).
        keys, labels, captions: per clip, from the shards' metadata.
        geometry: the clip geometry the clips were decoded at.
        skipped: clips the reader could not decode (counted, not fatal).
        source: ``"store"`` (decoded from a prepared split's shards, :meth:`read`) or ``"rendered"`` (drawn by the
            dataset's generator in memory, never encoded:
            :func:`avgen.data.synthetic_prepare.rendered_clip_bank`); caches keyed by the clips tell them apart.
    """

    frames: torch.Tensor
    audio: torch.Tensor
    events: list[np.ndarray]
    keys: list[str]
    labels: list[str]
    captions: list[str]
    geometry: ClipGeometry
    skipped: int = 0
    source: str = "store"

    def __len__(self) -> int:
        return int(self.audio.shape[0])

    @classmethod
    def read(cls, shards: list[Shard], geometry: ClipGeometry, *, split: str, limit: int | None = None,
             batch_size: int = 32) -> ClipBank:
        """Decode ``shards`` (one split) at ``geometry``, at most ``limit`` clips (the first, in manifest order).

        Raises:
            ValueError: no clip could be read (the message names the split and the first shard).
        """
        from avgen.data.stream import EvalStream, Health  # webdataset: only a store's clips need it

        stream = EvalStream(shards, geometry, batch_size, split=split)
        frames, audio, events, keys, labels, captions = [], [], [], [], [], []
        total = Health()
        for batch in stream:
            health = batch.pop("_health", None)
            if health is not None:
                total.merge(health)
            video = batch["video"]  # (B, F, H, W, 3) uint8
            frames.append(video.permute(0, 1, 4, 2, 3).contiguous())
            audio.append(batch["audio"].float())
            events += [np.asarray(e, dtype=np.float64).reshape(-1) for e in batch["events"]]
            keys += list(batch["key"])
            labels += list(batch["label"])
            captions += list(batch["caption"])
            if limit is not None and len(keys) >= limit:
                break
        if not keys:
            raise ValueError(f"no clip of the {split} split could be read (first shard {shards[0].url}); "
                             f"prepare the dataset again (python -m avgen prepare ... overwrite=true)")
        n = len(keys) if limit is None else min(limit, len(keys))
        return cls(frames=torch.cat(frames)[:n], audio=torch.cat(audio)[:n], events=events[:n], keys=keys[:n],
                   labels=labels[:n], captions=captions[:n], geometry=geometry, skipped=total.skipped)

    def generator(self, seed: int, step: int) -> torch.Generator:
        """The random generator of training step ``step`` under ``seed`` (:func:`step_generator`)."""
        return step_generator(seed, step)

    def random_frames(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` frames drawn uniformly over all clips and times (with replacement): uint8 ``(n, 3, H, W)``."""
        count, per_clip = self.frames.shape[0], self.frames.shape[1]
        flat = torch.randint(count * per_clip, (n,), generator=generator)
        return self.frames.flatten(0, 1)[flat]

    def random_segments(self, n: int, samples: int, generator: torch.Generator, multiple: int = 1) -> torch.Tensor:
        """``n`` audio segments of ``samples`` samples from random clips at random starts that are multiples of
        ``multiple`` samples (a mel hop, so segments align with mel frames): float32 ``(n, samples)``.

        Raises:
            ValueError: the clips are shorter than ``samples``.
        """
        length = self.audio.shape[1]
        if samples > length:
            raise ValueError(f"audio segments of {samples} samples asked from clips of {length} samples")
        clips = torch.randint(len(self), (n,), generator=generator)
        starts = torch.randint((length - samples) // multiple + 1, (n,), generator=generator) * multiple
        index = starts[:, None] + torch.arange(samples)[None, :]
        return self.audio[clips[:, None], index]
