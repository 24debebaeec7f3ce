"""Runs you can trust: ``validate`` / ``test`` / ``sample`` run a checkpoint with its own model, scale
and data geometry (:func:`avgen.commands.checkpoint_config`); the command line's ``model.sampling.*``
apply, and every ``model.sampling`` key of each system changes what it should; overrides that cannot
apply to a trained checkpoint are refused with the key and the reason."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

import avgen.systems.joint as joint_module
import avgen.systems.tempotokens as tempotokens_module
from avgen.checkpoint import read_checkpoint
from avgen.commands import build_model, checkpoint_config, command_line_overrides, load_system, run_command
from avgen.diffusion import classifier_free_guidance, ddim_step
from avgen.errors import ConfigError
from avgen.samples import SampleReport
from avgen.systems.joint import JointAudioVideo
from avgen.systems.tempotokens import TempoTokens
from tests.conftest import TINY_CLIP, compose, run_cli

EXPERIMENTS = {JointAudioVideo: "joint_cmcpe", TempoTokens: "tempotokens_vggsound"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoint_config")


def save_tiny(root, tiny_shards, cls):
    """A tiny checkpoint (γ = 1.5 for the joint system) written by the hook ``fit`` uses, without
    training, its data the session's tiny shards; returns (path, the system)."""
    cfg = compose([f"experiment={EXPERIMENTS[cls]}", "scale=tiny", f"data.root={tiny_shards}"], root)
    model = build_model(cfg)
    state: dict = {}
    model.on_save_checkpoint(state)
    path = root / f"{cls.__name__}.ckpt"
    torch.save(state, path)
    return path, model.eval()


@pytest.fixture(scope="module")
def joint(root, tiny_shards):
    return save_tiny(root, tiny_shards, JointAudioVideo)


@pytest.fixture(scope="module")
def tempotokens(root, tiny_shards):
    return save_tiny(root, tiny_shards, TempoTokens)


def command_config(ckpt, tmp_path, *overrides):
    """The config ``python -m avgen <command> ckpt_path=<ckpt> <overrides>`` runs the checkpoint with."""
    run_cfg = compose([f"ckpt_path={ckpt}", *overrides], tmp_path)
    return run_cfg, checkpoint_config(read_checkpoint(ckpt)["avgen"]["config"], run_cfg, command_line_overrides())


# ------------------------------------------------------------------------------ scale and geometry
@pytest.mark.parametrize("command", ["validate", "test", "sample"])
def test_the_checkpoint_gives_scale_and_data_geometry(joint, tiny_shards, tmp_path, command):
    run_cfg, cfg = command_config(joint[0], tmp_path, f"command={command}")
    assert run_cfg.scale_name == "paper" and run_cfg.data.clip.height == 256  # what the command alone composes
    assert cfg.scale_name == "tiny" and cfg.model.scale == "tiny"
    assert dict(cfg.data.clip) == TINY_CLIP and dict(cfg.model.clip) == TINY_CLIP
    assert cfg.data.root == str(tiny_shards) and cfg.data.batch_size == 2  # scale=tiny's loader settings
    assert cfg.trainer.max_steps == run_cfg.trainer.max_steps  # the trainer is the command's
    # overrides still win; a clip override moves the model's clip with the data's
    _, cfg = command_config(joint[0], tmp_path, f"command={command}", "data.batch_size=3", "data.clip.seconds=0.5",
                            "scale=tiny")
    assert cfg.data.batch_size == 3 and cfg.data.clip.seconds == 0.5 and cfg.model.clip.seconds == 0.5


def test_another_scale_or_system_is_refused(joint, tmp_path):
    with pytest.raises(ConfigError, match=r"scale=paper: the checkpoint was trained at scale=tiny.*pass scale=tiny"):
        command_config(joint[0], tmp_path, "command=validate", "scale=paper")
    with pytest.raises(ConfigError, match=r"experiment=tempotokens_vggsound: .*holds a avgen\.systems\.joint"):
        command_config(joint[0], tmp_path, "command=sample", "experiment=tempotokens_vggsound")


# ------------------------------------------------------------------------------ refused overrides
def test_overrides_that_would_change_the_trained_model_are_refused(joint, tmp_path):
    ckpt = joint[0]
    with pytest.raises(ConfigError, match=r"model\.video\.base=other: .*trainable shapes, backbone ids.*fit"):
        command_config(ckpt, tmp_path, "command=sample", "experiment=joint_cmcpe", "model.video.base=other")
    with pytest.raises(ConfigError, match=r"model\.audio\.scheduler\.timestep_spacing=trailing: has no effect: "
                                          r"the joint sampler steps on one global grid, the video scheduler's"):
        command_config(ckpt, tmp_path, "command=sample", "+model.audio.scheduler.timestep_spacing=trailing")
    with pytest.raises(ConfigError, match=r"model\.audio\.scheduler\.beta_schedule=linear: sets the audio noise "
                                          r"schedule the checkpoint's weights were trained with"):
        command_config(ckpt, tmp_path, "command=validate", "+model.audio.scheduler.beta_schedule=linear")
    with pytest.raises(ConfigError, match=r"model\.sampling\.guidance=3: JointAudioVideo has no sampling setting "
                                          r"'guidance'; expected one of: steps, batch_size, gamma"):
        command_config(ckpt, tmp_path, "command=sample", "+model.sampling.guidance=3")
    # the video scheduler's grid settings act (they make the global grid); equal values are no change
    _, cfg = command_config(ckpt, tmp_path, "command=sample", "experiment=joint_cmcpe",
                            "+model.video.scheduler.timestep_spacing=trailing", "model.cross_modal=cmcpe")
    assert cfg.model.video.scheduler.timestep_spacing == "trailing"
    # and fit refuses the audio grid settings too (checked before any weights are read)
    with pytest.raises(Exception) as info:
        build_model(compose(["experiment=joint_cmcpe", "scale=tiny", "+model.audio.scheduler.steps_offset=0"],
                            tmp_path))
    assert "model.audio.scheduler.steps_offset has no effect" in str(info.value)


# ------------------------------------------------------------------------------ model.sampling overrides
@pytest.mark.parametrize("cls", [JointAudioVideo, TempoTokens])
def test_every_sampling_override_reaches_the_system(request, tmp_path, cls):
    ckpt, _ = request.getfixturevalue("joint" if cls is JointAudioVideo else "tempotokens")
    values = {"steps": 7, "gamma": 2.0, "guidance_video": 3.0, "guidance_audio": 1.5, "guidance": 9.0,
              "negative_prompt": "bad quality", "batch_size": 3, "eta": 0.5, "cross_modal_guidance": 2.0}
    overrides = [f"+model.sampling.{k}={values[k]}" for k in cls.sampling_settings.names()]
    system, cfg = load_system(ckpt, compose(["command=sample", f"ckpt_path={ckpt}", *overrides], tmp_path),
                              command_line_overrides())
    assert system.sampling.to_dict() == {k: values[k] for k in cls.sampling_settings.names()}
    assert system.run_config["model"]["sampling"] == system.sampling.to_dict()


def test_sample_applies_model_sampling_gamma(joint, tmp_path, monkeypatch):
    """A γ = 1.5 checkpoint sampled with model.sampling.gamma=2.0 steps through Eq. 9's γ = 2 pairs."""
    pairs = record_joint_timesteps(monkeypatch)
    run_command(compose(["command=sample", f"ckpt_path={joint[0]}", "+model.sampling.gamma=2.0", "sample.n=1",
                         "sample.steps=3", "sample.prompt=a ball hits wood"], tmp_path))
    assert pairs == GAMMA_PAIRS[2.0]


# ------------------------------------------------------------------------------ each key's effect
# Eq. 9 on the 3-step linspace grid [999, 500, 0] of T = T_v = T_a = 1000:
# m = round(1000 (t/1000)^√γ), n = round(1000 (t/1000)^(1/√γ)), clamped to 999
GAMMA_PAIRS = {1.5: [(999, 999), (428, 568), (0, 0)], 2.0: [(999, 999), (375, 613), (0, 0)],
               3.0: [(998, 999), (301, 670), (0, 0)]}


def eq9(t, gamma):
    return tuple(min(999, round(1000 * (t / 1000) ** (math.sqrt(gamma) ** sign))) for sign in (1, -1))


def record_joint_timesteps(monkeypatch) -> list[tuple[int, int]]:
    """(video, audio) local timesteps of each sampler step, from the DDIM steps the joint sampler takes."""
    pairs, steps = [], []

    def step(prediction, x, out, alphas, t, t_prev, final, *rest):
        steps.append(t)
        if len(steps) % 2 == 0:
            pairs.append((steps[-2], steps[-1]))
        return ddim_step(prediction, x, out, alphas, t, t_prev, final, *rest)

    monkeypatch.setattr(joint_module, "ddim_step", step)
    return pairs


class Recorder:
    """Wraps a module's forward and a decoder: the calls, their inputs and outputs, the final latent."""

    def __init__(self, monkeypatch, module, decoder_module, *decoder_names):
        self.calls, self.latents = [], []
        forward = module.forward

        def wrapped(*args, **kwargs):
            out = forward(*args, **kwargs)
            self.calls.append((args, out))
            return out

        def recording(decode):
            def decoder(backbone, latent, *rest):
                self.latents.append(latent.clone())
                return decode(backbone, latent, *rest)
            return decoder

        monkeypatch.setattr(module, "forward", wrapped)
        for name in decoder_names:
            monkeypatch.setattr(decoder_module, name, recording(getattr(decoder_module, name)))

    def reset(self):
        self.calls.clear()
        self.latents.clear()


def with_sampling(system, **values):
    """A copy of ``system.sampling`` with ``values`` (what model.sampling.<k>=v gives)."""
    return {**system.sampling.to_dict(), **values}


def joint_run(system, rec, sampling, **kwargs):
    saved = system.sampling
    system.sampling = type(saved).from_values(sampling, key="model.sampling")
    try:
        rec.reset()
        system.generate(["a red ball drops onto wood"], seed=0, **kwargs)
        return list(rec.calls), list(rec.latents)
    finally:
        system.sampling = saved


def check_joint_guidance(system, rec, key):
    """guidance_<m> moves only modality m, to the DDIM step of uncond + g (cond − uncond).

    Two steps: the linspace grid is [999, 0], and the step from t = 0 to ᾱ_0 leaves a latent as it is
    (one step would be that step alone: the grid of 1 is [0])."""
    index = 0 if key == "guidance_video" else 1
    base = with_sampling(system, steps=2)
    _, default_latents = joint_run(system, rec, base)
    calls, latents = joint_run(system, rec, {**base, key: 4.0})
    (args, out), modality = calls[0], ("video", "audio")[index]
    x, t = args[index][:1], int(args[2 + index][0])
    alphas = system.video_alphas if index == 0 else system.audio_alphas
    expected = ddim_step(system._prediction(modality), x, classifier_free_guidance(*out[index].chunk(2), 4.0),
                         alphas, t, 0, 1.0)[0]
    assert len(calls) == 2 and t == 999
    assert torch.allclose(latents[index], expected, atol=1e-4)
    assert not torch.allclose(latents[index], default_latents[index], atol=1e-4)
    assert torch.equal(latents[1 - index], default_latents[1 - index])


def check_joint_key(system, key, monkeypatch, tmp_path):
    rec = Recorder(monkeypatch, system.denoiser, joint_module, "decode_video", "decode_audio")
    base = with_sampling(system, steps=2)
    if key == "steps":
        assert len(joint_run(system, rec, base)[0]) == 2
        assert len(joint_run(system, rec, {**base, "steps": 1})[0]) == 1
    elif key == "gamma":
        pairs = record_joint_timesteps(monkeypatch)
        joint_run(system, rec, {**base, "steps": 3, "gamma": 2.0})
        assert pairs == GAMMA_PAIRS[2.0] == [eq9(t, 2.0) for t in (999, 500, 0)]
        assert GAMMA_PAIRS[2.0] != GAMMA_PAIRS[system.sampling.gamma]  # the default, 1.5
        pairs.clear()
        joint_run(system, rec, {**base, "steps": 3, "gamma": 2.0}, gamma=3.0)  # sample.gamma beats model.sampling
        assert pairs == GAMMA_PAIRS[3.0] == [eq9(t, 3.0) for t in (999, 500, 0)]
    elif key in ("guidance_video", "guidance_audio"):
        check_joint_guidance(system, rec, key)
    elif key == "negative_prompt":
        seen = []
        for name in ("encode_video_prompts", "encode_audio_prompts"):
            encode = getattr(joint_module, name)
            monkeypatch.setattr(joint_module, name, lambda b, p, encode=encode: seen.append(p) or encode(b, p))
        _, default_latents = joint_run(system, rec, base)
        _, latents = joint_run(system, rec, {**base, "negative_prompt": "bad quality"})
        assert seen[-2:] == [["bad quality"], ["bad quality"]] and seen[:2] == [["a red ball drops onto wood"]] * 2
        assert not torch.allclose(latents[0], default_latents[0], atol=1e-4)
    elif key == "batch_size":
        check_batch_size(system, monkeypatch, joint_module, tmp_path, prompt=["a", "b"], steps=2)
    elif key == "eta":
        check_joint_eta(system, rec, base)
    elif key == "cross_modal_guidance":  # its values: tests/systems/test_joint.py
        default_calls, _ = joint_run(system, rec, base)
        calls, _ = joint_run(system, rec, {**base, "cross_modal_guidance": 3.0})
        rows = [args[1].shape[0] for args, _ in calls]  # the audio rows of each denoiser call
        assert rows == [2 * args[1].shape[0] for args, _ in default_calls] == [4, 4]  # + the still video's rows
    else:
        pytest.fail(f"model.sampling.{key} of JointAudioVideo has no check of its effect")


def check_joint_eta(system, rec, base):
    """eta = 1 takes DDIM's stochastic step (Eq. 16) with each modality's z drawn from the sample's generator
    (seed 0) past its starting noise, video then audio; two steps: [999, 0], the second σ = 0 step to ᾱ_0 leaves
    the latent as it is (see :func:`check_joint_guidance`)."""
    _, default_latents = joint_run(system, rec, base)
    calls, latents = joint_run(system, rec, {**base, "eta": 1.0})
    args, out = calls[0]
    g = torch.Generator().manual_seed(0)
    shapes = [s[1:] for s in system.latent_shapes(1)]
    for shape in shapes:
        torch.randn(shape, generator=g)  # the starting noise
    z = [torch.randn(shape, generator=g)[None] for shape in shapes]
    for index, modality in enumerate(("video", "audio")):
        x, t = args[index][:1], int(args[2 + index][0])
        alphas = system.video_alphas if index == 0 else system.audio_alphas
        guided = classifier_free_guidance(*out[index].chunk(2), base[f"guidance_{modality}"])
        expected = ddim_step(system._prediction(modality), x, guided, alphas, t, 0, 1.0, 1.0, z[index])[0]
        assert t == 999 and torch.allclose(latents[index], expected, atol=1e-4), modality
        assert not torch.allclose(latents[index], default_latents[index], atol=1e-4), modality


def check_batch_size(system, monkeypatch, module, tmp_path, **kwargs):
    """model.sampling.batch_size sets the batches sample_to_files generates, never the results."""
    sizes, outputs = [], []
    generate = system.generate

    def recorded(first, *args, **kw):
        out = generate(first, *args, **kw)
        sizes.append(len(first))
        outputs.append(out[0] if isinstance(out, tuple) else out)
        return out

    monkeypatch.setattr(system, "generate", recorded)
    monkeypatch.setattr(module, "write_sounding_videos", lambda *a, **k: SampleReport())
    saved = system.sampling
    try:
        results = []
        for batch in (1, 3):
            system.sampling = dataclasses.replace(saved, batch_size=batch)
            sizes.clear()
            outputs.clear()
            system.sample_to_files(tmp_path / f"b{batch}", n=2, device="cpu", **kwargs)
            results.append((list(sizes), torch.cat(outputs)))
    finally:
        system.sampling = saved
    assert results[0][0] == [1, 1] and results[1][0] == [2]
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


@pytest.mark.parametrize("key", list(JointAudioVideo.sampling_settings.names()))
def test_each_joint_sampling_key_changes_what_it_should(joint, key, monkeypatch, tmp_path):
    system = joint[1]
    assert key in system.sampling.names()
    check_joint_key(system, key, monkeypatch, tmp_path)


def tempotokens_run(system, rec, sampling, audio):
    saved = system.sampling
    system.sampling = type(saved).from_values(sampling, key="model.sampling")
    try:
        rec.reset()
        system.generate(audio, seed=0)
        return list(rec.calls), list(rec.latents)
    finally:
        system.sampling = saved


@pytest.mark.parametrize("key", list(TempoTokens.sampling_settings.names()))
def test_each_tempotokens_sampling_key_changes_what_it_should(tempotokens, key, monkeypatch, tmp_path):
    system = tempotokens[1]
    assert key in system.sampling.names()
    rec = Recorder(monkeypatch, system.unet, tempotokens_module, "decode_video")
    audio = (torch.rand(1, 16000, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.3
    base = with_sampling(system, steps=2)
    if key == "steps":
        assert len(tempotokens_run(system, rec, base, audio)[0]) == 2
        assert len(tempotokens_run(system, rec, {**base, "steps": 1}, audio)[0]) == 1
    elif key == "guidance":
        [(_, default_out)], default_latents = tempotokens_run(system, rec, {**base, "steps": 1}, audio)
        [(args, out)], latents = tempotokens_run(system, rec, {**base, "steps": 1, "guidance": 4.0}, audio)
        scheduler = copy.deepcopy(system.t2v.scheduler)
        scheduler.set_timesteps(1)
        [t] = scheduler.timesteps
        x = args[0][:1]  # the model input of the first (unconditional) half: scale_model_input is the identity
        expected = scheduler.step(classifier_free_guidance(*out.chunk(2), 4.0), t, x).prev_sample
        assert torch.allclose(latents[0], expected, atol=1e-5)
        assert not torch.allclose(latents[0], default_latents[0], atol=1e-4)
        [(args, _)], _ = tempotokens_run(system, rec, {**base, "steps": 1, "guidance": 1.0}, audio)
        assert args[0].shape[0] == 1  # no guidance, no unconditional pass
    elif key == "negative_prompt":
        seen = []
        forward = system.text_encoder.forward
        monkeypatch.setattr(system.text_encoder, "forward",
                            lambda *a, **k: seen.append(a[0] if a else k.get("input_ids")) or forward(*a, **k))
        _, default_latents = tempotokens_run(system, rec, {**base, "steps": 1}, audio)
        seen.clear()
        _, latents = tempotokens_run(system, rec, {**base, "steps": 1, "negative_prompt": "bad quality"}, audio)
        texts = [system.t2v.tokenizer.decode(ids[0], skip_special_tokens=True) for ids in seen if ids is not None]
        assert "bad quality" in texts
        assert not torch.allclose(latents[0], default_latents[0], atol=1e-4)
    elif key == "batch_size":
        from avgen.media import write_wav

        wave = (np.random.default_rng(0).random(16000, dtype=np.float32) * 2 - 1) * 0.3
        for name in ("a", "b"):
            write_wav(tmp_path / "in" / f"{name}.wav", wave * (1 + ord(name) % 3), 16000)
        check_batch_size(system, monkeypatch, tempotokens_module, tmp_path, audio=str(tmp_path / "in"), steps=1)
    else:
        pytest.fail(f"model.sampling.{key} of TempoTokens has no check of its effect")


# ------------------------------------------------------------------------------ the command line
@pytest.mark.slow
def test_cli_validate_of_a_tiny_checkpoint_runs_at_its_own_scale(joint, tmp_path):
    """The README's ``validate ckpt_path=<tiny checkpoint>`` line, without scale=tiny."""
    result = run_cli("validate", f"ckpt_path={joint[0]}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                     env={"OMP_NUM_THREADS": "1"}, timeout=280)  # about 25 s of CPU; more wall on a busy machine
    from avgen.media import decode_video

    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/loss" in result.stdout
    # the sounding videos validation writes have the checkpoint's geometry: 1 s at 8 fps, 32×32
    videos = sorted((tmp_path / "run" / "val_samples").glob("*/*.mp4"))
    assert videos and decode_video(str(videos[0]))[0].shape == (8, 32, 32, 3)
