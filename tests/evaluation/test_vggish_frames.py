"""``evaluate.metrics=[fd_vggish_frames]``: av-benchmark's FD-VGG with a tiny VGGish in the released layout — every
0.96 s frame of audio cut to 8 s (never padded) against all reference clips, its features stored apart from
``fad``'s."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.encoders.audio_input import AudioInput
from avgen.encoders.vggish import TINY_VGGISH, VGGishFeatures
from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.media import write_mp4
from avgen.metrics.av_align import load_av
from avgen.metrics.frechet import ReferenceStats, frechet_distance

GEO = ClipGeometry(seconds=2.0, fps=8, height=32, width=32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = VGGishFeatures.tiny()
    with torch.no_grad():  # a tiny net whose embeddings differ between frames well above float32 rounding
        for layer in (model.embeddings[0], model.embeddings[2], model.embeddings[4]):
            layer.weight.mul_(8)
    path = tmp_path_factory.mktemp("vggish") / "vggish-10086976.pth"
    torch.save(model.state_dict(), path)
    return path


def options(weights: Path, **extra) -> dict:
    return {"fd_vggish_frames": {"vggish_path": str(weights), **TINY_VGGISH, **extra}}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    """pred: three 2-s sounding mp4s; ref: two other clips and one 9-s clip with 22.05 kHz audio (cut to 8 s)."""
    pred, ref = tmp_path_factory.mktemp("pred"), tmp_path_factory.mktemp("ref")
    for i in range(3):
        clip = generate_clip(80 + i, GEO)
        write_mp4(pred / f"g{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
    for i in range(2):
        clip = generate_clip(90 + i, GEO)
        write_mp4(ref / f"r{i}.mp4", clip.frames, GEO.fps, audio=clip.audio * 0.5, sample_rate=GEO.sample_rate)
    long = ClipGeometry(seconds=9.0, fps=8, height=32, width=32, sample_rate=22050)
    clip = generate_clip(95, long)
    write_mp4(ref / "r2.mp4", clip.frames, long.fps, audio=clip.audio, sample_rate=22050)
    return pred, ref


def frames_of(weights: Path, audio: np.ndarray, sr: int) -> torch.Tensor:
    """The tiny VGGish's per-frame embeddings (E, 128) of one clip under the harness's input rule, outside the
    scorer."""
    model = VGGishFeatures(str(weights), per_example=True, embedding_relu=False, **TINY_VGGISH)
    with torch.no_grad():
        return model(AudioInput(16000, 8.0)(audio, sr)[None]).double()


def test_fd_is_over_every_frame_of_all_clips_against_all_references(tmp_path, clips, weights):
    pred, ref = clips
    result = evaluate_folder(pred, tmp_path / "out", metrics=["fd_vggish_frames"], ref_dir=ref,
                             cache_dir=tmp_path / "cache", **options(weights))
    fake = torch.cat([frames_of(weights, *load_av(p)[2:]) for p in sorted(pred.glob("*.mp4"))])
    long = frames_of(weights, *load_av(ref / "r2.mp4")[2:])
    real = torch.cat([frames_of(weights, *load_av(ref / f"r{i}.mp4")[2:]) for i in range(2)] + [long])
    assert fake.shape[0] == 3 * 2 and long.shape[0] == 8  # 2-s clips: 2 frames; the 9-s file is cut to 8 frames
    assert (fake < 0).any()  # no ReLU after the 128-d layer
    assert fake.std(dim=0).mean() > 0.1  # the frames differ: the distance is not rounding noise
    a, b = ReferenceStats.from_features(real), ReferenceStats.from_features(fake)
    expected = frechet_distance(a.mu, a.sigma, b.mu, b.sigma).item()
    assert result["metrics"]["fd_vggish_frames"] == pytest.approx(expected, rel=1e-6)
    info = json.loads((tmp_path / "out" / "metrics.json").read_text())["extractors"]["fd_vggish_frames"]
    assert info["harness_key"] == "FD-VGG" and info["protocol"].startswith("av-benchmark@050a5cd")
    assert info["sample_rate"] == 16000 and "cut to 8 s" in info["length_rule"] and "not padded" in info["length_rule"]
    assert info["reference_examples"] == 2 + 2 + 8 and info["reference"].startswith("all clips")


def test_the_input_rule_cuts_never_pads_and_removes_dc(weights):
    from avgen.evaluation.scorers import VGGishFramesScorer

    scorer = VGGishFramesScorer("fd_vggish_frames", options(weights)["fd_vggish_frames"], "cpu")
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.3, 0.3, 44100 * 12).astype(np.float32)
    wave = scorer.model_input(None, audio, 44100)
    assert wave.shape == (1, 128000)  # 8 s at 16 kHz
    short = scorer.model_input(None, audio[:44100 * 3], 44100)
    assert short.shape == (1, 48000)  # 3 s: not padded
    shifted = scorer.model_input(None, audio + 0.25, 44100)
    torch.testing.assert_close(shifted, wave, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert scorer.extractor(wave).shape[0] == 8 and scorer.extractor(short).shape[0] == 3
    with pytest.raises(ValueError, match="shorter than one VGGish frame"):
        scorer.model_input(None, audio[:int(44100 * 0.9)], 44100)


def test_features_are_stored_apart_from_fad_and_settings_are_checked(tmp_path, clips, weights):
    from avgen.evaluation.scorers import FADScorer, VGGishFramesScorer

    pred, ref = clips
    frames = VGGishFramesScorer("fd_vggish_frames", options(weights)["fd_vggish_frames"], "cpu")
    fad = FADScorer("fad", {"vggish_path": str(weights), **TINY_VGGISH}, "cpu")
    assert frames.feature_namespace() != fad.feature_namespace()
    assert frames.feature_namespace()["preprocessing"]["input"]["remove_dc"] is True
    for key in ("pca_path", "embedding_relu", "per_example", "sample_rate"):
        with pytest.raises(ConfigError, match=f"evaluate.fd_vggish_frames.{key}: fixed by av-benchmark"):
            VGGishFramesScorer("fd_vggish_frames", options(weights, **{key: None})["fd_vggish_frames"], "cpu")
    with pytest.raises(ConfigError, match="evaluate.fd_vggish_frames.seconds=0"):
        VGGishFramesScorer("fd_vggish_frames", options(weights, seconds=0)["fd_vggish_frames"], "cpu")
    from avgen.cli import check_overrides

    check_overrides(["evaluate.fd_vggish_frames.seconds=4", "evaluate.metrics=[fd_vggish_frames]"])


def test_evaluate_audio_file_scores_the_raw_audio_beside_each_clip(tmp_path, weights):
    """``evaluate.audio=file``: the <stem>.wav beside each clip (and each reference) is scored instead of the mp4's
    AAC stream, which is lossy and padded (2.048 s for 2 s); ``stream`` keeps the stream. The reference statistics
    of the two are cached apart."""
    import csv

    from avgen.media import decode_audio, write_wav

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    for folder, seed in ((pred, 20), (ref, 40)):
        for i in range(3):
            clip = generate_clip(seed + i, GEO)
            other = generate_clip(seed + 10 + i, GEO).audio  # the wav holds different sound than the mp4
            write_mp4(folder / f"c{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
            write_wav(folder / f"c{i}.wav", other, GEO.sample_rate)
    results, rows = {}, {}
    for audio in ("stream", "file"):
        out = tmp_path / audio
        results[audio] = evaluate_folder(pred, out, metrics=["fd_vggish_frames"], ref_dir=ref, audio=audio,
                                         cache_dir=tmp_path / "cache", **options(weights))
        with open(out / "per_clip.csv") as f:
            rows[audio] = {r["clip"]: r for r in csv.DictReader(f)}
    assert float(rows["file"]["c0.mp4"]["audio_seconds"]) == 2.0
    assert float(rows["stream"]["c0.mp4"]["audio_seconds"]) > 2.0  # the AAC stream's padding
    fake = torch.cat([frames_of(weights, decode_audio(pred / f"c{i}.wav"), GEO.sample_rate) for i in range(3)])
    real = torch.cat([frames_of(weights, decode_audio(ref / f"c{i}.wav"), GEO.sample_rate) for i in range(3)])
    a, b = ReferenceStats.from_features(real), ReferenceStats.from_features(fake)
    expected = frechet_distance(a.mu, a.sigma, b.mu, b.sigma).item()
    assert results["file"]["metrics"]["fd_vggish_frames"] == pytest.approx(expected, rel=1e-6)
    assert results["stream"]["metrics"]["fd_vggish_frames"] != pytest.approx(expected, rel=1e-3)
    # the two sounds of one reference folder are two identities, never one entry
    stores = [results[a]["extractors"]["fd_vggish_frames"]["feature_store"]["reference"] for a in ("stream", "file")]
    assert [s["misses"] for s in stores] == [3, 3] and stores[0]["namespace"] == stores[1]["namespace"]
    with pytest.raises(ConfigError, match="evaluate.audio='wav'"):
        evaluate_folder(pred, tmp_path / "bad", metrics=["fd_vggish_frames"], ref_dir=ref, audio="wav",
                        **options(weights))
