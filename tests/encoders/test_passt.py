"""PaSST (avgen/encoders/passt.py): the mel front end against numpy, the network against hear21passt's own code
(a tiny random-weight fixture), the published key layout and the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.encoders.passt import PaSST, PasstMel, PasstWeightsMissing, heads_for, load_passt, save_official_format
from avgen.pretrained import ORIGINS, sha256_file
from tests.fixtures.make_passt_parity import parity_audio

FIXTURE = Path(__file__).parents[1] / "fixtures" / "passt_tiny_parity.pt"


@pytest.fixture(scope="module")
def tiny() -> PaSST:
    torch.manual_seed(0)
    return PaSST.tiny()


def numpy_passt_mel(x: np.ndarray) -> np.ndarray:
    """hear21passt's eval front end written out in float64 numpy: pre-emphasis, centred reflect-padded frames,
    symmetric Hann 800 centred in 1024, |rfft|², Kaldi mel banks (1127·ln(1 + f/700), triangles on the mel axis,
    0–15 000 Hz, no Nyquist bin), log(x + 1e-5), (x + 4.5) / 5. x (S,) → (128, T)."""
    y = x[1:] - 0.97 * x[:-1]
    padded = np.pad(y, 512, mode="reflect")
    frames = 1 + len(y) // 320
    window = np.zeros(1024)
    window[112:912] = np.hanning(800)
    spec = np.stack([np.fft.rfft(padded[t * 320:t * 320 + 1024] * window) for t in range(frames)], axis=1)
    power = spec.real ** 2 + spec.imag ** 2                                   # (513, T)

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    low, high = mel(0.0), mel(15000.0)
    delta = (high - low) / 129
    bins = mel(np.arange(512) * 32000 / 1024)
    banks = np.zeros((128, 513))
    for b in range(128):
        left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        banks[b, :512] = np.maximum(0, np.minimum((bins - left) / (center - left), (right - bins) / (right - center)))
    return (np.log(banks @ power + 1e-5) + 4.5) / 5


def test_front_end_gives_128_by_1000_for_ten_seconds_and_matches_numpy():
    mel = PasstMel()
    out = mel(torch.randn(2, 320000, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 1, 128, 1000) and out.dtype == torch.float32
    assert mel.frames(320000) == 1000 and PaSST.tiny().patches(1000) == 99
    x = np.random.default_rng(1).standard_normal(4000) * 0.3 + np.sin(np.arange(4000) * 0.05)
    expected = numpy_passt_mel(x)
    got = mel(torch.from_numpy(x.astype(np.float32))[None])[0, 0].double().numpy()
    assert got.shape == expected.shape == (128, 13)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5)
    assert not any(mel.state_dict())  # the front end adds no key to the published layout


def test_network_matches_hear21passt_on_a_tiny_random_model():
    """The fixture was written by hear21passt 0.0.26 (tests/fixtures/make_passt_parity.py): its PaSST with width
    16, 2 heads, 10 classes, random weights, on two 2-s clips (19 time patches: the time embedding is cut)."""
    fixture = torch.load(FIXTURE, weights_only=True)
    audio = parity_audio()
    torch.testing.assert_close(audio[:, ::4000], fixture["audio_check"], rtol=0, atol=0)
    model = PaSST(embed_dim=16, depth=1, num_heads=fixture["num_heads"], num_classes=10)
    model.load_state_dict(fixture["state"], strict=True)
    torch.testing.assert_close(model.mel(audio)[:, 0, :, ::25], fixture["mel"], rtol=1e-5, atol=1e-5)
    logits, features = model(audio)
    torch.testing.assert_close(logits, fixture["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, fixture["features"], rtol=1e-5, atol=1e-5)
    one_head = PaSST(embed_dim=16, depth=1, num_heads=1, num_classes=10)
    one_head.load_state_dict(fixture["state"], strict=True)
    assert (one_head(audio)[0] - fixture["logits"]).abs().max() > 1e-4  # the head split matters


def test_published_keys_and_shapes():
    with torch.device("meta"):
        model = PaSST()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 159 and model.num_heads == heads_for(768) == 12
    assert list(shapes)[:7] == ["cls_token", "dist_token", "new_pos_embed", "freq_new_pos_embed",
                                "time_new_pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert shapes["new_pos_embed"] == (1, 2, 768) and shapes["freq_new_pos_embed"] == (1, 768, 12, 1)
    assert shapes["time_new_pos_embed"] == (1, 768, 1, 99) and shapes["patch_embed.proj.weight"] == (768, 1, 16, 16)
    assert shapes["blocks.11.attn.qkv.weight"] == (2304, 768) and shapes["blocks.11.mlp.fc1.weight"] == (3072, 768)
    assert shapes["head.0.weight"] == (768,) and shapes["head.1.weight"] == (527, 768)
    assert shapes["head_dist.weight"] == (527, 768) and "blocks.12.norm1.weight" not in shapes
    assert model.head[0].eps == 1e-5 and model.norm.eps == model.blocks[0].norm1.eps == 1e-6


@pytest.mark.parametrize("wrap", [False, True])
def test_loader_round_trip_through_the_published_layout(tmp_path, tiny, wrap):
    path = save_official_format(tiny, tmp_path / ORIGINS["passt"].file, wrap=wrap)
    raw = torch.load(path, weights_only=True)
    assert ("model" in raw) == wrap and "head_dist.weight" in (raw["model"] if wrap else raw)
    loaded = load_passt(path)
    assert loaded.config() == tiny.config() and loaded.num_heads == 1
    assert loaded.weights == {"passt": (str(path), sha256_file(path))}
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    audio = torch.randn(1, 64000, generator=torch.Generator().manual_seed(2))
    for a, b in zip(loaded(audio), tiny(audio)):
        assert torch.equal(a, b)


def test_flattened_patch_weights_and_head_dist(tmp_path, tiny):
    """A 2-D ``patch_embed.proj.weight`` (older PaSST files) is reshaped as hear21passt's checkpoint_filter_fn
    does; ``head_dist`` is loaded but does not change the outputs."""
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].reshape(16, -1)
    state["head_dist.weight"] += 1.0
    torch.save(state, tmp_path / "flat.pt")
    loaded = load_passt(tmp_path / "flat.pt")
    assert torch.equal(loaded.head_dist.weight, state["head_dist.weight"])
    audio = torch.randn(1, 48000, generator=torch.Generator().manual_seed(3))
    for a, b in zip(loaded(audio), tiny(audio)):
        assert torch.equal(a, b)


def test_loader_refuses_missing_wrong_and_incomplete_files(tmp_path, tiny):
    with pytest.raises(PasstWeightsMissing) as missing:
        load_passt(tmp_path / "absent.pt", config_key="evaluate.passt.path")
    message = str(missing.value)
    assert "evaluate.passt.path" in message and ORIGINS["passt"].where.split()[0] in message and "'kl_passt'" in message
    state = tiny.state_dict()
    cases = {"no_head_dist.pt": {k: v for k, v in state.items() if not k.startswith("head_dist")},
             "extra.pt": {**state, "pos_embed": torch.zeros(1)},
             "list.pt": [torch.zeros(1)],
             "other_model.pt": {"model": {"fc1.weight": torch.zeros(2, 2)}}}
    expected = {"no_head_dist.pt": "head_dist.weight", "extra.pt": "pos_embed", "list.pt": "not a PaSST state dict",
                "other_model.pt": "no tensor patch_embed.proj.weight", "text.pt": "torch.load(weights_only=True)"}
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name, needle in expected.items():
        with pytest.raises(ValueError) as err:
            load_passt(tmp_path / name)
        text = str(err.value)
        assert "\n" not in text and str(tmp_path / name) in text and "evaluate.passt.path" in text, name
        assert needle in text, (name, text)


def test_inputs_outside_the_positional_grid_are_refused(tiny):
    with pytest.raises(ValueError, match="takes 16..1005 mel frames .* 321601 samples give 1006"):
        tiny(torch.zeros(1, 321601))
    with pytest.raises(ValueError, match="mel frames"):
        tiny(torch.zeros(1, 4000))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        tiny(torch.zeros(320000))
    assert tiny(torch.zeros(1, 321600))[0].shape == (1, 527)  # 1005 frames: still 99 time patches
