"""Frame rates are exact rationals from config to manifest to decoding: 29.97 fps is 30000/1001 everywhere,
a 1 s clip holds round(1 · 30000/1001) = 30 frames, folder names say ``29.97fps``."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from avgen.data.datamodule import AVDataModule
from avgen.data.decode import SampleError, decode_sample
from avgen.data.geometry import ClipGeometry, StoreGeometry
from avgen.data.shards import MANIFEST, Manifest
from avgen.data.synthetic import generate_clip
from avgen.data.synthetic_prepare import prepare_synthetic_hits
from avgen.errors import ConfigError
from avgen.media import decode_video
from tests.conftest import TINY_CLIP, compose, run_cli

NTSC = Fraction(30000, 1001)
CLIP_2997 = {**TINY_CLIP, "fps": 29.97}


@pytest.fixture(scope="module")
def shards_2997(tmp_path_factory) -> Path:
    """train 2 clips, val 2 clips of 1 s at 29.97 fps, 32×32."""
    root = tmp_path_factory.mktemp("data") / "synthetic_hits"
    prepare_synthetic_hits(str(root), CLIP_2997, clips={"train": 2, "val": 2}, clips_per_shard=2, preview=0,
                           workers=1)
    return root


def first_sample(split_dir: Path) -> dict:
    return next(iter(wds.WebDataset(str(split_dir / "shard-000000.tar"), shardshuffle=False)))


@pytest.mark.parametrize("fps, seconds, rate, frames", [
    (29.97, 1.0, NTSC, 30), (29.97, 4.0, NTSC, 120), ("29.97", 1.0, NTSC, 30), ("30000/1001", 1.0, NTSC, 30),
    (23.976, 1.0, Fraction(24000, 1001), 24), (8, 1.0, Fraction(8), 8), (8, 4.0, Fraction(8), 32),
    (12.5, 1.0, Fraction(25, 2), 13),  # not NTSC: taken as written; 12.5 frames round half up
])
def test_clip_geometry_reads_rates_exactly(fps, seconds, rate, frames):
    geo = ClipGeometry.from_config({**TINY_CLIP, "fps": fps, "seconds": seconds})
    assert geo.fps == rate and isinstance(geo.fps, Fraction)
    assert geo.num_frames == frames
    assert ClipGeometry.from_config(json.loads(json.dumps(geo.to_dict()))) == geo


def test_clip_geometry_json_and_mismatch_messages():
    assert ClipGeometry.from_config(CLIP_2997).to_dict()["fps"] == "30000/1001"
    assert ClipGeometry.from_config(TINY_CLIP).to_dict()["fps"] == 8  # whole rates stay JSON numbers
    assert ClipGeometry.from_config({**TINY_CLIP, "fps": "30000/1001"}) == ClipGeometry.from_config(CLIP_2997)
    problems = ClipGeometry.from_config({**TINY_CLIP, "fps": 30}).incompatibilities(ClipGeometry.from_config(CLIP_2997))
    assert problems == ["fps: shards have 29.97 (30000/1001), config asks for 30 (a rate up to the stored one can "
                        "be served)"]
    fifteen = ClipGeometry.from_config({**TINY_CLIP, "fps": 15})
    assert fifteen.incompatibilities(ClipGeometry.from_config(CLIP_2997)) == []
    for bad in (0, -8, "fast", "1/0"):
        with pytest.raises(ValueError, match=r"data\.clip\.fps"):
            ClipGeometry.from_config({**TINY_CLIP, "fps": bad})


def test_generator_at_2997_has_30_frames_and_lands_objects_on_the_exact_frame():
    geo = ClipGeometry.from_config(CLIP_2997)
    for seed in range(5):
        clip = generate_clip(seed, geo)
        assert clip.frames.shape == (30, 32, 32, 3) and clip.audio.shape == (16000,)
        assert clip.meta["geometry"]["fps"] == "30000/1001"
        # each fall is a run of frames that differ from their predecessor; it ends on the frame
        # that first shows the object landed, ceil(event · 30000/1001) (at a truncated 29 fps: a frame early)
        moved = [f for f in range(1, 30) if not np.array_equal(clip.frames[f], clip.frames[f - 1])]
        run_ends = [f for f in moved if f + 1 not in moved]
        landed = [math.ceil(Fraction(str(e)) * NTSC) for e in clip.meta["events"]]
        assert run_ends == landed, (seed, moved, clip.meta["events"])


def test_manifest_and_clip_records_store_the_exact_rate(shards_2997):
    text = (shards_2997 / "train" / MANIFEST).read_text()
    assert json.loads(text)["store"]["fps"] == "30000/1001"
    manifest = Manifest.load(shards_2997 / "train")
    assert manifest.clip.fps == NTSC and manifest.clip == ClipGeometry.from_config(CLIP_2997)
    sample = first_sample(shards_2997 / "train")
    record = json.loads(sample["json"])
    assert record["fps"] == "30000/1001" and record["end"] - record["start"] == 1.0
    frames, rate = decode_video(sample["mp4"])
    assert rate == NTSC and frames.shape == (30, 32, 32, 3)


def test_decoded_clip_has_30_frames_and_one_second_of_audio(shards_2997):
    dm = AVDataModule(name="synthetic_hits", root=str(shards_2997), clip={**TINY_CLIP, "fps": "30000/1001"},
                      batch_size=2, num_workers=0, shuffle_buffer=2)
    dm.setup("validate")
    batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(dm.val_dataloader())), 0), 0)
    assert batch["video"].shape == (2, 30, 3, 32, 32) and batch["audio"].shape == (2, 16000)


def test_random_window_starts_an_exact_number_of_ntsc_frames_in(shards_2997):
    sample = first_sample(shards_2997 / "train")
    meta = json.loads(sample["json"])
    full = decode_sample(sample, ClipGeometry.from_config(CLIP_2997), None)
    short = ClipGeometry.from_config({**CLIP_2997, "seconds": 0.5})  # round(0.5 · 30000/1001) = 15 frames
    starts = set()
    for seed in range(4):
        clip = decode_sample(sample, short, np.random.default_rng(seed))
        assert clip["video"].shape == (15, 32, 32, 3) and clip["audio"].shape == (8000,)
        k = next(k for k in range(16) if np.array_equal(full["video"][k:k + 15], clip["video"]))
        starts.add(k)
        offset = Fraction(k) / NTSC  # seconds, exact
        a0 = round(offset * 16000)
        assert np.array_equal(clip["audio"], full["audio"][a0:a0 + 8000])
        expected = [t - float(offset) for t in meta["events"] if 0 <= t - float(offset) < 0.5]
        np.testing.assert_allclose(clip["events"], expected, atol=1e-6)
    assert len(starts) > 1


def test_decode_refuses_a_clip_stored_at_another_rate(shards_2997):
    sample = first_sample(shards_2997 / "train")
    with pytest.raises(SampleError, match=r"stored at 30000/1001 fps, data\.clip\.fps asks for 30;"):
        decode_sample(sample, ClipGeometry.from_config({**TINY_CLIP, "fps": 30}), None)


def test_a_lower_rate_is_served_from_the_stored_frames_by_timestamp(tiny_shards):
    """8 fps shards served at 4 fps: slot j (t = j/4 s) shows stored frame 2j (frames 2j-1 and 2j round to
    slot j; the later wins), the same audio; 16 fps cannot be served."""
    sample = first_sample(tiny_shards / "val")
    full = decode_sample(sample, ClipGeometry.from_config(TINY_CLIP), None)
    half = decode_sample(sample, ClipGeometry.from_config({**TINY_CLIP, "fps": 4}), None)
    assert half["video"].shape == (4, 32, 32, 3) and np.array_equal(half["video"], full["video"][::2])
    assert np.array_equal(half["audio"], full["audio"]) and np.array_equal(half["events"], full["events"])
    dm = AVDataModule(name="synthetic_hits", root=str(tiny_shards), clip={**TINY_CLIP, "fps": 4}, batch_size=2,
                      num_workers=0)
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["video"].shape[:2] == (2, 4)
    with pytest.raises(SampleError, match=r"data\.clip\.fps <= 8"):
        decode_sample(sample, ClipGeometry.from_config({**TINY_CLIP, "fps": 16}), None)


def test_old_manifests_with_integer_fps_still_load(tiny_shards, tmp_path):
    assert json.loads((tiny_shards / "train" / MANIFEST).read_text())["store"]["fps"] == 8
    assert Manifest.load(tiny_shards / "train").clip.fps == 8
    # an avgen-shards/1 manifest (a fixed clip geometry, before data.store) still loads
    old = json.loads((tiny_shards / "train" / MANIFEST).read_text())
    old["format"] = "avgen-shards/1"
    old["clip"] = {"seconds": 1.0, "fps": 8, "height": 32, "width": 48, "sample_rate": 16000}
    del old["store"]
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    loaded = Manifest.load(tmp_path)
    assert loaded.clip == ClipGeometry(1.0, 8, 32, 48, 16000)
    assert loaded.store.short_side == 32 and not loaded.store.square


@pytest.mark.parametrize("fps", ["29.97", "30000/1001"])
def test_dataset_folder_names_show_the_rate_as_a_decimal(fps, tmp_path):
    cfg = compose(["command=prepare", "scale=tiny", f"data.store.fps={fps}", f"data.clip.fps={fps}"], tmp_path)
    folder = Path(cfg.data.root).relative_to(tmp_path / "data" / "synthetic_hits")
    assert folder == Path("32x32_29.97fps_1.0s_16000hz")
    assert ClipGeometry.from_config(cfg.data.clip).fps == NTSC


TINY_STORE = {"seconds": 1.0, "fps": 8, "short_side": 32, "sample_rate": 16000, "square": True}


@pytest.mark.parametrize("clip, problems", [
    # 30 frames at 30000/1001 last 1.001 s > 1.0 s: the higher rate's doing, not a different duration
    ({"fps": 29.97}, ["fps: shards have 8, config asks for 29.97 (30000/1001) (a rate up to the stored one can be "
                      "served)"]),
    ({"fps": 29.97, "seconds": 2.0}, ["fps: shards have 8, config asks for 29.97 (30000/1001) (a rate up to the "
                                      "stored one can be served)",
                                      "seconds: shards hold 1.0 s clips, config asks for 2.0 s"]),
    ({"seconds": 2.0}, ["seconds: shards hold 1.0 s clips, config asks for 2.0 s"]),
    # a lower rate whose 8 whole frames (round(7.5), halves up) last 1.067 s: the frame spans differ
    ({"fps": 7.5}, ["seconds: 1.0 s at 7.5 (15/2) fps is 8 whole frames lasting 1.067 s, longer than the shards' "
                    "8 frames (1.000 s)"]),
    ({"fps": 4, "seconds": 0.5}, []),
])
def test_store_problems_list_only_the_fields_that_differ(clip, problems):
    assert ClipGeometry.from_config({**TINY_CLIP, **clip}).incompatibilities(StoreGeometry(**TINY_STORE)) == problems


def test_fit_refuses_a_clip_rate_above_the_store_and_says_to_set_the_store_rate_too(tmp_path):
    with pytest.raises(ConfigError) as err:
        AVDataModule(name="synthetic_hits", root=str(tmp_path), clip=CLIP_2997, store=TINY_STORE)
    assert str(err.value) == (
        "data.clip cannot be served from data.store (synthetic_hits): fps: shards have 8, config asks for 29.97 "
        "(30000/1001) (a rate up to the stored one can be served). data.store = {'seconds': 1.0, 'fps': 8, "
        "'short_side': 32, 'sample_rate': 16000, 'square': True}; set data.store too: data.store.fps=29.97 "
        "data.clip.fps=29.97, or lower data.clip (and prepare the dataset at that stored geometry)")


def test_prepare_refuses_a_clip_rate_its_store_cannot_serve_before_writing(tmp_path):
    """``data.clip.fps=29.97`` alone leaves ``data.store`` at 8 fps: prepare refuses it (the check fit makes) and
    writes no shards, instead of preparing (or calling up to date) a store fit would refuse."""
    out = run_cli("prepare", "data=synthetic_hits", "scale=tiny", "data.clip.fps=29.97",
                  f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.splitlines() == [
        "avgen prepare: error: data.clip cannot be served from data.store (synthetic_hits): fps: shards have 8, "
        "config asks for 29.97 (30000/1001) (a rate up to the stored one can be served). data.store = "
        "{'seconds': 1.0, 'fps': 8, 'short_side': 32, 'sample_rate': 16000, 'square': True}; set data.store too: "
        "data.store.fps=29.97 data.clip.fps=29.97, or lower data.clip (and prepare the dataset at that stored "
        "geometry)"]
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_prepare_command_at_2997_writes_an_exact_manifest(tmp_path):
    out = run_cli("prepare", "data=synthetic_hits", "scale=tiny", "data.store.fps=29.97", "data.clip.fps=29.97",
                  f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "data" / "synthetic_hits" / "32x32_29.97fps_1.0s_16000hz"
    manifest = json.loads((root / "train" / MANIFEST).read_text())
    assert manifest["store"]["fps"] == "30000/1001" and manifest["clips"] == 16
    frames, rate = decode_video(root / "preview" / "clip_0.mp4")
    assert rate == NTSC and frames.shape[0] == 30


@pytest.mark.parametrize("fps", [29.97, "30000/1001"])
def test_sampling_writes_and_scores_at_the_exact_rate(fps, tmp_path):
    """What a system samples at data.clip.fps=29.97 is written at 30000/1001 (not 29) and scored at it."""
    import torch

    from avgen.data.geometry import ClipGeometry
    from avgen.samples import write_sounding_videos
    from avgen.systems.common import av_align_scores
    from avgen.systems.joint import JointAudioVideo
    from avgen.systems.tempotokens import TempoTokens

    clip = ClipGeometry(seconds=1.0, fps=fps, height=16, width=16, sample_rate=16000)
    for system in (JointAudioVideo, TempoTokens):  # the frame count every system samples
        assert system.num_frames.fget(type("S", (), {"clip": clip})()) == 30
    video = torch.linspace(-1, 1, 30).view(1, 30, 1, 1, 1).expand(1, 30, 3, 16, 16)
    audio = torch.zeros(1, 16000)
    report = write_sounding_videos(tmp_path, ["a prompt"], video, audio, clip, overwrite=False)
    frames, rate = decode_video(report.written[0])
    assert rate == NTSC and frames.shape[0] == 30
    assert set(av_align_scores(video, audio, clip)) == {"official", "paper", "pr"}
