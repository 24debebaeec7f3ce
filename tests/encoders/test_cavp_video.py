"""CAVP's video branch, a VTA-LDM Table 2 encoder: one unit-norm token per frame on the 4-fps axis, the SlowOnly
R3D network against a functional reference built from the state dict, the temporal reach of its (3, 1, 1) convs,
padding and masks, the differentiable path, the preprocessing against PIL, and the published checkpoint layout (the
loader, its refusals, the tiny twin shared with the audio branch, the registry)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import avgen.backbones.tiny
from avgen.encoders.cavp import (
    TINY_CAVP,
    TINY_FILE,
    CAVPAudio,
    CAVPCheckpointError,
    CAVPWeightsMissing,
    load_cavp,
    save_tiny_format,
)
from avgen.encoders.cavp_video import (
    FPS,
    TINY_SOURCE,
    CAVPVideoEncoder,
    load_cavp_video,
    preprocess,
    shapes_to_arguments,
)
from avgen.encoders.slowonly import TINY_CAVP_VIDEO, CAVPVideo, tiny_cavp_video
from avgen.encoders.video_tokens import VIDEO_ENCODERS, build_video_encoder
from avgen.errors import ConfigError
from tests.encoders.common import BAD_FRAMES, assert_frozen_in_eval_mode, noise, smooth

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH = TINY_CAVP_VIDEO["embed_dim"]
REACH = 2  # the twin's inflated blocks: one in layer3, one in layer4


@pytest.fixture(scope="module")
def model() -> CAVPVideo:
    torch.manual_seed(0)
    return tiny_cavp_video().eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """Both branches in the published layout (``module.`` prefixes), with the extra entries of an open_clip-style
    checkpoint."""
    path = tmp_path_factory.mktemp("cavp") / "cavp_epoch66.ckpt"
    torch.manual_seed(1)
    save_tiny_format([CAVPAudio(**TINY_CAVP), model], path)
    full = torch.load(path, weights_only=True)
    full["state_dict"]["module.logit_scale"] = torch.tensor(2.66)
    torch.save({"epoch": 66, "name": "cavp", **full}, path)
    return path


@pytest.fixture(scope="module")
def encoder(checkpoint) -> CAVPVideoEncoder:
    return load_cavp_video(checkpoint)


def reference_tokens(state: dict[str, torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
    """``encode_video(video, normalize=True, pool=False)`` written out with functional calls on a state dict, from
    cavp_modules.py (Diff-Foley 0ba1e8a): frames (T, 3, 224, 224) in [0, 1] → (T, D)."""

    def conv_module(x, name, stride=1, padding=0, relu=True):
        x = F.conv3d(x, state[f"{name}.conv.weight"], stride=stride, padding=padding)
        x = F.batch_norm(x, state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"],
                         state[f"{name}.bn.weight"], state[f"{name}.bn.bias"], training=False, eps=1e-5)
        return F.relu(x) if relu else x

    x = frames.permute(1, 0, 2, 3)[None]  # B × 3 × T × H × W
    x = conv_module(x, "video_encoder.conv1", (1, 2, 2), (0, 3, 3))
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for stage in range(1, 5):
        block = 0
        while f"video_encoder.layer{stage}.{block}.conv1.conv.weight" in state:
            name = f"video_encoder.layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            time_kernel = state[f"{name}.conv1.conv.weight"].shape[2]
            out = conv_module(x, f"{name}.conv1", padding=(time_kernel // 2, 0, 0))
            out = conv_module(out, f"{name}.conv2", (1, stride, stride), (0, 1, 1))
            out = conv_module(out, f"{name}.conv3", relu=False)
            identity = (conv_module(x, f"{name}.downsample", (1, stride, stride), relu=False)
                        if f"{name}.downsample.conv.weight" in state else x)
            x = F.relu(out + identity)
            block += 1
    x = torch.nn.AdaptiveAvgPool2d((1, 1))(x)  # the official pooling, on the 5-D map
    features = x.reshape(*x.shape[:3]).permute(0, 2, 1)
    head = F.linear(features, state["video_project_head.weight"], state["video_project_head.bias"])
    return F.normalize(head, dim=-1)[0]


def test_one_unit_token_per_frame_on_the_4_fps_axis(encoder, model):
    frames = noise(2, 6, 3, 40, 48)
    out = encoder(frames)
    assert out.embeds.shape == (2, 6, WIDTH) and out.embeds.dtype == torch.float32
    assert out.mask.shape == (2, 6) and out.mask.dtype == torch.bool and out.mask.all()
    assert out.seconds_per_token == Fraction(1, FPS) == Fraction(1, 4) and encoder.fps == 4
    torch.testing.assert_close(out.embeds.norm(dim=-1), torch.ones(2, 6))
    state = model.state_dict()
    for b in range(2):
        torch.testing.assert_close(out.embeds[b], reference_tokens(state, preprocess(frames[b])), rtol=1e-4,
                                   atol=1e-5)
    torch.testing.assert_close(encoder(frames[1]).embeds, out.embeds[1:], rtol=1e-5, atol=1e-6)
    assert (out.embeds[0, 0] - out.embeds[0, 3]).abs().max() > 1e-3  # distinct frames, distinct tokens


def test_the_layout_is_slowonly_r3d_50_with_a_512_d_head():
    """The published network's names and shapes (cavp_modules.py ResNet3dSlowOnly(depth=50), cavp_model.py
    video_project_head), built on the meta device; the loader reads the architecture back from them."""
    with torch.device("meta"):
        state = CAVPVideo().state_dict()
    assert shapes_to_arguments(state, "x") == {"stage_blocks": (3, 4, 6, 3), "base_channels": 64, "embed_dim": 512}
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["video_encoder.conv1.conv.weight"] == (64, 3, 1, 7, 7)
    assert shapes["video_encoder.layer1.0.conv1.conv.weight"] == (64, 64, 1, 1, 1)
    assert shapes["video_encoder.layer2.3.conv2.conv.weight"] == (128, 128, 1, 3, 3)
    assert shapes["video_encoder.layer3.0.conv1.conv.weight"] == (256, 512, 3, 1, 1)  # inflated '3x1x1'
    assert shapes["video_encoder.layer4.2.conv1.conv.weight"] == (512, 2048, 3, 1, 1)
    assert shapes["video_encoder.layer4.2.conv3.bn.running_var"] == (2048,)
    assert shapes["video_encoder.layer1.0.downsample.conv.weight"] == (256, 64, 1, 1, 1)
    assert shapes["video_encoder.layer1.0.downsample.bn.num_batches_tracked"] == ()
    assert shapes["video_project_head.weight"] == (512, 2048)
    assert {key.split(".downsample")[0] for key in state if ".downsample." in key} == {
        f"video_encoder.layer{i}.0" for i in range(1, 5)}
    # ResNet-50 without its classifier (torchvision: 23,508,032 parameters) plus the two extra time taps of the
    # inflated conv1 of layer3 (512 → 256, then 5 × 1024 → 256) and layer4 (1024 → 512, then 2 × 2048 → 512)
    inflation = 2 * (512 * 256 + 5 * 1024 * 256) + 2 * (1024 * 512 + 2 * 2048 * 512)
    backbone = sum(value.numel() for key, value in state.items()
                   if key.startswith("video_encoder.") and "num_batches" not in key and "running" not in key)
    assert backbone == 23_508_032 + inflation == 31_634_496


def test_a_frame_changes_only_the_tokens_within_the_reach_of_the_3x1x1_convs(encoder):
    assert encoder.model.video_encoder.temporal_reach == REACH
    frames = noise(12, 3, 32, 32, seed=3)
    changed = frames.clone()
    changed[5] = 0  # a black frame: the twin's tokens move most for a change of the frame's mean
    moved = (encoder(changed).embeds[0] - encoder(frames).embeds[0]).abs().amax(-1)
    near = torch.arange(12).sub(5).abs() <= REACH
    assert (moved[near] > 1e-6).all() and moved.argmax() == 5
    torch.testing.assert_close(moved[~near], torch.zeros(int((~near).sum())), rtol=0, atol=1e-7)


def test_clips_of_different_lengths_run_unpadded_and_are_masked(encoder):
    long, short, same = noise(10, 3, 40, 48, seed=5), noise(6, 3, 30, 36, seed=6), noise(10, 3, 24, 24, seed=7)
    out = encoder([long, short, same])
    assert out.embeds.shape == (3, 10, WIDTH)
    assert out.mask.sum(1).tolist() == [10, 6, 10] and out.mask[1, :6].all()
    assert torch.equal(out.embeds[1, 6:], torch.zeros(4, WIDTH))
    for b, clip in enumerate([long, short, same]):
        torch.testing.assert_close(out.embeds[b, :len(clip)], encoder(clip).embeds[0], rtol=1e-5, atol=1e-6)
    # padding the short clip in time would change its last tokens: the (3, 1, 1) convs see the padding
    padded = torch.cat([short, short.new_zeros(4, *short.shape[1:])])
    assert (encoder(padded).embeds[0, 5] - out.embeds[1, 5]).abs().max() > 1e-4


def test_the_encoder_is_frozen_and_stays_in_eval_mode(encoder):
    assert_frozen_in_eval_mode(encoder)


@pytest.mark.parametrize("frames,problem", BAD_FRAMES)
def test_bad_frames_are_refused_with_the_expected_layout(encoder, frames, problem):
    with pytest.raises(ValueError, match="CAVP") as err:
        encoder(frames)
    assert problem in str(err.value)


# Measured: float frames differ from the uint8 path only where the CPU's uint8 resize kernel and the float pass
# round a value differently (one grey level at most, see below); the twin's unit-norm tokens then differ by at most
# 1e-5 (noise clips of 40 × 48, 96 × 160 and 300 × 225, 8 seeds); frames already 224 × 224 are not resized.
MAX_TOKEN_DIFFERENCE = 1e-4


def test_differentiable_float_frames_give_the_uint8_tokens_and_a_gradient(encoder):
    clips = [noise(4, 3, 40, 48, seed=8), noise(3, 3, 224, 224, seed=9)]
    expected = encoder(clips)
    floats = [clip.float().requires_grad_() for clip in clips]
    out = encoder.differentiable(floats)
    assert torch.equal(out.mask, expected.mask)
    assert (out.embeds - expected.embeds).abs().max() <= MAX_TOKEN_DIFFERENCE
    torch.testing.assert_close(out.embeds[1, :3], expected.embeds[1, :3], rtol=1e-5, atol=1e-6)
    out.embeds[out.mask].sum().backward()
    assert all(clip.grad is not None and clip.grad.abs().sum() > 0 for clip in floats)
    assert expected.embeds.grad_fn is None


# Measured against PIL's Image.resize((224, 224), BILINEAR) on 8-bit images (torchvision's Resize((224, 224)) on a PIL
# image runs exactly that) over 12 sizes (16 × 17 to 1080 × 1920, up- and downscaling, both orientations), noise and
# smooth frames, 2 seeds (7.2 M values): the CPU's uint8 kernel differs by one grey level in 1.8 % of the values and
# never by more; at most 25 % of one frame's values (300 × 225: the width 225 → 224 a near-identity filter), under
# 0.3 % for most sizes; frames already 224 × 224 are not resized and match exactly. The float pass of the
# differentiable path also stays within one grey level (12 % of the values).
MAX_GREY_LEVELS = 1
MAX_FRACTION_DIFFERENT = 0.3


@pytest.mark.parametrize("height,width", [(224, 224), (17, 16), (96, 160), (300, 225), (480, 640), (1080, 1920)])
@pytest.mark.parametrize("content", ["noise", "smooth"])
def test_preprocessing_matches_pil_resize_and_to_tensor(height, width, content):
    frame = noise(3, height, width, seed=10) if content == "noise" else smooth(height, width, seed=10)
    image = Image.fromarray(frame.permute(1, 2, 0).numpy()).resize((224, 224), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255  # ToTensor
    for ours in (preprocess(frame[None])[0], preprocess(frame[None].float())[0]):
        assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
        grey_levels = ((ours - expected).abs() * 255).round()
        assert grey_levels.max() <= MAX_GREY_LEVELS
        assert (grey_levels > 0).float().mean() <= MAX_FRACTION_DIFFERENT
        if (height, width) == (224, 224):
            assert torch.equal(ours, expected)


def test_the_published_layout_round_trips_and_serves_both_branches(checkpoint, model, encoder):
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(key.startswith("module.") for key in state)
    for key in ("module.video_encoder.conv1.conv.weight", "module.video_encoder.conv1.bn.running_mean",
                "module.video_encoder.layer3.0.conv1.conv.weight", "module.video_encoder.layer1.0.downsample.bn.weight",
                "module.video_encoder.layer1.0.downsample.conv.weight", "module.video_project_head.bias",
                "module.spec_encoder.conv_block1.conv1.weight"):
        assert key in state, key
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.model.training
    assert encoder.model.video_encoder.stage_blocks == (1, 1, 1, 1) and encoder.embed_dim == WIDTH
    for key, value in model.state_dict().items():
        assert torch.equal(encoder.model.state_dict()[key], value), key
    assert load_cavp(checkpoint).embed_dim == TINY_CAVP["embed_dim"]  # the audio branch of the same file


def test_a_file_without_batchnorm_step_counters_loads_the_same_encoder(checkpoint, encoder, tmp_path):
    """BatchNorm's num_batches_tracked is unused in eval mode; a file saved without it holds every weight."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(trimmed) < len(state)
    torch.save({"state_dict": trimmed}, tmp_path / "counters.ckpt")
    frames = torch.randint(0, 256, (1, 3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_cavp_video(tmp_path / "counters.ckpt")(frames).embeds, encoder(frames).embeds)


def test_a_missing_file_names_the_key_the_file_and_the_fixes(tmp_path):
    for source in (tmp_path / "absent.ckpt", None, tmp_path):  # a folder without cavp_epoch66.ckpt
        with pytest.raises(CAVPWeightsMissing) as err:
            load_cavp_video(source, "model.encoder.path")
        message = str(err.value)
        assert "\n" not in message and isinstance(err.value, FileNotFoundError)
        for part in ("config key model.encoder.path", "cavp_epoch66.ckpt", "SimianLuo/Diff-Foley", "scale=tiny"):
            assert part in message


def test_a_file_without_a_fitting_video_branch_is_refused_in_one_line(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    cases = {
        "audio_only": ({k: v for k, v in state.items() if "spec_encoder" in k},
                       r"has no video_encoder\.\* or video_project_head\.\* weights"),
        "no_stage": ({k: v for k, v in state.items() if ".layer4." not in k}, r"lacks video_encoder\.layer4\.0\.\*"),
        "2d_kernel": ({**state, "module.video_encoder.layer3.0.conv1.conv.weight": torch.zeros(16, 32, 1, 1, 1)},
                      r"1 mis-shaped: video_encoder\.layer3\.0\.conv1\.conv\.weight \(16, 32, 1, 1, 1\) ≠ "
                      r"\(16, 32, 3, 1, 1\)"),
        "extra": ({**state, "module.video_encoder.layer1.0.conv4.conv.weight": torch.zeros(1)},
                  r"1 unexpected: video_encoder\.layer1\.0\.conv4\.conv\.weight"),
        "missing": ({k: v for k, v in state.items() if "layer2.0.conv2.bn.running_var" not in k},
                    r"1 missing: video_encoder\.layer2\.0\.conv2\.bn\.running_var"),
    }
    for name, (bad, pattern) in cases.items():
        torch.save({"state_dict": bad}, tmp_path / f"{name}.ckpt")
        with pytest.raises(CAVPCheckpointError, match=pattern) as err:
            load_cavp_video(tmp_path / f"{name}.ckpt")
        message = str(err.value)
        assert isinstance(err.value, ConfigError) and "\n" not in message, name
        assert "(config key model.encoder.path)" in message and "cavp_epoch66.ckpt" in message, name


@pytest.mark.parametrize("setting,key", [({"fps": 0}, "model.encoder.fps=0"),
                                         ({"normalize": False}, "model.encoder.normalize=False")])
def test_bad_settings_name_their_config_key(setting, key):
    with pytest.raises(ConfigError, match=key):
        load_cavp_video(None, **setting)


def test_the_registry_builds_the_tiny_twin_shared_with_the_audio_branch(tiny_dir, checkpoint, monkeypatch):
    assert "cavp" in VIDEO_ENCODERS
    built = build_video_encoder({"name": "cavp", "path": TINY_SOURCE, "fps": 8}, tiny_dir)
    assert isinstance(built, CAVPVideoEncoder) and built.fps == 8 and built.embed_dim == WIDTH
    assert built(noise(1, 3, 3, 32, 32)).seconds_per_token == Fraction(1, 8)
    folder = tiny_dir / f"cavp-v{avgen.backbones.tiny.TINY_VERSION}"
    assert [path.name for path in folder.iterdir()] == [TINY_FILE]
    assert isinstance(load_cavp(folder / TINY_FILE), CAVPAudio)  # what TempoTokens reads from tiny:cavp
    # model.encoder.path null: the audio branch's environment variable names the file
    monkeypatch.setenv("AVGEN_CAVP_PATH", str(checkpoint))
    from_env = build_video_encoder({"name": "cavp"}, None)
    assert from_env.fps == FPS and from_env.model.video_encoder.stage_blocks == (1, 1, 1, 1)
