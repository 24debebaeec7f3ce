"""VTA-LDM's ``sample`` on folders of videos: audio covering each video stream, the input's video packets
copied when mp4 can carry them (re-encoded otherwise), long inputs in crossfaded windows, unreadable
inputs refused, and the SVG paper's chained baseline (a joint model's samples dubbed by VTA-LDM)."""

from __future__ import annotations

import json
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
from hydra.utils import instantiate

from avgen.errors import ConfigError
from avgen.media import decode_audio, frame_count, video_stream_duration, write_mp4
from tests.conftest import compose


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("vta_ldm_sample")
    return instantiate(compose(["experiment=vta_ldm", "scale=tiny"], root).model)


def moving_frames(count: int, h: int = 32, w: int = 48) -> np.ndarray:
    frames = np.zeros((count, h, w, 3), np.uint8)
    for i in range(count):
        frames[i, :, (i * 3) % w] = 255
    return frames


def write_mjpeg_avi(path, frames: np.ndarray, fps: int) -> None:
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuvj420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def video_packets(path) -> list[bytes]:
    with av.open(str(path)) as f:
        return [bytes(p) for p in f.demux(f.streams.video[0]) if p.size]


def test_sample_dubs_every_readable_video(system, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_mp4(inputs / "long.mp4", moving_frames(21), 8)  # 2.625 s: four 1-s windows
    write_mjpeg_avi(inputs / "short.avi", moving_frames(6), 12)  # 0.5 s, mjpeg: re-encoded
    (inputs / "notes.bin").write_bytes(b"not a video")
    out = tmp_path / "out"
    report = system.sample_to_files(out, video=str(inputs), steps=2, sampler="ddim", device="cpu")
    assert sorted(p.name for p in report.written) == ["long.mp4", "short.mp4"]
    assert [entry["file"] for entry in report.refused] == ["notes.bin"]
    for stem, codec, mode in (("long", "h264", "copied"), ("short", "h264", "reencoded")):
        source = next(inputs.glob(f"{stem}.*"))
        duration = video_stream_duration(source)
        meta = json.loads((out / f"{stem}.json").read_text())
        assert meta["dub"]["video"] == mode and meta["dub"]["output_codec"] == codec
        assert {k: meta["generation"][k] for k in ("sampler", "steps")} == {"sampler": "ddim", "steps": 2}
        assert meta["source"] == str(source.resolve())
        wave = decode_audio(out / f"{stem}.wav")
        assert len(wave) == frame_count(duration, 16000)
        assert video_stream_duration(out / f"{stem}.mp4") == duration
    assert video_packets(out / "long.mp4") == video_packets(inputs / "long.mp4")
    windows = json.loads((out / "long.json").read_text())["windows_s"]
    # 1-s windows overlapping by a quarter, the last one aligned to the end
    assert windows == [[0.0, 1.0], [0.75, 1.75], [1.5, 2.5], [1.625, 2.625]]
    # nothing is overwritten unless asked
    with pytest.raises(FileExistsError, match="sample.overwrite=true"):
        system.sample_to_files(out, video=str(inputs), steps=1, sampler="ddim", device="cpu")


def test_long_inputs_are_windows_joined_by_an_equal_power_crossfade(system, tmp_path, monkeypatch):
    """Each window's audio is what generate gives for that window's frames; the joins are the crossfade."""
    from avgen.media import crossfade_windows, equal_power_crossfade

    write_mp4(tmp_path / "v.mp4", moving_frames(20), 8)  # 2.5 s
    chunks = []
    original = system.generate

    def record(video, **kwargs):
        audio = original(video, **kwargs)
        chunks.extend(audio.numpy())
        return audio

    monkeypatch.setattr(system, "generate", record)
    system.sample_to_files(tmp_path / "out", video=str(tmp_path / "v.mp4"), steps=1, sampler="ddim", device="cpu",
                           batch_size=2)
    windows = crossfade_windows(40000, 16000, 4000)
    expected = equal_power_crossfade([c[:e - s] for c, (s, e) in zip(chunks, windows)], [s for s, _ in windows], 40000)
    wave = decode_audio(tmp_path / "out" / "v.wav")
    assert len(chunks) == len(windows) == 3
    assert np.abs(wave - expected).max() < 1 / 2 ** 14  # 16-bit wav


def test_bad_sample_inputs(system, tmp_path):
    with pytest.raises(ConfigError, match=r"sample\.video=.*no such file or folder"):
        system.sample_to_files(tmp_path / "o", video=str(tmp_path / "missing"), steps=1)
    with pytest.raises(ConfigError, match=r"sample\.sampler='euler'"):
        system.sample_to_files(tmp_path / "o", video=str(tmp_path), sampler="euler")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="the folder is empty"):
        system.sample_to_files(tmp_path / "o", video=str(tmp_path / "empty"), steps=1)


def test_chained_text_to_video_to_audio_baseline(system, tmp_path):
    """The SVG paper's chained baselines: a text → video model's samples, then VTA-LDM dubs them."""
    joint = instantiate(compose(["experiment=joint_cmcpe", "scale=tiny"], tmp_path).model)
    first = joint.sample_to_files(tmp_path / "t2v", n=2, prompt="a ball hits wood", steps=1, device="cpu")
    report = system.sample_to_files(tmp_path / "v2a", video=str(tmp_path / "t2v"), steps=1, sampler="ddim",
                                    device="cpu")
    assert [p.name for p in report.written] == [p.name for p in first.written] == ["sample_0000.mp4",
                                                                                   "sample_0001.mp4"]
    for path in report.written:
        assert video_packets(path) == video_packets(tmp_path / "t2v" / path.name)
        assert path.with_suffix(".txt").read_text() == "a ball hits wood"  # the prompt comes along
        assert video_stream_duration(path) == Fraction(joint.num_frames) / joint.clip.fps


def test_sample_command_from_a_checkpoint_and_the_data(tmp_path):
    """fit → ``python -m avgen sample`` without sample.video: the data's test clips, dubbed, with their keys."""
    import torch

    from avgen.commands import run_command
    from avgen.samples import sample_source, split_samples

    # a run started from the authors' released weights (their key layout), whose file is gone by sampling time
    system = instantiate(compose(["experiment=vta_ldm_public", "scale=tiny"], tmp_path).model)
    released = {f"unet.{k}": v for k, v in system.unet.state_dict().items()}
    projection = system.condition.projection.state_dict()
    released.update({f"vid_fea_extractor.linear_layer.{k}": v for k, v in projection.items()})
    torch.save(released, tmp_path / "pytorch_model_2.bin")
    fit = compose(["command=fit", "experiment=vta_ldm_public", "scale=tiny", "trainer.max_steps=1",
                   "trainer.limit_val_batches=0", f"paths.data_dir={tmp_path}/data",
                   f"model.released={tmp_path / 'pytorch_model_2.bin'}"], tmp_path, run_dir=tmp_path / "fit")
    run_command(fit)
    (tmp_path / "pytorch_model_2.bin").unlink()  # a checkpoint's weights replace model.released (INIT_ONLY)
    cfg = compose(["command=sample", f"ckpt_path={tmp_path / 'fit' / 'checkpoints' / 'last.ckpt'}", "sample.n=2",
                   "sample.steps=2", "sample.sampler=ddim", f"paths.data_dir={tmp_path}/data"], tmp_path,
                  run_dir=tmp_path / "sample")
    paths = run_command(cfg)
    root = fit.data.root
    keys = [key for key, _ in split_samples(root, 2)]
    assert len(paths) == 2 and [sample_source(p) for p in paths] == keys
    for path, (_, parts) in zip(paths, split_samples(root, 2)):
        assert path.with_suffix(".txt").read_text()  # the clip's caption
        assert video_packets(path) == video_packets_of_bytes(parts["mp4"], tmp_path / "ref.mp4")
    assert json.loads((tmp_path / "sample" / "samples.json").read_text())["written"] == [p.stem for p in paths]


def video_packets_of_bytes(data: bytes, scratch) -> list[bytes]:
    scratch.write_bytes(data)
    return video_packets(scratch)


def test_each_window_is_conditioned_on_the_frames_shown_during_it(tmp_path):
    """At 2 fps a window that starts off the frame grid (the end-aligned last one) takes its frames from its own
    start, so frames and audio share one clock."""
    from avgen.data.geometry import ClipGeometry
    from avgen.media import decode_video
    from avgen.samples import VideoInput

    clip = ClipGeometry(seconds=1.0, fps=2, height=32, width=48, sample_rate=16000)
    write_mp4(tmp_path / "v.mp4", moving_frames(27), 8)  # 3.375 s
    item = VideoInput.read(tmp_path / "v.mp4", "v", "", "v", clip)
    assert item.num_samples == 54000
    assert item.windows == [(0, 16000), (12000, 28000), (24000, 40000), (36000, 52000), (38000, 54000)]
    for start, end in item.windows:
        expected, _ = decode_video(tmp_path / "v.mp4", fps=2, start=start / 16000, fit_to=(32, 48))
        assert np.array_equal(item.window_frames(start, end, clip), expected[:2]), start


def test_ddp_ranks_draw_their_own_noise(system, monkeypatch):
    """seed_everything seeds every rank alike; on_train_start mixes the rank into torch's seed."""
    import torch

    draws = []
    for rank in (0, 1):
        torch.manual_seed(1234)
        monkeypatch.setattr(system, "_trainer", SimpleNamespace(world_size=2, global_rank=rank), raising=False)
        system.on_train_start()
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])
    torch.manual_seed(1234)
    monkeypatch.setattr(system, "_trainer", SimpleNamespace(world_size=1, global_rank=0), raising=False)
    system.on_train_start()
    assert torch.equal(torch.rand(4), draws[0])  # one process: the stream seed_everything set


def test_audio_only_pretraining_and_its_refusal(tmp_path, capsys, monkeypatch):
    """Table 4's Pretrain-Audio: data.audio_only serves clips without frames; VTA-LDM trains on them with the text
    condition only; a system that reads video refuses them at fit start with one line."""
    import avgen.data.decode as decode
    from avgen.commands import run_command

    # the data are prepared (frames encoded) before training; from then on no frame may be decoded
    run_command(compose(["command=prepare", "scale=tiny", f"paths.data_dir={tmp_path}/data"], tmp_path,
                        run_dir=tmp_path / "prepare"))

    def no_frames(*args, **kwargs):
        raise AssertionError("a training clip's frames were decoded with data.audio_only=true")

    monkeypatch.setattr(decode, "decode_video", no_frames)
    common = ["command=fit", "experiment=vta_ldm", "scale=tiny", "trainer.max_steps=2", "trainer.limit_val_batches=0",
              "data.audio_only=true", f"paths.data_dir={tmp_path}/data"]
    run_command(compose([*common, "model.conditions=[text]"], tmp_path, run_dir=tmp_path / "audio"))
    assert (tmp_path / "audio" / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(SystemExit):
        run_command(compose(common, tmp_path, run_dir=tmp_path / "video"))
    err = capsys.readouterr().err
    assert "data.audio_only=true: VTALDM reads the clips' frames in training" in err and "[text]" in err
