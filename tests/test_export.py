"""Export → ``avgen.from_pretrained`` → pipeline: the round trip, the folder format and the input checks.

Each system is trained 2 steps at ``scale=tiny`` (EMA on, so export, sampling and loading all see EMA weights);
the exported pipeline must give exactly the clips ``python -m avgen sample`` writes from the checkpoint for the
same seed and settings.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import avgen
from avgen.errors import ConfigError, InputError, PipelineFolderError
from avgen.export import export_pipeline
from avgen.pipelines import (
    CONFIG_FILE,
    INDEX_FILE,
    JointPipeline,
    TempoTokensPipeline,
    VTALDMPipeline,
    pipeline_from_checkpoint,
)
from tests.conftest import compose


@pytest.fixture
def checkpoints(tiny_checkpoints, one_thread):
    return tiny_checkpoints


@pytest.fixture
def make_clip():
    """``make_clip(path, seconds)``: a .wav (a decaying 440 Hz tone) or an .mp4 (moving frames, 64×48 at 12 fps, with
    that sound) of ``seconds``."""
    from avgen.media import write_mp4, write_wav

    def make(path: Path, seconds: float) -> Path:
        rate = 16000
        t = np.arange(int(seconds * rate)) / rate
        wave = (0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-3 * (t % 0.5))).astype(np.float32)
        if path.suffix == ".wav":
            return write_wav(path, wave, rate)
        frames = np.zeros((int(seconds * 12), 48, 64, 3), np.uint8)
        for i in range(len(frames)):
            frames[i, :, (i * 5) % 64:(i * 5) % 64 + 8] = (200, 60, 30)
        return write_mp4(path, frames, 12, audio=wave, sample_rate=rate)

    return make


@pytest.fixture
def tiny_dir(tmp_path):
    return tmp_path / "tiny_cache"


def sampled_by_command(ckpt: Path, system: str, monkeypatch, tmp_path: Path, **sample) -> list[tuple]:
    """The (video, audio) tensors the ``sample`` command's code writes, by sample, captured where it writes them."""
    from avgen.commands import load_system

    model, _ = load_system(ckpt)
    captured: list[tuple] = []
    if system == "vta_ldm":
        import avgen.systems.vta_ldm as vta_ldm

        original = vta_ldm.write_dubbed

        def spy(out_dir, item, wave, *args):
            captured.append((None, torch.as_tensor(np.asarray(wave))))
            return original(out_dir, item, wave, *args)

        monkeypatch.setattr(vta_ldm, "write_dubbed", spy)
    else:
        import importlib

        module = importlib.import_module(type(model).__module__)
        original = module.write_sounding_videos

        def spy(out_dir, prompts, video, audio, clip, **kwargs):
            captured.extend((video[i].clone(), audio[i].clone()) for i in range(len(prompts)))
            return original(out_dir, prompts, video, audio, clip, **kwargs)

        monkeypatch.setattr(module, "write_sounding_videos", spy)
    report = model.sample_to_files(tmp_path / "sampled", device="cpu", **sample)
    assert len(report.written) == len(captured) > 0
    return captured


@pytest.mark.parametrize("system", ["joint", "tempotokens", "vta_ldm"])
def test_export_round_trip_equals_sampling_the_checkpoint(system, checkpoints, tmp_path, tiny_dir, monkeypatch,
                                                          make_clip):
    ckpt = checkpoints(system)
    folder = export_pipeline(ckpt, tmp_path / "export")
    # the export's own files are JSON and safetensors; the frozen parts' official formats are read with
    # torch.load(weights_only=True) (tensors and plain values, no code) at most
    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained unpickled something")

    safe_load = torch.load

    def weights_only(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return safe_load(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "load", weights_only)
        m.setattr(pickle, "load", refuse)
        m.setattr(pickle, "loads", refuse)
        pipe = avgen.from_pretrained(folder, device="cpu", tiny_dir=tiny_dir)
    assert type(pipe).__name__ == {"joint": "JointPipeline", "tempotokens": "TempoTokensPipeline",
                                   "vta_ldm": "VTALDMPipeline"}[system]
    progress: list[tuple[int, int]] = []
    if system == "joint":
        prompts = ["a red ball bounces", "a blue cube falls"]
        out = pipe(prompt=prompts, seed=7, steps=2, gamma=1.5, progress=lambda d, t: progress.append((d, t)))
        expected = sampled_by_command(ckpt, system, monkeypatch, tmp_path, n=2, prompt=prompts, seed=7, steps=2,
                                      gamma=1.5)
        got = list(zip(out.videos, out.audios))
    elif system == "tempotokens":
        clip = make_clip(tmp_path / "in.wav", seconds=1.0)
        out = pipe(audio=str(clip), seed=7, steps=2, progress=lambda d, t: progress.append((d, t)))
        expected = sampled_by_command(ckpt, system, monkeypatch, tmp_path, audio=str(clip), seed=7, steps=2)
        got = list(zip(out.videos, out.audios))
    else:
        clip = make_clip(tmp_path / "in.mp4", seconds=1.5)
        out = pipe(video=str(clip), seed=7, steps=2, progress=lambda d, t: progress.append((d, t)))
        expected = sampled_by_command(ckpt, system, monkeypatch, tmp_path, video=str(clip), seed=7, steps=2)
        got = [(None, a) for a in out.audios]
    assert len(got) == len(expected)
    for (video, audio), (video_ref, audio_ref) in zip(got, expected):
        assert torch.equal(audio.float(), audio_ref.float())
        if video_ref is not None:
            assert torch.equal(video, video_ref.float())
    assert progress[0][0] == 0 and progress[-1][0] == progress[-1][1] > 0
    # the same from the checkpoint directly
    direct = pipeline_from_checkpoint(ckpt, device="cpu")
    kwargs = ({"prompt": ["a red ball bounces", "a blue cube falls"]} if system == "joint" else
              {"audio": str(clip)} if system == "tempotokens" else {"video": str(clip)})
    again = direct(seed=7, steps=2, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(again.audios, out.audios))
    # and the sounding mp4s
    written = pipe.save(out, tmp_path / "saved")
    from avgen.media import probe

    info = probe(written[0])
    assert info.has_audio and info.has_video
    with pytest.raises(FileExistsError, match="overwrite"):
        out.save(tmp_path / "saved")


def test_exported_joint_model_gives_the_audio_of_a_video_as_sample_video_does(checkpoints, tmp_path, tiny_dir,
                                                                             monkeypatch, make_clip):
    """``JointPipeline(video=...)`` is ``sample.video``: the same audio for the same inputs, seed and settings (window
    k over every input seeded ``seed + k``, a caption beside an input its text), the inputs' frames, and dubbing."""
    import avgen.samples as samples
    from avgen.media import probe
    from tests.systems.test_vta_ldm_sample import moving_frames, video_packets, write_mjpeg_avi

    ckpt = checkpoints("joint")
    folder = export_pipeline(ckpt, tmp_path / "export")
    # the video generator's noise prior (null in the run: its source's own) is pinned before sources move
    assert json.loads((folder / CONFIG_FILE).read_text())["video"]["frame_noise_correlation"] == 0.0
    pipe = avgen.from_pretrained(folder, device="cpu", tiny_dir=tiny_dir)
    inputs = tmp_path / "in"
    inputs.mkdir()
    long = make_clip(inputs / "a_long.mp4", seconds=1.5)  # two windows
    short = inputs / "b_short.avi"
    write_mjpeg_avi(short, moving_frames(6), 12)  # 0.5 s, no sound
    (inputs / "b_short.txt").write_text("a ball hits wood")
    progress: list[tuple[int, int]] = []
    out = pipe(video=[str(long), short], seed=4, steps=2, eta=0.5, progress=lambda d, t: progress.append((d, t)))
    assert out.generated == ("audio",) and out.prompts == ["", "a ball hits wood"]
    assert out.sources == [str(long.resolve()), str(short.resolve())]
    assert out.settings["method"] == "replacement" and out.settings["seed"] == 4 and out.settings["eta"] == 0.5
    assert [tuple(v.shape) for v in out.videos] == [(12, 3, 32, 32), (4, 3, 32, 32)]  # the model's 8 fps, 32×32
    assert [len(a) for a in out.audios] == [24000, 8000]
    size = pipe.model.sampling.batch_size  # windows go batch_size at a time, per input; one pass per step
    assert progress[0] == (0, 2 * (-(-2 // size) + 1)) and progress[-1][0] == progress[-1][1]
    captured = []
    original = samples.write_dubbed

    def spy(out_dir, item, wave, *args):
        captured.append(torch.as_tensor(np.asarray(wave)))
        return original(out_dir, item, wave, *args)

    monkeypatch.setattr(samples, "write_dubbed", spy)
    from avgen.commands import load_system

    model, _ = load_system(ckpt)
    settings = model.sampling.updated("sample", steps=2, eta=0.5)
    model.dub_to_files(tmp_path / "dubbed", str(inputs), settings, seed=4, device="cpu")
    assert len(captured) == 2 and all(torch.equal(a, b) for a, b in zip(out.audios, captured))
    written = out.save(tmp_path / "saved")
    assert video_packets(written[0]) == video_packets(long)  # the input's own stream, with the new sound
    assert probe(written[1]).has_audio and json.loads(written[1].with_suffix(".json").read_text())["source"] == str(
        short.resolve())
    with pytest.raises(InputError, match="the joint model takes one caption for every input video"):
        pipe(video=str(long), prompt=["a", "b"])


def test_export_folder_format_and_model_card(checkpoints, tmp_path, tiny_dir):
    from safetensors.torch import load_file

    from avgen.checkpoint import read_checkpoint

    ckpt = checkpoints("joint")
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps({"metrics": {"av_align": {"official": 0.25}}}))
    # evaluate runs found under runs_dir: one scored samples of this checkpoint, one another checkpoint's
    runs = tmp_path / "runs"
    for name, source, fad in (("mine", ckpt, 1.5), ("other", tmp_path / "other.ckpt", 9.0)):
        (runs / f"sample_{name}" / ".hydra").mkdir(parents=True)
        (runs / f"sample_{name}" / ".hydra" / "config.yaml").write_text(f"command: sample\nckpt_path: {source}\n")
        (runs / f"evaluate_{name}").mkdir()
        (runs / f"evaluate_{name}" / "metrics.json").write_text(json.dumps(
            {"pred_dir": str(runs / f"sample_{name}" / "samples"), "metrics": {"fad": fad}}))
    folder = export_pipeline(ckpt, tmp_path / "export", evaluations=[evaluation], runs_dir=runs)
    index = json.loads((folder / INDEX_FILE).read_text())
    assert not (folder / "model_index.json").exists()
    assert index["format"] == "avgen-pipeline/1" and index["system"] == "joint" and index["ema"] is True
    assert index["global_step"] == 2
    trained = {n: c for n, c in index["components"].items() if c["type"] == "trained"}
    frozen = {n: c for n, c in index["components"].items() if c["type"] == "frozen"}
    assert set(trained) == {"motion_modules", "video_connector", "audio_connector", "video_cross_modal_blocks",
                            "audio_cross_modal_blocks"}
    assert {n: (c["kind"], c["source"]) for n, c in frozen.items()} == {
        "video_base": ("tiny", "tiny:animatediff"), "motion_adapter": ("tiny", "tiny:animatediff"),
        "audio_base": ("tiny", "tiny:audioldm")}
    # the EMA weights, whole, split by component
    meta = read_checkpoint(ckpt)["avgen"]
    stored = {}
    for comp in trained.values():
        stored.update({comp["prefix"] + k: v for k, v in load_file(folder / comp["file"]).items()})
    assert set(stored) == set(meta["ema"]) == set(read_checkpoint(ckpt)["state_dict"])
    assert all(torch.equal(stored[k], meta["ema"][k]) for k in stored)
    config = json.loads((folder / "model_config.json").read_text())
    assert config["optimizer"] is None and config["scheduler"] is None and config["tiny_dir"] is None
    card = (folder / "README.md").read_text()
    assert "| fad | 1.5 |" in card and "(samples of this checkpoint)" in card
    for text in ("library_name: avgen", "arXiv 2409.17550", "| av_align.official | 0.25 |", "2 optimizer steps",
                 "avgen.from_pretrained", "Intended use", "scale=tiny"):
        assert text in card, text
    # raw weights on request
    raw = export_pipeline(ckpt, tmp_path / "raw", ema=False)
    comp = trained["video_connector"]
    weights = load_file(raw / comp["file"])
    sd = read_checkpoint(ckpt)["state_dict"]
    assert all(torch.equal(v, sd[comp["prefix"] + k]) for k, v in weights.items())
    assert json.loads((raw / INDEX_FILE).read_text())["ema"] is False


def test_export_evaluations_reads_what_it_is_given(tmp_path):
    from avgen.export import card_metrics

    run = tmp_path / "evaluate"
    (run / "older").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"metrics": {"fad": 1.5}}))
    (run / "older" / "metrics.json").write_text(json.dumps({"metrics": {"kl": 3.0}}))
    assert card_metrics(tmp_path / "x.ckpt", [run / "metrics.json"])[0] == {"fad": 1.5}  # that file, not its tree
    assert card_metrics(tmp_path / "x.ckpt", [run])[0] == {"fad": 1.5, "kl": 3.0}
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "empty").mkdir()
    for entry, message in ((tmp_path / "bad.json", "is not a metrics.json of python -m avgen evaluate (JSONDecode"),
                           (tmp_path / "empty", "holds no readable metrics.json")):
        with pytest.raises(ConfigError, match=re.escape(f"export.evaluations: {entry} {message}")):
            card_metrics(tmp_path / "x.ckpt", [entry])


def test_include_frozen_copies_the_frozen_parts(checkpoints, tmp_path):
    folder = export_pipeline(checkpoints("tempotokens"), tmp_path / "export", include_frozen=True)
    index = json.loads((folder / INDEX_FILE).read_text())
    frozen = {n: c for n, c in index["components"].items() if c["type"] == "frozen"}
    assert {c["kind"] for c in frozen.values()} == {"included"}
    assert (folder / frozen["t2v_base"]["source"] / "unet").is_dir()
    # moved elsewhere and loaded with no tiny folder: everything comes from the export
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    folder.rename(moved)
    never = tmp_path / "never"
    pipe = avgen.from_pretrained(moved, device="cpu", tiny_dir=never)
    assert not never.exists()
    reference = avgen.from_pretrained(export_pipeline(checkpoints("tempotokens"), tmp_path / "ref"), device="cpu",
                                      tiny_dir=tmp_path / "tiny")
    wave = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.5
    a = pipe(audio=wave, sample_rate=16000, steps=2, seed=1)
    b = reference(audio=wave, sample_rate=16000, steps=2, seed=1)
    assert torch.equal(a.videos[0], b.videos[0])


def test_export_never_replaces_what_it_did_not_write(checkpoints, tmp_path):
    ckpt = checkpoints("vta_ldm")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an avgen export"):
        export_pipeline(ckpt, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match=r"export\.dir=.*notes\.txt/model: cannot create a folder in .*notes\.txt"):
        export_pipeline(ckpt, mine / "notes.txt" / "model")  # below a file: named by the key, not a temporary path
    folder = export_pipeline(ckpt, tmp_path / "export")
    with pytest.raises(FileExistsError, match="export.overwrite=true"):
        export_pipeline(ckpt, folder)
    export_pipeline(ckpt, folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "mine"]  # no temporary folder left
    (folder / "NOTES.txt").write_text("keep")  # a user's file inside an export: overwrite must not delete it
    with pytest.raises(FileExistsError, match=r"holds an export and NOTES\.txt, which export did not write"):
        export_pipeline(ckpt, folder, overwrite=True)
    assert (folder / "NOTES.txt").read_text() == "keep"


def test_from_pretrained_refuses_broken_folders(checkpoints, tmp_path, tiny_dir):
    with pytest.raises(PipelineFolderError, match="avgen_index.json is missing; write one with python -m avgen export"):
        avgen.from_pretrained(tmp_path, tiny_dir=tiny_dir)
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(PipelineFolderError, match="diffusers pipeline folder"):
        avgen.from_pretrained(tmp_path, tiny_dir=tiny_dir)
    folder = export_pipeline(checkpoints("tempotokens"), tmp_path / "export")
    index = json.loads((folder / INDEX_FILE).read_text())
    file = folder / index["components"]["audio_mapper"]["file"]
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    with pytest.raises(PipelineFolderError, match="SHA-256 differs"):
        avgen.from_pretrained(folder, tiny_dir=tiny_dir)
    config = json.loads((folder / "model_config.json").read_text())
    config["_target_"] = "os.system"
    (folder / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineFolderError, match="'os.system' is not an avgen system"):
        avgen.from_pretrained(folder, tiny_dir=tiny_dir)
    # hand-edited files: one PipelineFolderError naming the file, never a KeyError / TypeError / safetensors error
    good_index, good_config = dict(index), dict(config, _target_="avgen.systems.tempotokens.TempoTokens")
    mapper = good_index["components"]["audio_mapper"]
    edits = [
        ({"components": {**good_index["components"], "audio_mapper": {**mapper, "sha256": None}}}, None,
         "not a readable safetensors file"),
        ({"components": {**good_index["components"], "audio_mapper": {"type": "trained"}}}, None,
         "component audio_mapper has no file"),
        ({"config": "../elsewhere.json"}, None, "config names ../elsewhere.json, outside the folder"),
        ({}, [1], "not a model config"),
        ({}, {**good_config, "bogus_key": 1}, "its model config does not fit TempoTokens"),
    ]
    data[-1] ^= 1
    for index_edit, config_edit, message in edits:
        file.write_bytes(b"garbage" if "safetensors" in message else bytes(data))
        (folder / INDEX_FILE).write_text(json.dumps({**good_index, **index_edit}))
        (folder / "model_config.json").write_text(json.dumps(good_config if config_edit is None else config_edit))
        with pytest.raises(PipelineFolderError, match=re.escape(message)):
            avgen.from_pretrained(folder, tiny_dir=tiny_dir)


def test_pipeline_inputs_are_checked_before_any_model_runs(checkpoints, tmp_path, tiny_dir, monkeypatch):
    joint = pipeline_from_checkpoint(checkpoints("joint"), device="cpu")
    tempo = pipeline_from_checkpoint(checkpoints("tempotokens"), device="cpu")
    vta = pipeline_from_checkpoint(checkpoints("vta_ldm"), device="cpu")
    assert isinstance(joint, JointPipeline) and joint.inputs == joint.required_inputs == ("prompt", "video")
    assert {"gamma", "eta"} <= set(joint.options)
    assert isinstance(tempo, TempoTokensPipeline) and tempo.inputs == ("audio", "prompt")
    assert isinstance(vta, VTALDMPipeline) and vta.task == "video-to-audio"
    for pipe in (joint, tempo, vta):
        denoiser = pipe.model.denoiser if pipe is joint else pipe.model.unet
        monkeypatch.setattr(denoiser, "forward", lambda *a, **k: pytest.fail("the model ran"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    cases = [
        (lambda: joint(), "prompt is missing: pass prompt=\"...\" (or a list of prompts) for sounding videos, or "
                          "video=<file> for the audio of a video"),
        (lambda: joint(video=tmp_path / "none.mp4"), "none.mp4: no such file"),
        (lambda: joint(video=bad), "bad.wav: cannot be read"),
        (lambda: joint(prompt="x", gama=2), "gama is not an option of JointPipeline"),
        (lambda: joint(prompt="x", steps=0), "pipeline.steps"),
        (lambda: joint(prompt="x", eta=2), "pipeline.eta=2: expected DDIM eta in [0, 1]"),
        (lambda: joint(prompt="x", seed=-1), "seed=-1"),
        (lambda: joint(prompt=[1]), "expected a string or a list of strings"),
        (lambda: tempo(), "audio is missing"),
        (lambda: tempo(audio=tmp_path / "none.wav"), "no such file"),
        (lambda: tempo(audio=bad), "bad.wav: cannot be read"),
        (lambda: tempo(audio=np.zeros(100, np.float32), sample_rate=16000), "too short"),
        (lambda: tempo(audio=np.full(16000, np.nan, np.float32), sample_rate=16000), "NaN"),
        (lambda: tempo(audio=np.zeros(16000, np.float32)), "needs its sample_rate"),
        (lambda: tempo(audio=np.zeros(16000, np.float32), sample_rate=16000, prompt=["a", "b"]),
         "2 prompts for 1 inputs"),
        (lambda: vta(), "video is missing"),
        (lambda: vta(video=tmp_path / "none.mp4"), "no such file"),
        (lambda: vta(video=bad), "bad.wav: cannot be read"),
        (lambda: vta(video=str(bad), prompt=["a"]), "one caption for every input"),
        # wrong types and edge values: one line each, never a TypeError / torch's overflow
        (lambda: joint(prompt=123), "prompt=123: expected a string or a list of strings"),
        (lambda: joint(prompt="x", seed=2**64), "seed=18446744073709551616: expected a non-negative integer below"),
        (lambda: tempo(audio=[]), "no input; pass a file or a waveform"),
        (lambda: tempo(audio=np.zeros((0, 16000), np.float32), sample_rate=16000), "no input"),
        (lambda: tempo(audio=np.zeros(16000, np.float32), sample_rate=0), "sample_rate=0: expected"),
        (lambda: tempo(audio=np.zeros(16000, np.float32), sample_rate=44100.5), "sample_rate=44100.5: expected"),
        (lambda: tempo(audio=empty), "audio empty.wav: the file is empty (0 bytes)"),
        (lambda: vta(video=[]), "no input; pass a file"),
        (lambda: vta(video=torch.zeros(8, 3, 32, 32)), "video=<Tensor (8, 3, 32, 32)>: expected a file path"),
    ]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for call, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            call()
    for call in (lambda: tempo(audio=bad), lambda: vta(video=bad)):  # the file is named once, by its name
        with pytest.raises(InputError) as info:
            call()
        assert str(tmp_path) not in str(info.value) and "Errno" not in str(info.value)
    tempo.max_input_seconds = vta.max_input_seconds = 0.5
    with pytest.raises(InputError, match=r"lasts 1\.00 s; this pipeline accepts at most 0\.5 s"):
        tempo(audio=np.zeros(16000, np.float32), sample_rate=16000)
    from avgen.media import write_mp4

    clip = write_mp4(tmp_path / "long.mp4", np.zeros((12, 16, 16, 3), np.uint8), 8, audio=np.zeros(24000, np.float32),
                     sample_rate=16000)
    monkeypatch.setattr("avgen.media.decode_audio", lambda *a, **k: pytest.fail("decoded before the length check"))
    with pytest.raises(InputError, match=r"long\.mp4 lasts 1\.50 s; this pipeline accepts at most 0\.5 s"):
        tempo(audio=clip)
    monkeypatch.setattr("avgen.samples.VideoInput.read", lambda *a, **k: pytest.fail("decoded before the check"))
    with pytest.raises(InputError, match=r"video long\.mp4 lasts 1\.50 s; this pipeline accepts at most 0\.5 s"):
        vta(video=clip)


def test_export_command(checkpoints, tmp_path, capsys):
    from avgen.commands import run_command

    ckpt = checkpoints("vta_ldm")
    cfg = compose(["command=export", f"ckpt_path={ckpt}", f"export.dir={tmp_path / 'out'}"], tmp_path)
    run_command(cfg)
    assert "avgen.from_pretrained(" in capsys.readouterr().out
    assert (tmp_path / "out" / INDEX_FILE).is_file()
    for overrides, message in ((["command=export"], "export needs ckpt_path"),
                               (["command=export", f"ckpt_path={tmp_path / 'x.ckpt'}"], "no such checkpoint file"),
                               (["command=export", f"ckpt_path={ckpt}", f"export.dir={tmp_path / 'out'}"],
                                "already holds an export; pass export.overwrite=true")):
        with pytest.raises(SystemExit) as stop:
            run_command(compose(overrides, tmp_path))
        assert stop.value.code == 1
        assert message in capsys.readouterr().err


def test_ctrl_c_during_export_is_one_line_and_leaves_nothing(checkpoints, tmp_path, capsys, monkeypatch):
    import avgen.media
    from avgen.commands import run_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(avgen.media, "write_bytes_atomic", interrupted)  # Ctrl-C while the folder is written
    out = tmp_path / "exports" / "model"
    cfg = compose(["command=export", f"ckpt_path={checkpoints('vta_ldm')}", f"export.dir={out}"], tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_command(cfg)
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "avgen export: interrupted (Ctrl-C); nothing was written to export.dir (the export is moved into place only "
        "when complete)"]
    assert list(out.parent.iterdir()) == []  # neither the folder nor its temporary twin


def test_bfloat16_pipeline_runs(checkpoints, tmp_path, tiny_dir):
    """dtype= casts every part; the joint connectors' timestep MLP once got a float32 embedding in a bf16 model."""
    pipe = avgen.from_pretrained(export_pipeline(checkpoints("joint"), tmp_path / "export"), device="cpu",
                                 dtype="bfloat16", tiny_dir=tiny_dir)
    assert {p.dtype for p in pipe.model.parameters()} == {torch.bfloat16}
    out = pipe(prompt="a ball", steps=2)
    assert out.videos[0].dtype == torch.float32 and torch.isfinite(out.audios[0]).all()
    with pytest.raises(Exception, match="dtype='int8': expected a floating torch dtype"):
        avgen.from_pretrained(tmp_path / "export", dtype="int8", tiny_dir=tiny_dir)


def test_include_frozen_reads_hub_ids_from_the_local_cache(tmp_path, monkeypatch):
    """A hub id is copied out of the Hugging Face cache layout (snapshot symlinks to blobs, followed); one that is
    not cached stops with the config key and the download hint."""
    from avgen.backbones.loader import PretrainedModelMissing
    from avgen.export import copy_frozen

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny-model"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text('{"a": 1}')
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "config.json").symlink_to(repo / "blobs" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    dest = copy_frozen("org/tiny-model", "hub", "video.base", tmp_path / "out" / "video_base", None)
    copied = dest / "unet" / "config.json"
    assert copied.is_file() and not copied.is_symlink() and copied.read_text() == '{"a": 1}'
    with pytest.raises(PretrainedModelMissing, match=r"config key model\.video\.base.*huggingface-cli download org/no"):
        copy_frozen("org/no", "hub", "video.base", tmp_path / "out" / "x", None)
    # from_pretrained of a hub id: the cached snapshot of an uploaded export
    with pytest.raises(PipelineFolderError, match=f"{snapshot}: not an avgen export"):
        avgen.from_pretrained("org/tiny-model")
    with pytest.raises(PipelineFolderError, match="org/none: no such folder, and not in the local Hugging Face cache"):
        avgen.from_pretrained("org/none")


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    from avgen.commands import run_command

    for name, data in (("text.ckpt", b"hello"), ("empty.ckpt", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SystemExit):
            run_command(compose(["command=export", f"ckpt_path={tmp_path / name}"], tmp_path))
        err = capsys.readouterr().err
        assert f"{tmp_path / name} is not an avgen checkpoint: torch.load(weights_only=True) cannot read it" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
