"""Files: atomic writes (one implementation for samples, caches, checkpoints and exports) and what a
folder holds (:func:`scan_media`: clips, audio, and every other file with the reason it is skipped)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Literal

from avgen.media.core import AUDIO_SUFFIXES, IMAGE_SUFFIXES, SIDECAR_SUFFIXES, VIDEO_SUFFIXES, MediaError
from avgen.media.decode import probe


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, overwrite: bool = False,
                 before_replace: Callable[[], None] | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``.<name>.tmp-<pid>``) for writing; on a clean exit flush it,
    ``fsync`` it and rename it over ``path``, so a reader never sees a half-written file and a crash leaves
    at most the temporary (removed on an exception; a killed process's temporaries are recognisable by
    their pid, :func:`avgen.checkpoint.remove_stale_temporaries`). ``mode``: ``"wb"`` or ``"w"`` (text,
    UTF-8). ``before_replace`` runs between the fsync and the rename (tests simulate a crash there).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or choose another output folder) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_synced(tmp: str | Path, path: str | Path) -> Path:
    """Rename a finished temporary file over ``path`` after flushing it to disk (``fsync``), so a crash
    right after never leaves a truncated file under the final name."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path, "wb", overwrite=overwrite) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`); replaces by default (reports,
    manifests, caches that avgen owns)."""
    with atomic_write(path, "w", overwrite=overwrite) as f:
        f.write(text)
    return Path(path)


# ------------------------------------------------------------------------------------- folders
@dataclass
class MediaFolder:
    """The inputs found in a folder (:func:`scan_media`): ``files`` to process, in name order, and
    ``skipped``: ``(path, reason)`` for every other file, so nothing disappears without a word."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def skipped_json(self) -> list[dict[str, str]]:
        return [{"file": p.name, "reason": r} for p, r in self.skipped]


def scan_media(folder: str | Path, kind: Literal["video", "audio"]) -> MediaFolder:
    """Every file of ``folder`` (not recursive) that holds a ``kind`` stream, whatever its container,
    codec, extension case (``.MP4``) or name (spaces, non-ASCII letters).

    ``kind="video"``: files with a video stream; an audio file with the stem of a video is that
    video's sound (see :func:`avgen.media.decode.read_clip`) and is not listed. ``kind="audio"``: files with an audio
    stream (audio files, and videos with sound). Files with a known media extension are taken on
    their name (a broken one then fails, with its reason, when it is decoded); files with another
    extension are probed with FFmpeg. ``.txt``/``.json`` sidecars are ignored; everything else not
    taken is in ``skipped`` with the reason (sub-folders, hidden files, images, audio-only or silent
    files, files FFmpeg cannot open).
    """
    folder = Path(folder)
    found = MediaFolder(skipped=[(p, "a folder: sub-folders are not searched") for p in sorted(folder.iterdir())
                                 if p.is_dir()])
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    video_stems = {p.stem for p in entries if p.suffix.lower() in VIDEO_SUFFIXES}
    for path in entries:
        suffix = path.suffix.lower()
        if suffix in SIDECAR_SUFFIXES:
            continue
        if path.name.startswith("."):
            found.skipped.append((path, "hidden file"))
        elif suffix in IMAGE_SUFFIXES:
            found.skipped.append((path, "an image or document, not a clip"))
        elif kind == "video" and suffix in VIDEO_SUFFIXES:
            found.files.append(path)
        elif kind == "video" and suffix in AUDIO_SUFFIXES:
            if path.stem not in video_stems:
                found.skipped.append((path, "audio only: no video of the same stem to pair it with"))
        elif kind == "audio" and suffix in AUDIO_SUFFIXES:
            found.files.append(path)
        else:
            reason = _probe_reason(path, kind)
            if reason is None:
                found.files.append(path)
            else:
                found.skipped.append((path, reason))
    return found


def _probe_reason(path: Path, kind: str) -> str | None:
    """Why ``path`` is not a ``kind`` input (None when it is one), from FFmpeg's view of the file."""
    try:
        info = probe(path)
    except MediaError as exc:
        return f"not a media file FFmpeg can read ({str(exc.__cause__ or exc)})"
    if kind == "video" and not info.has_video:
        return "no video stream" + (" (audio only)" if info.has_audio else "")
    if kind == "audio" and not info.has_audio:
        return "no audio stream"
    return None
