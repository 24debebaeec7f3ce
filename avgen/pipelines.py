"""Ready-to-run pipelines of the three systems: ``avgen.from_pretrained(folder)`` and ``pipe(...)``.

A pipeline wraps a trained system (its trainable weights, EMA by default, loaded into the frozen parts its
config names) and offers the system's natural call, with every input checked before any model runs:

>>> pipe = avgen.from_pretrained("exports/joint")                        # doctest: +SKIP
>>> out = pipe(prompt="a red ball bounces", gamma=1.5, seed=0)          # doctest: +SKIP
>>> out.save("generated")                                               # doctest: +SKIP

- :class:`JointPipeline` (text → sounding video, the SVG baseline): ``pipe(prompt=..., gamma=...)``;
- :class:`TempoTokensPipeline` (audio → video): ``pipe(audio=<file or waveform>, prompt=...)``;
- :class:`VTALDMPipeline` (video → audio, VTA-LDM): ``pipe(video=<file>)``.

Each returns an :class:`AVOutput` (per clip its frames and its sound). Sampling from a pipeline and
``python -m avgen sample`` of the checkpoint it was exported from give the same clips for the same seed and
settings: both call the system's own generation code (exact on a CPU).

Loading reads JSON and safetensors only (:mod:`avgen.export` writes the folder): no pickle, and the model config
may name only the three systems' classes. Frozen parts come from where the index says: a hub id (local cache,
never downloaded), a local folder or file, a ``tiny:`` twin (rebuilt in code), or a copy inside the folder
(``export.include_frozen=true``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from avgen.config_files import scale_blocks
from avgen.errors import ConfigError, InputError, PipelineFolderError

#: the format string of ``avgen_index.json``
INDEX_FORMAT = "avgen-pipeline/1"
INDEX_FILE = "avgen_index.json"
CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"

#: system name → (class path, pipeline class name, task, paper)
SYSTEMS: dict[str, dict[str, str]] = {
    "joint": {"class": "avgen.systems.joint.JointAudioVideo", "pipeline": "JointPipeline",
              "task": "text-to-audio-video",
              "paper": "Hayakawa et al. 2024, A Simple but Strong Baseline for Sounding Video Generation: Effective "
                       "Adaptation of Audio and Video Diffusion Models for Joint Generation (arXiv 2409.17550)"},
    "tempotokens": {"class": "avgen.systems.tempotokens.TempoTokens", "pipeline": "TempoTokensPipeline",
                    "task": "audio-to-video",
                    "paper": "Yariv et al. 2024, Diverse and Aligned Audio-to-Video Generation via Text-to-Video "
                             "Model Adaptation (TempoTokens, AAAI 2024, arXiv 2309.16429)"},
    "vta_ldm": {"class": "avgen.systems.vta_ldm.VTALDM", "pipeline": "VTALDMPipeline", "task": "video-to-audio",
                "paper": "Xu et al. 2024, Video-to-Audio Generation with Hidden Alignment (VTA-LDM, arXiv 2407.07464)"},
}

#: per system, the frozen pretrained parts: component name → the model config key (relative to ``model``) that
#: names its source (a hub id, folder, file or ``tiny:`` twin)
FROZEN_SOURCES: dict[str, dict[str, str]] = {
    "joint": {"video_base": "video.base", "motion_adapter": "video.motion_adapter", "video_vae": "video.vae",
              "audio_base": "audio.base"},
    "tempotokens": {"t2v_base": "t2v.base", "audio_encoder": "encoder.path"},
    "vta_ldm": {"video_encoder": "encoder.path", "text_encoder": "text_encoder.path", "audio_codec": "audio.base"},
}

#: per system, the trained components: name → the prefix of their tensors in the system's state dict, in the
#: field's terms (a tensor no prefix matches is stored under its first two name parts)
TRAINED_COMPONENTS: dict[str, dict[str, str]] = {
    "joint": {"motion_modules": "denoiser.video_unet.", "video_connector": "denoiser.video_connector.",
              "audio_connector": "denoiser.audio_connector.", "video_cross_modal_blocks": "denoiser.video_blocks.",
              "audio_cross_modal_blocks": "denoiser.audio_blocks."},
    "tempotokens": {"audio_mapper": "mapper.", "attentive_pooling": "pooling."},
    "vta_ldm": {"unet": "unet.", "projection": "condition."},
}


def system_name(model_config: Mapping[str, Any]) -> str:
    """The system name (a key of :data:`SYSTEMS`) of a model config's ``_target_``.

    Raises:
        PipelineFolderError: the target is not one of the three systems.
    """
    target = model_config.get("_target_")
    for name, info in SYSTEMS.items():
        if info["class"] == target:
            return name
    raise PipelineFolderError(f"model _target_ {target!r} is not an avgen system; expected one of "
                              f"{', '.join(info['class'] for info in SYSTEMS.values())}")


def effective_source(model_config: Mapping[str, Any], key: str) -> Any:
    """The value of dotted ``key`` (relative to ``model``) the system reads: at ``scale=tiny`` the ``tiny``
    block's value when it sets one, at ``scale=mini`` the ``mini`` block's, else the ``tiny`` block's, else the
    top-level value (``None`` when none holds the key)."""
    value = _get(model_config, key)
    for block in scale_blocks(model_config.get("scale", "paper"), "model.scale"):
        override = _get(model_config.get(block) or {}, key, missing=_MISSING)
        if override is not _MISSING:
            value = override
    return value


def set_source(model_config: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` (relative to ``model``) to ``value`` where the system reads it (:func:`effective_source`):
    the top-level key, and the ``tiny`` and ``mini`` blocks' too where they set the key."""
    _set(model_config, key, value)
    for block in ("tiny", "mini", "paper_random"):
        overrides = model_config.get(block)
        if isinstance(overrides, dict) and _get(overrides, key, missing=_MISSING) is not _MISSING:
            _set(overrides, key, value)


_MISSING = object()


def _get(tree: Mapping[str, Any], key: str, missing: Any = None) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def default_tiny_dir() -> Path:
    """Where ``tiny:`` twins are written when a pipeline is loaded: ``$AVGEN_TINY_DIR``, else
    ``$XDG_CACHE_HOME/avgen/tiny_backbones`` (``~/.cache/avgen/tiny_backbones``)."""
    if os.environ.get("AVGEN_TINY_DIR"):
        return Path(os.environ["AVGEN_TINY_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "avgen" / "tiny_backbones"


def build_system(model_config: Mapping[str, Any], weights: Mapping[str, torch.Tensor], *, source: str):
    """The system of a plain model config (``_target_`` one of :data:`SYSTEMS`) with ``weights`` (every trainable
    tensor, by state-dict name) loaded, in eval mode. The optimizer and LR schedule are not built.

    Raises:
        PipelineFolderError: an unknown system, or weights that do not match its trainable tensors (naming
            ``source``).
    """
    import importlib

    name = system_name(model_config)
    module, _, cls_name = SYSTEMS[name]["class"].rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    model_config = cls.upgrade_model_config(dict(model_config))  # an export of an earlier avgen
    kwargs = {k: copy.deepcopy(v) for k, v in model_config.items() if k != "_target_"}
    kwargs["optimizer"] = kwargs["scheduler"] = None
    for key in getattr(cls, "INIT_ONLY", ()):
        kwargs[key] = None
    try:
        system = cls(**kwargs)
    except TypeError as exc:  # a key the class does not take: a config edited by hand or from another version
        raise PipelineFolderError(f"{source}: its model config does not fit {cls_name} ({exc}); export it again "
                                  f"with this avgen version") from exc
    try:
        system.check_trainable_keys(dict(weights), source=source)
    except KeyError as exc:
        raise PipelineFolderError(str(exc.args[0])) from exc
    system.load_state_dict(dict(weights), strict=False)
    system.run_config = {"model": dict(model_config), "data": {"clip": dict(model_config.get("clip") or {})}}
    return system.eval()


def resolve_device(device: str | torch.device, key: str = "device") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda:1`` ... as a torch device this machine has.

    Raises:
        ConfigError: not a device name, or a CUDA device where there is none (naming ``key``).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        value = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{key}={device!r}: not a device; expected auto, cpu or cuda[:N]") from exc
    if value.type == "cuda" and (not torch.cuda.is_available() or (value.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"{key}={device!r}: this machine has {torch.cuda.device_count()} CUDA devices; use auto or "
                          f"cpu")
    return value


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(f"dtype={dtype!r}: expected a floating torch dtype such as float32, float16 or bfloat16")
    return value


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class AVOutput:
    """What a pipeline call returns: per clip i, ``videos[i]`` float32 (F_i, 3, H, W) in [-1, 1] at ``fps``
    (for video-to-audio: the input's frames at the model's rate and size) and ``audios[i]`` float32 (S_i,) in
    [-1, 1] at ``sample_rate`` Hz (for audio-to-video: the input audio), on the CPU; ``prompts[i]`` the text used
    and ``sources[i]`` the input file (None for prompts and waveforms)."""

    videos: list[torch.Tensor]
    audios: list[torch.Tensor]
    fps: Any
    sample_rate: int
    prompts: list[str]
    sources: list[str | None]
    settings: dict[str, Any] = field(default_factory=dict)
    #: "generated" modalities: ("video", "audio") for the joint model, ("video",) or ("audio",)
    generated: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.audios)

    @property
    def video(self) -> torch.Tensor:
        """Every clip's frames stacked, (B, F, 3, H, W) float32. Raises ValueError when the clips differ in
        length (use :attr:`videos`)."""
        return _stack(self.videos, "videos")

    @property
    def audio(self) -> torch.Tensor:
        """Every clip's sound stacked, (B, S) float32. Raises ValueError when the clips differ in length."""
        return _stack(self.audios, "audios")

    def seconds(self, i: int) -> float:
        """Clip ``i``'s duration in seconds (its sound's)."""
        return len(self.audios[i]) / self.sample_rate

    def save(self, out_dir: str | Path, *, overwrite: bool = False, prefix: str = "sample") -> list[Path]:
        """Write each clip as a sounding mp4 ``<out_dir>/<prefix>_NNNN.mp4`` (H.264 + AAC) with ``.wav``, ``.txt``
        (the prompt) and ``.json`` (prompt, source, settings) beside it; returns the mp4 paths in clip order. A
        clip generated for an input video file is its original video stream with the new sound
        (:func:`avgen.media.dub_video`: full resolution and rate, not the model's frames).

        Raises:
            FileExistsError: a file would be replaced and ``overwrite`` is false (checked before writing).
            avgen.media.MediaError / OSError: a clip could not be written (the clips before it are kept).
        """
        from avgen.media import check_finite, dub_video, unit_range_to_uint8, write_bytes_atomic, write_mp4, write_wav

        out = Path(out_dir)
        stems = [f"{prefix}_{i:04d}" for i in range(len(self))]
        existing = [out / f"{s}{x}" for s in stems for x in (".mp4", ".wav", ".txt", ".json")
                    if (out / f"{s}{x}").exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} exists; pass overwrite=True or choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for i, stem in enumerate(stems):
            wave = self.audios[i].detach().cpu().float().numpy()
            check_finite(wave, stem)
            mp4 = out / f"{stem}.mp4"
            if self.generated == ("audio",) and self.sources[i]:
                dub_video(self.sources[i], wave, self.sample_rate, mp4, overwrite=overwrite)
            else:
                frames = self.videos[i].detach().cpu().float()
                check_finite(frames.numpy(), stem, what="video")
                write_mp4(mp4, unit_range_to_uint8(frames), self.fps, audio=wave, sample_rate=self.sample_rate,
                          overwrite=overwrite)
            write_wav(out / f"{stem}.wav", wave, self.sample_rate, overwrite=overwrite)
            write_bytes_atomic(out / f"{stem}.txt", self.prompts[i].encode(), overwrite=overwrite)
            meta = {"prompt": self.prompts[i], "source": self.sources[i], "generation": self.settings}
            write_bytes_atomic(out / f"{stem}.json", json.dumps(meta, indent=1, default=str).encode(),
                               overwrite=overwrite)
            written.append(mp4)
        return written


def _stack(items: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        raise ValueError(f"the clips differ in length ({sorted(s[0] for s in shapes)}); use .{name}[i]")
    return torch.stack(list(items))


# ---------------------------------------------------------------------------------------------- pipelines
ProgressCallback = Callable[[int, int], None]

#: seeds go to torch.Generator.manual_seed (a 64-bit integer) after adding a clip's or window's index
MAX_SEED = 2**63


def _short(value: Any) -> str:
    """``value`` for a one-line message: a tensor or array as its type and shape, anything else a short repr."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"<{type(value).__name__} {tuple(value.shape)}>"
    return reprlib.repr(value)


def _media_reason(exc: Exception, path: Path) -> str:
    """A decoder's message about ``path`` without the path (the caller names the file) or errno numbers."""
    text = " ".join(str(exc).split()).replace(f": '{path}'", "").replace(f"{path}: ", "")
    return re.sub(r"\[Errno -?\d+\] ", "", text)


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path.name}: the file is empty (0 bytes)")


class AVPipeline:
    """Base of the pipelines: a trained system on a device, its sampling defaults, input checks and progress.

    Attributes:
        system: ``"joint"``, ``"tempotokens"`` or ``"vta_ldm"``; task: e.g. ``"video-to-audio"``; inputs: the
            natural inputs of ``__call__`` (``("prompt", "video")``, ``("audio", "prompt")``, ``("video", "prompt")``);
            required_inputs: those of which a call needs at least one (``("prompt", "video")``, ``("audio",)``, ...);
        model: the LightningModule (frozen parts and trained weights), in eval mode;
        max_input_seconds: the longest input audio / video accepted (None: no limit; the demo page sets one);
        info: the export's ``avgen_index.json`` (or, from a checkpoint, what it would hold).
    """

    system: ClassVar[str] = ""
    task: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    #: the inputs of which a call needs at least one (the first of ``inputs`` unless a pipeline says otherwise)
    required_inputs: ClassVar[tuple[str, ...]] = ()
    #: the sampling options ``__call__`` takes besides ``seed`` (``model.sampling`` names)
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model, *, device: torch.device, info: Mapping[str, Any] | None = None):
        self.model = model
        self.device = device
        self.info = dict(info or {})
        self.max_input_seconds: float | None = None

    # ------------------------------------------------------------------ description
    @property
    def options(self) -> dict[str, Any]:
        """``{option: default}`` of the sampling options (the model's ``model.sampling`` values)."""
        values = self.model.sampling.to_dict()
        return {name: values[name] for name in self.option_names}

    @property
    def fps(self):
        """The frame rate the model was trained at (a Fraction)."""
        return self.model.clip.fps

    @property
    def sample_rate(self) -> int:
        return int(self.model.clip.sample_rate)

    @property
    def clip_seconds(self) -> float:
        """The clip length the model was trained on, in seconds."""
        return float(self.model.clip.seconds)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(task={self.task}, device={self.device}, fps={self.fps}, "
                f"sample_rate={self.sample_rate}, clip_seconds={self.clip_seconds}, options={self.options})")

    # ------------------------------------------------------------------ shared helpers
    def settings(self, seed: Any, options: Mapping[str, Any]):
        """The model's sampling settings with ``options`` applied (each checked) and the seed checked.

        Raises:
            InputError: an unknown option, a bad value, or a seed that is not a non-negative integer.
        """
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise InputError(f"{unknown[0]} is not an option of {type(self).__name__}; expected some of: "
                             f"{', '.join(self.option_names)}, seed")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < MAX_SEED:
            raise InputError(f"seed={_short(seed)}: expected a non-negative integer below 2**63")
        try:
            return self.model.sampling.updated("pipeline", **options)
        except ConfigError as exc:
            raise InputError(str(exc)) from exc

    def _check_seconds(self, seconds: float, name: str) -> None:
        if self.max_input_seconds is not None and seconds > self.max_input_seconds:
            raise InputError(f"{name} lasts {seconds:.2f} s; this pipeline accepts at most "
                             f"{self.max_input_seconds:g} s (max_input_seconds): trim it")

    @contextlib.contextmanager
    def _progress(self, denoiser: torch.nn.Module, total: int, progress: ProgressCallback | None) -> Iterator[None]:
        """Call ``progress(done, total)`` after every forward pass of ``denoiser`` (one sampler step of one batch:
        every system batches its guidance branches), ``done`` capped at ``total``."""
        if progress is None:
            yield
            return
        count = [0]

        def hook(*_):
            count[0] += 1
            progress(min(count[0], total), total)

        handle = denoiser.register_forward_hook(hook)
        progress(0, total)
        try:
            yield
        finally:
            handle.remove()

    def _prompts(self, prompt: str | Sequence[str] | None, count: int, *, required: bool) -> list[str]:
        if prompt is None:
            if required:
                raise InputError("prompt is missing: pass prompt=\"...\" (or a list of prompts)")
            return [""] * count
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"prompt={_short(prompt)}: expected a string or a list of strings")
        if len(prompts) == 1:
            prompts = prompts * count
        if len(prompts) != count:
            raise InputError(f"{len(prompts)} prompts for {count} inputs: give one prompt, or one per input")
        return prompts

    def _read_videos(self, video: Any, prompt: Any, who: str) -> list:
        """The input video files as :class:`~avgen.samples.VideoInput` (decoded at ``data.clip``'s rate and size,
        windowed, the caption a ``<stem>.txt`` beside the file), each checked before any model runs.

        Raises:
            InputError: no video, a path that is not a file path, a missing, empty or unreadable file, one longer
                than ``max_input_seconds``, or ``prompt`` other than one string (``who`` names the model).
        """
        from avgen.media import MediaError, video_stream_duration
        from avgen.samples import VideoInput, sidecar_caption

        if video is None:
            raise InputError("video is missing: pass video=<file> (or a list of files)")
        files = list(video) if isinstance(video, (list, tuple)) else [video]
        if not files:
            raise InputError("video=[]: no input; pass a file (or a list of files)")
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"prompt={_short(prompt)}: {who} takes one caption for every input video")
        items = []
        for k, file in enumerate(files):
            if not isinstance(file, (str, os.PathLike)):
                raise InputError(f"video={_short(file)}: expected a file path")
            path = Path(file)
            _check_file(path, "video")
            try:
                self._check_seconds(float(video_stream_duration(path)), f"video {path.name}")  # before decoding
                item = VideoInput.read(path, str(path.resolve()), sidecar_caption(path), f"input_{k}",
                                       self.model.clip)
            except MediaError as exc:
                raise InputError(f"video {path.name}: cannot be read: {_media_reason(exc, path)}") from exc
            self._check_seconds(item.num_samples / self.sample_rate, f"video {path.name}")
            items.append(item)
        return items

    def _audio_for_inputs(self, items: Sequence, prompt: str | None, settings: Any, seed: int,
                          progress: ProgressCallback | None, denoiser: torch.nn.Module,
                          audio_for: Callable[[Any, str, int], np.ndarray]) -> AVOutput:
        """The :class:`AVOutput` of audio generated for input videos (``items`` of :meth:`_read_videos`), as
        ``python -m avgen sample`` dubs them: input by input, ``audio_for(item, caption, seed of its first window)``
        (S,) float32, window k over every input seeded ``seed + k``, the caption ``prompt`` or else the input's;
        ``progress`` counts ``denoiser``'s passes, one per step of each batch of windows. The output holds each
        input's frames at the model's rate and size, its generated sound, and the file as its source
        (:meth:`AVOutput.save` dubs the original stream)."""
        total = sum(math.ceil(len(item.windows) / settings.batch_size) for item in items) * settings.steps
        waves, prompts = [], []
        first_window = 0
        with self.model.ema_weights(), self._progress(denoiser, total, progress):
            for item in items:
                caption = item.caption if prompt is None else prompt
                waves.append(np.asarray(audio_for(item, caption, seed + first_window), dtype=np.float32))
                first_window += len(item.windows)
                prompts.append(caption)
        videos = [torch.from_numpy(np.ascontiguousarray(item.frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
                  for item in items]
        return AVOutput(videos, [torch.from_numpy(wave) for wave in waves], self.fps, self.sample_rate, prompts,
                        [item.source for item in items], settings={**settings.to_dict(), "seed": seed},
                        generated=("audio",))

    def save(self, output: AVOutput, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
        """``output.save(out_dir)``: the sounding mp4s (:meth:`AVOutput.save`)."""
        return output.save(out_dir, overwrite=overwrite)

    @torch.no_grad()
    def __call__(self, **kwargs: Any) -> AVOutput:  # pragma: no cover - each pipeline defines it
        raise NotImplementedError


class JointPipeline(AVPipeline):
    """Text → sounding video with the joint model (AnimateDiff + AudioLDM, connectors, CMC-PE, γ of Eq. 9); given
    ``video``, audio for those videos (the replacement method, as ``python -m avgen sample sample.video=...``)."""

    system, task, inputs = "joint", SYSTEMS["joint"]["task"], ("prompt", "video")
    required_inputs = ("prompt", "video")
    option_names = ("steps", "guidance_video", "guidance_audio", "gamma", "negative_prompt", "eta",
                    "cross_modal_guidance")

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, video: Any = None, *, seed: int = 0,
                 progress: ProgressCallback | None = None, **options: Any) -> AVOutput:
        """Sounding videos for ``prompt`` (one clip per prompt), ``data.clip`` long; or, given ``video``, the audio
        for each input video.

        Clip i starts from noise seeded with ``seed + i`` and prompts go ``model.sampling.batch_size`` at a time,
        as in ``python -m avgen sample``: the same prompts, seed and options give the same clips. ``options``:
        steps, guidance_video, guidance_audio, gamma (Eq. 9; 1 = no adjustment), negative_prompt, eta (DDIM's
        stochasticity, Song et al. 2021 Eq. 16: 0 = deterministic, 1 = ancestral), cross_modal_guidance (the
        audio guided on the video's motion, :meth:`~avgen.systems.joint.JointAudioVideo.generate`; 1 = none).

        ``video``: a file path (any container FFmpeg reads) or a list of them. Only the audio is generated, *for*
        the input's frames, by the replacement method (Song et al. 2021 App. I.2; MM-Diffusion's zero-shot
        video-to-audio; :meth:`~avgen.systems.joint.JointAudioVideo.audio_for_input`), exactly as
        ``python -m avgen sample sample.video=<file>`` does: an input longer than the clip in clip-long windows
        joined by an equal-power crossfade, window k over every input seeded ``seed + k``. ``prompt`` is then
        optional, one caption for every input (default: a ``<stem>.txt`` beside the file, else no text). The
        output's ``videos`` are the input's frames at the model's rate and size, and :meth:`AVOutput.save` dubs
        the input's own video stream.

        Raises:
            InputError: neither prompt nor video, an unknown option or a bad value, a list of prompts with
                ``video``, a missing, empty or unreadable video file or one longer than ``max_input_seconds``
                (before any model runs).
        """
        settings = self.settings(seed, options)
        if video is not None:
            return self._audio_for_videos(video, prompt, settings, seed, progress)
        if prompt is None:
            raise InputError("prompt is missing: pass prompt=\"...\" (or a list of prompts) for sounding videos, or "
                             "video=<file> for the audio of a video")
        prompts = self._prompts(prompt, len(prompt) if isinstance(prompt, (list, tuple)) else 1, required=True)
        size = settings.batch_size
        total = settings.steps * math.ceil(len(prompts) / size)
        videos, audios = [], []
        with self.model.ema_weights(), self._progress(self.model.denoiser, total, progress):
            for start in range(0, len(prompts), size):
                video, audio = self.model.generate(
                    prompts[start:start + size], steps=settings.steps, gamma=settings.gamma,
                    guidance_video=settings.guidance_video, guidance_audio=settings.guidance_audio,
                    negative_prompt=settings.negative_prompt, seed=seed + start, eta=settings.eta,
                    cross_modal_guidance=settings.cross_modal_guidance)
                videos += list(video.float().cpu())
                audios += list(audio.float().cpu())
        return AVOutput(videos, audios, self.fps, self.sample_rate, prompts, [None] * len(prompts),
                        settings={**settings.to_dict(), "seed": seed}, generated=("video", "audio"))

    def _audio_for_videos(self, video: Any, prompt: Any, settings: Any, seed: int,
                          progress: ProgressCallback | None) -> AVOutput:
        items = self._read_videos(video, prompt, "the joint model")
        output = self._audio_for_inputs(items, prompt, settings, seed, progress, self.model.denoiser,
                                        lambda item, caption, first: self.model.audio_for_input(item, caption,
                                                                                                settings, first))
        output.settings["method"] = "replacement"
        return output


class TempoTokensPipeline(AVPipeline):
    """Audio → video with TempoTokens (audio tokens as per-frame pseudo-text for the frozen UNet3D)."""

    system, task, inputs = "tempotokens", SYSTEMS["tempotokens"]["task"], ("audio", "prompt")
    required_inputs = ("audio",)
    option_names = ("steps", "guidance", "negative_prompt")

    @torch.no_grad()
    def __call__(self, audio: Any = None, prompt: str | Sequence[str] | None = None, *, sample_rate: int | None = None,
                 seed: int = 0, progress: ProgressCallback | None = None, **options: Any) -> AVOutput:
        """A video for each input audio, covering exactly its duration, the input audio as its sound.

        ``audio``: a file path (any container FFmpeg reads: audio, or video with sound), a waveform (S,) or
        (B, S) (numpy or torch, float in [-1, 1]) with its ``sample_rate`` (resampled to the model's), or a list
        of those. ``prompt``: the text of the prompt template's ``{caption}`` (one for all inputs, or one each).
        Inputs are generated as ``python -m avgen sample`` does (:meth:`TempoTokens.generate_inputs`).

        Raises:
            InputError: no audio, an unreadable file, NaN/inf samples, an input shorter than the audio encoder's
                minimum or longer than ``max_input_seconds``, an unknown option or a bad value (before any model
                runs).
        """
        settings = self.settings(seed, options)
        waves, sources = self._read_audio(audio, sample_rate)
        prompts = self._prompts(prompt, len(waves), required=False)
        groups = 0
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        for start in range(0, len(order), settings.batch_size):
            groups += len({len(waves[i]) for i in order[start:start + settings.batch_size]})
        videos: list[torch.Tensor | None] = [None] * len(waves)
        with self.model.ema_weights(), self._progress(self.model.unet, settings.steps * groups, progress):
            for i, video in self.model.generate_inputs(waves, prompts, settings, seed):
                videos[i] = video.float().cpu()
        return AVOutput(videos, [torch.from_numpy(w) for w in waves], self.fps, self.sample_rate, prompts, sources,
                        settings={**settings.to_dict(), "seed": seed}, generated=("video",))

    def _read_audio(self, audio: Any, sample_rate: int | None) -> tuple[list[np.ndarray], list[str | None]]:
        """(waveform (S,) float32 at the model's rate, source file or None) per input, each checked."""
        from avgen.media import MediaError, check_finite, decode_audio, probe

        if audio is None:
            raise InputError("audio is missing: pass audio=<file> or a waveform with sample_rate=")
        items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 2:
            items = list(audio)
        if not items:
            raise InputError(f"audio={_short(audio)}: no input; pass a file or a waveform")
        if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer))
                                        or sample_rate <= 0):
            raise InputError(f"sample_rate={_short(sample_rate)}: expected the waveform's rate in Hz, an integer > 0")
        rate = self.sample_rate
        waves, sources = [], []
        need, why = self.model._min_input_samples()
        for k, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                path = Path(item)
                name = path.name
                _check_file(path, "audio")
                try:
                    duration = probe(path).duration
                    if duration:  # refused before decoding a long upload
                        self._check_seconds(float(duration), name)
                    wave = decode_audio(path, rate)
                except MediaError as exc:
                    raise InputError(f"audio {name}: cannot be read: {_media_reason(exc, path)}") from exc
                if duration:
                    wave = wave[:max(1, round(duration * rate))]
                sources.append(str(path.resolve()))
            elif isinstance(item, (np.ndarray, torch.Tensor)):
                name = f"audio[{k}]"
                array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
                if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
                    raise InputError(f"{name}: expected a float waveform (S,) or (B, S), got {array.dtype} "
                                     f"{tuple(array.shape)}")
                if sample_rate is None:
                    raise InputError(f"{name}: a waveform needs its sample_rate= (Hz)")
                wave = np.asarray(array, dtype=np.float32)
                if int(sample_rate) != rate:
                    import torchaudio.functional as AF

                    wave = AF.resample(torch.from_numpy(wave), int(sample_rate), rate).numpy()
                sources.append(None)
            else:
                raise InputError(f"audio={_short(item)}: expected a file path or a waveform")
            try:
                check_finite(wave, name)
            except MediaError as exc:
                raise InputError(str(exc)) from exc
            if len(wave) < need:
                raise InputError(f"{name} is too short: {len(wave) / rate:.3f} s; {why}")
            self._check_seconds(len(wave) / rate, name)
            waves.append(np.ascontiguousarray(wave, dtype=np.float32))
        return waves, sources


class VTALDMPipeline(AVPipeline):
    """Video → audio with VTA-LDM (frozen vision encoder, trained projection, latent diffusion)."""

    system, task, inputs = "vta_ldm", SYSTEMS["vta_ldm"]["task"], ("video", "prompt")
    required_inputs = ("video",)
    option_names = ("steps", "guidance", "guidance_text", "negative_prompt", "sampler")

    @torch.no_grad()
    def __call__(self, video: Any = None, prompt: str | None = None, *, seed: int = 0,
                 progress: ProgressCallback | None = None, **options: Any) -> AVOutput:
        """Audio for each input video file (any container FFmpeg reads), covering its video stream: an input longer
        than the clip is generated in windows joined by a crossfade, window k over every input seeded ``seed + k``,
        as ``python -m avgen sample`` does. ``prompt``: the clips' caption, written beside each output (the text
        condition of models trained with text; others ignore it, as ``sample.prompt`` does); default: a
        ``<stem>.txt`` beside the file, else empty.

        Raises:
            InputError: no video, a missing, empty or unreadable file, an input longer than ``max_input_seconds``,
                an unknown option or a bad value (before any model runs).
        """
        settings = self.settings(seed, options)
        items = self._read_videos(video, prompt, "VTA-LDM")
        return self._audio_for_inputs(items, prompt, settings, seed, progress, self.model.unet,
                                      lambda item, caption, first: self.model._dub_audio(item, settings, first,
                                                                                         caption)[0])


PIPELINES: dict[str, type[AVPipeline]] = {"joint": JointPipeline, "tempotokens": TempoTokensPipeline,
                                          "vta_ldm": VTALDMPipeline}


# ---------------------------------------------------------------------------------------------- loading
def read_index(folder: str | Path) -> dict[str, Any]:
    """``<folder>/avgen_index.json``, checked (format, system).

    Raises:
        PipelineFolderError: no index, unreadable JSON, another format or an unknown system.
    """
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        diffusers_folder = (Path(folder) / "model_index.json").is_file()
        hint = (" (a diffusers pipeline folder: load it with diffusers)" if diffusers_folder
                else "; write one with python -m avgen export ckpt_path=<ckpt> export.dir=<folder>")
        raise PipelineFolderError(f"{folder}: not an avgen export, {INDEX_FILE} is missing{hint}")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PipelineFolderError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise PipelineFolderError(f"{path}: format {index.get('format') if isinstance(index, dict) else None!r} is "
                                  f"not {INDEX_FORMAT!r}; export it again with this avgen version")
    if index.get("system") not in PIPELINES:
        raise PipelineFolderError(f"{path}: system {index.get('system')!r} is not one of {', '.join(PIPELINES)}")
    components = index.get("components")
    if not isinstance(components, dict) or not all(isinstance(c, dict) for c in components.values()):
        raise PipelineFolderError(f"{path}: components is not a mapping of component entries; export it again")
    for name, component in components.items():
        need = ("file", "prefix") if component.get("type") == "trained" else ()
        if component.get("type") == "frozen" and component.get("kind") == "included":
            need = ("source", "config_key")
        missing = [key for key in need if not isinstance(component.get(key), str)]
        if missing:
            raise PipelineFolderError(f"{path}: component {name} has no {missing[0]}; export it again")
        if component.get("type") == "frozen" and component.get("kind") == "mini" and component.get("weights_tag"):
            from avgen.backbones.mini import MINI_PREFIX, PART_ENV, read_manifest, twin_parts, twin_tag

            twin = str(component.get("source", "")).removeprefix(MINI_PREFIX)
            folders = twin_parts(twin)
            for folder in folders.values():
                read_manifest(folder)  # missing or unreadable twins: their own error, not a tag mismatch
            here = twin_tag(twin)
            if component["weights_tag"] != here:
                envs = " and ".join(PART_ENV[part] for part in folders)
                raise PipelineFolderError(
                    f"{path}: component {name} was exported with the mini twins {component['weights_tag']}, but "
                    f"this avgen has {here} ({', '.join(map(str, folders.values()))}); point {envs} at the twins it "
                    f"was made with, or export it again with export.include_frozen=true (the twins travel with it)")
    if not isinstance(index.get("config", CONFIG_FILE), str):
        raise PipelineFolderError(f"{path}: config is not a file name; export it again")
    return index


def read_weights(folder: Path, index: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every trained tensor of an export (by state-dict name), read from the components' safetensors files and
    checked against the SHA-256 the index records.

    Raises:
        PipelineFolderError: a component file is missing, altered (another hash) or names a path outside the folder.
    """
    from safetensors.torch import load as load_safetensors

    from avgen.pretrained import sha256_file

    weights: dict[str, torch.Tensor] = {}
    root = folder.resolve()
    for name, component in (index.get("components") or {}).items():
        if component.get("type") != "trained":
            continue
        path = (folder / component["file"]).resolve()
        if root not in path.parents:
            raise PipelineFolderError(f"{folder / INDEX_FILE}: component {name} names {component['file']}, "
                                      f"outside the folder")
        if not path.is_file():
            raise PipelineFolderError(f"{path}: missing (component {name} of {folder})")
        if component.get("sha256") and sha256_file(path) != component["sha256"]:
            raise PipelineFolderError(f"{path}: its SHA-256 differs from the one {INDEX_FILE} records; the file was "
                                      f"changed or truncated, export again")
        try:
            tensors = load_safetensors(path.read_bytes())
        except Exception as exc:  # safetensors raises its own error type for a bad header
            raise PipelineFolderError(f"{path}: not a readable safetensors file ({exc}); export again") from exc
        for key, value in tensors.items():
            weights[component["prefix"] + key] = value
    return weights


def frozen_config(folder: Path, index: Mapping[str, Any], model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` with each frozen part's source as this machine reads it: a copy inside the export
    (``included``) becomes its absolute path; hub ids, local paths and ``tiny:`` twins stay as written."""
    config = copy.deepcopy(model_config)
    root = folder.resolve()
    for name, component in (index.get("components") or {}).items():
        if component.get("type") != "frozen" or component.get("kind") != "included":
            continue
        path = (folder / component["source"]).resolve()
        if root not in path.parents and path != root:
            raise PipelineFolderError(f"{folder / INDEX_FILE}: component {name} names {component['source']}, "
                                      f"outside the folder")
        if not path.exists():
            raise PipelineFolderError(f"{path}: missing (frozen component {name}, copied in at export)")
        set_source(config, component["config_key"], str(path))
    return config


def resolve_folder(folder: str | os.PathLike) -> Path:
    """``folder`` when it exists; else, for a hub id (``user/model``), its snapshot in the local Hugging Face cache
    (never downloaded).

    Raises:
        PipelineFolderError: neither a folder nor a cached hub id (the message says how to get it).
    """
    path = Path(folder)
    if path.exists():
        return path
    text = str(folder)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text, local_files_only=True))
        except Exception as exc:  # huggingface_hub raises several types for "not cached"
            raise PipelineFolderError(f"{text}: no such folder, and not in the local Hugging Face cache "
                                      f"({type(exc).__name__}); avgen never downloads: run `huggingface-cli download "
                                      f"{text}` where there is network and copy the folder here") from exc
    raise PipelineFolderError(f"{text}: no such folder; give the folder written by python -m avgen export")


def from_pretrained(folder: str | os.PathLike, *, device: str | torch.device = "auto",
                    dtype: str | torch.dtype | None = None, tiny_dir: str | os.PathLike | None = None) -> AVPipeline:
    """The ready pipeline of an avgen export folder (``python -m avgen export``).

    Args:
        folder: the export folder (holding ``avgen_index.json``), or a hub id whose snapshot is in the local
            Hugging Face cache (an export uploaded as a model repository).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"`` ...
        dtype: the model's floating dtype (``None``: as stored, float32; e.g. ``torch.float16`` on a GPU).
        tiny_dir: where ``tiny:`` twins are written (default :func:`default_tiny_dir`).

    Returns:
        a :class:`JointPipeline`, :class:`TempoTokensPipeline` or :class:`VTALDMPipeline`.

    Raises:
        ConfigError: a device this machine does not have (before anything loads).
        PipelineFolderError: not an avgen export, or a missing / altered file.
        avgen.backbones.loader.PretrainedModelMissing: a frozen part the export references (by hub id or path)
            is not on this machine (the message says what to download and which key to set).
    """
    resolve_device(device)  # before the model is built
    folder = resolve_folder(folder)
    index = read_index(folder)
    config_path = folder / index.get("config", CONFIG_FILE)
    if folder.resolve() not in config_path.resolve().parents:
        raise PipelineFolderError(f"{folder / INDEX_FILE}: config names {index['config']}, outside the folder")
    try:
        model_config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise PipelineFolderError(f"{config_path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(model_config, dict):
        raise PipelineFolderError(f"{config_path}: not a model config (a JSON object); export again")
    if system_name(model_config) != index["system"]:
        raise PipelineFolderError(f"{config_path}: its system is not the index's {index['system']}")
    model_config = frozen_config(folder, index, model_config)
    model_config["tiny_dir"] = str(tiny_dir or default_tiny_dir())
    weights = read_weights(folder, index)
    model = build_system(model_config, weights, source=str(folder))
    return _placed(PIPELINES[index["system"]], model, device, dtype, index)


def pipeline_from_checkpoint(ckpt_path: str | os.PathLike, *, device: str | torch.device = "auto",
                             dtype: str | torch.dtype | None = None, ema: bool = True) -> AVPipeline:
    """The pipeline of a checkpoint written by ``fit`` (its config names the frozen parts; ``ema``: use the EMA
    weights when it holds them), without exporting first. Reading a Lightning checkpoint unpickles it: load only
    checkpoints you trust (exports are safetensors + JSON).

    Raises:
        FileNotFoundError: no such checkpoint. ValueError: not an avgen checkpoint.
    """
    from avgen.checkpoint import read_checkpoint

    resolve_device(device)  # before the checkpoint is read
    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt.get("avgen") or {}
    model_config = (meta.get("config") or {}).get("model")
    if not model_config:
        raise ValueError(f"{ckpt_path}: not an avgen checkpoint (no avgen.config.model)")
    weights = dict(ckpt["state_dict"])
    if ema and meta.get("ema"):
        weights.update(meta["ema"])
    name = system_name(model_config)
    model = build_system(model_config, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                         source=str(ckpt_path))
    model.run_config = meta["config"]
    info = {"format": INDEX_FORMAT, "system": name, "source": str(Path(ckpt_path).resolve()),
            "global_step": ckpt.get("global_step"), "ema": bool(ema and meta.get("ema"))}
    return _placed(PIPELINES[name], model, device, dtype, info)


def _placed(cls: type[AVPipeline], model, device, dtype, info) -> AVPipeline:
    device = resolve_device(device)
    dtype = _dtype(dtype)
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return cls(model, device=device, info=info)


__all__ = ["AVOutput", "AVPipeline", "INDEX_FILE", "INDEX_FORMAT", "JointPipeline", "PIPELINES", "SYSTEMS",
           "TempoTokensPipeline", "VTALDMPipeline", "from_pretrained", "pipeline_from_checkpoint"]
