"""CAVP's audio branch (Diff-Foley): the front end against librosa, the time grid, the checkpoint layout and
loader, and TempoTokens built on it at scale=tiny."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from avgen.encoders.cavp import (
    TINY_CAVP,
    CAVPAudio,
    CAVPCheckpointError,
    CAVPMelSpectrogram,
    CAVPWeightsMissing,
    load_cavp,
    save_tiny_format,
)
from tests.conftest import compose


def noise(seconds: float, b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, int(seconds * 16000), generator=g) * 2 - 1) * 0.3


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = CAVPAudio(**TINY_CAVP).eval()
    # non-trivial BatchNorm statistics, so that a wrong normalisation axis shows up in a round trip
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def test_front_end_matches_diff_foley_librosa_pipeline():
    """Diff-Foley's wav2spec.py with librosa 0.8 (reflect-padded centred STFT, which librosa >= 0.10 must be told)."""
    wave = noise(1.0, b=1)[0].numpy().astype(np.float64)
    mel_basis = librosa.filters.mel(sr=16000, n_fft=1024, fmin=125, fmax=7600, n_mels=128)
    magnitude = np.abs(librosa.stft(wave, n_fft=1024, hop_length=256, pad_mode="reflect"))
    reference = np.clip((20 * np.log10(np.maximum(1e-5, mel_basis @ magnitude)) - 20 + 100) / 100, 0, 1).T
    spec = CAVPMelSpectrogram()(torch.from_numpy(wave)[None])
    assert spec.shape == (1, 1, 1 + 16000 // 256, 128)
    np.testing.assert_allclose(spec[0, 0].numpy(), reference, atol=1e-4)


def test_four_seconds_give_fifteen_unit_steps(tiny):
    out = tiny(noise(4.0))
    frames = 1 + 64000 // 256
    assert out.hidden.shape == (2, frames // 16, 1, TINY_CAVP["embed_dim"]) and out.time_patches == 15
    assert (out.freq_patches, out.layers, out.patch_seconds) == (1, (1,), 0.256)
    torch.testing.assert_close(out.hidden.norm(dim=-1), torch.ones(2, 15, 1))


def test_steps_see_only_nearby_audio(tiny):
    """The features stay a time sequence: audio after the first second leaves the first steps unchanged."""
    wave = noise(4.0)
    changed = wave.clone()
    changed[:, 48000:] = 0
    a, b = tiny(wave).hidden, tiny(changed).hidden
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, -3:], b[:, -3:])


def test_official_layout_round_trip(tiny, tmp_path):
    path = save_tiny_format(tiny, tmp_path / "cavp.ckpt")
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("module.spec_encoder.") for k in state)
    assert "module.spec_encoder.conv_block5.bn2.running_var" in state and "module.spec_encoder.bn.weight" in state
    # the video branch and the logit scale of the full CAVP_Inference are ignored
    state["module.video_project_head.weight"] = torch.zeros(512, 2048)
    state["module.logit_scale"] = torch.tensor(2.66)
    torch.save({"epoch": 66, "name": "cavp", "state_dict": state}, tmp_path / "full.ckpt")
    loaded = load_cavp(tmp_path / "full.ckpt")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.channels == TINY_CAVP["channels"] and loaded.embed_dim == TINY_CAVP["embed_dim"]
    wave = noise(1.0)
    torch.testing.assert_close(loaded(wave).hidden, tiny(wave).hidden)


def test_forward_is_the_official_cnn14_computation(tiny):
    """Diff-Foley's Cnn14 forward written out: fc1 twice, 3-step max + mean pooling, then L2 norm."""
    enc = tiny.spec_encoder
    x = tiny.spec(noise(1.0))
    x = enc.bn(x.transpose(1, 3)).transpose(1, 3)
    for i, pool in enumerate([(2, 2)] * 4 + [(1, 2), (1, 1)]):
        block = getattr(enc, f"conv_block{i + 1}")
        x = F.relu(block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x))))))
        x = F.avg_pool2d(x, pool)
    x = x.mean(dim=3)
    x = (F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)).transpose(1, 2)
    expected = F.normalize(enc.final_project(F.relu(enc.fc1(F.relu(enc.fc1(x))))), dim=-1)
    torch.testing.assert_close(tiny(noise(1.0)).hidden[:, :, 0], expected)


def test_bad_files_are_refused_with_their_key(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cavp(tmp_path / "nope.ckpt", config_key="model.encoder.path")
    assert isinstance(info.value, CAVPWeightsMissing)
    for part in ("model.encoder.path", "cavp_epoch66.ckpt", "SimianLuo/Diff-Foley", "diff_foley_ckpt", "scale=tiny"):
        assert part in str(info.value)
    torch.save({"state_dict": {"video_encoder.conv1.weight": torch.zeros(1)}}, tmp_path / "video.ckpt")
    with pytest.raises(CAVPCheckpointError, match="spec_encoder"):
        load_cavp(tmp_path / "video.ckpt")


def test_layers_other_than_the_single_output_are_refused(tiny):
    with pytest.raises(ValueError, match="model.encoder.layers"):
        tiny(noise(1.0), layers=[1, 2])


def test_smoke_tempotokens_trains_on_cavp(tmp_path):
    cfg = compose(["experiment=tempotokens_vggsound", "scale=tiny", "model.encoder.name=cavp",
                   "model.encoder.path=tiny:cavp"], tmp_path)
    system = instantiate(cfg.model)
    assert isinstance(system.encoder, CAVPAudio)
    assert system.mapper.mlp[0].in_features == TINY_CAVP["embed_dim"]
    system.train()
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(2, 8, 3, 32, 32, generator=g) * 2 - 1, "audio": noise(1.0),
             "caption": ["a dog barks", "rain falls"], "key": ["a", "b"]}
    losses = system.diffusion_loss(batch, generator=torch.Generator().manual_seed(1))
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in system.trainable_parameters())
    assert not any(p.requires_grad for p in system.encoder.parameters()) and not system.encoder.training
