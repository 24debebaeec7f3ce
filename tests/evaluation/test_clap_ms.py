"""``evaluate.metrics=[clap_ms]``: av-benchmark's MS-CLAP-Score with a tiny MS-CLAP written in the published layout;
the value against a direct computation from the audio files, the end-to-end run with captions and audio files beside
the clips, and the configuration errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.encoders.laion_clap import LaionClapMel
from avgen.encoders.ms_clap import crop_start, load_ms_clap
from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.media import write_mp4
from avgen.metrics.semantic import MsCLAPScore
from avgen.pretrained import sha256_file
from tests.encoders.test_ms_clap import ms_clap_twin  # noqa: F401  (fixture)

# scorers add per-clip scores without update(), so torchmetrics warns at compute()
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
GEO = ClipGeometry(seconds=2.0, fps=8, height=32, width=32)
CAPTIONS = ["a dog barks twice", "rain on a tin roof!"]
RATE = 22_050


def _files(seed: int) -> list[np.ndarray]:
    """c0: 8 s of stereo (cropped), c1: 3 s of mono (repeated), both at 22.05 kHz."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8 * RATE, 2)) * 0.2).astype(np.float32),
            (rng.standard_normal(3 * RATE) * 0.2).astype(np.float32)]


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> Path:
    """c0, c1: sounding mp4s with their caption in <stem>.txt and their raw audio in <stem>.wav (:func:`_files`)."""
    folder = tmp_path_factory.mktemp("pred")
    for i, (caption, wave) in enumerate(zip(CAPTIONS, _files(5))):
        clip = generate_clip(90 + i, GEO)
        write_mp4(folder / f"c{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
        (folder / f"c{i}.txt").write_text(caption)
        sf.write(folder / f"c{i}.wav", wave, RATE, subtype="FLOAT")
    return folder


def direct_score(clap, gpt2: Path, wave: np.ndarray, sr: int, caption: str, stem: str, seed: int = 0) -> float:
    """The cosine computed outside avgen's rule, loader and tokenizer call: the original tiny modules, torchaudio's
    Resample on the (C, S) file, msclap's repeat/crop written out, a fresh front end (librosa's 32-kHz mel matrix), the
    tokenizer loaded here with msclap's pad token, GPT-2 pooled at (ids != 0).sum() − 1."""
    from transformers import AutoTokenizer

    channels = torch.from_numpy(np.atleast_2d(wave))
    flat = torchaudio.transforms.Resample(sr, 44_100)(channels).reshape(-1)
    if flat.shape[0] <= 308_700:
        flat = flat.repeat(math.ceil(308_700 / flat.shape[0]))[:308_700]
    else:
        start = crop_start(flat.shape[0], stem, seed)
        flat = flat[start:start + 308_700]
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2), local_files_only=True)
    tokenizer.add_special_tokens({"pad_token": "!"})
    tokens = tokenizer(caption + " <|endoftext|>", max_length=77, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        mel = LaionClapMel(32_000, 1024, 320, 64, 50, 14_000)(flat[None])
        sound = clap.audio_projection(clap.audio_model(input_features=mel).pooler_output)
        hidden = clap.text_model(**tokens).last_hidden_state
        text = clap.text_projection(hidden[:, int((tokens["input_ids"] != 0).sum()) - 1])
    return float(F.cosine_similarity(sound.double(), text.double()).item())


def test_score_equals_a_direct_computation(ms_clap_twin):  # noqa: F811
    clap, path, gpt2 = ms_clap_twin
    files = _files(3)
    metric = MsCLAPScore(load_ms_clap(path, gpt2), seed=0)
    scores = metric.clip_scores([f.T for f in files], CAPTIONS, sample_rate=RATE, stems=["c0", "c1"])
    expected = [direct_score(clap, gpt2, f.T, RATE, text, stem)
                for f, text, stem in zip(files, CAPTIONS, ["c0", "c1"])]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5)
    assert abs(expected[0]) > 0.01 and abs(expected[0] - expected[1]) > 1e-4  # not a degenerate twin
    other = MsCLAPScore(load_ms_clap(path, gpt2), seed=1).clip_scores([files[0].T], CAPTIONS[:1], RATE, ["c0"])
    assert float(other[0]) != pytest.approx(float(scores[0]), abs=1e-7)  # the seed moves the 7-s crop


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, captioned, ms_clap_twin):  # noqa: F811
    """(metrics.json content, output folder) of one evaluate run with metrics=[clap_ms] over the captioned clips."""
    _, path, gpt2 = ms_clap_twin
    out = tmp_path_factory.mktemp("out")
    return evaluate_folder(captioned, out, metrics=["clap_ms"], overwrite=True,
                           clap_ms={"path": str(path), "text_model": str(gpt2), "seed": 0, "crop": "random"}), out


def test_evaluate_scores_each_audio_file_against_its_caption(evaluated, captioned, ms_clap_twin):  # noqa: F811
    clap, path, gpt2 = ms_clap_twin
    result, out = evaluated
    expected = {}
    for i, caption in enumerate(CAPTIONS):
        wave, sr = sf.read(captioned / f"c{i}.wav", dtype="float32", always_2d=True)
        expected[f"c{i}.mp4"] = direct_score(clap, gpt2, wave.T, sr, caption, f"c{i}")
    assert result["metrics"]["clap_ms"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    with open(out / "per_clip.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["clip"]: float(r["clap_ms"]) for r in rows} == pytest.approx(expected, abs=1e-5)
    assert {r["clap_ms_audio"] for r in rows} == {"c0.wav", "c1.wav"}
    info = result["extractors"]["clap_ms"]
    assert info["protocol"].startswith("av-benchmark@050a5cd") and info["harness_key"] == "MS-CLAP-Score"
    assert info["sha256"]["ms_clap"] == sha256_file(path) and info["sample_rate"] == 44_100
    assert "concatenated" in info["length_rule"] and "seed=0" in info["length_rule"]
    assert info["scaling"] == 1 and info["clips"] == 2 and info["crop"] == "random"


def test_configuration_errors_name_the_key(tmp_path, captioned, ms_clap_twin):  # noqa: F811
    from avgen.cli import check_overrides
    from avgen.encoders.ms_clap import MsClapWeightsMissing

    _, path, gpt2 = ms_clap_twin
    with pytest.raises(ConfigError, match="evaluate.clap_ms.text_model is not set"):
        evaluate_folder(captioned, tmp_path / "a", metrics=["clap_ms"], clap_ms={"path": str(path)})
    with pytest.raises(MsClapWeightsMissing, match="evaluate.clap_ms.path"):
        evaluate_folder(captioned, tmp_path / "b", metrics=["clap_ms"],
                        clap_ms={"path": None, "text_model": str(gpt2)})
    with pytest.raises(ConfigError, match=r"evaluate.clap_ms: unknown keys \['seconds'\]"):
        evaluate_folder(captioned, tmp_path / "c", metrics=["clap_ms"],
                        clap_ms={"path": str(path), "text_model": str(gpt2), "seconds": 7})
    with pytest.raises(ConfigError, match="evaluate.clap_ms.crop='middle'"):
        evaluate_folder(captioned, tmp_path / "d", metrics=["clap_ms"],
                        clap_ms={"path": str(path), "text_model": str(gpt2), "crop": "middle"})
    check_overrides(["evaluate.clap_ms.crop=start", "evaluate.clap_ms.seed=3", "evaluate.metrics=[clap_ms]"])


def test_two_processes_merge_to_the_one_process_value(captioned, ms_clap_twin):  # noqa: F811
    """Each process scores part of the clips; the reduced states give the one-process mean cosine (as
    avgen.evaluation.processes.Processes.reduce merges them under torchrun)."""
    from avgen.evaluation.scorers import SCORERS, BuildContext, feed_scorers

    _, path, gpt2 = ms_clap_twin
    clips = sorted(captioned.glob("*.mp4"))
    options = {"clap_ms": {"path": str(path), "text_model": str(gpt2)}}

    def run(part):
        scorer = SCORERS["clap_ms"].build(BuildContext(options, None, "cpu", None, part, clips))
        feed_scorers([scorer], part, [])
        return scorer

    one, ranks = run(clips), [run(clips[:1]), run(clips[1:])]
    for a, b in zip(ranks[0].states(), ranks[1].states()):
        a.merge_state(b)
    assert ranks[0].result()[0] == pytest.approx(one.result()[0], abs=1e-9)
