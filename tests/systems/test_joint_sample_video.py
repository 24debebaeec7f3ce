"""The joint model's ``sample.video``: audio for given videos by the replacement method (the joint model as a
video-to-audio model, MM-Diffusion's zero-shot use), windowed and dubbed like VTA-LDM's ``sample``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from avgen.errors import ConfigError
from avgen.media import (
    crossfade_windows,
    decode_audio,
    equal_power_crossfade,
    frame_count,
    video_stream_duration,
    write_mp4,
)
from tests.conftest import compose
from tests.systems.test_vta_ldm_sample import moving_frames, video_packets, write_mjpeg_avi


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    return instantiate(compose(["experiment=joint_cmcpe", "scale=tiny"], tmp_path_factory.mktemp("joint_v2a")).model)


def test_sample_video_dubs_every_readable_video(joint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_mp4(inputs / "long.mp4", moving_frames(21), 8)  # 2.625 s: four 1-s windows
    write_mjpeg_avi(inputs / "short.avi", moving_frames(6), 12)  # 0.5 s, mjpeg: re-encoded
    (inputs / "short.txt").write_text("a ball hits wood")  # a caption next to the input is its text condition
    (inputs / "notes.bin").write_bytes(b"not a video")
    out = tmp_path / "out"
    report = joint.sample_to_files(out, video=str(inputs), steps=2, device="cpu")
    assert sorted(p.name for p in report.written) == ["long.mp4", "short.mp4"]
    assert [entry["file"] for entry in report.refused] == ["notes.bin"]
    assert not report.failed
    for stem, mode, caption in (("long", "copied", ""), ("short", "reencoded", "a ball hits wood")):
        source = next(inputs.glob(f"{stem}.[ma]*"))
        duration = video_stream_duration(source)
        meta = json.loads((out / f"{stem}.json").read_text())
        assert meta["dub"]["video"] == mode and meta["dub"]["output_codec"] == "h264"
        assert meta["generation"]["steps"] == 2 and meta["generation"]["method"] == "replacement"
        assert meta["prompt"] == caption == (out / f"{stem}.txt").read_text()
        wave = decode_audio(out / f"{stem}.wav")
        assert len(wave) == frame_count(duration, 16000) and np.abs(wave).max() > 0
        assert video_stream_duration(out / f"{stem}.mp4") == duration
    assert video_packets(out / "long.mp4") == video_packets(inputs / "long.mp4")
    windows = json.loads((out / "long.json").read_text())["windows_s"]
    assert windows == [[0.0, 1.0], [0.75, 1.75], [1.5, 2.5], [1.625, 2.625]]
    with pytest.raises(FileExistsError, match="sample.overwrite=true"):
        joint.sample_to_files(out, video=str(inputs), steps=1, device="cpu")


def test_each_window_is_generated_for_its_own_frames_and_joined_by_the_crossfade(joint, tmp_path, monkeypatch):
    """generate gets, per window, the frame VAE's posterior mean of the frames shown during that window (the last
    frame repeated where a window has fewer than F), the replacement's video_latents, and seeds seed + k."""
    from avgen.backbones.animatediff import encode_video_posterior
    from avgen.media import decode_video, uint8_to_unit_range

    write_mp4(tmp_path / "v.mp4", moving_frames(20), 8)  # 2.5 s: windows [0, 1), [0.75, 1.75), [1.5, 2.5)
    calls, original = [], joint.generate

    def record(prompts, **kwargs):
        video, audio = original(prompts, **kwargs)
        calls.append((list(prompts), kwargs["seed"], kwargs["video_latents"].clone(), audio.clone()))
        return video, audio

    monkeypatch.setattr(joint, "generate", record)
    joint.sample_to_files(tmp_path / "out", video=str(tmp_path / "v.mp4"), prompt="drums", steps=1, device="cpu",
                          batch_size=2, seed=5)
    assert [(p, s) for p, s, _, _ in calls] == [(["drums", "drums"], 5), (["drums"], 7)]
    frames, _ = decode_video(tmp_path / "v.mp4", fps=8, fit_to=(32, 32))
    windows = crossfade_windows(40000, 16000, 4000)
    starts = [round(s / 16000 * 8) for s, _ in windows]  # 0, 6, 12: on the frame grid
    with torch.no_grad():
        mean, _ = encode_video_posterior(joint.video, torch.stack([uint8_to_unit_range(frames[s:s + 8])
                                                                   for s in starts]))
    expected = mean * joint.video_vae.config.scaling_factor
    given = torch.cat([latents for _, _, latents, _ in calls])
    assert torch.allclose(given, expected, atol=1e-5)
    chunks = [a[j].numpy() for _, _, _, a in calls for j in range(len(a))]
    wave = decode_audio(tmp_path / "out" / "v.wav")
    joined = equal_power_crossfade([c[:e - s] for c, (s, e) in zip(chunks, windows)], [s for s, _ in windows], 40000)
    assert np.abs(wave - joined).max() < 1 / 2 ** 14  # 16-bit wav

    calls.clear()
    write_mp4(tmp_path / "s.mp4", moving_frames(5), 8)  # 0.625 s: one window of 5 frames, padded with the last
    joint.sample_to_files(tmp_path / "out2", video=str(tmp_path / "s.mp4"), steps=1, device="cpu")
    short, _ = decode_video(tmp_path / "s.mp4", fps=8, fit_to=(32, 32))
    padded = np.concatenate([short, np.repeat(short[-1:], 3, 0)])
    with torch.no_grad():
        mean, _ = encode_video_posterior(joint.video, uint8_to_unit_range(padded)[None])
    assert torch.allclose(calls[0][2], mean * joint.video_vae.config.scaling_factor, atol=1e-5)
    assert len(decode_audio(tmp_path / "out2" / "s.wav")) == 10000


def test_the_dubbed_audio_is_the_replacement_sample_of_the_video(joint, tmp_path):
    """sample.video's audio is generate(video_latents=...) of the same frames, prompt and seed: nothing else."""
    from avgen.media import decode_video, uint8_to_unit_range

    write_mp4(tmp_path / "v.mp4", moving_frames(8), 8)  # exactly one clip
    joint.sample_to_files(tmp_path / "out", video=str(tmp_path / "v.mp4"), prompt="a cube hits glass", steps=2,
                          device="cpu", seed=3)
    frames, _ = decode_video(tmp_path / "v.mp4", fps=8, fit_to=(32, 32))
    settings = joint.sampling.updated("sample", steps=2)
    with torch.no_grad():
        audio = joint.audio_for_frames(uint8_to_unit_range(frames)[None], ["a cube hits glass"], settings, 3)
    wave = decode_audio(tmp_path / "out" / "v.wav")
    assert np.abs(wave - audio[0].numpy()).max() < 1 / 2 ** 14


def test_bad_sample_video_inputs(joint, tmp_path):
    with pytest.raises(ConfigError, match=r"sample\.video=.*no such file or folder"):
        joint.sample_to_files(tmp_path / "o", video=str(tmp_path / "missing"), steps=1)
    with pytest.raises(ConfigError, match=r"sample\.prompt=.*one caption for every input video"):
        joint.sample_to_files(tmp_path / "o", video=str(tmp_path), prompt=["a", "b"], steps=1)
    with pytest.raises(ConfigError, match=r"sample\.eta"):
        joint.sample_to_files(tmp_path / "o", video=str(tmp_path / "missing"), eta=2.0)
    with pytest.raises(ValueError, match=r"video must be \(B, 8, 3, 32, 32\)"):
        joint.audio_for_frames(torch.zeros(1, 7, 3, 32, 32), ["x"], joint.sampling.updated("sample", steps=1), 0)
    assert not (tmp_path / "o").exists()


def test_a_failing_input_loses_only_itself(joint, tmp_path, monkeypatch):
    """A window whose audio is not finite (or whose generation raises) fails its input alone; the others are
    written, and an input folder with nothing readable writes nothing (and does not move the model)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_mp4(inputs / "a.mp4", moving_frames(8), 8)
    write_mp4(inputs / "b.mp4", moving_frames(8)[::-1].copy(), 8)
    original = joint.audio_for_frames

    def broken_for_b(video, prompts, settings, seed):
        audio = original(video, prompts, settings, seed)
        return audio.fill_(float("nan")) if seed == 1 else audio  # b is the second input: window 1

    monkeypatch.setattr(joint, "audio_for_frames", broken_for_b)
    report = joint.sample_to_files(tmp_path / "out", video=str(inputs), steps=1, device="cpu")
    assert [p.name for p in report.written] == ["a.mp4"]
    assert [(f["sample"], f["reason"]) for f in report.failed] == [("b", "the generated audio holds NaN or inf")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "a.mp4", "a.txt", "a.wav"]

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.mp4").write_bytes(b"not a video")
    monkeypatch.setattr(joint, "to_sampling_device", lambda device: pytest.fail("the model moved for no input"))
    report = joint.sample_to_files(tmp_path / "out3", video=str(tmp_path / "junk"), steps=1)
    assert not report.written and [e["file"] for e in report.refused] == ["x.mp4"]
