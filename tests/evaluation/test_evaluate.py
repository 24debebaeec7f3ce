"""``python -m avgen evaluate``: a folder of sounding clips → metrics.json, per-clip CSV, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.media import write_mp4, write_wav
from tests.conftest import run_cli
from tests.metrics.test_semantic import clap_dir, clip_dir  # noqa: F401  (fixtures)

GEO = ClipGeometry(seconds=3.0, fps=8, height=128, width=128)


@pytest.fixture(scope="module")
def pred_dir(tmp_path_factory) -> Path:
    """3 sounding mp4s, 1 silent mp4 + wav pair, 1 zero-byte mp4, 1 clip whose audio is 3 frames late."""
    folder = tmp_path_factory.mktemp("pred")
    for i in range(3):
        clip = generate_clip(40 + i, GEO)
        write_mp4(folder / f"ok{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
    clip = generate_clip(50, GEO)
    write_mp4(folder / "pair.mp4", clip.frames, GEO.fps)
    write_wav(folder / "pair.wav", clip.audio, GEO.sample_rate)
    (folder / "broken.mp4").write_bytes(b"")
    late = np.roll(clip.audio, 3 * GEO.sample_rate // GEO.fps)
    write_mp4(folder / "shifted.mp4", clip.frames, GEO.fps, audio=late, sample_rate=GEO.sample_rate)
    return folder


def test_evaluate_folder_writes_metrics_csv_and_plots(tmp_path, pred_dir):
    result = evaluate_folder(pred_dir, tmp_path / "out", metrics=["av_align"], workers=2, plots=2)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["clips"] == result["clips"] == 5 and saved["skipped"] == []  # pair.wav is pair.mp4's sound
    assert saved["failures"] == [{"clip": "broken.mp4", "reason": saved["failures"][0]["reason"]}]
    assert "broken.mp4" in saved["failures"][0]["reason"]
    assert set(saved["metrics"]["av_align"]) == {"official", "paper", "pr"}
    assert saved["versions"]["torch"].startswith("2.")
    with open(tmp_path / "out" / "per_clip.csv") as f:
        rows = {r["clip"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"ok0.mp4", "ok1.mp4", "ok2.mp4", "pair.mp4", "broken.mp4", "shifted.mp4"}
    assert rows["broken.mp4"]["error"] and not rows["ok0.mp4"]["error"]
    pr = {k: float(r["av_align_pr"]) for k, r in rows.items() if not r["error"]}
    # librosa reports an onset ~0.07 s into any noisy audio (see avgen/metrics/av_align.py), so a clip with n
    # hits scores about n/(n+1) at best
    assert min(pr[k] for k in ("ok0.mp4", "ok1.mp4", "ok2.mp4", "pair.mp4")) >= 0.5
    assert pr["shifted.mp4"] < pr["pair.mp4"] / 2  # same clip, audio 3 frames late
    # the mean in metrics.json is the mean of the rows
    assert saved["metrics"]["av_align"]["pr"] == pytest.approx(np.mean(list(pr.values())))
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert len(plots) == 2 and all(p.endswith(".png") for p in plots)


def test_evaluate_refuses_unknown_or_unbuilt_metrics_and_bad_folders(tmp_path, pred_dir):
    with pytest.raises(ConfigError, match="unknown"):
        evaluate_folder(pred_dir, tmp_path, metrics=["nope"])
    with pytest.raises(ConfigError, match="unknown \\['isv'\\]"):
        evaluate_folder(pred_dir, tmp_path, metrics=["av_align", "isv"])
    with pytest.raises(ConfigError, match="evaluate.pred_dir=.* holds no clip .*the folder is empty"):
        evaluate_folder(tmp_path, tmp_path / "out", metrics=["av_align"])


@pytest.mark.slow
def test_evaluate_command(tmp_path, pred_dir):
    proc = run_cli("evaluate", f"evaluate.pred_dir={pred_dir}", "evaluate.plots=1", f"hydra.run.dir={tmp_path}/run",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["clips"] == 5 and saved["config"]["plots"] == 1
    assert '"pr"' in proc.stdout and "metrics.json" in proc.stdout


def test_fvd_and_fad_against_a_reference_folder_with_cached_stats(tmp_path, pred_dir):
    """Tiny random I3D (TorchScript) and VGGish saved to files, loaded through the real loaders."""
    import shutil

    import torch

    from avgen.encoders.vggish import VGGishFeatures
    from avgen.pretrained import sha256_file
    from tests.metrics.test_frechet import TinyI3D

    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(i3d))
    vggish = tmp_path / "vggish.pth"
    torch.manual_seed(0)
    torch.save(VGGishFeatures.tiny().state_dict(), vggish)
    options = dict(fvd={"i3d_path": str(i3d), "num_frames": 16, "feature_dim": 18},
                   fad={"vggish_path": str(vggish), **{k: v for k, v in __import__("avgen.encoders.vggish",
                                                                                    fromlist=["TINY_VGGISH"]).TINY_VGGISH.items()}})
    same = tmp_path / "same"
    shutil.copytree(pred_dir, same)
    cache = tmp_path / "cache"
    result = evaluate_folder(pred_dir, tmp_path / "a", metrics=["fvd", "fad"], ref_dir=same, cache_dir=cache, **options)
    assert result["metrics"]["fvd"] == pytest.approx(0, abs=1e-6)
    assert result["metrics"]["fad"] == pytest.approx(0, abs=1e-6)
    assert result["extractors"]["fvd"]["sha256"]["i3d"] == sha256_file(i3d)
    assert result["extractors"]["fvd"]["reference_clips"] == 5  # the broken clip is reported, not counted
    assert [f["clip"] for f in result["failures"]] == ["broken.mp4"]
    assert len(list(cache.iterdir())) == 2  # one feature-store namespace per extractor
    assert result["extractors"]["fvd"]["feature_store"]["reference"]["misses"] == 6  # broken.mp4 fails each time
    with open(tmp_path / "a" / "per_clip.csv") as f:  # durations come from the feature pass when AV-Align is off
        row = next(r for r in csv.DictReader(f) if r["clip"] == "ok0.mp4")
    assert float(row["video_seconds"]) == 3.0 and row["duration_note"] == ""
    # a different reference set: clearly > 0; the namespaces gain its entries
    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        clip = generate_clip(90 + i, ClipGeometry(seconds=3.0, fps=8, height=128, width=128))
        write_mp4(other / f"o{i}.mp4", 255 - clip.frames, 8, audio=clip.audio * 0.2, sample_rate=16000)
    (other / "cover.jpg").write_bytes(b"")
    result = evaluate_folder(pred_dir, tmp_path / "b", metrics=["fvd", "fad"], ref_dir=other, cache_dir=cache,
                             **options)
    assert result["metrics"]["fvd"] > 1e-3 and result["metrics"]["fad"] > 1e-6
    assert result["extractors"]["fvd"]["reference_clips"] == 3
    assert result["ref_skipped"] == [{"file": "cover.jpg", "reason": "an image or document, not a clip"}]
    assert len(list(cache.iterdir())) == 2
    assert result["extractors"]["fad"]["feature_store"]["reference"] == {
        **result["extractors"]["fad"]["feature_store"]["reference"], "hits": 0, "misses": 3}
    for p in other.iterdir():
        p.write_bytes(p.read_bytes())  # same content, new mtime: new identities -> extracted again, still equal
    again = evaluate_folder(pred_dir, tmp_path / "c", metrics=["fvd"], ref_dir=other, cache_dir=cache, **options)
    assert again["metrics"]["fvd"] == result["metrics"]["fvd"]
    assert again["extractors"]["fvd"]["feature_store"]["reference"]["misses"] == 3


def test_missing_extractor_weights_name_the_config_key(tmp_path, pred_dir):
    from avgen.pretrained import ExtractorWeightsMissing

    with pytest.raises(ExtractorWeightsMissing, match="evaluate.fvd.i3d_path"):
        evaluate_folder(pred_dir, tmp_path, metrics=["fvd"], ref_dir=pred_dir, fvd={"i3d_path": None})
    with pytest.raises(ConfigError, match="evaluate.ref_dir"):
        evaluate_folder(pred_dir, tmp_path, metrics=["fad"])


def test_clipsim_and_clap_use_prompts_beside_the_clips(tmp_path, pred_dir, clip_dir, clap_dir):  # noqa: F811
    """Tiny random CLIP / CLAP saved with save_pretrained and loaded through the real loader."""
    import shutil

    from avgen.metrics.av_align import load_av
    from avgen.metrics.semantic import CLAPScore, CLIPSim

    folder = tmp_path / "pred"
    shutil.copytree(pred_dir, folder)
    (folder / "ok0.txt").write_text("a red ball dropping onto a wooden floor")
    options = dict(clipsim={"model": str(clip_dir)}, clap={"model": str(clap_dir)})
    result = evaluate_folder(folder, tmp_path / "out", metrics=["clipsim", "clap"], prompt="objects hitting a floor",
                             **options)
    # the same numbers computed directly, clip by clip, with each clip's prompt
    clipsim, clap = CLIPSim.from_pretrained(str(clip_dir)), CLAPScore.from_pretrained(str(clap_dir))
    for name in ("ok0.mp4", "ok1.mp4", "ok2.mp4", "pair.mp4", "shifted.mp4"):
        frames, _, audio, sr = load_av(folder / name)
        text = "a red ball dropping onto a wooden floor" if name == "ok0.mp4" else "objects hitting a floor"
        clipsim.update([frames], [text])
        clap.sample_rate = sr
        clap.update([audio], [text])
    assert result["metrics"]["clipsim"] == pytest.approx(float(clipsim.compute()), abs=1e-5)
    assert result["metrics"]["clap"] == pytest.approx(float(clap.compute()), abs=1e-5)
    # per-clip scores land in the CSV; their mean is the metric
    with open(tmp_path / "out" / "per_clip.csv") as f:
        rows = {r["clip"]: r for r in csv.DictReader(f)}
    frames, _, audio, sr = load_av(folder / "ok0.mp4")
    direct = CLIPSim.from_pretrained(str(clip_dir)).clip_scores([frames], ["a red ball dropping onto a wooden floor"])
    assert float(rows["ok0.mp4"]["clipsim"]) == pytest.approx(float(direct[0]), abs=1e-5)
    for name in ("clipsim", "clap"):
        assert np.mean([float(r[name]) for r in rows.values() if r[name]]) == pytest.approx(result["metrics"][name],
                                                                                             abs=1e-6)
    assert rows["broken.mp4"]["error"] and not rows["broken.mp4"]["clipsim"]
    assert result["extractors"]["clipsim"]["clips"] == 5 and [f["clip"] for f in result["failures"]] == ["broken.mp4"]
    # without a prompt, clips are reported, not scored
    result = evaluate_folder(folder, tmp_path / "out2", metrics=["clipsim"], **options)
    assert result["extractors"]["clipsim"]["clips"] == 1
    assert sum("no prompt" in f["reason"] for f in result["failures"]) == 4


def test_fad_with_the_panns_embedding(tmp_path, pred_dir):
    """evaluate.fad.extractor=panns: the Fréchet distance over CNN14's embedding (audioldm_eval's FD),
    0 against the same clips, > 0 against others, the weight hash recorded."""
    import shutil

    import torch

    from avgen.encoders.panns import TINY_CNN14, Cnn14
    from avgen.pretrained import sha256_file

    weights = tmp_path / "cnn14.pth"
    torch.manual_seed(0)
    torch.save({"model": Cnn14.tiny().state_dict()}, weights)
    fad = {"extractor": "panns", "panns_path": str(weights), **TINY_CNN14}
    same = tmp_path / "same"
    shutil.copytree(pred_dir, same)
    result = evaluate_folder(pred_dir, tmp_path / "a", metrics=["fad"], ref_dir=same, cache_dir=tmp_path / "c", fad=fad)
    identical = result["metrics"]["fad"]
    assert identical == pytest.approx(0, abs=1e-9)
    assert result["extractors"]["fad"]["sha256"] == {"panns": sha256_file(weights)}
    assert result["extractors"]["fad"]["name"] == "panns_cnn14_embedding"
    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        clip = generate_clip(70 + i, ClipGeometry(seconds=3.0, fps=8, height=64, width=64))
        noise = np.random.default_rng(i).uniform(-0.9, 0.9, clip.audio.shape).astype(np.float32)
        write_mp4(other / f"o{i}.mp4", clip.frames, 8, audio=noise, sample_rate=16000)
    result = evaluate_folder(pred_dir, tmp_path / "b", metrics=["fad"], ref_dir=other, cache_dir=tmp_path / "c",
                             fad=fad)
    assert result["metrics"]["fad"] > 1e3 * max(identical, 1e-12)
    with pytest.raises(ConfigError, match="evaluate.fad.extractor"):
        evaluate_folder(pred_dir, tmp_path / "d", metrics=["fad"], ref_dir=same, fad={"extractor": "openl3"})


def test_fad_with_the_clap_embedding(tmp_path, pred_dir, clap_dir):  # noqa: F811
    """evaluate.fad.extractor=clap: CLAP audio embeddings (resampled once, to CLAP's 48 kHz) as FAD features."""
    import shutil

    import torch

    from avgen.metrics.av_align import load_av
    from avgen.metrics.semantic import ClapEmbedding, CLAPScore, folder_hashes

    fad = {"extractor": "clap", "clap_model": str(clap_dir)}
    same = tmp_path / "same"
    shutil.copytree(pred_dir, same)
    result = evaluate_folder(pred_dir, tmp_path / "a", metrics=["fad"], ref_dir=same, cache_dir=tmp_path / "c", fad=fad)
    assert result["metrics"]["fad"] == pytest.approx(0, abs=1e-6)
    info = result["extractors"]["fad"]
    assert info["name"] == "clap_audio_embedding" and info["config"]["sample_rate"] == 48_000
    assert info["sha256"] == folder_hashes(clap_dir) and info["sha256"]
    # the features are CLAPScore's normalised audio embeddings of the clip resampled straight to 48 kHz
    extractor = ClapEmbedding(CLAPScore.from_pretrained(str(clap_dir)))
    _, _, audio, sr = load_av(pred_dir / "ok0.mp4")
    import torchaudio

    wave = torchaudio.functional.resample(torch.from_numpy(audio).float(), sr, 48_000)[None]
    direct = CLAPScore.from_pretrained(str(clap_dir))
    direct.sample_rate = sr
    assert torch.allclose(extractor(wave), direct.audio_embeddings([audio]), atol=1e-4)
    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        noise = np.random.default_rng(i).uniform(-0.9, 0.9, 3 * 16000).astype(np.float32)
        write_mp4(other / f"o{i}.mp4", generate_clip(70 + i, GEO).frames, 8, audio=noise, sample_rate=16000)
    result = evaluate_folder(pred_dir, tmp_path / "b", metrics=["fad"], ref_dir=other, cache_dir=tmp_path / "c",
                             fad=fad)
    assert result["metrics"]["fad"] > 1e-4


class TinyC3D(torch.nn.Module):
    """StyleGAN-V's C3D TorchScript call convention: uint8 (B, 3, T, H, W) in, softmax over classes out.
    The class scores depend on the mean colour of each of the first frames, so clips differ."""

    def __init__(self, classes: int = 5, logits: bool = False):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4, classes)
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8
        colour = x[:, :, :4].float().mean(dim=[3, 4]).flatten(1) / 255.0 * 8.0 - 4.0
        out = self.proj(colour)
        return out if self.logits else out.softmax(dim=1)


def test_video_inception_score_with_a_c3d_torchscript(tmp_path, pred_dir):
    """is_video equals StyleGAN-V's compute_isv written out: C3D posteriors of the first 16 frames (uint8),
    RandomState(42).shuffle, parts i*N//splits, exp(mean KL(p(y|x) || p(y)))."""
    from avgen.metrics.av_align import load_av
    from avgen.pretrained import ExtractorWeightsMissing, sha256_file

    torch.manual_seed(3)
    module = TinyC3D()
    c3d = tmp_path / "c3d_ucf101.pt"
    torch.jit.script(module).save(str(c3d))
    options = {"c3d_path": str(c3d), "splits": 2, "num_classes": 5}
    result = evaluate_folder(pred_dir, tmp_path / "a", metrics=["is_video"], is_video=options)
    names = sorted(["ok0.mp4", "ok1.mp4", "ok2.mp4", "pair.mp4", "shifted.mp4"])
    with torch.no_grad():
        probs = np.concatenate([module(torch.from_numpy(load_av(pred_dir / n)[0][:16]).permute(3, 0, 1, 2)[None])
                                .double().numpy() for n in names])
    np.random.RandomState(42).shuffle(probs)
    scores = []
    for i in range(2):
        part = probs[i * 5 // 2:(i + 1) * 5 // 2]
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    assert result["metrics"]["is_video"]["mean"] == pytest.approx(np.mean(scores), rel=1e-6)
    assert result["metrics"]["is_video"]["std"] == pytest.approx(np.std(scores), rel=1e-5, abs=1e-9)
    assert result["metrics"]["is_video"]["mean"] > 1.0001  # the clips get different posteriors
    info = result["extractors"]["is_video"]
    assert info["sha256"] == {"c3d": sha256_file(c3d)} and info["shuffle_seed"] == 42 and info["clips"] == 5
    # a file that returns logits, not probabilities: every clip is reported, the run still finishes
    torch.jit.script(TinyC3D(logits=True)).save(str(tmp_path / "logits.pt"))
    bad = evaluate_folder(pred_dir, tmp_path / "b", metrics=["is_video"],
                          is_video={**options, "c3d_path": str(tmp_path / "logits.pt")})
    assert bad["metrics"]["is_video"] is None
    assert sum("not probabilities" in f["reason"] for f in bad["failures"]) == 5
    with pytest.raises(ExtractorWeightsMissing, match="evaluate.is_video.c3d_path"):
        evaluate_folder(pred_dir, tmp_path / "c", metrics=["is_video"], is_video={"c3d_path": None, "splits": 2})
    with pytest.raises(ConfigError, match="evaluate.is_video.splits"):
        evaluate_folder(pred_dir, tmp_path / "d", metrics=["is_video"], is_video={**options, "splits": 10})


def test_imagebind_score_from_an_official_format_file(tmp_path, pred_dir):
    """evaluate.metrics=[imagebind]: a tiny ImageBind written in the official checkpoint layout, loaded through
    load_imagebind; each clip's score equals ImageBindScore on the decoded clip at its own frame rate."""
    from avgen.encoders.imagebind import TINY_IMAGEBIND, ImageBindAV, save_official_format
    from avgen.metrics.av_align import load_av
    from avgen.metrics.imagebind import ImageBindScore
    from avgen.pretrained import ExtractorWeightsMissing, sha256_file

    torch.manual_seed(0)
    weights = tmp_path / "imagebind_huge.pth"
    save_official_format(ImageBindAV.tiny(), weights)
    options = {"path": str(weights), **TINY_IMAGEBIND}
    result = evaluate_folder(pred_dir, tmp_path / "out", metrics=["imagebind"], imagebind=options)
    direct = ImageBindScore.from_file(weights, sizes=TINY_IMAGEBIND)
    with open(tmp_path / "out" / "per_clip.csv") as f:
        rows = {r["clip"]: r for r in csv.DictReader(f)}
    for name in ("ok0.mp4", "pair.mp4", "shifted.mp4"):
        frames, fps, audio, sr = load_av(pred_dir / name)
        expected = direct.clip_scores([frames], [audio], sample_rate=sr, fps=fps)
        assert float(rows[name]["imagebind"]) == pytest.approx(float(expected[0]), abs=1e-5)
    assert result["metrics"]["imagebind"] == pytest.approx(
        np.mean([float(r["imagebind"]) for r in rows.values() if r["imagebind"]]), abs=1e-9)
    info = result["extractors"]["imagebind"]
    assert info["sha256"] == {"imagebind": sha256_file(weights)} and info["clips"] == 5
    assert [f["clip"] for f in result["failures"]] == ["broken.mp4"]
    with pytest.raises(ExtractorWeightsMissing, match="evaluate.imagebind.path"):
        evaluate_folder(pred_dir, tmp_path / "b", metrics=["imagebind"], imagebind={"path": None})


def test_ib_score_as_the_benchmark_harness(tmp_path):
    """evaluate.metrics=[ib_score] on 8-s clips: each clip's raw cosine equals IBScore on the clip re-decoded at
    0.5 fps (first 4 frames) against the <stem>.wav beside it (its first channel) when there is one, else the
    mp4's sound; metrics.json has ×100 and the raw mean; a 6-s clip (3 frames at 0.5 fps) is a failure."""
    import soundfile as sf

    from avgen.encoders.imagebind import TINY_IMAGEBIND, ImageBindAV, save_official_format
    from avgen.media import decode_video, read_clip
    from avgen.metrics.imagebind import IBScore
    from avgen.pretrained import ExtractorWeightsMissing, sha256_file

    geo = ClipGeometry(seconds=8.0, fps=5, height=48, width=64)
    pred = tmp_path / "pred"
    pred.mkdir()
    clips = [generate_clip(70 + i, geo) for i in range(3)]
    write_mp4(pred / "stream.mp4", clips[0].frames, geo.fps, audio=clips[0].audio, sample_rate=geo.sample_rate)
    write_mp4(pred / "both.mp4", clips[1].frames, geo.fps, audio=clips[1].audio, sample_rate=geo.sample_rate)
    write_wav(pred / "both.wav", clips[1].audio[::-1].copy(), geo.sample_rate)  # the wav wins over the stream
    write_mp4(pred / "stereo.mp4", clips[2].frames, geo.fps)
    noise = np.random.default_rng(0).standard_normal(len(clips[2].audio)).astype(np.float32) * 0.3
    sf.write(pred / "stereo.wav", np.stack([clips[2].audio, noise], 1), geo.sample_rate, subtype="FLOAT")
    write_mp4(pred / "short.mp4", clips[0].frames[:30], geo.fps, audio=clips[0].audio[:6 * geo.sample_rate],
              sample_rate=geo.sample_rate)

    torch.manual_seed(0)
    weights = tmp_path / "imagebind_huge.pth"
    save_official_format(ImageBindAV.tiny(), weights)
    options = {"path": str(weights), "seconds": 8, "fps": 0.5, "scale": 100, **TINY_IMAGEBIND}
    result = evaluate_folder(pred, tmp_path / "out", metrics=["ib_score"], ib_score=options)
    with open(tmp_path / "out" / "per_clip.csv") as f:
        rows = {r["clip"]: r for r in csv.DictReader(f)}

    direct = IBScore.from_file(weights, sizes=TINY_IMAGEBIND)
    audio = {"stream.mp4": (read_clip(pred / "stream.mp4").audio, geo.sample_rate),
             "both.mp4": sf.read(pred / "both.wav", dtype="float32"),
             "stereo.mp4": (sf.read(pred / "stereo.wav", dtype="float32")[0][:, 0], geo.sample_rate)}
    for name, (wave, sr) in audio.items():
        frames, _ = decode_video(pred / name, fps=0.5, num_frames=4)
        expected = direct.clip_scores([direct.views(frames)], [wave], sample_rate=sr)
        assert float(rows[name]["ib_score_raw"]) == pytest.approx(float(expected[0]), abs=1e-6), name
    assert {n: rows[n]["ib_score_audio"] for n in audio} == {"stream.mp4": "stream.mp4", "both.mp4": "both.wav",
                                                             "stereo.mp4": "stereo.wav"}
    raw = np.mean([float(rows[n]["ib_score_raw"]) for n in audio])
    assert result["metrics"]["ib_score_raw"] == pytest.approx(raw, abs=1e-12)
    assert result["metrics"]["ib_score"] == pytest.approx(100 * raw, abs=1e-10)
    assert [f["clip"] for f in result["failures"]] == ["short.mp4"]
    assert "needs the first 4 frames at 0.5 fps" in result["failures"][0]["reason"]
    info = result["extractors"]["ib_score"]
    assert info["sha256"] == {"imagebind": sha256_file(weights)} and info["clips"] == 3
    assert (info["protocol"], info["harness_key"], info["scale"], info["fps"], info["seconds"]) == (
        "av-benchmark@050a5cd", "IB-Score", 100, 0.5, 8)
    with pytest.raises(ExtractorWeightsMissing, match="evaluate.ib_score.path"):
        evaluate_folder(pred, tmp_path / "b", metrics=["ib_score"], ib_score={"path": None})


def test_overlapped_alignment_and_feature_pass_give_the_sequential_results(tmp_path, pred_dir, monkeypatch):
    """With cores to spare, AV-Align runs in the workers while the main process scores the other metrics;
    metrics.json and per_clip.csv are the same as when the two passes run one after the other."""
    import avgen.evaluation.processes as processes
    from tests.metrics.test_frechet import TinyI3D

    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(i3d))
    kwargs = dict(metrics=["av_align", "fvd"], workers=2, ref_dir=pred_dir, cache_dir=tmp_path / "cache",
                  fvd={"i3d_path": str(i3d), "num_frames": 16, "feature_dim": 18})
    results = {}
    for overlap in (False, True):
        monkeypatch.setattr(processes.AlignmentPool, "spare_cores", lambda self, on=overlap: on)
        results[overlap] = evaluate_folder(pred_dir, tmp_path / str(overlap), **kwargs)
    assert results[True]["metrics"] == results[False]["metrics"]
    assert results[True]["failures"] == results[False]["failures"]
    assert (tmp_path / "True" / "per_clip.csv").read_text() == (tmp_path / "False" / "per_clip.csv").read_text()


@pytest.mark.slow
def test_torchrun_evaluate_splits_clips_and_matches_one_process(tmp_path, pred_dir, clip_dir):  # noqa: F811
    """``torchrun --nproc_per_node 2 -m avgen evaluate``: each process scores half the clips and half the
    reference clips; summed / concatenated states give the single-process metrics.json and per_clip.csv."""
    import subprocess
    import sys

    from avgen.encoders.vggish import TINY_VGGISH, VGGishFeatures
    from tests.conftest import REPO
    from tests.metrics.test_frechet import TinyI3D

    i3d, c3d, vggish = tmp_path / "i3d.pt", tmp_path / "c3d.pt", tmp_path / "vggish.pth"
    torch.jit.script(TinyI3D()).save(str(i3d))
    torch.manual_seed(3)
    torch.jit.script(TinyC3D()).save(str(c3d))
    torch.manual_seed(0)
    torch.save(VGGishFeatures.tiny().state_dict(), vggish)
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        clip = generate_clip(90 + i, GEO)
        write_mp4(ref / f"r{i}.mp4", 255 - clip.frames, 8, audio=clip.audio * 0.2, sample_rate=16000)
    metrics = ["av_align", "fvd", "fad", "is_video", "clipsim"]
    layers = "[" + ",".join(str(v) for v in TINY_VGGISH["layers"]) + "]"
    overrides = [f"evaluate.pred_dir={pred_dir}", f"evaluate.ref_dir={ref}", f"evaluate.metrics=[{','.join(metrics)}]",
                 f"evaluate.fvd.i3d_path={i3d}", "+evaluate.fvd.feature_dim=18", f"evaluate.fad.vggish_path={vggish}",
                 f"+evaluate.fad.layers={layers}", f"+evaluate.fad.hidden={TINY_VGGISH['hidden']}",
                 f"+evaluate.fad.embedding_dim={TINY_VGGISH['embedding_dim']}", f"evaluate.is_video.c3d_path={c3d}",
                 "evaluate.is_video.splits=2", "+evaluate.is_video.num_classes=5", f"evaluate.clipsim.model={clip_dir}",
                 "evaluate.prompt=objects hitting a floor", "evaluate.workers=1", "evaluate.device=cpu"]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("AVGEN_RUN_ID", None)
    runs = {}
    for name, launcher in (("one", [sys.executable, "-m", "avgen"]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                    "-m", "avgen"])):
        proc = subprocess.run([*launcher, "evaluate", *overrides, f"hydra.run.dir={tmp_path / name}",
                               f"evaluate.cache_dir={tmp_path / name / 'cache'}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    one, two = runs["one"], runs["two"]
    assert set(one["metrics"]) == set(metrics)
    for metric in metrics:
        a, b = one["metrics"][metric], two["metrics"][metric]
        if isinstance(a, dict):
            assert b == pytest.approx(a, rel=1e-6, abs=1e-9), metric
        else:
            assert b == pytest.approx(a, rel=1e-6, abs=1e-9), metric
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["clips"] == one["clips"] == 5 and two["failures"] == one["failures"]
    assert two["extractors"]["fvd"]["reference_clips"] == 3 and two["extractors"]["is_video"]["clips"] == 5
    for metric in ("fvd", "fad"):  # the processes extracted their shares of the references: 3 entries, 3 misses
        store = two["extractors"][metric]["feature_store"]["reference"]
        assert (store["hits"], store["misses"]) == (0, 3)
        assert len(list(Path(store["folder"]).glob("*/*.safetensors"))) == 3
    with open(tmp_path / "one" / "per_clip.csv") as f1, open(tmp_path / "two" / "per_clip.csv") as f2:
        rows1, rows2 = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    assert [r["clip"] for r in rows2] == [r["clip"] for r in rows1]
    for r1, r2 in zip(rows1, rows2):
        assert r1.keys() == r2.keys()
        for k in r1:
            if r1[k] and k not in ("clip", "error"):
                assert float(r2[k]) == pytest.approx(float(r1[k]), rel=1e-6, abs=1e-9), (r1["clip"], k)
            else:
                assert r2[k] == r1[k]


def test_fvd_against_a_shard_split_reference(tmp_path, tiny_shards):
    """evaluate.ref_dir=<shard split>: the reference statistics come from the split's clips (decoded by the
    evaluation stream, every clip once) and are cached under the manifest's hash."""
    from avgen.encoders.video_classifiers import I3DFeatures
    from avgen.evaluation.references import reference_set
    from avgen.media import uint8_to_unit_range
    from avgen.metrics.av_align import load_av
    from avgen.metrics.frechet import FrechetDistance
    from avgen.pretrained import sha256_file
    from tests.metrics.test_frechet import TinyI3D

    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(i3d))
    split = tiny_shards / "test"
    pred = tmp_path / "pred"
    pred.mkdir()
    refs = [(clip.name, *clip.load()) for clip in reference_set(split)]
    assert len(refs) == 5 and all(frames.shape == (8, 32, 32, 3) for _, frames, *_ in refs)
    for key, frames, audio, sr in refs[:3]:  # three of the split's own clips as "generated" ones
        write_mp4(pred / f"{key.replace('/', '_')}.mp4", frames, 8, audio=audio, sample_rate=sr)
    fvd = {"i3d_path": str(i3d), "num_frames": 8, "feature_dim": 10}  # TinyI3D: a mean per frame + 2 sizes
    with pytest.raises(ConfigError, match="0 usable reference clips .*5 skipped.*I3D detector returned"):
        evaluate_folder(pred, tmp_path / "bad", metrics=["fvd"], ref_dir=split, cache_dir=tmp_path / "c",
                        fvd={**fvd, "feature_dim": 18})
    result = evaluate_folder(pred, tmp_path / "out", metrics=["fvd"], ref_dir=split, cache_dir=tmp_path / "c", fvd=fvd)
    assert result["extractors"]["fvd"]["reference_clips"] == 5
    entries = sorted(Path(result["extractors"]["fvd"]["feature_store"]["reference"]["folder"]).glob("*/*.safetensors"))
    assert len(entries) == 5 and all(sha256_file(split / "manifest.json") in e.read_bytes().decode("latin-1")
                                     for e in entries)  # keyed by the manifest's hash and the clip key
    # the same number computed directly from decoded clips
    metric = FrechetDistance(I3DFeatures(i3d, num_frames=8, feature_dim=10))
    for _, frames, *_ in refs:
        metric.update(uint8_to_unit_range(frames)[None], real=True)
    for path in sorted(pred.glob("*.mp4")):
        metric.update(uint8_to_unit_range(load_av(path)[0])[None], real=False)
    assert result["metrics"]["fvd"] == pytest.approx(float(metric.compute()), rel=1e-5, abs=1e-6)


def test_a_shard_split_as_pred_dir_scores_the_data_itself(tmp_path, tiny_shards):
    """evaluate.pred_dir=<shard split>: its clips are exported (stored mp4 bytes, flac as wav, caption, source
    key) and scored like generated ones: the data's own AV-Align and CLIPSIM, KL against itself ~0."""
    import tarfile

    from avgen.media import decode_flac
    from avgen.metrics.av_align import load_av

    split = tiny_shards / "test"
    result = evaluate_folder(split, tmp_path / "out", metrics=["av_align"], plots=1)
    clips = tmp_path / "out" / "clips"
    assert result["pred_dir"] == str(split.absolute()) and result["clips_dir"] == str(clips.absolute())
    assert result["clips"] == 5 and result["failures"] == []
    with tarfile.open(sorted(split.glob("*.tar"))[0]) as tar:
        first = {m.name.rpartition(".")[2]: tar.extractfile(m).read() for m in tar.getmembers()[:3]}
        key = tar.getmembers()[0].name.rpartition(".")[0]
    stem = clips / key.replace("/", "__")
    assert stem.with_suffix(".mp4").read_bytes() == first["mp4"]  # not re-encoded
    audio, sr = decode_flac(first["flac"])
    np.testing.assert_allclose(load_av(stem.with_suffix(".mp4"))[2], audio, atol=1e-4)
    assert stem.with_suffix(".txt").read_text() == json.loads(first["json"])["caption"]
    assert json.loads(stem.with_suffix(".json").read_text())["source"] == key
    with open(tmp_path / "out" / "per_clip.csv") as f:
        assert sorted(r["clip"] for r in csv.DictReader(f)) == sorted(p.name for p in clips.glob("*.mp4"))
    assert len(list((tmp_path / "out" / "plots").glob("*.png"))) == 1
    # KL of the split against itself: every clip is paired with itself through its recorded key
    from avgen.encoders.panns import TINY_CNN14, Cnn14

    weights = tmp_path / "cnn14.pth"
    torch.manual_seed(0)
    torch.save({"model": Cnn14.tiny().state_dict()}, weights)
    kl = evaluate_folder(split, tmp_path / "kl", metrics=["kl"], ref_dir=split,
                         panns={"path": str(weights), "splits": 2, **TINY_CNN14})
    assert kl["extractors"]["kl"]["pairs"] == 5
    assert all(abs(v) < 1e-3 for v in kl["metrics"]["kl"].values())


def test_decode_ahead_keeps_order_and_reports_the_same_failures(pred_dir):
    from avgen.samples import find_clips, load_clips

    paths = find_clips(pred_dir).files
    results = {}
    for threads in (0, 1, 3):
        failures: list[dict] = []
        items = list(load_clips(paths, failures, threads=threads))
        results[threads] = ([(name, c.frames.tobytes(), c.fps, c.audio.tobytes(), c.sample_rate) for name, c
                             in items], failures)
    assert results[1] == results[0] and results[3] == results[0]
    assert [name for name, *_ in results[0][0]] == [p.name for p in paths if p.name != "broken.mp4"]
    assert [f["clip"] for f in results[0][1]] == ["broken.mp4"]
