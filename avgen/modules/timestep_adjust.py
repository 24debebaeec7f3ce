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


def check_training_timesteps(mode: str, high_noise_prob: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """Checks ``model.timesteps.train`` and ``model.timesteps.high_noise_prob`` (see
    :func:`sample_training_timesteps`) without drawing anything; returns (p_v, p_a) as floats.

    Raises:
        ConfigError: an unknown ``mode``, a probability outside [0, 1], or p_v ≠ p_a with ``shared``.
    """
    if mode not in TRAIN_MODES:
        raise ConfigError(f"model.timesteps.train={mode!r}: expected one of {TRAIN_MODES}")
    probs = []
    for name, p in zip(("video", "audio"), high_noise_prob):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"model.timesteps.high_noise_prob.{name}={p!r}: expected a probability in [0, 1]")
        probs.append(float(p))
    if mode == "shared" and probs[0] != probs[1]:
        raise ConfigError(f"model.timesteps.high_noise_prob: video {probs[0]} and audio {probs[1]} differ, but "
                          f"model.timesteps.train=shared draws one timestep for both; set them equal")
    return probs[0], probs[1]


def sample_training_timesteps(batch: int, video_total: int, audio_total: int, mode: str = "independent",
                              generator: torch.Generator | None = None, device: torch.device | str | None = None,
                              high_noise_prob: tuple[float, float] = (0.0, 0.0)
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Local training timesteps (t_v, t_a), each (B,) long.

    ``independent`` (paper, Sec. III-D): t_v ~ U{0, T_v − 1} and t_a ~ U{0, T_a − 1} independently, so
    the loss covers every combination of local timesteps. ``shared`` (public code): one
    t ~ U{0, min(T_v, T_a) − 1} for both.

    ``high_noise_prob`` = (p_v, p_a) (``model.timesteps.high_noise_prob``; 0 = the paper's draw): each sample's
    local timestep is replaced, with probability p, by one from the upper half U{⌊T/2⌋, T − 1}, so that a share
    of the batch sits where the noisy latents no longer show when things happen and only the other modality can
    tell. ``shared`` needs p_v = p_a (one timestep, one draw). The draws from ``generator``, in order: the
    timesteps as above; then, per modality with p > 0 (video first), B uniforms for the choice and B upper-half
    timesteps; so with p = 0 the stream is the paper's draw alone.

    Raises:
        ConfigError: an unknown ``mode``, a probability outside [0, 1], or p_v ≠ p_a with ``shared``.
    """
    p_v, p_a = check_training_timesteps(mode, high_noise_prob)
    if mode == "shared":
        t = _upper_half(torch.randint(0, min(video_total, audio_total), (batch,), generator=generator), p_v,
                        min(video_total, audio_total), generator)
        return t.to(device), t.clone().to(device)
    t_v = torch.randint(0, video_total, (batch,), generator=generator)
    t_a = torch.randint(0, audio_total, (batch,), generator=generator)
    t_v = _upper_half(t_v, p_v, video_total, generator)
    t_a = _upper_half(t_a, p_a, audio_total, generator)
    return t_v.to(device), t_a.to(device)


def _upper_half(t: torch.Tensor, p: float, total: int, generator: torch.Generator | None) -> torch.Tensor:
    """``t`` with each entry replaced, with probability ``p``, by a draw from U{⌊total/2⌋, total − 1}."""
    if p <= 0:
        return t
    chosen = torch.rand(t.shape, generator=generator) < p
    upper = torch.randint(total // 2, total, t.shape, generator=generator)
    return torch.where(chosen, upper, t)
