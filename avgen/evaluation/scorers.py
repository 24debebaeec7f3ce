"""The metrics ``evaluate`` computes in its main process, one scorer class per metric, fed clip by clip.

Each scorer wraps a torchmetrics ``Metric`` of :mod:`avgen.metrics` and the frozen network it needs
(:mod:`avgen.encoders`); ``update`` returns the clip's own scores for ``per_clip.csv`` and raises
``ValueError`` for a clip it cannot score; ``result`` gives the value and its description for
``metrics.json``. AV-Align runs in worker processes instead (:func:`avgen.evaluation.processes.score_clip`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from avgen.data.feature_store import FeatureStore
from avgen.errors import ConfigError
from avgen.evaluation.processes import Processes, clip_durations, device_for
from avgen.evaluation.references import (
    PredCache,
    extractor_namespace,
    file_clip,
    generated_features,
    set_references,
    split_clips,
)
from avgen.media import uint8_to_unit_range
from avgen.samples import clip_prompt, load_clips, sample_source

log = logging.getLogger(__name__)


@dataclass
class BuildContext:
    """What a scorer is built from: the ``evaluate`` option blocks (``{block: mapping}``), the default
    prompt, the device, the reference (``evaluate.ref_dir``), this process's clips (``pred``) and all clips
    (``all_clips``, sorted); ``shared`` holds parts several scorers use (the PANNs classifier of ``is`` and ``kl``,
    the PaSST of ``fd_passt``, ``kl_passt`` and ``is_passt``)."""

    options: Mapping[str, Mapping[str, Any]]
    prompt: str | None
    dev: Any
    ref_dir: str | Path | None = None
    pred: list[Path] = field(default_factory=list)
    all_clips: list[Path] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)
    audio: str = "stream"  # evaluate.audio: which sound of a clip (and of a reference folder's clips) is scored

    def block(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name) or {})

    def panns(self) -> PannsLogits:
        """The PANNs CNN14 of ``evaluate.panns``, built once for ``is`` and ``kl``."""
        if "panns" not in self.shared:
            self.shared["panns"] = PannsLogits(self.block("panns"), self.dev)
        return self.shared["panns"]

    def passt(self, paired_metric: str | None = None) -> PasstScores:
        """The PaSST of ``evaluate.passt``, built once for ``fd_passt``, ``kl_passt`` and ``is_passt``; a paired
        metric (``paired_metric``) also gives it the references of ``evaluate.ref_dir``."""
        if "passt" not in self.shared:
            self.shared["passt"] = PasstScores(self.block("passt"), self.dev)
        shared = self.shared["passt"]
        if paired_metric and shared.references is None:
            shared.references = PairedReferences(self.ref_dir, self.pred, paired_metric, shared, self.audio)
        return shared

    def ms_clap(self, block: str):
        """The MS-CLAP 2023 of ``evaluate.<block>`` (``path``, ``text_model``), loaded once for ``clap_ms`` and
        ``pam`` when both blocks name the same files (``pam``'s default to ``clap_ms``'s)."""
        from avgen.encoders.ms_clap import load_ms_clap

        options = self.block(block)
        key = ("ms_clap", str(options.get("path")), str(options.get("text_model")))
        if key not in self.shared:
            self.shared[key] = load_ms_clap(options.get("path"), options.get("text_model"), f"evaluate.{block}.path",
                                            f"evaluate.{block}.text_model")
        return self.shared[key]
    def i3d(self) -> SharedI3D:
        """The I3D of ``evaluate.fvd``, built once for ``fvd`` and ``kvd`` (one forward pass per clip)."""
        if "i3d" not in self.shared:
            self.shared["i3d"] = SharedI3D(self.block("fvd"), self.dev)
        return self.shared["i3d"]


AUDIO_SUFFIXES = (".wav", ".flac", ".WAV", ".FLAC")  # the harness globs *.wav, *.flac (extract.py:54); + upper case


def harness_audio_file(path: Path, audio: np.ndarray, sr: int) -> tuple[Path, np.ndarray, int]:
    """(file read, waveform, rate) of a clip as av-benchmark reads it: ``<stem>.wav`` / ``.flac`` beside ``path``
    with all its channels, (C, S) float32 channels-first (``torchaudio.load``'s layout), else ``audio`` as
    :func:`~avgen.media.read_clip` decoded it, (S,) mono (the clip's own stream, else another audio file of its stem).
    Raises ``ValueError`` for an unreadable or non-finite file."""
    import soundfile as sf

    from avgen.media import audio_companion, check_finite, has_audio_stream

    companion = next((f for f in (path.with_suffix(s) for s in AUDIO_SUFFIXES) if f.is_file()), None)
    if companion is None:
        used = path if has_audio_stream(path) else (audio_companion(path) or path)
        return used, np.ascontiguousarray(audio, dtype=np.float32), sr
    try:
        wave, rate = sf.read(companion, dtype="float32", always_2d=True)
        check_finite(wave, str(companion))
    except Exception as exc:  # an unreadable companion fails this clip only
        raise ValueError(f"{companion.name}: {type(exc).__name__}: {exc}") from exc
    return companion, np.ascontiguousarray(wave.T), int(rate)


def known_options(options: dict, block: str, known: tuple[str, ...]) -> dict:
    """``options`` (the block ``evaluate.<block>``) when every key is one of ``known``.

    Raises:
        ConfigError: an unknown key, named with the known ones.
    """
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"evaluate.{block}: unknown keys {unknown}; known: {', '.join(known)}")
    return options


class Scorer:
    """One main-process metric fed clip by clip: ``update`` returns the clip's own scores for the per-clip
    CSV (``{column: value}``, or None for set-level metrics) and raises ``ValueError`` for a clip it
    cannot score (reported per clip); ``result`` gives (value, description for metrics.json).

    Class attributes say what the metric needs: ``needs_reference`` (compares with ``evaluate.ref_dir``),
    ``per_clip`` (each clip's score stands alone: ``filter`` can threshold it), ``block`` (its option
    block under ``evaluate``). :meth:`build` makes one from a :class:`BuildContext`; :data:`SCORERS` is the
    registry. Adding a metric: a subclass with ``name``, ``update``, ``result`` and ``build``, one line in
    :data:`SCORERS`, and its block in ``configs/evaluate/default.yaml``.
    """

    name: str = ""
    needs_reference: bool = False
    reference_set: bool = False  # compares with every clip of ref_dir (not a paired clip per generated one)
    per_clip: bool = False
    block: str | None = None

    @classmethod
    def build(cls, ctx: BuildContext) -> Scorer:
        raise NotImplementedError

    def update(self, path: Path, frames: np.ndarray, audio: np.ndarray, sr: int,
               fps: float | None = None) -> dict[str, float] | None:
        raise NotImplementedError

    def states(self) -> list:
        """The torchmetrics metrics whose states the processes of a distributed run reduce."""
        return [self.metric]

    def reference_user(self):
        """What takes this metric's reference features through the feature store
        (:func:`~avgen.evaluation.references.set_references`): the scorer itself when it needs references and
        follows the reference protocol (``reference_features`` and ``add_reference``; stored when it also has a
        ``feature_namespace``), else None; a metric whose references live in a shared part returns that."""
        protocol = hasattr(self, "reference_features") and hasattr(self, "add_reference")
        return self if self.needs_reference and protocol else None

    def feature_users(self) -> list:
        """The parts that extract this metric's features of generated clips with ``reference_features`` (and so can
        store them, ``evaluate.cache_pred``): the scorer itself when it has a ``feature_namespace``."""
        return [self] if hasattr(self, "feature_namespace") else []

    def result(self) -> tuple[float | None, dict]:
        raise NotImplementedError

    def values(self) -> tuple[dict[str, Any], dict]:
        """(``{metrics.json key: value}``, description): ``{name: value}`` of :meth:`result`; a metric
        reported under more than one key (``ib_score`` and ``ib_score_raw``) says so here."""
        value, info = self.result()
        return {self.name: value}, info


class CosineScorer(Scorer):
    """A :class:`~avgen.metrics.cosine.MeanCosine` metric: the mean of the clips it could score."""

    def result(self):
        scored = int(self.metric.count)
        return (float(self.metric.compute()) if scored else None), {**self.metric.describe(), "clips": scored}


class SemanticScorer(CosineScorer):
    """CLIPSIM (frames vs prompt) or CLAP score (audio vs prompt); the prompt is ``<stem>.txt``
    beside the clip, else ``evaluate.prompt``."""

    per_clip = True

    @classmethod
    def build(cls, ctx: BuildContext) -> SemanticScorer:
        return cls(cls.name, ctx.block(cls.name), ctx.prompt, ctx.dev)

    def __init__(self, name: str, options: dict, prompt: str | None, dev):
        from avgen.metrics.semantic import CLAPScore, CLIPSim

        options = dict(options)
        model_id = options.pop("model", None)
        self.name, self.prompt = name, prompt
        self.metric = (CLIPSim if name == "clipsim" else CLAPScore).from_pretrained(
            model_id, config_key=f"evaluate.{name}.model", **options).to(dev)

    def update(self, path, frames, audio, sr, fps=None):
        text = clip_prompt(path, self.prompt)
        if not text:
            raise ValueError(f"no prompt ({path.stem}.txt beside the clip, or evaluate.prompt)")
        if self.name == "clipsim":
            scores = self.metric.clip_scores([frames], [text])
        else:
            self.metric.sample_rate = sr  # the metric resamples to the model's rate
            scores = self.metric.clip_scores([np.ascontiguousarray(audio, dtype=np.float32)], [text])
        self.metric.add_scores(scores)
        return {self.name: float(scores[0])}


class CLIPSimScorer(SemanticScorer):
    """CLIPSIM: CLIP cosine of each frame with the prompt, averaged over the frames (``evaluate.clipsim``)."""

    name = block = "clipsim"


class CLAPScorer(SemanticScorer):
    """CLAP score: CLAP cosine of the audio with the prompt (``evaluate.clap``)."""

    name = block = "clap"


class ClapLaionScorer(CosineScorer):
    """av-benchmark's LAION-CLAP-Score (``evaluate.clap_laion``: ``path``, ``tokenizer``, ``seconds``): the cosine of
    the clip's audio with its caption (``<stem>.txt`` beside the clip, the harness's CSV ``caption``; else
    ``evaluate.prompt``), raw, with ``music_speech_audioset_epoch_15_esc_89.98.pt`` in ``ClapModel``
    (:class:`~avgen.metrics.semantic.LaionCLAPScore`). The clip's audio is the one ``evaluate`` decodes (already
    mono)."""

    name = block = "clap_laion"
    per_clip = True
    KNOWN = ("path", "tokenizer", "seconds")

    @classmethod
    def build(cls, ctx: BuildContext) -> ClapLaionScorer:
        return cls(ctx.block(cls.block), ctx.prompt, ctx.dev)

    def __init__(self, options: dict, prompt: str | None, dev):
        from avgen.encoders.laion_clap import load_laion_clap
        from avgen.metrics.semantic import LaionCLAPScore

        unknown = sorted(set(options) - set(self.KNOWN))
        if unknown:
            raise ConfigError(f"evaluate.clap_laion: unknown keys {unknown}; known: {', '.join(self.KNOWN)}")
        seconds = options.get("seconds", 8)
        self.prompt = prompt
        clap = load_laion_clap(options.get("path"), options.get("tokenizer"))
        self.metric = LaionCLAPScore(clap, seconds=None if seconds is None else float(seconds)).to(dev)

    def update(self, path, frames, audio, sr, fps=None):
        text = clip_prompt(path, self.prompt)
        if not text:
            raise ValueError(f"no caption ({path.stem}.txt beside the clip, or evaluate.prompt)")
        scores = self.metric.clip_scores([np.ascontiguousarray(audio, dtype=np.float32)], [text], sample_rate=sr)
        self.metric.add_scores(scores)
        return {self.name: float(scores[0])}


class ClapMsScorer(CosineScorer):
    """av-benchmark's MS-CLAP-Score (``evaluate.clap_ms``: ``path``, ``text_model``, ``seed``, ``crop``): the cosine of
    the clip's audio with its caption (``<stem>.txt`` beside the clip, the harness's CSV ``caption``; else
    ``evaluate.prompt``), raw, with ``CLAP_weights_2023.pth`` (:class:`~avgen.metrics.semantic.MsCLAPScore`). The
    audio is what msclap reads, the *file*: ``<stem>.wav`` / ``.flac`` beside the clip with all its channels (they
    are concatenated, a harness quirk), whatever ``evaluate.audio`` says; without one the clip's decoded (mono) audio
    stands in, which the harness never reads. ``per_clip.csv`` records the file per clip (``clap_ms_audio``)."""

    name = block = "clap_ms"
    per_clip = True
    KNOWN = ("path", "text_model", "seed", "crop")

    @classmethod
    def build(cls, ctx: BuildContext) -> ClapMsScorer:
        options = known_options(ctx.block(cls.block), cls.block, cls.KNOWN)
        return cls(options, ctx.prompt, ctx.dev, clap=ctx.ms_clap(cls.block))

    def __init__(self, options: dict, prompt: str | None, dev, clap=None):
        from avgen.encoders.ms_clap import load_ms_clap
        from avgen.metrics.semantic import MsCLAPScore

        known_options(options, self.block, self.KNOWN)
        crop = options.get("crop", "random")
        seed = options.get("seed", 0)
        self.prompt = prompt
        clap = clap if clap is not None else load_ms_clap(options.get("path"), options.get("text_model"))
        self.metric = MsCLAPScore(clap, seed=0 if seed is None else int(seed), crop=crop).to(dev)

    def update(self, path, frames, audio, sr, fps=None):
        text = clip_prompt(path, self.prompt)
        if not text:
            raise ValueError(f"no caption ({path.stem}.txt beside the clip, or evaluate.prompt)")
        used, wave, rate = harness_audio_file(path, audio, sr)
        scores = self.metric.clip_scores([wave], [text], sample_rate=rate, stems=[path.stem])
        self.metric.add_scores(scores)
        return {self.name: float(scores[0]), "clap_ms_audio": used.name}


def shared_imagebind(shared: dict[str, Any] | None, path, config_key: str, sizes: Mapping[str, Any], dev):
    """The :class:`~avgen.encoders.imagebind.ImageBindAV` of file ``path`` with ``sizes``, loaded once per
    ``shared`` (:attr:`BuildContext.shared`): ``imagebind``, ``ib_score`` and ``javis_sync`` name the same file
    by default. Raises what :func:`~avgen.encoders.imagebind.load_imagebind` raises (naming ``config_key``)."""
    from avgen.data.feature_store import canonical_json
    from avgen.encoders.imagebind import load_imagebind

    where = None if path is None else str(Path(path).absolute())
    key = "imagebind:" + canonical_json({"path": where, "sizes": dict(sizes)})
    store = {} if shared is None else shared
    if key not in store:
        store[key] = load_imagebind(path, config_key, **dict(sizes)).to(dev)
    return store[key]


class ImageBindScorer(CosineScorer):
    """ImageBind audio-video score: cos(ImageBind audio embedding, vision embedding) per clip, at the
    clip's own frame rate (:mod:`avgen.metrics.imagebind`). ``evaluate.imagebind`` holds ``path`` and,
    for tests, :class:`~avgen.encoders.imagebind.ImageBindAV` sizes."""

    name = block = "imagebind"
    per_clip = True

    @classmethod
    def build(cls, ctx: BuildContext) -> ImageBindScorer:
        return cls(ctx.block("imagebind"), ctx.dev, ctx.shared)

    def __init__(self, options: dict, dev, shared: dict[str, Any] | None = None):
        from avgen.metrics.imagebind import ImageBindScore

        options = dict(options)
        model = shared_imagebind(shared, options.pop("path", None), "evaluate.imagebind.path", options, dev)
        self.metric = ImageBindScore(model).to(dev)

    def update(self, path, frames, audio, sr, fps=None):
        scores = self.metric.clip_scores([frames], [np.ascontiguousarray(audio, dtype=np.float32)], sample_rate=sr,
                                         fps=fps)
        self.metric.add_scores(scores)
        return {self.name: float(scores[0])}


class IBScoreScorer(CosineScorer):
    """IB-score as the video-to-audio benchmark harness computes it (av-benchmark@050a5cd;
    :class:`~avgen.metrics.imagebind.IBScore`): per clip, cos(ImageBind vision embedding of the clip's
    video at ``fps`` (0.5), ImageBind audio embedding of its generated audio), averaged over clips.

    ``evaluate.ib_score`` holds ``path`` (``imagebind_huge.pth``), ``seconds`` (8: the harness's
    ``--audio_length``, MMAudio's setting), ``fps`` (0.5), ``scale`` (100) and, for tests,
    :class:`~avgen.encoders.imagebind.ImageBindAV` sizes.

    - Video: the generated clip's own video stream, decoded again at ``fps`` by
      :func:`~avgen.media.decode_video` (FFmpeg's ``fps`` filter slots, as the harness's
      ``StreamingMediaDecoder(frame_rate=0.5)``: slot k shows the last frame whose time rounds to
      ≤ k / fps, so 0.96, 2.96, 4.96, 6.96 s for 25 fps), first ``int(fps · seconds)`` frames
      (4 for 8 s; ``av_bench/data/video_dataset.py:40,64-101@050a5cd``). The harness reads the *input*
      (ground-truth) video; in a folder ``sample`` wrote it is the same stream, copied. A clip with fewer
      frames is reported in ``failures`` (the harness drops it: ``video_dataset.py:83-86,121-126``).
    - Audio: ``<stem>.wav`` / ``<stem>.flac`` beside the clip when present, its first channel as the
      harness's ``kaldi.fbank`` reads it (the harness scores the raw generated files,
      ``av_bench/extract.py:54-55``), else the clip's own audio stream as decoded (mono mix, maybe
      AAC); the whole file, not cut to ``seconds`` (``audio_dataset.py:166-169``). ``per_clip.csv``
      column ``ib_score_audio`` names the file read.

    ``metrics.json`` gets ``ib_score`` = ``scale`` × mean cosine (the papers' ×100) and
    ``ib_score_raw`` = the mean cosine (the harness's ``IB-Score``); ``per_clip.csv`` has the raw
    cosine per clip (``ib_score_raw``).

    Where avgen departs from the harness: the video and the audio of a pair are the same clip's (the
    harness pairs GT-video features with predicted-audio features by ``clean_sample_name``,
    ``av_bench/utils.py:7-41,85-105``); the harness's ``VideoDataset`` also decodes 25 fps for DeSync and
    drops a video with fewer than ``int(25 · seconds)`` frames for both scores, so a 7.0–7.98 s clip it
    drops is scored here (4 frames at 0.5 fps need ≥ 7 s); a stereo file's sub-clip mean is taken over
    channel 0 only (the harness: over all channels; Kaldi's per-frame DC removal makes this a float-
    rounding difference); the cosine is taken in float64; without a wav/flac the mp4's (maybe AAC)
    stream stands in, which the harness never reads.
    """

    name = block = "ib_score"
    per_clip = True

    @classmethod
    def build(cls, ctx: BuildContext) -> IBScoreScorer:
        return cls(ctx.block("ib_score"), ctx.dev, ctx.shared)

    def __init__(self, options: dict, dev, shared: dict[str, Any] | None = None):
        from avgen.media import as_fps
        from avgen.metrics.imagebind import IBScore

        options = dict(options)
        path = options.pop("path", None)
        self.seconds, scale = float(options.pop("seconds", 8)), float(options.pop("scale", 100))
        try:
            self.fps = as_fps(options.pop("fps", 0.5))
        except ValueError as exc:
            raise ConfigError(f"evaluate.ib_score.fps: {exc}") from exc
        self.num_frames = int(float(self.fps) * self.seconds)  # the harness's int(_IMAGEBIND_FPS * duration_sec)
        if self.num_frames < 2:
            raise ConfigError(f"evaluate.ib_score: fps={float(self.fps)} x seconds={self.seconds} gives "
                              f"{self.num_frames} frame(s); the score pairs consecutive frames, so it needs at least "
                              f"2 (the harness's 8 s at 0.5 fps gives 4): raise evaluate.ib_score.seconds")
        model = shared_imagebind(shared, path, "evaluate.ib_score.path", options, dev)
        self.metric = IBScore(model, scale=scale).to(dev)

    def audio(self, path: Path, audio: np.ndarray, sr: int) -> tuple[Path, np.ndarray, int]:
        """(file read, mono waveform, rate): the first channel of ``<stem>.wav`` / ``.flac`` beside ``path``,
        else ``audio`` as :func:`~avgen.media.read_clip` decoded it (:func:`harness_audio_file`)."""
        used, wave, rate = harness_audio_file(path, audio, sr)
        return used, np.ascontiguousarray(wave[0] if wave.ndim == 2 else wave), rate

    def update(self, path, frames, audio, sr, fps=None):
        from avgen.media import MediaError, decode_video

        try:
            video, _ = decode_video(path, fps=self.fps, num_frames=self.num_frames)
        except MediaError as exc:
            raise ValueError(f"needs the first {self.num_frames} frames at {float(self.fps):g} fps (evaluate.ib_score."
                             f"seconds={self.seconds:g}; av-benchmark drops such a clip): {exc}") from exc
        source, wave, rate = self.audio(path, audio, sr)
        scores = self.metric.clip_scores([self.metric.views(video)], [wave], sample_rate=rate)
        self.metric.add_scores(scores)
        return {"ib_score_raw": float(scores[0]), "ib_score_audio": source.name}

    def values(self):
        scored = int(self.metric.count)
        raw = float(self.metric.compute()) if scored else None
        view_count = self.metric.model.num_crops * (self.num_frames - 1)
        info = {**self.metric.describe(), "clips": scored, "fps": float(self.fps), "seconds": self.seconds,
                "video": f"the clip's own video stream at {float(self.fps):g} fps (FFmpeg fps-filter slots), first "
                         f"int(fps x seconds) = {self.num_frames} frames, fewer: a failure; bicubic antialiased uint8 "
                         f"resize to short side {self.metric.model.image_size}, {self.metric.model.num_crops} crops x "
                         f"{self.num_frames - 1} consecutive pairs = {view_count} views, embeddings averaged",
                "audio": "<stem>.wav/.flac beside the clip (first channel) when present, else the clip's audio "
                         "stream (mono mix); whole file, ImageBind's audio transform (16 kHz, 3 x 2 s); file read "
                         "per clip in per_clip.csv ib_score_audio",
                "length_rule": f"video: first {self.num_frames} frames at {float(self.fps):g} fps, not padded; "
                               f"audio: whole file",
                "scaling": f"ib_score = {self.metric.scale:g} x mean cosine (as papers print it); ib_score_raw and "
                           f"per_clip.csv ib_score_raw = raw cosine (the harness's IB-Score)"}
        return {self.name: raw * self.metric.scale if scored else None, "ib_score_raw": raw}, info


class DeSyncScorer(Scorer):
    """DeSync: |audio-visual offset| in seconds predicted by Synchformer on the first and the last 4.8 s of
    each clip, as av-benchmark computes it (:mod:`avgen.metrics.desync`). The video is decoded again at
    25 fps (:func:`avgen.media.decode_video`, FFmpeg's fps-filter rule) and cut to ``seconds``; the audio is
    the clip's, mono, resampled to 16 kHz and cut to ``seconds`` (no DC removal). Clips shorter than
    ``seconds`` are reported, not scored (the harness drops them). ``evaluate.desync`` holds ``path``,
    ``seconds`` and, for tests, :class:`~avgen.encoders.synchformer.Synchformer` sizes."""

    name = block = "desync"
    per_clip = True

    @classmethod
    def build(cls, ctx: BuildContext) -> DeSyncScorer:
        return cls(ctx.block("desync"), ctx.dev)

    def __init__(self, options: dict, dev):
        from avgen.encoders.synchformer import load_synchformer
        from avgen.metrics.desync import DeSync

        options = dict(options)
        self.seconds = float(options.pop("seconds", 8))
        self.model = load_synchformer(options.pop("path", None), config_key="evaluate.desync.path", **options).to(dev)
        self.metric = DeSync().to(dev)
        self.dev = dev

    def update(self, path, frames, audio, sr, fps=None):
        from avgen.encoders.synchformer import VIDEO_FPS, sync_audio, sync_audio_segments, sync_video_segments
        from avgen.media import MediaError, decode_video
        from avgen.metrics.desync import desync_offsets

        need = int(VIDEO_FPS * self.seconds)  # the harness's int(25 · duration) frames (video_dataset.py:41)
        try:
            video, _ = decode_video(path, fps=VIDEO_FPS, num_frames=need)
        except MediaError as exc:  # too short (or unreadable) at 25 fps: this clip only
            raise ValueError(f"{exc} (evaluate.desync.seconds={self.seconds:g}: fewer than {need} frames)") from exc
        wave = sync_audio(audio, sr, self.seconds).to(self.dev)
        first, last = desync_offsets(self.model, sync_video_segments(video[:need], self.model.image_size).to(self.dev),
                                     sync_audio_segments(wave, self.model.n_mels))
        self.metric.update(first, last)
        return {"desync": (abs(first) + abs(last)) / 2, "desync_first": first, "desync_last": last}

    def result(self):
        count = int(self.metric.count)
        info = {**self.model.describe(), "protocol": "av-benchmark@050a5cd", "harness_key": "DeSync",
                "seconds": self.seconds, "windows": "first and last 14 segments (4.8 s)", "offsets": count,
                "sign": "positive: audio early (Synchformer's a_start = v_start + offset)"}
        return (float(self.metric.compute()) if count else None), info


VIDEO_INPUT = {"input": "decoded frames (F, H, W, 3) uint8 at the clip's own rate, to [-1, 1] float32"}  # fvd, kvd


class FrechetScorer(Scorer):
    """FVD (I3D on video) or FAD (VGGish or PANNs CNN14's embedding on 16 kHz audio, or CLAP's embedding
    on 48 kHz audio) against reference statistics, which are computed from the reference clips' features in
    the feature store (:func:`~avgen.evaluation.references.set_references`; one ``features`` row block (N, D)
    float32 per clip)."""

    needs_reference = reference_set = True
    min_references = 2  # a covariance

    @classmethod
    def build(cls, ctx: BuildContext) -> FrechetScorer:
        return cls(cls.name, ctx.block(cls.name), ctx.dev)

    def __init__(self, name: str, options: dict, dev):
        import torch

        from avgen.encoders.registry import build_extractor
        from avgen.metrics.frechet import FrechetDistance

        options = dict(options)
        self.name, self.dev, self.torch = name, dev, torch
        self.sample_rate = int(options.pop("sample_rate", 16000))
        kind = options.pop("extractor", "vggish")
        panns_path = options.pop("panns_path", None)
        clap_model = options.pop("clap_model", None)
        if kind == "clap":
            from avgen.metrics.semantic import ClapEmbedding, CLAPScore

            clap_options = {k: options.pop(k) for k in list(options) if k not in ("vggish_path", "vggish_pca_path")}
            extractor = ClapEmbedding(CLAPScore.from_pretrained(clap_model, config_key="evaluate.fad.clap_model",
                                                                **clap_options))
            self.sample_rate = extractor.sample_rate  # one resampling, straight to CLAP's rate
        elif kind == "panns":
            from avgen.encoders.panns import Cnn14Embedding, load_cnn14

            options.pop("vggish_path", None)
            options.pop("vggish_pca_path", None)
            extractor = Cnn14Embedding(load_cnn14(panns_path, config_key=f"evaluate.{name}.panns_path", **options))
        elif kind == "vggish":
            extractor = build_extractor("vggish", options.pop("vggish_path", None),
                                        config_key="evaluate.fad.vggish_path",
                                        pca_config_key="evaluate.fad.vggish_pca_path",
                                        pca_path=options.pop("vggish_pca_path", None), **options)
        else:
            raise ConfigError(f"evaluate.fad.extractor={kind!r}: expected vggish, panns or clap")
        self.extractor = extractor.to(dev)
        self.reference_metric = FrechetDistance(num_features=self.extractor.num_features).to(dev)
        self.metric = None
        self.reference = None

    def model_input(self, frames: np.ndarray, audio: np.ndarray, sr: int):
        torch = self.torch
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.dev)
        if sr != self.sample_rate:
            import torchaudio

            wave = torchaudio.functional.resample(wave, sr, self.sample_rate)
        return wave[None]

    def preprocessing(self) -> dict:
        """What is done to a clip before the extractor (part of the feature-store namespace)."""
        if self.name == "fvd":
            return dict(VIDEO_INPUT)
        return {"input": f"mono float32 audio, resampled to {self.sample_rate} Hz by torchaudio.functional.resample "
                         f"(default sinc interpolation)"}

    def feature_namespace(self) -> dict:
        return extractor_namespace(self.extractor, self.preprocessing())

    def reference_features(self, frames, audio, sr) -> dict[str, np.ndarray]:
        """``{"features": (N, D) float32}`` of one clip (N = 1, or one row per 0.96 s example for per-example VGGish).

        Raises:
            ValueError: a clip the extractor cannot take, or features of another width.
        """
        torch = self.torch
        with torch.no_grad(), torch.autocast(device_type=torch.device(self.dev).type, enabled=False):
            feats = self.extractor(self.model_input(frames, audio, sr))
        if feats.ndim != 2 or feats.shape[1] != self.extractor.num_features:
            raise ValueError(f"features must be (N, {self.extractor.num_features}), got {tuple(feats.shape)}")
        return {"features": feats.detach().to("cpu", torch.float32).numpy()}

    def add_reference(self, features: dict[str, np.ndarray]) -> None:
        self.reference_metric.update(self.torch.from_numpy(features["features"]), real=True)

    def update_reference(self, frames, audio, sr) -> None:
        self.add_reference(self.reference_features(frames, audio, sr))

    def reduce_references(self, procs: Processes) -> None:
        """Sum the processes' reference states, then fix the reference statistics."""
        procs.reduce(self.reference_metric)
        self.set_reference(self.reference_metric.stats(real=True))

    def set_reference(self, stats) -> None:
        from avgen.metrics.frechet import FrechetDistance

        self.reference = stats
        self.metric = FrechetDistance(reference=stats).to(self.dev)

    def update(self, path, frames, audio, sr, fps=None):
        features = generated_features(self, path, frames, audio, sr)
        self.metric.update(self.torch.from_numpy(features["features"]), real=False)

    def result(self):
        # the statistics count feature rows: one per clip, or one per 0.96 s example for VGGish's per-example FAD
        rows = "reference_examples" if getattr(self.extractor, "per_example", False) else "reference_clips"
        return float(self.metric.compute()), {**self.extractor.describe(), rows: int(self.reference.count)}


class VGGishFramesScorer(FrechetScorer):
    """FD-VGG of av-benchmark (``av_bench/evaluate.py:121-127@050a5cd``): the Fréchet distance over every 0.96 s
    VGGish frame embedding (``VGGish(postprocess=False)`` without its last ReLU, no PCA:
    ``av_bench/vggish/vggish.py:19-21,49-65@050a5cd``) of the generated clips against those of **all** clips of
    ``evaluate.ref_dir`` (unpaired). Input: :class:`~avgen.encoders.audio_input.AudioInput` at 16 kHz — mono, DC
    removed over the whole file, ``torchaudio.transforms.Resample``, cut to ``seconds`` (8) and never padded
    (``av_bench/extract.py:60,79-91@050a5cd``): an 8-s clip gives 8 frames; a clip shorter than one frame
    (15 600 samples, 0.975 s) is reported as a failure. The reference features are stored in a namespace that holds
    the input rule and the extractor's settings, so they are never shared with ``fad``'s."""

    name = block = "fd_vggish_frames"
    FIXED = {"per_example": True, "embedding_relu": False}  # the harness's extractor; not configurable

    def __init__(self, name: str, options: dict, dev):
        import torch

        from avgen.encoders.audio_input import AudioInput
        from avgen.encoders.registry import build_extractor
        from avgen.metrics.frechet import FrechetDistance

        options = dict(options)
        fixed = sorted(set(options) & {*self.FIXED, "pca_path", "sample_rate"})
        if fixed:
            raise ConfigError(f"evaluate.{self.block}.{fixed[0]}: fixed by av-benchmark's FD-VGG (every 0.96 s frame, "
                              f"no final ReLU, no PCA, 16 kHz); remove it, or use evaluate.fad for another setting")
        seconds = options.pop("seconds", 8)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ConfigError(f"evaluate.{self.block}.seconds={seconds!r}: expected the positive length in seconds "
                              f"the audio is cut to (av-benchmark's audio_length; MMAudio: 8)")
        self.name, self.dev, self.torch = name, dev, torch
        self.sample_rate = 16000
        self.audio_input = AudioInput(self.sample_rate, seconds=float(seconds), remove_dc=True)
        extractor = build_extractor("vggish", options.pop("vggish_path", None),
                                    config_key=f"evaluate.{self.block}.vggish_path", **self.FIXED, **options)
        self.extractor = extractor.to(dev)
        vggish = self.extractor
        self.min_samples = vggish.window_length + (vggish.example_frames - 1) * vggish.hop_length
        self.reference_metric = FrechetDistance(num_features=self.extractor.num_features).to(dev)
        self.metric = None
        self.reference = None

    def model_input(self, frames: np.ndarray, audio: np.ndarray, sr: int):
        wave = self.audio_input(audio, sr)
        if len(wave) < self.min_samples:
            raise ValueError(f"{len(wave)} samples at {self.sample_rate} Hz is shorter than one VGGish frame "
                             f"({self.min_samples} samples, 0.96 s of frames)")
        return wave.to(self.dev)[None]

    def preprocessing(self) -> dict:
        return {"input": self.audio_input.describe()}

    def result(self):
        value, info = super().result()
        return value, {**info, "protocol": "av-benchmark@050a5cd (av_bench/evaluate.py:121-127)",
                       "harness_key": "FD-VGG", "reference": "all clips of ref_dir (unpaired)",
                       "sample_rate": self.sample_rate, "length_rule": self.audio_input.rule(),
                       "input": self.audio_input.describe(), "unit": "one sample per 0.96 s VGGish frame",
                       "scaling": 1}


# ------------------------------------------------------------------------------ classifier scores
class SharedI3D:
    """The I3D of ``evaluate.fvd`` (:class:`~avgen.encoders.video_classifiers.I3DFeatures`: ``i3d_path``,
    ``num_frames``, ``frame_sampling``, ``input_mode``, ...) shared by ``fvd`` and ``kvd``: :meth:`features`
    runs it once per decoded clip, whichever metric asks first."""

    def __init__(self, options: dict, dev):
        from avgen.encoders.registry import build_extractor

        options = dict(options)
        self.extractor = build_extractor("i3d", options.pop("i3d_path", None), config_key="evaluate.fvd.i3d_path",
                                         **options).to(dev)
        self.dev = dev
        self._last: tuple[np.ndarray, Any] | None = None

    def features(self, frames: np.ndarray):
        """I3D features (1, D) float64 of one clip's frames (F, H, W, 3) uint8; the same array object (one
        decoded clip handed to every scorer) is computed once, and so is its failure (the array is held, so its
        identity is not reused).

        Raises:
            ValueError: a clip the extractor cannot take (too few frames, ...).
        """
        import torch

        if self._last is None or self._last[0] is not frames:
            try:
                with torch.no_grad(), torch.autocast(device_type=torch.device(self.dev).type, enabled=False):
                    feats = self.extractor(uint8_to_unit_range(frames, self.dev)[None])
                self._last = (frames, feats.detach().to(torch.float64))
            except ValueError as exc:  # raised again for every metric that asks, without another pass
                self._last = (frames, exc)
        if isinstance(self._last[1], ValueError):
            raise self._last[1]
        return self._last[1]


class FVDScorer(FrechetScorer):
    """FVD: Fréchet distance of I3D features (``evaluate.fvd``; the I3D is :class:`SharedI3D`)."""

    name = block = "fvd"

    @classmethod
    def build(cls, ctx: BuildContext) -> FVDScorer:
        return cls(ctx.i3d())

    def __init__(self, i3d: SharedI3D):
        import torch

        from avgen.metrics.frechet import FrechetDistance

        self.i3d, self.extractor, self.dev, self.torch = i3d, i3d.extractor, i3d.dev, torch
        self.reference_metric = FrechetDistance(num_features=self.extractor.num_features).to(self.dev)
        self.metric = None
        self.reference = None

    def reference_features(self, frames, audio, sr) -> dict[str, np.ndarray]:
        """``{"features": (1, D) float32}``: :class:`SharedI3D`'s features of one clip's frames (F, H, W, 3) uint8,
        the entry ``kvd`` shares (same namespace).

        Raises:
            ValueError: a clip the I3D cannot take.
        """
        return {"features": self.i3d.features(frames).to("cpu", self.torch.float32).numpy()}

    def set_reference(self, stats) -> None:
        from avgen.metrics.frechet import FrechetDistance

        self.reference = stats
        self.metric = FrechetDistance(num_features=self.extractor.num_features, reference=stats).to(self.dev)


class FADScorer(FrechetScorer):
    """FAD: Fréchet distance of VGGish, PANNs or CLAP audio embeddings (``evaluate.fad``)."""

    name = block = "fad"


class PannsLogits:
    """The PANNs CNN14 shared by ``is`` and ``kl``: clips go in as audioldm_eval prepares them
    (:class:`~avgen.metrics.classifier_scores.ClassifierInput`), and the logits of the last generated
    clip are kept, so both metrics use one forward pass per clip. ``evaluate.panns`` holds ``path``,
    ``splits`` (for ``is``) and, for tests, :class:`~avgen.encoders.panns.Cnn14` arguments (``channels``, ...)."""

    def __init__(self, options: dict, dev):
        import inspect

        from avgen.encoders.panns import Cnn14, load_cnn14
        from avgen.metrics.classifier_scores import ClassifierInput

        architecture = {k: v for k, v in options.items() if k not in ("path", "splits", "shuffle_seed")}
        known = list(inspect.signature(Cnn14).parameters)
        unknown = sorted(set(architecture) - set(known))
        if unknown:
            raise ConfigError(f"evaluate.panns: unknown keys {unknown}; known: path, splits, shuffle_seed, "
                              f"{', '.join(known)}")
        self.model = load_cnn14(options.get("path"), config_key="evaluate.panns.path", **architecture).to(dev)
        self.prepare = ClassifierInput(sample_rate=self.model.sample_rate)
        self.dev = dev
        self._last: tuple[str, Any] | None = None

    def classify(self, audio: np.ndarray, sr: int):
        """Logits (1, classes) of one clip."""
        import torch

        with torch.no_grad():
            return self.model(self.prepare(audio, sr).to(self.dev)[None])["logits"]

    def feature_namespace(self) -> dict:
        return extractor_namespace(self.model, {"input": self.prepare.describe(),
                                                "output": "logits (fc_audioset, pre-sigmoid)"})

    def reference_features(self, frames, audio: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        """``{"logits": (1, classes) float32}`` of one clip's audio (S,) at ``sr`` Hz (``frames`` unused)."""
        import torch

        return {"logits": self.classify(audio, sr).detach().to("cpu", torch.float32).numpy()}

    def generated(self, path: Path, audio: np.ndarray, sr: int):
        """Logits (1, classes) of a generated clip, computed once whichever metric asks first (stored with
        ``evaluate.cache_pred``)."""
        import torch

        if self._last is None or self._last[0] != str(path):
            logits = generated_features(self, path, None, audio, sr)["logits"]
            self._last = (str(path), torch.from_numpy(logits).to(self.dev))
        return self._last[1]

    def describe(self) -> dict:
        return {**self.model.describe(), "input": self.prepare.describe(),
                "output": "logits (fc_audioset, pre-sigmoid)"}


class SplitInceptionScorer(Scorer):
    """An Inception Score over the generated clips in file-name order (so the parts do not depend on how
    clips were spread over processes): ``splits`` parts after a ``RandomState(shuffle_seed)`` shuffle."""

    def __init__(self, splits: int, shuffle_seed: int | None, pred: list[Path], splits_key: str, convention: str):
        from avgen.metrics.classifier_scores import InceptionScore

        if len(pred) < int(splits):
            raise ConfigError(f"evaluate.metrics '{self.name}' with {splits_key}={splits} needs at least {splits} "
                              f"clips; evaluate.pred_dir holds {len(pred)}: lower {splits_key} ({convention} uses "
                              f"10) or score more clips")
        self.metric = InceptionScore(splits=int(splits), shuffle_seed=shuffle_seed)
        self.position = {p.name: i for i, p in enumerate(sorted(pred))}

    def add(self, path: Path, logits) -> None:
        import torch

        self.metric.update(logits, torch.tensor([self.position[path.name]]))

    def describe(self) -> dict:
        raise NotImplementedError

    def result(self):
        info = {**self.describe(), "splits": self.metric.splits, "shuffle_seed": self.metric.shuffle_seed,
                "clips": self.metric.num_clips()}
        if info["clips"] < self.metric.splits:  # fewer readable clips than splits: the other metrics still count
            return None, {**info, "error": f"{info['clips']} clips scored, fewer than splits={self.metric.splits}"}
        return {k: float(v) for k, v in self.metric.compute().items()}, info


class InceptionScorer(SplitInceptionScorer):
    """Audio Inception Score (audioldm_eval: PANNs CNN14 softmax, 10 splits, shuffle seed 2020)."""

    name = "is"
    block = "panns"

    @classmethod
    def build(cls, ctx: BuildContext) -> InceptionScorer:
        return cls(ctx.panns(), ctx.block("panns"), ctx.all_clips)

    def __init__(self, classifier: PannsLogits, options: dict, pred: list[Path]):
        super().__init__(options.get("splits", 10), options.get("shuffle_seed", 2020), pred,
                         "evaluate.panns.splits", "audioldm_eval")
        self.classifier = classifier

    def feature_users(self) -> list:
        return [self.classifier]

    def update(self, path, frames, audio, sr, fps=None):
        self.add(path, self.classifier.generated(path, audio, sr))

    def describe(self) -> dict:
        return {**self.classifier.describe(), "posterior": "softmax over the logits"}


class PairedReferences:
    """The reference clip of each generated clip, for the paired metrics (``kl``, ``kl_passt``, ``fd_passt``):

    - ``evaluate.ref_dir`` a folder: the file of the same stem, any video or audio extension in any case
      (``<stem>.mp4``, ``.MOV``, ``.wav``, ...); a video's sound is read as for a generated clip (its audio
      stream, else the audio file of its stem), and a video is taken before an audio file of the same stem —
      with ``audio="file"`` (``evaluate.audio``) the audio file first, as av-benchmark reads raw audio files;
    - ``evaluate.ref_dir`` a shard split (``manifest.json``): the clip whose key the ``sample`` command
      recorded as ``source`` in ``<stem>.json`` beside the generated clip (the data clip whose caption
      or audio it was made from); only its audio is decoded.

    Several generated clips may name one reference: each pair counts it again (as av-benchmark's
    ``unroll_paired_dict``, ``av_bench/utils.py:85-105@050a5cd``, which pairs by a cleaned file name instead).
    ``metric`` names the metric in configuration errors.

    A paired reference user of :func:`~avgen.evaluation.references.set_references`: the references of the generated
    clips ``pred`` (this process's) are looked up in the feature store under ``extractor``'s namespace
    (``extractor.feature_namespace()``, ``extractor.reference_features``), and only the missing ones decoded."""

    paired = True

    def __init__(self, ref_dir, pred: list[Path], metric: str, extractor, audio: str = "stream"):
        from avgen.data.shards import MANIFEST

        self.folder, self.name, self.audio = Path(ref_dir), metric, audio
        self.audio_files_first = audio == "file"
        self.pred, self.extractor = pred, extractor
        if not self.folder.is_dir():
            raise ConfigError(f"evaluate.ref_dir={ref_dir} is not a folder of reference clips or a shard split "
                              f"for '{metric}'")
        self.split = (self.folder / MANIFEST).exists()
        self.by_stem: dict[str, Path] = {}
        if self.split:
            self.wanted = {s for s in (sample_source(p) for p in pred) if s}
            if pred and not self.wanted:
                raise ConfigError(f"evaluate.metrics '{metric}' with the shard split evaluate.ref_dir={self.folder} "
                                  f"pairs each generated clip with the split's clip named as 'source' in <stem>.json "
                                  f"beside it (the sample command writes it), but no clip in evaluate.pred_dir has "
                                  f"one; set evaluate.ref_dir to a folder of references with the stems of the clips "
                                  f"instead")
        else:
            self.by_stem = self._index_folder()
        self.found: dict[str, dict[str, np.ndarray] | ValueError] = {}

    def _index_folder(self) -> dict[str, Path]:
        """The reference file of each stem in the folder (one listing, not one per generated clip)."""
        from avgen.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES

        media = [p for p in self.folder.iterdir()
                 if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES | AUDIO_SUFFIXES]
        by_stem: dict[str, Path] = {}
        for p in sorted(media, key=lambda p: ((p.suffix.lower() in VIDEO_SUFFIXES) == self.audio_files_first, p.name)):
            by_stem.setdefault(p.stem, p)
        return by_stem

    def feature_namespace(self) -> dict:
        return self.extractor.feature_namespace()

    def reference_features(self, frames, audio, sr) -> dict[str, np.ndarray]:
        return self.extractor.reference_features(frames, audio, sr)

    def paired_references(self) -> list:
        """The reference clips the generated clips name (each once), audio only."""
        if self.split:
            return split_clips(self.folder, audio_only=True, keys=self.wanted) if self.wanted else []
        named = sorted({self.by_stem[p.stem] for p in self.pred if p.stem in self.by_stem})
        clips = []
        for path in named:
            try:
                clips.append(file_clip(path, self.audio, audio_only=True))
            except OSError as exc:  # gone since the listing: its pairs fail
                self.found[path.name] = ValueError(f"reference {path.name}: {exc}")
        return clips

    def add_paired_reference(self, name: str, features: dict[str, np.ndarray] | ValueError) -> None:
        self.found[name] = features

    def features(self, path: Path) -> dict[str, np.ndarray]:
        """The features of the reference of generated clip ``path`` (``extractor.reference_features``).

        Raises:
            ValueError: no reference, or an unreadable one (reported for this clip only).
        """
        if self.split:
            key = sample_source(path)
            if not key:
                raise ValueError(f"no source key in {path.with_suffix('.json').name} to find its reference in the "
                                 f"shard split evaluate.ref_dir={self.folder}")
            if key not in self.found:
                raise ValueError(f"source {key} is not a clip of the shard split evaluate.ref_dir={self.folder}")
            found = self.found[key]
        else:
            reference = self.by_stem.get(path.stem)
            if reference is None:
                raise ValueError(f"no reference {path.stem}.mp4 or {path.stem}.wav (or another video or audio file of "
                                 f"that stem) in evaluate.ref_dir={self.folder}")
            found = self.found[reference.name]
        if isinstance(found, ValueError):
            raise found
        return found


class KLScorer(Scorer):
    """Mean KL(reference || generated) of CNN14 outputs, each generated clip paired with its reference
    (:class:`PairedReferences`). A clip without its reference is reported, not fatal."""

    name = "kl"
    block = "panns"
    needs_reference = True
    per_clip = True

    @classmethod
    def build(cls, ctx: BuildContext) -> KLScorer:
        return cls(ctx.panns(), ctx.ref_dir, ctx.pred, ctx.audio)

    def __init__(self, classifier: PannsLogits, ref_dir, pred: list[Path], audio: str = "stream"):
        from avgen.metrics.classifier_scores import MeanKL

        self.references = PairedReferences(ref_dir, pred, self.name, classifier, audio)
        self.classifier, self.metric = classifier, MeanKL()

    def reference_user(self):
        return self.references

    def feature_users(self) -> list:
        return [self.classifier]

    def update(self, path, frames, audio, sr, fps=None):
        import torch

        reference = torch.from_numpy(self.references.features(path)["logits"]).to(self.classifier.dev)
        pair = self.metric.pair_divergences(self.classifier.generated(path, audio, sr), reference)
        self.metric.add_pairs(pair)
        return {f"kl_{variant}": float(value[0]) for variant, value in pair.items()}

    def result(self):
        pairs = int(self.metric.count)
        info = {**self.classifier.describe(), "pairs": pairs, "eps": self.metric.eps,
                "direction": "KL(reference || generated)", "ref_dir": str(self.references.folder.absolute())}
        return ({k: float(v) for k, v in self.metric.compute().items()} if pairs else None), info


class VideoInceptionScorer(SplitInceptionScorer):
    """Video Inception Score (TempoTokens' IS column): UCF-101 C3D posteriors of each clip's first 16
    frames, StyleGAN-V's 10 splits after ``RandomState(42)`` shuffling."""

    name = block = "is_video"

    @classmethod
    def build(cls, ctx: BuildContext) -> VideoInceptionScorer:
        return cls(ctx.block("is_video"), ctx.all_clips, ctx.dev)

    def __init__(self, options: dict, pred: list[Path], dev):
        from avgen.encoders.registry import build_extractor

        options = dict(options)
        super().__init__(options.pop("splits", 10), options.pop("shuffle_seed", 42), pred,
                         "evaluate.is_video.splits", "StyleGAN-V")
        self.extractor = build_extractor("c3d", options.pop("c3d_path", None), config_key="evaluate.is_video.c3d_path",
                                         **options).to(dev)
        self.dev = dev

    def update(self, path, frames, audio, sr, fps=None):
        import torch

        with torch.no_grad():
            probs = self.extractor(uint8_to_unit_range(frames, self.dev)[None])
        self.add(path, probs.log())  # log-probabilities as logits: the metric's softmax gives the posteriors back

    def describe(self) -> dict:
        return self.extractor.describe()


# ------------------------------------------------------------------------------ PaSST (av-benchmark)
PASST_PROTOCOL = "av-benchmark@050a5cd (av_bench/extract.py:158-186, av_bench/evaluate.py:105-162)"


class PasstScores:
    """The PaSST shared by ``fd_passt``, ``kl_passt`` and ``is_passt`` (:mod:`avgen.encoders.passt`): one forward
    pass per generated clip and one per reference, whichever metric asks first.

    Clips go in as av-benchmark prepares them (:class:`~avgen.encoders.audio_input.AudioInput`: mono, DC removed,
    32 kHz, cut to ``seconds`` and never padded, then zero-padded or cut to ``model_samples``;
    ``av_bench/extract.py:159-169@050a5cd``). ``evaluate.passt`` holds ``path``, ``seconds``, ``model_samples``,
    ``splits`` and ``shuffle_seed`` (for ``is_passt``); the architecture comes from the file
    (:func:`~avgen.encoders.passt.load_passt`). ``references`` (:class:`PairedReferences`) is set when a paired
    metric is asked for."""

    KNOWN = ("path", "seconds", "model_samples", "splits", "shuffle_seed")

    def __init__(self, options: dict, dev):
        from avgen.encoders.audio_input import AudioInput
        from avgen.encoders.passt import load_passt

        unknown = sorted(set(options) - set(self.KNOWN))
        if unknown:
            raise ConfigError(f"evaluate.passt: unknown keys {unknown}; known: {', '.join(self.KNOWN)}")
        self.model = load_passt(options.get("path"), config_key="evaluate.passt.path").to(dev)
        seconds = options.get("seconds", 8)
        self.prepare = AudioInput(sample_rate=self.model.sample_rate, seconds=None if seconds is None else
                                  float(seconds), pad_to=int(options.get("model_samples", 320000)))
        self.dev = dev
        self.references: PairedReferences | None = None
        self._generated: tuple[str, Any] | None = None

    def classify(self, audio: np.ndarray, sr: int):
        """(logits (1, 527), embedding (1, 768)) of one clip's audio (S,) at ``sr`` Hz."""
        import torch

        with torch.no_grad():
            return self.model(self.prepare(audio, sr).to(self.dev)[None])

    def feature_namespace(self) -> dict:
        return extractor_namespace(self.model, {"input": self.prepare.describe()})

    def reference_features(self, frames, audio: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        """``{"logits": (1, 527), "embedding": (1, 768)}`` float32 of one clip's audio (``frames`` unused)."""
        import torch

        logits, embedding = self.classify(audio, sr)
        return {"logits": logits.detach().to("cpu", torch.float32).numpy(),
                "embedding": embedding.detach().to("cpu", torch.float32).numpy()}

    def _tensors(self, features: dict[str, np.ndarray]):
        import torch

        return tuple(torch.from_numpy(features[k]).to(self.dev) for k in ("logits", "embedding"))

    def generated(self, path: Path, audio: np.ndarray, sr: int):
        """(logits, embedding) of a generated clip, computed once whichever metric asks first (stored with
        ``evaluate.cache_pred``)."""
        if self._generated is None or self._generated[0] != str(path):
            self._generated = (str(path), self._tensors(generated_features(self, path, None, audio, sr)))
        return self._generated[1]

    def reference(self, path: Path):
        """(logits, embedding) of the reference of generated clip ``path`` (from the feature store pass).

        Raises:
            ValueError: no reference or an unreadable one (raised again for every metric that asks).
        """
        return self._tensors(self.references.features(path))

    def describe(self, harness_key: str) -> dict:
        """What ``metrics.json`` records for a PaSST metric: the protocol, the model file and its hash, the
        sample rate, the length rule, the scaling and av-benchmark's name for the number."""
        info = {**self.model.describe(), "protocol": PASST_PROTOCOL, "harness_key": harness_key,
                "sample_rate": self.prepare.sample_rate, "length_rule": self.prepare.rule(),
                "input": self.prepare.describe(), "scaling": 1}
        if self.references is not None:
            info["ref_dir"] = str(self.references.folder.absolute())
        return info


class PasstFrechetScorer(Scorer):
    """FD-PaSST: Fréchet distance of PaSST's 768-d embeddings (``evaluate.passt``), the real side being the
    **paired** references as av-benchmark takes them (``av_bench/evaluate.py:105-108,133@050a5cd``): the
    reference of each generated clip, counted once per generated clip that names it, not every clip of
    ``evaluate.ref_dir``. A generated clip without its reference is left out of both sides (and reported)."""

    name = "fd_passt"
    block = "passt"
    needs_reference = True

    @classmethod
    def build(cls, ctx: BuildContext) -> PasstFrechetScorer:
        return cls(ctx.passt(cls.name))

    def __init__(self, passt: PasstScores):
        from avgen.metrics.frechet import FrechetDistance

        self.passt = passt
        self.metric = FrechetDistance(num_features=passt.model.num_features).to(passt.dev)

    def reference_user(self):
        return self.passt.references

    def feature_users(self) -> list:
        return [self.passt]

    def update(self, path, frames, audio, sr, fps=None):
        generated = self.passt.generated(path, audio, sr)[1]
        reference = self.passt.reference(path)[1]
        self.metric.update(reference, real=True)
        self.metric.update(generated, real=False)

    def result(self):
        pairs = int(self.metric.fake_count)
        info = {**self.passt.describe("FD-PASST"), "reference": "paired", "pairs": pairs}
        if pairs < 2:
            return None, {**info, "error": f"{pairs} pairs scored; a covariance needs at least 2"}
        return float(self.metric.compute()), info


class PasstKLScorer(Scorer):
    """KL-PaSST: mean over pairs of KL(reference || generated) of PaSST's softmax over the 527 logits, without
    epsilon (``av_bench/metrics/kl.py:22-29@050a5cd``; the harness's key ``KL-PASST-softmax``); pairs as
    :class:`PairedReferences`."""

    name = "kl_passt"
    block = "passt"
    needs_reference = True
    per_clip = True

    @classmethod
    def build(cls, ctx: BuildContext) -> PasstKLScorer:
        return cls(ctx.passt(cls.name))

    def __init__(self, passt: PasstScores):
        from avgen.metrics.classifier_scores import MeanKL

        self.passt = passt
        self.metric = MeanKL(eps=0.0, variants=("softmax",)).to(passt.dev)

    def reference_user(self):
        return self.passt.references

    def feature_users(self) -> list:
        return [self.passt]

    def update(self, path, frames, audio, sr, fps=None):
        reference, _ = self.passt.reference(path)
        pair = self.metric.pair_divergences(self.passt.generated(path, audio, sr)[0], reference)
        self.metric.add_pairs(pair)
        return {self.name: float(pair["softmax"][0])}

    def result(self):
        pairs = int(self.metric.count)
        info = {**self.passt.describe("KL-PASST-softmax"), "pairs": pairs, "eps": 0.0, "posterior": "softmax",
                "direction": "KL(reference || generated)", "reference": "paired"}
        return (float(self.metric.compute()["softmax"]) if pairs else None), info


class PasstInceptionScorer(SplitInceptionScorer):
    """IS-PaSST: Inception Score of PaSST's softmax posteriors over the generated clips, ``splits`` parts after a
    ``RandomState(shuffle_seed)`` permutation of the sorted clips (``av_bench/metrics/isc.py:7-35@050a5cd``,
    called with 10 and 2020 at ``av_bench/evaluate.py:154-162@050a5cd``). The harness scores only the generated
    clips that have a reference; this scores every generated clip (the same set when each has one)."""

    name = "is_passt"
    block = "passt"

    @classmethod
    def build(cls, ctx: BuildContext) -> PasstInceptionScorer:
        return cls(ctx.passt(), ctx.block("passt"), ctx.all_clips)

    def __init__(self, passt: PasstScores, options: dict, pred: list[Path]):
        super().__init__(options.get("splits", 10), options.get("shuffle_seed", 2020), pred,
                         "evaluate.passt.splits", "av-benchmark")
        self.passt = passt

    def feature_users(self) -> list:
        return [self.passt]

    def update(self, path, frames, audio, sr, fps=None):
        self.add(path, self.passt.generated(path, audio, sr)[0])

    def describe(self) -> dict:
        return {**self.passt.describe("ISC-PASST-mean"), "posterior": "softmax over the logits"}


# ------------------------------------------------------------------------------ VTA-LDM's Table 1 columns
class PAMScorer(CosineScorer):
    """PAM (``evaluate.pam``: ``path``, ``text_model``, ``windows``; :mod:`avgen.metrics.pam`): the probability MS-CLAP
    2023 gives to "the sound is clear and clean." against "the sound is noisy and with artifacts.", averaged over the
    clip's 7-s windows, then over clips. No reference, no caption. The audio is what PAM reads, the *file*:
    ``<stem>.wav`` / ``.flac`` beside the clip with all its channels (concatenated, as PAM's ``reshape(-1)``), else the
    clip's decoded (mono) audio, as ``clap_ms`` (:func:`harness_audio_file`); ``per_clip.csv`` names it
    (``pam_audio``) and gives the number of windows (``pam_windows``). The model is ``clap_ms``'s when both blocks
    name the same files."""

    name = block = "pam"
    per_clip = True
    KNOWN = ("path", "text_model", "windows")

    @classmethod
    def build(cls, ctx: BuildContext) -> PAMScorer:
        from avgen.metrics.pam import PAMScore, check_windows

        options = known_options(ctx.block(cls.block), cls.block, cls.KNOWN)
        windows = check_windows(options.get("windows", "all"))
        return cls(PAMScore(ctx.ms_clap(cls.block), windows=windows).to(ctx.dev))

    def __init__(self, metric):
        self.metric = metric

    def update(self, path, frames, audio, sr, fps=None):
        used, wave, rate = harness_audio_file(path, audio, sr)
        windows = self.metric.window_scores(wave, rate)
        score = windows.mean()
        self.metric.add_scores(score[None])
        return {self.name: float(score), "pam_windows": int(windows.numel()), "pam_audio": used.name}


class CAVPScorer(CosineScorer):
    """CAVP score (``evaluate.cavp``: ``path``; :mod:`avgen.metrics.cavp_score`): per clip, the mean over 0.25-s steps
    of the cosine between CAVP's video token (the clip's video decoded again at 4 fps) and audio token (the clip's
    sound as ``evaluate.audio`` says), over the first ``int(duration)`` seconds, as the SVG baseline's
    ``cavp_score.py``; both branches from Diff-Foley's ``cavp_epoch66.ckpt``. ``per_clip.csv`` gives the seconds
    scored (``cavp_seconds``); a clip under 1 s, or without 4 frames per second scored, is a failure."""

    name = block = "cavp"
    per_clip = True
    KNOWN = ("path",)

    @classmethod
    def build(cls, ctx: BuildContext) -> CAVPScorer:
        return cls(known_options(ctx.block(cls.block), cls.block, cls.KNOWN), ctx.dev)

    def __init__(self, options: dict, dev):
        from avgen.encoders.cavp import load_cavp
        from avgen.encoders.cavp_video import load_cavp_video
        from avgen.metrics.cavp_score import CAVPScore
        from avgen.pretrained import sha256_file

        path = options.get("path")
        key = f"evaluate.{self.block}.path"
        video = load_cavp_video(path, key)  # first: it also refuses an unset path with the file's origin
        self.metric = CAVPScore(load_cavp(path, key), video).to(dev)
        self.weights = {"path": str(path), "sha256": {"cavp": sha256_file(path)}}

    def update(self, path, frames, audio, sr, fps=None):
        from avgen.media import MediaError, decode_video
        from avgen.metrics.cavp_score import FPS, MIN_SECONDS, score_seconds

        seconds = score_seconds(len(frames) / float(fps), len(audio) / sr) if fps else 0
        if seconds < MIN_SECONDS:
            raise ValueError(f"shorter than {MIN_SECONDS} s: the CAVP score skips it (cavp_score.py:79-80)")
        try:
            video, _ = decode_video(path, fps=FPS, num_frames=FPS * seconds)
        except MediaError as exc:
            raise ValueError(f"needs {FPS * seconds} frames at {FPS} fps for its first {seconds} s: {exc}") from exc
        score = self.metric.clip_score(video, audio, sr, seconds)
        self.metric.add_scores(score[None])
        return {self.name: float(score), "cavp_seconds": seconds}

    def result(self):
        value, info = super().result()
        return value, {**self.weights, **info}


class FDPannsScorer(FrechetScorer):
    """FD: Fréchet distance of PANNs CNN14's 2048-d embedding (audioldm_eval's FD), the ``fad`` metric with
    ``extractor: panns`` under a name of its own, so FAD on VGGish (``fad``) and FD on PANNs are one run's two columns
    (VTA-LDM's Table 1). ``evaluate.fd_panns`` holds ``panns_path``, ``sample_rate`` and, for tests,
    :class:`~avgen.encoders.panns.Cnn14` sizes."""

    name = block = "fd_panns"

    @classmethod
    def build(cls, ctx: BuildContext) -> FDPannsScorer:
        options = ctx.block(cls.block)
        if "extractor" in options:
            raise ConfigError(f"evaluate.{cls.block}.extractor: fd_panns is always PANNs CNN14's embedding; remove "
                              f"it (evaluate.fad.extractor chooses fad's)")
        return cls(cls.name, {**options, "extractor": "panns"}, ctx.dev)


# ------------------------------------------------------------------------------ Foley timing (Greatest Hits)
class ReferenceOnsets:
    """The reference side of ``evaluate.onset.ground_truth: detected``: the onsets detected on a reference clip's
    sound (:func:`~avgen.metrics.onset.reference_onsets`), stored in the feature store like any extractor's
    features (namespace: the detector, its settings and librosa's version)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def feature_namespace(self) -> dict:
        import librosa

        detector = {k: getattr(self.cfg, k) for k in ("seconds", "sample_rate", "delta")}
        return {"extractor": "librosa.onset.onset_detect", "weights_sha256": None,
                "preprocessing": {"detector": detector, "librosa": librosa.__version__,
                                  "input": "channels averaged, librosa.resample soxr_hq, cut to seconds"},
                "dtype": "int64"}

    def reference_features(self, frames, audio: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        """``{"onsets": (K,) int64}``: onset positions in samples at ``cfg.sample_rate`` (``frames`` unused)."""
        from avgen.metrics.onset import reference_onsets

        return {"onsets": reference_onsets(audio, sr, self.cfg)}


class OnsetTiming:
    """The onset detection shared by ``onset_acc`` and ``onset_ap`` (:mod:`avgen.metrics.onset`): one pass per
    generated clip, whichever metric asks first. ``evaluate.onset`` holds the
    :class:`~avgen.metrics.onset.OnsetConfig` fields. The audio is what the scripts read, the file:
    ``<stem>.wav`` / ``.flac`` beside the clip (all channels, averaged), else the clip's decoded sound
    (:func:`harness_audio_file`). Ground truth: the clip's ``events`` (:class:`~avgen.evaluation.annotations.
    ClipAnnotations`: ``<stem>.json`` beside it, else its reference in ``evaluate.ref_dir``), or with
    ``ground_truth: detected`` the onsets of its paired reference's audio (:class:`PairedReferences`)."""

    def __init__(self, options: dict, ctx: BuildContext):
        from avgen.evaluation.annotations import ClipAnnotations
        from avgen.metrics.onset import OnsetConfig

        try:
            self.cfg = OnsetConfig(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"evaluate.onset: {exc} (keys: {', '.join(OnsetConfig.__dataclass_fields__)})") from exc
        self.references = None
        if self.cfg.ground_truth == "detected":
            if not ctx.ref_dir:
                raise ConfigError("evaluate.onset.ground_truth=detected compares with the onsets of each clip's "
                                  "reference: set evaluate.ref_dir, or ground_truth=events")
            self.references = PairedReferences(ctx.ref_dir, ctx.pred, "onset_acc/onset_ap",
                                               ReferenceOnsets(self.cfg), ctx.audio)
        self.annotations = ClipAnnotations(ctx.ref_dir, ctx.pred)
        self._last: tuple[str, Any] | None = None

    def scores(self, path: Path, audio: np.ndarray, sr: int) -> dict[str, Any]:
        """:func:`~avgen.metrics.onset.clip_onset_scores` of the clip, computed once; raises ``ValueError`` (again
        for each metric that asks) for a clip without ground truth or audio."""
        from avgen.metrics.onset import clip_onset_scores

        if self._last is None or self._last[0] != str(path):
            try:
                _, wave, rate = harness_audio_file(path, audio, sr)
                if self.references is not None:
                    truth = self.references.features(path)["onsets"]
                    value = clip_onset_scores(wave, rate, cfg=self.cfg, truth_onsets=truth)
                else:
                    value = clip_onset_scores(wave, rate, self.annotations.events(path)[0], cfg=self.cfg)
            except ValueError as exc:
                value = exc
            self._last = (str(path), value)
        if isinstance(self._last[1], ValueError):
            raise self._last[1]
        return self._last[1]

    def describe(self) -> dict:
        from dataclasses import asdict

        truth = ("onsets detected on each clip's reference audio (CondFoleyGen predict_onset.py)"
                 if self.cfg.ground_truth == "detected" else
                 "the clip's annotated events: <stem>.json beside it, else its reference's in evaluate.ref_dir")
        return {"protocol": "MMAudio eval_onsets.py@974010a (from CondFoleyGen predict_onset.py@c565db7)",
                **asdict(self.cfg), "ground_truth_source": truth,
                "audio": "<stem>.wav/.flac beside the clip (channels averaged) when present, else the clip's sound"}


class OnsetScorer(Scorer):
    """Onset accuracy (``onset_acc``: events matched / events, MMAudio's Greatest Hits "Acc.") or onset AP
    (``onset_ap``) per clip, averaged over clips (:mod:`avgen.metrics.onset`). A clip without events is reported
    in ``failures``. ``onset_acc`` also reports ``onset_count_acc``, CondFoleyGen's "# Onset Acc."."""

    block = "onset"
    # Per-clip scores, but not offered to `filter` yet: it builds scorers from options keyed by metric name,
    # and onset_acc / onset_ap share the `onset` block (and the clips' events).
    per_clip = False

    @classmethod
    def build(cls, ctx: BuildContext) -> OnsetScorer:
        if "onset" not in ctx.shared:
            ctx.shared["onset"] = OnsetTiming(ctx.block("onset"), ctx)
        return cls(ctx.shared["onset"])

    def __init__(self, timing: OnsetTiming):
        from avgen.metrics.onset import OnsetScores

        self.timing, self.metric = timing, OnsetScores()

    def reference_user(self):
        """The paired references' detected onsets (``ground_truth: detected``), else none."""
        return self.timing.references

    def update(self, path, frames, audio, sr, fps=None):
        scores = self.timing.scores(path, audio, sr)
        self.metric.update(scores)
        own = ("onset_acc", "onset_count_acc") if self.name == "onset_acc" else ("onset_ap",)
        return {k: scores[k] for k in (*own, "onset_events", "onset_detected")}

    def values(self):
        clips = int(self.metric.count)
        means = self.metric.compute() if clips else {}
        own = ("onset_acc", "onset_count_acc") if self.name == "onset_acc" else ("onset_ap",)
        return {k: means.get(k) for k in own}, {**self.timing.describe(), "clips": clips}


class OnsetAccScorer(OnsetScorer):
    name = "onset_acc"


class OnsetAPScorer(OnsetScorer):
    name = "onset_ap"


# ------------------------------------------------------------------------------ joint generation (JavisBench)
JAVISBENCH = "JavisVerse/JavisDiT@b505b37"


class JavisSyncScorer(CosineScorer):
    """JavisBench's audio-video synchrony score (JavisScore, :mod:`avgen.metrics.javis_sync`): per clip, over
    2-s windows with 1.5-s overlap, the mean of the lowest 40 % of the cosines between each frame's ImageBind
    image embedding and the window's ImageBind audio embedding, averaged over windows; the mean over clips.

    ``evaluate.javis_sync`` holds ``path`` (``imagebind_huge.pth``; the model is shared with ``imagebind`` and
    ``ib_score`` when they name the same file), ``window_s`` (2.0), ``overlap_s`` (1.5), ``topk_min`` (0.4: a
    fraction; an int is a count) and, for tests, :class:`~avgen.encoders.imagebind.ImageBindAV` sizes. The video
    is every decoded frame at the clip's own rate; the audio is ``<stem>.wav`` / ``.flac`` beside the clip when
    present (JavisBench reads ``sample_XXXX.wav``), first channel, else the clip's audio stream
    (:func:`harness_audio_file`); ``per_clip.csv`` has ``javis_sync``, ``javis_sync_windows`` and
    ``javis_sync_audio`` (the file read)."""

    name = block = "javis_sync"
    per_clip = True
    SETTINGS = ("window_s", "overlap_s", "topk_min")

    @classmethod
    def build(cls, ctx: BuildContext) -> JavisSyncScorer:
        return cls(ctx.block(cls.block), ctx.dev, ctx.shared)

    def __init__(self, options: dict, dev, shared: dict[str, Any] | None = None):
        from avgen.metrics.javis_sync import JavisSync, check_settings

        options = dict(options)
        settings = {"window_s": 2.0, "overlap_s": 1.5, "topk_min": 0.4}
        settings.update({k: options.pop(k) for k in self.SETTINGS if k in options})
        try:
            check_settings(**settings)
        except ValueError as exc:
            raise ConfigError(f"evaluate.javis_sync: {exc}") from exc
        model = shared_imagebind(shared, options.pop("path", None), "evaluate.javis_sync.path", options, dev)
        self.metric = JavisSync(model, **settings).to(dev)

    def update(self, path, frames, audio, sr, fps=None):
        used, wave, rate = harness_audio_file(path, audio, sr)
        score, windows = self.metric.clip_score(frames, fps, wave[0] if wave.ndim == 2 else wave, rate)
        self.metric.add_scores(self.metric.score_sum.new_tensor([score]))
        return {self.name: score, "javis_sync_windows": windows, "javis_sync_audio": used.name}

    def result(self):
        value, info = super().result()
        return value, {**info, "video": "every decoded frame at the clip's rate, PIL bicubic short side + centre "
                                        "crop, CLIP normalisation, one image embedding per frame",
                       "audio": "<stem>.wav/.flac beside the clip (first channel) when present, else the clip's "
                                "audio stream; 16 kHz, one ImageBind audio embedding per window",
                       "windows": "int(window_s*fps) frames / int(window_s*16000) samples, strides from "
                                  "int(overlap_s*...), last window moved back to the end; lists cut to the shorter"}


class KVDScorer(Scorer):
    """KVD: the unbiased polynomial-kernel MMD² between the I3D features of the generated clips and of the clips
    of ``evaluate.ref_dir`` (:func:`avgen.metrics.kernel_distance.polynomial_mmd`; JavisBench's ``kvd``). The I3D
    and its input are ``evaluate.fvd``'s (:class:`SharedI3D`: one forward pass per clip serves ``fvd`` and
    ``kvd``); ``evaluate.kvd`` holds the kernel, ``degree`` (3), ``gamma`` (null: 1 / D) and ``coef0`` (1),
    scikit-learn's defaults as JavisBench calls it.

    The reference side keeps one feature row per clip (:meth:`reference_features`, :meth:`add_reference`). Where
    avgen departs from JavisBench: all generated and all reference clips are compared (JavisBench cuts both
    lists to the shorter, ``eval/javisbench/src/metrics.py:118-119@b505b37``: the same when there are as many);
    the I3D is ``evaluate.fvd``'s (JavisBench: VideoGPT's PyTorch I3D ``i3d_pretrained_400.pt``, 400 logits of
    24 frames spread over the clip, letterboxed to 224², ``eval/javisbench/src/fvd/``, ``src/dataset.py:37-75``)."""

    name = block = "kvd"
    needs_reference = reference_set = True
    KNOWN = ("degree", "gamma", "coef0")

    @classmethod
    def build(cls, ctx: BuildContext) -> KVDScorer:
        return cls(ctx.block(cls.block), ctx.i3d())

    def __init__(self, options: dict, i3d: SharedI3D):
        from avgen.metrics.kernel_distance import FeatureSet

        unknown = sorted(set(options) - set(self.KNOWN))
        if unknown:
            raise ConfigError(f"evaluate.kvd: unknown keys {unknown}; known: {', '.join(self.KNOWN)} (the I3D is "
                              f"evaluate.fvd's)")
        self.degree, self.gamma, self.coef0 = options.get("degree", 3), options.get("gamma"), options.get("coef0", 1.0)
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 1:
            raise ConfigError(f"evaluate.kvd.degree={self.degree!r}: expected a positive int (JavisBench: 3)")
        if self.gamma is not None and (isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float))
                                       or not 0 < self.gamma < float("inf")):
            raise ConfigError(f"evaluate.kvd.gamma={self.gamma!r}: expected a positive number, or null for "
                              f"1 / feature width (scikit-learn's default, as JavisBench)")
        if isinstance(self.coef0, bool) or not isinstance(self.coef0, (int, float)) or self.coef0 != self.coef0:
            raise ConfigError(f"evaluate.kvd.coef0={self.coef0!r}: expected a number (JavisBench: 1)")
        self.i3d = i3d
        self.reference_metric = FeatureSet().to(i3d.dev)
        self.metric = FeatureSet().to(i3d.dev)

    min_references = 2  # the unbiased estimate leaves the diagonal out

    def feature_namespace(self) -> dict:
        """``fvd``'s namespace (the same I3D, the same input): stored reference features serve both."""
        return extractor_namespace(self.i3d.extractor, dict(VIDEO_INPUT))

    def reference_features(self, frames: np.ndarray, audio: np.ndarray, sr: int) -> dict[str, np.ndarray]:
        """``{"features": (1, D) float32}`` of one clip (frames (F, H, W, 3) uint8; the audio is not used): the
        entry ``fvd`` stores too.

        Raises:
            ValueError: a clip the I3D cannot take.
        """
        import torch

        return {"features": self.i3d.features(frames).to("cpu", torch.float32).numpy()}

    def add_reference(self, features: dict[str, np.ndarray]) -> None:
        """Add one reference clip's :meth:`reference_features` (one row, kept in float64)."""
        self.reference_metric.update(np.asarray(features["features"], dtype=np.float64))

    def update_reference(self, frames: np.ndarray, audio: np.ndarray, sr: int) -> None:
        self.add_reference(self.reference_features(frames, audio, sr))

    def reduce_references(self, procs: Processes) -> None:
        """Concatenate the processes' reference rows."""
        procs.reduce(self.reference_metric)

    def update(self, path, frames, audio, sr, fps=None):
        features = generated_features(self, path, frames, audio, sr)["features"]
        self.metric.update(np.asarray(features, dtype=np.float64))

    def result(self):
        from avgen.metrics.kernel_distance import polynomial_mmd

        fake, real = self.metric.value(), self.reference_metric.value()
        info = {**self.i3d.extractor.describe(), "protocol": f"{JAVISBENCH} (eval/javisbench/src/utils.py:246-262)",
                "kernel": {"degree": self.degree, "gamma": "1/D" if self.gamma is None else self.gamma,
                           "coef0": self.coef0},
                "estimator": "unbiased MMD^2 (diagonals of K_XX, K_YY left out), all clips, no subsets, no scaling",
                "clips": int(fake.shape[0]), "reference_clips": int(real.shape[0])}
        if fake.shape[0] < 2 or real.shape[0] < 2:
            return None, {**info, "error": f"{fake.shape[0]} generated and {real.shape[0]} reference clips scored; "
                                           f"the unbiased estimate needs at least 2 of each"}
        return float(polynomial_mmd(fake, real, self.degree, self.gamma, self.coef0)), info


def build_scorers(ctx: BuildContext, metrics: list[str]) -> list[Scorer]:
    """The scorers of ``metrics`` (in :data:`SCORERS` order). Every one is tried, so that a preset whose metrics need
    several files reports all that are missing at once rather than one per run.

    Raises:
        ConfigError: when several metrics cannot run, one line per metric after a first line that counts them;
            one metric's own error (ConfigError, or the FileNotFoundError of missing weights) when only it fails.
    """
    scorers, errors = [], []
    for name, cls in SCORERS.items():
        if name in metrics:
            try:
                scorers.append(cls.build(ctx))
            except (ConfigError, FileNotFoundError) as exc:  # bad settings, weights not there
                errors.append((name, exc))
    if len(errors) == 1:
        raise errors[0][1]
    if errors:
        lines = "\n".join(f"  {name}: " + "; ".join(s.strip() for s in str(exc).splitlines() if s.strip())
                          for name, exc in errors)
        raise ConfigError(f"{len(errors)} metrics cannot run (fix each, or leave it out of evaluate.metrics):\n{lines}")
    return scorers


def score_in_main_process(metrics: list[str], pred: list[Path], *, ref_dir, options: dict[str, dict],
                          prompt: str | None, cache_dir, device: str, procs: Processes | None = None,
                          all_clips: list[Path] | None = None, decode_threads: int = 0, audio: str = "stream",
                          cache_pred: bool = False) -> tuple[dict, dict, list[dict], dict]:
    """FVD, FAD, CLIPSIM, CLAP, ImageBind, IB-score, IS, KL, video IS, the PaSST metrics, frame-level VGGish FD,
    DeSync, JavisScore and KVD over one decoding pass of ``pred``. Returns (values, extractor descriptions,
    failures, per-clip scores and durations (:func:`clip_durations`) ``{clip name: {column: value}}``).

    Reference features come from the feature store at ``cache_dir`` (:func:`set_references`); with ``cache_pred``
    the generated clips' features are stored and reused too (keyed by file identity; the clips are still decoded,
    for the other metrics and the durations). Each metric's description records its namespace and the store's
    hits, misses and damaged entries, and whether the store was ``writable`` (``feature_store``; a store that is
    not is read, and what it lacks extracted unstored).

    Raises:
        ConfigError: a ``cache_dir`` that cannot be created or read (names ``evaluate.cache_dir``).

    In a distributed run ``pred`` is this process's share of ``all_clips``; the values, failures and
    per-clip scores returned are those of all processes. ``audio`` (``evaluate.audio``): which sound of each clip
    is scored (:func:`avgen.samples.load_clips`), of the generated clips and of a folder of references alike."""
    procs = procs or Processes()
    ctx = BuildContext(options, prompt, device_for(device), ref_dir, pred, pred if all_clips is None else all_clips,
                       audio=audio)
    scorers = build_scorers(ctx, metrics)
    if not scorers:
        return {}, {}, [], {}
    store = FeatureStore(cache_dir, key="evaluate.cache_dir")
    users = _distinct(s.reference_user() for s in scorers)
    if users:
        set_references(users, ref_dir, store, procs, decode_threads, audio)
    extractors = _distinct(u for s in scorers for u in s.feature_users()) if cache_pred else []
    for user in extractors:
        user.pred_cache = PredCache(store.namespace(user.feature_namespace()), audio)
    failures: list[dict] = []
    per_clip = feed_scorers(scorers, pred, failures, decode_threads, audio)
    for scorer in scorers:
        for metric in scorer.states():
            procs.reduce(metric)
    failures = [f for part in procs.gather(failures) for f in part]
    per_clip = {name: scores for part in procs.gather(per_clip) for name, scores in part.items()}
    pred_stats = procs.gather([u.pred_cache.namespace.stats() for u in extractors]) if extractors else []
    generated = {id(u): {k: sum(part[i][k] for part in pred_stats) for k in ("hits", "misses", "damaged")}
                 for i, u in enumerate(extractors)}
    errors = [e for e in procs.gather(store.write_error) if e]  # one process that could not write: all report it
    writable = {"writable": not errors, **({"write_error": errors[0]} if errors else {})}
    values, info = {}, {}
    for scorer in scorers:
        named, info[scorer.name] = scorer.values()
        values.update(named)
        report = _store_report(scorer, store, generated, writable)
        if report:
            info[scorer.name]["feature_store"] = report
    return values, info, failures, per_clip


def _distinct(parts) -> list:
    """The parts that are not None, each once (several metrics share one), in order."""
    return list({id(p): p for p in parts if p is not None}.values())


def _store_report(scorer: Scorer, store: FeatureStore, generated: dict[int, dict], writable: dict) -> dict:
    """What ``metrics.json`` records of the feature store for one metric: the root, whether it was writable (else
    ``write_error``), the reference side's namespace, hits, misses and damaged entries, and the generated side's
    (``evaluate.cache_pred``)."""
    report: dict[str, Any] = {}
    user = scorer.reference_user()
    if user is not None and hasattr(user, "store_report"):
        report["reference"] = user.store_report
    for part in scorer.feature_users():
        if id(part) in generated:
            report["generated"] = {"namespace": part.pred_cache.namespace.id, **generated[id(part)]}
    return {"root": str(store.root.absolute()), **writable, **report} if report else {}


def per_clip_scorers(metrics: list[str], options: Mapping[str, Mapping[str, Any]], prompt: str | None, dev
                     ) -> list[Scorer]:
    """The scorers of the metrics in ``metrics`` whose per-clip scores stand alone (CLIPSIM and CLAP
    against ``<stem>.txt`` beside the clip, else ``prompt``; ImageBind), built from ``options``
    (``{block: evaluate.<block>}``), in :data:`SCORERS` order. AV-Align, the other one, runs in worker
    processes (:func:`avgen.evaluation.processes.score_clip`)."""
    ctx = BuildContext(options, prompt, dev)
    return [cls.build(ctx) for name, cls in SCORERS.items()
            if name in metrics and cls.per_clip and not cls.needs_reference]


def feed_scorers(scorers: list[Scorer], paths: list[Path], failures: list[dict], decode_threads: int = 0,
                 audio: str = "stream") -> dict[str, dict[str, Any]]:
    """Decode each clip of ``paths`` once (:func:`load_clips`) and update every scorer with it. Returns
    ``{clip file name: {column: value}}``: the durations (:func:`clip_durations`) and each scorer's
    per-clip scores. A clip a scorer cannot score (``ValueError``: too short, no prompt, ...) and an
    unreadable clip are appended to ``failures`` as ``{"clip", "reason"}``, never raised."""
    from tqdm import tqdm

    per_clip: dict[str, dict[str, Any]] = {}
    by_name = {p.name: p for p in paths}
    progress = dict(total=len(paths), desc="+".join(s.name for s in scorers), unit="clip", file=sys.stderr,
                    disable=None)
    for clip_name, clip in tqdm(load_clips(paths, failures, decode_threads, audio), **progress):
        per_clip[clip_name] = clip_durations(clip)
        for scorer in scorers:
            try:
                scores = scorer.update(by_name[clip_name], clip.frames, clip.audio, clip.sample_rate,
                                       fps=float(clip.fps))
                per_clip[clip_name].update(scores or {})
            except ValueError as exc:  # too short for the extractor, no prompt, ...: reported per clip
                failures.append({"clip": clip_name, "reason": f"{scorer.name}: {exc}"})
    return per_clip


# The registry: every metric computed in the main process, in the order they are fed each clip.
SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in (
    FVDScorer, FADScorer, CLIPSimScorer, CLAPScorer, ClapLaionScorer, ClapMsScorer, ImageBindScorer, IBScoreScorer,
    InceptionScorer, KLScorer, VideoInceptionScorer, PasstFrechetScorer, PasstKLScorer, PasstInceptionScorer,
    VGGishFramesScorer, DeSyncScorer, PAMScorer, CAVPScorer, FDPannsScorer, OnsetAccScorer, OnsetAPScorer,
    JavisSyncScorer, KVDScorer)}
MAIN_PROCESS = tuple(SCORERS)
AVAILABLE = ("av_align", *SCORERS)  # av_align runs in worker processes (avgen.evaluation.processes)
NEEDS_REFERENCE = tuple(name for name, cls in SCORERS.items() if cls.needs_reference)
REFERENCE_SET = tuple(name for name, cls in SCORERS.items() if cls.reference_set)  # read all of ref_dir
# the metrics whose per-clip scores stand alone: what `filter` can threshold
PER_CLIP = ("av_align", *(name for name, cls in SCORERS.items() if cls.per_clip and not cls.needs_reference))
# the option blocks under `evaluate` (panns serves is and kl; passt serves fd_passt, kl_passt and is_passt)
OPTION_BLOCKS = tuple(dict.fromkeys(cls.block for cls in SCORERS.values() if cls.block))
