"""Inception Score and mean KL over the PANNs CNN14 (audioldm_eval conventions), the CNN14 itself, and
``evaluate.metrics=[is, kl]``."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch

from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.encoders.panns import TINY_CNN14, Cnn14, load_cnn14
from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.media import write_mp4, write_wav
from avgen.metrics.classifier_scores import ClassifierInput, InceptionScore, MeanKL
from avgen.pretrained import ORIGINS, ExtractorWeightsMissing, sha256_file

# ------------------------------------------------------------------------------------ Inception Score


def dirichlet_probs(n: int, classes: int, seed: int, concentration: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(classes, concentration), size=n)


def numpy_inception_score(p: np.ndarray, splits: int, seed: int | None) -> tuple[float, float]:
    """audioldm_eval's calculate_isc written out: permute, split, exp(mean_x KL(p(y|x) || p(y)))."""
    if seed is not None:
        p = p[np.random.RandomState(seed).permutation(len(p))]
    n, scores = len(p), []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(marginal)), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize("splits, seed", [(10, 2020), (3, None), (1, 7)])
def test_inception_score_matches_numpy(splits, seed):
    p = dirichlet_probs(53, 12, seed=splits)
    metric = InceptionScore(splits=splits, shuffle_seed=seed)
    for chunk in np.array_split(np.log(p), 4):  # log p as logits: softmax gives p back
        metric.update(torch.from_numpy(chunk))
    result = metric.compute()
    mean, std = numpy_inception_score(p, splits, seed)
    assert result["mean"].item() == pytest.approx(mean, rel=1e-10)
    assert result["std"].item() == pytest.approx(std, rel=1e-8, abs=1e-12)


def test_inception_score_closed_forms():
    classes = 6
    one_hot = np.eye(classes)[np.tile(np.arange(classes), 4)]  # every class equally often: uniform marginal
    metric = InceptionScore(splits=1)
    metric.update(torch.log(torch.from_numpy(one_hot)))  # -inf logits: p log p must count as 0, not nan
    assert metric.compute()["mean"].item() == pytest.approx(classes, rel=1e-12)

    same = np.tile(dirichlet_probs(1, classes, seed=3), (20, 1))
    metric = InceptionScore(splits=4)
    metric.update(torch.from_numpy(np.log(same)))
    result = metric.compute()
    assert result["mean"].item() == pytest.approx(1.0, abs=1e-12)
    assert result["std"].item() == pytest.approx(0, abs=1e-12)

    too_few = InceptionScore()
    too_few.update(torch.zeros(6, 3))
    with pytest.raises(ValueError, match="at least 10 clips, got 6.*evaluate.panns.splits"):
        too_few.compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # states set by hand, not by update()
def test_inception_score_states_merged_across_processes_equal_one_process():
    logits = torch.from_numpy(np.log(dirichlet_probs(37, 9, seed=5)))
    single = InceptionScore(splits=5)
    single.update(logits)
    expected = single.compute()

    # a DistributedSampler hands rank r the clips r, r + 2, ...; each rank passes their global positions
    ranks = [InceptionScore(splits=5) for _ in range(2)]
    for rank, metric in enumerate(ranks):
        positions = torch.arange(rank, 37, 2)
        metric.update(logits[positions], index=positions)
    # DDP's all-gather of "cat" states: rank-major order, not the clips' order
    gathered = InceptionScore(splits=5)
    for name in gathered._defaults:
        assert gathered._reductions[name].__name__ == "dim_zero_cat"
        setattr(gathered, name, torch.cat([getattr(ranks[1], name)[0], getattr(ranks[0], name)[0]]))
    ranks[0].merge_state(ranks[1])  # torchmetrics puts the incoming states first
    for merged in (gathered, ranks[0]):
        result = merged.compute()
        assert result["mean"].item() == pytest.approx(expected["mean"].item(), rel=1e-12)
        assert result["std"].item() == pytest.approx(expected["std"].item(), rel=1e-9)
    # without the indices the gathered order would change the parts, and the value
    unordered = InceptionScore(splits=5)
    unordered.update(torch.cat([logits[1::2], logits[0::2]]))
    assert unordered.compute()["mean"].item() != pytest.approx(expected["mean"].item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------ KL


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_mean_kl_matches_rel_entr_on_hand_cases():
    ref = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    gen = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    for eps in (0.0, 1e-6):
        metric = MeanKL(eps=eps)
        metric.update(torch.from_numpy(np.log(gen[:1])), torch.from_numpy(np.log(ref[:1])))
        metric.update(torch.from_numpy(np.log(gen[1:])), torch.from_numpy(np.log(ref[1:])))
        softmax = metric.compute()["softmax"].item()
        # direction KL(reference || generated); eps on the generated side only, as audioldm_eval
        assert softmax == pytest.approx(scipy.special.rel_entr(ref, gen + eps).sum(axis=1).mean(), rel=1e-12)

        # the sigmoid variant: per-class probabilities summed as one unnormalised vector
        metric = MeanKL(eps=eps)
        metric.update(torch.from_numpy(logit(gen)), torch.from_numpy(logit(ref)))
        sigmoid = metric.compute()["sigmoid"].item()
        assert sigmoid == pytest.approx(scipy.special.rel_entr(ref, gen + eps).sum(axis=1).mean(), rel=1e-12)
    assert softmax > 0.3  # a real difference, not rounding

    # sigmoid sums need not be >= 0: p = 0.1 against q = 0.9 in one class
    metric = MeanKL(eps=0.0)
    metric.update(torch.tensor([[logit(np.array(0.9))]]), torch.tensor([[logit(np.array(0.1))]]))
    assert metric.compute()["sigmoid"].item() == pytest.approx(0.1 * np.log(0.1 / 0.9), rel=1e-12)


def test_mean_kl_without_eps_is_av_benchmarks_softmax_kl():
    """kl_passt: softmax only, no eps, reference first (av_bench/metrics/kl.py:22-29@050a5cd)."""
    metric = MeanKL(eps=0.0, variants=("softmax",))
    metric.update(torch.tensor([[np.log(0.5), np.log(0.5)]]), torch.tensor([[np.log(0.9), np.log(0.1)]]))
    assert set(metric.compute()) == {"softmax"}
    assert metric.compute()["softmax"].item() == pytest.approx(0.9 * np.log(1.8) + 0.1 * np.log(0.2), rel=1e-12)
    assert metric.compute()["softmax"].item() == pytest.approx(0.3681, abs=1e-4)
    swapped = MeanKL(eps=0.0, variants=("softmax",))
    swapped.update(torch.tensor([[np.log(0.9), np.log(0.1)]]), torch.tensor([[np.log(0.5), np.log(0.5)]]))
    assert swapped.compute()["softmax"].item() == pytest.approx(0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(5), rel=1e-12)

    g = torch.Generator().manual_seed(4)
    gen, ref = torch.randn(6, 527, generator=g) * 8, torch.randn(6, 527, generator=g) * 8
    gen[0, 3], ref[0, 3] = -200.0, 30.0  # a class the generated softmax rounds to 0: eps would cap its term
    harness = torch.nn.functional.kl_div(torch.log_softmax(gen.double(), 1), torch.log_softmax(ref.double(), 1),
                                         reduction="sum", log_target=True) / len(gen)
    metric = MeanKL(eps=0.0, variants=("softmax",))
    metric.update(gen, ref)
    assert metric.compute()["softmax"].item() == pytest.approx(harness.item(), rel=1e-12)
    assert harness.item() > 30  # finite, and far above what eps=1e-6 allows for that class
    with pytest.raises(ValueError, match="variants"):
        MeanKL(variants=("softmax", "logits"))


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_softmax_only_kl_states_merged_across_processes_equal_one_process():
    g = torch.Generator().manual_seed(5)
    gen, ref = torch.randn(9, 527, generator=g), torch.randn(9, 527, generator=g)
    single = MeanKL(eps=0.0, variants=("softmax",))
    single.update(gen, ref)
    ranks = [MeanKL(eps=0.0, variants=("softmax",)) for _ in range(2)]
    ranks[0].update(gen[:5], ref[:5])
    ranks[1].update(gen[5:], ref[5:])
    ranks[0].merge_state(ranks[1])
    assert set(ranks[0]._defaults) == {"softmax_sum", "count"}
    assert ranks[0].compute()["softmax"].item() == pytest.approx(single.compute()["softmax"].item(), rel=1e-12)


def test_mean_kl_of_identical_outputs_is_zero():
    logits = torch.randn(7, 527, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    exact = MeanKL(eps=0.0)
    exact.update(logits, logits.clone())
    assert all(v.item() == pytest.approx(0.0, abs=1e-12) for v in exact.compute().values())
    # eps on the generated side: each class adds p·log(p / (p + eps)) in (-eps, 0], so -527·eps < KL <= 0
    default = MeanKL()
    default.update(logits, logits.clone())
    assert all(-527e-6 < v.item() <= 0 for v in default.compute().values())


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_mean_kl_states_merged_across_processes_equal_one_process():
    g = torch.Generator().manual_seed(1)
    gen, ref = torch.randn(11, 20, generator=g), torch.randn(11, 20, generator=g)
    single = MeanKL()
    single.update(gen, ref)
    expected = single.compute()
    ranks = [MeanKL() for _ in range(2)]
    ranks[0].update(gen[:4], ref[:4])
    ranks[1].update(gen[4:], ref[4:])
    summed = MeanKL()
    for name in summed._defaults:
        assert summed._reductions[name].__name__ == "dim_zero_sum"
        setattr(summed, name, getattr(ranks[0], name) + getattr(ranks[1], name))
    ranks[0].merge_state(ranks[1])
    for merged in (summed, ranks[0]):
        for variant, value in merged.compute().items():
            assert value.item() == pytest.approx(expected[variant].item(), rel=1e-12)


def test_classifier_input_follows_audioldm_eval():
    prepare = ClassifierInput()
    short = prepare(np.full(8000, 0.25, dtype=np.float32) + np.sin(np.arange(8000) / 5), 16000)
    assert short.shape == (32000,) and torch.all(short[8000:] == 0)  # zero-padded at the end to 2 s
    assert short[:8000].mean().item() == pytest.approx(0, abs=1e-6)  # DC removed before padding
    long = prepare(np.random.default_rng(0).standard_normal(3 * 22050), 22050)
    assert long.shape == (48000,)  # resampled, not cut
    assert prepare.describe() == {"sample_rate": 16000, "remove_dc": True, "min_seconds": 2.0,
                                  "resampler": "torchaudio.functional.resample (sinc_interp_hann, "
                                               "lowpass_filter_width=6, rolloff=0.99)"}


# --------------------------------------------------------------------------------------------- CNN14

# The state-dict keys of the published Cnn14_16k_mAP=0.438.pth ("model" entry), in order. Source:
# qiuqiangkong/audioset_tagging_cnn pytorch/models.py (Cnn14_16k: torchlibrosa Spectrogram ->
# stft.conv_real / stft.conv_imag, LogmelFilterBank -> melW, bn0, ConvBlock conv1, conv2, bn1, bn2,
# fc1, fc_audioset) and torchlibrosa/stft.py; third-party loaders of the Zenodo 3987831 files pop
# the same front-end and bn0 key names.
_BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
OFFICIAL_CNN14_KEYS = (
    ["spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
     "logmel_extractor.melW"]
    + [f"bn0.{k}" for k in _BN]
    + [f"conv_block{i}.{key}" for i in range(1, 7)
       for key in ["conv1.weight", "conv2.weight", *(f"bn1.{k}" for k in _BN), *(f"bn2.{k}" for k in _BN)]]
    + ["fc1.weight", "fc1.bias", "fc_audioset.weight", "fc_audioset.bias"]
)


@pytest.fixture(scope="module")
def full_cnn14() -> Cnn14:
    return Cnn14()


def test_cnn14_state_dict_has_the_official_keys_and_shapes(full_cnn14):
    state = full_cnn14.state_dict()
    assert list(state) == OFFICIAL_CNN14_KEYS
    assert state["spectrogram_extractor.stft.conv_real.weight"].shape == (257, 1, 512)
    assert state["logmel_extractor.melW"].shape == (257, 64)
    assert state["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert state["fc_audioset.weight"].shape == (527, 2048)
    # the paper's 80.8M parameters, without the STFT kernels of the front end
    stft = 2 * 257 * 512
    assert (sum(p.numel() for p in full_cnn14.parameters()) - stft) / 1e6 == pytest.approx(80.8, abs=0.05)


def test_tiny_cnn14_classifies_one_second_of_audio():
    model = Cnn14.tiny()
    audio = torch.randn(3, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    out = model(audio)
    assert out["logits"].shape == (3, 527) and out["embedding"].shape == (3, TINY_CNN14["embedding_dim"])
    assert torch.equal(out["clipwise_output"], torch.sigmoid(out["logits"]))
    # eval mode whatever the parent does, so each clip's output does not depend on its batch
    model.train()
    assert not model.training
    assert torch.allclose(model(audio[1:2])["logits"], out["logits"][1:2], atol=1e-5)
    with pytest.raises(ValueError, match="at least 4960 samples"):
        model(torch.zeros(1, 4959))


def test_cnn14_front_end_matches_librosa():
    import librosa

    audio = np.random.default_rng(1).standard_normal(16000) * 0.1
    audio += 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    power = np.abs(librosa.stft(audio, n_fft=512, hop_length=160, window="hann", center=True,
                                pad_mode="reflect")) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000) @ power
    expected = (10 * np.log10(np.maximum(mel, 1e-10))).T  # (T, 64), top_db None
    got = Cnn14.tiny().log_mel(torch.from_numpy(audio).float()[None])[0, 0].numpy()
    assert got.shape == expected.shape == (101, 64)
    assert np.abs(got - expected).max() < 1e-3


def save_official_style(state: dict, path: Path) -> Path:
    """As PANNs checkpoints are published: {"iteration", "model", "sampler"}, the sampler holding numpy
    arrays and scalars, in torch's legacy format, pickled under numpy 1.x (``numpy.core.multiarray``)."""
    sampler = {"indexes_per_class": [np.arange(5, dtype=np.int64)], "queue": [np.int64(3), 4],
               "pointers_of_classes": [0, 2]}
    buf = io.BytesIO()
    torch.save({"iteration": 660000, "model": state, "sampler": sampler}, buf, _use_new_zipfile_serialization=False,
               pickle_protocol=2)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    return path


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny random CNN14 whose BatchNorm statistics are measured on noise and tones, so that its logits
    (which would otherwise be nearly constant) depend on the clip, saved as the published files are."""
    torch.manual_seed(seed)
    model = Cnn14.tiny()
    t = torch.arange(16000) / 16000
    calibration = torch.cat([torch.randn(4, 16000) * torch.tensor([[0.01], [0.05], [0.2], [0.5]]),
                             torch.sin(2 * torch.pi * torch.tensor([[110.0], [440.0], [1500.0], [5000.0]]) * t)])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = those of the calibration batch
    torch.nn.Module.train(model, True)  # past Cnn14.train(), which keeps the extractor in eval mode
    with torch.no_grad():
        model(calibration)
    torch.nn.Module.train(model, False)
    return save_official_style(model.state_dict(), path)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "Cnn14_16k_mAP=0.438.pth")


def test_checkpoint_round_trip_through_load_cnn14(tmp_path, tiny_weights):
    path = tiny_weights
    assert b"numpy.core.multiarray" in path.read_bytes()
    saved = torch.load(path, weights_only=False)["model"]
    model = load_cnn14(path, **TINY_CNN14)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert model.identity()["sha256"] == {"panns": sha256_file(path)}
    audio = torch.randn(2, 20000, generator=torch.Generator().manual_seed(2))
    reference = Cnn14.tiny()
    reference.load_state_dict(saved)
    assert torch.equal(model(audio)["logits"], reference(audio)["logits"])
    # the current zip format with only the "model" entry loads too
    torch.save({"model": saved}, tmp_path / "plain.pth")
    assert torch.equal(load_cnn14(tmp_path / "plain.pth", **TINY_CNN14)(audio)["logits"], reference(audio)["logits"])


def test_load_cnn14_errors_name_the_file_and_the_config_key(tmp_path, tiny_weights):
    missing = tmp_path / "nowhere" / ORIGINS["panns"].file
    with pytest.raises(ExtractorWeightsMissing) as err:
        load_cnn14(missing)
    for part in (str(missing), "evaluate.panns.path", "Cnn14_16k_mAP=0.438.pth", "3987831", "'is' and 'kl'"):
        assert part in str(err.value)
    with pytest.raises(ValueError, match="does not fit Cnn14"):
        load_cnn14(tiny_weights)  # full-size architecture, tiny weights
    torch.save(Cnn14.tiny().state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"not a PANNs checkpoint \{'model'"):
        load_cnn14(tmp_path / "bare.pth", **TINY_CNN14)


# ---------------------------------------------------------------------------------------- evaluate

GEO = ClipGeometry(seconds=2.0, fps=8, height=32, width=32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    """pred: a0..a3 sounding mp4s and a zero-byte broken.mp4; ref: a0 the same audio as a wav, a1 another
    clip's audio as a 22.05 kHz wav, a2 another clip as a sounding mp4, no a3."""
    pred, ref = tmp_path_factory.mktemp("pred"), tmp_path_factory.mktemp("ref")
    for i in range(4):
        clip = generate_clip(60 + i, GEO)
        write_mp4(pred / f"a{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
    (pred / "broken.mp4").write_bytes(b"")
    shutil.copy(pred / "a0.mp4", ref / "a0.mp4")
    write_wav(ref / "a1.wav", generate_clip(70, ClipGeometry(seconds=2.0, fps=8, height=32, width=32,
                                                             sample_rate=22050)).audio, 22050)
    other = generate_clip(71, GEO)
    write_mp4(ref / "a2.mp4", other.frames, GEO.fps, audio=other.audio * 0.3, sample_rate=GEO.sample_rate)
    return pred, ref


def test_evaluate_is_and_kl_write_values_and_weight_hash(tmp_path, clips, tiny_weights):
    from avgen.media import decode_flac
    from avgen.metrics.av_align import load_av

    pred, ref = clips
    weights = tiny_weights
    panns = {"path": str(weights), "splits": 2, **TINY_CNN14}
    result = evaluate_folder(pred, tmp_path / "out", metrics=["is", "kl"], ref_dir=ref, panns=panns)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["metrics"] == result["metrics"]
    assert set(saved["metrics"]["is"]) == {"mean", "std"} and set(saved["metrics"]["kl"]) == {"sigmoid", "softmax"}
    for name in ("is", "kl"):
        info = saved["extractors"][name]
        assert info["sha256"] == {"panns": sha256_file(weights)}
        assert info["input"]["resampler"].startswith("torchaudio.functional.resample")
    assert saved["extractors"]["is"]["clips"] == 4 and saved["extractors"]["kl"]["pairs"] == 3
    reasons = {f["clip"]: f["reason"] for f in saved["failures"]}
    assert set(reasons) == {"broken.mp4", "a3.mp4"} and "kl: no reference a3.mp4 or a3.wav" in reasons["a3.mp4"]

    # the same numbers computed directly from the decoded clips
    model, prepare = load_cnn14(weights, **TINY_CNN14), ClassifierInput()

    def logits(audio, sr):
        with torch.no_grad():
            return model(prepare(audio, sr)[None])["logits"]

    generated = {f"a{i}": logits(*load_av(pred / f"a{i}.mp4")[2:]) for i in range(4)}
    references = {"a0": logits(*load_av(ref / "a0.mp4")[2:]), "a1": logits(*decode_flac((ref / "a1.wav").read_bytes())),
                  "a2": logits(*load_av(ref / "a2.mp4")[2:])}
    inception = InceptionScore(splits=2)
    inception.update(torch.cat(list(generated.values())))
    kl = MeanKL()
    kl.update(torch.cat([generated[k] for k in references]), torch.cat(list(references.values())))
    assert result["metrics"]["is"]["mean"] == pytest.approx(inception.compute()["mean"].item(), rel=1e-9)
    assert result["metrics"]["is"]["mean"] > 1 + 1e-4  # the tiny net's posteriors differ between clips
    expected_kl = kl.compute()
    for variant in ("sigmoid", "softmax"):
        assert result["metrics"]["kl"][variant] == pytest.approx(expected_kl[variant].item(), rel=1e-6)
    shifted = MeanKL()  # pairs by stem matter: a0..a2 against the references of a1, a2, a0 give another value
    shifted.update(torch.cat([generated[k] for k in ("a0", "a1", "a2")]),
                   torch.cat([references[k] for k in ("a1", "a2", "a0")]))
    assert shifted.compute()["softmax"].item() != pytest.approx(expected_kl["softmax"].item(), rel=0.05)
    identical = MeanKL()
    identical.update(generated["a0"], references["a0"])
    assert all(-527e-6 < v.item() <= 0 for v in identical.compute().values())  # the copied clip's pair: ~0


def test_evaluate_is_and_kl_configuration_errors(tmp_path, clips, tiny_weights):
    pred = clips[0]
    weights = tiny_weights
    panns = {"path": str(weights), "splits": 2, **TINY_CNN14}
    with pytest.raises(ConfigError, match="evaluate.ref_dir"):
        evaluate_folder(pred, tmp_path / "a", metrics=["kl"], panns=panns)
    with pytest.raises(ExtractorWeightsMissing, match="evaluate.panns.path"):
        evaluate_folder(pred, tmp_path / "b", metrics=["is"], panns={"path": None, "splits": 2})
    with pytest.raises(ConfigError, match="evaluate.panns.splits=10 needs at least 10 clips"):
        evaluate_folder(pred, tmp_path / "c", metrics=["is"], panns={**panns, "splits": 10})
    with pytest.raises(ConfigError, match="evaluate.panns: unknown keys \\['split'\\]"):
        evaluate_folder(pred, tmp_path / "d", metrics=["is"], panns={**panns, "split": 3})
    shards = tmp_path / "split"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="shard split"):
        evaluate_folder(pred, tmp_path / "e", metrics=["kl"], ref_dir=shards, panns=panns)


def test_kl_pairs_samples_with_shard_split_clips_by_their_recorded_source(tmp_path, tiny_shards, tiny_weights):
    """evaluate.ref_dir=<shard split>: each generated clip is paired with the split clip named as 'source' in
    <stem>.json (what the sample command writes); the clips' own audio gives KL ~0, a clip without a
    source or with an unknown one is reported."""
    from avgen.evaluation.references import reference_set
    from avgen.media import write_wav
    from avgen.samples import sample_source

    split = tiny_shards / "test"
    refs = [(clip.name, *clip.load()[1:]) for clip in reference_set(split)]
    pred = tmp_path / "pred"
    pred.mkdir()
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    for i, (key, audio, sr) in enumerate(refs[:3]):
        write_mp4(pred / f"sample_{i:04d}.mp4", frames, 8)
        write_wav(pred / f"sample_{i:04d}.wav", audio, sr)  # the reference's own audio
        (pred / f"sample_{i:04d}.json").write_text(json.dumps({"prompt": "", "source": key}))
    write_mp4(pred / "sample_0003.mp4", frames, 8)
    write_wav(pred / "sample_0003.wav", refs[3][1], refs[3][2])  # no json: no source
    write_mp4(pred / "sample_0004.mp4", frames, 8)
    write_wav(pred / "sample_0004.wav", refs[4][1][::-1].copy(), refs[4][2])
    (pred / "sample_0004.json").write_text(json.dumps({"prompt": "", "source": "synthetic_hits/none/0"}))
    assert sample_source(pred / "sample_0000.mp4") == refs[0][0] and sample_source(pred / "sample_0003.mp4") is None

    panns = {"path": str(tiny_weights), "splits": 2, **TINY_CNN14}
    result = evaluate_folder(pred, tmp_path / "out", metrics=["kl"], ref_dir=split, panns=panns)
    assert result["extractors"]["kl"]["pairs"] == 3
    import csv

    with open(tmp_path / "out" / "per_clip.csv") as f:
        rows = {r["clip"]: r for r in csv.DictReader(f)}
    assert [bool(rows[f"sample_{i:04d}.mp4"]["kl_softmax"]) for i in range(5)] == [True, True, True, False, False]
    assert all(-527e-6 < v <= 1e-9 for v in result["metrics"]["kl"].values())  # identical audio in every pair
    reasons = {f["clip"]: f["reason"] for f in result["failures"]}
    assert "no source key" in reasons["sample_0003.mp4"]
    assert "not a clip of the shard split" in reasons["sample_0004.mp4"]
    # pairing by source matters: the same samples against the wrong clips give a clearly positive KL
    for i in range(3):
        (pred / f"sample_{i:04d}.json").write_text(json.dumps({"prompt": "", "source": refs[(i + 1) % 3][0]}))
    shuffled = evaluate_folder(pred, tmp_path / "out2", metrics=["kl"], ref_dir=split, panns=panns)
    assert shuffled["metrics"]["kl"]["softmax"] > 1e-4


def test_audio_is_shuffle_seed_comes_from_the_config(tmp_path, clips, tiny_weights):
    """evaluate.panns.shuffle_seed (audioldm_eval: 2020) sets the permutation before splitting."""
    from avgen.metrics.av_align import load_av

    pred = clips[0]
    model, prepare = load_cnn14(tiny_weights, **TINY_CNN14), ClassifierInput()
    with torch.no_grad():
        logits = torch.cat([model(prepare(*load_av(pred / f"a{i}.mp4")[2:])[None])["logits"] for i in range(4)])
    for seed in (2020, None, 7):
        result = evaluate_folder(pred, tmp_path / str(seed), metrics=["is"],
                                 panns={"path": str(tiny_weights), "splits": 2, "shuffle_seed": seed, **TINY_CNN14})
        expected = InceptionScore(splits=2, shuffle_seed=seed)
        expected.update(logits)
        assert result["extractors"]["is"]["shuffle_seed"] == seed
        assert result["metrics"]["is"]["mean"] == pytest.approx(expected.compute()["mean"].item(), rel=1e-9)
