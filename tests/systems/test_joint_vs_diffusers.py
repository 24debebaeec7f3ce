"""The joint sampler against diffusers' own pipelines.

With γ = 1 and zero-initialised cross-modal blocks the joint model is AnimateDiff and AudioLDM side by
side, so from the same initial latents, with the same steps, guidance scales and negative prompt, its
final latents must be those of ``AnimateDiffPipeline`` and ``AudioLDMPipeline`` built from the same
tiny components, on a timestep grid where the two DDIM steps agree: the joint sampler steps from each
grid point to the next one, diffusers' ``DDIMScheduler.step`` to t − ⌊T/N⌋ (see
:meth:`avgen.systems.joint.JointAudioVideo.generate`). They agree on every ``leading`` grid, on a
``trailing`` grid only when N divides T, and on a ``linspace`` grid (AnimateDiff's default) only for
N = 1 or N = T.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler
from diffusers.pipelines.deprecated.audioldm import AudioLDMPipeline
from hydra.utils import instantiate

import avgen.systems.joint as joint
from avgen.backbones.audioldm import vae_downsampling
from avgen.diffusion import ddim_step, final_alpha_cumprod, seeded_noise
from tests.conftest import compose

PROMPTS = ["a red ball drops onto wood", "a cube hits glass"]
NEGATIVE = "static noise"
STEPS, GUIDANCE_VIDEO, GUIDANCE_AUDIO, SEED = 3, 7.5, 2.5, 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    cfg = compose(["experiment=joint_cmcpe", "scale=tiny", "+model.video.scheduler.timestep_spacing=leading"],
                  tmp_path_factory.mktemp("joint_vs_diffusers"))
    return instantiate(cfg.model).eval()


def joint_latents(system, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint sampler's final video (B, C, F, h, w) and audio (B, C, T, M) latents, taken where
    ``generate`` hands them to the decoders (which are not run)."""
    final = {}
    monkeypatch.setattr(joint, "decode_video", lambda backbone, latents, *a, **k: final.setdefault("video", latents))
    monkeypatch.setattr(joint, "decode_audio", lambda backbone, latents, *a, **k: final.setdefault("audio", latents))
    system.generate(PROMPTS, steps=STEPS, gamma=1.0, guidance_video=GUIDANCE_VIDEO, guidance_audio=GUIDANCE_AUDIO,
                    negative_prompt=NEGATIVE, seed=SEED)
    return final["video"], final["audio"]


def diffusers_latents(system, z_v: torch.Tensor, z_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The final latents of ``AnimateDiffPipeline`` and ``AudioLDMPipeline`` from initial latents ``z_v``, ``z_a``."""
    v, a = system.video, system.audio
    grid = v.scheduler.config  # the joint sampler's global grid is the video scheduler's, for both modalities
    video_pipe = AnimateDiffPipeline(vae=v.vae, text_encoder=v.text_encoder, tokenizer=v.tokenizer, unet=v.unet,
                                     motion_adapter=None, scheduler=copy.deepcopy(v.scheduler))
    video_pipe.set_progress_bar_config(disable=True)
    video = video_pipe(PROMPTS, num_frames=z_v.shape[2], height=system.clip.height, width=system.clip.width,
                       num_inference_steps=STEPS, guidance_scale=GUIDANCE_VIDEO,
                       negative_prompt=[NEGATIVE] * len(PROMPTS),
                       latents=z_v.clone(), output_type="latent").frames
    audio_scheduler = DDIMScheduler.from_config(a.scheduler.config, timestep_spacing=grid.timestep_spacing,
                                                steps_offset=grid.steps_offset)
    audio_pipe = AudioLDMPipeline(vae=a.vae, text_encoder=a.text_encoder, tokenizer=a.tokenizer, unet=a.unet,
                                  scheduler=audio_scheduler, vocoder=a.vocoder)
    audio_pipe.set_progress_bar_config(disable=True)
    steps = []
    # avgen pads the mel to a multiple of 32 frames, the pipeline to a multiple of the VAE's 4: give it the
    # padded length (only its waveform cut depends on it once latents are given)
    seconds = z_a.shape[2] * vae_downsampling(a.vae) * a.mel.hop_length / a.mel.sample_rate
    audio_pipe(PROMPTS, audio_length_in_s=seconds, num_inference_steps=STEPS, guidance_scale=GUIDANCE_AUDIO,
               negative_prompt=[NEGATIVE] * len(PROMPTS), latents=z_a.clone(),
               callback=lambda i, t, latents: steps.append(latents.clone()), callback_steps=1)
    assert len(steps) == STEPS
    return video, steps[-1]


def test_joint_sampler_reproduces_the_diffusers_pipelines(system, monkeypatch):
    """γ = 1, zero cross-modal blocks, leading grid: the joint latents equal the pipelines' to float
    tolerance (on CPU they are bit-identical: the same ops on the same batch layout). A grid on which the
    steps differ misses by far more: trailing (3 steps) by 0.25 of ~100 in video, linspace by ~60."""
    blocks = [*system.denoiser.video_blocks.values(), *system.denoiser.audio_blocks.values()]
    assert all(not p.any() for block in blocks for p in block.proj_out.parameters())
    shape_v, shape_a = system.latent_shapes(len(PROMPTS))
    z_v, z_a = seeded_noise([shape_v[1:], shape_a[1:]], len(PROMPTS), SEED)  # the sampler's own starting noise

    video, audio = joint_latents(system, monkeypatch)
    ref_video, ref_audio = diffusers_latents(system, z_v, z_a)
    torch.testing.assert_close(video, ref_video, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(audio, ref_audio, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing,steps_offset,agreeing", [
    ("leading", 1, set(range(1, 51))),
    ("trailing", 0, {1, 2, 4, 5, 8, 10, 20, 25, 40, 50}),
    ("linspace", 1, {1}),
])
def test_ddim_step_agrees_with_diffusers_exactly_on_these_grids(spacing, steps_offset, agreeing):
    """The joint sampler's step to the next grid point (``ddim_step``, after the last one to the final
    ᾱ) against ``DDIMScheduler.step`` at every grid point, for 1–50 steps: equal exactly for the
    step counts in ``agreeing``, different at some grid point otherwise."""
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=steps_offset, timestep_spacing=spacing)
    final = final_alpha_cumprod(scheduler)
    x, eps = torch.randn(2, 4, generator=torch.Generator().manual_seed(0)).unbind()
    agree = set()
    for steps in range(1, 51):
        scheduler.set_timesteps(steps)
        grid = [int(t) for t in scheduler.timesteps]
        if all(torch.equal(ddim_step("epsilon", x, eps, scheduler.alphas_cumprod, t, t_prev, final)[0],
                           scheduler.step(eps, t, x).prev_sample)
               for t, t_prev in zip(grid, grid[1:] + [-1])):
            agree.add(steps)
    assert agree == agreeing
