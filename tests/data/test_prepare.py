"""The prepare engine and its first sources: a folder of the user's own videos, and The Greatest Hits.

Source folders are generated here (tests/sources.py): mixed containers (mp4, mkv, webm, avi, mov),
a 29.97 fps source with 44.1 kHz stereo audio, a variable-rate file, a file without audio, one
shorter than a clip, one silent, one that is not a video, and two files with the same id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from avgen.data.datamodule import AVDataModule
from avgen.data.folder import prepare_folder
from avgen.data.geometry import StoreGeometry
from avgen.data.greatest_hits import prepare_greatest_hits, read_hits
from avgen.data.prepare import KILL_HOOK, REPORT
from avgen.data.shards import MANIFEST, Manifest, clip_key, read_split_samples
from avgen.data.splits import read_split_file, seeded_split
from avgen.errors import ConfigError, GeometryMismatchError
from avgen.media import decode_flac, decode_video
from tests.conftest import CASES_DIR, REPO
from tests.sources import write_video

STORE = {"seconds": 1.0, "fps": 8, "short_side": 32, "sample_rate": 16000}
PLANTED = {  # file -> the reason the report must give for it
    "broken.mp4": "undecodable", "noaud.mp4": "no_audio", "short.mp4": "too_short", "quiet.mp4": "silent",
    "dup.mp4": "duplicate_id",
}


def make_folder(root: Path) -> Path:
    """A user's folder of videos: class sub-folders, a caption file, and the planted bad files."""
    write_video(root / "dogs" / "a.mp4", 3.0, seed=1)
    write_video(root / "dogs" / "b.mkv", 2.5, fps=Fraction(30000, 1001), sr=44100, channels=2, seed=2)
    write_video(root / "rain" / "c.webm", 2.2, seed=3)
    write_video(root / "rain" / "d.avi", 2.0, seed=4)
    write_video(root / "e.mov", 2.0, seed=5)
    (root / "e.txt").write_text("a red square crossing a field\n")
    write_video(root / "vfr.mp4", 2.5, times=[0, 0.05, 0.2, 0.21, 0.5, 0.9, 1.3, 1.7, 2.0, 2.2, 2.4], seed=6)
    write_video(root / "noaud.mp4", 2.0, sr=None, seed=7)
    write_video(root / "short.mp4", 0.5, seed=8)
    write_video(root / "quiet.mp4", 2.0, silent=True, seed=9)
    (root / "broken.mp4").write_bytes(b"this is not a video" * 40)
    write_video(root / "dup.mkv", 2.0, seed=10)
    write_video(root / "dup.mp4", 2.0, seed=11)
    (root / ".hidden").mkdir()
    write_video(root / ".hidden" / "x.mp4", 2.0, seed=12)
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("src") / "my_videos")


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory) -> Path:
    """The folder prepared in this process with one worker, 3 clips per shard."""
    root = tmp_path_factory.mktemp("out") / "w1"
    prepare_folder(str(root), STORE, source=str(videos), workers=1, clips_per_shard=3, progress=False)
    return root


def samples(root: Path) -> dict[str, dict]:
    """key -> decoded frames, audio and json of every clip of every split."""
    out = {}
    for split in ("train", "val", "test"):
        if not (root / split / MANIFEST).exists():
            continue
        for key, s in read_split_samples(root / split):
            frames, _ = decode_video(s["mp4"])
            audio, _ = decode_flac(s["flac"])
            out[key] = {"frames": frames, "audio": audio, "json": json.loads(s["json"])}
    return out


def assert_same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    # every clip whose frames differ: how many of its frames, by how much, from which sources (a rare CI failure:
    # one clip, one shard or the whole run; a level of rounding or another picture?)
    differ = {}
    for key in a:
        fa, fb = a[key]["frames"], b[key]["frames"]
        if fa.shape != fb.shape:
            differ[key] = f"shapes {fa.shape} vs {fb.shape}"
        elif not np.array_equal(fa, fb):
            changed = int(np.any(fa != fb, axis=(1, 2, 3)).sum())
            where = np.argwhere(fa != fb)
            differ[key] = (f"{changed} of {len(fa)} frames, {len(where)} values (first (frame, y, x, channel): "
                           f"{where[:4].tolist()}), max |diff| {np.abs(fa.astype(int) - fb).max()}, "
                           f"{a[key]['json'].get('source_path')} vs {b[key]['json'].get('source_path')}")
    assert not differ, f"{len(differ)} of {len(a)} clips differ: {differ}"
    for key in a:
        assert np.array_equal(a[key]["audio"], b[key]["audio"]), key
        assert {k: v for k, v in a[key]["json"].items()} == b[key]["json"], key


# ------------------------------------------------------------------------------ folder source
def test_folder_report_names_every_planted_file_with_its_reason(prepared, videos):
    report = json.loads((prepared / REPORT).read_text())
    by_file: dict[str, set] = {}
    for item in report["skipped_items"]:
        by_file.setdefault(Path(item["path"]).name, set()).add(item["reason"])
    assert by_file == {name: {reason} for name, reason in PLANTED.items()}
    assert report["skipped_by_reason"] == {"duplicate_id": 1, "no_audio": 1, "silent": 2, "too_short": 1,
                                           "undecodable": 1}  # quiet.mp4: both of its 1-s windows
    # counts add up per split; every good video gave floor(duration) clips
    clips = samples(prepared)
    assert report["clips"] == len(clips) == 3 + 2 + 2 + 2 + 2 + 2 + 2  # a, b, c, d, e, vfr, dup
    for split, counts in report["splits"].items():
        assert counts["clips"] == sum(1 for c in clips.values() if c["json"]["split"] == split)
        assert counts["clips"] == sum(counts["clips_by_label"].values())
    assert sum(s["clips"] for s in report["splits"].values()) == 15
    # the hidden folder is not searched; the dup.mkv (first in name order) is kept
    assert not any(".hidden" in c["json"]["source_path"] for c in clips.values())
    assert any(c["json"]["source_id"] == "dup" and c["json"]["source_path"].endswith("dup.mkv") for c in clips.values())


def test_folder_clips_keep_aspect_labels_captions_and_the_stored_geometry(prepared):
    clips = samples(prepared)
    for key, clip in clips.items():
        assert clip["frames"].shape == (8, 32, 42, 3), key  # 48x64 sources: short side 32, long side 42.67 -> 42
        assert clip["audio"].shape == (16000,) and clip["json"]["fps"] == 8
        assert (clip["json"]["height"], clip["json"]["width"]) == (32, 42)
        assert key == clip_key("my_videos", clip["json"]["source_id"], clip["json"]["start"])
    meta = {c["json"]["source_id"]: c["json"] for c in clips.values()}
    assert meta["dogs/a"]["label"] == "dogs" and meta["dogs/a"]["caption"] == "dogs"
    assert meta["rain/c"]["label"] == "rain"
    assert meta["e"]["caption"] == "a red square crossing a field" and meta["e"]["label"] == ""
    # the 29.97 fps mkv with 44.1 kHz stereo sound: 2 clips at 8 fps, 16 kHz mono
    assert sorted(c["json"]["start"] for c in clips.values() if c["json"]["source_id"] == "dogs/b") == [0.0, 1.0]
    for split in ("train", "val", "test"):
        m = Manifest.load(prepared / split)
        assert m.store == StoreGeometry.from_config(STORE) and m.dataset == "my_videos"


def test_folder_vfr_source_is_resampled_by_timestamp(prepared, videos):
    clips = samples(prepared)
    first = next(c for c in clips.values() if c["json"]["source_id"] == "vfr" and c["json"]["start"] == 0.0)
    direct, _ = decode_video(videos / "vfr.mp4", fps=8, num_frames=8, fit_to=(32, 42))
    # the same timestamp placement as decoding the source at 8 fps (h264 round trip: close, not exact)
    assert np.abs(first["frames"].astype(int) - direct.astype(int)).mean() < 3


def test_two_workers_and_a_killed_then_restarted_prepare_give_the_same_clips(prepared, videos, tmp_path):
    reference = samples(prepared)
    two = tmp_path / "w2"
    prepare_folder(str(two), STORE, source=str(videos), workers=2, clips_per_shard=3, progress=False)
    assert_same(reference, samples(two))
    killed = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from avgen.data.folder import prepare_folder\n"
            "if __name__ == '__main__':\n"
            f"    prepare_folder({str(killed)!r}, {STORE!r}, source={str(videos)!r}, workers=2, clips_per_shard=3,"
            " progress=False)\n")
    for split, after in (("train", 1), ("train", 2), ("val", 0)):  # killed three times while writing a shard
        proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, KILL_HOOK: f"{split}:{after}"},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -9, proc.stderr[-2000:]
        partial = killed / f".{split}.partial"
        assert (partial / f"shard-{after:06d}.tar.tmp").exists() and not (killed / split).exists()
        assert after == 0 or (partial / f"shard-{after - 1:06d}.tar").exists()
    assert (killed / "train" / MANIFEST).exists()  # finished before the kill in val
    prepare_folder(str(killed), STORE, source=str(videos), workers=1, clips_per_shard=3, progress=False)
    assert_same(reference, samples(killed))
    assert not (killed / ".train.partial").exists()
    assert json.loads((killed / REPORT).read_text())["skipped_by_reason"] == \
        json.loads((prepared / REPORT).read_text())["skipped_by_reason"]


def test_prepare_is_idempotent_and_never_replaces_other_shards_unasked(videos, tmp_path):
    src = tmp_path / "src"
    write_video(src / "one.mp4", 2.0, seed=1)
    write_video(src / "two.mp4", 2.0, seed=2)
    root = tmp_path / "out"
    prepare_folder(str(root), STORE, source=str(src), workers=1, split_ratios={"train": 1.0}, progress=False)
    stamp = (root / "train" / MANIFEST).stat().st_mtime_ns
    prepare_folder(str(root), STORE, source=str(src), workers=1, split_ratios={"train": 1.0}, progress=False)
    assert (root / "train" / MANIFEST).stat().st_mtime_ns == stamp  # up to date: nothing rewritten
    write_video(src / "three.mp4", 2.0, seed=3)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        prepare_folder(str(root), STORE, source=str(src), workers=1, split_ratios={"train": 1.0}, progress=False)
    prepare_folder(str(root), STORE, source=str(src), workers=1, split_ratios={"train": 1.0}, overwrite=True,
                   progress=False)
    assert Manifest.load(root / "train").num_clips == 6


def test_reprepare_notices_edited_texts_and_removes_splits_of_another_config_only_when_asked(tmp_path):
    src = tmp_path / "src"
    for name in ("犬", "猫", "my video", "my_video"):  # different names never collapse into one id
        write_video(src / f"{name}.mp4", 1.0, seed=len(name))
    (src / "犬.txt").write_text("a dog")
    root = tmp_path / "out"
    first = prepare_folder(str(root), STORE, source=str(src), workers=1, progress=False)
    assert first["clips"] == 4 and first["skipped"] == 0
    assert {s: c["clips"] for s, c in first["splits"].items()} == {"train": 2, "val": 1, "test": 1}
    (src / "犬.txt").write_text("a big dog")  # an edited caption is a new config
    with pytest.raises(FileExistsError, match="overwrite=true"):
        prepare_folder(str(root), STORE, source=str(src), workers=1, progress=False)
    split_file = tmp_path / "split.txt"
    split_file.write_text("犬.mp4 train\n猫.mp4 train\nmy video.mp4 train\nmy_video test\n")
    with pytest.raises(FileExistsError, match="makes no val split"):  # the old val would leak into training
        prepare_folder(str(root), STORE, source=str(src), split_file=str(split_file), workers=1, progress=False)
    report = prepare_folder(str(root), STORE, source=str(src), split_file=str(split_file), workers=1, overwrite=True,
                            progress=False)
    assert not (root / "val").exists() and sorted(report["splits"]) == ["test", "train"]
    captions = {c["json"]["source_id"]: c["json"]["caption"] for c in samples(root).values()}
    assert captions["犬"] == "a big dog"


def test_split_file_assigns_videos_and_lists_the_unlisted(videos, tmp_path):
    split_file = tmp_path / "split.txt"
    split_file.write_text("# name split\ndogs/a.mp4 train\nrain/c val\ne.mov test\nmissing.mp4 train\n")
    root = tmp_path / "out"
    report = prepare_folder(str(root), STORE, source=str(videos), split_file=str(split_file), workers=1,
                            progress=False)
    assert {s: c["clips"] for s, c in report["splits"].items()} == {"train": 3, "val": 2, "test": 2}
    reasons = {Path(i["path"]).name: i["reason"] for i in report["skipped_items"]}
    assert reasons["missing.mp4"] == "missing" and reasons["b.mkv"] == "not_in_split_file"


# ------------------------------------------------------------------------------ serving
def test_one_stored_geometry_serves_three_clip_geometries(prepared):
    shapes = []
    for clip in ({"seconds": 1.0, "fps": 8, "height": 32, "width": 32},
                 {"seconds": 0.5, "fps": 4, "height": 32, "width": 48},
                 {"seconds": 1.0, "fps": 2, "height": 16, "width": 16}):
        dm = AVDataModule("my_videos", str(prepared), {**clip, "sample_rate": 16000}, batch_size=2, num_workers=0,
                          store=STORE)
        dm.setup("validate")
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(dm.val_dataloader())), 0), 0)
        shapes.append((tuple(batch["video"].shape), tuple(batch["audio"].shape)))
    assert shapes == [((2, 8, 3, 32, 32), (2, 16000)), ((2, 2, 3, 32, 48), (2, 8000)), ((2, 2, 3, 16, 16), (2, 16000))]
    with pytest.raises(ConfigError, match="fps"):
        AVDataModule("my_videos", str(prepared), {"seconds": 1.0, "fps": 16, "height": 32, "width": 32,
                                                  "sample_rate": 16000}, store=STORE)
    dm = AVDataModule("my_videos", str(prepared), {"seconds": 1.0, "fps": 8, "height": 32, "width": 32,
                                                   "sample_rate": 16000}, store={**STORE, "short_side": 64})
    with pytest.raises(GeometryMismatchError, match="short_side=64"):
        dm.setup("validate")


# ------------------------------------------------------------------------------ Greatest Hits
HITS_A = ("0.533 wood hit static\n1.2 None None None\n1.9 metal scratch rattle\n2.25 wood hit static\n"
          "3.999 rock None static\n4.1 dirt hit deform\n")
HITS_B = "0.1 None hit static\n2.5 plastic hit static\n"


@pytest.fixture(scope="module")
def vis_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vis-data")
    write_video(d / "2015-02-16-16-49-06_denoised_thumb.mp4", 5.0, fps=Fraction(30000, 1001), size=(48, 80), seed=1)
    write_video(d / "2015-02-16-16-49-06_denoised.mp4", 5.0, fps=30, size=(96, 160), seed=1)  # the thumb wins
    (d / "2015-02-16-16-49-06_times.txt").write_text(HITS_A)
    write_video(d / "2015-03-01-10-00-00-97_denoised.mp4", 3.0, fps=30, size=(48, 80), sr=44100, seed=2)
    (d / "2015-03-01-10-00-00-97_times.txt").write_text(HITS_B)
    write_video(d / "2015-04-01-10-00-00_denoised_thumb.mp4", 3.0, seed=3)  # no annotation file
    return d


GH_STORE = {"seconds": 2.0, "fps": 8, "short_side": 32, "sample_rate": 16000, "square": True}


def test_hits_file_lines_with_action_none_are_not_hits(vis_data):
    hits = read_hits(vis_data / "2015-02-16-16-49-06_times.txt")
    assert [h["time"] for h in hits] == [0.533, 1.9, 2.25, 4.1]
    assert [h["material"] for h in hits] == ["wood", "metal", "wood", "dirt"]


def test_greatest_hits_events_are_the_annotated_times_in_clip_time(vis_data, tmp_path):
    report = prepare_greatest_hits(str(tmp_path / "gh"), GH_STORE, source=str(vis_data), workers=1,
                                   split_ratios={"train": 1.0, "val": 0.0, "test": 0.0}, progress=False)
    clips = samples(tmp_path / "gh")
    meta = {k: c["json"] for k, c in clips.items()}
    a, b = "greatest_hits/2015-02-16-16-49-06", "greatest_hits/2015-03-01-10-00-00-97"
    assert sorted(meta) == [f"{a}/0", f"{a}/2000", f"{b}/0"]  # 5 s -> two 4-s... here two 2-s windows; 3 s -> one
    hits = read_hits(vis_data / "2015-02-16-16-49-06_times.txt")
    for key, start in ((f"{a}/0", 0.0), (f"{a}/2000", 2.0)):
        inside = [h for h in hits if start <= h["time"] < start + 2.0]
        assert meta[key]["events"] == [h["time"] - start for h in inside]  # exact
        assert [e["material"] for e in meta[key]["event_labels"]] == [h["material"] for h in inside]
    assert meta[f"{a}/0"]["events"] == [0.533, 1.9] and meta[f"{a}/2000"]["events"] == [2.25 - 2.0]
    # label: the window's most frequent material (a tie goes to the recording's: wood)
    assert meta[f"{a}/0"]["label"] == "wood" and meta[f"{a}/0"]["caption"] == "hitting wood with a drumstick"
    assert meta[f"{b}/0"]["events"] == [0.1] and meta[f"{b}/0"]["label"] == "plastic"
    assert all(c["frames"].shape == (16, 32, 32, 3) for c in clips.values())  # centre crop 32 (256 at paper scale)
    skipped = [(i["source_id"], i["reason"]) for i in report["skipped_items"]]
    assert skipped == [("2015-04-01-10-00-00", "no_annotation")]
    # the loader serves them with the events relative to the window
    dm = AVDataModule("greatest_hits", str(tmp_path / "gh"), {"seconds": 2.0, "fps": 8, "height": 32, "width": 32,
                                                              "sample_rate": 16000}, batch_size=3, num_workers=0,
                      store=GH_STORE)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert sorted(len(e) for e in batch["events"]) == [1, 1, 2]


def test_greatest_hits_svg_file_lists_pick_segments_and_captions(vis_data, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    seg = "./src/va_core/dataset/greatesthits/vis-data-256-segment-8fps-crop"
    (lists / "flist_train.txt").write_text(
        f'{seg}/2015-02-16-16-49-06_denoised_thumb-001.mp4,"A person hits wood, twice"\n')
    (lists / "flist_val.txt").write_text(f"{seg}/2015-03-01-10-00-00-97_denoised_thumb-000.mp4,A stick on plastic\n")
    report = prepare_greatest_hits(str(tmp_path / "gh"), GH_STORE, source=str(vis_data), workers=1, progress=False,
                                   split_file={"train": str(lists / "flist_train.txt"),
                                               "test": str(lists / "flist_val.txt")})
    train = {k: c["json"] for k, c in samples(tmp_path / "gh").items() if c["json"]["split"] == "train"}
    assert list(train) == ["greatest_hits/2015-02-16-16-49-06/2000"]
    assert train["greatest_hits/2015-02-16-16-49-06/2000"]["caption"] == "A person hits wood, twice"
    assert report["splits"]["test"]["clips"] == 1
    assert ("2015-04-01-10-00-00", "not_in_split_file") in {(i["source_id"], i["reason"])
                                                            for i in report["skipped_items"]}


# ------------------------------------------------------------------------------ split helpers
def test_split_files_in_every_format_people_have(tmp_path):
    one = tmp_path / "splits.csv"
    one.write_text("file,split,caption\na.mp4,train,first\nb.mp4,validation,\nc.mp4,test,third one\n")
    assert [(e.name, e.split, e.caption) for e in read_split_file(str(one))] == [
        ("a.mp4", "train", "first"), ("b.mp4", "val", None), ("c.mp4", "test", "third one")]
    ids = tmp_path / "train.txt"
    ids.write_text("2015-02-16-16-49-06\nmy clip with spaces.mp4\n")
    js = tmp_path / "test.json"
    js.write_text(json.dumps(["x", "y"]))
    entries = read_split_file({"train": str(ids), "test": str(js)})
    assert [(e.name, e.split) for e in entries] == [("2015-02-16-16-49-06", "train"),
                                                   ("my clip with spaces.mp4", "train"), ("x", "test"), ("y", "test")]
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("my video.mp4 train\nb.mp4 testing\n")
    assert [(e.name, e.split) for e in read_split_file(str(spaced))] == [("my video.mp4", "train"), ("b.mp4", "test")]
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("split,file\nval,a.mp4\n")
    assert [(e.name, e.split) for e in read_split_file(str(swapped))] == [("a.mp4", "val")]
    flist = tmp_path / "flist.txt"
    flist.write_text("seg-001.mp4,hitting wood, gently\n")
    assert read_split_file({"train": str(flist)})[0].caption == "hitting wood, gently"
    with pytest.raises(ValueError, match=r"splits.txt:2: unknown split 'dev'"):
        (tmp_path / "splits.txt").write_text("a train\nb dev\n")
        read_split_file(str(tmp_path / "splits.txt"))
    with pytest.raises(FileNotFoundError, match="data.split_file.val"):
        read_split_file({"val": str(tmp_path / "nope.txt")})


def test_seeded_split_has_exact_counts_and_ignores_order():
    ids = [f"v{i:02d}" for i in range(20)]
    a = seeded_split(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    assert a == seeded_split(list(reversed(ids)), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    assert sorted(a.values()).count("val") == 2 and list(a.values()).count("test") == 2
    assert a != seeded_split(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4)
    small = seeded_split(["a", "b", "c"], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert sorted(small.values()) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="summing to 1"):
        seeded_split(ids, {"train": 0.8, "val": 0.1}, seed=0)


# ------------------------------------------------------------------------------ the README recipe
@pytest.mark.slow
def test_three_command_recipe_on_your_own_videos(tmp_path):
    """prepare → fit → sample on a folder of videos, as the README says (at scale=tiny)."""
    from tests.conftest import run_cli

    for i in range(6):
        write_video(tmp_path / "my_videos" / f"take{i}.mp4", 2.0, seed=i)
    prep = run_cli("prepare", "data=folder", "data.source=my_videos", "scale=tiny", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert "train: 8 clips" in prep.stdout and "report:" in prep.stdout
    root = tmp_path / "data" / "folder_my_videos" / "short32_8fps_1.0s_16000hz"
    assert (root / "train" / MANIFEST).exists() and (root / REPORT).exists()
    fit = run_cli("fit", "experiment=joint_cmcpe", "data=folder", "data.source=my_videos", "scale=tiny",
                  "trainer.max_steps=2", "paths.output_dir=run", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    sample = run_cli("sample", "ckpt_path=run/checkpoints/last.ckpt", "sample.n=1", "paths.output_dir=samples",
                     cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert len(list((tmp_path / "samples" / "samples").glob("*.mp4"))) == 1


def test_an_unprepared_folder_says_how_to_prepare_it(tmp_path):
    from avgen.errors import MissingShardsError

    dm = AVDataModule("elsewhere", str(tmp_path / "data" / "folder_elsewhere" / "short32_8fps_1.0s_16000hz"),
                      {"seconds": 1.0, "fps": 8, "height": 32, "width": 32, "sample_rate": 16000}, store=STORE,
                      group="folder", source="elsewhere", scale="tiny")
    with pytest.raises(MissingShardsError,
                       match=r"prepare data=folder data\.source=elsewhere scale=tiny paths\.data_dir="):
        dm.setup("fit")


def test_a_worker_that_dies_stops_prepare_with_how_to_resume():
    from avgen.data.prepare import _guard
    from avgen.errors import PrepareError
    from avgen.parallel import ordered_map

    with pytest.raises(PrepareError, match="run the same command again to resume"):
        list(_guard(ordered_map(os._exit, [3, 3, 3], 2)))  # the workers die like the out-of-memory killer's victims
    assert list(ordered_map(abs, [-3, 2, -1, 5, -8], 2)) == [3, 2, 1, 5, 8]  # order kept


# ------------------------------------------------------------------------------ listed datasets (VGGSound, ...)
def test_listed_dataset_matches_download_names_and_records_what_is_missing(tmp_path):
    import pickle

    from avgen.data.listed import prepare_listed

    src = tmp_path / "downloads"
    write_video(src / "video" / "AAAAAAAAAAA_000030.mp4", 1.5, sr=None, seed=1)  # TempoTokens layout: the wav
    from avgen.media import write_wav  # in audio/ is the sound
    (src / "audio").mkdir()
    write_wav(src / "audio" / "AAAAAAAAAAA_000030.wav", np.random.default_rng(0).uniform(-.3, .3, 24000), 16000)
    write_video(src / "BBBBBBBBBBB_10.mp4", 1.5, seed=2)
    write_video(src / "clips" / "CCCCCCCCCCC_5_15.mp4", 1.5, seed=3)  # the VGGSound scripts' <id>_<start>_<end>
    write_video(src / "DDDDDDDDDDD.mp4", 1.5, seed=4)                  # the id alone
    write_video(src / "EEEEEEEEEEE_0.mp4", 1.5, seed=5)
    write_video(src / "FFFFFFFFFFF_0.mp4", 1.5, seed=6)
    (src / "vggsound.csv").write_text(
        "AAAAAAAAAAA,30,dog barking,train\nBBBBBBBBBBB,10,dog barking,train\nCCCCCCCCCCC,5,rain,test\n"
        "DDDDDDDDDDD,0,dog barking,test\nEEEEEEEEEEE,0,dog barking,train\nGONEGONEGON,0,dog barking,test\n"
        "FFFFFFFFFFF,0,lonely class,train\n")
    with (tmp_path / "unmatch.pkl").open("wb") as f:
        pickle.dump(["EEEEEEEEEEE"], f)
    report = prepare_listed(str(tmp_path / "out"), STORE, dataset="vggsound", source=str(src),
                            exclude=str(tmp_path / "unmatch.pkl"), min_clips_per_class=2, workers=1, progress=False)
    clips = {c["json"]["source_id"]: c["json"] for c in samples(tmp_path / "out").values()}
    assert {k: v["split"] for k, v in clips.items()} == {"AAAAAAAAAAA_30": "train", "BBBBBBBBBBB_10": "train",
                                                        "CCCCCCCCCCC_5": "test", "DDDDDDDDDDD_0": "test"}
    assert clips["AAAAAAAAAAA_30"]["caption"] == "dog barking" and clips["CCCCCCCCCCC_5"]["label"] == "rain"
    reasons = {i["source_id"]: i["reason"] for i in report["skipped_items"]}
    assert reasons == {"EEEEEEEEEEE_0": "excluded", "GONEGONEGON_0": "missing", "FFFFFFFFFFF_0": "small_class"}
    assert {s: (v["listed"], v["present"]) for s, v in report["lists"].items()} == {"train": (4, 2), "test": (3, 2)}
    from avgen.evaluation import split_list

    recorded = split_list(tmp_path / "out" / "test")  # what metrics.json says about a scored split
    assert recorded["clips"] == 2 and recorded["list"] == report["lists"]["test"]
    # an explicit test list replaces the CSV's test rows
    (tmp_path / "test.txt").write_text("CCCCCCCCCCC_5\n")
    again = prepare_listed(str(tmp_path / "out2"), STORE, dataset="vggsound", source=str(src),
                           test_list=str(tmp_path / "test.txt"), workers=1, progress=False)
    assert again["lists"]["test"]["listed"] == 1 and again["splits"]["test"]["clips"] == 1


def test_landscape_class_folders_are_split_the_svg_codes_way(tmp_path):
    from avgen.data.listed import prepare_listed
    from avgen.data.splits import shuffled_split

    # the SVG code: np.random.seed(803); np.random.shuffle(lines); first int(0.9 n) train
    lines = [f"./clips/{i:03d}.mp4\n" for i in range(50)]
    reference = list(lines)
    state = np.random.get_state()
    np.random.seed(803)
    np.random.shuffle(reference)
    np.random.set_state(state)
    split = shuffled_split(lines)
    assert [line for line in reference[:45]] == [line for line in reference if split[line] == "train"]
    assert sorted(line for line in reference[45:]) == sorted(line for line in lines if split[line] == "test")
    src = tmp_path / "landscape"
    for i, cls in enumerate(["explosion", "raining", "thunder", "wind noise"] * 3):
        write_video(src / cls / f"clip{i:02d}.mp4", 1.0, seed=i)
    report = prepare_listed(str(tmp_path / "out"), STORE, dataset="landscape", source=str(src), workers=1,
                            progress=False)
    assert {s: c["clips"] for s, c in report["splits"].items()} == {"train": 10, "test": 2}
    labels = {c["json"]["label"] for c in samples(tmp_path / "out").values()}
    assert labels == {"explosion", "raining", "thunder", "wind noise"}


def test_a_download_one_frame_short_of_the_window_is_kept(tmp_path):
    from avgen.data.prepare import Skip, SourceVideo, cut_source

    store = StoreGeometry.from_config(STORE)  # 1-s windows at 8 fps: one frame is 0.125 s
    for seconds, expected in ((1.92, 2), (1.8, 1), (0.9, 1), (0.8, 0)):
        path = write_video(tmp_path / f"v{seconds}.mp4", seconds, fps=25, seed=1)
        out = cut_source(SourceVideo("v", str(path), "train"), store)
        clips = [c for c in out if not isinstance(c, Skip)]
        assert len(clips) == expected, (seconds, out)


def test_shared_cases_prepare_upright_with_every_container_and_nan_windows_named(tmp_path):
    """../shared/cases (copied in tests/data/cases): every container, the rotated phone video upright,
    the VFR clip, and the NaN/inf audio windows left out as non_finite."""
    import shutil

    import soundfile as sf

    cases = tmp_path / "cases"
    shutil.copytree(CASES_DIR, cases)
    write_video(cases / "nan_audio" / "nan_block.mp4", 2.0, sr=None, seed=3)  # a silent video + a float wav
    wave = np.random.default_rng(0).uniform(-0.3, 0.3, 32000).astype(np.float32)  # whose 2nd second has NaN
    wave[20000:21000] = np.nan
    sf.write(cases / "nan_audio" / "nan_block.wav", wave, 16000, subtype="FLOAT")
    report = prepare_folder(str(tmp_path / "out"), STORE, source=str(cases), workers=1, progress=False,
                            split_ratios={"train": 1.0})
    clips = {}
    for c in samples(tmp_path / "out").values():
        clips.setdefault(c["json"]["source_id"], []).append(c["frames"].shape)
    assert all(shape == (8, 42, 32, 3) for shape in clips[next(k for k in clips if "portrait" in k)])
    containers = {k for k in clips if k.startswith("containers/")}
    assert len(containers) == len([p for p in (cases / "containers").iterdir() if p.suffix.lower() in
                                   {".mp4", ".mov", ".mkv", ".webm"}])
    nan = [(i["source_id"], i["start"], i["reason"]) for i in report["skipped_items"] if "nan_block" in i["path"]]
    assert nan == [("nan_audio/nan_block", 1.0, "non_finite")] and len(clips["nan_audio/nan_block"]) == 1
