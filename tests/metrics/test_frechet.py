"""Fréchet distance (formula, DDP merging, reference statistics) and the pinned extractors."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from avgen.encoders.registry import build_extractor
from avgen.encoders.vggish import TINY_VGGISH, VGGishFeatures, vggish_mel_matrix
from avgen.encoders.video_classifiers import I3DFeatures
from avgen.metrics.frechet import FrechetDistance, frechet_distance
from avgen.pretrained import ORIGINS, ExtractorWeightsMissing


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook computation: sample statistics and scipy's general matrix square root."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def features(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * scale + shift


def fd_of(a: torch.Tensor, b: torch.Tensor) -> float:
    metric = FrechetDistance(num_features=a.shape[1])
    metric.update(a, real=True)
    metric.update(b, real=False)
    return metric.compute().item()


# --------------------------------------------------------------------------------------- formula


@pytest.mark.parametrize("d", [1, 3, 16, 64])
def test_metric_matches_scipy_reference(d):
    real, fake = features(4 * d + 40, d, seed=d), features(3 * d + 50, d, seed=100 + d, scale=1.5, shift=0.2)
    metric = FrechetDistance(num_features=d)
    for chunk in torch.split(real, 17):  # uneven batches: the running sums must not care
        metric.update(chunk, real=True)
    for chunk in torch.split(fake, 23):
        metric.update(chunk, real=False)
    expected = scipy_frechet(real.numpy(), fake.numpy())
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n", [20, 300])  # 20 < D: singular covariance, where sqrtm-based code needs an ε offset
def test_identical_sets_give_zero(n):
    a = features(n, 64, seed=1, scale=3.0, shift=5.0)
    assert abs(fd_of(a, a.clone())) <= 1e-6


def test_symmetric_and_translation_adds_squared_norm():
    a, b = features(200, 12, seed=2), features(150, 12, seed=3, scale=0.5)
    delta = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64)
    assert fd_of(a, b) == pytest.approx(fd_of(b, a), rel=1e-9)
    assert fd_of(a, a + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    gap = a.mean(0) - b.mean(0)
    shift_effect = float((gap - delta) @ (gap - delta) - gap @ gap)  # only the mean term changes
    assert fd_of(a, b + delta) - fd_of(a, b) == pytest.approx(shift_effect, rel=1e-6)


def test_closed_forms_for_diagonal_and_singular_covariances():
    var1, var2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2)).item() == pytest.approx(expected, rel=1e-12)
    # Two degenerate Gaussians on orthogonal axes: W2² = 1 + 1 (the product of covariances is zero).
    zero = torch.zeros(2)
    assert frechet_distance(zero, torch.diag(torch.tensor([1.0, 0.0])), zero,
                            torch.diag(torch.tensor([0.0, 1.0]))).item() == pytest.approx(2.0, abs=1e-12)


def test_fewer_than_two_samples_is_a_clear_error():
    metric = FrechetDistance(num_features=4)
    metric.update(torch.randn(5, 4), real=True)
    metric.update(torch.randn(1, 4), real=False)
    with pytest.raises(ValueError, match="at least 2 generated samples.*got 1"):
        metric.compute()


def test_feature_width_is_checked():
    with pytest.raises(ValueError, match="feature width"):
        FrechetDistance()
    metric = FrechetDistance(num_features=4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        metric.update(torch.randn(3, 5), real=True)


# ------------------------------------------------------------------------------------------- DDP


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # states set by hand, not by update()
def test_states_merged_across_processes_equal_one_process():
    real, fake = features(101, 8, seed=4), features(77, 8, seed=5, shift=0.3)
    single = FrechetDistance(num_features=8)
    single.update(real, real=True)
    single.update(fake, real=False)
    expected = single.compute()

    ranks = [FrechetDistance(num_features=8) for _ in range(2)]
    for rank, metric in enumerate(ranks):  # uneven split, as a DistributedSampler tail would give
        metric.update(real[rank::2], real=True)
        metric.update(fake[rank * 30:(rank + 1) * 30 + rank * 17], real=False)
    assert ranks[0].fake_count.item() + ranks[1].fake_count.item() == 77

    # DDP's reduction: every state is declared with dist_reduce_fx="sum"; emulate the all-reduce.
    summed = FrechetDistance(num_features=8)
    for name in summed._defaults:
        assert summed._reductions[name].__name__ == "dim_zero_sum"
        setattr(summed, name, getattr(ranks[0], name) + getattr(ranks[1], name))
    assert summed.compute().item() == pytest.approx(expected.item(), rel=1e-10)

    ranks[0].merge_state(ranks[1])
    assert ranks[0].compute().item() == pytest.approx(expected.item(), rel=1e-10)


# --------------------------------------------------------------------------------- reference stats


def test_reference_statistics_replace_real_samples():
    real, fake = features(90, 6, seed=6), features(80, 6, seed=7, scale=2.0)
    with_real = fd_of(real, fake)
    collector = FrechetDistance(num_features=6)
    collector.update(real, real=True)
    stats = collector.stats(real=True)
    assert stats.count == 90
    assert torch.allclose(stats.mu, real.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(stats.sigma, torch.cov(real.T), rtol=0, atol=1e-12)

    metric = FrechetDistance(reference=stats)
    metric.update(fake, real=False)
    assert metric.compute().item() == pytest.approx(with_real, rel=1e-10)
    with pytest.raises(ValueError, match="reference statistics"):
        metric.update(real, real=True)


# ------------------------------------------------------------------------------------- extractors


@pytest.mark.parametrize("name, origin_text", [("i3d", "stylegan-v"), ("vggish", "torchvggish")])
def test_missing_weights_name_file_origin_and_key(tmp_path, name, origin_text):
    missing = tmp_path / "weights" / ORIGINS[name].file
    with pytest.raises(ExtractorWeightsMissing) as err:
        build_extractor(name, missing)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for part in (str(missing), ORIGINS[name].file, origin_text, ORIGINS[name].config_key, ORIGINS[name].where):
        assert part in msg
    with pytest.raises(ExtractorWeightsMissing, match="no path is set"):
        build_extractor(name, None)


class TinyI3D(nn.Module):
    """StyleGAN-V's I3D TorchScript call signature; its "features" reveal what it was fed: the mean of
    each frame after its own rescaling/resizing, then the frame height and width."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x.float() / 255.0 * 2.0 - 1.0
        if resize:
            x = F.interpolate(x, size=[x.shape[2], 224, 224], mode="trilinear", align_corners=False)
        if not return_features:
            return torch.zeros(x.shape[0], 400)
        size = torch.tensor([float(x.shape[3]), float(x.shape[4])]).expand(x.shape[0], 2)
        return torch.cat([x.mean(dim=[1, 3, 4]), size], dim=1)


@pytest.fixture
def tiny_i3d_path(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))  # the published I3D is TorchScript, so the test model is too
    return path


def test_i3d_torchscript_round_trip(tiny_i3d_path):
    ext = build_extractor("i3d", tiny_i3d_path, feature_dim=18)
    assert ext.weights["i3d"] == (str(tiny_i3d_path), hashlib.sha256(tiny_i3d_path.read_bytes()).hexdigest())
    assert ext.describe()["sha256"]["i3d"] == ext.weights["i3d"][1]

    # Frame f is constant, so each feature identifies its frame; the sine keeps values off the uint8 grid.
    values = torch.sin(torch.linspace(-1.0, 1.0, 31)) / np.sin(1.0)
    video = values[None, :, None, None, None].expand(2, 31, 3, 20, 28).contiguous()
    feats = ext(video)
    assert feats.shape == (2, 18)
    # uniform sampling of 16 out of 31 frames: round(linspace(0, 30, 16)) = 0, 2, ..., 30;
    # StyleGAN-V's quantisation, then the detector's own x / 255 * 2 - 1.
    quantised = torch.floor((values * 127.5 + 128).clamp(0, 255)) / 255 * 2 - 1
    assert torch.allclose(feats[0, :16], quantised[::2], atol=1e-6)
    assert feats[0, 0] == -1.0 and feats[0, 15] == 1.0
    assert torch.equal(feats[:, 16:], torch.full((2, 2), 224.0))  # the detector resized, as StyleGAN-V asks

    floats = I3DFeatures(tiny_i3d_path, feature_dim=18, input_mode="float", resolution=32, frame_sampling="first")
    feats = floats(video)
    assert torch.allclose(feats[0, :16], values[:16], atol=1e-6)
    assert torch.equal(feats[:, 16:], torch.full((2, 2), 32.0))

    assert ext.frame_indices(40).tolist() == [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39]
    with pytest.raises(ValueError, match="at least num_frames=16"):
        ext(video[:, :10])
    with pytest.raises(ValueError, match=r"expected \(2, 400\)"):
        build_extractor("i3d", tiny_i3d_path)(video)  # default feature_dim=400 does not fit this detector

    nn.Sequential(ext).train()
    assert not ext.training and not ext.detector.training


OFFICIAL_VGGISH_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


def test_vggish_full_size_has_the_torchvggish_layout():
    with torch.device("meta"):  # shapes only, no 290 MB allocation
        full = VGGishFeatures(None)
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == OFFICIAL_VGGISH_SHAPES
    assert full.min_samples == 15600 and full.num_features == 128


def test_vggish_tiny_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    source = VGGishFeatures.tiny()
    state = OrderedDict((k, v.clone()) for k, v in source.state_dict().items())
    assert list(state) == list(OFFICIAL_VGGISH_SHAPES)  # same keys, same order as the published file
    path = tmp_path / "vggish-10086976.pth"
    torch.save(state, path)

    loaded = build_extractor("vggish", path, **TINY_VGGISH)
    assert loaded.weights["vggish"] == (str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    assert not any(p.requires_grad for p in loaded.parameters())
    audio = 0.1 * torch.randn(2, 32000, generator=torch.Generator().manual_seed(1))
    per_example = loaded(audio)
    assert per_example.shape == (4, 16)  # 2 s → 198 frames → 2 examples of 96 per clip
    assert torch.equal(per_example, source(audio))
    assert torch.allclose(per_example[:2], loaded(audio[:1]), atol=1e-6)  # clip-major order

    loaded.per_example = False
    assert torch.allclose(loaded(audio), per_example.view(2, 2, 16).mean(1), atol=1e-6)

    with pytest.raises(ValueError, match="does not fit VGGish"):
        build_extractor("vggish", path, **{**TINY_VGGISH, "hidden": 64})


def test_vggish_flattens_in_tensorflow_order():
    """The 12288-wide FC layer expects TF's (H, W, C) flatten order; torchvggish gets it with two transposes."""
    ext = VGGishFeatures.tiny()
    fmap = torch.arange(2 * 8 * 6 * 4, dtype=torch.float32).view(2, 8, 6, 4)  # (N, C, H, W) after the conv stack
    seen = []
    ext.embeddings[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    ext.features = _Constant(fmap)
    ext.embed(torch.zeros(2, 96, 64))
    torchvggish_order = fmap.transpose(1, 3).transpose(1, 2).contiguous().view(2, -1)
    assert torch.equal(seen[0], torchvggish_order)


class _Constant(nn.Module):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


def test_vggish_example_count_and_minimum_length():
    ext = VGGishFeatures.tiny()
    assert ext(torch.zeros(1, 15600)).shape == (1, 16)
    assert ext(torch.zeros(1, 15600 + 96 * 160 - 1)).shape == (1, 16)
    assert ext(torch.zeros(1, 15600 + 96 * 160)).shape == (2, 16)
    with pytest.raises(ValueError, match="at least 15600 samples"):
        ext(torch.zeros(1, 15599))


def vggish_log_mel_reference(signal: np.ndarray) -> np.ndarray:
    """VGGish's published front end at 16 kHz, transcribed loop by loop in numpy."""
    win, hop, nfft = 400, 160, 512
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))  # periodic Hann
    count = 1 + (len(signal) - win) // hop
    spectrum = np.abs(np.stack([np.fft.rfft(signal[i * hop:i * hop + win] * window, nfft) for i in range(count)]))

    def mel(hz):
        return 1127.0 * np.log(1.0 + hz / 700.0)

    bins = mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    weights = np.zeros((257, 64))
    for j in range(64):
        lo, center, hi = edges[j:j + 3]
        for i in range(1, 257):  # bin 0 (DC) keeps weight 0
            weights[i, j] = max(0.0, min((bins[i] - lo) / (center - lo), (hi - bins[i]) / (hi - center)))
    return np.log(spectrum @ weights + 0.01)


def test_vggish_front_end_matches_the_published_algorithm():
    t = torch.arange(20000, dtype=torch.float64) / 16000
    audio = 0.4 * torch.sin(2 * np.pi * 440 * t) + 0.05 * torch.randn(20000, generator=torch.Generator().manual_seed(2),
                                                                      dtype=torch.float64)
    ext = VGGishFeatures.tiny()
    ours = ext.log_mel(audio[None])[0].numpy()
    assert np.allclose(ours, vggish_log_mel_reference(audio.numpy()), rtol=0, atol=1e-9)

    # Framing cross-checked with torchaudio: its STFT centres the 400-sample window in the 512-sample
    # frame, so on a signal padded by 56 samples each side it sees exactly VGGish's frames.
    spec = torchaudio.transforms.Spectrogram(n_fft=512, win_length=400, hop_length=160, power=1, center=False,
                                             window_fn=torch.hann_window, wkwargs={"dtype": torch.float64})
    reference = torch.log(spec(F.pad(audio, (56, 56))).T @ vggish_mel_matrix() + 0.01)
    assert torch.allclose(ext.log_mel(audio[None])[0], reference, rtol=0, atol=1e-9)


def test_vggish_pca_postprocessing(tmp_path):
    torch.manual_seed(3)
    raw = VGGishFeatures.tiny()
    matrix = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0] * 3.0
    means = np.linspace(-0.1, 0.1, 16)
    pca = tmp_path / "vggish_pca_params.npz"
    np.savez(pca, pca_eigen_vectors=matrix, pca_means=means)
    weights = tmp_path / "vggish.pth"
    torch.save(raw.state_dict(), weights)
    ext = VGGishFeatures.tiny(weights, pca_path=pca)
    assert ext.weights["vggish_pca"][1] == hashlib.sha256(pca.read_bytes()).hexdigest()
    assert ext.identity()["config"]["pca"] is True

    audio = 0.2 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(4))
    emb = raw(audio).double().numpy()
    expected = np.round((np.clip((emb - means) @ matrix.T, -2.0, 2.0) + 2.0) * (255.0 / 4.0))
    assert np.array_equal(ext(audio).numpy(), expected.astype(np.float32))
    with pytest.raises(ExtractorWeightsMissing, match="vggish_pca_params.npz"):
        VGGishFeatures.tiny(weights, pca_path=tmp_path / "missing.npz")


def test_frechet_distance_with_tiny_random_extractor():
    torch.manual_seed(5)
    ext = VGGishFeatures.tiny()
    for module in ext.modules():  # He init keeps the features' spread at order 1 through the random layers
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            nn.init.zeros_(module.bias)
    g = torch.Generator().manual_seed(6)
    t = torch.arange(32000) / 16000
    tones = torch.stack([0.3 * torch.sin(2 * np.pi * f * t) for f in torch.linspace(200, 2000, 8)])
    audio = tones + 0.02 * torch.randn(8, 32000, generator=g)
    shifted = audio + 0.3 * torch.randn(8, 32000, generator=g)

    metric = FrechetDistance(ext)
    metric.update(audio, real=True)
    metric.update(audio.clone(), real=False)
    assert metric.real_count.item() == 16  # per-example embeddings: 8 clips × 2 examples
    assert abs(metric.compute().item()) <= 1e-6

    metric.reset()
    metric.train()  # a parent switching to training mode must not reach the frozen extractor
    assert not ext.training
    metric.update(audio, real=True)
    metric.update(shifted, real=False)
    spread = torch.trace(metric.stats(real=True).sigma).item()
    assert spread > 1e-2
    assert metric.compute().item() > 0.05 * spread
