"""Trainable pieces of TempoTokens (avgen.modules): context windows on hand-worked values and against
a frame-by-frame reference, Table 3's settings, pooling of encoder patches to frames by time, the
AudioMapper's layers and per-frame locality, and attentive pooling (Eqs. 4-6, dropout off in eval).
Tiny widths, CPU, a few seconds."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avgen.errors import ConfigError
from avgen.modules.attentive_pooling import AttentivePooling
from avgen.modules.audio_mapper import AudioMapper, default_hidden_dims, pool_to_frames
from avgen.modules.context_windows import resolutions, window_means

# ------------------------------------------------------------------------------------------
# context windows (Eqs. 2-3)

RAMP = torch.arange(5, dtype=torch.float64)[None, :, None]  # (B=1, L=5, d=1): token i is i


@pytest.mark.parametrize(("mode", "size", "expected"), [
    ("centered", 1, [0, 1, 2, 3, 4]),
    # [i-1, i+1] around frame centres: ¼, ½, ¼ inside, clipped to (1·x_0 + ½·x_1) / 1.5 at the start.
    ("centered", 2, [Fraction(1, 3), 1, 2, 3, Fraction(11, 3)]),
    ("centered", 3, [Fraction(1, 2), 1, 2, 3, Fraction(7, 2)]),
    ("centered", 4, [Fraction(4, 5), Fraction(9, 7), 2, Fraction(19, 7), Fraction(16, 5)]),
    ("centered", 16, [2, 2, 2, 2, 2]),
    ("left", 1, [0, 1, 2, 3, 4]),
    ("left", 2, [0, Fraction(1, 2), Fraction(3, 2), Fraction(5, 2), Fraction(7, 2)]),
    ("left", 4, [Fraction(1, 2), 1, Fraction(3, 2), Fraction(5, 2), 3]),
    ("left", 16, [2, 2, 2, 2, 2]),
])
def test_window_means_hand_worked(mode, size, expected):
    out = window_means(RAMP, [size], mode)
    assert out.shape == (1, 5, 1, 1)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([float(v) for v in expected], dtype=torch.float64))


def test_window_means_stacks_sizes_on_axis_2_and_defaults_to_centered():
    out = window_means(RAMP, [1, 2, 4])
    assert out.shape == (1, 5, 3, 1)
    for k, size in enumerate([1, 2, 4]):
        torch.testing.assert_close(out[:, :, k], window_means(RAMP, [size], "centered")[:, :, 0])


def reference_window_means(tokens: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Frame by frame: every frame s weighted by the length of [s, s+1) inside the clipped window."""
    length = tokens.shape[1]
    rows = []
    for i in range(length):
        if mode == "centered":
            start, end = Fraction(2 * i + 1 - size, 2), Fraction(2 * i + 1 + size, 2)
        else:
            start, end = Fraction(i - size // 2), Fraction(i - size // 2 + size)
        start, end = max(start, Fraction(0)), min(end, Fraction(length))
        weights = torch.tensor([float(max(Fraction(0), min(end, s + 1) - max(start, s))) for s in range(length)],
                               dtype=tokens.dtype)
        rows.append(torch.einsum("s,bsd->bd", weights / weights.sum(), tokens))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("mode", ["centered", "left"])
@pytest.mark.parametrize("length", [1, 2, 7, 24])
def test_window_means_match_frame_by_frame_reference(mode, length):
    tokens = torch.randn(2, length, 3, dtype=torch.float64)
    sizes = [1, 2, 3, 4, 8, 16, 64]
    out = window_means(tokens, sizes, mode)
    for k, size in enumerate(sizes):
        torch.testing.assert_close(out[:, :, k], reference_window_means(tokens, size, mode))


def test_window_means_centered_is_symmetric_in_time():
    tokens = torch.randn(1, 9, 4)
    out = window_means(tokens, [1, 2, 4, 8], "centered")
    torch.testing.assert_close(window_means(tokens.flip(1), [1, 2, 4, 8], "centered"), out.flip(1))


def test_window_means_keeps_half_precision_dtype():
    tokens = torch.randn(2, 24, 8)
    out = window_means(tokens.to(torch.bfloat16), list(resolutions(5)))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), window_means(tokens, list(resolutions(5))), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("sizes", "mode"), [([1, 2], "right"), ([0, 2], "centered"), ([1.5], "left")])
def test_window_means_rejects_bad_config(sizes, mode):
    with pytest.raises(ConfigError):
        window_means(RAMP, sizes, mode)


@pytest.mark.parametrize(("num", "expected"), [
    (0, ()),  # vec.
    (1, (1,)),
    (2, (1, 2)),
    (3, (1, 2, 4)),
    (4, (1, 2, 4, 8)),
    (5, (1, 2, 4, 8, 16)),
])
def test_resolutions_of_table_3(num, expected):
    assert resolutions(num) == expected


@pytest.mark.parametrize("num", [-1, 6])
def test_resolutions_outside_table_3(num):
    with pytest.raises(ConfigError):
        resolutions(num)


# ------------------------------------------------------------------------------------------
# pool_to_frames


def grid(time_rows: int, freq: int = 3, layers: int = 2, width: int = 4) -> torch.Tensor:
    """(1, T_p, F_p, H, d) random patch features."""
    return torch.randn(1, time_rows, freq, layers, width, dtype=torch.float64)


def row_means(features: torch.Tensor) -> torch.Tensor:
    """(B, T_p, H·d): the mean over frequency of each time row."""
    return features.mean(dim=2).flatten(2)


def test_pool_to_frames_one_row_per_frame():
    features = grid(6)
    torch.testing.assert_close(pool_to_frames(features, 6), row_means(features))


def test_pool_to_frames_two_rows_per_frame():
    features = grid(8)
    rows = row_means(features)
    torch.testing.assert_close(pool_to_frames(features, 4), 0.5 * (rows[:, 0::2] + rows[:, 1::2]))


def test_pool_to_frames_two_frames_per_row():
    features = grid(3)
    torch.testing.assert_close(pool_to_frames(features, 6), row_means(features).repeat_interleave(2, dim=1))


def test_pool_to_frames_frame_across_a_row_boundary():
    features = torch.zeros(1, 2, 2, 1, 1, dtype=torch.float64)
    features[:, 1] = 6.0
    # Frames of 1/3 s over rows of 1/2 s: the middle frame lies half in each row.
    torch.testing.assert_close(pool_to_frames(features, 3)[0, :, 0], torch.tensor([0.0, 3.0, 6.0], dtype=torch.float64))


@pytest.mark.parametrize(("time_rows", "frames"), [(6, 6), (8, 4), (3, 6), (6, 4), (6, 24)])
def test_pool_to_frames_each_frame_reads_only_the_rows_over_its_time(time_rows, frames):
    features = grid(time_rows)
    base = pool_to_frames(features, frames)
    for row in range(time_rows):
        bumped = features.clone()
        bumped[:, row] += 1.0
        changed = (pool_to_frames(bumped, frames) - base).abs().amax(dim=(0, 2)) > 0
        overlaps = [max(i * time_rows, row * frames) < min((i + 1) * time_rows, (row + 1) * frames)
                    for i in range(frames)]
        assert changed.tolist() == overlaps


def test_pool_to_frames_flat_patches_are_time_major():
    time_rows, freq = 6, 8
    features = grid(time_rows, freq)
    flat = features.flatten(1, 2)  # patch t·F_p + f, the BEATs order
    torch.testing.assert_close(pool_to_frames(flat, 24, time_patches=time_rows), pool_to_frames(features, 24))
    # The public code's grouping of consecutive patches reads one time row's frequency bands in
    # several frames; here the 4 frames over a row all get that row's full-band mean.
    out = pool_to_frames(flat, 24, time_patches=time_rows)
    torch.testing.assert_close(out[:, 0:4], row_means(features)[:, :1].expand(-1, 4, -1))


def test_pool_to_frames_concatenates_layers_layer_major():
    features = torch.zeros(1, 2, 3, 3, 2)
    for layer in range(3):
        features[:, :, :, layer] = float(layer)
    out = pool_to_frames(features, 2)
    assert out.shape == (1, 2, 6)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]))


@pytest.mark.parametrize("time_patches", [None, 5])
def test_pool_to_frames_flat_needs_dividing_time_patches(time_patches):
    with pytest.raises(ValueError, match="time_patches"):
        pool_to_frames(torch.zeros(1, 48, 2, 4), 24, time_patches=time_patches)


# ------------------------------------------------------------------------------------------
# AudioMapper


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_mapper_paper_size_is_the_public_codes_mlp():
    with torch.device("meta"):
        mapper = AudioMapper(in_dim=12 * 768, out_dim=1024, depth=4)
    shapes = [(m.in_features, m.out_features) for m in linear_layers(mapper)]
    assert shapes == [(9216, 2304), (2304, 2304), (2304, 1024), (1024, 1024)]
    assert sum(p.numel() for p in mapper.parameters()) == 29_956_608
    assert [type(m) for m in mapper.mlp] == [nn.Linear, nn.GELU] * 3 + [nn.Linear]


@pytest.mark.parametrize(("depth", "expected"), [(1, ()), (2, (1024,)), (3, (2304, 1024)), (4, (2304, 2304, 1024))])
def test_default_hidden_dims(depth, expected):
    assert default_hidden_dims(9216, 1024, depth) == expected


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6])
def test_mapper_depth_counts_linear_layers(depth):
    mapper = AudioMapper(in_dim=32, out_dim=16, depth=depth)
    assert len(linear_layers(mapper.mlp)) == depth
    assert mapper(torch.randn(2, 7, 32)).shape == (2, 7, 16)


def test_mapper_hidden_dims():
    mapper = AudioMapper(in_dim=32, out_dim=16, depth=3, hidden_dims=[20, 12])
    assert [(m.in_features, m.out_features) for m in linear_layers(mapper)] == [(32, 20), (20, 12), (12, 16)]


@pytest.mark.parametrize("kwargs", [{"depth": 3, "hidden_dims": [20]}, {"depth": 0}, {"activation": "tanh"}])
def test_mapper_rejects_bad_config(kwargs):
    with pytest.raises(ConfigError):
        AudioMapper(in_dim=32, out_dim=16, **kwargs)


def frames_changed_by(mapper: AudioMapper, frame: int) -> list[bool]:
    """Which output tokens change when one frame's features change."""
    features = torch.randn(1, 6, 32)
    bumped = features.clone()
    bumped[:, frame] += 1.0
    with torch.no_grad():
        return ((mapper(bumped) - mapper(features)).abs().amax(dim=(0, 2)) > 0).tolist()


def test_mapper_without_attention_maps_each_frame_alone():
    assert frames_changed_by(AudioMapper(in_dim=32, out_dim=16), 2) == [False, False, True, False, False, False]


def test_mapper_self_attention_variant_mixes_frames():
    mapper = AudioMapper(in_dim=32, out_dim=16, self_attention=True, head_dim=8)
    assert mapper.attention.heads == 2
    assert mapper(torch.randn(2, 7, 32)).shape == (2, 7, 16)
    assert all(frames_changed_by(mapper, 2))


# ------------------------------------------------------------------------------------------
# AttentivePooling (Eqs. 4-6)


def reference_pooling(pool: AttentivePooling, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 4-6 position by position (eval mode: no dropout)."""
    b, length, _ = tokens.shape
    scores = torch.zeros(b, length)
    for u in range(length):
        local = pool.local_score(F.relu(pool.local_hidden(tokens[:, u]))).squeeze(-1)
        cross = sum(F.cosine_similarity(pool.cross_query(tokens[:, u]), pool.cross_key(tokens[:, i]), dim=-1)
                    for i in range(length)) / length
        scores[:, u] = pool.alpha_local * local + pool.alpha_cross * cross
    weights = torch.softmax(scores, dim=1)
    return (weights[:, :, None] * tokens).sum(dim=1), weights


def trained_looking(pool: AttentivePooling) -> AttentivePooling:
    """Calibrations away from their start at 1, so the test sees each potential's own scale."""
    with torch.no_grad():
        pool.alpha_local.fill_(0.7)
        pool.alpha_cross.fill_(2.5)
    return pool


def test_attentive_pooling_matches_equations():
    torch.manual_seed(0)
    pool = trained_looking(AttentivePooling(dim=12, hidden_dim=10, embed_dim=6)).eval()
    tokens = torch.randn(3, 8, 12)
    token, weights = pool(tokens)
    assert token.shape == (3, 12) and weights.shape == (3, 8)
    expected_token, expected_weights = reference_pooling(pool, tokens)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(token, expected_token)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert (weights > 0).all()


def test_attentive_pooling_uniform_over_equal_tokens():
    pool = AttentivePooling(dim=12).eval()
    tokens = torch.randn(2, 1, 12).expand(-1, 5, -1)
    token, weights = pool(tokens)
    torch.testing.assert_close(weights, torch.full((2, 5), 0.2))
    torch.testing.assert_close(token, tokens[:, 0])


def test_attentive_pooling_weights_follow_the_input():
    torch.manual_seed(0)
    pool = AttentivePooling(dim=12).eval()
    tokens = torch.randn(1, 6, 12)
    bumped = tokens.clone()
    bumped[:, 3] += 2.0
    assert not torch.allclose(pool(tokens)[1], pool(bumped)[1])


def test_attentive_pooling_dropout_only_in_training():
    torch.manual_seed(0)
    pool = AttentivePooling(dim=16, dropout=0.5)
    tokens = torch.randn(2, 8, 16)
    pool.train()
    assert not torch.equal(pool(tokens)[1], pool(tokens)[1])
    pool.eval()
    first, second = pool(tokens), pool(tokens)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    without_dropout = AttentivePooling(dim=16, dropout=0.0)
    without_dropout.load_state_dict(pool.state_dict())
    torch.testing.assert_close(first[1], without_dropout.train()(tokens)[1])


def test_attentive_pooling_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    pool = AttentivePooling(dim=12, dropout=0.5).train()
    token, _ = pool(torch.randn(2, 6, 12))
    (token * torch.randn_like(token)).sum().backward()
    for name, parameter in pool.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
