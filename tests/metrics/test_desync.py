"""DeSync windowing and offsets on synthetic clips with known shifts, read by a stand-in classifier.

The stand-in has Synchformer's interface; its "features" are the brightness of each frame of a video
segment and the energy of each mel frame of an audio segment, and ``compare_v_a`` answers the grid class
nearest ``t_flash − t_click`` over the 14 segments it is given (Synchformer's sign: positive = audio early).
So a test passes only if the right frames and samples reach the right window.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avgen.encoders.synchformer import (
    SEGMENT_FRAMES,
    SEGMENT_SAMPLES,
    SEGMENT_STEP_FRAMES,
    SEGMENT_STEP_SAMPLES,
    sync_audio,
    sync_audio_segments,
    sync_video_segments,
)
from avgen.metrics.desync import DeSync, desync_offsets, offset_class, offset_seconds, window_slices

FPS, RATE, SECONDS, SIZE = 25, 16000, 8.0, 32
SEGMENT_SECONDS = SEGMENT_STEP_FRAMES / FPS  # 0.32 s between segment starts, both streams
MEL_HOP_SECONDS = 160 / RATE


class FlashClickReader:
    """A stand-in Synchformer that reads the offset of one flash and one click in each window."""

    def __init__(self):
        self.windows: list[tuple[torch.Tensor, torch.Tensor]] = []

    def extract_vfeats(self, video):  # (1, S, 16, 3, H, W) → (1, S, 16, 1): brightness per frame
        return video.mean(dim=(3, 4, 5))[..., None]

    def extract_afeats(self, audio):  # (1, S, F, 66) → (1, S, 65, 1): energy per mel frame (the 66th is padding)
        return audio[..., :65].mean(dim=2)[..., None]

    def compare_v_a(self, vis, aud):
        self.windows.append((vis, aud))
        seg_v, frame = divmod(int(vis[0, :, :, 0].argmax()), vis.shape[2])
        seg_a, mel_frame = divmod(int(aud[0, :, :, 0].argmax()), aud.shape[2])
        t_flash = seg_v * SEGMENT_SECONDS + frame / FPS
        t_click = seg_a * SEGMENT_SECONDS + mel_frame * MEL_HOP_SECONDS
        logits = torch.zeros(1, 21)
        logits[0, offset_class(t_flash - t_click)] = 1
        return logits


def clip(flashes: list[float], clicks: list[float], seconds: float = SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """Dark 32-px frames at 25 fps with a white frame at each flash time, silence with an impulse of 100 at each
    click time: (T, 32, 32, 3) uint8, (N,) float32 at 16 kHz."""
    frames = np.zeros((int(seconds * FPS), SIZE, SIZE, 3), np.uint8)
    audio = np.zeros(int(seconds * RATE), np.float32)
    for t in flashes:
        frames[round(t * FPS)] = 255
    for t in clicks:
        audio[round(t * RATE)] = 100.0
    return frames, audio


def offsets_of(frames: np.ndarray, audio: np.ndarray, reader: FlashClickReader | None = None) -> tuple[float, float]:
    return desync_offsets(reader or FlashClickReader(), sync_video_segments(frames, SIZE),
                          sync_audio_segments(sync_audio(audio, RATE, SECONDS)))


def test_offset_classes_map_to_seconds():
    assert offset_seconds(torch.arange(21)).tolist() == pytest.approx(np.linspace(-2, 2, 21).tolist(), abs=1e-12)
    assert offset_seconds(10).item() == 0.0 and offset_seconds(0).item() == -2.0 and offset_seconds(20).item() == 2.0
    assert offset_seconds(13).item() == pytest.approx(0.6, abs=1e-12)
    assert [offset_class(s) for s in (-2.0, -0.6, 0.0, 0.6, 1.0, 2.0, 3.5)] == [0, 7, 10, 13, 15, 20, 20]
    with pytest.raises(ValueError, match=r"\[0, 21\)"):
        offset_seconds(21)


def test_segments_hold_the_harness_frames_and_samples():
    frames = np.broadcast_to(np.arange(200, dtype=np.uint8)[:, None, None, None], (200, SIZE, SIZE, 3)).copy()
    video = sync_video_segments(frames, SIZE)
    assert video.shape == (24, SEGMENT_FRAMES, 3, SIZE, SIZE) and video.dtype == torch.float32
    for i in (0, 1, 23):  # segment i = frames [8i, 8i + 16), normalised (x/255 − 0.5)/0.5
        expected = (torch.arange(8 * i, 8 * i + 16, dtype=torch.float32) / 255 - 0.5) / 0.5
        torch.testing.assert_close(video[i, :, 0, 0, 0], expected)
    audio = sync_audio(np.zeros(8 * RATE, np.float32), RATE, SECONDS)
    assert sync_audio_segments(audio).shape == (24, 128, 66)
    assert sync_video_segments(np.zeros((250, SIZE, SIZE, 3), np.uint8), SIZE).shape[0] == 30  # 10 s
    assert sync_audio_segments(torch.zeros(10 * RATE)).shape[0] == 30
    # segment i of the audio = samples [5120 i, 5120 i + 10240): an impulse at sample 5120·3 + 800 is mel frame 5
    # of segment 3 and mel frame 37 of segment 2, nowhere else
    wave = torch.zeros(8 * RATE)
    wave[SEGMENT_STEP_SAMPLES * 3 + 800] = 100
    mel = sync_audio_segments(wave)[..., :65]  # frame 66 is the harness's zero padding
    loud = {(s, int(mel[s].mean(0).argmax())) for s in range(24) if mel[s].max() > mel[0].max()}
    assert loud == {(2, 37), (3, 5)}
    assert SEGMENT_SAMPLES == 2 * SEGMENT_STEP_SAMPLES == 10240


def test_windows_are_the_first_and_last_14_segments():
    assert window_slices(24) == (slice(0, 14), slice(10, 24))  # 8 s: [0, 4.8) s and [3.2, 8.0) s
    assert window_slices(30) == (slice(0, 14), slice(16, 30))
    assert window_slices(14) == (slice(0, 14), slice(0, 14))
    with pytest.raises(ValueError, match="needs 14 segments"):
        window_slices(13)
    reader = FlashClickReader()
    frames, audio = clip([], [])
    frames[:] = np.arange(200, dtype=np.uint8)[:, None, None, None]  # each frame's value is its index
    offsets_of(frames, audio, reader)
    (first_v, _), (last_v, _) = reader.windows
    assert first_v.shape[1] == last_v.shape[1] == 14
    # first frame of each window's first segment: frame 0 and frame 8·10 = 80 (3.2 s)
    assert round(float(first_v[0, 0, 0, 0]) * 127.5 + 127.5) == 0
    assert round(float(last_v[0, 0, 0, 0]) * 127.5 + 127.5) == 80


@pytest.mark.parametrize("shift, signed", [(0.0, 0.0), (0.6, -0.6), (-0.6, 0.6), (1.4, -1.4)])
def test_a_constant_shift_reads_in_both_windows(shift, signed):
    # one event in each window only: flashes at 1.0 s and 6.0 s; the sound lags the picture by `shift`
    first, last = offsets_of(*clip([1.0, 6.0], [1.0 + shift, 6.0 + shift]))
    assert (first, last) == (pytest.approx(signed, abs=1e-9), pytest.approx(signed, abs=1e-9))


def test_in_sync_first_half_shifted_second_half_gives_half_a_second():
    # in sync up to 4.8 s, the sound 1 s late after: first window 0, last window −1.0 s → DeSync 0.5 s
    first, last = offsets_of(*clip([1.0, 6.0], [1.0, 7.0]))
    assert (first, last) == (pytest.approx(0.0, abs=1e-9), pytest.approx(-1.0, abs=1e-9))
    metric = DeSync()
    metric.update(first, last)
    assert metric.compute().item() == pytest.approx(0.5, abs=1e-12)
    # and with the sound early in the second half: +1.0, same DeSync
    first, last = offsets_of(*clip([1.0, 6.0], [1.0, 5.0]))
    assert (first, last) == (pytest.approx(0.0, abs=1e-9), pytest.approx(1.0, abs=1e-9))


def test_unequal_segment_counts_and_short_audio_are_refused():
    video = sync_video_segments(np.zeros((200, SIZE, SIZE, 3), np.uint8), SIZE)
    audio = sync_audio_segments(torch.zeros(10 * RATE))
    with pytest.raises(ValueError, match="24 video segments but 30 audio segments"):
        desync_offsets(FlashClickReader(), video, audio)
    with pytest.raises(ValueError, match="shorter than 8.0 s"):
        sync_audio(np.zeros(int(7.9 * RATE), np.float32), RATE, SECONDS)


def test_metric_is_the_mean_absolute_offset_over_both_windows_of_all_clips():
    metric = DeSync()
    metric.update(torch.tensor([0.2, -0.6], dtype=torch.float64), torch.tensor([-0.4, 0.0], dtype=torch.float64))
    metric.update(1.0, -1.0)
    assert metric.compute().item() == pytest.approx((0.2 + 0.6 + 0.4 + 0.0 + 1.0 + 1.0) / 6, abs=1e-12)
    assert metric.abs_sum.dtype == metric.count.dtype == torch.float64
