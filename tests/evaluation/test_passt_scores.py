"""``evaluate.metrics=[fd_passt, kl_passt, is_passt]``: av-benchmark's PaSST columns with a tiny PaSST written in the
released layout; values checked against direct computations, the paired real side of fd_passt, the shared forward
pass and the merge of processes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.encoders.audio_input import AudioInput
from avgen.encoders.passt import PaSST, PasstWeightsMissing, load_passt, save_official_format
from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.media import write_mp4, write_wav
from avgen.metrics.av_align import load_av
from avgen.metrics.frechet import ReferenceStats, frechet_distance
from avgen.pretrained import sha256_file
from tests.metrics.test_classifier_scores import numpy_inception_score

GEO = ClipGeometry(seconds=2.0, fps=8, height=32, width=32)
METRICS = ["fd_passt", "kl_passt", "is_passt"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = PaSST.tiny()
    with torch.no_grad():  # a tiny net whose posteriors differ between clips
        model.head[1].weight.mul_(40)
    return save_official_format(model, tmp_path_factory.mktemp("passt") / "passt-s-f128-p16-s10-ap.476-swa.pt")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    """pred: a0..a3 sounding mp4s; ref: a0 the same clip, a1 another clip's audio at 22.05 kHz (wav), a2 another
    sounding mp4; no a3."""
    pred, ref = tmp_path_factory.mktemp("pred"), tmp_path_factory.mktemp("ref")
    for i in range(4):
        clip = generate_clip(60 + i, GEO)
        write_mp4(pred / f"a{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
    shutil.copy(pred / "a0.mp4", ref / "a0.mp4")
    other = ClipGeometry(seconds=2.0, fps=8, height=32, width=32, sample_rate=22050)
    write_wav(ref / "a1.wav", generate_clip(70, other).audio, 22050)
    clip = generate_clip(71, GEO)
    write_mp4(ref / "a2.mp4", clip.frames, GEO.fps, audio=clip.audio * 0.3, sample_rate=GEO.sample_rate)
    return pred, ref


def passt_outputs(weights: Path, audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits (527,), embedding (16,)) float64 of one clip, computed outside the scorers."""
    model = load_passt(weights)
    with torch.no_grad():
        logits, embedding = model(AudioInput(32000, 8, pad_to=320000)(audio, sr)[None])
    return logits[0].double().numpy(), embedding[0].double().numpy()


def softmax(x: np.ndarray) -> np.ndarray:
    return scipy.special.softmax(x, axis=-1)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_evaluate_writes_the_three_columns_from_one_forward_per_clip(tmp_path, clips, weights, monkeypatch):
    pred, ref = clips
    calls = []
    forward = PaSST.forward
    monkeypatch.setattr(PaSST, "forward", lambda self, audio: calls.append(audio.shape) or forward(self, audio))
    result = evaluate_folder(pred, tmp_path / "out", metrics=METRICS, ref_dir=ref,
                             passt={"path": str(weights), "splits": 2})
    assert calls == [(1, 320000)] * 7  # 4 generated clips + 3 references, each once for the three metrics

    from avgen.media import decode_flac

    generated = {f"a{i}": passt_outputs(weights, *load_av(pred / f"a{i}.mp4")[2:]) for i in range(4)}
    references = {"a0": passt_outputs(weights, *load_av(ref / "a0.mp4")[2:]),
                  "a1": passt_outputs(weights, *decode_flac((ref / "a1.wav").read_bytes())),
                  "a2": passt_outputs(weights, *load_av(ref / "a2.mp4")[2:])}
    paired = list(references)
    p_ref = softmax(np.stack([references[k][0] for k in paired]))
    p_gen = softmax(np.stack([generated[k][0] for k in paired]))
    kl = scipy.special.rel_entr(p_ref, p_gen).sum(axis=1)  # KL(reference || generated), no eps
    values = result["metrics"]
    assert values["kl_passt"] == pytest.approx(kl.mean(), rel=1e-5)
    assert kl.mean() > 1e-3 and kl[0] == pytest.approx(0, abs=1e-6)  # a0's reference is the clip itself
    expected_is = numpy_inception_score(softmax(np.stack([generated[f"a{i}"][0] for i in range(4)])), 2, 2020)
    assert values["is_passt"]["mean"] == pytest.approx(expected_is[0], rel=1e-5)
    assert values["is_passt"]["std"] == pytest.approx(expected_is[1], rel=1e-4, abs=1e-7)
    real = ReferenceStats.from_features(torch.from_numpy(np.stack([references[k][1] for k in paired])))
    fake = ReferenceStats.from_features(torch.from_numpy(np.stack([generated[k][1] for k in paired])))
    assert values["fd_passt"] == pytest.approx(frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma).item(),
                                               rel=1e-5)

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for name, key in (("fd_passt", "FD-PASST"), ("kl_passt", "KL-PASST-softmax"), ("is_passt", "ISC-PASST-mean")):
        info = saved["extractors"][name]
        assert info["sha256"] == {"passt": sha256_file(weights)} and info["harness_key"] == key
        assert info["protocol"].startswith("av-benchmark@050a5cd") and info["sample_rate"] == 32000
        assert "cut to 8 s" in info["length_rule"] and "320000 samples" in info["length_rule"]
    assert saved["extractors"]["fd_passt"]["reference"] == "paired" and saved["extractors"]["fd_passt"]["pairs"] == 3
    assert saved["extractors"]["kl_passt"]["pairs"] == 3 and saved["extractors"]["is_passt"]["clips"] == 4
    reasons = {f["clip"]: f["reason"] for f in saved["failures"]}
    assert set(reasons) == {"a3.mp4"} and "kl_passt: no reference a3.mp4" in reasons["a3.mp4"]
    assert "fd_passt: no reference" in reasons["a3.mp4"]
    with open(tmp_path / "out" / "per_clip.csv") as f:
        rows = {r["clip"]: r for r in csv.DictReader(f)}
    assert float(rows["a1.mp4"]["kl_passt"]) == pytest.approx(kl[1], rel=1e-5) and rows["a3.mp4"]["kl_passt"] == ""


def test_fd_passt_counts_a_reference_once_per_generated_clip_naming_it(tmp_path, tiny_shards, weights):
    """Two generated clips made from one split clip: that reference is on the real side twice (av-benchmark's
    unroll_paired_dict), not once as in a statistic over evaluate.ref_dir."""
    from avgen.evaluation.references import reference_set

    split = tiny_shards / "test"
    refs = [(clip.name, *clip.load()[1:]) for clip in reference_set(split)]
    pred = tmp_path / "pred"
    pred.mkdir()
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    sources = [0, 0, 1]
    for i, source in enumerate(sources):
        audio = generate_clip(100 + i, ClipGeometry(seconds=1.0, fps=8, height=32, width=32)).audio
        write_mp4(pred / f"s{i}.mp4", frames, 8)
        write_wav(pred / f"s{i}.wav", audio, 16000)
        (pred / f"s{i}.json").write_text(json.dumps({"prompt": "", "source": refs[source][0]}))
    result = evaluate_folder(pred, tmp_path / "out", metrics=["fd_passt"], ref_dir=split,
                             passt={"path": str(weights)})
    assert result["extractors"]["fd_passt"]["pairs"] == 3
    fake = np.stack([passt_outputs(weights, *load_av(pred / f"s{i}.mp4")[2:])[1] for i in range(3)])
    real = {i: passt_outputs(weights, refs[i][1], refs[i][2])[1] for i in (0, 1)}

    def fd(real_rows):
        r = ReferenceStats.from_features(torch.from_numpy(np.stack(real_rows)))
        f = ReferenceStats.from_features(torch.from_numpy(fake))
        return frechet_distance(r.mu, r.sigma, f.mu, f.sigma).item()

    assert result["metrics"]["fd_passt"] == pytest.approx(fd([real[0], real[0], real[1]]), rel=1e-5)
    assert result["metrics"]["fd_passt"] != pytest.approx(fd([real[0], real[1]]), rel=1e-3)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_two_processes_merge_to_the_one_process_values(tmp_path, clips, weights):
    """Each process scores part of the clips (its references from one feature store); the summed (FD, KL) and
    concatenated (IS) states give the values of one process, as avgen.evaluation.processes.Processes.reduce merges
    them under torchrun."""
    from avgen.data.feature_store import FeatureStore
    from avgen.evaluation.processes import Processes
    from avgen.evaluation.references import set_references
    from avgen.evaluation.scorers import SCORERS, BuildContext, feed_scorers

    pred, ref = clips
    clips_sorted = sorted(pred.glob("*.mp4"))
    options = {"passt": {"path": str(weights), "splits": 2}}

    def run(part: list[Path]):
        ctx = BuildContext(options, None, "cpu", ref, part, clips_sorted)
        scorers = [SCORERS[name].build(ctx) for name in METRICS]
        users = list({id(u): u for u in (s.reference_user() for s in scorers) if u is not None}.values())
        set_references(users, ref, FeatureStore(tmp_path / "store"), Processes())
        feed_scorers(scorers, part, [])
        return scorers

    one = run(clips_sorted)
    ranks = [run(clips_sorted[1::2]), run(clips_sorted[0::2])]
    for merged, other in zip(*ranks):
        for a, b in zip(merged.states(), other.states()):
            a.merge_state(b)
    for single, merged in zip(one, ranks[0]):
        assert merged.result()[0] == pytest.approx(single.result()[0], rel=1e-9), single.name


def test_passt_configuration_errors(tmp_path, clips, weights):
    from avgen.cli import check_overrides

    pred, ref = clips
    with pytest.raises(ConfigError, match="evaluate.ref_dir"):
        evaluate_folder(pred, tmp_path / "a", metrics=["kl_passt"], passt={"path": str(weights)})
    with pytest.raises(PasstWeightsMissing, match="evaluate.passt.path"):
        evaluate_folder(pred, tmp_path / "b", metrics=["is_passt"], passt={"path": None, "splits": 2})
    with pytest.raises(ConfigError, match="evaluate.passt.splits=10 needs at least 10 clips"):
        evaluate_folder(pred, tmp_path / "c", metrics=["is_passt"], passt={"path": str(weights)})
    with pytest.raises(ConfigError, match=r"evaluate.passt: unknown keys \['second'\]"):
        evaluate_folder(pred, tmp_path / "d", metrics=["is_passt"], passt={"path": str(weights), "second": 4})
    check_overrides(["evaluate.passt.seconds=4", "evaluate.metrics=[fd_passt,kl_passt,is_passt]"])
    with pytest.raises(ConfigError, match="unknown key evaluate.passt.second; .*did you mean seconds"):
        check_overrides(["evaluate.passt.second=4"])
