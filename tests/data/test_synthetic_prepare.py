"""``prepare data=synthetic_hits``: reproducible shards whose decoded media keep the ground truth."""

from __future__ import annotations

import json
import tarfile

import numpy as np

from avgen.data.datamodule import AVDataModule
from avgen.data.shards import Manifest
from avgen.data.synthetic_prepare import prepare_synthetic_hits
from tests.avsync import flow_magnitudes, local_maxima, onset_times

CLIP = {"seconds": 2.0, "fps": 8, "height": 64, "width": 64, "sample_rate": 16000}


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_same_dataset_whatever_the_worker_count(tmp_path):
    for workers in (1, 2):
        prepare_synthetic_hits(str(tmp_path / f"w{workers}"), CLIP, clips={"train": 5, "val": 2}, clips_per_shard=2,
                               preview=0, workers=workers)
    for split, sizes in (("train", [2, 2, 1]), ("val", [2])):
        a, b = Manifest.load(tmp_path / "w1" / split), Manifest.load(tmp_path / "w2" / split)
        assert [s.clips for s in a.shards] == sizes == [s.clips for s in b.shards]
        for shard in a.shards:
            ma, mb = _members(tmp_path / "w1" / split / shard.name), _members(tmp_path / "w2" / split / shard.name)
            assert ma.keys() == mb.keys()
            for name in ma:
                if not name.endswith(".mp4"):  # flac and json are bit-identical
                    assert ma[name] == mb[name], name
    assert not (tmp_path / "w1" / "test").exists()


def test_decoded_shards_keep_events_on_motion_peaks_and_onsets(tmp_path):
    root = tmp_path / "synthetic_hits"
    prepare_synthetic_hits(str(root), CLIP, clips={"test": 12}, clips_per_shard=6, preview=0, workers=2)
    dm = AVDataModule("synthetic_hits", str(root), CLIP, batch_size=4, num_workers=0)
    events_total = near_peak = near_onset = 0
    for batch in dm.test_dataloader():
        for frames, audio, events in zip(batch["video"].numpy(), batch["audio"].numpy(), batch["events"]):
            peaks = local_maxima(flow_magnitudes(frames)) / CLIP["fps"]
            onsets = onset_times(audio, CLIP["sample_rate"])
            for t in events.tolist():
                events_total += 1
                near_peak += bool(np.any(np.abs(peaks - t) <= 1 / CLIP["fps"] + 1e-6))
                near_onset += bool(np.any(np.abs(onsets - t) <= 0.035))
    assert events_total >= 12
    assert near_peak == events_total and near_onset == events_total


def test_preview_shows_the_clips(tmp_path):
    import cv2

    from avgen.media import decode_audio, decode_video

    root = tmp_path / "synthetic_hits"
    prepare_synthetic_hits(str(root), CLIP, clips={"train": 3}, preview=2, workers=1)
    sheet = cv2.imread(str(root / "preview" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] >= 16 * 64
    frames, fps = decode_video(root / "preview" / "clip_0.mp4")
    audio = decode_audio(root / "preview" / "clip_0.mp4", 16000)
    assert frames.shape == (16, 64, 64, 3) and fps == 8
    assert abs(len(audio) - 32000) <= 1024  # same duration as the video (AAC pads the last frame)
    meta = json.loads(next(v for k, v in _members(root / "train" / "shard-000000.tar").items() if k.endswith("json")))
    assert meta["caption"] and meta["label"] and meta["events"] == sorted(meta["events"])


def test_contact_sheet_marks_hits_where_the_waveform_rises():
    from avgen.data.geometry import ClipGeometry
    from avgen.data.synthetic import generate_clip
    from avgen.data.synthetic_prepare import contact_sheet

    geo = ClipGeometry(seconds=2.0, fps=8, height=64, width=64)
    item = generate_clip(3, geo)
    sheet = contact_sheet([item], geo, cell=64)
    wave = sheet[18 + 64:18 + 64 + 48]  # below the caption strip and the frame strip
    marked = np.where((wave[:, :, 0] == 255) & (wave[:, :, 1] == 0) & (wave[:, :, 2] == 0))[1]
    loud = (wave[:, :, 0] < 100).sum(axis=0)
    for t in item.meta["events"]:
        x = int(t * geo.sample_rate * sheet.shape[1] / len(item.audio))
        assert x in marked
        assert loud[max(0, x - 12):x - 1].max() < 12 < loud[x + 1:x + 6].max()  # quiet before, loud after
