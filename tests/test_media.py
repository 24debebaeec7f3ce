"""avgen.media: mp4/flac/wav round trips, alignment, resizing and overwrite protection."""

from __future__ import annotations

import numpy as np
import pytest

from avgen import media


def _moving_square(f=8, h=48, w=64):
    frames = np.zeros((f, h, w, 3), np.uint8)
    for i in range(f):
        frames[i, 10:26, 4 + 5 * i:20 + 5 * i] = (250, 30, 30)
    return frames


def test_mp4_round_trip_keeps_frames_and_fps():
    frames = _moving_square()
    decoded, fps = media.decode_video(media.encode_mp4(frames, 8))
    assert decoded.shape == frames.shape and fps == 8
    # visually lossless: mean error of a couple of grey levels
    assert np.abs(decoded.astype(int) - frames).mean() < 3
    part, _ = media.decode_video(media.encode_mp4(frames, 8), start=0.25, num_frames=3)
    assert np.abs(part.astype(int) - frames[2:5]).mean() < 3


def test_decode_resize_covers_target_keeping_aspect():
    assert media.cover_size((48, 64), (32, 32)) == (32, 43)
    assert media.cover_size((64, 48), (32, 40)) == (53, 40)
    data = media.encode_mp4(_moving_square(), 8)
    full, _ = media.decode_video(data)
    centred, _ = media.decode_video(data, fit_to=(24, 24))
    assert centred.shape == (8, 24, 24, 3)
    # 48x64 -> 24x32 (aspect kept), then the centred 24x24 window: columns 4..27 of the half-size frame
    import cv2

    half = np.stack([cv2.resize(f, (32, 24), interpolation=cv2.INTER_LINEAR) for f in full])[:, :, 4:28]
    assert np.abs(centred.astype(int) - half).mean() < 4
    left, _ = media.decode_video(data, fit_to=(24, 24), crop_origin=lambda size, crop: (0, 0))
    assert np.abs(left.astype(int) - np.stack([cv2.resize(f, (32, 24)) for f in full])[:, :, :24]).mean() < 4
    out = np.zeros((3, 24, 24, 3), np.uint8)
    frames, _ = media.decode_video(data, start=0.125, fit_to=(24, 24), out=out)
    assert frames is out and np.array_equal(out, centred[1:4])
    with pytest.raises(media.MediaError, match="8 frames .*, need 10"):
        media.decode_video(data, fit_to=(24, 24), out=np.zeros((10, 24, 24, 3), np.uint8))


def test_audio_in_mp4_is_sample_aligned():
    sr = 16000
    audio = np.zeros(2 * sr, np.float32)
    audio[[4000, 20000]] = 0.9
    data = media.encode_mp4(_moving_square(16), 8, audio=audio, sample_rate=sr)
    decoded = media.decode_audio(data, sr)
    assert decoded.shape[0] >= audio.shape[0]
    peaks = np.sort(np.argsort(-np.abs(decoded))[:2])
    assert abs(peaks[0] - 4000) <= 4 and abs(peaks[1] - 20000) <= 4


def test_flac_round_trip_is_16_bit_exact():
    rng = np.random.default_rng(0)
    audio = (rng.uniform(-1, 1, 8000) * 0.5).astype(np.float32)
    decoded, sr = media.decode_flac(media.encode_flac(audio, 16000))
    assert sr == 16000 and np.abs(decoded - audio).max() <= 1 / 32768 + 1e-7


def test_undecodable_input_names_the_source(tmp_path):
    with pytest.raises(media.MediaError, match="<0 bytes>"):
        media.decode_video(b"")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(media.MediaError, match="bad.mp4"):
        media.decode_video(bad)
    with pytest.raises(media.MediaError, match="no audio stream"):
        media.decode_audio(media.encode_mp4(_moving_square(), 8), 16000)


def test_writers_never_overwrite_unless_asked(tmp_path):
    path = media.write_wav(tmp_path / "a.wav", np.zeros(160, np.float32), 16000)
    with pytest.raises(FileExistsError, match="overwrite"):
        media.write_wav(path, np.ones(160, np.float32) * 0.5, 16000)
    media.write_wav(path, np.ones(160, np.float32) * 0.5, 16000, overwrite=True)
    assert media.decode_flac(path.read_bytes())[0].mean() == pytest.approx(0.5, abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
