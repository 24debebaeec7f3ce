"""The TempoTokens system at scale=tiny: trainable set, gradients, per-frame tokens from the audio
of each frame's time span, prompt settings, deterministic sampling and the sample command."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from avgen.commands import run_command
from avgen.errors import ConfigError
from tests.conftest import compose


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tempotokens")


def build(tiny_root, *overrides: str):
    cfg = compose(["experiment=tempotokens_vggsound", "scale=tiny", *overrides], tiny_root)
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def system(tiny_root):
    return build(tiny_root)


def batch(frames: int = 8, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(b, frames, 3, 32, 32, generator=g) * 2 - 1,
            "audio": (torch.rand(b, 16000, generator=g) * 2 - 1) * 0.3,
            "caption": ["a dog barks", "rain falls"][:b], "key": ["a", "b"][:b]}


def test_only_mapper_and_pooling_train(system):
    names = {n for n, _ in system.trainable_parameters()}
    expected = {f"mapper.{n}" for n, _ in system.mapper.named_parameters()}
    expected |= {f"pooling.{n}" for n, _ in system.pooling.named_parameters()}
    assert names == expected
    for module in (system.encoder, system.unet, system.vae, system.text_encoder):
        assert not any(p.requires_grad for p in module.parameters()) and not module.training


def test_gradients_reach_only_trainable_parameters(system):
    system.train()
    system.zero_grad(set_to_none=True)
    losses = system.diffusion_loss(batch(), generator=torch.Generator().manual_seed(1))
    losses["loss"].backward()
    assert torch.isclose(losses["loss"], losses["mse"] + 0.01 * losses["l1"])  # Eq. 8, λ = 0.01
    for name, p in system.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert all(p.grad.abs().sum() > 0 for _, p in system.trainable_parameters())
    assert not system.unet.training and not system.encoder.training


def test_each_frame_token_comes_from_its_own_time_span(system, monkeypatch):
    """Frame i's temporal token is built from the encoder's time rows that overlap the frame's time
    span only (never from frequency patches of another time step): with 6 time rows over 8 frames,
    changing rows 3–5 (the second half of the clip) leaves frames 0–3 unchanged."""
    from avgen.encoders.beats import BEATsOutput

    g = torch.Generator().manual_seed(0)
    rows = torch.randn(1, 6, 8, 2, 32, generator=g)  # (B, time rows, freq patches, layers, d)
    changed = rows.clone()
    changed[:, 3:] += 1.0

    def fake(hidden):
        return lambda audio, layers=None: BEATsOutput(hidden=hidden.flatten(1, 2), layers=(1, 2), time_patches=6,
                                                      freq_patches=8, patch_seconds=0.16)

    system.eval()
    with torch.no_grad():
        monkeypatch.setattr(system.encoder, "forward", fake(rows))
        a = system.audio_tokens(torch.zeros(1, 16000), 8)["temp"][0]
        monkeypatch.setattr(system.encoder, "forward", fake(changed))
        b = system.audio_tokens(torch.zeros(1, 16000), 8)["temp"][0]
    diff = (a - b).abs().amax(dim=-1)
    assert torch.all(diff[:4] < 1e-6) and torch.all(diff[4:] > 1e-4), diff


def test_prompt_follows_the_window_setting(tiny_root):
    assert build(tiny_root).prompt.names == ["<temp>", "<local1>", "<local2>", "<local3>", "<local4>", "<class>"]
    assert build(tiny_root, "model.windows.resolutions=3").prompt.names == ["<temp>", "<local1>", "<local2>", "<class>"]
    assert build(tiny_root, "model.windows.resolutions=0").prompt.names == ["<class>"]
    course = build(tiny_root, "model.windows.sizes=[1,2,4,8]", "model.mapper.self_attention=true")
    assert course.window_sizes == [2, 4, 8] and course.mapper.attention is not None
    text_only = build(tiny_root, "model.prompt='{caption}'")
    assert text_only.prompt.names == []
    with pytest.raises(Exception, match="local3") as err:  # hydra wraps the ConfigError
        build(tiny_root, "model.windows.resolutions=2", "model.prompt='<temp> <local3>'")
    assert isinstance(err.value.__cause__, ConfigError)


def test_generation_is_seeded_and_covers_the_audio(system):
    system.eval()
    audio = batch()["audio"]
    v1 = system.generate(audio, ["", ""], steps=2, seed=3)
    v2 = system.generate(audio, ["", ""], steps=2, seed=3)
    assert v1.shape == (2, 8, 3, 32, 32) and torch.equal(v1, v2)
    assert not torch.allclose(system.generate(audio, ["", ""], steps=2, seed=4), v1)
    longer = torch.cat([audio, audio[:, :8000]], dim=1)  # 1.5 s of audio → 12 frames at 8 fps
    assert system.generate(longer[:1], steps=2).shape[1] == 12


def test_sample_command_muxes_the_input_audio(tiny_root, tmp_path):
    import numpy as np

    from avgen.media import decode_audio, decode_video, write_wav

    fit = compose(["command=fit", "experiment=tempotokens_vggsound", "scale=tiny", "trainer.max_steps=1",
                   "trainer.limit_val_batches=0", f"paths.data_dir={tiny_root}/data"], tmp_path,
                  run_dir=tmp_path / "fit")
    run_command(fit)
    t = np.arange(24000) / 16000
    write_wav(tmp_path / "input" / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000)
    cfg = compose(["command=sample", f"ckpt_path={tmp_path / 'fit' / 'checkpoints' / 'last.ckpt'}",
                   f"sample.audio={tmp_path / 'input'}", "sample.steps=2"], tmp_path, run_dir=tmp_path / "sample")
    [path] = run_command(cfg)
    frames, fps = decode_video(str(path))
    audio = decode_audio(str(path), 16000)
    assert frames.shape[0] == 12 and fps == 8  # 1.5 s at 8 fps
    assert abs(len(audio) - 24000) < 1600
    assert np.corrcoef(audio[:20000], 0.3 * np.sin(2 * np.pi * 440 * t[:20000]))[0, 1] > 0.9
    # without sample.audio: the first clips of the data's test split, with their captions as prompts
    cfg = compose(["command=sample", f"ckpt_path={tmp_path / 'fit' / 'checkpoints' / 'last.ckpt'}", "sample.n=2",
                   "sample.steps=2"], tmp_path, run_dir=tmp_path / "from_data")
    paths = run_command(cfg)
    assert len(paths) == 2 and all(decode_video(str(p))[0].shape[0] == 8 for p in paths)
    assert all(p.with_suffix(".txt").read_text() for p in paths)
    import json

    from avgen.samples import sample_source, split_samples

    keys = [key for key, _ in split_samples(str(tiny_root / "data" / "synthetic_hits" / "32x32_8fps_1.0s_16000hz"), 2)]
    assert [sample_source(p) for p in paths] == keys  # the test clips whose audio the videos were made from
    assert json.loads(path.with_suffix(".json").read_text())["source"] == str((tmp_path / "input" / "tone.wav"))
