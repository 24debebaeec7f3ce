"""Timestep adjustment across modalities (Sony SVG baseline, arXiv 2409.17550, Sec. III-B, Eq. 9).

A global timestep t ∈ [0, T] drives both modalities; each base model sees its own local timestep

    m(t) = round(T_v · (t / T) ** sqrt(γ))        (video)
    n(t) = round(T_a · (t / T) ** (1 / sqrt(γ)))  (audio)

so that m(t)/T_v = (n(t)/T_a) ** γ. γ > 1 makes the video's local timestep smaller than the audio's
(video is denoised ahead of audio), compensating for the video schedule collapsing data into noise
faster than the audio one (paper Fig. 2). γ = 1 is the identity when T_v = T_a = T. The paper uses
γ = 1.5 at inference.

With diffusers schedulers timesteps are indices 0 … T_s − 1 (``num_train_timesteps`` = T_s); local
timesteps are clamped to that range, so t = T − 1 maps to T_s − 1 rather than past the table.

Training does not use the map: the paper samples the two local timesteps independently and uniformly
(Sec. III-D) so that any γ works at inference. The public code shares one timestep across the two
base models; :func:`sample_training_timesteps` offers both.
"""

from __future__ import annotations

import math

import torch

from avgen.errors import ConfigError

TRAIN_MODES = ("independent", "shared")


def check_gamma(gamma: float, key: str = "gamma") -> float:
    """γ as a float; raises :class:`ConfigError` naming ``key`` (``model.sampling.gamma``, ``sample.gamma``)
    unless γ > 0, the range where (t / T) ** sqrt(γ) is defined."""
    if gamma is None or isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ConfigError(f"{key}={gamma!r}: timestep adjustment γ must be > 0 (Eq. 9; 1 = no adjustment, "
                          f"paper 1.5); set {key}=1.5")
    return float(gamma)


def local_timesteps(t: torch.Tensor | int | float, gamma: float, total: int, local_total: int,
                    exponent_sign: int) -> torch.Tensor:
    """round(local_total · (t / total) ** (sqrt(γ) ** exponent_sign)), clamped to [0, local_total − 1].

    ``exponent_sign`` = +1 gives the video map m(t), −1 the audio map n(t). Returns a long tensor of
    ``t``'s shape.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    power = math.sqrt(gamma) ** exponent_sign
    local = torch.round(local_total * (t.clamp(min=0) / total) ** power)
    return local.clamp(0, local_total - 1).long()


def adjust_timesteps(t: torch.Tensor | int | float, gamma: float, total: int = 1000, video_total: int | None = None,
                     audio_total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: the (video, audio) local timesteps (m(t), n(t)) of global timestep ``t``.

    Args:
        t: global timestep(s), any shape.
        gamma: γ (1 = no adjustment; paper 1.5).
        total: T, the global timestep range.
        video_total, audio_total: T_v and T_a, the base models' ``num_train_timesteps`` (default T).
    """
    gamma = check_gamma(gamma)
    video_total = total if video_total is None else video_total
    audio_total = total if audio_total is None else audio_total
    return (local_timesteps(t, gamma, total, video_total, +1),
            local_timesteps(t, gamma, total, audio_total, -1))


def sample_training_timesteps(batch: int, video_total: int, audio_total: int, mode: str = "independent",
                              generator: torch.Generator | None = None, device: torch.device | str | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Local training timesteps (t_v, t_a), each (B,) long.

    ``independent`` (paper, Sec. III-D): t_v ~ U{0, T_v − 1} and t_a ~ U{0, T_a − 1} independently, so
    the loss covers every combination of local timesteps. ``shared`` (public code): one
    t ~ U{0, min(T_v, T_a) − 1} for both.
    """
    if mode not in TRAIN_MODES:
        raise ConfigError(f"model.timesteps.train={mode!r}: expected one of {TRAIN_MODES}")
    if mode == "shared":
        t = torch.randint(0, min(video_total, audio_total), (batch,), generator=generator)
        return t.to(device), t.clone().to(device)
    t_v = torch.randint(0, video_total, (batch,), generator=generator)
    t_a = torch.randint(0, audio_total, (batch,), generator=generator)
    return t_v.to(device), t_a.to(device)
