"""``python -m avgen prepare data=synthetic_hits``: shards of synthetic sounding videos, and a preview.

Clip ``i`` of split ``s`` is ``generate_clip(seed_of(seed, s, i), geometry)``, so a dataset is
reproducible whatever the number of worker processes. The preview folder holds a PNG contact
sheet (frames with the hit frames outlined, and the waveform with the hit times marked) and a few
mp4s with their audio, so a person can see and hear that the events line up.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from avgen.data.geometry import ClipGeometry, StoreGeometry
from avgen.data.shards import MANIFEST, SPLITS, Manifest, ShardWriter, encode_clip
from avgen.data.synthetic import SyntheticClip, generate_clip
from avgen.errors import ConfigError
from avgen.media import write_bytes_atomic, write_mp4
from avgen.parallel import worker_pool

log = logging.getLogger(__name__)
DATASET = "synthetic_hits"


def seed_of(seed: int, split: str, index: int) -> int:
    digest = hashlib.blake2b(f"{DATASET}/{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _make(args: tuple[int, ClipGeometry, str]) -> tuple[str, bytes, bytes, dict]:
    clip_seed, geo, name = args
    clip = generate_clip(clip_seed, geo)
    mp4, flac = encode_clip(geo, clip.frames, clip.audio, name=name)
    return name, mp4, flac, {**clip.meta, "seed": clip_seed}


def prepare_synthetic_hits(root: str, store: Mapping[str, Any] | None = None, *,
                           clips: Mapping[str, int] | None = None, clips_per_shard: int = 16, seed: int = 0,
                           preview: int = 4, workers: int = 2, splits: Sequence[str] | None = None,
                           overwrite: bool = False, clip: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Write ``<root>/{train,val,test}/`` shards of synthetic clips (and ``<root>/preview/``).

    Args:
        root: dataset folder.
        store: the stored geometry (``data.store``: seconds, fps, short_side, sample_rate): clips are
            generated with ``short_side × short_side`` frames. A clip geometry mapping (seconds, fps,
            height, width, sample_rate) is also taken: clips are then generated at exactly that size.
        clip: the same as ``store`` given as a clip geometry (the keyword of earlier versions).
        clips: clips per split, e.g. ``{"train": 96, "val": 16, "test": 16}``.
        clips_per_shard: target clip count per shard.
        seed: dataset seed.
        preview: number of clips in the preview (0 = none).
        workers: processes that render and encode clips.
        splits: only these splits (default: all in ``clips``).
        overwrite: replace existing split folders (otherwise an existing split is an error).
    Returns:
        clips written per split.
    """
    geo = generator_geometry(store if store is not None else clip)
    stored = StoreGeometry.from_config(geo)
    clips = dict(clips or {"train": 96, "val": 16, "test": 16})
    unknown = set(clips) - set(SPLITS)
    if unknown:
        raise ConfigError(f"data.prepare.clips has unknown splits {sorted(unknown)}; use {SPLITS}")
    todo = [s for s in (splits or clips) if clips.get(s)]
    root_path = Path(root)
    info = {
        "command": " ".join(["python -m avgen prepare"] + [shlex.quote(a) for a in sys.argv[1:]
                                                            if "=" in a and not a.startswith("command=")]),
        "config": {"generator": "avgen.data.synthetic.generate_clip", "clips": clips, "seed": seed,
                   "clips_per_shard": clips_per_shard, "clip": geo.to_dict()},
    }
    written: dict[str, int] = {}
    todo = [s for s in todo if not _up_to_date(root_path / s, info["config"], overwrite)]
    pool = worker_pool(workers, initializer=None) if workers > 1 else None
    try:
        for split in todo:
            jobs = [(seed_of(seed, split, i), geo, f"{split}{i:06d}") for i in range(clips[split])]
            results = pool.imap(_make, jobs, chunksize=4) if pool else map(_make, jobs)
            with ShardWriter(root_path, DATASET, split, stored, clips_per_shard=clips_per_shard, prepare=info,
                             overwrite=overwrite) as writer:
                for name, mp4, flac, meta in results:
                    writer.write_encoded(name, 0.0, mp4, flac, meta)
            written[split] = clips[split]
            log.info("%s/%s: %d clips in %d shards", root, split, clips[split], len(writer.shards))
    finally:
        if pool:
            pool.close()
            pool.join()
    if preview and todo:
        split = "train" if "train" in todo else todo[0]
        write_preview(root_path / "preview", [generate_clip(seed_of(seed, split, i), geo)
                                              for i in range(min(preview, clips[split]))], geo, overwrite=overwrite)
    return written


def rendered_clip_bank(split: str, clips: int, store: Mapping[str, Any] | StoreGeometry | ClipGeometry, *,
                       seed: int = 0, clip: Mapping[str, Any] | ClipGeometry | None = None):
    """The first ``clips`` clips that :func:`prepare_synthetic_hits` writes to ``split`` (same ``seed``, ``store``),
    rendered in memory and never encoded: a :class:`~avgen.data.clip_bank.ClipBank` with ``source="rendered"``.

    Keys, labels and captions equal those :meth:`ClipBank.read` gives for the prepared split, event times to its
    float32 precision, and audio the decoded 16-bit FLAC exactly (the same rounding is applied); frames are the
    generator's, without the h264 error of the stored ones (measured at the mini store, 32×32 at 8 fps: a mean
    absolute difference of 2–4 levels of 255, up to ~145 at object edges). Needs no media library, so a machine
    without PyAV can train the mini twins (``pretrain_twins.clip_source=rendered``). 2-s clips at 32×32 render at
    about 5 ms each.

    Args:
        split: ``train``, ``val`` or ``test`` (each split has its own clip seeds, :func:`seed_of`).
        clips: how many clips, from index 0.
        store: the stored geometry (``data.store``) the generator renders at (``short_side`` square frames).
        seed: the dataset seed (``data.prepare.seed``).
        clip: the frame size the bank is served at (``data.clip``; only its height and width are read); None: the
            store's. Rendered clips are not resized, so it must match the store's frames.
    Returns:
        a ClipBank: frames uint8 ``(clips, F, 3, H, W)``, audio float32 ``(clips, S)``, events in seconds.
    Raises:
        ConfigError: an unknown split, ``clips`` < 1, or a ``clip`` frame size other than the store's (naming
            ``data.clip``).
        ValueError: ``store`` is neither a store nor a clip geometry (:func:`generator_geometry`).
    """
    import torch

    from avgen.data.clip_bank import ClipBank
    from avgen.data.shards import clip_key

    geo = generator_geometry(store)
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if int(clips) < 1:
        raise ConfigError(f"data.prepare.clips.{split}={clips}: render at least one clip")
    if clip is not None:
        size = (int(clip.height), int(clip.width)) if isinstance(clip, ClipGeometry) \
            else (int(clip["height"]), int(clip["width"]))
        if size != (geo.height, geo.width):
            raise ConfigError(f"data.clip is {size[0]}x{size[1]} but synthetic_hits renders {geo.height}x{geo.width} "
                              f"frames at this data.store; rendered clips are not resized: set data.clip.height and "
                              f"width to {geo.height}, or read the prepared store (pretrain_twins.clip_source=store)")
    rendered = [generate_clip(seed_of(seed, split, i), geo) for i in range(int(clips))]
    # the store keeps audio as 16-bit FLAC: the same quantisation, so the rendered bank's audio is the decoded one's
    audio = np.stack([np.round(c.audio.astype(np.float64) * 32768.0).clip(-32768, 32767) / 32768.0
                      for c in rendered]).astype(np.float32)
    return ClipBank(frames=torch.from_numpy(np.stack([c.frames for c in rendered])).permute(0, 1, 4, 2, 3).contiguous(),
                    audio=torch.from_numpy(audio),
                    events=[np.asarray(c.meta["events"], dtype=np.float64).reshape(-1) for c in rendered],
                    keys=[clip_key(DATASET, f"{split}{i:06d}", 0.0) for i in range(int(clips))],
                    labels=[str(c.meta["label"]) for c in rendered],
                    captions=[str(c.meta["caption"]) for c in rendered],
                    geometry=geo, source="rendered")


def generator_geometry(geometry: Mapping[str, Any] | ClipGeometry | StoreGeometry | None) -> ClipGeometry:
    """The clip geometry the generator renders: a store's ``short_side`` gives square frames; a clip
    geometry is taken as it is.

    Raises:
        ValueError: no geometry, or a mapping that is neither a store nor a clip geometry.
    """
    if geometry is None:
        raise ValueError("prepare_synthetic_hits needs store= (data.store)")
    if isinstance(geometry, ClipGeometry):
        return geometry
    if isinstance(geometry, StoreGeometry) or "short_side" in geometry:
        st = StoreGeometry.from_config(geometry)
        return ClipGeometry(seconds=st.seconds, fps=st.fps, height=st.short_side, width=st.short_side,
                            sample_rate=st.sample_rate)
    return ClipGeometry.from_config(geometry)


def _up_to_date(folder: Path, config: dict, overwrite: bool) -> bool:
    """An existing split made with the same config is kept (prepare is idempotent); one made with
    another config is only replaced when ``overwrite`` is set."""
    if overwrite or not (folder / MANIFEST).exists():
        return False
    existing = Manifest.load(folder).prepare.get("config")
    if existing == config:
        log.info("%s is up to date", folder)
        return True
    raise FileExistsError(f"{folder} holds shards made with another config ({existing}); pass overwrite=true "
                          f"to replace them, or choose another paths.data_dir")


def contact_sheet(items: Sequence[SyntheticClip], geo: ClipGeometry, max_frames: int = 16,
                  cell: int = 96) -> np.ndarray:
    """One band per clip: frames (hit frames outlined in red), then the waveform with hit times in red."""
    import cv2

    step = max(1, int(np.ceil(geo.num_frames / max_frames)))
    shown = list(range(0, geo.num_frames, step))
    scale = max(1, int(np.ceil(cell / max(geo.height, geo.width))))
    ch, cw = geo.height * scale, geo.width * scale
    width, wave_h, text_h = len(shown) * cw, max(48, ch // 2), 18
    bands = []
    for item in items:
        events = np.asarray(item.meta.get("events", []), dtype=float)
        hit_frames = {int(np.rint(t * float(geo.fps))) for t in events}
        row = []
        for f in shown:
            img = np.kron(item.frames[f], np.ones((scale, scale, 1), dtype=np.uint8))
            if f in hit_frames:
                img = img.copy()
                cv2.rectangle(img, (0, 0), (cw - 1, ch - 1), (255, 0, 0), max(1, scale))
            row.append(img)
        frames_img = np.concatenate(row, axis=1)
        wave = np.full((wave_h, width, 3), 255, np.uint8)
        audio = item.audio
        # column x shows samples [x * S / width, (x + 1) * S / width): the same time axis as the markers
        bounds = np.linspace(0, len(audio), width + 1).astype(int)
        envelope = np.maximum.reduceat(np.abs(audio), bounds[:-1]) if len(audio) else np.zeros(width)
        peak = max(1e-6, float(envelope.max()))
        mid = wave_h // 2
        for x, level in enumerate(envelope):
            amp = int(level / peak * (mid - 2))
            wave[mid - amp:mid + amp + 1, x] = (40, 40, 40)
        for t in events:
            x = int(t * geo.sample_rate * width / len(audio))
            wave[:, max(0, x - 1):x + 1] = (255, 0, 0)
        text = np.full((text_h, width, 3), 255, np.uint8)
        cv2.putText(text, f"{item.meta.get('caption', '')}  events: {', '.join(f'{t:.2f}s' for t in events)}",
                    (4, text_h - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        bands.append(np.concatenate([text, frames_img, wave, np.full((6, width, 3), 255, np.uint8)], axis=0))
    return np.concatenate(bands, axis=0)


def write_preview(folder: Path, items: Sequence[SyntheticClip], geo: ClipGeometry, *, overwrite: bool = False) -> Path:
    """``contact_sheet.png`` and ``clip_<i>.mp4`` (video + audio) for ``items``; existing files are kept."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    sheet = folder / "contact_sheet.png"
    if overwrite or not sheet.exists():
        ok, png = cv2.imencode(".png", cv2.cvtColor(contact_sheet(items, geo), cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("could not encode the contact sheet as PNG")
        write_bytes_atomic(sheet, png.tobytes(), overwrite=True)
    for i, item in enumerate(items):
        path = folder / f"clip_{i}.mp4"
        if overwrite or not path.exists():
            write_mp4(path, item.frames, geo.fps, audio=item.audio, sample_rate=geo.sample_rate, overwrite=True)
    log.info("preview: %s", folder)
    return folder
