"""avgen.media: mp4/flac/wav round trips, alignment, resizing and overwrite protection."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from avgen import media
from tests.conftest import CASES_DIR, REPO


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


# ------------------------------------------------------------------------------------------ time axis
CASES = CASES_DIR  # copies of ../shared/cases (real-world files)


def _numbered(n: int, size: int = 32) -> np.ndarray:
    """``n`` flat frames whose grey level encodes their index (index i → level 6 i), to see which
    source frame fills each output slot after lossy coding."""
    return np.stack([np.full((size, size, 3), 6 * i, np.uint8) for i in range(n)])


def _indices(frames: np.ndarray) -> list[int]:
    return np.rint(frames[:, 0, 0, 0] / 6).astype(int).tolist()


def _encode_at_times(times: list[float], fmt: str = "mp4") -> bytes:
    """h264 with frame i (grey 6 i) shown at ``times[i]`` seconds: a variable-frame-rate file."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("h264", rate=24)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 24000)
        for i, frame in enumerate(_numbered(len(times))):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = round(times[i] * 24000), Fraction(1, 24000)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def test_variable_frame_rate_is_resampled_by_timestamp():
    # 24 fps for one second, then 8 fps (a phone that slowed down): 40 frames over 3 s
    times = [i / 24 for i in range(24)] + [1 + i / 8 for i in range(16)]
    data = _encode_at_times(times)
    frames, rate = media.decode_video(data, fps=24)
    assert rate == 24
    # ffmpeg's fps filter: slot k shows the last frame whose time rounds to slot <= k; after 1 s each
    # 8 fps frame fills three 24 fps slots, so frame 24 + j is at slots 24 + 3j .. 26 + 3j
    expected = list(range(24)) + [24 + (k - 24) // 3 for k in range(24, len(frames))]
    assert _indices(frames) == expected
    # at 8 fps frames 3k-1, 3k, 3k+1 of the first second round to slot k and the last of them is kept
    # (ffmpeg's fps filter drops a frame when the next one rounds to the same slot), then one per slot
    frames8, _ = media.decode_video(data, fps=8, num_frames=20)
    assert _indices(frames8) == [1, 4, 7, 10, 13, 16, 19, 22] + list(range(24, 36))
    # a window: 1.5 s in at 8 fps is the frame shown at 1.5 s (frame 28), not frame 12 (index / avg fps)
    window, _ = media.decode_video(data, fps=8, start=1.5, num_frames=3)
    assert _indices(window) == [28, 29, 30]


def test_vfr_case_file_scores_aligned():
    """cases/vfr: 24 fps then 8 fps; placed at i / average fps it scored 0.14, by timestamps 1.0."""
    from avgen.metrics.av_align import align_clip, load_av

    frames, fps, audio, sr = load_av(CASES / "vfr" / "vfr.mp4")
    assert fps == 24 and frames.shape[0] == 72  # 3 s at the stream's rate
    assert align_clip(frames, fps, audio, sr).scores == {"official": 1.0, "paper": 1.0, "pr": 1.0}


def test_constant_rate_decodes_one_to_one_and_seeks_to_a_window():
    data = media.encode_mp4(_numbered(40), 8)  # 5 s
    frames, rate = media.decode_video(data)
    assert rate == 8 and _indices(frames) == list(range(40))
    # past SEEK_AFTER_SECONDS the decoder seeks to the key frame before the window: same frames
    late, _ = media.decode_video(data, fps=8, start=3.25, num_frames=5)
    assert _indices(late) == list(range(26, 31))
    assert _indices(media.decode_video(data, fps=4, start=2.5)[0]) == [20, 22, 24, 26, 28, 30, 32, 34, 36, 38]


def test_rotated_video_comes_out_upright():
    """cases/rotated: stored 64×48 landscape with a 90° display matrix; players show it 48 wide, 64 high."""
    path = CASES / "rotated" / "portrait.mp4"
    info = media.probe(path)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    frames, _ = media.decode_video(path)
    assert frames.shape == (36, 64, 48, 3)
    with av.open(str(path)) as container:
        stored = next(container.decode(video=0)).to_ndarray(format="rgb24")
    # counter-clockwise by the matrix angle, as ffmpeg's autorotate (transpose=cclock) shows it
    assert np.array_equal(frames[0], np.rot90(stored, 1))
    # resize + crop act on the upright picture: 64x48 covering 32x32 is 43x32, centred rows 5..36
    fitted, _ = media.decode_video(path, fit_to=(32, 32), num_frames=1)
    assert fitted.shape == (1, 32, 32, 3)
    import cv2

    upright = cv2.resize(np.ascontiguousarray(frames[0]), (32, 43), interpolation=cv2.INTER_LINEAR)[5:37]
    assert np.abs(fitted[0].astype(int) - upright).mean() < 4


def _av_file(fmt: str, audio_start: float, sr: int = 16000) -> bytes:
    """2 s of video (8 fps) and 2 s of audio with a click 0.25 s into the audio stream, which starts at
    ``audio_start`` seconds of the video's time."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        vs = container.add_stream("h264", rate=8)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        astream = container.add_stream("aac", rate=sr)
        astream.layout = "mono"
        for frame in _numbered(16):
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        audio = np.zeros(2 * sr, np.float32)
        audio[sr // 4] = 0.9
        pts = round(audio_start * sr)
        for start in range(0, len(audio), 1024):
            chunk = np.ascontiguousarray(audio[start:start + 1024])[None]
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            af.sample_rate, af.pts = sr, pts
            pts += chunk.shape[1]
            for packet in astream.encode(af):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_audio_that_starts_later_than_the_video_is_placed_on_the_video_time_axis(fmt):
    sr = 16000
    late = media.decode_audio(_av_file(fmt, 0.5), sr)
    # the click is 0.25 s into a stream that starts at 0.5 s: 0.75 s on the clip's axis, silence before
    assert abs(int(np.argmax(np.abs(late))) - round(0.75 * sr)) <= 4
    assert np.abs(late[:round(0.5 * sr) - 64]).max() == 0.0
    # on time: matroska keeps AAC's 1024 priming samples before the video's start; they are dropped
    on_time = media.decode_audio(_av_file(fmt, 0.0), sr)
    assert abs(int(np.argmax(np.abs(on_time))) - round(0.25 * sr)) <= 4
    # a window of the same axis
    window = media.decode_audio(_av_file(fmt, 0.5), sr, start=0.5, num_samples=sr)
    assert window.shape == (sr,) and abs(int(np.argmax(np.abs(window))) - round(0.25 * sr)) <= 4


def test_rational_frame_rates_are_exact():
    assert media.as_fps(29.97) == media.as_fps("29.97") == media.as_fps("30000/1001") == Fraction(30000, 1001)
    assert media.as_fps(23.976) == Fraction(24000, 1001) and media.as_fps(59.94) == Fraction(60000, 1001)
    assert media.as_fps(8) == media.as_fps(8.0) == 8 and media.as_fps(12.5) == Fraction(25, 2)
    assert [media.fps_text(r) for r in (8, 29.97, 12.5)] == ["8", "30000/1001", "25/2"]
    assert [media.fps_label(r) for r in (8, 29.97, 23.976, 59.94, 12.5)] == ["8", "29.97", "23.976", "59.94", "12.5"]
    assert [media.frame_count(s, 29.97) for s in (1.0, 4.0, 0.5)] == [30, 120, 15]
    assert media.frame_count(1.0, 12.5) == 13  # halves round up
    for bad in (0, -24, "fast", "1/0"):
        with pytest.raises(ValueError):
            media.as_fps(bad)
    data = media.encode_mp4(_numbered(30), "30000/1001")
    frames, rate = media.decode_video(data)
    assert rate == Fraction(30000, 1001) and frames.shape[0] == 30
    assert _indices(media.decode_video(data, fps=29.97, start=0.5, num_frames=3)[0]) == [15, 16, 17]


def test_non_finite_audio_is_refused_before_any_encoder(tmp_path):
    audio = np.zeros(1600, np.float32)
    audio[100:110] = np.nan
    audio[5] = np.inf
    with pytest.raises(media.MediaError, match=r"10 NaN and 1 infinite of 1600"):
        media.check_finite(audio, "x.wav")
    with pytest.raises(media.MediaError, match="non-finite"):
        media.encode_mp4(_numbered(2), 8, audio=audio, sample_rate=16000)
    with pytest.raises(media.MediaError, match="non-finite"):
        media.write_wav(tmp_path / "x.wav", audio, 16000)
    with pytest.raises(media.MediaError, match="non-finite"):
        media.encode_flac(audio, 16000)
    assert list(tmp_path.iterdir()) == []


def test_scan_media_takes_every_container_and_names_every_skipped_file(tmp_path):
    clip = media.encode_mp4(_numbered(4), 8, audio=np.zeros(8000, np.float32), sample_rate=16000)
    for name in ("GOPR0001.MP4", "clip one.mov", "clíp_音.mkv", "stream.bin"):
        (tmp_path / name).write_bytes(clip)
    media.write_mp4(tmp_path / "silent.mp4", _numbered(4), 8)
    media.write_wav(tmp_path / "silent.WAV", np.zeros(8000, np.float32), 16000)  # the silent mp4's sound
    media.write_wav(tmp_path / "orphan.wav", np.zeros(8000, np.float32), 16000)
    for name, data in (("notes.txt", b"x"), ("meta.json", b"{}"), (".DS_Store", b"\0"), ("plot.png", b"\x89PNG"),
                       ("junk.dat", b"not media")):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "inner.mp4").write_bytes(clip)
    videos = media.scan_media(tmp_path, "video")
    assert [p.name for p in videos.files] == ["GOPR0001.MP4", "clip one.mov", "clíp_音.mkv", "silent.mp4", "stream.bin"]
    reasons = {p.name: r for p, r in videos.skipped}
    assert set(reasons) == {".DS_Store", "junk.dat", "orphan.wav", "plot.png", "more"}
    assert "audio only" in reasons["orphan.wav"] and "FFmpeg" in reasons["junk.dat"]
    assert reasons["more"] == "a folder: sub-folders are not searched"
    assert media.audio_companion(tmp_path / "silent.mp4").name == "silent.WAV"
    sounds = media.scan_media(tmp_path, "audio")
    assert [p.name for p in sounds.files] == ["GOPR0001.MP4", "clip one.mov", "clíp_音.mkv", "orphan.wav",
                                              "silent.WAV", "stream.bin"]
    assert dict((p.name, r) for p, r in sounds.skipped)["silent.mp4"] == "no audio stream"


def test_frame_conversions_round_trip_decoded_bytes_exactly():
    from avgen.media import frames_to_uint8, uint8_to_unit_range, unit_range_to_uint8

    frames = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3) * 2
    unit = uint8_to_unit_range(frames)
    assert unit.shape == (2, 3, 3, 4) and unit.dtype == torch.float32
    assert float(unit.min()) == -1.0 and unit[0, 1, 0, 0].item() == pytest.approx(2 / 127.5 - 1)
    assert np.array_equal(unit_range_to_uint8(unit), frames)
    assert np.array_equal(unit_range_to_uint8(unit[None])[0], frames)  # leading batch axes
    assert np.array_equal(frames_to_uint8(unit), frames) and np.array_equal(frames_to_uint8(frames), frames)
    assert unit_range_to_uint8(torch.tensor([[[[2.0]], [[-3.0]], [[0.0]]]])).tolist() == [[[[255, 0, 128]]]]
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\) float"):
        frames_to_uint8(np.zeros((2, 3, 4), np.uint8))


def test_atomic_write_replaces_only_when_asked_and_leaves_nothing_half_written(tmp_path):
    from avgen.media import atomic_write, write_text_atomic

    target = tmp_path / "out" / "a.json"
    write_text_atomic(target, "one")
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_write(target, "w"):
            pass
    seen = []
    with atomic_write(target, "w", overwrite=True, before_replace=lambda: seen.append(target.read_text())) as f:
        f.write("two")
    assert seen == ["one"] and target.read_text() == "two"  # the rename comes after the hook
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w", overwrite=True) as f:
            f.write("three")
            raise RuntimeError("disk full")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_the_same_frames_encode_to_the_same_bytes_whatever_the_process_did_before(tmp_path):
    """Frames converted to yuv420p inside PyAV's encode made x264 give other bytes for the same 8 frames (32×42, a
    prepare engine's shard clip) about once in 300 encodes, once a process had decoded and freed other videos for a
    while (a prepare's shards then depended on which worker cut which video: tests/data/test_prepare.py's two-worker
    run failed about once in 30). In a fresh process (as a prepare worker is), 1,500 encodes of one clip, each after
    decoding another video half the time and churning memory: every encode must give the same bytes (with the
    conversion left to the encoder: 4-5 different encodings in each run)."""
    import subprocess
    import sys

    from tests.sources import write_video

    write_video(tmp_path / "a.mp4", 3.0, seed=1)
    write_video(tmp_path / "c.webm", 2.2, seed=3)
    write_video(tmp_path / "d.avi", 2.0, seed=4)
    code = f"""
import hashlib, random, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
import numpy as np
from avgen import media
tmp = Path({str(tmp_path)!r})
frames, _ = media.decode_video(tmp / "a.mp4", fps=8, num_frames=24, fit_to=(32, 42))
clip = np.ascontiguousarray(frames[16:])
rng, digests = random.Random(0), set()
for _ in range(1500):
    junk = [np.full(rng.randint(1, 200_000), rng.randint(0, 255), np.uint8) for _ in range(rng.randint(0, 12))]
    if rng.random() < 0.5:
        media.decode_video(tmp / rng.choice(["c.webm", "d.avi"]), fps=8, fit_to=(32, 42))
    del junk
    digests.add(hashlib.sha256(media.encode_mp4(clip, 8, threads=1)).hexdigest())
print(len(digests))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1"], f"{done.stdout.strip()} different encodings of the same frames"
