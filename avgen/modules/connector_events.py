"""The video connector's event code: an auxiliary loss that teaches the joint model's video connector to mark the
frames where an event (an object landing, a hit) happens, and the teacher forcing that teaches the audio blocks to
read that mark (``model.video_connector_events``).

avgen's aid for small training budgets, **not** the SVG paper's recipe (Hayakawa et al. 2024, arXiv 2409.17550, train
the connectors by the diffusion loss alone). At ``scale=mini``, trained by the diffusion loss alone the video connector
outputs one direction for every clip (cosine 0.9999 between clips) and the audio ignores the video; with this loss and
teacher forcing the audio of a real video follows its landings (``benchmarks/joint_connector_warm_start.py``, whose
``code`` target with ``--aux 1 --teacher 1`` this module reproduces inside ``fit``).

The code: two fixed unit vectors ``e_hit`` and ``e_none`` (drawn from N(0, I) with a seed, L2-normalised); frame ``f``
of a clip should read ``e_hit`` when an event time ``e`` (seconds from the clip's start, ``batch["events"]``) has
⌊e·fps⌋ = f, ``e_none`` otherwise. The loss regresses the connector's output, L2-normalised per frame (what CMC-PE reads
after its own normalisation), onto that code by squared error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.errors import ConfigError


def event_frame_labels(events: Sequence[Any], frames: int, fps: float) -> Tensor:
    """(B, frames) float32 labels: 1 on frame ⌊e·fps + 10⁻⁴⌋ of each event time ``e`` of each clip, 0 elsewhere
    (the 10⁻⁴ frame: an event exactly on a frame's start, k/fps, stored in float32 as the data path holds it, lands
    on frame k, not k − 1: float32 0.7 s · 10 fps = 6.99999988).

    Args:
        events: one sequence of event times (seconds from the clip's start; tensor, array or list, may be empty)
            per clip, as ``batch["events"]`` holds them.
        frames: frames per clip (the video latents' F).
        fps: the clip's frame rate (Hz).

    Events outside [0, frames / fps) are ignored; several events in one frame give one 1.
    """
    labels = torch.zeros(len(events), frames)
    for row, times in enumerate(events):
        for e in np.asarray(times.cpu() if isinstance(times, Tensor) else times, dtype=np.float64).reshape(-1):
            k = int(math.floor(e * fps + 1e-4))
            if 0 <= k < frames:
                labels[row, k] = 1.0
    return labels


def code_directions(dim: int, seed: int = 123) -> tuple[Tensor, Tensor]:
    """``e_hit``, ``e_none``: two unit vectors (dim,) float32, drawn in that order from N(0, I) by a CPU generator
    seeded with ``seed`` and L2-normalised (the same on every machine and run)."""
    generator = torch.Generator().manual_seed(seed)
    e_hit = F.normalize(torch.randn(dim, generator=generator), dim=0)
    e_none = F.normalize(torch.randn(dim, generator=generator), dim=0)
    return e_hit, e_none


class EventCode(nn.Module):
    """The event code of a video connector of output width ``dim``: :meth:`code`, :meth:`loss` and :meth:`score`.

    The directions are non-persistent buffers: they follow the module across devices and dtypes and are not in
    its state dict (rebuilt from ``seed``).

    Args:
        dim: the connector's output width D.
        seed: seed of :func:`code_directions`.
    """

    def __init__(self, dim: int, seed: int = 123):
        super().__init__()
        e_hit, e_none = code_directions(dim, seed)
        self.register_buffer("e_hit", e_hit, persistent=False)
        self.register_buffer("e_none", e_none, persistent=False)

    def code(self, labels: Tensor) -> Tensor:
        """(B, F) labels -> (B, F, D): ``e_hit`` on a labelled frame, ``e_none`` elsewhere (float32)."""
        return torch.where(labels[..., None] > 0, self.e_hit, self.e_none)

    def loss(self, output: Tensor, labels: Tensor) -> Tensor:
        """Scalar: Σ_D (output/‖output‖ − code)², averaged over clips and frames; output (B, F, D) any float dtype,
        computed in float32. 0 exactly when every frame points along its code; scale-free."""
        return (F.normalize(output.float(), dim=-1) - self.code(labels.to(output.device))).pow(2).sum(-1).mean()

    def score(self, output: Tensor) -> Tensor:
        """(B, F, D) -> (B, F) float32: cos(output, e_hit) − cos(output, e_none); higher = more likely an event."""
        unit = F.normalize(output.float(), dim=-1)
        return unit @ self.e_hit - unit @ self.e_none


@dataclass(frozen=True)
class VideoConnectorEvents:
    """``model.video_connector_events``.

    Attributes:
        weight: weight of :meth:`EventCode.loss` beside the diffusion loss (0: off, the paper's recipe).
        teacher_forcing: share of training batches in which the audio blocks read the exact code of the batch's
            events in the video connector's place (the connector is then trained by the event loss alone on that
            batch); sampling never does. Needs ``weight`` > 0.
        connector_only_steps: the first optimizer steps train the video connector alone on the event loss (a warm
            start; the U-Nets do not run). Needs ``weight`` > 0.
        draws_per_clip: noisy versions of each clip's latent (each its own timestep, noise and x̂0) the event loss
            averages over; the connector is small next to the U-Nets, so they cost little. At ``scale=mini``'s 2
            clips per batch, with one draw the connector marked held-out landings with ROC AUC 0.67–0.71 (clean
            x̂0) after 1,500 connector-only and 1,200 joint steps; with 8, 0.74–0.77 after the 1,500 connector-only
            steps alone, 0.85–0.89 after 2,500 and 0.94–0.97 after 4,000 (``benchmarks/README.md``).
        clean_x0_prob: share of draws in which the connector reads the clean latent as its x̂0 in the event loss
            (zeros otherwise, as at the sampler's first step).
        seed: seed of the code directions.
    """

    weight: float = 0.0
    teacher_forcing: float = 0.0
    connector_only_steps: int = 0
    draws_per_clip: int = 8
    clean_x0_prob: float = 0.5
    seed: int = 123

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    @classmethod
    def from_config(cls, config: Mapping | None) -> "VideoConnectorEvents":
        """Checks and reads ``model.video_connector_events`` (None: off).

        Raises:
            ConfigError: an unknown key, a negative weight, a share outside [0, 1], a negative step count, or
                teacher forcing / connector-only steps without a weight (the message names the key)."""
        config = dict(config or {})
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(config) - set(defaults))
        if unknown:
            raise ConfigError(f"model.video_connector_events: unknown key(s) {unknown}; expected "
                              f"{', '.join(defaults)}")
        values = {**defaults, **config}
        key = "model.video_connector_events"
        for name in ("weight", "teacher_forcing", "clean_x0_prob"):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name != "weight" and value > 1):
                expected = "a number ≥ 0" if name == "weight" else "a share in [0, 1]"
                raise ConfigError(f"{key}.{name}={value!r}: expected {expected}")
        for name, least in (("connector_only_steps", 0), ("draws_per_clip", 1), ("seed", 0)):
            if isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < least:
                raise ConfigError(f"{key}.{name}={values[name]!r}: expected an integer ≥ {least}")
        settings = cls(float(values["weight"]), float(values["teacher_forcing"]), values["connector_only_steps"],
                       values["draws_per_clip"], float(values["clean_x0_prob"]), values["seed"])
        if not settings.enabled and (settings.teacher_forcing > 0 or settings.connector_only_steps > 0):
            raise ConfigError(f"{key}.teacher_forcing / connector_only_steps need {key}.weight > 0 (without the "
                              f"event loss the connector never learns the code); set a weight, e.g. 1")
        return settings
