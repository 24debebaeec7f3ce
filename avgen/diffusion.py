"""Diffusion helpers shared by the systems: training targets, x̂0 estimates, and a DDIM step between
two arbitrary timesteps.

The noise schedules come from diffusers schedulers (their ``alphas_cumprod`` and config); only the
joint model needs its own step, because with timestep adjustment (Eq. 9 of the SVG baseline paper)
consecutive local timesteps are not evenly spaced, and diffusers' ``DDIMScheduler.step`` derives the
previous timestep from the step count: t − ``num_train_timesteps // num_inference_steps``, which is
the next grid point on every ``leading`` grid but not in general (see
:meth:`avgen.systems.joint.JointAudioVideo.generate`).

DDIM (Song et al. 2021, Eq. 12), for ᾱ_t = ``alphas_cumprod[t]``:

    x̂0 = (x_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t)
    x_prev = sqrt(ᾱ_prev) x̂0 + sqrt(1 − ᾱ_prev − σ²) ε̂ + σ z,   z ~ N(0, I)
    σ = η · sqrt((1 − ᾱ_prev) / (1 − ᾱ_t)) · sqrt(1 − ᾱ_t / ᾱ_prev)            (Eq. 16)

with ᾱ_prev = ``alphas_cumprod[t_prev]``, or the scheduler's final value (1, or ᾱ_0 when
``set_alpha_to_one`` is false) after the last step (t_prev < 0). η = 0 is the deterministic DDIM the
papers sample with; η = 1 is the ancestral (DDPM-like) sampler on the same subsequence.
"""

from __future__ import annotations

from typing import Sequence

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ values as float32, shaped to broadcast against ``like`` (never in ``like``'s dtype: in bfloat16
    ᾱ_0 = 0.99915 and ᾱ_1 = 0.9983 round to 1, and the noise of the first timesteps vanishes)."""
    return a.float().reshape(a.shape + (1,) * (like.dim() - a.dim()))


def alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor, final: float) -> torch.Tensor:
    """ᾱ at timesteps ``t`` (any shape, long); ``final`` where t < 0."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long()
    values = alphas_cumprod[t.clamp(min=0)]
    return torch.where(t >= 0, values, torch.full_like(values, final))


def training_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    """What the network regresses, float32 whatever the inputs' dtype: ε, v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0
    (Salimans & Ho 2022), or x0 itself."""
    if prediction_type == "epsilon":
        return noise.float()
    if prediction_type == "sample":
        return x0.float()
    if prediction_type == "v_prediction":
        a = _expand(alpha_bar(alphas_cumprod, t, 1.0), x0)
        return a.sqrt() * noise.float() - (1 - a).sqrt() * x0.float()
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, with per-sample timesteps ``t`` (B,); float32 whatever the
    inputs' dtype (latents encoded under bf16 autocast must not set the noise level's precision)."""
    a = _expand(alpha_bar(alphas_cumprod, t, 1.0), x0)
    return a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()


def split_prediction(prediction_type: str, x_t: torch.Tensor, output: torch.Tensor, alphas_cumprod: torch.Tensor,
                     t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the network ``output`` at timesteps ``t`` (scalar or (B,)), computed in float32 and
    returned in ``x_t``'s dtype."""
    dtype = x_t.dtype
    a = alpha_bar(alphas_cumprod, t, 1.0)
    a = _expand(a.expand(x_t.shape[0]) if a.dim() == 0 else a, x_t)
    x_t, output = x_t.float(), output.float()
    if prediction_type == "epsilon":
        eps = output
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * output
        eps = a.sqrt() * output + (1 - a).sqrt() * x_t
    elif prediction_type == "sample":
        x0 = output
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    return x0.to(dtype), eps.to(dtype)


def ddim_step(prediction_type: str, x_t: torch.Tensor, output: torch.Tensor, alphas_cumprod: torch.Tensor,
              t: int, t_prev: int, final_alpha: float, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from timestep ``t`` to ``t_prev`` (``t_prev`` < 0: to the data), with the
    stochasticity ``eta`` (module docstring; Song et al. 2021, Eqs. 12 and 16). ``eta`` = 0 is
    deterministic and ignores ``noise``; otherwise ``noise`` is z, standard normal of ``x_t``'s shape, of
    any dtype and device (moved to ``x_t``'s device, used in float32). diffusers'
    ``DDIMScheduler.step(..., eta, variance_noise=noise)`` computes the same step between consecutive
    points of a ``leading`` grid. σ is 0 where ``t_prev`` = ``t`` (also at ᾱ = 0, zero terminal SNR).

    Returns (x_{t_prev}, x̂0), in ``x_t``'s dtype.

    Raises:
        ValueError: ``eta`` outside [0, 1], or ``eta`` > 0 without ``noise`` of ``x_t``'s shape.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1] (0: deterministic, 1: ancestral), got {eta}")
    x0, eps = split_prediction(prediction_type, x_t, output, alphas_cumprod, torch.tensor(t))
    a_prev = alpha_bar(alphas_cumprod, torch.tensor(t_prev), final_alpha).float()
    if eta == 0.0:
        return (a_prev.sqrt() * x0.float() + (1 - a_prev).sqrt() * eps.float()).to(x_t.dtype), x0
    if noise is None or tuple(noise.shape) != tuple(x_t.shape):
        raise ValueError(f"DDIM with eta={eta} needs noise of the latents' shape {tuple(x_t.shape)}, got "
                         f"{None if noise is None else tuple(noise.shape)}")
    a_t = alpha_bar(alphas_cumprod, torch.tensor(t), final_alpha).float()
    ratio = torch.where(a_prev > 0, a_t / a_prev.clamp(min=torch.finfo(torch.float32).tiny), torch.ones_like(a_t))
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - ratio)).clamp(min=0).sqrt()  # 0 where t_prev = t, ᾱ = 0 too
    direction = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt()
    x_prev = a_prev.sqrt() * x0.float() + direction * eps.float() + sigma * noise.to(x_t.device).float()
    return x_prev.to(x_t.dtype), x0


def final_alpha_cumprod(scheduler) -> float:
    """ᾱ after the last step: 1 with ``set_alpha_to_one``, else ᾱ_0 (diffusers' DDIM convention)."""
    if scheduler.config.get("set_alpha_to_one", True):
        return 1.0
    return float(scheduler.alphas_cumprod[0])


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + s · (cond − uncond); s = 1 is the conditional prediction."""
    return uncond + scale * (cond - uncond)


def seeded_noise(shapes: Sequence[Sequence[int]], batch: int, seed: int,
                 generators: list[torch.Generator] | None = None) -> list[torch.Tensor]:
    """Starting noise for ``batch`` samples: sample ``i`` draws one standard normal tensor per shape in
    ``shapes``, in that order, from a CPU generator seeded with ``seed + i``, so a sample does not depend
    on the batch it is generated in (or on the device). Returns one float32 tensor ``(batch, *shape)`` per
    shape, on the CPU. Given a list as ``generators``, the ``batch`` generators are appended to it, their
    state after these draws: a stochastic sampler's later draws (``eta`` of :func:`ddim_step`) then continue each
    sample's own stream instead of repeating its starting noise."""
    drawn = []
    for i in range(batch):
        generator = torch.Generator().manual_seed(int(seed) + i)
        drawn.append([torch.randn(tuple(shape), generator=generator) for shape in shapes])
        if generators is not None:
            generators.append(generator)
    return [torch.stack([sample[k] for sample in drawn]) for k in range(len(shapes))]


def shared_frame_noise(noise_shape: Sequence[int], streams: Sequence[torch.Generator]) -> torch.Tensor:
    """The shared part ε_shared of :func:`mixed_noise` for a batch whose samples each own a CPU generator (the
    ``generators`` :func:`seeded_noise` returns): sample ``i``'s ``(C, 1, h, w)`` is drawn next from ``streams[i]``,
    so a clip's noise does not depend on the batch it is drawn in. A sampler that is given its starting latents calls
    this too, discarding the result, to keep each stream where the seeded draw would have left it.

    Args:
        noise_shape: the video noise's shape ``(B, C, F, h, w)``.
        streams: B CPU generators, advanced by C·h·w draws each.

    Returns: float32 ``(B, C, 1, h, w)`` on the CPU.

    Raises:
        ValueError: ``noise_shape`` not 5-D, or a number of streams other than B.
    """
    if len(noise_shape) != 5:
        raise ValueError(f"shared_frame_noise takes video noise shapes (B, C, F, h, w); got {tuple(noise_shape)}")
    if len(streams) != noise_shape[0]:
        raise ValueError(f"shared_frame_noise: {len(streams)} generators for a batch of {noise_shape[0]}; "
                         "pass one per sample")
    one = (int(noise_shape[1]), 1, *(int(n) for n in noise_shape[3:]))
    return torch.stack([torch.randn(one, generator=g) for g in streams])


def mixed_noise(noise: torch.Tensor, correlation: float, generator: torch.Generator | None = None,
                shared: torch.Tensor | None = None,
                streams: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """PYoCo's mixed noise prior for video (Ge et al. 2023, "Preserve Your Own Correlation", Eq. 4, written with the
    frames' correlation r = α² / (1 + α²)): ε_f = √r · ε_shared + √(1 − r) · ε_f^ind, one ε_shared per clip and
    channel position, shared by all of the clip's frames. Each frame's noise is still standard normal; two frames'
    noise correlate by r. A video U-Net trained on this prior must be sampled from it (the starting noise and, for
    DDIM with η > 0, each step's noise).

    Args:
        noise: the independent part ε^ind, standard normal ``(B, C, F, h, w)`` (axis 2 is time), any float dtype.
        correlation: r in [0, 1); 0 returns ``noise`` itself (no draw is made).
        generator: draws ε_shared ``(B, C, 1, h, w)`` on ``noise``'s device (None: torch's global stream), unless
            ``shared`` is given.
        shared: ε_shared itself, ``(B, C, 1, h, w)``.
        streams: one CPU generator per sample; sample ``i``'s shared part is drawn next from ``streams[i]``
            (:func:`shared_frame_noise`; batch-independent clips). At most one of ``generator``, ``shared`` and
            ``streams`` may be given.

    Returns: float tensor of ``noise``'s shape, dtype and device.

    Raises:
        ValueError: r outside [0, 1), ``noise`` not 5-D, ``shared`` of another shape, more than one source of the
            shared part, or a number of ``streams`` other than B.
    """
    r = float(correlation)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"frame noise correlation must be in [0, 1) (0: independent frames), got {correlation}")
    if noise.dim() != 5:
        raise ValueError(f"mixed_noise takes video noise (B, C, F, h, w); got {tuple(noise.shape)}")
    if sum(x is not None for x in (generator, shared, streams)) > 1:
        raise ValueError("mixed_noise: give at most one of generator, shared and streams")
    if r == 0.0:
        return noise
    want = (noise.shape[0], noise.shape[1], 1, *noise.shape[3:])
    if streams is not None:
        shared = shared_frame_noise(noise.shape, streams)
    if shared is None:
        shared = torch.randn(want, generator=generator, device=noise.device if generator is None
                             else generator.device, dtype=torch.float32)
    elif tuple(shared.shape) != want:
        raise ValueError(f"mixed_noise: shared noise of shape {tuple(shared.shape)}, expected {want}")
    mixed = r ** 0.5 * shared.to(noise.device, torch.float32) + (1.0 - r) ** 0.5 * noise.float()
    return mixed.to(noise.dtype)


MIN_SNR_FORMS = ("target", "epsilon")


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at integer timesteps ``t`` (B,), float32 (B,)."""
    a = alpha_bar(alphas_cumprod, t, 1.0).float()
    return a / (1 - a)


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, prediction_type: str, gamma: float | None,
                    form: str = "target") -> torch.Tensor:
    """Per-sample loss weights (B,) float32 of Min-SNR-γ weighting (Hang et al. 2023, arXiv 2303.09556, Sec. 3.4).

    The weight is written on the ε loss as min(SNR_t, γ) / SNR_t. With ``form="target"`` it is carried to
    the regressed target: ``epsilon`` min(SNR, γ) / SNR; ``v_prediction`` min(SNR, γ) / (SNR + 1) (the v
    loss is (SNR + 1) times the ε loss); ``sample`` min(SNR, γ). ``form="epsilon"`` applies
    min(SNR, γ) / SNR whatever the target (VTA-LDM's public code on its v target). ``gamma=None``: all ones
    (the plain MSE of DDPM, Ho et al. 2020 Eq. 14).

    Raises:
        ValueError: γ ≤ 0, an unknown ``form`` or ``prediction_type``.
    """
    if gamma is None:
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma={gamma}: expected a value > 0 (5 in Hang et al. 2023), or null for none")
    if form not in MIN_SNR_FORMS:
        raise ValueError(f"min-SNR form {form!r}: expected one of {MIN_SNR_FORMS}")
    ratio = snr(alphas_cumprod, t).to(t.device)
    clipped = torch.clamp(ratio, max=float(gamma))
    if form == "epsilon" or prediction_type == "epsilon":
        return clipped / ratio
    if prediction_type == "v_prediction":
        return clipped / (ratio + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


LOSS_WEIGHTINGS = ("uniform", "v")


def v_loss_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, prediction_type: str, max_weight: float = 20.0
                   ) -> torch.Tensor:
    """Per-sample loss weights (B,) float32 that turn the MSE of the regressed target into the MSE of v
    (Salimans & Ho 2022, Sec. 4 and App. D: L_v = (1 + SNR) L_x0, L_ε = SNR L_x0), capped and normalised.

    For the same error in x̂0 the v error is ``r_t`` times the target's: ``epsilon`` r = (SNR + 1) / SNR = 1 / ᾱ_t,
    ``sample`` r = SNR + 1 = 1 / (1 − ᾱ_t), ``v_prediction`` r = 1. The weight is min(r_t, ``max_weight``) divided
    by the mean of min(r_s, ``max_weight``) over every timestep s of the schedule, so uniformly drawn timesteps
    get weight 1 on average. On an ε target this raises the share of the loss at high noise, where an ε error is
    an x̂0 error shrunk by sqrt(SNR): the steps where a sampler decides what the clip holds (and, in a joint model,
    where the other modality can tell it) weigh up to ``max_weight`` times a uniform draw's (Kingma & Gao 2023,
    "Understanding Diffusion Objectives", the weighting view of the objectives).

    Args:
        alphas_cumprod: ᾱ of the schedule (T,), any float dtype.
        t: integer timesteps (B,).
        prediction_type: what the network regresses (``epsilon``, ``v_prediction``, ``sample``).
        max_weight: cap of r_t before normalising (≥ 1).
    Raises:
        ValueError: ``max_weight`` < 1 or an unknown ``prediction_type``.
    """
    if not max_weight >= 1:
        raise ValueError(f"max_weight={max_weight}: expected a cap of at least 1")
    a = alphas_cumprod.double()
    if prediction_type == "epsilon":
        ratio = 1 / a
    elif prediction_type == "sample":
        ratio = 1 / (1 - a)
    elif prediction_type == "v_prediction":
        ratio = torch.ones_like(a)
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    table = torch.clamp(ratio, max=float(max_weight))
    table = table / table.mean()
    return table.float().to(t.device)[torch.as_tensor(t, device=t.device).long()]


def frame_difference_loss(predicted_x0: torch.Tensor, x0: torch.Tensor, alphas_cumprod: torch.Tensor,
                          t: torch.Tensor, grid: int | None = 1) -> torch.Tensor:
    """The error of a video model's frame-to-frame changes, a scalar float32: of each frame's mean latent (``grid``
    1), of its means over a ``grid`` × ``grid`` of cells, or of every latent element (``grid`` None).

    With m_f = frame f's latents averaged over each cell (per channel) and Δ the difference of consecutive frames,
    L = mean_b w_b · mean_{c,f,cells} (Δm̂_f − Δm_f)², m̂ from the predicted x̂0 and m from the clean x0, with the
    truncated-SNR weight w = max(SNR_t, 1) (Salimans & Ho 2022, Sec. 4): the x̂0 error at high noise, the ε error
    (x̂0 error × √SNR) at low noise. Zero when the predicted clip's cells change exactly as the clean clip's,
    whatever else differs; in particular blind to an error every frame shares.

    * ``grid`` 1: a per-frame change of the whole frame's latents is what a decoder shows as the frame's colour
      flickering; a white error puts only 1 / (h·w) of its MSE into the frame means, so the ε MSE cannot tell a
      frame-wide offset from much larger per-pixel noise, while this loss sees only the offsets.
    * ``grid`` None: with e_f the x̂0 error of frame f, mean (Δe)² = 2·mean e² − 2·mean e_f·e_{f+1} (edges aside):
      the term penalises the part of the error that is new in each frame (texture redrawn frame by frame, which
      optical flow reads as motion) and not the part the frames share. Like every quadratic loss of a linear map of
      the error, it is minimised by the posterior mean E[x0 | x_t] too, so it changes what an imperfect model gets
      right first, not what a perfect one predicts (with the plain MSE; a weighted MSE, e.g. ``motion_weights``, has
      another minimiser of its own). With ε-prediction at high noise the x̂0 error is the ε error times up to
      1 / √SNR_T, so this term can start well above the ε MSE (about 45× on the mini latents).

    Args:
        predicted_x0, x0: ``(B, C, F, h, w)`` (axis 2 is time), any float dtype.
        alphas_cumprod: ᾱ of the schedule (T,); t: the timesteps ``(B,)`` the prediction was made at.
        grid: cells per side, an int 1 ≤ grid ≤ min(h, w) (when it does not divide h or w the cells overlap, with
            ``adaptive_avg_pool2d``'s floor / ceil bounds), or None for every element.
    Raises:
        ValueError: tensors of other shapes than ``(B, C, F, h, w)`` with F ≥ 2 and the same shape, or ``grid``
            not None or an int in 1 … min(h, w).
    """
    if predicted_x0.shape != x0.shape or x0.dim() != 5 or x0.shape[2] < 2:
        raise ValueError(f"frame_difference_loss takes two (B, C, F, h, w) tensors of the same shape with F >= 2; "
                         f"got {tuple(predicted_x0.shape)} and {tuple(x0.shape)}")
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= min(x0.shape[3:])):
        raise ValueError(f"frame_difference_loss: grid={grid!r}, expected an int 1 ... {min(x0.shape[3:])} cells per "
                         f"side (the latents are {x0.shape[3]} x {x0.shape[4]}) or None for every element")
    error = predicted_x0.float() - x0.float()                        # (B, C, F, h, w)
    if grid == 1:
        error = error.mean(dim=(3, 4), keepdim=True)
    elif grid is not None:
        b, c, f, h, w = error.shape
        pooled = torch.nn.functional.adaptive_avg_pool2d(error.transpose(1, 2).reshape(b * f, c, h, w), grid)
        error = pooled.reshape(b, f, c, grid, grid).transpose(1, 2)
    per_sample = error.diff(dim=2).pow(2).mean(dim=(1, 2, 3, 4))
    weight = torch.clamp(snr(alphas_cumprod, t), min=1.0).to(per_sample.device)
    return (weight * per_sample).mean()


def motion_weights(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-element loss weights that favour where a clip moves: w = 1 + μ · (d / d_max)², float32 ``(B, 1, F, h, w)``.

    d at frame f and position (y, x) is the larger of the latent's changes into and out of that frame there, each
    the mean over channels of |x0_f − x0_{f−1}| (the first and last frame have one side), and d_max is the clip's
    largest d; a clip that does not change at all gets w = 1 everywhere. The idea is Latent Temporal Discrepancy
    (Wu et al., arXiv 2601.20504): weight the denoising loss by the clean latents' frame-to-frame change, so the few
    elements that move are not drowned by the static ones in the mean. On the ``synthetic_hits`` mini latents
    (4 × 8 × 8, 8 frames) the 3 % of elements with d > d_max / 2 are the falling objects; μ = 30 gives them 27 % of
    the loss weight instead of 3 % (mean weight 1.9). The square keeps the static floor and wall near weight 1.

    Args:
        x0: clean latents ``(B, C, F, h, w)`` (axis 2 is time, F ≥ 2), any float dtype.
        strength: μ ≥ 0 (0: all ones).
    Raises:
        ValueError: another shape, F < 2, or μ < 0.
    """
    if x0.dim() != 5 or x0.shape[2] < 2:
        raise ValueError(f"motion_weights takes (B, C, F, h, w) latents with F >= 2; got {tuple(x0.shape)}")
    if not float(strength) >= 0:
        raise ValueError(f"motion_weights: strength={strength}, expected >= 0")
    step = (x0.float().diff(dim=2)).abs().mean(dim=1, keepdim=True)             # (B, 1, F-1, h, w)
    change = torch.zeros(x0.shape[0], 1, *x0.shape[2:], dtype=torch.float32, device=x0.device)
    change[:, :, 1:] = step
    change[:, :, :-1] = torch.maximum(change[:, :, :-1], step)
    peak = change.amax(dim=(2, 3, 4), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # still clip: 0 / tiny
    return 1.0 + float(strength) * (change / peak).pow(2)


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None,
                   scaling_factor: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """A sample of a VAE's diagonal Gaussian posterior, scaled: z = (mean + std · ε) · ``scaling_factor``.

    ε is drawn exactly as diffusers' ``DiagonalGaussianDistribution.sample`` draws it (diffusers 0.42,
    ``models/autoencoders/vae.py``: ``randn_tensor(mean.shape, generator, device=mean.device, dtype=mean.dtype)``),
    once per group of ``chunk`` rows along axis 0, in order (``None``: one draw for all rows): the encode
    functions call the VAE once per chunk (:func:`avgen.backbones.animatediff.encode_video`: 16 frames), so a
    posterior read from the feature cache gives the latents encoding would, for the same ``generator``, bit for
    bit. (One draw for all rows is not the same stream in general: torch's CPU sampler transforms blocks of 16
    values, so a chunk whose size is not a multiple of 16 shifts the pairing, and CUDA's advances its offset per
    call.)

    Args:
        mean, std: (N, ...) the posterior's mean and standard deviation (exp(logvar / 2), logvar clamped to
            [-30, 20] by diffusers), unscaled; same shape, device and dtype. ε has their dtype.
        generator: the random stream (``None``: torch's global stream of ``mean``'s device). A CPU generator
            with CUDA tensors draws on the CPU and moves ε (as ``randn_tensor``).
        scaling_factor: the VAE's ``config.scaling_factor``.
        chunk: rows per draw (≥ 1), or ``None``.

    Returns:
        (N, ...) in ``mean``'s dtype, on its device.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if mean.shape != std.shape:
        raise ValueError(f"sample_latents: mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape")
    if chunk is not None and chunk < 1:
        raise ValueError(f"sample_latents: chunk={chunk}, expected at least 1 row per draw or None")
    rows = [mean] if chunk is None else list(mean.split(chunk))
    noise = torch.cat([randn_tensor(part.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                       for part in rows]) if rows else torch.empty_like(mean)
    return (mean + std * noise) * scaling_factor
