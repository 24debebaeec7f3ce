"""``evaluate.metrics=[clap_laion]``: av-benchmark's LAION-CLAP-Score with a tiny LAION-CLAP written in the published
layout; the value against a direct ClapModel computation, the end-to-end run with captions beside the clips, the
merge of processes and the configuration errors."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.encoders.laion_clap import LaionClapMel, load_laion_clap
from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.media import read_clip, write_mp4
from avgen.metrics.semantic import LaionCLAPScore
from avgen.pretrained import sha256_file
from tests.encoders.test_laion_clap import laion_clap_twin  # noqa: F401  (fixture)

# the processes' merge reduces states of a metric whose compute() torchmetrics has not seen updated
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
GEO = ClipGeometry(seconds=2.0, fps=8, height=32, width=32)
CAPTIONS = ["a dog barks twice", "rain on a tin roof"]


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> Path:
    """c0, c1: sounding mp4s at 16 kHz, each with its caption in <stem>.txt."""
    folder = tmp_path_factory.mktemp("pred")
    for i, caption in enumerate(CAPTIONS):
        clip = generate_clip(80 + i, GEO)
        write_mp4(folder / f"c{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
        (folder / f"c{i}.txt").write_text(caption)
    return folder


@functools.lru_cache(maxsize=1)
def _direct_parts(tokenizer_folder: Path):
    from transformers import AutoTokenizer

    return LaionClapMel(), AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)


def direct_score(model, tokenizer_folder: Path, audio: np.ndarray, sr: int, caption: str) -> float:
    """The cosine computed outside avgen's rule and loader: the original ClapModel, torchaudio's Resample, a fresh
    front end (librosa's mel matrix, avgen's STFT kernels), laion_clap's tokenizer call."""
    front, tokenizer = _direct_parts(tokenizer_folder)
    mono = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    wave = torchaudio.transforms.Resample(sr, 48_000)(mono - mono.mean())[:8 * 48_000]
    wave = F.pad(wave.repeat(480_000 // wave.shape[0]), (0, 480_000 - 480_000 // wave.shape[0] * wave.shape[0]))
    tokens = tokenizer([caption], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        sound = model.get_audio_features(input_features=front(wave[None])).pooler_output
        text = model.get_text_features(input_ids=tokens["input_ids"],
                                       attention_mask=tokens["attention_mask"]).pooler_output
    return float(F.cosine_similarity(sound.double(), text.double()).item())


def test_score_equals_a_direct_clap_model_computation(laion_clap_twin):  # noqa: F811
    model, path, tokenizer = laion_clap_twin
    rng = np.random.default_rng(3)
    # 3 s (repeated 3 times) and 9 s with a DC offset (cut to 8 s), both resampled from 22.05 kHz
    clips = [(rng.standard_normal(3 * 22_050) * 0.2).astype(np.float32),
             (rng.standard_normal(9 * 22_050) * 0.2 + 0.05).astype(np.float32)]
    metric = LaionCLAPScore(load_laion_clap(path, tokenizer))
    scores = metric.clip_scores(clips, CAPTIONS[:2], sample_rate=22_050)
    expected = [direct_score(model, tokenizer, clip, 22_050, text) for clip, text in zip(clips, CAPTIONS)]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5)
    assert abs(expected[0]) > 0.05 and abs(expected[0] - expected[1]) > 1e-4  # not a degenerate twin


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, captioned, laion_clap_twin):  # noqa: F811
    """(metrics.json content, output folder) of one evaluate run with metrics=[clap_laion] over the captioned clips."""
    _, path, tokenizer = laion_clap_twin
    out = tmp_path_factory.mktemp("out")
    return evaluate_folder(captioned, out, metrics=["clap_laion"], overwrite=True,
                           clap_laion={"path": str(path), "tokenizer": str(tokenizer), "seconds": 8}), out


def test_evaluate_scores_each_clip_against_its_caption(evaluated, captioned, laion_clap_twin):  # noqa: F811
    model, path, tokenizer = laion_clap_twin
    result, out = evaluated
    expected = {}
    for i, caption in enumerate(CAPTIONS):
        clip = read_clip(captioned / f"c{i}.mp4")
        expected[f"c{i}.mp4"] = direct_score(model, tokenizer, clip.audio, clip.sample_rate, caption)
    assert result["metrics"]["clap_laion"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    with open(out / "per_clip.csv") as f:
        rows = {row["clip"]: float(row["clap_laion"]) for row in csv.DictReader(f)}
    assert rows == pytest.approx(expected, abs=1e-5)
    info = result["extractors"]["clap_laion"]
    assert info["protocol"].startswith("av-benchmark@050a5cd") and info["harness_key"] == "LAION-CLAP-Score"
    assert info["sha256"]["laion_clap"] == sha256_file(path) and info["sample_rate"] == 48_000
    assert "cut to 8 s" in info["length_rule"] and "repeatpad to 480000" in info["length_rule"]
    assert info["scaling"] == 1 and info["clips"] == 2


def test_two_processes_merge_to_the_one_process_value(evaluated, captioned, laion_clap_twin):  # noqa: F811
    """Each process scores one clip; the summed states give the value of the one-process evaluate run, as
    avgen.evaluation.processes.Processes.reduce merges them under torchrun."""
    from avgen.evaluation.scorers import SCORERS, BuildContext, feed_scorers

    _, path, tokenizer = laion_clap_twin
    clips = sorted(captioned.glob("*.mp4"))
    options = {"clap_laion": {"path": str(path), "tokenizer": str(tokenizer)}}

    def run(part: list[Path]):
        scorer = SCORERS["clap_laion"].build(BuildContext(options, None, "cpu", None, part, clips))
        feed_scorers([scorer], part, [])
        return scorer

    ranks = [run(clips[:1]), run(clips[1:])]
    ranks[0].metric.merge_state(ranks[1].metric)
    assert ranks[0].result()[0] == pytest.approx(evaluated[0]["metrics"]["clap_laion"], rel=1e-9)
    assert int(ranks[0].metric.count) == 2


def test_configuration_errors_name_the_key(tmp_path, captioned, laion_clap_twin):  # noqa: F811
    from avgen.cli import check_overrides
    from avgen.encoders.laion_clap import LaionClapWeightsMissing

    _, path, tokenizer = laion_clap_twin
    with pytest.raises(ConfigError, match="evaluate.clap_laion.tokenizer is not set"):
        evaluate_folder(captioned, tmp_path / "a", metrics=["clap_laion"], clap_laion={"path": str(path)})
    with pytest.raises(LaionClapWeightsMissing, match="evaluate.clap_laion.path"):
        evaluate_folder(captioned, tmp_path / "b", metrics=["clap_laion"],
                        clap_laion={"path": None, "tokenizer": str(tokenizer)})
    with pytest.raises(ConfigError, match=r"evaluate.clap_laion: unknown keys \['second'\]"):
        evaluate_folder(captioned, tmp_path / "c", metrics=["clap_laion"],
                        clap_laion={"path": str(path), "tokenizer": str(tokenizer), "second": 4})
    check_overrides(["evaluate.clap_laion.seconds=4", "evaluate.metrics=[clap_laion]"])
