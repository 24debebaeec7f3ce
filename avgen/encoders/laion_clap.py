"""LAION-CLAP ``music_speech_audioset_epoch_15_esc_89.98.pt`` (HTSAT-base audio tower, RoBERTa text tower) read
into ``transformers.ClapModel``: the model behind av-benchmark's ``LAION-CLAP-Score`` (the CLAP column of the
video-to-audio papers' tables, MMAudio and followers).

Sources (cited as ``file:line@commit``):

- av-benchmark, hkchengrex/av-benchmark@050a5cd: ``laion_clap.CLAP_Module(enable_fusion=False,
  amodel='HTSAT-base')`` + ``load_ckpt`` (``av_bench/extraction_models.py:47-48``, ``extract_text.py:42-44``);
  audio through ``AudioDataset(sr=48000)`` then ``get_audio_embedding_from_data(wav, use_tensor=True)``
  (``av_bench/extract.py:129-146``); score = mean cosine (``av_bench/evaluate.py:193-198``).
- laion_clap, LAION-AI/CLAP@1fd4c37: checkpoint reading (``src/laion_clap/clap_module/factory.py:53-70``), the
  ``repeatpad`` rule (``src/laion_clap/training/data.py:470-482``), no int16 quantisation with ``use_tensor=True``
  (``src/laion_clap/hook.py:175-179``), the tokenizer (``hook.py:65-73``: ``padding="max_length",
  truncation=True, max_length=77``), the HTSAT front end (``src/laion_clap/clap_module/htsat.py:666-686``, forward
  ``htsat.py:881-895``), projections and normalisation (``src/laion_clap/clap_module/model.py:698-742``).
- The key map to ``ClapModel`` follows transformers' own
  ``src/transformers/models/clap/convert_clap_original_pytorch_to_hf.py@3ce159c`` (``KEYS_TO_MODIFY_MAPPING``, the
  ``_projection.{0,2}`` → ``linear{1,2}`` rule, the ``qkv`` split). That script loads with ``strict=False``; here
  the map is strict: every key of the file is converted, sent to the front end or in :data:`DROPPED`, and every
  key of the model comes from the file or is in :data:`FILLED` (:func:`laion_clap_to_transformers`).

Departures from that script, both towards the original: the text tower's LayerNorm eps is roberta-base's 1e-5 (the
script keeps ``ClapTextConfig``'s default 1e-12; LAION's text branch is
``RobertaModel.from_pretrained('roberta-base')``, ``model.py:505-506``), and the log-mel front end is the checkpoint's
own torchlibrosa STFT and mel matrix
(:class:`LaionClapMel`), not ``ClapFeatureExtractor`` (its defaults are HTK mel, 0 Hz lower edge and fusion crops).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.encoders.audio_input import AudioInput
from avgen.encoders.base import FeatureExtractor
from avgen.encoders.panns import LogMelFilterBank, PowerSpectrogram
from avgen.errors import ConfigError, WeightsFileError
from avgen.pretrained import ORIGINS, ExtractorWeightsMissing, load_state_dict_file, sha256_file

PROTOCOL = "av-benchmark@050a5cd (av_bench/extract.py:129-146, av_bench/evaluate.py:193-198)"
HARNESS_KEY = "LAION-CLAP-Score"
SAMPLE_RATE = 48_000
MODEL_SAMPLES = 480_000      # laion_clap's max_len: 10 s at 48 kHz (hook.py:182)
TEXT_LENGTH = 77             # hook.py:66-73
SPEC_SIZE = 256              # every HTSAT of laion_clap (htsat.py create_htsat_model); no tensor shape records it
WINDOW_SIZE, HOP_SIZE, MEL_BINS, FMIN, FMAX = 1024, 480, 64, 50.0, 14_000.0  # model_configs/HTSAT-base.json
ROBERTA_HEAD_DIM = 64        # roberta-base: 768 wide, 12 heads; no tensor shape records the heads

# LAION key → front-end key (LaionClapMel): the STFT kernels and mel matrix the published model computes with.
FRONT_END = {
    "audio_branch.spectrogram_extractor.stft.conv_real.weight": "spectrogram_extractor.stft.conv_real.weight",
    "audio_branch.spectrogram_extractor.stft.conv_imag.weight": "spectrogram_extractor.stft.conv_imag.weight",
    "audio_branch.logmel_extractor.melW": "logmel_extractor.melW",
}
# LAION keys no ClapModel part takes (fnmatch patterns, ``*`` spans dots): HTSAT's AudioSet classifier (tscam_conv,
# head), the shifted-window masks (a persistent buffer in htsat.py:437, recomputed by ClapModel), the two training-only
# MLPs (model.py:507,532, unused by get_audio_embedding/get_text_embedding) and RoBERTa's position ids (dropped by
# laion_clap itself, factory.py:63-65).
DROPPED = ("audio_branch.tscam_conv.*", "audio_branch.head.*", "audio_branch.layers.*.blocks.*.attn_mask",
           "audio_transform.*", "text_transform.*", "text_branch.embeddings.position_ids")
# ClapModel buffers no checkpoint holds: filled by ClapModel itself (arange and zeros).
FILLED = ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids")

# Inside one Swin block (<HTSAT>.layers.N.blocks.M.<this>.{weight,bias}): HTSAT name → ClapAudioEncoder name, HF's
# KEYS_TO_MODIFY_MAPPING applied to these keys; attn.qkv is split into attention.self.{query,key,value}, and
# attn.relative_position_{bias_table,index} become attention.self.relative_position_*. HTSAT's names are those of Ke
# Chen's htsat.py, which LAION-CLAP (clap_module/htsat.py) and MS-CLAP (msclap/models/htsat.py) both copy.
BLOCK_RENAMES = {
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
}
_BLOCK = re.compile(r"^(layers\.\d+\.blocks\.\d+\.)(.+)\.(weight|bias)$")
QKV = ("query", "key", "value")
AUDIO_PREFIX = "audio_model.audio_encoder."  # ClapModel's HTSAT (ClapAudioModel's is "audio_encoder.")


class LaionClapWeightsMissing(ExtractorWeightsMissing):
    """The LAION-CLAP checkpoint is not where the config says (names the config key and the published URL)."""

    def __init__(self, path: str | os.PathLike | None, config_key: str = "evaluate.clap_laion.path"):
        super().__init__("laion_clap", path, config_key)


class LaionClapCheckpointError(WeightsFileError):
    """A file that is not a LAION-CLAP HTSAT checkpoint in the published layout, or an unusable tokenizer folder;
    the message is one line naming the file and the config key."""


# ------------------------------------------------------------------------------------------ input rule
def repeatpad(wave: Tensor, length: int = MODEL_SAMPLES) -> Tensor:
    """laion_clap's ``data_filling='repeatpad'`` (``src/laion_clap/training/data.py:470-482@1fd4c37``): a clip
    shorter than ``length`` is repeated ``int(length / S)`` times, then zero-padded at the end to ``length``.

    Args:
        wave: (S,) float, 0 < S ≤ ``length``.
        length: laion_clap's ``max_len`` (480 000 = 10 s at 48 kHz).

    Returns:
        (length,) of ``wave``'s dtype: 8 s → the 8 s once, then 2 s of zeros; 3 s → 3 copies, then 1 s of zeros.

    Raises:
        ValueError: empty or longer than ``length``: laion_clap would random-crop it (``rand_trunc``, with a call,
            ``np.random.integers``, that does not exist, ``data.py:467``), which the harness never reaches with
            ``audio_length`` ≤ 10 s.
    """
    if wave.ndim != 1 or not 0 < wave.shape[0] <= length:
        raise ValueError(f"repeatpad takes (S,) audio with 0 < S <= {length} samples, got {tuple(wave.shape)}: "
                         f"cut it first (evaluate.clap_laion.seconds <= {length / SAMPLE_RATE:g})")
    repeated = wave.repeat(int(length / wave.shape[0]))
    return F.pad(repeated, (0, length - repeated.shape[0]))


def laion_clap_input(audio: Any, sample_rate: int, seconds: float | None = 8.0) -> Tensor:
    """One clip as av-benchmark feeds LAION-CLAP: the harness's audio rule
    (:class:`~avgen.encoders.audio_input.AudioInput`) at 48 kHz cut to ``seconds``, then
    :func:`repeatpad` to 480 000 samples; float32, no int16 quantisation (``use_tensor=True``,
    ``hook.py:175-179@1fd4c37``). audio (S,) or (C, S) at ``sample_rate`` → (480 000,) float32."""
    return repeatpad(AudioInput(SAMPLE_RATE, seconds=seconds)(audio, sample_rate))


LENGTH_RULE = ("mono, DC removed over the whole file, resampled to 48000 Hz (torchaudio.transforms.Resample), cut "
               "to {seconds:g} s (not padded), then laion_clap's repeatpad to 480000 samples (repeated int(480000 / "
               "S) times, zero-padded), float32 (no int16 quantisation)")


# ------------------------------------------------------------------------------------------ front end
class LaionClapMel(nn.Module):
    """HTSAT's log-mel front end (``htsat.py:666-686,881-884@1fd4c37``), torchlibrosa's layout:
    ``Spectrogram(n_fft=1024,
    hop_length=480, win_length=1024, window='hann', center=True, pad_mode='reflect')`` power spectrum →
    ``LogmelFilterBank(sr=48000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0, amin=1e-10, top_db=None)``.
    Built from avgen's torchlibrosa-layout modules (:mod:`avgen.encoders.panns`); :func:`load_laion_clap` overwrites
    the STFT kernels and ``melW`` with the checkpoint's own (keys ``spectrogram_extractor.stft.conv_real.weight``,
    ``...conv_imag.weight``, ``logmel_extractor.melW``)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, window_size: int = WINDOW_SIZE, hop_size: int = HOP_SIZE,
                 mel_bins: int = MEL_BINS, fmin: float = FMIN, fmax: float = FMAX):
        super().__init__()
        self.sample_rate, self.hop_size = sample_rate, hop_size
        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size, center=True, pad_mode="reflect")
        self.logmel_extractor = LogMelFilterBank(sample_rate, window_size, mel_bins, fmin, fmax, ref=1.0, amin=1e-10)

    def forward(self, audio: Tensor) -> Tensor:
        """audio (B, S) float32 at 48 kHz → dB log-mel (B, 1, T, 64) float32, axis 2 is time, T = 1 + S // 480
        (1001 for 480 000 samples): ``ClapModel.get_audio_features``'s ``input_features``."""
        return self.logmel_extractor(self.spectrogram_extractor(audio.float()))


# ------------------------------------------------------------------------------------------ key map
def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def htsat_key(key: str) -> str:
    """An HTSAT key relative to the ``HTSAT_Swin_Transformer`` (``bn0.weight``, ``layers.0.blocks.1.norm1.bias``)
    → its name relative to transformers' ``ClapAudioEncoder`` (``batch_norm.weight``,
    ``layers.0.blocks.1.layernorm_before.bias``). Not for ``attn.qkv`` (:func:`htsat_to_transformers` splits it)."""
    match = _BLOCK.match(key)
    if match and match.group(2) in BLOCK_RENAMES:
        key = f"{match.group(1)}{BLOCK_RENAMES[match.group(2)]}.{match.group(3)}"
    key = key.replace(".attn.relative_position_", ".attention.self.relative_position_")
    return "batch_norm." + key[len("bn0."):] if key.startswith("bn0.") else key


def htsat_to_transformers(key: str, value: Tensor) -> dict[str, Tensor]:
    """One HTSAT tensor (key relative to the HTSAT) → ``{ClapAudioEncoder-relative key: tensor}``: a ``qkv`` tensor
    becomes its equal thirds along axis 0 (query, key, value), any other one is renamed (:func:`htsat_key`).
    Tensors are not copied."""
    if key.startswith("layers.") and ".attn.qkv." in key:
        base = htsat_key(key.replace(".attn.qkv.", ".attn.proj."))  # locate the block, then name the thirds
        return {base.replace(".attention.output.dense.", f".attention.self.{name}."): part
                for name, part in zip(QKV, value.chunk(3, dim=0))}
    return {htsat_key(key): value}


def transformers_htsat_key(key: str) -> str:
    """The inverse of :func:`htsat_key`, with ``attention.self.{query,key,value}`` → ``attn.qkv`` (the fused tensor's
    name; :func:`transformers_to_htsat` fuses the values)."""
    match = _BLOCK.match(key)
    if match:
        inner = match.group(2)
        fused = inner in {f"attention.self.{n}" for n in QKV}
        inner = "attn.qkv" if fused else _INVERSE_BLOCK_RENAMES.get(inner, inner)
        key = f"{match.group(1)}{inner}.{match.group(3)}"
    key = key.replace(".attention.self.relative_position_", ".attn.relative_position_")
    return "bn0." + key[len("batch_norm."):] if key.startswith("batch_norm.") else key


def transformers_to_htsat(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``ClapAudioEncoder``-relative state dict → HTSAT-relative names, query, key and value re-fused into ``qkv``
    (in that order along axis 0): the inverse of :func:`htsat_to_transformers` (for writing tiny twins)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = transformers_htsat_key(key)
        if ".attn.qkv." in name:
            if ".attention.self.query." not in key:
                continue
            value = torch.cat([state[key.replace(".query.", f".{n}.")] for n in QKV], dim=0)
        out[name] = value
    return out


_INVERSE_BLOCK_RENAMES = {v: k for k, v in BLOCK_RENAMES.items()}


def _rename(key: str) -> str:
    """A LAION key's ClapModel name (not for ``qkv``, :data:`FRONT_END` or :data:`DROPPED` keys)."""
    for old, new in (("audio_projection.0.", "audio_projection.linear1."),
                     ("audio_projection.2.", "audio_projection.linear2."),
                     ("text_projection.0.", "text_projection.linear1."),
                     ("text_projection.2.", "text_projection.linear2.")):
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith("text_branch."):
        return "text_model." + key[len("text_branch."):]
    return key


def laion_clap_to_transformers(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A LAION-CLAP state dict (``module.`` prefixes allowed) → (``ClapModel`` state dict, front-end state dict for
    :class:`LaionClapMel`). :data:`DROPPED` keys are left out, the HTSAT's (``audio_branch.*``) go through the shared
    HTSAT map (:func:`htsat_to_transformers`: ``qkv`` split into query, key, value), the rest renamed as transformers'
    conversion script does. Tensors are not copied."""
    converted: dict[str, Tensor] = {}
    front: dict[str, Tensor] = {}
    for key, value in _strip_module(state).items():
        if key in FRONT_END:
            front[FRONT_END[key]] = value
        elif any(fnmatch.fnmatchcase(key, pattern) for pattern in DROPPED):
            continue
        elif key.startswith("audio_branch."):
            converted.update({AUDIO_PREFIX + k: v
                              for k, v in htsat_to_transformers(key[len("audio_branch."):], value).items()})
        else:
            converted[_rename(key)] = value
    return converted, front


def _laion_key(key: str) -> str:
    """A ClapModel key's name in the LAION file (``attention.self.{query,key,value}`` → ``attn.qkv``); the inverse of
    the renaming in :func:`laion_clap_to_transformers`."""
    if key.startswith(AUDIO_PREFIX):
        return "audio_branch." + transformers_htsat_key(key[len(AUDIO_PREFIX):])
    if key.startswith("text_model."):
        key = "text_branch." + key[len("text_model."):]
    return re.sub(r"^(audio|text)_projection\.linear([12])\.",
                  lambda m: f"{m.group(1)}_projection.{0 if m.group(2) == '1' else 2}.", key)


def transformers_to_laion_clap(state: Mapping[str, Tensor], front: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`laion_clap_to_transformers` (for writing tiny twins in the published layout): query,
    key and value re-fused into ``qkv`` (in that order along axis 0), LAION names, the front-end tensors under
    ``audio_branch.``; :data:`FILLED` buffers are left out. :data:`DROPPED` tensors are not made here
    (:func:`save_laion_format` adds them)."""
    out: dict[str, Tensor] = {laion: front[ours] for laion, ours in FRONT_END.items()}
    audio = {k[len(AUDIO_PREFIX):]: v for k, v in state.items() if k.startswith(AUDIO_PREFIX)}
    out.update({"audio_branch." + k: v for k, v in transformers_to_htsat(audio).items()})
    out.update({_laion_key(k): v for k, v in state.items() if not k.startswith(AUDIO_PREFIX) and k not in FILLED})
    return out


def htsat_audio_config(state: Mapping[str, Tensor], prefix: str, shape) -> dict[str, Any]:
    """The non-fusion ``ClapAudioConfig`` fields an HTSAT in ``ClapAudioEncoder`` names (keys under ``prefix``) implies,
    read from tensor shapes: width and patch (``patch_embed.proj.weight``), depths (blocks per stage), heads and window
    (``relative_position_bias_table`` is ((2w−1)², heads)), MLP ratio, mel bins (``batch_norm``), q/k/v bias;
    ``hidden_size`` = width·2^(stages−1), the pooled embedding's width. Not in any shape: ``spec_size``
    (:data:`SPEC_SIZE`, 256 in every published HTSAT) and the patch stride (= the patch size). ``shape(key)`` returns a
    tensor's shape or raises the caller's error naming the file."""
    proj = shape(f"{prefix}patch_embed.proj.weight")
    depths = []
    while any(k.startswith(f"{prefix}layers.{len(depths)}.blocks.") for k in state):
        stage = len(depths)
        at = f"{prefix}layers.{stage}.blocks."
        depths.append(len({k[len(at):].split(".")[0] for k in state if k.startswith(at)}))
    if not depths:
        shape(f"{prefix}layers.0.blocks.0.attention.self.relative_position_bias_table")
    tables = [shape(f"{prefix}layers.{i}.blocks.0.attention.self.relative_position_bias_table")
              for i in range(len(depths))]
    return dict(
        patch_embeds_hidden_size=proj[0], patch_size=proj[-1], patch_stride=[proj[-1], proj[-1]],
        depths=depths, num_attention_heads=[t[1] for t in tables], window_size=(round(tables[0][0] ** 0.5) + 1) // 2,
        num_mel_bins=shape(f"{prefix}batch_norm.weight")[0], spec_size=SPEC_SIZE,
        mlp_ratio=shape(f"{prefix}layers.0.blocks.0.intermediate.dense.weight")[0] / proj[0],
        hidden_size=proj[0] * 2 ** (len(depths) - 1), enable_fusion=False,
        qkv_bias=f"{prefix}layers.0.blocks.0.attention.self.query.bias" in state)


def clap_config_from_state(state: Mapping[str, Tensor], where: str):
    """The ``transformers.ClapConfig`` a converted state dict implies, read from tensor shapes: the audio tower's
    widths, depths, heads and window (``relative_position_bias_table`` is ((2w−1)², heads)), MLP ratio and mel bins;
    the text tower's vocabulary, width, depth, intermediate size and positions; the projection widths. Not recorded in
    any shape: ``spec_size`` (256, :data:`SPEC_SIZE`), the patch stride (= the patch size, as in every HTSAT of
    laion_clap) and the text heads (width / 64, roberta-base's head size, at least 1).

    Raises:
        LaionClapCheckpointError: a tensor the reading needs is absent (not a LAION-CLAP HTSAT + RoBERTa state dict).
    """
    from transformers import ClapConfig

    def shape(key: str) -> tuple[int, ...]:
        value = state.get(key)
        if not isinstance(value, Tensor):
            laion = key.replace("audio_model.audio_encoder.", "audio_branch.").replace("text_model.", "text_branch.")
            raise LaionClapCheckpointError(
                f"{where} has no tensor {laion}: not a LAION-CLAP HTSAT + RoBERTa state dict; expected "
                f"{ORIGINS['laion_clap'].file} from {ORIGINS['laion_clap'].where}")
        return tuple(value.shape)

    audio_config = htsat_audio_config(state, AUDIO_PREFIX, shape)
    text = "text_model."
    width = shape(f"{text}embeddings.word_embeddings.weight")[1]
    layers = len({k.split(".")[3] for k in state if k.startswith(f"{text}encoder.layer.")})
    projection = shape("audio_projection.linear1.weight")[0]
    audio_config.update(hidden_size=shape("audio_projection.linear1.weight")[1], projection_dim=projection)
    text_config = dict(
        vocab_size=shape(f"{text}embeddings.word_embeddings.weight")[0], hidden_size=width,
        num_hidden_layers=layers, num_attention_heads=max(1, width // ROBERTA_HEAD_DIM),
        intermediate_size=shape(f"{text}encoder.layer.0.intermediate.dense.weight")[0],
        max_position_embeddings=shape(f"{text}embeddings.position_embeddings.weight")[0],
        type_vocab_size=shape(f"{text}embeddings.token_type_embeddings.weight")[0], layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, projection_dim=projection)
    return ClapConfig(audio_config=audio_config, text_config=text_config, projection_dim=projection)


def _listing(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', … ({len(names) - limit} more)' if len(names) > limit else ''}]"


def _check_keys(model: nn.Module, converted: Mapping[str, Tensor], front_model: nn.Module,
                front: Mapping[str, Tensor], where: str) -> None:
    """Strict: every ClapModel key but :data:`FILLED` from the file, no key left over, every shape equal; problems are
    named by their LAION keys."""
    inverse_front = {v: k for k, v in FRONT_END.items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in FILLED}
    expected_front = {k: tuple(v.shape) for k, v in front_model.state_dict().items()}
    problems = []
    missing = sorted({_laion_key(k) for k in set(expected) - set(converted)}
                     | {inverse_front[k] for k in set(expected_front) - set(front)})
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    unexpected = sorted({_laion_key(k) for k in set(converted) - set(expected)})
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    wrong = [f"{_laion_key(k)} {tuple(converted[k].shape)} (ClapModel's {k}: {expected[k]})"
             for k in sorted(set(expected) & set(converted)) if tuple(converted[k].shape) != expected[k]]
    wrong += [f"{inverse_front[k]} {tuple(front[k].shape)} (expected {expected_front[k]})"
              for k in sorted(set(expected_front) & set(front)) if tuple(front[k].shape) != expected_front[k]]
    if wrong:
        problems.append(f"wrong shapes {_listing(wrong)}")
    if problems:
        raise LaionClapCheckpointError(
            f"{where} does not convert to transformers' ClapModel: {'; '.join(problems)}. Expected a non-fusion "
            f"LAION-CLAP HTSAT + RoBERTa checkpoint such as {ORIGINS['laion_clap'].file} "
            f"({ORIGINS['laion_clap'].where}); dropped on purpose: {', '.join(DROPPED)}")


# ------------------------------------------------------------------------------------------ the model
class LaionClap(FeatureExtractor):
    """LAION-CLAP as av-benchmark runs it: :class:`LaionClapMel` front end, ``ClapModel`` towers, RoBERTa tokenizer.

    Args:
        model: a ``transformers.ClapModel`` without fusion.
        front_end: its :class:`LaionClapMel`.
        tokenizer: a RoBERTa tokenizer (``roberta-base``'s vocabulary for the published weights).
    """

    name = "laion_clap"

    def __init__(self, model: nn.Module, front_end: LaionClapMel, tokenizer: Any):
        super().__init__()
        self.model, self.front_end, self.tokenizer = model, front_end, tokenizer
        self.num_features = int(model.config.projection_dim)
        self.tokenizer_files: dict[str, str] = {}
        self._freeze()

    def config(self) -> dict[str, Any]:
        audio = self.model.config.audio_config
        return {"sample_rate": SAMPLE_RATE, "model_samples": MODEL_SAMPLES, "text_length": TEXT_LENGTH,
                "padding": "max_length", "depths": list(audio.depths), "width": audio.patch_embeds_hidden_size,
                "projection_dim": self.num_features, "tokenizer_sha256": dict(self.tokenizer_files)}

    def audio_embeddings(self, audio: Tensor) -> Tensor:
        """audio (B, 480 000) float32 at 48 kHz (:func:`laion_clap_input`) → L2-normalised embeddings (B, D) float32
        (``ClapModel.get_audio_features``; no fusion, so ``is_longer`` is not read)."""
        if audio.ndim != 2:
            raise ValueError(f"LaionClap.audio_embeddings expects (B, {MODEL_SAMPLES}) audio, got {tuple(audio.shape)}")
        mel = self.front_end(audio.to(self.front_end.logmel_extractor.melW.device))
        out = self.model.get_audio_features(input_features=mel)
        return F.normalize(out.pooler_output.float(), dim=-1)

    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """Captions → L2-normalised embeddings (B, D) float32, tokenised as ``hook.py:65-73@1fd4c37``
        (``padding="max_length", truncation=True, max_length=77``)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("LaionClap.text_embeddings expects a list of strings")
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=TEXT_LENGTH,
                                return_tensors="pt")
        device = self.model.logit_scale_a.device
        out = self.model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                           attention_mask=tokens["attention_mask"].to(device))
        return F.normalize(out.pooler_output.float(), dim=-1)

    def forward(self, audio: Tensor) -> Tensor:
        return self.audio_embeddings(audio)


_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_tokenizer(folder: str | os.PathLike | None, config_key: str = "evaluate.clap_laion.tokenizer"):
    """The RoBERTa tokenizer in a local folder (``roberta-base``, or a ``laion/clap-htsat-unfused`` snapshot: the same
    vocabulary), never fetched. Returns (tokenizer, ``{file name: sha256}`` of its vocabulary files).

    Raises:
        ConfigError: ``folder`` unset or not a folder (names ``config_key``).
        LaionClapCheckpointError: no RoBERTa tokenizer loads from the folder (names ``config_key``).
    """
    if folder is None or not Path(folder).is_dir():
        what = "is not set" if folder is None else f"={folder} is not a folder"
        raise ConfigError(
            f"{config_key} {what}: LAION-CLAP's text tower needs roberta-base's tokenizer from a local folder (a "
            f"roberta-base or laion/clap-htsat-unfused snapshot with vocab.json and merges.txt); avgen never fetches "
            f"it: download it where there is network and set {config_key}=/path/to/folder")
    from transformers import AutoTokenizer

    from avgen.pretrained import quiet_loading

    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LaionClapCheckpointError(f"{config_key}={folder}: no RoBERTa tokenizer loads from it "
                                       f"({type(exc).__name__}: {exc})") from exc
    return tokenizer, {n: sha256_file(Path(folder) / n) for n in _TOKENIZER_FILES if (Path(folder) / n).is_file()}


def load_laion_clap(path: str | os.PathLike | None, tokenizer: str | os.PathLike | None,
                    config_key: str = "evaluate.clap_laion.path",
                    tokenizer_key: str = "evaluate.clap_laion.tokenizer") -> LaionClap:
    """:class:`LaionClap` from ``music_speech_audioset_epoch_15_esc_89.98.pt`` (or any non-fusion LAION-CLAP HTSAT +
    RoBERTa file in that layout) and a local tokenizer folder.

    The file is read with ``torch.load(weights_only=True)`` (numpy's array globals allowed, as for PANNs); like
    ``factory.py:53-70@1fd4c37`` it is ``{'state_dict': ...}`` or a plain state dict, keys may start with ``module.``.
    The architecture is read from the shapes (:func:`clap_config_from_state`), the keys converted strictly
    (:func:`laion_clap_to_transformers`); the front-end tensors go into :class:`LaionClapMel`. The file's SHA-256 is
    recorded under ``"laion_clap"``.

    Raises:
        LaionClapWeightsMissing: no file at ``path`` (names ``config_key``).
        LaionClapCheckpointError: (a ``ValueError``) unreadable with the safe loader, not in the layout, or a key
            missing/unexpected/misshapen; or no tokenizer loads from ``tokenizer`` (names ``tokenizer_key``). One line.
        ConfigError: ``tokenizer`` unset or not a folder (names ``tokenizer_key``); checked first.
    """
    from transformers import ClapModel

    from avgen.encoders.panns import _numpy_pickle_globals

    origin = ORIGINS["laion_clap"]
    text_tokenizer, tokenizer_files = load_tokenizer(tokenizer, tokenizer_key)
    with torch.serialization.safe_globals(_numpy_pickle_globals()):
        state = load_state_dict_file(path, config_key, LaionClapWeightsMissing, LaionClapCheckpointError,
                                     "state_dict", origin)
    where = f"{path} (config key {config_key})"
    converted, front = laion_clap_to_transformers(state)
    config = clap_config_from_state(converted, where)
    model, front_end = ClapModel(config), LaionClapMel()
    _check_keys(model, converted, front_end, front, where)
    filled = model.state_dict()
    model.load_state_dict({**{k: filled[k] for k in FILLED}, **converted}, strict=True)
    front_end.load_state_dict(front, strict=True)
    clap = LaionClap(model.eval(), front_end, text_tokenizer)
    clap.tokenizer_files = tokenizer_files
    clap._record("laion_clap", Path(path))
    return clap


# ------------------------------------------------------------------------------------------ tiny twin
def tiny_clap_config(vocab_size: int):
    """A tiny non-fusion ``ClapConfig`` with HTSAT's input geometry (spec 256, 64 mel bins, patch 4, window 8):
    audio width 8 (so ``hidden_size`` = 8·2³ = 64), depths (2, 1, 1, 1) (one shifted-window block, so the
    ``attn_mask`` drop is exercised), one head per stage; text 16 wide, 1 layer, 80 positions (77 + RoBERTa's 2
    reserved + 1); projection 16."""
    from transformers import ClapConfig

    return ClapConfig(
        audio_config=dict(patch_embeds_hidden_size=8, depths=[2, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                          hidden_size=64, window_size=8, spec_size=SPEC_SIZE, num_mel_bins=MEL_BINS, patch_size=4,
                          patch_stride=[4, 4], projection_dim=16, enable_fusion=False),
        text_config=dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=TEXT_LENGTH + 3, layer_norm_eps=1e-5,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, projection_dim=16),
        projection_dim=16)


def save_laion_format(model: nn.Module, path: str | os.PathLike, *, classes: int = 527, seed: int = 0) -> Path:
    """Write a ``ClapModel`` as laion_clap's training code saves one: ``{'state_dict': {'module.' + LAION key: tensor},
    'epoch': 15}`` with the real front end (:class:`LaionClapMel`'s STFT kernels and slaney mel matrix), the shifted
    blocks' ``attn_mask`` (as ``ClapModel`` computes it), and seeded random ``tscam_conv``/``head`` (``classes``
    AudioSet classes) and ``audio_transform``/``text_transform`` tensors of their published shapes. Returns the path.
    For tests: tiny twins in the published layout."""
    front = LaionClapMel().state_dict()
    state = transformers_to_laion_clap(model.state_dict(), front)
    encoder = model.audio_model.audio_encoder
    generator = torch.Generator().manual_seed(seed)
    for i, stage in enumerate(encoder.layers):
        height, width = encoder.input_resolutions[i]
        for j, block in enumerate(stage.blocks):
            mask = block.get_attn_mask(height, width, dtype=torch.float32, device=torch.device("cpu"))
            if mask is not None:
                state[f"audio_branch.layers.{i}.blocks.{j}.attn_mask"] = mask
    features, joint = encoder.num_features, int(model.config.projection_dim)
    freq = SPEC_SIZE // 2 ** (len(encoder.layers) - 1) // encoder.patch_stride[0] // encoder.freq_ratio
    for key, shape in (("audio_branch.tscam_conv.weight", (classes, features, freq, 3)),
                       ("audio_branch.tscam_conv.bias", (classes,)), ("audio_branch.head.weight", (classes, classes)),
                       ("audio_branch.head.bias", (classes,)),
                       *((f"{tower}_transform.sequential.{i}.{p}", (joint, joint) if p == "weight" else (joint,))
                         for tower in ("audio", "text") for i in (0, 3) for p in ("weight", "bias"))):
        state[key] = torch.randn(shape, generator=generator) * 0.02
    checkpoint = {"state_dict": {f"module.{k}": v.detach().clone().contiguous() for k, v in state.items()}, "epoch": 15}
    path = Path(path)
    torch.save(checkpoint, path)
    return path
