"""MS-CLAP 2023 (Elizalde et al. 2023, "Natural Language Supervision for General-Purpose Audio Representations":
HTSAT audio tower, GPT-2 text tower) from ``CLAP_WEIGHTS_2023.pth``: the model behind av-benchmark's
``MS-CLAP-Score`` (the second CLAP column of the video-to-audio papers' tables, MMAudio and followers).

Sources (cited as ``file:line@commit``; ``msclap`` is hkchengrex/MS-CLAP@3ad265d, the fork av-benchmark installs, =
microsoft/CLAP@e8a6467 plus packaging):

- av-benchmark, hkchengrex/av-benchmark@050a5cd: ``CLAP(version='2023')`` (``av_bench/extraction_models.py:50``,
  ``extract_text.py:46``); audio embeddings from the audio *files* (``get_audio_embeddings(audio_paths)``,
  ``av_bench/extract.py:148-156``), text one caption at a time (``extract_text.py:50-59``); score = mean cosine
  (``av_bench/evaluate.py:200-203``), raw.
- msclap: the checkpoint ``{'model': state_dict}`` loaded ``strict=False`` over a hub GPT-2
  (``msclap/CLAPWrapper.py:109-113``, ``msclap/models/clap.py:46``); the tokenizer (GPT-2, ``pad_token='!'``,
  ``CLAPWrapper.py:116-118``; ``caption + ' <|endoftext|>'``, ``max_length=77, padding='max_length'``, no
  truncation, ``CLAPWrapper.py:262-273``); the audio rule (``read_audio`` + ``load_audio_into_tensor``,
  ``CLAPWrapper.py:216-249``; 44.1 kHz and 7 s from ``msclap/configs/config_2023.yml``); the projection
  (``msclap/models/clap.py:8-20``) and GPT-2 pooling (``clap.py:64-70``); the HTSAT and its front end
  (``msclap/models/htsat.py:584-699,848-926``, ``HTSATWrapper`` ``htsat.py:928-942`` reading
  ``msclap/models/config.py``: 32 kHz, window 1024, hop 320, 64 mels, 50–14 000 Hz, width 96, depths [2, 2, 6, 2],
  heads [4, 8, 16, 32], window 8, spec 256 — the yaml's audio settings are ignored).

Built here: the HTSAT in transformers' ``ClapAudioModel`` through the HTSAT key map LAION-CLAP's loader uses
(:func:`avgen.encoders.laion_clap.htsat_to_transformers`; both HTSATs copy Ke Chen's ``htsat.py``, and
``ClapAudioEncoder``'s pooled output is HTSAT's ``latent_output``), the front end from avgen's torchlibrosa-layout
modules with the STFT kernels and mel matrix from the file (:class:`~avgen.encoders.laion_clap.LaionClapMel`),
``transformers.GPT2Model`` for the text and msclap's :class:`Projection`. Quirks kept, as the harness computes:

- the mel matrix is built for 32 kHz but fed 44.1-kHz audio (``HTSATWrapper`` ignores the yaml's 44 100);
- a stereo file's channels are concatenated (``reshape(-1)``), not averaged, and no DC is removed;
- the caption is pooled at index ``(ids != 0).sum() − 1``: ``!`` is both the pad token and id 0, so a caption
  containing ``!`` is pooled before its last token.

Departure: a file longer than 7 s is cropped at a start msclap draws with Python's unseeded ``random.randrange``, so
the harness's score changes run to run; here the start comes from a numpy ``Generator`` seeded by
(``evaluate.clap_ms.seed``, the clip's stem) (:func:`crop_start`): reproducible, the same under any number of
processes, and distributed as the harness's draw; ``crop: start`` takes the first 7 s instead.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.encoders.audio_input import RESAMPLER, _resampler
from avgen.encoders.base import FeatureExtractor
from avgen.encoders.laion_clap import (
    LaionClapMel,
    _listing,
    htsat_audio_config,
    htsat_to_transformers,
    transformers_htsat_key,
    transformers_to_htsat,
)
from avgen.errors import ConfigError, WeightsFileError
from avgen.pretrained import ORIGINS, ExtractorWeightsMissing, load_state_dict_file, sha256_file

PROTOCOL = "av-benchmark@050a5cd (av_bench/extract.py:148-156, extract_text.py:46-59, av_bench/evaluate.py:200-203)"
HARNESS_KEY = "MS-CLAP-Score"
SAMPLE_RATE = 44_100            # config_2023.yml sampling_rate: the rate audio is resampled to
SECONDS = 7                     # config_2023.yml duration
MODEL_SAMPLES = SAMPLE_RATE * SECONDS  # 308 700
TEXT_LENGTH = 77                # config_2023.yml text_len
EMBED_DIM = 768                 # HTSAT's latent_output and GPT-2's width (config_2023.yml out_emb,
                                # transformer_embed_dim)
PROJECTION_DIM = 1024           # config_2023.yml d_proj
# msclap/models/config.py (what HTSATWrapper really uses): the mel matrix is for 32 kHz audio, hop 320.
MEL_RATE, WINDOW_SIZE, HOP_SIZE, MEL_BINS, FMIN, FMAX = 32_000, 1024, 320, 64, 50.0, 14_000.0
CROPS = ("random", "start")

HTSAT = "audio_encoder.base.htsat."      # the HTSAT_Swin_Transformer inside CLAP (clap.py:29,95, htsat.py:937)
TEXT = "caption_encoder.base."           # GPT2Model (AutoModel.from_pretrained('gpt2'), clap.py:46)
AUDIO_ENCODER = "audio_encoder."         # transformers' ClapAudioModel's HTSAT
# msclap key → front-end key (LaionClapMel): the STFT kernels and mel matrix the published model computes with.
FRONT_END = {
    f"{HTSAT}spectrogram_extractor.stft.conv_real.weight": "spectrogram_extractor.stft.conv_real.weight",
    f"{HTSAT}spectrogram_extractor.stft.conv_imag.weight": "spectrogram_extractor.stft.conv_imag.weight",
    f"{HTSAT}logmel_extractor.melW": "logmel_extractor.melW",
}
# msclap keys no part here takes (fnmatch patterns): HTSAT's AudioSet classifier (tscam_conv, head; its
# clipwise_output is discarded, CLAPWrapper.py:296), the shifted-window masks (recomputed by ClapAudioModel), the causal
# masks older transformers saved with GPT-2 (h.N.attn.bias / masked_bias) and the contrastive temperature (a cosine
# needs none; PAM's softmax does: load_ms_clap keeps its value as MsClap.logit_scale).
DROPPED = (f"{HTSAT}tscam_conv.*", f"{HTSAT}head.*", f"{HTSAT}layers.*.blocks.*.attn_mask",
           f"{TEXT}h.*.attn.bias", f"{TEXT}h.*.attn.masked_bias", "logit_scale")
PROJECTIONS = {"audio_encoder.projection.": "audio_projection", "caption_encoder.projection.": "text_projection"}


class MsClapWeightsMissing(ExtractorWeightsMissing):
    """``CLAP_weights_2023.pth`` is not where the config says (names the config key and the published URL)."""

    def __init__(self, path: str | os.PathLike | None, config_key: str = "evaluate.clap_ms.path"):
        super().__init__("ms_clap", path, config_key)


class MsClapCheckpointError(WeightsFileError):
    """A file that is not MS-CLAP 2023 in the published layout, or an unusable GPT-2 folder; the message is one line
    naming the file and the config key."""


# ------------------------------------------------------------------------------------------ input rule
def crop_start(length: int, stem: str, seed: int = 0, crop: str = "random") -> int:
    """Where the 7-s window of a clip of ``length`` > :data:`MODEL_SAMPLES` samples starts. msclap:
    ``random.randrange(length − 308700)`` (``CLAPWrapper.py:245-246``), unseeded: uniform over [0, length − 308 700)
    (the last possible start is never drawn). ``crop='random'``: the same range, drawn by
    ``numpy.random.default_rng([seed, h])`` where ``h`` is the first 8 bytes of the stem's SHA-256 (a stable hash: a
    clip gets the same crop in every run and process, another clip another one); ``crop='start'``: 0."""
    if crop not in CROPS:
        raise ConfigError(f"evaluate.clap_ms.crop={crop!r}: expected one of {CROPS}")
    if crop == "start":
        return 0
    stem_hash = int.from_bytes(hashlib.sha256(stem.encode("utf-8")).digest()[:8], "little")
    return int(np.random.default_rng([int(seed), stem_hash]).integers(0, length - MODEL_SAMPLES))


def ms_clap_input(audio: Any, sample_rate: int, stem: str, seed: int = 0, crop: str = "random") -> Tensor:
    """One audio file as msclap feeds it (``read_audio`` + ``load_audio_into_tensor``, ``CLAPWrapper.py:216-249``):
    ``torchaudio.transforms.Resample(sample_rate, 44100)`` (skipped at 44.1 kHz, as msclap does) on each channel →
    ``reshape(-1)``: a (C, S) file's channels one after the other, not averaged, no DC removal → 7 s = 308 700
    samples: a clip of at most that length is repeated ``ceil(308700 / S')`` times and cut; a longer one is cropped
    to 7 s at :func:`crop_start`.

    Args:
        audio: (S,) mono or (C, S) channels-first (``torchaudio.load``'s layout), any float, at ``sample_rate`` Hz.
        sample_rate: its rate (Hz).
        stem: the clip's stem, which seeds its crop.
        seed, crop: ``evaluate.clap_ms.seed`` and ``.crop`` (:func:`crop_start`).

    Returns:
        (308 700,) float32 at 44.1 kHz.

    Raises:
        ValueError: empty, non-finite or more than 2-D audio.
    """
    wave = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
    if wave.ndim not in (1, 2) or wave.numel() == 0 or not torch.isfinite(wave).all():
        raise ValueError(f"MS-CLAP takes finite (S,) or (C, S) audio, got shape {tuple(wave.shape)}")
    if sample_rate != SAMPLE_RATE:
        wave = _resampler(int(sample_rate), SAMPLE_RATE)(wave)
    wave = wave.reshape(-1)
    if wave.shape[0] <= MODEL_SAMPLES:
        return wave.repeat(math.ceil(MODEL_SAMPLES / wave.shape[0]))[:MODEL_SAMPLES]
    start = crop_start(wave.shape[0], stem, seed, crop)
    return wave[start:start + MODEL_SAMPLES]


LENGTH_RULE = ("the audio file's channels resampled to 44100 Hz (torchaudio.transforms.Resample) and concatenated "
               "(msclap's reshape(-1); no mono mix, no DC removal), then 7 s = 308700 samples: shorter or equal "
               "repeated ceil(308700 / S) times and cut; longer: a 7-s crop ({crop})")
CROP_RULE = {"random": "start drawn from [0, S - 308700) by numpy default_rng([seed={seed}, sha256(stem)[:8]]): "
                       "reproducible; the harness draws it unseeded (random.randrange)",
             "start": "the first 7 s (the harness draws a random start)"}


# ------------------------------------------------------------------------------------------ the model
class Projection(nn.Module):
    """msclap's projection head (``msclap/models/clap.py:8-20@3ad265d``): ``e1 = linear1(x)``,
    ``e2 = linear2(gelu(e1))`` (both without bias, exact erf GELU), ``layer_norm(e1 + e2)``. Its dropout (p=0.5) is
    left out: it is the identity in eval mode, the only mode here. Keys ``linear1.weight``, ``linear2.weight``,
    ``layer_norm.{weight,bias}``, as in the checkpoint.

    Args:
        d_in: input width (768 for both towers of the 2023 model).
        d_out: joint-space width (1024).
    """

    def __init__(self, d_in: int = EMBED_DIM, d_out: int = PROJECTION_DIM):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, d_in) → (B, d_out), not normalised."""
        embed1 = self.linear1(x)
        return self.layer_norm(embed1 + self.linear2(F.gelu(embed1)))


class MsClap(FeatureExtractor):
    """MS-CLAP 2023 as av-benchmark runs it.

    Args:
        audio_model: a non-fusion ``transformers.ClapAudioModel`` holding the HTSAT.
        front_end: its :class:`~avgen.encoders.laion_clap.LaionClapMel` (32-kHz mel matrix, hop 320).
        text_model: a ``transformers.GPT2Model``.
        audio_projection, text_projection: the two :class:`Projection` heads.
        tokenizer: a GPT-2 tokenizer whose pad token is ``!`` (id 0 in GPT-2's vocabulary).
    """

    name = "ms_clap"

    def __init__(self, audio_model: nn.Module, front_end: LaionClapMel, text_model: nn.Module,
                 audio_projection: Projection, text_projection: Projection, tokenizer: Any):
        super().__init__()
        self.audio_model, self.front_end, self.text_model = audio_model, front_end, text_model
        self.audio_projection, self.text_projection = audio_projection, text_projection
        self.tokenizer = tokenizer
        self.num_features = int(audio_projection.linear1.out_features)
        self.text_weights = "checkpoint"
        self.tokenizer_files: dict[str, str] = {}
        # the file's contrastive temperature ln(1 / τ) (CLAP.logit_scale, msclap/models/clap.py:90); None: not in it
        self.logit_scale: float | None = None
        self._freeze()

    def config(self) -> dict[str, Any]:
        audio = self.audio_model.config
        return {"sample_rate": SAMPLE_RATE, "model_samples": MODEL_SAMPLES, "mel_rate": MEL_RATE, "hop": HOP_SIZE,
                "text_length": TEXT_LENGTH, "depths": list(audio.depths), "width": audio.patch_embeds_hidden_size,
                "text_layers": int(self.text_model.config.n_layer), "projection_dim": self.num_features,
                "text_weights": self.text_weights, "tokenizer_sha256": dict(self.tokenizer_files)}

    def audio_embeddings(self, audio: Tensor) -> Tensor:
        """audio (B, 308 700) float32 at 44.1 kHz (:func:`ms_clap_input`) → projected embeddings (B, 1024) float32,
        not normalised (``AudioEncoder.forward``, ``clap.py:36-40``): log-mel (B, 1, 965, 64) → HTSAT's
        ``latent_output`` (``ClapAudioModel``'s pooled output, (B, 768)) → :class:`Projection`."""
        if audio.ndim != 2:
            raise ValueError(f"MsClap.audio_embeddings expects (B, {MODEL_SAMPLES}) audio, got {tuple(audio.shape)}")
        mel = self.front_end(audio.to(self.front_end.logmel_extractor.melW.device))
        return self.audio_projection(self.audio_model(input_features=mel).pooler_output).float()

    def tokens(self, text: str) -> dict[str, Tensor]:
        """One caption tokenised as msclap does (``CLAPWrapper.py:262-273``): ``text + ' <|endoftext|>'``, padded with
        ``!`` to 77 tokens, not truncated (a longer caption keeps all its tokens). ``input_ids`` and
        ``attention_mask`` (1, L) int64, L = max(77, its length)."""
        return self.tokenizer(text + " <|endoftext|>", max_length=TEXT_LENGTH, padding="max_length",
                              truncation=False, return_tensors="pt")

    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """Captions → projected embeddings (B, 1024) float32, not normalised, each caption on its own as the harness
        embeds them (``extract_text.py:55-58``): GPT-2's last hidden state at index ``(input_ids != 0).sum() − 1``
        (``clap.py:64-70``) — the last token when the caption holds no ``!`` (id 0, also the pad), else that many
        positions earlier, as msclap computes it — then :class:`Projection`."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("MsClap.text_embeddings expects a list of strings")
        device = self.text_projection.linear1.weight.device
        out = []
        for text in texts:
            tokens = {k: v.to(device) for k, v in self.tokens(text).items()}
            hidden = self.text_model(input_ids=tokens["input_ids"],
                                     attention_mask=tokens["attention_mask"]).last_hidden_state
            index = torch.ne(tokens["input_ids"], 0).sum(-1) - 1
            out.append(hidden[torch.arange(hidden.shape[0], device=device), index])
        return self.text_projection(torch.cat(out)).float()

    def forward(self, audio: Tensor) -> Tensor:
        return self.audio_embeddings(audio)


# ------------------------------------------------------------------------------------------ loading
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_text_folder(folder: str | os.PathLike | None, config_key: str = "evaluate.clap_ms.text_model"):
    """GPT-2's config and tokenizer (pad token set to ``!`` as ``CLAPWrapper.py:116-118``) from a local folder
    (a ``gpt2`` snapshot), never fetched. Returns (GPT2Config, tokenizer, ``{file name: sha256}`` of the tokenizer
    files).

    Raises:
        ConfigError: ``folder`` unset or not a folder (names ``config_key``).
        MsClapCheckpointError: no GPT-2 config or tokenizer loads from it (names ``config_key``).
    """
    if folder is None or not Path(folder).is_dir():
        what = "is not set" if folder is None else f"={folder} is not a folder"
        raise ConfigError(
            f"{config_key} {what}: MS-CLAP's text tower is GPT-2 and needs a local gpt2 folder (config.json, "
            f"vocab.json, merges.txt; model.safetensors too when the checkpoint holds no caption_encoder.base.*); "
            f"avgen never fetches it: download openai-community/gpt2 where there is network and set "
            f"{config_key}=/path/to/folder")
    from transformers import AutoConfig, AutoTokenizer

    from avgen.pretrained import quiet_loading

    try:
        with quiet_loading():
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MsClapCheckpointError(f"{config_key}={folder}: no GPT-2 config and tokenizer load from it "
                                    f"({type(exc).__name__}: {exc})") from exc
    if config.model_type != "gpt2":
        raise MsClapCheckpointError(f"{config_key}={folder} holds a {config.model_type!r} model, not GPT-2 (MS-CLAP "
                                    f"2023's text tower, config_2023.yml text_model: 'gpt2')")
    tokenizer.add_special_tokens({"pad_token": "!"})
    files = {n: sha256_file(Path(folder) / n) for n in _TOKENIZER_FILES if (Path(folder) / n).is_file()}
    return config, tokenizer, files


def split_ms_clap(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """An MS-CLAP state dict → its parts, each in the names of the module that takes it: ``audio``
    (``ClapAudioModel``: the HTSAT through :func:`~avgen.encoders.laion_clap.htsat_to_transformers`), ``front``
    (:class:`LaionClapMel`), ``text`` (``GPT2Model``, the ``caption_encoder.base.`` prefix removed),
    ``audio_projection``/``text_projection`` (:class:`Projection`) and ``unexpected`` (keys no part takes);
    :data:`DROPPED` keys are left out. Tensors are not copied."""
    parts: dict[str, dict[str, Tensor]] = {n: {} for n in ("audio", "front", "text", "audio_projection",
                                                           "text_projection", "unexpected")}
    for key, value in state.items():
        if key in FRONT_END:
            parts["front"][FRONT_END[key]] = value
        elif any(fnmatch.fnmatchcase(key, pattern) for pattern in DROPPED):
            continue
        elif key.startswith(HTSAT):
            renamed = htsat_to_transformers(key[len(HTSAT):], value)
            parts["audio"].update({AUDIO_ENCODER + k: v for k, v in renamed.items()})
        elif key.startswith(TEXT):
            parts["text"][key[len(TEXT):]] = value
        elif (prefix := next((p for p in PROJECTIONS if key.startswith(p)), None)) is not None:
            parts[PROJECTIONS[prefix]][key[len(prefix):]] = value
        else:
            parts["unexpected"][key] = value
    return parts


def _ms_key(part: str, key: str) -> str:
    """A key of a part (:func:`split_ms_clap`) by its name in the msclap file."""
    if part == "audio":
        return HTSAT + transformers_htsat_key(key[len(AUDIO_ENCODER):])
    if part == "front":
        return {v: k for k, v in FRONT_END.items()}[key]
    if part == "text":
        return TEXT + key
    return {v: k for k, v in PROJECTIONS.items()}[part] + key


def _check_keys(modules: Mapping[str, nn.Module], parts: Mapping[str, Mapping[str, Tensor]], where: str) -> None:
    """Strict: every key of every module from the file, none left over, every shape equal; problems named by their
    msclap keys."""
    missing, unexpected, wrong = set(), {*parts.get("unexpected", {})}, []
    for part, module in modules.items():
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = parts[part]
        missing |= {_ms_key(part, k) for k in set(expected) - set(got)}
        unexpected |= {_ms_key(part, k) for k in set(got) - set(expected)}
        wrong += [f"{_ms_key(part, k)} {tuple(got[k].shape)} (expected {expected[k]})"
                  for k in sorted(set(expected) & set(got)) if tuple(got[k].shape) != expected[k]]
    problems = [f"{what} {_listing(sorted(keys))}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        origin = ORIGINS["ms_clap"]
        raise MsClapCheckpointError(
            f"{where} is not MS-CLAP 2023 in its published layout: {'; '.join(problems)}. Expected {origin.file} "
            f"({origin.where}); dropped on purpose: {', '.join(DROPPED)}")


def load_ms_clap(path: str | os.PathLike | None, text_model: str | os.PathLike | None,
                 config_key: str = "evaluate.clap_ms.path", text_key: str = "evaluate.clap_ms.text_model") -> MsClap:
    """:class:`MsClap` from ``CLAP_weights_2023.pth`` and a local GPT-2 folder.

    The file is read with ``torch.load(weights_only=True)`` (numpy's array globals allowed); as
    ``CLAPWrapper.py:109`` reads it, it is ``{'model': state_dict, ...}`` (a plain state dict is also taken). The
    HTSAT's architecture is read from the shapes (:func:`~avgen.encoders.laion_clap.htsat_audio_config`), its keys
    converted strictly into ``ClapAudioModel``; the front-end tensors go into :class:`LaionClapMel` (32 kHz, hop
    320). GPT-2's config and tokenizer come from ``text_model``; its weights from the file's ``caption_encoder.base.*``
    when present, else from the folder's own weights (msclap loads ``strict=False`` over ``AutoModel('gpt2')``, so
    either way GPT-2 stands in; whether the published file holds them is not verified here). The file's SHA-256 is
    recorded under ``"ms_clap"``, the folder's GPT-2 weights under ``"gpt2"`` when they are used. The file's scalar
    ``logit_scale`` (no module takes it) is kept as :attr:`MsClap.logit_scale` for PAM (:mod:`avgen.metrics.pam`).

    Raises:
        ConfigError: ``text_model`` unset or not a folder (names ``text_key``); checked first.
        MsClapWeightsMissing: no file at ``path`` (names ``config_key``).
        MsClapCheckpointError: (a ``ValueError``) unreadable with the safe loader, not in the layout, or a key
            missing/unexpected/misshapen; or no GPT-2 loads from ``text_model``. One line, naming the key.
    """
    from transformers import ClapAudioConfig, ClapAudioModel, GPT2Model

    from avgen.encoders.panns import _numpy_pickle_globals
    from avgen.pretrained import quiet_loading

    origin = ORIGINS["ms_clap"]
    gpt2_config, tokenizer, tokenizer_files = load_text_folder(text_model, text_key)
    with torch.serialization.safe_globals(_numpy_pickle_globals()):
        state = load_state_dict_file(path, config_key, MsClapWeightsMissing, MsClapCheckpointError, "model", origin)
    where = f"{path} (config key {config_key})"
    parts = split_ms_clap(state)

    def shape(key: str) -> tuple[int, ...]:
        value = parts["audio"].get(key)
        if not isinstance(value, Tensor):
            raise MsClapCheckpointError(f"{where} has no tensor {_ms_key('audio', key)}: not an MS-CLAP HTSAT state "
                                        f"dict; expected {origin.file} from {origin.where}")
        return tuple(value.shape)

    audio_model = ClapAudioModel(ClapAudioConfig(**htsat_audio_config(parts["audio"], AUDIO_ENCODER, shape)))
    front_end = LaionClapMel(MEL_RATE, WINDOW_SIZE, HOP_SIZE, MEL_BINS, FMIN, FMAX)
    width = audio_model.config.hidden_size
    joint = parts["audio_projection"].get("linear1.weight", torch.empty(PROJECTION_DIM, width)).shape[0]
    projections = {"audio_projection": Projection(width, joint),
                   "text_projection": Projection(gpt2_config.n_embd, joint)}
    from_file = bool(parts["text"])
    if from_file:
        text = GPT2Model(gpt2_config)
    else:
        try:
            with quiet_loading():
                text = GPT2Model.from_pretrained(str(text_model), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MsClapCheckpointError(
                f"{where} holds no GPT-2 weights (caption_encoder.base.*) and {text_key}={text_model} has none either "
                f"({type(exc).__name__}: {exc}): put gpt2's model.safetensors in that folder") from exc
    modules = {"audio": audio_model, "front": front_end, **projections, **({"text": text} if from_file else {})}
    _check_keys(modules, parts, where)
    for part, module in modules.items():
        module.load_state_dict(parts[part], strict=True)
    clap = MsClap(audio_model.eval(), front_end, text.eval(), projections["audio_projection"],
                  projections["text_projection"], tokenizer)
    clap.tokenizer_files = tokenizer_files
    if isinstance(state.get("logit_scale"), Tensor) and state["logit_scale"].numel() == 1:
        clap.logit_scale = float(state["logit_scale"])
    clap._record("ms_clap", Path(path))
    if not from_file:
        clap.text_weights = "text_model folder"
        weights = next((Path(text_model) / n for n in ("model.safetensors", "pytorch_model.bin")
                        if (Path(text_model) / n).is_file()), None)
        if weights is not None:
            clap._record("gpt2", weights)
    return clap


# ------------------------------------------------------------------------------------------ tiny twin
def tiny_ms_clap_configs(vocab_size: int):
    """(``ClapAudioConfig``, ``GPT2Config``) of a tiny MS-CLAP with HTSAT's input geometry (spec 256, 64 mel bins,
    patch 4, window 8): audio width 8 (pooled width 64), depths (2, 1, 1, 1) (one shifted-window block), one head per
    stage; GPT-2 16 wide, 1 layer, 2 heads, 128 positions."""
    from transformers import ClapAudioConfig, GPT2Config

    audio = ClapAudioConfig(patch_embeds_hidden_size=8, depths=[2, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                            hidden_size=64, window_size=8, spec_size=256, num_mel_bins=MEL_BINS, patch_size=4,
                            patch_stride=[4, 4], enable_fusion=False)
    text = GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=128,
                      bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    return audio, text


def save_ms_clap_format(clap: MsClap, path: str | os.PathLike, *, with_text: bool = True, classes: int = 527,
                        seed: int = 0) -> Path:
    """Write an :class:`MsClap` as msclap's checkpoint is laid out: ``{'model': {msclap key: tensor}}`` with the
    HTSAT under ``audio_encoder.base.htsat.`` (fused ``qkv``, ``bn0``, the front end's STFT kernels and mel matrix,
    the shifted blocks' ``attn_mask``, seeded random ``tscam_conv``/``head`` of ``classes`` AudioSet classes), the
    projections, ``logit_scale`` and, with ``with_text``, GPT-2 under ``caption_encoder.base.``. Returns the path.
    For tests: tiny twins in the published layout."""
    state = {HTSAT + k: v for k, v in transformers_to_htsat(
        {k[len(AUDIO_ENCODER):]: v for k, v in clap.audio_model.state_dict().items()}).items()}
    state.update({k: clap.front_end.state_dict()[v] for k, v in FRONT_END.items()})
    encoder = clap.audio_model.audio_encoder
    for i, stage in enumerate(encoder.layers):
        height, width = encoder.input_resolutions[i]
        for j, block in enumerate(stage.blocks):
            mask = block.get_attn_mask(height, width, dtype=torch.float32, device=torch.device("cpu"))
            if mask is not None:
                state[f"{HTSAT}layers.{i}.blocks.{j}.attn_mask"] = mask
    generator = torch.Generator().manual_seed(seed)
    freq = 256 // 2 ** (len(encoder.layers) - 1) // encoder.patch_stride[0] // encoder.freq_ratio
    for key, size in ((f"{HTSAT}tscam_conv.weight", (classes, encoder.num_features, freq, 3)),
                      (f"{HTSAT}tscam_conv.bias", (classes,)), (f"{HTSAT}head.weight", (classes, classes)),
                      (f"{HTSAT}head.bias", (classes,))):
        state[key] = torch.randn(size, generator=generator) * 0.02
    for prefix, part in PROJECTIONS.items():
        state.update({prefix + k: v for k, v in getattr(clap, part).state_dict().items()})
    if with_text:
        state.update({TEXT + k: v for k, v in clap.text_model.state_dict().items()})
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    path = Path(path)
    torch.save({"model": {k: v.detach().clone().contiguous() for k, v in state.items()}}, path)
    return path


__all__ = ["CROPS", "HARNESS_KEY", "MODEL_SAMPLES", "PROTOCOL", "RESAMPLER", "SAMPLE_RATE", "MsClap",
           "MsClapCheckpointError", "MsClapWeightsMissing", "Projection", "crop_start", "load_ms_clap",
           "ms_clap_input", "save_ms_clap_format", "split_ms_clap", "tiny_ms_clap_configs"]
