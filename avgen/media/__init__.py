"""Reading and writing media: any container FFmpeg reads; mp4 (video, optionally with audio), flac and wav out.

Conventions used everywhere in avgen:
- frames are ``uint8`` arrays ``(F, H, W, 3)`` RGB, time on axis 0, upright (the display rotation of
  the file is applied, as players do);
- audio is ``float32`` mono ``(S,)`` in [-1, 1];
- frame rates are exact rationals (:class:`fractions.Fraction`): 29.97 fps is ``30000/1001``
  (:func:`as_fps`), and a clip of ``seconds`` holds ``round(seconds · fps)`` frames (:func:`frame_count`);
- one time axis per file, whose origin is the start of its video stream (of its audio stream when
  it has no video). Frame ``k`` of a clip decoded at ``fps`` from ``start`` shows the file at
  ``start + k / fps`` s: frames are placed by their presentation timestamps, never by index, so
  variable-frame-rate files come out at a constant rate (:func:`decode_video`). Audio sample
  ``n`` is at ``start + n / sample_rate`` s on the same axis: an audio stream that starts later
  than the video is padded with silence, one that starts earlier loses its leading samples
  (:func:`decode_audio`).

Everything goes through PyAV (FFmpeg) and soundfile; nothing shells out to an ``ffmpeg`` binary.
Files are written atomically (temporary name, fsync, then rename: :func:`atomic_write`) and never
replace an existing file unless ``overwrite=True`` is passed. Non-finite samples are refused before
any encoder sees them.

The package: :mod:`~avgen.media.core` (constants, exact frame rates), :mod:`~avgen.media.decode`,
:mod:`~avgen.media.encode`, :mod:`~avgen.media.files` (atomic writes, folder scanning),
:mod:`~avgen.media.frames` (uint8 ↔ [-1, 1] frame conversions) and :mod:`~avgen.media.optical_flow` (dense flow
between frames and its colour rendering); everything public is importable from
``avgen.media``.
"""

from avgen.media.core import (
    AUDIO_CODEC_MP4,
    SEEK_AFTER_SECONDS,
    VIDEO_CODEC,
    VIDEO_CRF,
    MediaError,
    as_fps,
    fps_label,
    fps_text,
    frame_count,
)
from avgen.media.decode import (
    Clip,
    MediaInfo,
    audio_companion,
    centre_origin,
    check_finite,
    cover_size,
    decode_audio,
    decode_flac,
    decode_video,
    has_audio_stream,
    probe,
    read_audio,
    read_clip,
)
from avgen.media.dub import (
    AUDIO_LENGTH_SLACK,
    DUB_VIDEO_CRF,
    MP4_COPY_CODECS,
    DubInfo,
    crossfade_windows,
    dub_video,
    equal_power_crossfade,
    equal_power_gains,
    fit_audio_length,
    video_stream_duration,
)
from avgen.media.encode import encode_flac, encode_mp4, write_mp4, write_wav
from avgen.media.files import (
    AUDIO_SUFFIXES,
    IMAGE_SUFFIXES,
    SIDECAR_SUFFIXES,
    VIDEO_SUFFIXES,
    MediaFolder,
    atomic_write,
    replace_synced,
    scan_media,
    write_bytes_atomic,
    write_text_atomic,
)
from avgen.media.frames import frames_to_uint8, quantize_unit_range, uint8_to_unit_range, unit_range_to_uint8
from avgen.media.optical_flow import FLOW_METHODS, OpticalFlow, colour_wheel, flow_images, flow_to_rgb

__all__ = [
    "AUDIO_CODEC_MP4", "AUDIO_LENGTH_SLACK", "AUDIO_SUFFIXES", "DUB_VIDEO_CRF", "MP4_COPY_CODECS", "DubInfo",
    "crossfade_windows", "dub_video", "equal_power_crossfade", "equal_power_gains", "fit_audio_length",
    "video_stream_duration", "IMAGE_SUFFIXES", "SEEK_AFTER_SECONDS", "SIDECAR_SUFFIXES", "VIDEO_CODEC",
    "VIDEO_CRF", "VIDEO_SUFFIXES", "Clip", "MediaError", "MediaFolder", "MediaInfo", "as_fps", "atomic_write",
    "audio_companion", "centre_origin", "check_finite", "cover_size", "decode_audio", "decode_flac", "decode_video",
    "encode_flac", "encode_mp4", "fps_label", "fps_text", "frame_count", "frames_to_uint8", "has_audio_stream",
    "probe", "read_audio",
    "quantize_unit_range", "read_clip", "replace_synced", "scan_media", "uint8_to_unit_range", "unit_range_to_uint8",
    "write_bytes_atomic", "FLOW_METHODS", "OpticalFlow", "colour_wheel", "flow_images", "flow_to_rgb",
    "write_mp4", "write_text_atomic", "write_wav",
]
