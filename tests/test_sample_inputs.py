"""``sample`` takes every readable input and loses only what fails (``cases/audio_inputs``).

TempoTokens at scale=tiny: inputs of any container, extension case and name are generated; broken,
non-finite and too-short inputs are refused before the model runs, with the file and the reason, in
the output and in ``<run>/samples.json``; a sample whose model output is not finite, or whose files
cannot be written, is the only one lost; a run that writes nothing exits 1 with a one-line reason.
The joint system follows the same writing rules.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.commands import build_model, run_command
from avgen.commands import sample as sample_command
from avgen.errors import NothingProduced
from avgen.media import decode_video, read_audio, write_wav
from avgen.samples import SAMPLE_SUFFIXES
from avgen.systems.tempotokens import TempoTokens
from tests.conftest import CASES_DIR, compose, run_cli
from tests.systems.test_tempotokens import build, tiny_root  # noqa: F401  (tiny_root is a fixture)

CASES = CASES_DIR / "audio_inputs"
# the reasons the media library gives for the two bad files of the case
NAN_REASON = "audio has non-finite values (100 NaN of 16000)"
BROKEN_REASON = "cannot decode audio ([Errno 1094995529] Invalid data found when processing input"


@pytest.fixture(scope="module")
def system(tiny_root):  # noqa: F811
    return build(tiny_root)


@pytest.fixture(scope="module")
def ckpt(tiny_root):  # noqa: F811
    """A TempoTokens checkpoint of the tiny twins, written by the same hook ``fit`` uses (no training)."""
    model = build_model(compose(["experiment=tempotokens_vggsound", "scale=tiny"], tiny_root))
    state: dict = {}
    model.on_save_checkpoint(state)
    path = tiny_root / "tiny_tempotokens.ckpt"
    torch.save(state, path)
    return path


def sample_cfg(ckpt: Path, audio: Path, run_dir: Path):
    return compose(["command=sample", f"ckpt_path={ckpt}", f"sample.audio={audio}", "sample.steps=1"], run_dir,
                   run_dir=run_dir)


def bad_inputs(folder: Path) -> Path:
    """broken.mp3 and nan.wav of the case, and a 0.1 s wav (shorter than BEATs' one row of fbank patches)."""
    folder.mkdir()
    for name in ("broken.mp3", "nan.wav"):
        shutil.copy(CASES / name, folder / name)
    write_wav(folder / "short.wav", np.full(1600, 0.1, np.float32), 16000)
    return folder


SHORT_REASON = ("too short: 0.100 s (1600 samples at 16000 Hz); the BEATs audio encoder needs at least 2800 samples "
                "(0.175 s) for one time step of its features")


def fake_generate(nan_in: int | None = None):
    """A stand-in for ``TempoTokens.generate``: grey videos of the audio's frame count (8 fps); with
    ``nan_in``, frame 2 of that batch row is NaN."""

    def generate(self, audio, captions=None, **kwargs):
        frames = round(audio.shape[1] / 16000 * 8)
        video = torch.zeros(audio.shape[0], frames, 3, 32, 32)
        if nan_in is not None:
            video[nan_in, 2] = float("nan")
        return video

    return generate


def two_inputs(folder: Path) -> Path:
    folder.mkdir()
    t = np.arange(16000) / 16000
    for name, freq in (("a.wav", 440), ("b.wav", 660)):
        write_wav(folder / name, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
    return folder


def test_case_folder_gives_a_video_per_readable_input_and_lists_the_refused(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(TempoTokens, "generate", fake_generate())  # the CLI test below runs the real model
    paths = run_command(sample_cfg(ckpt, CASES, tmp_path / "run"))
    assert [p.name for p in paths] == ["sample_0000.mp4", "sample_0001.mp4", "sample_0002.mp4"]
    sources = [json.loads(p.with_suffix(".json").read_text())["source"] for p in paths]
    assert sources == [str(CASES / name) for name in ("field.opus", "ok.wav", "voice_memo.m4a")]
    for path, source in zip(paths, sources):
        wave, _ = read_audio(path.with_suffix(".wav"))
        assert len(wave) == 16000  # 1 s inputs; the m4a's AAC padding (16384 decoded samples) is cut
        frames, fps = decode_video(str(path))
        assert fps == 8 and frames.shape[0] == 8
    run = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert run["written"] == ["sample_0000", "sample_0001", "sample_0002"] and run["failed"] == []
    assert [e["file"] for e in run["refused"]] == ["broken.mp3", "nan.wav"]
    assert run["refused"][0]["reason"].startswith(BROKEN_REASON) and run["refused"][1]["reason"] == NAN_REASON
    out = capsys.readouterr().out
    assert f"refused input nan.wav: {NAN_REASON}" in out and f"refused input broken.mp3: {BROKEN_REASON}" in out


def test_file_names_with_spaces_non_ascii_letters_and_upper_case_extensions_are_inputs(system, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setattr(TempoTokens, "generate", fake_generate())
    folder = tmp_path / "Entrées audio"
    folder.mkdir()
    shutil.copy(CASES / "ok.wav", folder / "Fête à Noël 01.WAV")
    report = system.sample_to_files(tmp_path / "samples", audio=str(folder))
    assert [p.name for p in report.written] == ["sample_0000.mp4"] and not report.refused
    meta = json.loads((tmp_path / "samples" / "sample_0000.json").read_text())
    assert meta["source"] == str(folder / "Fête à Noël 01.WAV")


def test_non_finite_model_output_loses_only_that_sample(system, tmp_path, monkeypatch):
    monkeypatch.setattr(TempoTokens, "generate", fake_generate(nan_in=1))
    report = system.sample_to_files(tmp_path / "samples", audio=str(two_inputs(tmp_path / "in")))
    # 3 · 32 · 32 NaN values in frame 2 of 8 frames
    assert report.failed == [{"sample": "sample_0001", "reason": "video has non-finite values (3072 NaN of 24576)"}]
    assert [p.name for p in report.written] == ["sample_0000.mp4"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"sample_0000{s}" for s in
                                                                        sorted(SAMPLE_SUFFIXES)]


def test_a_write_failure_loses_only_that_sample_and_leaves_nothing_partial(system, tmp_path, monkeypatch):
    import avgen.media

    real_write_wav = avgen.media.write_wav

    def disk_full_for_a(path, *args, **kwargs):
        if Path(path).name == "sample_0000.wav":  # its mp4 is already written by then
            raise OSError(28, "No space left on device")
        return real_write_wav(path, *args, **kwargs)

    monkeypatch.setattr(TempoTokens, "generate", fake_generate())
    monkeypatch.setattr(avgen.media, "write_wav", disk_full_for_a)
    report = system.sample_to_files(tmp_path / "samples", audio=str(two_inputs(tmp_path / "in")))
    assert report.failed == [{"sample": "sample_0000", "reason": "[Errno 28] No space left on device"}]
    assert [p.name for p in report.written] == ["sample_0001.mp4"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"sample_0001{s}" for s in
                                                                        sorted(SAMPLE_SUFFIXES)]


def test_only_bad_inputs_produce_nothing_and_say_why(ckpt, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model ran although every input was refused")

    monkeypatch.setattr(TempoTokens, "generate", never)
    folder = bad_inputs(tmp_path / "bad")
    with pytest.raises(NothingProduced, match=r"^0 samples written: 3 inputs refused, 0 samples failed \(reasons in "
                                              r".*samples.json\), first: broken.mp3: cannot decode audio"):
        sample_command(sample_cfg(ckpt, folder, tmp_path / "run"))
    run = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert run["written"] == [] and run["failed"] == []
    assert [e["file"] for e in run["refused"]] == ["broken.mp3", "nan.wav", "short.wav"]
    assert [e["reason"] for e in run["refused"][1:]] == [NAN_REASON, SHORT_REASON]
    assert not (tmp_path / "run" / "samples").exists()
    # one bad file given alone is refused the same way
    with pytest.raises(NothingProduced, match=re.escape(f"first: nan.wav: {NAN_REASON}")):
        sample_command(sample_cfg(ckpt, folder / "nan.wav", tmp_path / "single"))


def test_joint_non_finite_output_is_reported_and_the_others_written(tmp_path, monkeypatch):
    from avgen.systems.joint import JointAudioVideo
    from tests.systems.test_joint import build as build_joint

    def generate(self, prompts, **kwargs):
        video, audio = torch.zeros(len(prompts), 8, 3, 32, 32), torch.zeros(len(prompts), 16000)
        audio[0, :10] = float("inf")
        return video, audio

    monkeypatch.setattr(JointAudioVideo, "generate", generate)
    joint, _ = build_joint(tmp_path)
    report = joint.sample_to_files(tmp_path / "samples", n=3, prompt="a ball drops", batch_size=2)
    # batches [0, 1] and [2]: row 0 of each batch is broken
    assert report.failed == [{"sample": name, "reason": "audio has non-finite values (10 infinite of 16000)"}
                             for name in ("sample_0000", "sample_0002")]
    assert [p.name for p in report.written] == ["sample_0001.mp4"]


def not_generated(*args, **kwargs):
    raise AssertionError("sample generated although one of its options was refused")


@pytest.mark.parametrize("override, message", [
    (f"sample.video={CASES / 'ok.wav'}",
     f"sample.video={CASES / 'ok.wav'}: not used by TempoTokens, which generates the video for sample.audio "),
    ("sample.n=0", "sample.n=0: expected an integer >= 1"),
    ("sample.n=-1", "sample.n=-1: expected an integer >= 1"),
    ("sample.prompt=[]", "sample.prompt=[]: an empty list; give at least one prompt or leave sample.prompt unset"),
])
def test_a_refused_sample_option_stops_the_command_with_one_line_before_generating(ckpt, tmp_path, capsys,
                                                                                   monkeypatch, override, message):
    monkeypatch.setattr(TempoTokens, "generate", not_generated)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_command(compose(["command=sample", f"ckpt_path={ckpt}", override], run, run_dir=run))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("avgen sample: error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"avgen sample: error: {message}") and "Traceback" not in err
    assert not (run / "samples").exists()


@pytest.mark.slow
def test_cli_generates_the_readable_inputs_and_prints_the_refused(ckpt, tmp_path):
    folder = bad_inputs(tmp_path / "inputs")
    shutil.copy(CASES / "ok.wav", folder / "ok.wav")  # one good input keeps the real model's run short
    result = run_cli("sample", f"ckpt_path={ckpt}", f"sample.audio={folder}", "sample.steps=1",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"refused input nan.wav: {NAN_REASON}" in result.stdout
    assert f"refused input broken.mp3: {BROKEN_REASON}" in result.stdout
    assert f"refused input short.wav: {SHORT_REASON}" in result.stdout
    assert [p.name for p in (tmp_path / "run" / "samples").glob("*.mp4")] == ["sample_0000.mp4"]


@pytest.mark.slow
def test_cli_with_only_bad_inputs_exits_1_with_one_line(ckpt, tmp_path):
    result = run_cli("sample", f"ckpt_path={ckpt}", f"sample.audio={bad_inputs(tmp_path / 'bad')}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("avgen sample: error:")]
    assert len(errors) == 1 and "0 samples written: 3 inputs refused" in errors[0]
    assert "Traceback" not in result.stderr
