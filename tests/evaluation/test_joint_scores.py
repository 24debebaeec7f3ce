"""evaluate.metrics=[javis_sync] and [kvd] (JavisBench, JavisVerse/JavisDiT@b505b37) through evaluate_folder with
the tiny twins avgen loads through the real loaders (ImageBind in the official layout, I3D as TorchScript): the
per-clip and set values equal the metrics run on the decoded clips, one model load / one I3D pass serves several
metrics, and two processes' merged states equal one process."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.evaluation import evaluate_folder
from avgen.media import read_clip, write_mp4, write_wav

GEO = ClipGeometry(seconds=3.0, fps=8, height=48, width=64)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """ok0, ok1 (sounding mp4s), pair.mp4 + pair.wav (silent video, audio beside it), short.mp4 (2 frames)."""
    folder = tmp_path_factory.mktemp("joint")
    for i in range(2):
        clip = generate_clip(60 + i, GEO)
        write_mp4(folder / f"ok{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
    clip = generate_clip(62, GEO)
    write_mp4(folder / "pair.mp4", clip.frames, GEO.fps)
    write_wav(folder / "pair.wav", clip.audio, GEO.sample_rate)
    write_mp4(folder / "short.mp4", clip.frames[:2], GEO.fps, audio=clip.audio[:4000], sample_rate=GEO.sample_rate)
    return folder


@pytest.fixture(scope="module")
def imagebind_file(tmp_path_factory) -> Path:
    from avgen.encoders.imagebind import ImageBindAV, save_official_format

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ib") / "imagebind_huge.pth"
    save_official_format(ImageBindAV.tiny(), path)
    return path


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory) -> Path:
    from tests.metrics.test_frechet import TinyI3D

    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    return path


def rows_of(out: Path) -> dict[str, dict]:
    with open(out / "per_clip.csv") as f:
        return {r["clip"]: r for r in csv.DictReader(f)}


def test_javis_sync_per_clip_equals_the_metric_on_the_decoded_clip(tmp_path, clips, imagebind_file):
    from avgen.encoders.imagebind import TINY_IMAGEBIND, load_imagebind
    from avgen.errors import ConfigError
    from avgen.media import read_audio
    from avgen.metrics.javis_sync import JavisSync
    from avgen.pretrained import ExtractorWeightsMissing, sha256_file

    options = {"path": str(imagebind_file), **TINY_IMAGEBIND}
    result = evaluate_folder(clips, tmp_path / "out", metrics=["javis_sync"], javis_sync=options)
    rows = rows_of(tmp_path / "out")
    clip = read_clip(clips / "pair.mp4")
    audio, sr = read_audio(clips / "pair.wav")  # the wav beside the clip, as JavisBench reads sample_XXXX.wav
    score, windows = JavisSync(load_imagebind(imagebind_file, **TINY_IMAGEBIND)).clip_score(
        clip.frames, float(clip.fps), audio, sr)
    assert float(rows["pair.mp4"]["javis_sync"]) == pytest.approx(score, abs=1e-9)
    assert int(rows["pair.mp4"]["javis_sync_windows"]) == windows == 3  # 24 frames: 16-frame windows at 0, 4, 8
    assert rows["pair.mp4"]["javis_sync_audio"] == "pair.wav" and rows["ok0.mp4"]["javis_sync_audio"] == "ok0.mp4"
    scored = [float(r["javis_sync"]) for r in rows.values() if r["javis_sync"]]
    assert len(scored) == 3 and result["metrics"]["javis_sync"] == pytest.approx(np.mean(scored), abs=1e-12)
    info = result["extractors"]["javis_sync"]
    assert info["sha256"] == {"imagebind": sha256_file(imagebind_file)} and info["clips"] == 3
    assert info["window_s"] == 2.0 and info["overlap_s"] == 1.5 and info["topk_min"] == 0.4
    assert "JavisDiT@b505b37" in info["protocol"]
    short = [f["reason"] for f in result["failures"] if f["clip"] == "short.mp4"]
    assert len(short) == 1 and "javis_sync: " in short[0] and "k = 0" in short[0]
    with pytest.raises(ExtractorWeightsMissing, match="evaluate.javis_sync.path"):
        evaluate_folder(clips, tmp_path / "b", metrics=["javis_sync"], javis_sync={"path": None})
    with pytest.raises(ConfigError, match="evaluate.javis_sync: .*overlap_s"):
        evaluate_folder(clips, tmp_path / "c", metrics=["javis_sync"], javis_sync={**options, "overlap_s": 2.0})


def test_one_imagebind_serves_every_imagebind_metric(clips, imagebind_file, monkeypatch):
    import avgen.encoders.imagebind as imagebind
    from avgen.encoders.imagebind import TINY_IMAGEBIND, load_imagebind
    from avgen.evaluation.scorers import SCORERS, BuildContext

    loads = []
    monkeypatch.setattr(imagebind, "load_imagebind", lambda *a, **k: loads.append(a) or load_imagebind(*a, **k))
    options = {"path": str(imagebind_file), **TINY_IMAGEBIND}
    ctx = BuildContext({"imagebind": options, "ib_score": options, "javis_sync": options}, None, "cpu")
    scorers = [SCORERS[name].build(ctx) for name in ("imagebind", "ib_score", "javis_sync")]
    assert len(loads) == 1 and len({id(s.metric.model) for s in scorers}) == 1
    # a model built with other settings is another load
    other = SCORERS["javis_sync"].build(BuildContext({"javis_sync": {**options, "batch_size": 4}}, None, "cpu",
                                                     shared=ctx.shared))
    assert other.metric.model.batch_size == 4 and len(loads) == 2


def test_kvd_and_fvd_share_one_i3d_pass_and_kvd_equals_the_kernel_distance(tmp_path, clips, i3d_file, monkeypatch):
    from avgen.encoders.video_classifiers import I3DFeatures
    from avgen.metrics.kernel_distance import polynomial_mmd

    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        clip = generate_clip(70 + i, GEO)
        write_mp4(ref / f"r{i}.mp4", 255 - clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
    calls = []
    forward = I3DFeatures.forward
    monkeypatch.setattr(I3DFeatures, "forward", lambda self, video: calls.append(1) or forward(self, video))
    fvd = {"i3d_path": str(i3d_file), "num_frames": 8, "feature_dim": 10}  # TinyI3D: 8 frame means + 2 sizes
    result = evaluate_folder(clips, tmp_path / "out", metrics=["fvd", "kvd"], ref_dir=ref, fvd=fvd,
                             cache_dir=tmp_path / "cache")
    assert len(calls) == 4 + 3  # one pass per readable generated clip and per reference clip, for both metrics
    extractor = I3DFeatures(i3d_file, num_frames=8, feature_dim=10)

    def features(folder, names):
        from avgen.media import uint8_to_unit_range

        return torch.cat([extractor(uint8_to_unit_range(read_clip(folder / n).frames)[None]) for n in names]).double()

    fake = features(clips, ["ok0.mp4", "ok1.mp4", "pair.mp4"])
    real = features(ref, ["r0.mp4", "r1.mp4", "r2.mp4"])
    assert result["metrics"]["kvd"] == pytest.approx(float(polynomial_mmd(fake, real)), rel=1e-9)
    assert result["metrics"]["fvd"] > 0
    info = result["extractors"]["kvd"]
    assert info["clips"] == 3 and info["reference_clips"] == 3 and info["kernel"]["degree"] == 3
    assert [f["clip"] for f in result["failures"]] == ["short.mp4"]  # 2 frames < num_frames: reported
    # the feature store: fvd and kvd share one namespace, so the warm run reads every reference clip's I3D
    # features once for both and runs the I3D on the generated clips only
    calls.clear()
    again = evaluate_folder(clips, tmp_path / "again", metrics=["fvd", "kvd"], ref_dir=ref, fvd=fvd,
                            cache_dir=tmp_path / "cache")
    assert len(calls) == 4
    assert again["metrics"] == result["metrics"]
    stores = {m: again["extractors"][m]["feature_store"]["reference"] for m in ("fvd", "kvd")}
    assert stores["fvd"]["namespace"] == stores["kvd"]["namespace"]
    assert stores["kvd"]["hits"] == 3 and stores["kvd"]["misses"] == 0


def test_two_processes_merge_to_the_one_process_value(clips, i3d_file):
    """Each process scores part of the clips; KVD's merged feature rows give the one-process value (as
    avgen.evaluation.processes.Processes.reduce concatenates them under torchrun)."""
    from avgen.evaluation.scorers import SCORERS, BuildContext, feed_scorers

    paths = sorted(p for p in clips.glob("*.mp4") if p.name != "short.mp4")
    options = {"fvd": {"i3d_path": str(i3d_file), "num_frames": 8, "feature_dim": 10}}

    def run(part):
        scorer = SCORERS["kvd"].build(BuildContext(options, None, "cpu", clips, part, paths))
        for p in paths[:2]:  # the same references on every process (as after their reduction)
            clip = read_clip(p)
            scorer.update_reference(clip.frames[::-1].copy(), clip.audio, clip.sample_rate)
        feed_scorers([scorer], part, [])
        return scorer

    one, ranks = run(paths), [run(paths[0::2]), run(paths[1::2])]
    for x, y in zip(ranks[0].states(), ranks[1].states()):
        x.merge_state(y)
    value, info = ranks[0].result()
    assert info["clips"] == 3 and info["reference_clips"] == 2
    # the merged rows come in another order (clips 0, 2, 1): float64 sums of the kernel terms, which cancel to a value
    # of ~1e7 here, then differ in the last digits (4e-11 relative seen with other clip bytes), not more
    assert value == pytest.approx(one.result()[0], rel=1e-9)


@pytest.mark.parametrize("options", [{"gamma": "x"}, {"gamma": -1}, {"gamma": 0}, {"degree": 0}, {"coef0": "a"},
                                     {"sigma": 1}])
def test_kvd_kernel_settings_are_checked_before_anything_loads(options):
    from avgen.errors import ConfigError
    from avgen.evaluation.scorers import KVDScorer

    with pytest.raises(ConfigError, match=r"evaluate\.kvd"):
        KVDScorer(options, None)  # refused before the I3D is touched
