"""avgen.media.dub: the video stream's exact duration, a generated soundtrack under the input video (packets
copied or re-encoded), and long inputs planned in windows and joined with an equal-power crossfade."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avgen import media

FFMPEG = shutil.which("ffmpeg")


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _grey_ramp(size: str, rate: str) -> list[str]:
    """lavfi input: 1 s of flat frames whose luma steps by 20 per frame (frame n is grey 16 + 20 n), so a
    frame shown at the wrong time is off by 20 levels, not by coding noise."""
    return ["-f", "lavfi", "-i", f"color=c=black:s={size}:r={rate}:d=1,format=yuv444p,geq=lum='16+20*N':cb=128:cr=128"]


def _vfr_mp4(path: Path) -> None:
    """h264 at 24 fps for 1 s, then 8 fps (40 frames, the last at 2.875 s; the mp4 muxer gives it the
    previous frame's 1/8 s): 3 s in all."""
    times = [Fraction(i, 24) for i in range(24)] + [1 + Fraction(i, 8) for i in range(16)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 24000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(t * 24000), Fraction(1, 24000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Tiny inputs made with the ffmpeg CLI (as users' files are): h264 mp4 at 30000/1001 with B-frames
    starting at 2.5 s; mjpeg/avi (64×48) and ffv1/mkv (63×47, odd) grey ramps at 10 fps; a VFR mp4; an
    audio-only m4a."""
    if FFMPEG is None:
        pytest.skip("the ffmpeg CLI makes these test inputs")
    root = tmp_path_factory.mktemp("dub")
    paths = {name: root / name for name in ("offset.mp4", "ramp.avi", "ramp.mkv", "vfr.mp4", "sound.m4a")}
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30000/1001", "-frames:v", "30", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", "-output_ts_offset", "2.5", str(paths["offset.mp4"]))
    _ffmpeg(*_grey_ramp("64x48", "10"), "-c:v", "mjpeg", str(paths["ramp.avi"]))
    _ffmpeg(*_grey_ramp("63x47", "10"), "-c:v", "ffv1", str(paths["ramp.mkv"]))
    _ffmpeg("-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(paths["sound.m4a"]))
    _vfr_mp4(paths["vfr.mp4"])
    return paths


def _video_packets(path: Path) -> list[tuple[bytes, Fraction, bool]]:
    """(bytes, pts in seconds, key frame) of every video packet, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base)
        return [(bytes(p), p.pts * tb, p.is_keyframe) for p in container.demux(stream) if p.size]


def _audio_stream_samples(path: Path) -> int:
    """Samples the mp4 says its audio track lasts (edit list: AAC priming and trailing padding excluded)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return int(stream.duration * Fraction(stream.time_base) * stream.rate)


# ------------------------------------------------------------------------------------- video duration
def test_video_stream_duration_is_exact_from_a_late_start_at_ntsc_rate(clips):
    path = clips["offset.mp4"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.start_time * stream.time_base == Fraction(5, 2)  # the offset is really there
        assert any(p.dts != p.pts for p in container.demux(stream) if p.size)  # and B-frames
    # 30 frames of 1001/30000 s: (last pts + 1001 − first pts) / 30000, not the container's duration
    assert media.video_stream_duration(path) == Fraction(1001, 1000)


def test_video_stream_duration_of_a_variable_rate_file_counts_timestamps_not_frames(clips):
    # 40 frames; 40 / average rate or 40 / 24 would both be wrong
    assert media.video_stream_duration(clips["vfr.mp4"]) == 3
    assert media.video_stream_duration(clips["ramp.avi"]) == 1 == media.video_stream_duration(clips["ramp.mkv"])


def test_no_video_stream_is_an_error_naming_the_file(clips, tmp_path):
    with pytest.raises(media.MediaError, match=r"sound\.m4a: no video stream"):
        media.video_stream_duration(clips["sound.m4a"])
    with pytest.raises(media.MediaError, match=r"sound\.m4a: no video stream"):
        media.dub_video(clips["sound.m4a"], np.zeros(16000, np.float32), 16000, tmp_path / "out.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(media.MediaError, match=r"broken\.mp4"):
        media.video_stream_duration(broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4"]  # nothing written, no temporary left


# ------------------------------------------------------------------------------------- dubbing
def _click(num_samples: int, at: int) -> np.ndarray:
    audio = np.zeros(num_samples, np.float32)
    audio[at] = 0.9
    return audio


def test_mp4_codecs_are_copied_packet_for_packet_with_audio_from_the_first_frame(clips, tmp_path):
    src, out, sr = clips["offset.mp4"], tmp_path / "dubbed.mp4", 44100
    seconds = media.video_stream_duration(src)
    n = media.frame_count(seconds, sr)  # 1.001 s · 44100 = 44144.1 → 44144
    assert n == 44144 and abs(Fraction(n, sr) - seconds) <= Fraction(1, 2 * sr)
    info = media.dub_video(src, _click(n, 11025), sr, out)
    assert info.to_json() == {"path": str(out), "video": "copied", "input_codec": "h264", "output_codec": "h264",
                              "audio_seconds": n / sr, "sample_rate": sr}
    before, after = _video_packets(src), _video_packets(out)
    assert [b for b, _, _ in after] == [b for b, _, _ in before]  # byte for byte
    assert [(t, k) for _, t, k in after] == [(t - Fraction(5, 2), k) for _, t, k in before]  # shifted to 0
    assert media.video_stream_duration(out) == seconds
    # the track lasts exactly n samples; the decoder hands out whole 1024-sample AAC frames beyond it
    assert _audio_stream_samples(out) == n
    decoded = media.decode_audio(out, sr)
    assert n <= len(decoded) < n + 1024
    # sample 0 plays with the first frame: the click at 0.25 s comes back there (AAC smears it by a few samples)
    assert abs(int(np.argmax(np.abs(decoded))) - 11025) <= 4


def test_display_rotation_and_variable_rate_survive_the_copy(clips, tmp_path):
    from tests.conftest import CASES_DIR

    portrait = media.dub_video(CASES_DIR / "rotated" / "portrait.mp4", np.zeros(48000, np.float32), 16000,
                               tmp_path / "portrait.mp4")
    assert portrait.video == "copied" and media.probe(portrait.path).rotation == 90
    vfr = media.dub_video(clips["vfr.mp4"], np.zeros(48000, np.float32), 16000, tmp_path / "vfr.mp4")
    assert [t for _, t, _ in _video_packets(Path(vfr.path))] == [t for _, t, _ in _video_packets(clips["vfr.mp4"])]


@pytest.mark.parametrize(("name", "codec", "stored_hw"), [("ramp.avi", "mjpeg", (48, 64)),
                                                          ("ramp.mkv", "ffv1", (47, 63))])
def test_other_codecs_are_reencoded_as_h264_frame_for_frame(clips, tmp_path, name, codec, stored_hw):
    out = tmp_path / "dubbed.mp4"
    info = media.dub_video(clips[name], np.zeros(16000, np.float32), 16000, out)
    assert (info.video, info.input_codec, info.output_codec) == ("reencoded", codec, "h264")
    with av.open(str(out)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.name, ctx.pix_fmt, ctx.height, ctx.width) == ("h264", "yuv420p", 48, 64)  # odd sizes padded
    assert media.video_stream_duration(out) == 1
    source, _ = media.decode_video(clips[name])
    dubbed, _ = media.decode_video(out)
    h, w = stored_hw
    assert source.shape == (10, h, w, 3) and dubbed.shape == (10, 48, 64, 3)
    # each frame at its own time, grey within 1 level (frames 20 levels apart); the pad repeats the edge
    assert np.abs(dubbed[:, :h, :w].astype(int) - source).max() <= 1
    assert np.array_equal(dubbed[:, h:], dubbed[:, h - 1:h].repeat(48 - h, axis=1))
    assert _audio_stream_samples(out) == 16000


def test_audio_length_contract_one_sample_of_slack_then_refusal(clips, tmp_path):
    src, n = clips["ramp.avi"], 16000
    for length in (n - 1, n + 1):
        out = tmp_path / f"{length}.mp4"
        assert media.dub_video(src, np.zeros(length, np.float32), 16000, out).audio_seconds == 1.0
        assert _audio_stream_samples(out) == n
    for length in (n - 2, n + 2, 8000):
        with pytest.raises(media.MediaError, match=rf"ramp\.avi: audio has {length} samples, the video stream "
                                                   rf"needs {n}"):
            media.dub_video(src, np.zeros(length, np.float32), 16000, tmp_path / "wrong.mp4")
    bad = np.zeros(n, np.float32)
    bad[3] = np.nan
    with pytest.raises(media.MediaError, match="non-finite"):
        media.dub_video(src, bad, 16000, tmp_path / "wrong.mp4")
    with pytest.raises(media.MediaError, match=r"mono \(S,\)"):
        media.dub_video(src, np.zeros((2, n), np.float32), 16000, tmp_path / "wrong.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{n - 1}.mp4", f"{n + 1}.mp4"]
    assert np.array_equal(media.fit_audio_length(np.ones(3, np.float32), 4, "x"), [1, 1, 1, 0])


def test_an_existing_output_is_refused_unless_overwrite(clips, tmp_path):
    out = tmp_path / "dubbed.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        media.dub_video(clips["ramp.avi"], np.zeros(16000, np.float32), 16000, out)
    assert out.read_bytes() == b"keep me"
    media.dub_video(clips["ramp.avi"], np.zeros(16000, np.float32), 16000, out, overwrite=True)
    assert media.probe(out).has_audio and sorted(p.name for p in tmp_path.iterdir()) == ["dubbed.mp4"]


# ------------------------------------------------------------------------------------- windows and crossfade
def test_crossfade_windows_exact_plans():
    assert media.crossfade_windows(10, 10, 2) == [(0, 10)]
    assert media.crossfade_windows(5, 10, 2) == [(0, 5)]  # shorter than a window: one, as long as the input
    assert media.crossfade_windows(26, 10, 2) == [(0, 10), (8, 18), (16, 26)]
    # one sample more: the last window moves to the end and overlaps the one before by 9
    assert media.crossfade_windows(27, 10, 2) == [(0, 10), (8, 18), (16, 26), (17, 27)]
    # VTA-LDM: 10 s windows at 16 kHz overlapping by 1 s, a 25 s video
    assert media.crossfade_windows(400_000, 160_000, 16_000) == [(0, 160_000), (144_000, 304_000),
                                                                (240_000, 400_000)]
    for bad in ((0, 10, 2), (20, 0, 0), (20, 10, 10), (20, 10, -1)):
        with pytest.raises(ValueError):
            media.crossfade_windows(*bad)


@pytest.mark.parametrize("num_samples", [11, 17, 18, 19, 26, 27, 33, 100])
def test_crossfade_windows_cover_the_input_with_the_planned_overlaps(num_samples):
    window, overlap = 10, 3
    plan = media.crossfade_windows(num_samples, window, overlap)
    assert plan[0][0] == 0 and plan[-1][1] == num_samples
    assert all(end - start == window for start, end in plan)
    overlaps = [prev_end - start for (_, prev_end), (start, _) in zip(plan, plan[1:])]
    assert overlaps[:-1] == [overlap] * (len(plan) - 2) and overlap <= overlaps[-1] < window


def test_equal_power_gains_are_complementary():
    for length in (1, 2, 7, 16_000):
        g_in, g_out = media.equal_power_gains(length)
        assert np.allclose(g_in**2 + g_out**2, 1.0, rtol=0, atol=1e-15)
        assert np.allclose(g_in, g_out[::-1], rtol=0, atol=1e-15)
        assert np.all(np.diff(g_in) > 0) and 0 < g_in[0] and g_in[-1] < 1
    assert np.allclose(media.equal_power_gains(1), np.sqrt(0.5))


def _weights(plan: list[tuple[int, int]], total: int) -> np.ndarray:
    """(windows, total): the gain each window's chunk gets at each sample, by joining one-hot chunks."""
    starts = [s for s, _ in plan]
    return np.stack([media.equal_power_crossfade([np.full(e - s, float(i == j), np.float32) for j, (s, e)
                                                  in enumerate(plan)], starts, total) for i in range(len(plan))])


@pytest.mark.parametrize("total", [26, 27])
def test_crossfade_keeps_power_and_fades_exactly_over_the_overlaps(total):
    plan = media.crossfade_windows(total, 10, 2)
    weights = _weights(plan, total)
    # uncorrelated chunks keep their power everywhere: the squared gains sum to one, triple overlap included
    assert np.allclose((weights.astype(np.float64) ** 2).sum(axis=0), 1.0, atol=1e-6)
    # a constant chunk stays constant where it plays alone
    for i, (start, end) in enumerate(plan):
        alone = [t for t in range(start, end) if np.count_nonzero(weights[:, t]) == 1]
        assert np.all(weights[i, alone] == 1.0)
    if total == 26:  # fades of exactly `overlap` samples, with the gains of equal_power_gains
        g_in, g_out = media.equal_power_gains(2)
        assert np.flatnonzero(weights[0] * weights[1]).tolist() == [8, 9]
        assert np.flatnonzero(weights[1] * weights[2]).tolist() == [16, 17]
        assert np.allclose(weights[0, 8:10], g_out) and np.allclose(weights[1, 8:10], g_in)
    else:  # the end-aligned window fades in over the 9 samples it shares with the one before
        assert np.flatnonzero(weights[2] * weights[3]).tolist() == list(range(17, 26))


def test_a_single_window_comes_back_unchanged_and_bad_plans_are_refused():
    chunk = np.random.default_rng(0).uniform(-1, 1, 100).astype(np.float32)
    joined = media.equal_power_crossfade([chunk], [0], 100)
    assert joined.dtype == np.float32 and np.array_equal(joined, chunk)
    with pytest.raises(ValueError, match="total=90"):
        media.equal_power_crossfade([chunk], [0], 90)
    with pytest.raises(ValueError, match="reach past"):
        media.equal_power_crossfade([chunk, chunk], [0, 101], 201)  # a gap
    with pytest.raises(ValueError, match="start at sample 0"):
        media.equal_power_crossfade([chunk], [5], 105)
