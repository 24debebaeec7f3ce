"""LanguageBind's image tower as a VTA-LDM conditioning encoder (Xu et al. 2024, arXiv 2407.07464, Table 2 and
appendix C, item 3: "whether vision embeddings extracted from LanguageBind can serve as a better condition"): the
``LanguageBind/LanguageBind_Image`` image embedding (Zhu et al. 2023) of every frame, in time order.

The published model and how it is read here (checked in PKU-YuanGroup/LanguageBind at commit 7070c53):

- ``languagebind/image/modeling_image.py``: ``LanguageBindImage`` is CLIP with the same module names
  (``vision_model.{embeddings.{class_embedding, patch_embedding, position_embedding}, pre_layrnorm,
  encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.{fc1,fc2}, layer_norm2}, post_layernorm}``,
  ``visual_projection`` without bias, plus ``text_model``, ``text_projection``, ``logit_scale``). Its vision
  forward is CLIP's: ``post_layernorm`` of the CLS token, then ``visual_projection``
  (``get_image_features``); a 4-D image batch has T = 1, so the mean over T is the identity. Its extras are off in
  the image model: ``PatchDropout`` acts only in training; ``add_time_attn`` (temporal attention, the video model's)
  and ``lora_r`` (LoRA via peft, which renames the encoder's keys to ``encoder.base_model.model.layers…``) must be
  false / 0. Video-LLaVA (PKU-YuanGroup/Video-LLaVA issue #18) loads this model's ``vision_model`` as its image tower
  and lists its keys as ``image_tower.encoder.layers.13.mlp.fc1.bias``: no LoRA renaming and no ``temporal_*`` keys.
- ``languagebind/image/configuration_image.py``: ``config.json`` is a ``LanguageBindImageConfig``
  (``model_type: LanguageBindImage``) with ``vision_config`` (CLIP's vision fields plus ``add_time_attn``,
  ``num_frames``, ``force_patch_dropout``, ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``num_mel_bins``,
  ``target_length``, ``video_decode_backend``) and the top-level ``projection_dim`` that sizes ``visual_projection``.
  ``num_mel_bins`` / ``target_length`` ≠ 0 would resize the positions (the audio model's geometry) and are refused.
- ``languagebind/image/processing_image.py``: ``ToTensor``, ``Resize(224, BICUBIC)``, ``CenterCrop(224)``,
  ``Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)`` — OpenAI CLIP's constants, the ones
  :func:`avgen.encoders.clip4clip.preprocess` uses. Its resize runs on the float tensor after ``ToTensor``
  (antialiased from torchvision 0.17 on, not before; ``requirements.txt`` does not pin torchvision) and its crop
  offset rounds half-to-even; here it is CLIP's / OpenCLIP's PIL bicubic on 8-bit frames with the offset rounded
  down, the preprocessing the weights were trained with (the README: "our image encoder is the same as OpenCLIP").

Not checked (the Hugging Face repository cannot be reached from here): the exact values in the published
``config.json`` (ViT-L/14 per the README: 24 layers, 1024 wide, 16 heads, patch 14, 224², projection 768; the
activation) and whether the weights are ``pytorch_model.bin`` or ``model.safetensors``. The loader therefore reads the
architecture from ``config.json``, accepts either file, and checks every key: the tower's weights go into transformers'
``CLIPVisionModelWithProjection`` through an explicit key map (:func:`key_map`) that must cover the file's vision keys
exactly; the text tower, ``logit_scale`` and the ``position_ids`` buffers that transformers ≤ 4.30 saved are dropped.
No remote code runs.

The embeddings are ``get_image_features`` (``image_embeds`` of ``CLIPVisionModelWithProjection``): unnormalised, as
CLIP4Clip's, which VTA-LDM's public code reads from the same transformers class; ``LanguageBindImage.forward`` and
the ``LanguageBind`` wrapper normalise them (the wrapper also multiplies by ``exp(logit_scale)``), a per-frame scale
that VTA-LDM's trained projection can absorb. Shapes, for B clips of F frames at 2 fps::

    frames (B, F, 3, H, W) uint8  ── preprocess, per frame ──>  pixels (B·F, 3, 224, 224) float32
    pixels  ── vision tower, visual_projection ──>  embeds (B, F, 768) float32     (axis 1 is time)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from avgen.backbones.loader import TINY_PREFIX, resolve_source
from avgen.backbones.tiny import TINY_BUILDERS
from avgen.encoders.clip4clip import CLIP4ClipEncoder
from avgen.encoders.frames import EncoderModelMissing, check_fps, check_normalize, transformers_errors_only
from avgen.errors import ConfigError
from avgen.pretrained import quiet_loading

HUB_ID = "LanguageBind/LanguageBind_Image"
FPS = 2  # frames per second the encoder expects (VTA-LDM's frame rate)
TINY_SOURCE = f"{TINY_PREFIX}languagebind"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is read
MODEL_TYPE = "LanguageBindImage"
#: ``vision_config`` fields that shape the tower; each must be in ``config.json``
ARCHITECTURE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                       "patch_size", "hidden_act", "layer_norm_eps")
#: ``vision_config`` fields taken when present (CLIPVisionConfig's defaults otherwise)
OPTIONAL_FIELDS = ("num_channels", "attention_dropout", "initializer_range", "initializer_factor")
#: LanguageBind's own ``vision_config`` fields and the value the image model must have
PLAIN_CLIP = {"add_time_attn": False, "lora_r": 0, "num_mel_bins": 0, "target_length": 0}
#: per-tower keys outside the layers, relative to ``vision_model.``
TOWER_KEYS = ("embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
              "pre_layrnorm.weight", "pre_layrnorm.bias", "post_layernorm.weight", "post_layernorm.bias")
#: per-layer keys, relative to ``vision_model.encoder.layers.N.``
LAYER_KEYS = tuple(f"self_attn.{p}_proj.{w}" for p in ("k", "v", "q", "out") for w in ("weight", "bias")) + tuple(
    f"{m}.{w}" for m in ("layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2") for w in ("weight", "bias"))
#: published keys that are read and dropped: the text tower and its projection, the logit scale, and the position-id
#: buffers (an arange) that transformers ≤ 4.30 wrote with every CLIP model
DROPPED_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
DROPPED_KEYS = ("vision_model.embeddings.position_ids",)


class LanguageBindEncoder(CLIP4ClipEncoder):
    """LanguageBind_Image's ``image_embeds`` of every frame: CLIP4Clip's forward (CLIP preprocessing, one
    ``CLIPVisionModelWithProjection`` call, padding and mask) on LanguageBind's weights.

    Args:
        model: the image tower with its projection (:func:`load_languagebind` loads it); frozen here.
        normalize: OpenAI CLIP's mean/std on the pixels (LanguageBind's processor); False feeds [0, 1] pixels.
        fps: the frame rate the frames must be decoded at (2 in VTA-LDM); the encoder does not resample.
    """

    name = "LanguageBind"
    fps: float = FPS


def key_map(num_layers: int) -> dict[str, str]:
    """Published LanguageBind_Image key → ``CLIPVisionModelWithProjection`` key, for the vision tower of
    ``num_layers`` layers and its projection. LanguageBind kept CLIP's module names (its ``CLIPVisionTransformer`` is
    transformers' with patch dropout added), so every key maps to itself; the map is the list of what must be there."""
    names = [f"vision_model.{key}" for key in TOWER_KEYS]
    names += [f"vision_model.encoder.layers.{i}.{key}" for i in range(num_layers) for key in LAYER_KEYS]
    names.append("visual_projection.weight")
    return {name: name for name in names}


def _listing(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def tower_state(state: Mapping[str, Any], num_layers: int, where: str) -> dict[str, Tensor]:
    """The vision tower's weights of a published state dict, renamed by :func:`key_map` (float32).

    Raises:
        ConfigError: a mapped key is missing, or a key is neither mapped nor dropped (a LoRA-adapted encoder, a video
            tower's temporal layers, another layer count); the message lists them.
    """
    mapping = key_map(num_layers)
    kept = [k for k in state if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED_KEYS]
    missing = sorted(set(mapping) - set(kept))
    unexpected = sorted(set(kept) - set(mapping))
    if missing or unexpected:
        problems = [f"{len(keys)} {what}: {_listing(keys)}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ConfigError(f"{where}: the weights do not fit LanguageBind's image tower of {num_layers} layers "
                          f"(config.json): {'; '.join(problems)}. Expected the vision_model.* and "
                          f"visual_projection.weight keys of {HUB_ID} (a LoRA-adapted encoder or a video tower has "
                          f"other keys)")
    return {mapping[k]: state[k].float() for k in kept}


def vision_config(config: Mapping[str, Any], where: str) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` of a LanguageBind_Image ``config.json`` (read as JSON, no remote code).

    Raises:
        ConfigError: not a ``LanguageBindImage`` config, an architecture field missing, or a LanguageBind extra
            (temporal attention, LoRA, audio geometry) switched on.
    """
    if config.get("model_type") != MODEL_TYPE or not isinstance(config.get("vision_config"), Mapping):
        raise ConfigError(f"{where}: config.json has model_type {config.get('model_type')!r}; expected "
                          f"{MODEL_TYPE!r} with a vision_config, as {HUB_ID} publishes it")
    vision = config["vision_config"]
    absent = [k for k in ARCHITECTURE_FIELDS if k not in vision] + (
        [] if "projection_dim" in config else ["projection_dim (top level)"])
    if absent:
        raise ConfigError(f"{where}: config.json's vision_config lacks {', '.join(absent)}; expected the "
                          f"LanguageBindImageConfig of {HUB_ID}")
    extras = [f"{k}={vision[k]!r}" for k, plain in PLAIN_CLIP.items() if k in vision and vision[k] != plain]
    if extras:
        raise ConfigError(f"{where}: config.json sets {', '.join(extras)}, a LanguageBind tower other than the image "
                          f"one (temporal attention, LoRA adapters or an audio input); expected "
                          f"{', '.join(f'{k}={v!r}' for k, v in PLAIN_CLIP.items())} as in {HUB_ID}")
    fields = {k: vision[k] for k in (*ARCHITECTURE_FIELDS, *OPTIONAL_FIELDS) if k in vision}
    return CLIPVisionConfig(**fields, projection_dim=config["projection_dim"])


class LanguageBindModelMissing(EncoderModelMissing):
    """LanguageBind_Image is neither a local folder nor in the local hub cache, or its folder lacks a file."""

    what = "LanguageBind"
    hub_id = HUB_ID
    layout = f"config.json of a {MODEL_TYPE} and {' or '.join(WEIGHT_FILES)}, as the hub repository holds them"
    tiny_source = TINY_SOURCE


def _local_folder(source: str, config_key: str) -> Path:
    """``source`` as a folder: itself, or the snapshot of a hub id in the local cache (never downloaded)."""
    if Path(source).is_dir():
        return Path(source)
    if Path(source).exists() or source.count("/") != 1:
        raise LanguageBindModelMissing(source, config_key, "not a folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as err:  # huggingface_hub's LocalEntryNotFoundError, or an invalid repo id
        reason = f"{type(err).__name__}: {str(err).splitlines()[0].rstrip('.')}"
        raise LanguageBindModelMissing(source, config_key, reason) from err


def _read_weights(folder: Path, where: str, config_key: str) -> Mapping[str, Any]:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConfigError(f"{where}: cannot read {name} ({type(err).__name__}: {err}); expected the weights of "
                              f"{HUB_ID} (a state dict of tensors)") from err
    raise LanguageBindModelMissing(folder, config_key, f"no {' or '.join(WEIGHT_FILES)} in the folder")


def load_languagebind(source: str | os.PathLike | None = HUB_ID, config_key: str = "model.encoder.path", *,
                      tiny_dir: str | os.PathLike | None = None, normalize: bool = True,
                      fps: float = FPS) -> LanguageBindEncoder:
    """The frozen :class:`LanguageBindEncoder` from local files only.

    Args:
        source: a hub id read from the local Hugging Face cache (default ``LanguageBind/LanguageBind_Image``), a
            folder in that repository's layout (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), or
            ``tiny:languagebind`` (tiny random weights in the same layout, written once under ``tiny_dir`` by
            :func:`save_tiny_languagebind`).
        config_key: the config key ``source`` comes from, named in errors; ``normalize`` and ``fps`` are its siblings.
        tiny_dir: the folder for tiny weights (only with ``tiny:languagebind``).
        normalize, fps: see :class:`LanguageBindEncoder`.

    Raises:
        LanguageBindModelMissing: no such folder, nor the hub id in the local cache, or no weight file in it.
        ConfigError: ``config.json`` is not LanguageBind_Image's, the weights do not fit it (strict key map, shapes),
            or ``fps`` / ``normalize`` are not a positive number / a bool.
    """
    check_fps(fps, config_key, FPS)
    check_normalize(normalize, config_key, "LanguageBind's mean/std on the pixels",
                    "[0, 1] pixels, as the public VTA-LDM code feeds CLIP")
    if source is None:
        raise LanguageBindModelMissing(None, config_key)
    folder = _local_folder(resolve_source(str(source), tiny_dir, config_key), config_key)
    where = f"{config_key}={source}"
    if not (folder / "config.json").is_file():
        raise LanguageBindModelMissing(source, config_key, f"no config.json in {folder}")
    config = vision_config(json.loads((folder / "config.json").read_text()), where)
    state = tower_state(_read_weights(folder, where, config_key), config.num_hidden_layers, where)
    return LanguageBindEncoder(_tower(config, state, where), normalize=normalize, fps=fps)


def _tower(config: CLIPVisionConfig, state: Mapping[str, Tensor], where: str) -> CLIPVisionModelWithProjection:
    """The tower of ``config`` holding ``state`` (keys already checked), or a ConfigError listing mis-shaped weights.
    transformers builds it on the meta device and assigns the weights: a random init of ViT-L/14 takes 8 s on two
    CPU cores, this 1 s."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in CLIPVisionModelWithProjection(config).state_dict().items()}
    wrong = [f"{k} {tuple(v.shape)} (config.json: {shapes[k]})"
             for k, v in state.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        raise ConfigError(f"{where}: the weights do not fit the tower that config.json describes: "
                          f"{len(wrong)} mis-shaped: {_listing(wrong)}; expected {HUB_ID}")
    with transformers_errors_only(), quiet_loading():  # keys and shapes are checked above
        return CLIPVisionModelWithProjection.from_pretrained(None, config=config, state_dict=dict(state),
                                                             dtype=torch.float32)


#: the tiny twin's towers: ViT-L/14's patch and image size (the real preprocessing runs), 2 layers 32 wide
TINY_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def save_tiny_languagebind(folder: str | os.PathLike) -> None:
    """LanguageBind_Image's published layout, small: ``config.json`` as ``LanguageBindImageConfig.to_dict()`` writes
    it (``model_type`` ``LanguageBindImage``, the LanguageBind fields in ``vision_config``) and ``pytorch_model.bin``
    with both towers, ``logit_scale`` and the ``position_ids`` buffers, as transformers 4.30 saved them; seeded, so
    the same bytes every time. The weights come from a tiny transformers ``CLIPModel``, whose keys are
    LanguageBindImage's (the tests compare them with the published names)."""
    from transformers import CLIPConfig, CLIPModel

    from avgen.backbones.tiny import SEED

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vision = {**TINY_TOWER, "image_size": 224, "patch_size": 14, "num_channels": 3, "hidden_act": "gelu",
              "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0,
              "projection_dim": 16, "add_time_attn": False, "num_frames": 1, "force_patch_dropout": 0.0,
              "lora_r": 0, "lora_alpha": 16, "lora_dropout": 0.0, "num_mel_bins": 0.0, "target_length": 0.0,
              "video_decode_backend": "decord", "model_type": "clip_vision_model"}
    text = {**TINY_TOWER, "vocab_size": 64, "max_position_embeddings": 77, "hidden_act": "gelu",
            "layer_norm_eps": 1e-5, "projection_dim": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
            "add_time_attn": False, "model_type": "clip_text_model"}
    config = {"architectures": [MODEL_TYPE], "model_type": MODEL_TYPE, "projection_dim": 16,
              "logit_scale_init_value": 2.6592, "text_config": text, "vision_config": vision,
              "torch_dtype": "float32", "transformers_version": "4.30.2"}
    torch.manual_seed(SEED)
    clip = CLIPModel(CLIPConfig(
        text_config={k: v for k, v in text.items() if k not in ("add_time_attn", "model_type")},
        vision_config={k: v for k, v in vision.items() if k in (*ARCHITECTURE_FIELDS, *OPTIONAL_FIELDS)},
        projection_dim=16))
    state = {k: v.detach().clone().contiguous() for k, v in clip.state_dict().items()}
    positions = (224 // 14) ** 2 + 1
    state["vision_model.embeddings.position_ids"] = torch.arange(positions)[None]
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    torch.save(state, folder / "pytorch_model.bin")


# ``tiny:languagebind`` (scale=tiny): the twin is written by this module's own code
TINY_BUILDERS["languagebind"] = save_tiny_languagebind
