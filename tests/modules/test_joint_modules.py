"""Cross-modal modules of the joint model (avgen.modules): time interpolation on hand-worked values,
identity at initialisation, what the blocks may and may not depend on, connector shapes and
per-frame locality, and the hyper-parameter errors. Tiny widths, CPU, a few seconds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avgen.errors import ConfigError
from avgen.modules.cmcpe import CMCPE, interpolate_time
from avgen.modules.connector import Connector, ContinuousPositionBias, frame_shift, token_shift
from avgen.modules.cross_modal_attention import CrossModalAttention

TINY_BLOCK = {"cond_dim": 24, "head_dim": 8, "norm_groups": 8}
TINY_CONNECTOR = {"out_dim": 32, "channels": 32, "norm_groups": 8}
BLOCKS = [CMCPE, CrossModalAttention]


def ramp(values: list[float]) -> torch.Tensor:
    """(1, T_c, 2) sequence whose two channels are ``values`` and ``-values``."""
    v = torch.tensor(values)
    return torch.stack([v, -v], dim=-1)[None]


def randomise_output(block: torch.nn.Module) -> torch.nn.Module:
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)
    torch.nn.init.normal_(block.proj_out.bias, std=0.2)
    return block


# ------------------------------------------------------------------------------------------
# interpolate_time


@pytest.mark.parametrize(("values", "length", "mode", "expected"), [
    ([0.0, 1.0], 4, "nearest", [0.0, 0.0, 1.0, 1.0]),
    ([0.0, 1.0], 4, "linear", [0.0, 0.25, 0.75, 1.0]),
    ([0.0, 10.0, 20.0, 30.0], 3, "nearest", [0.0, 10.0, 20.0]),
    ([0.0, 10.0, 20.0, 30.0], 3, "linear", [5.0 / 3.0, 15.0, 85.0 / 3.0]),
    ([0.0, 1.0, 2.0], 8, "nearest", [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]),
    ([3.0, -1.0, 7.0], 3, "nearest", [3.0, -1.0, 7.0]),
    ([3.0, -1.0, 7.0], 3, "linear", [3.0, -1.0, 7.0]),
    ([5.0], 3, "linear", [5.0, 5.0, 5.0]),
])
def test_interpolate_time_hand_worked(values, length, mode, expected):
    out = interpolate_time(ramp(values), length, mode)
    assert out.shape == (1, length, 2)
    torch.testing.assert_close(out, ramp(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("source", [1, 3, 5, 7, 13, 26, 52])
@pytest.mark.parametrize("length", [1, 4, 8, 26, 32, 104])
def test_interpolate_time_nearest_matches_torch(source, length):
    cond = torch.randn(2, source, 3)
    reference = F.interpolate(cond.transpose(1, 2), size=length, mode="nearest").transpose(1, 2)
    assert torch.equal(interpolate_time(cond, length, "nearest"), reference)


def test_interpolate_time_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="interpolation='cubic'"):
        interpolate_time(torch.randn(1, 3, 2), 4, "cubic")


# ------------------------------------------------------------------------------------------
# CMC-PE and the cross-attention baseline


@pytest.mark.parametrize("block_class", BLOCKS)
@pytest.mark.parametrize(("frames", "cond_frames"), [(4, 4), (6, 3), (3, 7), (5, 1)])
def test_blocks_are_the_identity_at_initialisation(block_class, frames, cond_frames):
    torch.manual_seed(frames * 10 + cond_frames)
    block = block_class(32, **TINY_BLOCK)
    x = torch.randn(2, 32, frames, 6) * 3
    out = block(x, torch.randn(2, cond_frames, 24))
    assert torch.equal(out, x)


@pytest.mark.parametrize("block_class", BLOCKS)
def test_blocks_depend_on_the_condition(block_class):
    torch.manual_seed(0)
    block = randomise_output(block_class(32, **TINY_BLOCK))
    x = torch.randn(2, 32, 4, 6)
    first, second = block(x, torch.randn(2, 5, 24)), block(x, torch.randn(2, 5, 24))
    assert (first - second).abs().max() > 1e-2


def test_cmcpe_sees_the_order_of_the_condition_frames():
    torch.manual_seed(1)
    block = randomise_output(CMCPE(32, **TINY_BLOCK))
    x, cond = torch.randn(2, 32, 5, 6), torch.randn(2, 5, 24)
    shuffled = cond[:, torch.tensor([4, 2, 0, 3, 1])]
    assert (block(x, cond) - block(x, shuffled)).abs().max() > 1e-2


def test_cross_attention_sees_only_the_pooled_condition():
    torch.manual_seed(2)
    block = randomise_output(CrossModalAttention(32, **TINY_BLOCK))
    x, cond = torch.randn(2, 32, 5, 6), torch.randn(2, 5, 24)
    shuffled = cond[:, torch.tensor([4, 2, 0, 3, 1])]
    torch.testing.assert_close(block(x, cond), block(x, shuffled), rtol=0, atol=1e-5)
    # Any condition with the same mean direction gives the same output, whatever its length.
    torch.testing.assert_close(block(x, cond), block(x, 3 * cond.mean(dim=1, keepdim=True)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_cmcpe_encoding_of_a_frame_depends_on_its_own_condition_frame_only(interpolation):
    # T = T_c: frame i reads condition frame i only. A normalisation over time (the public code's)
    # would let the other frames leak in.
    torch.manual_seed(3)
    block = CMCPE(32, interpolation=interpolation, **TINY_BLOCK)
    cond = torch.randn(2, 6, 24)
    changed = cond.clone()
    changed[:, 1:] = torch.randn(2, 5, 24) * 10
    before, after = block.positional_encoding(cond, 6), block.positional_encoding(changed, 6)
    assert before.shape == (2, 6, 32)
    torch.testing.assert_close(before[:, 0], after[:, 0], rtol=0, atol=1e-6)
    assert (before[:, 1:] - after[:, 1:]).abs().max() > 1e-2


def test_cmcpe_encoding_ignores_the_scale_of_each_condition_frame():
    torch.manual_seed(4)
    block = CMCPE(32, **TINY_BLOCK)
    cond = torch.randn(2, 6, 24)
    scales = torch.tensor([0.1, 1.0, 7.0, 0.5, 2.0, 40.0])[None, :, None]
    torch.testing.assert_close(block.positional_encoding(cond, 9), block.positional_encoding(cond * scales, 9),
                               rtol=0, atol=1e-5)


def test_cmcpe_encoding_follows_interpolate_time():
    torch.manual_seed(5)
    block = CMCPE(32, interpolation="linear", **TINY_BLOCK)
    cond = torch.randn(2, 4, 24)
    expected = interpolate_time(block.positional_encoding(cond, 4), 7, "linear")
    torch.testing.assert_close(block.positional_encoding(cond, 7), expected)


def test_head_count():
    assert CMCPE(1280, cond_dim=1280).attn1.heads == 20
    assert CrossModalAttention(576, cond_dim=1280).attn2.heads == 9
    assert CMCPE(32, cond_dim=8, head_dim=64, norm_groups=8).attn1.heads == 1


@pytest.mark.parametrize("block_class", BLOCKS)
def test_head_dim_that_does_not_divide_the_channels_is_refused(block_class):
    with pytest.raises(ValueError, match="head_dim=24 does not divide channels=40"):
        block_class(40, cond_dim=8, head_dim=24, norm_groups=8)


def test_hyper_parameter_errors_name_the_key():
    with pytest.raises(ConfigError, match="norm_groups=7"):
        CMCPE(32, cond_dim=8, head_dim=8, norm_groups=7)
    with pytest.raises(ConfigError, match="interpolation='area'"):
        CMCPE(32, cond_dim=8, head_dim=8, norm_groups=8, interpolation="area")
    with pytest.raises(ConfigError, match="num_heads=5"):
        Connector(4, attention=True, num_heads=5, **TINY_CONNECTOR)
    with pytest.raises(ConfigError, match="model.connector.spatio_temporal='ordered'"):
        Connector(4, attention=True, num_heads=4, spatio_temporal="ordered", **TINY_CONNECTOR)
    with pytest.raises(ConfigError, match="spatial_dims=3"):
        Connector(4, spatial_dims=3, **TINY_CONNECTOR)
    with pytest.raises(ConfigError, match="attention=true"):
        Connector(8, spatial_dims=1, attention=True, **TINY_CONNECTOR)


def test_blocks_refuse_misshaped_inputs():
    block = CMCPE(32, **TINY_BLOCK)
    with pytest.raises(ValueError, match=r"\(B, C=32, T, S\)"):
        block(torch.randn(2, 32, 4, 4, 4), torch.randn(2, 3, 24))
    with pytest.raises(ValueError, match="cond_dim=24"):
        block(torch.randn(2, 32, 4, 6), torch.randn(2, 3, 16))


# ------------------------------------------------------------------------------------------
# Connector


@pytest.fixture(scope="module")
def video_connector() -> Connector:
    torch.manual_seed(6)
    return Connector(4, spatial_dims=2, attention=True, num_heads=4, **TINY_CONNECTOR)


@pytest.fixture(scope="module")
def audio_connector() -> Connector:
    torch.manual_seed(7)
    return Connector(8, spatial_dims=1, **TINY_CONNECTOR)


def test_video_connector_gives_one_vector_per_frame(video_connector):
    x = torch.randn(2, 4, 8, 16, 16)
    assert video_connector(x, torch.zeros_like(x), torch.tensor([10, 900])).shape == (2, 8, 32)


@pytest.mark.parametrize(("frames", "expected"), [(32, 16), (31, 16), (104, 52)])
def test_audio_connector_halves_time_rounding_up(audio_connector, frames, expected):
    x = torch.randn(2, 8, frames, 16)
    assert audio_connector(x, torch.zeros_like(x), torch.tensor([10, 900])).shape == (2, expected, 32)


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_connector_reads_timestep_and_self_conditioning(modality, video_connector, audio_connector):
    connector, shape = {"video": (video_connector, (2, 4, 8, 16, 16)),
                        "audio": (audio_connector, (2, 8, 32, 16))}[modality]
    x, x0_hat = torch.randn(shape), torch.randn(shape)
    base = connector(x, x0_hat, torch.tensor([10, 900]))
    assert (base - connector(x, x0_hat, torch.tensor([500, 900]))).abs()[0].max() > 1e-3
    assert (base - connector(x, torch.zeros(shape), torch.tensor([10, 900]))).abs().max() > 1e-3
    # A scalar timestep is the same timestep for every clip.
    torch.testing.assert_close(connector(x, x0_hat, 10), connector(x, x0_hat, torch.tensor([10, 10])))


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_gradients_reach_every_connector_parameter(modality, video_connector, audio_connector):
    connector, shape = {"video": (video_connector, (1, 4, 4, 8, 8)),
                        "audio": (audio_connector, (1, 8, 16, 8))}[modality]
    connector = copy.deepcopy(connector)
    torch.manual_seed(3)
    with torch.no_grad():  # the zero-initialised output maps (identity at init), as after a first training step
        for p in connector.parameters():
            if not p.any():
                p.normal_(std=0.1)
    connector(torch.randn(shape), torch.randn(shape), torch.tensor([300])).square().sum().backward()
    missing = [name for name, p in connector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def _landing_clip(frames: int = 6, landing: int = 3) -> torch.Tensor:
    """(1, 4, frames, 8, 8) latents: a still background; from frame ``landing`` on, a blob lies still at one place
    (frames ``landing`` … ``frames - 1`` are identical) — the frame where it arrives looks like every later one."""
    torch.manual_seed(11)
    x = torch.randn(1, 4, 1, 8, 8).expand(1, 4, frames, 8, 8).clone()
    x[:, :, landing:, 5:7, 2:4] += 2.0
    return x


@pytest.mark.parametrize("variant", ["public", "unordered"])
def test_video_connector_tells_the_landing_frame_from_the_frames_after_it(variant):
    """Identical frames at different places in time: with the public code's order-aware temporal processing the
    connector tells the frame where the blob arrived from the frames after it; the order-blind attention
    (``spatio_temporal="unordered"``) is equivariant to permuting frames, so it gives the identical frames identical
    features — it cannot say when the blob landed."""
    torch.manual_seed(6)
    connector = Connector(4, spatial_dims=2, attention=True, num_heads=4, spatio_temporal=variant,
                          **TINY_CONNECTOR).eval()
    x = _landing_clip()
    with torch.no_grad():
        out = connector(x, torch.zeros_like(x), 100)[0]  # (frames, D)
    arrival_vs_after = (out[3] - out[4]).abs().max()
    if variant == "public":
        assert arrival_vs_after > 1e-3
        assert (out[4] - out[5]).abs().max() > 1e-5  # the time embedding and the frame shift see the position too
    else:
        assert arrival_vs_after < 1e-5 and (out[4] - out[5]).abs().max() < 1e-5
        # ... and a permutation of the frames permutes its output
        order = torch.tensor([2, 0, 5, 1, 4, 3])
        permuted = connector(x[:, :, order], torch.zeros_like(x), 100)[0]
        torch.testing.assert_close(permuted, out[order], atol=1e-5, rtol=1e-4)


def test_frame_shift_moves_chunk_i_by_i_frames():
    x = torch.arange(1, 4 * 5 + 1, dtype=torch.float32).view(1, 4, 5)  # (B, C=4, T=5): channel c holds 5c+1 … 5c+5
    out = frame_shift(x, chunks=4)
    expected = torch.tensor([[1, 2, 3, 4, 5],
                             [0, 6, 7, 8, 9],
                             [0, 0, 11, 12, 13],
                             [0, 0, 0, 16, 17]], dtype=torch.float32)
    torch.testing.assert_close(out[0], expected)
    # more chunks than frames: a chunk shifted past the end is all zeros
    assert frame_shift(torch.ones(1, 8, 2), chunks=8)[0, 2:].abs().sum() == 0


def test_token_shift_takes_the_second_half_of_the_channels_from_the_previous_frame():
    tokens = torch.arange(12, dtype=torch.float32).view(1, 3, 4)  # (N, T=3, C=4)
    expected = torch.tensor([[0, 1, 0, 0], [4, 5, 2, 3], [8, 9, 6, 7]], dtype=torch.float32)
    torch.testing.assert_close(token_shift(tokens)[0], expected)


def test_continuous_position_bias_depends_on_the_signed_log_distance():
    torch.manual_seed(0)
    bias = ContinuousPositionBias(heads=3, width=8)
    table = bias(6)
    assert table.shape == (3, 6, 6)
    torch.testing.assert_close(table[:, 1:, 1:], table[:, :-1, :-1])  # Toeplitz: a function of i - j only
    assert not torch.allclose(table[:, 2, 1], table[:, 1, 2])  # the sign of the distance matters
    d = torch.tensor([[math.log(3.0)]])  # i - j = 2
    torch.testing.assert_close(table[:, 2, 0], bias.mlp(d)[0])


def test_video_connector_without_attention_keeps_frames_apart():
    torch.manual_seed(8)
    connector = Connector(4, spatial_dims=2, attention=False, **TINY_CONNECTOR)
    x = torch.randn(2, 4, 6, 8, 8)
    changed = x.clone()
    changed[:, :, 3] = torch.randn(2, 4, 8, 8)
    diff = (connector(x, x, 5) - connector(changed, changed, 5)).abs().amax(dim=(0, 2))
    assert diff[3] > 1e-3
    assert torch.equal(diff[[0, 1, 2, 4, 5]], torch.zeros(5))


def test_video_connector_temporal_attention_mixes_frames(video_connector):
    """At initialisation the temporal attention's output map is zero (the public code's), so frames mix only
    through the token and frame shifts, which look back in time: a change of frame 3 reaches frames 3-5, not 0-2.
    Once the attention's output map has been trained, every frame sees every other."""
    x = torch.randn(2, 4, 6, 8, 8)
    changed = x.clone()
    changed[:, :, 3] = torch.randn(2, 4, 8, 8)
    diff = (video_connector(x, x, 5) - video_connector(changed, changed, 5)).abs().amax(dim=(0, 2))
    assert diff[4] > 1e-4 and diff[5] > 1e-4
    assert torch.equal(diff[:3], torch.zeros(3))
    trained = copy.deepcopy(video_connector)
    torch.manual_seed(4)
    with torch.no_grad():
        for attention in (trained.attn1, trained.attn2):
            attention.temporal.to_out.weight.normal_(std=0.1)
    diff = (trained(x, x, 5) - trained(changed, changed, 5)).abs().amax(dim=(0, 2))
    assert diff[0] > 1e-4


@pytest.mark.parametrize("cls", [CMCPE, CrossModalAttention])
def test_frame_attention_span_keeps_time_steps_apart(cls):
    """``attention_span="frame"``: apart from the input GroupNorm's clip-wide statistics, a time step's
    output depends only on its own features (and the condition), unlike ``full``; both are
    identities at initialisation."""
    torch.manual_seed(0)
    x, cond = torch.randn(2, 32, 5, 6), torch.randn(2, 5, 32)
    outs = {}
    for span in ("full", "frame"):
        torch.manual_seed(1)
        block = cls(32, cond_dim=32, head_dim=16, norm_groups=8, attention_span=span).eval()
        assert torch.equal(block(x, cond), x)
        nn.init.normal_(block.proj_out.weight, std=0.5)
        block.norm = nn.Identity()  # the input GroupNorm pools statistics over the whole clip by design
        changed = x.clone()
        changed[:, :, 4] += 3.0  # perturb the last time step only
        with torch.no_grad():
            outs[span] = (block(x, cond), block(changed, cond))
    frame_a, frame_b = outs["frame"]
    assert torch.allclose(frame_a[:, :, :4], frame_b[:, :, :4], atol=1e-6)
    full_a, full_b = outs["full"]
    assert not torch.allclose(full_a[:, :, :4], full_b[:, :, :4], atol=1e-4)
    with pytest.raises(ValueError, match="attention_span"):
        cls(32, cond_dim=32, head_dim=16, norm_groups=8, attention_span="time")


def test_cmcpe_time_span_maps_by_time_over_the_clip_not_the_mel_padding():
    """1 s of audio is 100 mel frames padded to 128 (fraction 0.78125). The audio blocks (16 frames at this level,
    0.08 s each) get the 4 video frames (0.25 s each) stretched over the 13 frames that hold the clip, the padding
    holding the last; the video blocks read the audio connector's 13 clip frames of 16. The public code's mapping
    (time_span=padded) stretches over all 16: audio frame 7 (0.56-0.64 s) reads video frame 1 (0.25-0.5 s) there,
    frame 2 (0.5-0.75 s) here."""
    from types import SimpleNamespace

    from avgen.modules.joint_unet import JointUNet

    holder = SimpleNamespace(audio_clip_fraction=100 / 128)
    video = torch.arange(4.0).view(1, 4, 1)
    out = JointUNet.clip_time_span(holder, video, "audio", 16, "nearest")
    assert out.view(-1).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    assert interpolate_time(video, 16).view(-1).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    audio = torch.arange(16.0).view(1, 16, 1)
    assert JointUNet.clip_time_span(holder, audio, "video", 8, "nearest").view(-1).tolist() == list(range(13))
    # no padding: the identity on both sides
    whole = SimpleNamespace(audio_clip_fraction=1.0)
    assert torch.equal(JointUNet.clip_time_span(whole, video, "audio", 16, "nearest"), interpolate_time(video, 16))
    assert torch.equal(JointUNet.clip_time_span(whole, audio, "video", 8, "nearest"), audio)
