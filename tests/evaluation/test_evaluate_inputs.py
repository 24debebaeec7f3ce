"""``evaluate`` on the inputs users have: every container and file name, skipped files named with their
reason, NaN audio, variable frame rates, rotated phone videos, audio longer than the video.

The media are the cases of ``tests/data/cases/`` (each 3 s: a square that jumps at 0.5, 1.25 and 2.0 s
with a noise burst at the same instants, 64 wide x 48 high, 12 fps; AV-Align 1.0 on every variant)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.evaluation.references import reference_set
from avgen.samples import find_clips, load_clips
from tests.conftest import CASES_DIR, run_cli

CASES = CASES_DIR
VARIANTS = ("official", "paper", "pr")


@pytest.fixture(scope="module")
def containers(tmp_path_factory) -> Path:
    """The same clip as .mp4, .MP4, .mov, .mkv and .webm, with spaces and non-ASCII letters in names."""
    folder = tmp_path_factory.mktemp("containers")
    for name in ("plain.mp4", "gen.mkv", "phone.mov", "web.webm"):
        shutil.copy(CASES / "containers" / name, folder / name)
    for name in ("GOPR0001.MP4", "clip one.mp4", "clíp_音.mp4"):
        shutil.copy(CASES / "containers" / "plain.mp4", folder / name)
    return folder


def _rows(run: Path) -> dict[str, dict[str, str]]:
    with open(run / "per_clip.csv", newline="") as f:
        return {r["clip"]: r for r in csv.DictReader(f)}


def test_every_container_extension_case_and_name_is_scored(tmp_path, containers):
    result = evaluate_folder(containers, tmp_path / "run", metrics=["av_align"], workers=1)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["clips"] == 7 and saved["failures"] == [] and saved["skipped"] == []
    rows = _rows(tmp_path / "run")
    assert set(rows) == {"plain.mp4", "GOPR0001.MP4", "clip one.mp4", "clíp_音.mp4", "gen.mkv", "phone.mov",
                         "web.webm"}
    for name, row in rows.items():
        if name != "web.webm":
            assert {v: float(row[f"av_align_{v}"]) for v in VARIANTS} == dict.fromkeys(VARIANTS, 1.0), name
    # web.webm (VP9 + Opus at 48 kHz) is decoded as well, but Opus smears the burst at 1.25 s: librosa finds a
    # fourth onset at 1.21 s, 0.05 s before the hit (3 matches of 4 onsets and 3 peaks: 3 / 4), and VP9 flicker
    # gives two more flow peaks (1.67 s, 2.5 s) above the paper/pr thresholds (below the official 0.1)
    assert {v: float(rows["web.webm"][f"av_align_{v}"]) for v in VARIANTS} == pytest.approx(
        {"official": 0.75, "paper": 7 / 12, "pr": 0.6})
    assert result["metrics"]["av_align"]["official"] == pytest.approx((6 + 0.75) / 7)


def test_kl_finds_the_reference_of_the_same_stem_with_any_extension(tmp_path, containers):
    """Every clip is its own reference: the folder's files under any extension case, and one given as
    an audio file only (``web.WAV``); each pair's KL is ~0."""
    import torch

    from avgen.encoders.panns import TINY_CNN14, Cnn14
    from avgen.media import read_clip, write_wav

    ref = tmp_path / "ref"
    shutil.copytree(containers, ref)
    web = read_clip(ref / "web.webm")
    (ref / "web.webm").unlink()
    write_wav(ref / "web.WAV", web.audio, web.sample_rate)
    weights = tmp_path / "cnn14.pth"
    torch.manual_seed(0)
    torch.save({"model": Cnn14.tiny().state_dict()}, weights)
    result = evaluate_folder(containers, tmp_path / "run", metrics=["kl"], ref_dir=ref,
                             panns={"path": str(weights), **TINY_CNN14})
    assert result["failures"] == [] and result["extractors"]["kl"]["pairs"] == 7
    assert all(abs(v) < 1e-3 for v in result["metrics"]["kl"].values())


def test_vfr_and_rotated_clips_and_audio_longer_than_the_video(tmp_path, monkeypatch):
    """A variable-frame-rate clip scores 1.0; a phone video with a 90-degree rotation flag comes out upright
    (48 wide x 64 high) in the AV-Align pass, its plot, the feature pass and as a reference clip; a clip
    whose audio runs 0.5 s past its video is scored and its per_clip.csv row says so."""
    import avgen.metrics.av_align as av_align

    folder = tmp_path / "pred"
    folder.mkdir()
    shutil.copy(CASES / "vfr" / "vfr.mp4", folder)
    shutil.copy(CASES / "rotated" / "portrait.mp4", folder)
    shutil.copy(CASES / "nan_audio" / "silent.mp4", folder / "long.mp4")  # 36 frames at 12 fps: 3.0 s
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, 56000).astype(np.float32)  # 3.5 s at 16 kHz
    sf.write(folder / "long.wav", noise, 16000, subtype="FLOAT")
    plotted: dict[str, tuple] = {}

    def plot(path, frames, *args, **kwargs):  # plots are drawn in this process with workers=1
        plotted[Path(path).stem] = frames.shape

    monkeypatch.setattr(av_align, "plot_alignment", plot)
    evaluate_folder(folder, tmp_path / "run", metrics=["av_align"], workers=1, plots=3)
    rows = _rows(tmp_path / "run")
    assert {v: float(rows["vfr.mp4"][f"av_align_{v}"]) for v in VARIANTS} == dict.fromkeys(VARIANTS, 1.0)
    assert rows["vfr.mp4"]["fps"] == "24.0" and rows["vfr.mp4"]["frames"] == "72"  # 3 s at the nominal rate
    assert {v: float(rows["portrait.mp4"][f"av_align_{v}"]) for v in VARIANTS} == dict.fromkeys(VARIANTS, 1.0)
    assert plotted["portrait"] == (36, 64, 48, 3) and plotted["vfr"] == (72, 48, 64, 3)
    [(_, clip)] = load_clips([folder / "portrait.mp4"], [])
    assert clip.frames.shape == (36, 64, 48, 3)
    refs = {clip.name: clip.load()[0].shape for clip in reference_set(folder)}
    assert refs["portrait.mp4"] == (36, 64, 48, 3)
    long = rows["long.mp4"]
    assert (float(long["video_seconds"]), float(long["audio_seconds"])) == (3.0, 3.5)
    assert "video 3.000 s and audio 3.500 s differ" in long["duration_note"]
    assert float(rows["vfr.mp4"]["video_seconds"]) == 3.0 and rows["vfr.mp4"]["duration_note"] == ""


def _nan_audio(folder: Path) -> Path:
    """The ``nan_audio`` case: silent mp4s with a float wav beside each holding NaN or inf, as a diverged
    model writes them (all NaN; a 20 ms NaN block at 1 s; one inf sample at 1.6 s)."""
    folder.mkdir()
    clean = np.random.default_rng(1).uniform(-0.1, 0.1, 48000).astype(np.float32)  # 3 s at 16 kHz
    block, peak = clean.copy(), clean.copy()
    block[16000:16320] = np.nan
    peak[25600] = np.inf
    for stem, audio in (("all_nan", np.full_like(clean, np.nan)), ("nan_block", block), ("inf_peak", peak)):
        shutil.copy(CASES / "nan_audio" / "silent.mp4", folder / f"{stem}.mp4")
        sf.write(folder / f"{stem}.wav", audio, 16000, subtype="FLOAT")
    return folder


def test_nan_audio_clips_fail_with_their_counts(tmp_path):
    folder = _nan_audio(tmp_path / "nan")
    result = evaluate_folder(folder, tmp_path / "run", metrics=["av_align"], workers=1)
    assert result["clips"] == 0 and result["skipped"] == []
    reasons = {f["clip"]: f["reason"] for f in json.loads((tmp_path / "run" / "metrics.json").read_text())["failures"]}
    assert set(reasons) == {"all_nan.mp4", "nan_block.mp4", "inf_peak.mp4"}
    assert "all_nan.wav: audio has non-finite values (48000 NaN of 48000)" in reasons["all_nan.mp4"]
    assert "nan_block.wav: audio has non-finite values (320 NaN of 48000)" in reasons["nan_block.mp4"]
    assert "inf_peak.wav: audio has non-finite values (1 infinite of 48000)" in reasons["inf_peak.mp4"]


def test_a_folder_without_clips_names_what_it_skipped(tmp_path):
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "take.wav").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"evaluate.pred_dir=.* holds no clip .*notes.pdf: an image or document.*"
                                          r"take.wav: audio only"):
        find_clips(tmp_path)
    with pytest.raises(ConfigError, match=r"evaluate.ref_dir=.* is not a folder"):
        find_clips(tmp_path / "missing", "evaluate.ref_dir")


@pytest.mark.slow
def test_evaluate_command_lists_skipped_files_and_exits_1_when_nothing_scored(tmp_path):
    """One CLI run: the nan_audio clips beside files that are not clips. The skipped files are printed and
    in metrics.json; with 0 clips scored the command exits 1 with one line, after writing its files."""
    folder = _nan_audio(tmp_path / "nan")
    (folder / "all_nan.txt").write_text("a square that jumps")  # a prompt sidecar: neither a clip nor skipped
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    sf.write(folder / "orphan.wav", np.zeros(1600, np.float32), 16000)
    proc = run_cli("evaluate", f"evaluate.pred_dir={folder}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["skipped"] == [{"file": ".DS_Store", "reason": "hidden file"},
                                {"file": "notes.pdf", "reason": "an image or document, not a clip"},
                                {"file": "orphan.wav",
                                 "reason": "audio only: no video of the same stem to pair it with"}]
    for entry in saved["skipped"]:
        assert f"skipped in evaluate.pred_dir: {entry['file']}: {entry['reason']}\n" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"avgen evaluate: error: 0 of 3 clips scored; every clip failed (reasons in "
                      f"{tmp_path}/run/metrics.json), first: all_nan.mp4: MediaError: {folder}/all_nan.wav: audio has "
                      f"non-finite values (48000 NaN of 48000)"]
    assert "Traceback" not in proc.stderr
    assert len(saved["failures"]) == 3
    assert (tmp_path / "run" / "per_clip.csv").is_file()


def test_a_preset_reports_every_metric_that_cannot_run_at_once(tmp_path):
    """Missing weights of several metrics: one error that names each metric and its config key (not one per run);
    a single failing metric keeps its own one-line error."""
    from avgen.errors import ConfigError
    from avgen.evaluation.scorers import BuildContext, build_scorers

    ctx = BuildContext({"fad": {"vggish_path": None}, "panns": {"path": None}, "cavp": {"path": None}}, None, "cpu",
                       None, [], [])
    with pytest.raises(ConfigError) as caught:
        build_scorers(ctx, ["fad", "is", "cavp"])
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("3 metrics cannot run")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["fad", "is", "cavp"]
    for line, key in zip(lines[1:], ("evaluate.fad.vggish_path", "evaluate.panns.path", "evaluate.cavp.path")):
        assert key in line
    with pytest.raises(FileNotFoundError, match="evaluate.cavp.path"):
        build_scorers(ctx, ["cavp"])


def test_every_metric_that_reads_the_whole_reference_set_lists_its_skipped_files():
    """``ref_skipped`` in metrics.json comes from the scorers' own ``reference_set`` flag, not a hand-kept list:
    the unpaired distribution metrics, and no paired one (kl, the PaSST pair metrics read one clip per stem)."""
    from avgen.evaluation.scorers import NEEDS_REFERENCE, REFERENCE_SET

    assert set(REFERENCE_SET) == {"fvd", "fad", "fd_panns", "fd_vggish_frames", "kvd"}
    assert set(REFERENCE_SET) < set(NEEDS_REFERENCE) and {"kl", "kl_passt", "fd_passt"} <= set(NEEDS_REFERENCE)
