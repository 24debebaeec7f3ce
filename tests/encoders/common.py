"""Inputs and checks shared by the tests of the conditioning video encoders (:mod:`avgen.encoders.frames`): random
uint8 frames, the frozen rule, the message of a missing model, and the settings and frames every encoder refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avgen.backbones.loader import PretrainedModelMissing
from avgen.encoders.base import VideoTokens


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    """uint8 frames of uniform noise: every pixel differs, so a misplaced crop or a swapped frame or window shows."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def smooth(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W) uint8: random colours on an 8× coarser grid, bilinearly upsampled (a picture-like frame)."""
    coarse = torch.rand(1, 3, height // 8 + 2, width // 8 + 2, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(coarse, size=(height, width), mode="bilinear")[0] * 255).round().to(torch.uint8)


def assert_frozen_in_eval_mode(encoder: torch.nn.Module) -> None:
    """The frozen rule: inside a parent put in training mode the encoder stays in eval mode, with no gradients."""
    parent = torch.nn.ModuleDict({"encoder": encoder, "projection": torch.nn.Linear(encoder.embed_dim, 8)}).train()
    assert parent.projection.training and not encoder.training
    assert not any(module.training for module in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder(noise(1, 2, 3, 32, 32)).embeds.grad_fn is None


def assert_one_token_per_frame(encoder: torch.nn.Module, frames: torch.Tensor,
                               reference: Callable[[torch.Tensor], torch.Tensor]) -> VideoTokens:
    """A per-frame encoder: frames (B, F, 3, H, W) give embeds (B, F, D) float32, clip b's equal to
    ``reference(frames[b])`` (F, D), an all-True mask, and one clip (F, 3, H, W) is a batch of one. Returns the
    tokens."""
    out = encoder(frames)
    batch, length = frames.shape[:2]
    assert out.embeds.shape == (batch, length, encoder.embed_dim) and out.embeds.dtype == torch.float32
    assert out.mask.dtype == torch.bool and out.mask.shape == (batch, length) and out.mask.all()
    for b in range(batch):
        torch.testing.assert_close(out.embeds[b], reference(frames[b]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoder(frames[-1]).embeds, out.embeds[-1:], rtol=1e-5, atol=1e-6)
    return out


def assert_padded_at_the_end(encoder: torch.nn.Module, long: torch.Tensor, short: torch.Tensor) -> VideoTokens:
    """A per-frame encoder: the batch [long, short] of clips (F, 3, H, W) holds each clip's own embeddings, the short
    one zero-padded at the end. Returns the batch's tokens, for the test to check the mask."""
    out = encoder([long, short])
    assert out.embeds.shape == (2, len(long), encoder.embed_dim)
    assert torch.equal(out.embeds[1, len(short):], torch.zeros(len(long) - len(short), encoder.embed_dim))
    torch.testing.assert_close(out.embeds[0], encoder(long).embeds[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.embeds[1, :len(short)], encoder(short).embeds[0], rtol=1e-5, atol=1e-6)
    return out


def assert_permuting_frames_permutes_embeddings(encoder: torch.nn.Module, frames: torch.Tensor,
                                                order: list[int]) -> None:
    """A per-frame encoder: frames (1, F, 3, H, W) in ``order`` give the embeddings in ``order``."""
    embeds = encoder(frames).embeds
    torch.testing.assert_close(encoder(frames[:, order]).embeds, embeds[:, order], rtol=1e-5, atol=1e-6)
    distances = torch.cdist(embeds[0], embeds[0])
    assert distances[~torch.eye(len(order), dtype=torch.bool)].min() > 1e-3  # distinct frames, so the check can fail


def assert_reversing_the_windows_reverses_the_tokens(encoder: torch.nn.Module, window: int, slots: int) -> None:
    """A windowed encoder: two windows of ``window`` frames swapped give their ``slots`` tokens each swapped."""
    first, second = noise(window, 3, 40, 48, seed=1), noise(window, 3, 40, 48, seed=2)
    forward = encoder(torch.cat([first, second])).embeds[0]
    backward = encoder(torch.cat([second, first])).embeds[0]
    torch.testing.assert_close(backward, torch.cat([forward[slots:], forward[:slots]]), rtol=1e-5, atol=1e-6)
    assert (forward[:slots] - forward[slots:]).abs().max() > 1e-3  # distinct windows, so the check can fail


def assert_missing_model_names_the_fixes(load: Callable[..., object], missing: type[Exception], tmp_path: Path,
                                         hub_id: str, cache_folder: str, tiny_source: str) -> None:
    """``load`` of an absent folder raises ``missing``: a one-line ``PretrainedModelMissing`` naming the folder,
    the config key, the download command and hub cache folder of ``hub_id``, and both settings that fix it."""
    with pytest.raises(missing) as err:
        load(tmp_path / "absent", "model.video_encoder.path")
    message = str(err.value)
    assert isinstance(err.value, PretrainedModelMissing) and "\n" not in message
    assert message.startswith(f"cannot load {tmp_path / 'absent'} from local files "
                              f"(config key model.video_encoder.path)")
    for part in (f"huggingface-cli download {hub_id}", cache_folder, "model.video_encoder.path=/path/to/folder",
                 f"model.video_encoder.path={tiny_source}"):
        assert part in message


#: ``(setting, the config key and value the ConfigError names)``: settings every encoder with ``normalize`` refuses
BAD_SETTINGS = [({"fps": 0}, "model.encoder.fps=0"), ({"normalize": "yes"}, "model.encoder.normalize='yes'")]

#: ``(frames, a part of the ValueError's message)``: inputs every encoder refuses
#: (:func:`avgen.encoders.frames.check_clips`)
BAD_FRAMES = [
    (torch.zeros(1, 2, 3, 32, 32), "uint8"),                            # float frames
    (torch.zeros(2, 32, 32, 3, dtype=torch.uint8), "channels first"),  # channels last
    ([], "no clips"),
    ([torch.zeros(0, 3, 32, 32, dtype=torch.uint8)], "empty"),
]
