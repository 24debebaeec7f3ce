"""``evaluate.metrics=[pam]`` and ``[cavp]`` end to end with tiny twins written in the published layouts
(``CLAP_weights_2023.pth``, ``cavp_epoch66.ckpt``): each clip's score against a computation written out from the
reference code's steps, one MS-CLAP load for ``clap_ms`` + ``pam``, failures reported per clip, two processes merging
to the one-process value; and ``fd_panns`` = ``fad`` with the PANNs extractor, in the same run as VGGish's FAD."""

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

from avgen.encoders.laion_clap import LaionClapMel
from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.evaluation.scorers import SCORERS, BuildContext, feed_scorers
from avgen.media import decode_video, read_clip, write_mp4
from avgen.pretrained import sha256_file
from tests.encoders.test_ms_clap import ms_clap_twin  # noqa: F401  (fixture)

# scorers add per-clip scores without update(), so torchmetrics warns at compute()
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
LOGIT_SCALE = math.log(20.0)  # not msclap's initial ln(1 / 0.07): shows the file's value is the one used


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "per_clip.csv") as f:
        return {r["clip"]: r for r in csv.DictReader(f)}


# ------------------------------------------------------------------------------------------------ PAM
@pytest.fixture(scope="module")
def sounds(tmp_path_factory) -> Path:
    """c0.mp4 + c0.wav: 4 s of stereo at 22.05 kHz (a loud tone left, quiet noise right); c1.mp4 + c1.wav: 3 s of a
    chirp, mono."""
    folder = tmp_path_factory.mktemp("sounds")
    rng = np.random.default_rng(4)
    t4, t3 = np.arange(4 * 22_050) / 22_050, np.arange(3 * 22_050) / 22_050
    waves = [np.stack([0.8 * np.sin(2 * np.pi * 440 * t4), 0.01 * rng.standard_normal(len(t4))], axis=1),
             0.5 * np.sin(2 * np.pi * (200 + 1500 * t3) * t3)]
    for i, wave in enumerate(waves):
        write_mp4(folder / f"c{i}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 8)
        sf.write(folder / f"c{i}.wav", wave.astype(np.float32), 22_050, subtype="FLOAT")
        (folder / f"c{i}.txt").write_text("a tone")
    return folder


@pytest.fixture(scope="module")
def pam_file(ms_clap_twin, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny MS-CLAP file with the contrastive temperature set to ln 20."""
    _, path, _ = ms_clap_twin
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"]["logit_scale"] = torch.tensor(LOGIT_SCALE)
    out = tmp_path_factory.mktemp("pam") / "CLAP_weights_2023.pth"
    torch.save(checkpoint, out)
    return out


def direct_pam(clap, gpt2: Path, wave: np.ndarray, sr: int) -> tuple[float, int]:
    """(PAM, windows) computed as soham97/PAM does, written out: torchaudio's Resample on the (C, S) file, reshape(-1),
    AudioDataset.process_audio (repeat, or full 7-s windows + the last 7 s), the original tiny modules with a fresh
    front end, the prompts tokenised here, softmax(e^scale · cos) over the two prompts, mean over windows."""
    from transformers import AutoTokenizer

    samples = 308_700
    flat = torchaudio.transforms.Resample(sr, 44_100)(torch.from_numpy(np.atleast_2d(wave))).reshape(-1)
    if flat.shape[0] <= samples:
        flat = flat.repeat(math.ceil(samples / flat.shape[0]))[:samples]
    else:
        cut = flat.shape[0] // samples
        flat = torch.cat([flat[:cut * samples], flat[-samples:]]) if flat.shape[0] % samples else flat
    chunks = flat.reshape(-1, samples)
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2), local_files_only=True)
    tokenizer.add_special_tokens({"pad_token": "!"})
    prompts = ["the sound is clear and clean.", "the sound is noisy and with artifacts."]
    with torch.no_grad():
        sound = clap.audio_projection(clap.audio_model(
            input_features=LaionClapMel(32_000, 1024, 320, 64, 50, 14_000)(chunks)).pooler_output)
        text = []
        for prompt in prompts:
            tokens = tokenizer(prompt + " <|endoftext|>", max_length=77, padding="max_length", return_tensors="pt")
            hidden = clap.text_model(**tokens).last_hidden_state
            text.append(clap.text_projection(hidden[:, int((tokens["input_ids"] != 0).sum()) - 1]))
        text = torch.cat(text)
    sound, text = F.normalize(sound, dim=-1), F.normalize(text, dim=-1)
    probs = torch.softmax(math.exp(LOGIT_SCALE) * text @ sound.T, dim=0)[0]  # PAM/PAM.py:190-202
    return float(probs.mean()), len(chunks)


def test_pam_scores_each_audio_file_as_pam_does(tmp_path, sounds, ms_clap_twin, pam_file):  # noqa: F811
    clap, _, gpt2 = ms_clap_twin
    files = {"path": str(pam_file), "text_model": str(gpt2)}
    result = evaluate_folder(sounds, tmp_path / "out", metrics=["pam"], pam={**files, "windows": "all"})
    rows = _rows(tmp_path / "out")
    expected = {}
    for i in range(2):
        wave, sr = sf.read(sounds / f"c{i}.wav", dtype="float32", always_2d=True)
        expected[f"c{i}.mp4"] = direct_pam(clap, gpt2, wave.T, sr)
    assert {c: float(r["pam"]) for c, r in rows.items()} == pytest.approx(
        {c: v for c, (v, _) in expected.items()}, abs=1e-5)
    # c0: 4 s of stereo at 22.05 kHz = 8 s of samples at 44.1 kHz: one window and the last 7 s; c1: 3 s, repeated
    assert {c: int(r["pam_windows"]) for c, r in rows.items()} == {"c0.mp4": 2, "c1.mp4": 1}
    assert {r["pam_audio"] for r in rows.values()} == {"c0.wav", "c1.wav"}
    assert result["metrics"]["pam"] == pytest.approx(np.mean([v for v, _ in expected.values()]), abs=1e-5)
    assert 0 < result["metrics"]["pam"] < 1 and abs(expected["c0.mp4"][0] - expected["c1.mp4"][0]) > 1e-3
    info = result["extractors"]["pam"]
    assert info["logit_scale"] == pytest.approx(LOGIT_SCALE) and info["logit_scale_source"] == "checkpoint"
    assert info["sha256"]["ms_clap"] == sha256_file(pam_file) and info["windows"] == "all"
    assert info["prompts"] == ["the sound is clear and clean.", "the sound is noisy and with artifacts."]


def test_pam_and_clap_ms_share_one_model_load(ms_clap_twin, pam_file, monkeypatch):  # noqa: F811
    import avgen.encoders.ms_clap as ms_clap

    _, _, gpt2 = ms_clap_twin
    loads = []
    original = ms_clap.load_ms_clap
    monkeypatch.setattr(ms_clap, "load_ms_clap", lambda *a, **k: loads.append(a) or original(*a, **k))
    files = {"path": str(pam_file), "text_model": str(gpt2)}
    ctx = BuildContext({"clap_ms": files, "pam": files}, None, "cpu")
    clap_ms, pam = SCORERS["clap_ms"].build(ctx), SCORERS["pam"].build(ctx)
    assert len(loads) == 1 and pam.metric.model is clap_ms.metric.model
    other = BuildContext({"clap_ms": files, "pam": {**files, "path": str(ms_clap_twin[1])}}, None, "cpu")
    SCORERS["clap_ms"].build(other), SCORERS["pam"].build(other)
    assert len(loads) == 3  # another file for pam: its own load


def test_pam_configuration_errors_name_the_key(tmp_path, sounds, ms_clap_twin, pam_file):  # noqa: F811
    from avgen.encoders.ms_clap import MsClapWeightsMissing

    _, _, gpt2 = ms_clap_twin
    with pytest.raises(ConfigError, match=r"evaluate.pam.windows='middle'"):
        evaluate_folder(sounds, tmp_path / "a", metrics=["pam"],
                        pam={"path": str(pam_file), "text_model": str(gpt2), "windows": "middle"})
    with pytest.raises(ConfigError, match=r"evaluate.pam: unknown keys \['seconds'\]"):
        evaluate_folder(sounds, tmp_path / "b", metrics=["pam"],
                        pam={"path": str(pam_file), "text_model": str(gpt2), "seconds": 7})
    with pytest.raises(MsClapWeightsMissing, match="evaluate.pam.path"):
        evaluate_folder(sounds, tmp_path / "c", metrics=["pam"], pam={"path": None, "text_model": str(gpt2)})


class _Clap(torch.nn.Module):
    """Stands in for MS-CLAP 2023 (so the merge test runs no HTSAT): a window's embedding is its (mean, std, 1)."""

    logit_scale = math.log(3.0)

    def audio_embeddings(self, waves):
        return torch.stack([waves.mean(1), waves.std(1), torch.ones(len(waves))], dim=1)

    def text_embeddings(self, texts):
        return torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def describe(self):
        return {}


def test_pam_two_processes_merge_to_the_one_process_value(sounds):
    """Each process scores part of the clips; the reduced states give the one-process PAM (as
    avgen.evaluation.processes.Processes.reduce merges them under torchrun)."""
    clips = sorted(sounds.glob("*.mp4"))
    options = {"pam": {"path": "p", "text_model": "t"}}

    def run(part):
        ctx = BuildContext(options, None, "cpu", None, part, clips, {("ms_clap", "p", "t"): _Clap()})
        scorer = SCORERS["pam"].build(ctx)
        feed_scorers([scorer], part, [])
        return scorer

    one, ranks = run(clips), [run(clips[:1]), run(clips[1:])]
    for a, b in zip(ranks[0].states(), ranks[1].states()):
        a.merge_state(b)
    assert ranks[0].result()[1]["clips"] == one.result()[1]["clips"] == 2
    assert ranks[0].result()[0] == pytest.approx(one.result()[0], abs=1e-12)
    assert ranks[0].result()[0] != pytest.approx(ranks[1].result()[0], abs=1e-6)  # the parts differ


# ------------------------------------------------------------------------------------------------ CAVP
@pytest.fixture(scope="module")
def cavp_twin(tmp_path_factory):
    """(audio branch, video branch, cavp_epoch66.ckpt in Diff-Foley's layout: {'state_dict': {'module.…'}})."""
    from avgen.encoders.cavp import TINY_CAVP, CAVPAudio, save_tiny_format
    from avgen.encoders.slowonly import tiny_cavp_video

    torch.manual_seed(0)
    audio, video = CAVPAudio(**TINY_CAVP).eval(), tiny_cavp_video().eval()
    path = save_tiny_format([audio, video], tmp_path_factory.mktemp("cavp") / "cavp_epoch66.ckpt")
    return audio, video, path


@pytest.fixture(scope="module")
def cavp_clips(tmp_path_factory) -> Path:
    """a.mp4 2.4 s and b.mp4 1.3 s (8 fps, 16 kHz), s.mp4 0.75 s (too short)."""
    folder = tmp_path_factory.mktemp("cavp_pred")
    rng = np.random.default_rng(3)
    for name, seconds in (("a", 2.4), ("b", 1.3), ("s", 0.75)):
        frames = rng.integers(0, 256, (round(8 * seconds), 48, 64, 3), dtype=np.uint8)
        audio = (0.3 * rng.standard_normal(round(16_000 * seconds))).astype(np.float32)
        write_mp4(folder / f"{name}.mp4", frames, 8, audio=audio, sample_rate=16_000)
    return folder


def direct_cavp(audio_model, video_model, path: Path) -> float:
    """The SVG baseline's cavp_score written out: d = int(duration); librosa 0.9's |stft| (n_fft 1024, hop 250,
    periodic Hann, centred with 512 zeros each side) of the first 16000 d − 1 samples in numpy, librosa's mel bank
    (128, 125–7600 Hz), the dB clip; spec_encoder → L2 norm; the frames at 4 fps squashed to 224 × 224 in [0, 1] →
    the video branch; cosine per step, mean."""
    import librosa

    from avgen.encoders.cavp_video import preprocess

    clip = read_clip(path)
    seconds = int(max(len(clip.frames) / float(clip.fps), len(clip.audio) / clip.sample_rate))
    y = np.zeros(16_000 * seconds, dtype=np.float32)
    y[:min(len(y), len(clip.audio))] = clip.audio[:len(y)]
    y = y[:-1]
    padded = np.pad(y, 512)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    frames_ = np.stack([padded[k * 250:k * 250 + 1024] * window for k in range(1 + len(y) // 250)])
    magnitude = np.abs(np.fft.rfft(frames_, axis=1)).T  # (513, T)
    mel = librosa.filters.mel(sr=16_000, n_fft=1024, fmin=125, fmax=7600, n_mels=128) @ magnitude
    spec = np.clip((20 * np.log10(np.maximum(mel, 1e-5)) - 20 + 100) / 100, 0, 1)
    frames, _ = decode_video(path, fps=4, num_frames=4 * seconds)
    with torch.no_grad():
        sound = F.normalize(audio_model.spec_encoder(torch.from_numpy(spec.T).float()[None, None]), dim=-1)[0]
        pixels = preprocess(torch.from_numpy(frames).permute(0, 3, 1, 2))
        vision = video_model(pixels[None])[0]
    return float(F.cosine_similarity(vision.double(), sound.double(), dim=1).mean())


def test_cavp_score_of_each_clip_and_the_too_short_one(tmp_path, cavp_twin, cavp_clips):
    audio_model, video_model, path = cavp_twin
    result = evaluate_folder(cavp_clips, tmp_path / "out", metrics=["cavp"], cavp={"path": str(path)})
    rows = _rows(tmp_path / "out")
    expected = {name: direct_cavp(audio_model, video_model, cavp_clips / name) for name in ("a.mp4", "b.mp4")}
    assert {c: float(rows[c]["cavp"]) for c in expected} == pytest.approx(expected, abs=1e-5)
    assert rows["a.mp4"]["cavp_seconds"] == "2" and rows["b.mp4"]["cavp_seconds"] == "1"
    assert abs(expected["a.mp4"] - expected["b.mp4"]) > 1e-4 and abs(expected["a.mp4"]) < 1
    assert result["metrics"]["cavp"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    assert [f["clip"] for f in result["failures"]] == ["s.mp4"]
    assert "shorter than 1 s" in result["failures"][0]["reason"]
    info = result["extractors"]["cavp"]
    assert info["sha256"] == {"cavp": sha256_file(path)} and info["clips"] == 2 and info["fps"] == 4
    assert info["protocol"].startswith("CAVP score, SonyResearch/SVG_baseline@e8ebd06")
    with pytest.raises(FileNotFoundError, match="evaluate.cavp.path"):
        evaluate_folder(cavp_clips, tmp_path / "b", metrics=["cavp"], cavp={"path": str(tmp_path / "none.ckpt")})


def test_cavp_video_is_encoded_in_chunks_of_40_frames(cavp_twin, monkeypatch):
    """Frames go in chunks of CHUNK_FRAMES (the script's batch_size 40), each chunk a clip of its own for the (3, 1, 1)
    convs; checked with chunks of 6 on 8 frames (the same code path, a fifth of the compute)."""
    import avgen.metrics.cavp_score as cavp_score
    from avgen.encoders.cavp import load_cavp
    from avgen.encoders.cavp_video import load_cavp_video, preprocess

    assert cavp_score.CHUNK_FRAMES == 40
    monkeypatch.setattr(cavp_score, "CHUNK_FRAMES", 6)
    _, video_model, path = cavp_twin
    metric = cavp_score.CAVPScore(load_cavp(path, "evaluate.cavp.path"), load_cavp_video(path, "evaluate.cavp.path"))
    frames = np.random.default_rng(0).integers(0, 256, (8, 24, 32, 3), dtype=np.uint8)
    pixels = preprocess(torch.from_numpy(frames).permute(0, 3, 1, 2))
    with torch.no_grad():
        tokens = metric.video_tokens(frames)
        chunked = torch.cat([video_model(pixels[:6][None])[0], video_model(pixels[6:][None])[0]])
        whole = video_model(pixels[None])[0]
    torch.testing.assert_close(tokens, chunked, atol=1e-5, rtol=0)
    assert (tokens[4:8] - whole[4:8]).abs().max() > 1e-4  # the chunk border changes the tokens near it


def test_cavp_two_processes_merge_to_the_one_process_value(cavp_twin, cavp_clips):
    _, _, path = cavp_twin
    clips = sorted(cavp_clips.glob("*.mp4"))[:2]

    def run(part):
        scorer = SCORERS["cavp"].build(BuildContext({"cavp": {"path": str(path)}}, None, "cpu", None, part, clips))
        feed_scorers([scorer], part, [])
        return scorer

    one, ranks = run(clips), [run(clips[:1]), run(clips[1:])]
    for a, b in zip(ranks[0].states(), ranks[1].states()):
        a.merge_state(b)
    assert ranks[0].result()[0] == pytest.approx(one.result()[0], abs=1e-12)


# ------------------------------------------------------------------------------------------------ FD on PANNs
def test_fd_panns_equals_fad_with_the_panns_extractor_in_one_run(tmp_path, cavp_clips):
    from avgen.encoders.panns import TINY_CNN14, Cnn14

    weights = tmp_path / "cnn14.pth"
    torch.manual_seed(0)
    torch.save({"model": Cnn14.tiny().state_dict()}, weights)
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(9)
    for i in range(3):
        write_mp4(ref / f"r{i}.mp4", rng.integers(0, 256, (16, 48, 64, 3), dtype=np.uint8), 8,
                  audio=rng.uniform(-0.9, 0.9, 32_000).astype(np.float32), sample_rate=16_000)
    panns = {"panns_path": str(weights), **TINY_CNN14}
    result = evaluate_folder(cavp_clips, tmp_path / "out", metrics=["fad", "fd_panns"], ref_dir=ref,
                             cache_dir=tmp_path / "cache", fad={"extractor": "panns", **panns}, fd_panns=panns)
    assert result["metrics"]["fd_panns"] == pytest.approx(result["metrics"]["fad"], rel=1e-9)
    assert result["metrics"]["fd_panns"] > 0
    assert result["extractors"]["fd_panns"]["name"] == "panns_cnn14_embedding"
    with pytest.raises(ConfigError, match="evaluate.fd_panns.extractor"):
        evaluate_folder(cavp_clips, tmp_path / "b", metrics=["fd_panns"], ref_dir=ref,
                        fd_panns={"extractor": "vggish", **panns})
