"""JavisScore (JavisBench, JavisVerse/JavisDiT@b505b37): the windows of eval/javisbench/src/dataset.py:356-391 on
hand cases, the lowest-k mean, the frame transform against torchvision's, the in-place mean subtraction across
overlapping audio windows, and a clip's score against a window-by-window computation with a tiny ImageBind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avgen.encoders.imagebind import ImageBindAV, log_mel_fbank
from avgen.metrics.javis_sync import (
    JavisSync,
    check_settings,
    frame_images,
    javis_windows,
    lowest_k,
    lowest_k_mean,
    window_fbanks,
    window_starts,
)


@pytest.fixture(scope="module")
def tiny() -> ImageBindAV:
    torch.manual_seed(0)
    return ImageBindAV.tiny()


def test_window_starts_for_given_durations():
    # 4 s at 24 fps: 48-frame windows every 12 frames; 16 kHz: 32000 samples every 8000
    video, audio = javis_windows(96, 24, 64000)
    assert [a for a, _ in video] == [0, 12, 24, 36, 48] and all(b - a == 48 for a, b in video)
    assert [a for a, _ in audio] == [0, 8000, 16000, 24000, 32000] and all(b - a == 32000 for a, b in audio)
    # 25 fps: int(50) - int(37.5) = 13 frames per step (0.52 s against the audio's 0.5 s); the last moves back
    assert [a for a, _ in javis_windows(100, 25, 64000)[0]] == [0, 13, 26, 39, 50]
    # 3.1 s at 24 fps (74 frames, 49600 samples): the last window is moved back to end at the clip's end
    video, audio = javis_windows(74, 24, 49600)
    assert video == [(0, 48), (12, 60), (24, 72), (26, 74)]
    assert audio == [(0, 32000), (8000, 40000), (16000, 48000), (17600, 49600)]
    # 4 s of video, 3 s of audio: both lists are cut to the shorter (3)
    video, audio = javis_windows(100, 25, 48000)
    assert [a for a, _ in video] == [0, 13, 26] and [a for a, _ in audio] == [0, 8000, 16000]
    # at most one window of frames, or of samples: a single window over everything
    assert javis_windows(48, 24, 64000) == ([(0, 48)], [(0, 64000)])
    assert javis_windows(96, 24, 32000) == ([(0, 96)], [(0, 32000)])
    assert window_starts(10, 4, 3) == [0, 3, 6] and window_starts(10, 10, 3) == [0]
    with pytest.raises(ValueError, match="stride"):
        javis_windows(50, 0.9, 64000)  # 1-frame windows that do not move: int(1.8) - int(1.35) = 0


def test_lowest_k_of_a_window():
    assert lowest_k(48) == 19 and lowest_k(50) == 20 and lowest_k(16) == 6 and lowest_k(48, 5) == 5
    scores = torch.tensor([[0.5, -0.2, 0.1, 0.3, 0.0], [0.2, 0.4, -0.1, 0.6, 0.8]], dtype=torch.float64)
    # k = int(5 · 0.4) = 2: (−0.2 + 0.0) / 2 = −0.1 and (−0.1 + 0.2) / 2 = 0.05 → mean −0.025
    assert float(lowest_k_mean(scores)) == pytest.approx(-0.025, abs=1e-15)
    assert float(lowest_k_mean(scores, 1)) == pytest.approx((-0.2 - 0.1) / 2, abs=1e-15)
    with pytest.raises(ValueError, match="k = 0 of a window's 2"):
        lowest_k(2)
    with pytest.raises(ValueError, match="topk_min"):
        check_settings(2.0, 1.5, 0)
    with pytest.raises(ValueError, match="overlap_s"):
        check_settings(2.0, 2.0, 0.4)


@pytest.mark.parametrize("height,width,resized,offset", [
    (30, 40, (28, 37), (0, 4)),   # 28 · 40 / 30 = 37.3 → 37; crop left int(round(4.5)) = 4 (round half to even)
    (50, 36, (38, 28), (5, 0)),   # portrait: width 28, height int(38.9) = 38; top round(5.0) = 5
    (28, 28, (28, 28), (0, 0)),   # already the size: torchvision returns the image unresized
])
def test_frames_as_torchvision_resizes_and_crops_them(height, width, resized, offset):
    """torchvision's Resize(28, BICUBIC) on a PIL image is PIL's resize to the sizes of its
    _compute_resized_output_size; CenterCrop's offsets are int(round((side − 28) / 2)) (computed by hand here)."""
    from PIL import Image

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    frames = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    (h, w), (top, left) = resized, offset
    expected = []
    for frame in frames:
        image = Image.fromarray(frame)
        image = image if (h, w) == (height, width) else image.resize((w, h), Image.BICUBIC)
        crop = torch.from_numpy(np.asarray(image)[top:top + 28, left:left + 28].copy()).permute(2, 0, 1) / 255
        expected.append((crop - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))
    torch.testing.assert_close(frame_images(frames, 28, mean, std), torch.stack(expected), rtol=0, atol=1e-6)
    # a constant frame stays constant through the bicubic resize: exactly (c / 255 − mean) / std
    flat = frame_images(np.full((1, height, width, 3), 200, np.uint8), 28, mean, std)
    torch.testing.assert_close(flat[0, :, 0, 0], (200 / 255 - torch.tensor(mean)) / torch.tensor(std))


def test_overlapping_audio_windows_see_the_earlier_mean_subtraction(tiny):
    """The official windows are views of one waveform and ImageBind's waveform2melspec subtracts the mean in place:
    emulated here literally on a (1, S) tensor and its views."""
    g = torch.Generator().manual_seed(3)
    wave = torch.randn(40000, generator=g) * 0.1 + 0.4 * torch.linspace(0, 1, 40000)
    windows = [(0, 32000), (8000, 40000)]
    official = wave[None].clone()
    views = [official[:, a:b] for a, b in windows]
    expected = []
    for view in views:
        clips = []
        for _ in range(3):  # a 2-s window: ConstantClipsPerVideoSampler gives [0, 2) three times
            clip = view[:, 0:32000]
            clip -= clip.mean()
            clips.append((log_mel_fbank(clip) + 4.268) / 9.138)
        expected.append(torch.stack(clips))
    got = window_fbanks(wave, windows, tiny)
    torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=1e-5)
    separate = torch.stack([window_fbanks(wave[a:b], [(0, b - a)], tiny)[0] for a, b in windows])
    assert (got[1] - separate[1]).abs().max() > 1e-3  # the cascade changes the second window


def test_clip_score_equals_a_window_by_window_computation(tiny):
    g = np.random.default_rng(4)
    frames = g.integers(0, 256, (28, 32, 40, 3), dtype=np.uint8)  # 3.5 s at 8 fps
    audio = (0.1 * g.standard_normal(int(22050 * 3.5))).astype(np.float32)
    metric = JavisSync(tiny)
    score, count = metric.clip_score(frames, 8.0, audio, 22050)
    # 16-frame windows every int(16) - int(12) = 4 frames: 0, 4, 8, 12; audio: 0, 8000, 16000, 24000 → 4 of each
    assert count == 4
    wave = __import__("torchaudio").functional.resample(torch.from_numpy(audio), 22050, 16000)
    sight = tiny.embed_vision(frame_images(frames, 28))
    hearing = tiny({"audio": window_fbanks(wave, [(s, s + 32000) for s in (0, 8000, 16000, 24000)], tiny)})["audio"]
    per_window = []
    for j, start in enumerate((0, 4, 8, 12)):
        cos = torch.nn.functional.cosine_similarity(sight[start:start + 16].double(), hearing[j:j + 1].double())
        per_window.append(torch.sort(cos).values[:6].mean())  # k = int(16 · 0.4) = 6
    assert score == pytest.approx(float(torch.stack(per_window).mean()), abs=1e-6)
    # a clip of at most one window: all its frames against the whole audio; 2 frames give k = 0 → refused
    short, count = metric.clip_score(frames[:12], 8.0, audio, 22050)
    assert count == 1 and -1 <= short <= 1
    with pytest.raises(ValueError, match="k = 0"):
        metric.clip_score(frames[:2], 8.0, audio, 22050)
