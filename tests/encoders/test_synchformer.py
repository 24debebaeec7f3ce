"""Synchformer: the published key layout, the loader on tiny files in both published layouts and its
refusals, the harness's frame geometry, and the tiny twin end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.encoders.synchformer import (
    TINY_SYNCHFORMER,
    Synchformer,
    SynchformerFileError,
    centre_crop,
    load_synchformer,
    resize_short_side,
    save_official_format,
    sizes_from_state,
    sync_audio,
    sync_audio_segments,
    sync_video_segments,
)
from avgen.metrics.desync import desync_offsets
from avgen.pretrained import ExtractorWeightsMissing

HEADS = {k: v for k, v in TINY_SYNCHFORMER.items() if k.endswith("_heads")}


@pytest.fixture(scope="module")
def tiny() -> Synchformer:
    torch.manual_seed(0)
    model = Synchformer.tiny()
    with torch.no_grad():  # zero-initialised tokens and positions would hide a misplaced one
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_published_layout_keys_and_shapes():
    with torch.device("meta"):
        model = Synchformer()
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # 513 tensors, 237,460,245 numbers (907 MB as float32, MMAudio docs/MODELS.md): checked key for key and shape
    # against av-benchmark@050a5cd's own Synchformer() instantiated with torch 2.11
    assert len(state) == 513 and sum(np.prod(s) for s in state.values()) == 237_460_245
    expected = {
        "vfeat_extractor.patch_embed.proj.weight": (768, 3, 16, 16),          # unused 2-D stem, in the file
        "vfeat_extractor.patch_embed_3d.proj.weight": (768, 3, 2, 16, 16),
        "vfeat_extractor.pos_embed": (1, 197, 768), "vfeat_extractor.temp_embed": (1, 8, 768),
        "vfeat_extractor.blocks.11.timeattn.qkv.weight": (2304, 768), "vfeat_extractor.blocks.0.norm3.bias": (768,),
        "vfeat_extractor.spatial_attn_agg.cls_token": (1, 1, 768),
        "vfeat_extractor.spatial_attn_agg.self_attn.in_proj_weight": (2304, 768),
        "afeat_extractor.ast.embeddings.position_embeddings": (1, 74, 768),
        "afeat_extractor.ast.embeddings.patch_embeddings.projection.weight": (768, 1, 16, 16),
        "afeat_extractor.ast.encoder.layer.11.attention.attention.query.weight": (768, 768),
        "afeat_extractor.ast.encoder.layer.0.attention.output.dense.weight": (768, 768),
        "afeat_extractor.ast.layernorm.weight": (768,),
        "afeat_extractor.freq_attn_agg.linear1.weight": (3072, 768),
        "transformer.pos_emb_cfg.pos_emb": (1, 198, 768), "transformer.OFF_tok": (1, 1, 768),
        "transformer.blocks.2.attn.query.weight": (768, 768), "transformer.blocks.2.mlp.2.weight": (768, 3072),
        "transformer.off_head.weight": (21, 768), "vproj.weight": (768, 768), "aproj.bias": (768,),
    }
    assert {k: state[k] for k in expected} == expected
    assert not any(k.startswith(("vfeat_extractor.head", "vfeat_extractor.pre_logits")) for k in state)
    assert sizes_from_state(model.state_dict()) == {"width": 768, "video_depth": 12, "audio_depth": 12,
                                                    "sync_depth": 3, "image_size": 224}


@pytest.mark.parametrize("original", [False, True])
def test_tiny_round_trips_through_the_loader(tiny, tmp_path, original):
    path = tmp_path / ("24-01-04T16-39-21.pt" if original else "synchformer_state_dict.pth")
    save_official_format(tiny, path, original=original)
    loaded = load_synchformer(path, **HEADS)
    assert loaded.sizes == tiny.sizes and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.weights["synchformer"][0] == str(path)
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_loader_refusals_name_the_file_and_the_key(tiny, tmp_path):
    with pytest.raises(ExtractorWeightsMissing, match="evaluate.desync.path"):
        load_synchformer(tmp_path / "absent.pth")
    state = tiny.state_dict()
    del state["transformer.off_head.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(SynchformerFileError) as err:
        load_synchformer(tmp_path / "short.pth", config_key="my.key", **HEADS)
    message = str(err.value)
    assert "\n" not in message and "short.pth (config key my.key)" in message
    assert "1 missing: transformer.off_head.bias" in message
    torch.save({"model": tiny.state_dict(), "cfg": Path("x")}, tmp_path / "pickled.pt")  # a non-tensor global
    with pytest.raises(SynchformerFileError) as err:
        load_synchformer(tmp_path / "pickled.pt", **HEADS)
    assert "\n" not in str(err.value) and "weights_only=True" in str(err.value)


def test_frames_are_resized_on_the_short_side_and_centre_cropped():
    frames = torch.randint(0, 256, (2, 3, 45, 70), dtype=torch.uint8)
    resized = resize_short_side(frames, 32)
    assert resized.shape == (2, 3, 32, 49) and resized.dtype == torch.uint8  # int(32 · 70 / 45) = 49
    assert resize_short_side(frames.transpose(2, 3), 32).shape == (2, 3, 49, 32)
    grid = torch.arange(49).expand(32, 49)
    assert centre_crop(grid, 32)[0].tolist() == list(range(8, 40))  # left = int(round(17 / 2)) = 8 (half to even)
    assert centre_crop(torch.arange(50).expand(3, 50), 3)[0].tolist() == [24, 25, 26]  # round(23.5) = 24


def test_tiny_twin_end_to_end_shapes(tiny):
    torch.manual_seed(1)
    frames = torch.randint(0, 256, (200, 40, 52, 3), dtype=torch.uint8)
    audio = sync_audio(0.1 * torch.randn(2, 8 * 22050), 22050, 8.0)  # (C, N) at 22.05 kHz → mono 16 kHz
    video, mel = sync_video_segments(frames, 32), sync_audio_segments(audio)
    assert video.shape == (24, 16, 3, 32, 32) and mel.shape == (24, 128, 66) and audio.shape == (128000,)
    vis, aud = tiny.extract_vfeats(video[None]), tiny.extract_afeats(mel[None])
    assert vis.shape == (1, 24, 8, 16) and aud.shape == (1, 24, 6, 16)
    logits = tiny.compare_v_a(vis[:, :14], aud[:, :14])
    assert logits.shape == (1, 21) and torch.isfinite(logits).all()
    first, last = desync_offsets(tiny, video, mel)
    assert first == pytest.approx(-2 + 0.2 * int(logits.argmax()), abs=1e-9)
    assert last == pytest.approx(-2 + 0.2 * int(tiny.compare_v_a(vis[:, -14:], aud[:, -14:]).argmax()), abs=1e-9)
    with pytest.raises(ValueError, match="compares 14 segments"):
        tiny.compare_v_a(vis[:, :13], aud[:, :13])
