"""ImageBind audio–video score: official key layout, file round trip, ImageBind's transforms on hand cases,
towers against a step-by-step re-computation, and the metric's accumulation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from avgen.encoders.imagebind import (
    CLIP_MEAN,
    CLIP_STD,
    TINY_IMAGEBIND,
    ImageBindAV,
    audio_clip_bounds,
    audio_clips,
    constant_clip_timepoints,
    load_imagebind,
    log_mel_fbank,
    save_official_format,
    short_side_scale,
    uniform_crop_offsets,
    video_clip_indices,
    video_clips,
)
from avgen.metrics.imagebind import ImageBindScore, av_cosine
from avgen.pretrained import ExtractorWeightsMissing

KALDI_ARGS = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning", num_mel_bins=128,
                  dither=0.0, frame_length=25, frame_shift=10)  # imagebind/data.py waveform2melspec


@pytest.fixture(scope="module")
def tiny() -> ImageBindAV:
    torch.manual_seed(0)
    return ImageBindAV.tiny()


def _official_keys(d_v: int, blocks_v: int, d_a: int, blocks_a: int, out: int, vision_tokens: int,
                   audio_tokens: int) -> dict[str, tuple[int, ...]]:
    """Vision + audio keys of ImageBindModel.state_dict() and their shapes, read off the official
    imagebind_model.py / multimodal_preprocessors.py / transformer.py / helpers.py (and matching the key
    map of the transformers ImageBind conversion script)."""
    keys = {
        # RGBDTPreprocessor: own cls_token, rgbt_stem = PatchEmbedGeneric(Sequential(PadIm2Video, Conv3d)),
        # pos_embedding_helper = SpatioTemporalPosEmbeddingHelper(learnable)
        "modality_preprocessors.vision.cls_token": (1, 1, d_v),
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": (d_v, 3, 2, 14, 14),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (1, vision_tokens, d_v),
        # AudioPreprocessor: a single-layer stem is stored as proj itself, plus the stem's LayerNorm
        "modality_preprocessors.audio.cls_token": (1, 1, d_a),
        "modality_preprocessors.audio.rgbt_stem.proj.weight": (d_a, 1, 16, 16),
        "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": (d_a,),
        "modality_preprocessors.audio.rgbt_stem.norm_layer.bias": (d_a,),
        "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, audio_tokens, d_a),
        # vision trunk: pre_transformer_layer = Sequential(LayerNorm, EinOpsRearrange); audio: Identity
        "modality_trunks.vision.pre_transformer_layer.0.weight": (d_v,),
        "modality_trunks.vision.pre_transformer_layer.0.bias": (d_v,),
        # heads: Sequential(LayerNorm, SelectElement, Linear(bias=False))
        "modality_heads.vision.0.weight": (d_v,), "modality_heads.vision.0.bias": (d_v,),
        "modality_heads.vision.2.weight": (out, d_v),
        "modality_heads.audio.0.weight": (d_a,), "modality_heads.audio.0.bias": (d_a,),
        "modality_heads.audio.2.weight": (out, d_a),
        # audio postprocessor: Sequential(Normalize, LearnableLogitScaling(learnable=False)) → a buffer
        "modality_postprocessors.audio.1.log_logit_scale": (),
    }
    for modality, d, blocks in (("vision", d_v, blocks_v), ("audio", d_a, blocks_a)):
        for i in range(blocks):
            p = f"modality_trunks.{modality}.blocks.{i}."
            keys.update({p + "attn.in_proj_weight": (3 * d, d), p + "attn.in_proj_bias": (3 * d,),
                         p + "attn.out_proj.weight": (d, d), p + "attn.out_proj.bias": (d,),
                         p + "norm_1.weight": (d,), p + "norm_1.bias": (d,),
                         p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                         p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,),
                         p + "norm_2.weight": (d,), p + "norm_2.bias": (d,)})
            if modality == "audio":  # instantiate_trunk(add_bias_kv=True) for audio only
                keys.update({p + "attn.bias_k": (1, 1, d), p + "attn.bias_v": (1, 1, d)})
    return keys


def test_huge_keys_shapes_and_parameter_counts():
    with torch.device("meta"):
        model = ImageBindAV()
    state = model.state_dict()
    # vision: 224/14 = 16 → 16·16 patches (one temporal patch of 2 frames) + CLS = 257;
    # audio: Conv2d(16, stride 10) on 128 × 204 → 12 × 19 = 228 patches + CLS = 229
    expected = _official_keys(1280, 32, 768, 12, 1024, 257, 229)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(".blocks." in k and k.startswith("modality_trunks.vision") for k in state) == 32 * 12
    assert sum(".blocks." in k and k.startswith("modality_trunks.audio") for k in state) == 12 * 14
    counts = {m: sum(p.numel() for k, p in model.named_parameters() if k.split(".")[1] == m)
              for m in ("vision", "audio")}
    # vision: stem 1280·3·2·14·14 = 1,505,280; cls 1,280; pos 257·1280 = 328,960; pre-LN 2,560;
    #   block = 3·1280² + 3·1280 (in_proj) + 1280² + 1280 (out_proj) + 2·2·1280 (norms)
    #         + 2·(4·1280²) + 4·1280 + 1280 (MLP) = 19,677,440, ×32 = 629,678,080;
    #   head LN 2,560 + Linear 1280·1024 = 1,310,720 → 632,829,440
    # audio: stem 768·16·16 = 196,608 + LN 1,536; cls 768; pos 229·768 = 175,872;
    #   block = 3·768² + 3·768 + 768² + 768 + 2·768 (bias_k, bias_v) + 2·2·768 + 2·(4·768²) + 4·768 + 768
    #         = 7,089,408, ×12 = 85,072,896; head LN 1,536 + Linear 768·1024 = 786,432 → 86,235,648
    assert counts == {"vision": 632_829_440, "audio": 86_235_648}
    assert [k for k, _ in model.named_buffers()] == ["modality_postprocessors.audio.1.log_logit_scale"]


def test_tiny_keys_follow_the_same_layout(tiny):
    # 28/14 = 2 → 4 patches + CLS; audio front end unchanged (229 tokens)
    expected = _official_keys(32, 2, 16, 2, 16, 5, 229)
    assert {k: tuple(v.shape) for k, v in tiny.state_dict().items()} == expected
    assert math.isclose(tiny.state_dict()["modality_postprocessors.audio.1.log_logit_scale"].exp().item(), 20.0,
                        rel_tol=1e-6)


def _media(seed: int, n: int = 2, seconds: float = 3.0, fps: int = 8, h: int = 30, w: int = 40):
    g = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(n, int(16000 * seconds), generator=g)
    frames = torch.rand(n, int(fps * seconds), 3, h, w, generator=g) * 2 - 1
    return frames, audio


def test_official_format_round_trip(tiny, tmp_path):
    path = tmp_path / "imagebind_tiny.pth"
    save_official_format(tiny, path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert list(saved) == list(tiny.state_dict())
    # the official file also holds the other modalities: they are dropped on load
    saved["modality_preprocessors.text.mask"] = torch.zeros(4, 4)
    saved["modality_trunks.text.blocks.0.attn.in_proj_weight"] = torch.zeros(6, 2)
    saved["modality_postprocessors.imu.1.log_logit_scale"] = torch.zeros(())
    torch.save(saved, path)

    loaded = load_imagebind(path, **TINY_IMAGEBIND)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.weights["imagebind"][0] == str(path)
    frames, audio = _media(1)
    assert torch.equal(loaded.audio_embedding(audio), tiny.audio_embedding(audio))
    assert torch.equal(loaded.vision_embedding(frames, 8), tiny.vision_embedding(frames, 8))
    assert ImageBindScore(loaded).describe()["sha256"]["imagebind"] == loaded.weights["imagebind"][1]


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_bad_file_names_file_and_key(tiny, tmp_path, change):
    state = dict(tiny.state_dict())
    key = "modality_trunks.audio.blocks.1.attn.bias_k"
    if change == "missing":
        del state[key]
    elif change == "extra":
        key = "modality_trunks.audio.blocks.2.attn.bias_k"
        state[key] = torch.zeros(1, 1, 16)
    else:
        state[key] = torch.zeros(1, 1, 17)
    path = tmp_path / f"bad_{change}.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"{path}.*{key}"):
        load_imagebind(path, **TINY_IMAGEBIND)


def test_missing_file_names_config_key_and_file(tmp_path):
    for path in (tmp_path / "nowhere.pth", None):
        with pytest.raises(ExtractorWeightsMissing) as info:
            load_imagebind(path)
        assert "evaluate.imagebind.path" in str(info.value) and "imagebind_huge.pth" in str(info.value)


# ------------------------------------------------------------------------------------------ transforms


def test_clip_placement_constant_clips_per_video():
    # m = max(duration − 2, 0); starts k·m/3
    assert constant_clip_timepoints(10.0, 2, 3) == [(0, 2), (Fraction(8, 3), Fraction(14, 3)),
                                                    (Fraction(16, 3), Fraction(22, 3))]
    # 10 s at 16 kHz: int(start · 16000), int(end · 16000)
    assert audio_clip_bounds(160_000) == [(0, 32000), (42666, 74666), (85333, 117333)]
    # shorter than 2 s: three copies of [0, 2 s) running past the end
    assert audio_clip_bounds(16_000) == [(0, 32000)] * 3
    assert audio_clip_bounds(32_000) == [(0, 32000)] * 3
    # video: 5 clips of 2 s; 32 frames at 8 fps (4 s): starts 0, 0.4, 0.8, 1.2, 1.6 s → first frames
    # ceil(8·start) = 0, 4, 7, 10, 13, ends ceil(8·(start + 2)) = 16, 20, 23, 26, 29; 2 frames: first and last
    assert video_clip_indices(32, 8) == [[0, 15], [4, 19], [7, 22], [10, 25], [13, 28]]
    assert video_clip_indices(10, 10) == [[0, 9]] * 5     # 1 s: the whole video five times
    assert video_clip_indices(1, 8) == [[0, 0]] * 5       # one frame: repeated
    assert video_clip_indices(32, 8, frames_per_clip=4) == [
        [s + i for i in (0, 5, 10, 15)] for s in (0, 4, 7, 10, 13)]  # linspace(0, 15, 4) = 0, 5, 10, 15
    with pytest.raises(ValueError, match="no frames"):
        video_clip_indices(0, 8)


def test_audio_front_end_is_kaldi_fbank_then_normalise():
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(32000, generator=g) + 0.05  # 2 s with a DC offset
    fbank = torchaudio.compliance.kaldi.fbank((wave - wave.mean())[None], **KALDI_ARGS)  # (198, 128)
    assert fbank.shape == (198, 128)
    expected = (F.pad(fbank.T, (0, 204 - 198)) + 4.268) / 9.138
    out = audio_clips(wave)
    assert out.shape == (3, 1, 128, 204)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-6)
    for clip in out[1:]:  # more copies of [0, 2 s), re-centring an already centred clip (float rounding only)
        torch.testing.assert_close(clip[0], expected, rtol=0, atol=1e-4)
    # cut to the target length
    assert torch.equal(log_mel_fbank((wave - wave.mean())[None], target_length=100)[0], fbank.T[:, :100])


def test_audio_front_end_overlapping_clips_as_the_official_loop():
    """3 s audio: clips [0, 2), [1/3, 7/3), [2/3, 8/3) s overlap; the official loop centres each clip in
    place on a view of the one waveform, so later clips see the earlier shifts."""
    g = torch.Generator().manual_seed(1)
    wave = torch.randn(48000, generator=g) * 0.1 + torch.linspace(0, 0.5, 48000)
    shared, expected = wave[None].clone(), []
    for a, b in [(0, 32000), (5333, 37333), (10666, 42666)]:
        view = shared[:, a:b]
        view -= view.mean()
        fb = torchaudio.compliance.kaldi.fbank(view, **KALDI_ARGS).T
        expected.append((F.pad(fb, (0, 204 - fb.shape[1]))[None] + 4.268) / 9.138)
    assert audio_clip_bounds(48000) == [(0, 32000), (5333, 37333), (10666, 42666)]
    torch.testing.assert_close(audio_clips(wave), torch.stack(expected), rtol=0, atol=1e-5)


def test_audio_inputs_resample_and_reject_empty(tiny):
    g = torch.Generator().manual_seed(2)
    wave = 0.1 * torch.randn(24000, generator=g)  # 3 s at 8 kHz
    resampled = torchaudio.functional.resample(wave, 8000, 16000)
    torch.testing.assert_close(tiny.audio_inputs([wave.numpy()], sample_rate=8000)[0], audio_clips(resampled))
    with pytest.raises(ValueError, match="empty"):
        tiny.audio_inputs([np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="400 samples"):
        tiny.audio_inputs(torch.zeros(1, 399))


def test_three_crops_on_non_square_frames():
    # landscape 28 × 56: left / centre / right; portrait 57 × 28: top / ceil(29/2) = 15 / bottom; square: all 0
    assert [uniform_crop_offsets(28, 56, 28, i) for i in range(3)] == [(0, 0), (0, 14), (0, 28)]
    assert [uniform_crop_offsets(57, 28, 28, i) for i in range(3)] == [(0, 0), (15, 0), (29, 0)]
    assert [uniform_crop_offsets(28, 28, 28, i) for i in range(3)] == [(0, 0)] * 3

    g = torch.Generator().manual_seed(3)
    frames = torch.rand(16, 3, 30, 61, generator=g)  # 2 s at 8 fps, landscape
    views = video_clips(frames, fps=8, image_size=28)
    assert views.shape == (15, 3, 2, 28, 28)
    scaled = F.interpolate(frames, size=(28, 56), mode="bilinear", align_corners=False)  # floor(61/30·28) = 56
    assert short_side_scale(frames, 28).shape[-2:] == (28, 56)
    scaled = (scaled - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    picks = scaled[[0, 15]].transpose(0, 1)  # every clip is the whole 2 s video: frames 0 and 15, (C, T, H, W)
    for clip in range(5):
        for crop, left in enumerate((0, 14, 28)):
            torch.testing.assert_close(views[3 * clip + crop], picks[..., left:left + 28])


def test_vision_inputs_uint8_and_float_agree(tiny):
    g = torch.Generator().manual_seed(4)
    clip = torch.randint(0, 256, (20, 32, 36, 3), dtype=torch.uint8, generator=g)
    from_uint8 = tiny.vision_inputs([clip.numpy()], fps=8)
    from_float = tiny.vision_inputs((clip.permute(0, 3, 1, 2).float() / 127.5 - 1)[None], fps=8)
    assert from_uint8.shape == (1, 15, 3, 2, 28, 28)
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- towers


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _manual_tower(sd, modality, tokens, heads, pre_ln, bias_kv):
    """tokens (N, L, D) after the stem → normalised head output, written out step by step."""
    p = f"modality_preprocessors.{modality}."
    n, _, d = tokens.shape
    x = torch.cat([sd[p + "cls_token"].expand(n, 1, d), tokens], dim=1) + sd[p + "pos_embedding_helper.pos_embed"]
    if pre_ln:
        x = _layer_norm(x, sd[f"modality_trunks.{modality}.pre_transformer_layer.0.weight"],
                        sd[f"modality_trunks.{modality}.pre_transformer_layer.0.bias"], 1e-6)
    i = 0
    while f"modality_trunks.{modality}.blocks.{i}.norm_1.weight" in sd:
        b = f"modality_trunks.{modality}.blocks.{i}."
        h = _layer_norm(x, sd[b + "norm_1.weight"], sd[b + "norm_1.bias"], 1e-6)
        q, k, v = (h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        if bias_kv:  # nn.MultiheadAttention(add_bias_kv=True): one learnt key / value appended after projection
            k = torch.cat([k, sd[b + "attn.bias_k"].expand(n, 1, d)], dim=1)
            v = torch.cat([v, sd[b + "attn.bias_v"].expand(n, 1, d)], dim=1)

        def split(t):
            return t.reshape(n, t.shape[1], heads, d // heads).transpose(1, 2)

        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ split(v)
        att = att.transpose(1, 2).reshape(n, -1, d)
        x = x + att @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
        h = _layer_norm(x, sd[b + "norm_2.weight"], sd[b + "norm_2.bias"], 1e-6)
        h = h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        i += 1
    h = _layer_norm(x[:, 0], sd[f"modality_heads.{modality}.0.weight"], sd[f"modality_heads.{modality}.0.bias"], 1e-6)
    out = h @ sd[f"modality_heads.{modality}.2.weight"].T
    return out / out.norm(dim=-1, keepdim=True)


def test_audio_tower_equals_step_by_step(tiny):
    sd = tiny.state_dict()
    g = torch.Generator().manual_seed(5)
    fbanks = torch.randn(3, 1, 128, 204, generator=g)
    patches = F.conv2d(fbanks, sd["modality_preprocessors.audio.rgbt_stem.proj.weight"], stride=10)
    tokens = patches.flatten(2).transpose(1, 2)                       # (3, 12·19, D), row-major over (mel, time)
    tokens = _layer_norm(tokens, sd["modality_preprocessors.audio.rgbt_stem.norm_layer.weight"],
                         sd["modality_preprocessors.audio.rgbt_stem.norm_layer.bias"], 1e-5)
    expected = 20.0 * _manual_tower(sd, "audio", tokens, heads=2, pre_ln=False, bias_kv=True)
    torch.testing.assert_close(tiny.embed_audio(fbanks), expected, rtol=1e-5, atol=1e-5)


def test_vision_tower_equals_step_by_step(tiny):
    sd = tiny.state_dict()
    g = torch.Generator().manual_seed(6)
    views = torch.randn(4, 3, 2, 28, 28, generator=g)
    tokens = F.conv3d(views, sd["modality_preprocessors.vision.rgbt_stem.proj.1.weight"], stride=(2, 14, 14))
    expected = _manual_tower(sd, "vision", tokens.flatten(2).transpose(1, 2), heads=2, pre_ln=True, bias_kv=False)
    torch.testing.assert_close(tiny.embed_vision(views), expected, rtol=1e-5, atol=1e-5)
    # an image is repeated to two frames (PadIm2Video)
    repeated = views[:, :, :1].repeat(1, 1, 2, 1, 1)
    torch.testing.assert_close(tiny.embed_vision(views[:, :, 0]), tiny.embed_vision(repeated))


def test_forward_averages_postprocessed_subclips(tiny):
    g = torch.Generator().manual_seed(7)
    fbanks = torch.randn(2, 3, 1, 128, 204, generator=g)
    out = tiny({"audio": fbanks})["audio"]
    torch.testing.assert_close(out, tiny.embed_audio(fbanks.flatten(0, 1)).view(2, 3, -1).mean(1))
    frames, audio = _media(8)
    torch.testing.assert_close(tiny.audio_embedding(audio), tiny({"audio": tiny.audio_inputs(audio)})["audio"])


# ---------------------------------------------------------------------------------------------- metric


def test_cosine_of_equal_and_opposite_embeddings():
    e = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    torch.testing.assert_close(av_cosine(20 * e, e), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(av_cosine(e, -e), -torch.ones(2, dtype=torch.float64))


def test_metric_states_merge_and_match_per_clip_scores(tiny):
    frames, audio = _media(9, n=4)
    whole = ImageBindScore(tiny)
    whole.update(frames, audio, 16000)
    assert whole.count.item() == 4
    scores = av_cosine(tiny.audio_embedding(audio), tiny.vision_embedding(frames, 8))
    torch.testing.assert_close(whole.compute(), scores.mean())
    # fps defaults to frames / audio seconds (24 frames over 3 s = 8 fps)
    torch.testing.assert_close(whole.clip_scores(frames, audio, 16000, fps=8.0), scores)

    first, second = ImageBindScore(tiny), ImageBindScore(tiny)
    first.update(frames[:1], audio[:1], 16000)
    uint8 = ((frames[1:] + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
    second.update([c.numpy() for c in uint8], [a.numpy() for a in audio[1:]], 16000, fps=[8, 8, 8])
    first.merge_state(second)
    assert first.count.item() == 4 and first.score_sum.dtype == torch.float64
    torch.testing.assert_close(first.compute(), whole.compute(), rtol=0, atol=1e-3)  # uint8 quantisation only
    describe = whole.describe()
    assert describe["name"] == "imagebind" and describe["scale"] == "raw cosine"
    assert describe["sha256"] == {} and describe["config"]["vision_num_blocks"] == 2


def test_metric_errors_and_eval_mode(tiny):
    metric = ImageBindScore(tiny)
    with pytest.raises(ValueError, match="no clips"), pytest.warns(UserWarning, match="before the ``update``"):
        metric.compute()
    frames, audio = _media(10, n=2)
    with pytest.raises(ValueError, match="2 videos and 1 audio"):
        metric.update(frames, audio[:1], 16000)
    parent = torch.nn.ModuleDict({"score": metric})
    parent.train()
    assert metric.training and not metric.model.training
    assert not any(m.training for m in metric.model.modules())
