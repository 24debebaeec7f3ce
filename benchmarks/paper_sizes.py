"""The architectures of the three systems' backbones at the papers' size, and the ``small`` sizes of the feature-cache
benchmark, as config dicts that :func:`built_from_specs` turns into models without any weights file.

Each backbone source (a name in place of a hub id or folder) maps its subfolders to a :class:`Spec`: the class, its
constructor config and where the values come from. The paper-scale specs are transcribed from the published
``config.json`` of the hub repository named in ``source`` (the GitHub index this was written with holds none of
these hub files; where a value was checked against a readable copy or the library, ``source`` says so). Attention
head counts never change a FLOP count (the attention matmuls cost 2·L²·C whatever the split of C into heads), so a
head count that could not be checked is left at the class default and marked so.

``paper_flops.py`` builds them on the ``meta`` device (no memory, no weights) to count FLOPs; ``feature_cache.py``
builds the ``small`` ones on the CPU with random weights to time training steps.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

SD15_BLOCKS = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
               "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
AUDIOLDM_BLOCKS = {"down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
                   "up_block_types": ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"]}
ZEROSCOPE_BLOCKS = {"down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
                    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3}


@dataclass(frozen=True)
class Spec:
    """One model of a backbone source: ``kind`` (a key of :data:`KINDS`), its constructor ``config`` and the
    ``source`` the values were transcribed from."""

    kind: str
    config: dict[str, Any]
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- paper scale
#: the paper-scale sources of this benchmark → avgen's architecture files (configs/architectures/<name>.yaml, the
#: ``random:<name>`` sources of scale=paper_random: :mod:`avgen.backbones.paper_random`), which cite their sources
ARCHITECTURES = {"paper:sd15": "sd15", "paper:animatediff_v152": "animatediff_v152", "paper:audioldm_m": "audioldm_m",
                 "paper:zeroscope": "zeroscope", "paper:beats": "beats", "paper:clip_l14": "clip4clip",
                 "paper:audioldm_s": "audioldm_s"}


def _paper_specs(name: str) -> dict[str, Spec]:
    from avgen.backbones.paper_random import architecture

    return {("" if key == "." else key): Spec(entry["kind"], entry["config"], entry.get("source", ""))
            for key, entry in architecture(name)["components"].items()}


PAPER: dict[str, dict[str, Spec]] = {source: _paper_specs(name) for source, name in ARCHITECTURES.items()}
SD_VAE = PAPER["paper:sd15"]["vae"]
AUDIOLDM_VAE = PAPER["paper:audioldm_m"]["vae"]

#: VTA-LDM's U-Net at the paper's size: configs/model/vta_ldm.yaml ``unet`` (the public code's
#: configs/diffusion_model_config_large_2048.json), read from the yaml by :func:`vta_ldm_unet`
VTA_LDM_UNET_FILE = "configs/model/vta_ldm.yaml"


def vta_ldm_unet(repo_root) -> dict[str, Any]:
    """The ``unet`` block of ``configs/model/vta_ldm.yaml`` (paper scale), as a plain dict."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(f"{repo_root}/{VTA_LDM_UNET_FILE}")
    return OmegaConf.to_container(cfg.unet)


# ---------------------------------------------------------------------------------------------- systems
#: per system: the backbone sources, the clip geometry and per-GPU batch of the paper's training run, and the
#: constructor arguments of the system that differ from configs/model/<system>.yaml
SYSTEMS: dict[str, dict[str, Any]] = {
    "joint": {
        # Hayakawa et al. Sec. IV-A: 4-s clips, 8 fps, 256×256, 16 kHz (configs/data/greatest_hits.yaml);
        # the public code trains with batch 1 per GPU on 8 GPUs (official-code-notes.md section 3)
        "clip": {"seconds": 4.0, "fps": 8, "height": 256, "width": 256, "sample_rate": 16000},
        "batch": 1,
        "sources": {"video": "paper:sd15", "motion_adapter": "paper:animatediff_v152", "audio": "paper:audioldm_m"},
        "gradient_checkpointing": False,
    },
    "tempotokens": {
        # Yariv et al. Sec. 5: 24 frames, 1 s, batch 8 on 2 GPUs = 4 per GPU; 256×384 (the public code's frames,
        # configs/experiment/tempotokens_vggsound.yaml); UNet3D gradient checkpointing on (the paper's)
        "clip": {"seconds": 1.0, "fps": 24, "height": 256, "width": 384, "sample_rate": 16000},
        "batch": 4,
        "sources": {"t2v": "paper:zeroscope", "encoder": "paper:beats"},
        "gradient_checkpointing": True,
    },
    "vta_ldm": {
        # Xu et al. Sec. 5: 10-s clips, frames at 2 fps (20 frames, 224 px after CLIP's resize), audio padded to
        # 10.24 s; configs/experiment/vta_ldm.yaml: batch 2 per device, U-Net gradient checkpointing on
        "clip": {"seconds": 10.0, "fps": 2, "height": 256, "width": 256, "sample_rate": 16000},
        "batch": 2,
        "sources": {"encoder": "paper:clip_l14", "audio": "paper:audioldm_s"},
        "gradient_checkpointing": True,
    },
}


# ---------------------------------------------------------------------------------------------- builders
#: kind → builder of the module (or tokenizer) from its config: avgen's (scale=paper_random builds the same way)
from avgen.backbones.paper_random import KINDS  # noqa: E402,F401

#: the modules whose ``load_pretrained`` (imported by name) the backbone loaders call
LOADER_MODULES = ("avgen.backbones.loader", "avgen.backbones.animatediff", "avgen.backbones.audioldm",
                  "avgen.backbones.text2video", "avgen.encoders.clip_text", "avgen.encoders.frames")


def build_spec(spec: Spec, device: str | torch.device = "meta", seed: int = 0):
    """The module (random weights; on ``meta``: none) or tokenizer of ``spec``
    (:func:`avgen.backbones.paper_random.build_spec` on ``device``)."""
    from avgen.backbones.paper_random import build_spec as build

    with torch.device(device):
        return build(spec.kind, spec.config, seed=seed)


@contextlib.contextmanager
def built_from_specs(sources: Mapping[str, Mapping[str, Spec]], device: str | torch.device = "meta"
                     ) -> Iterator[None]:
    """Within the block, avgen's backbone loaders build every source named in ``sources`` from its specs on
    ``device`` instead of reading files (other sources load as usual): ``load_pretrained`` of the loader modules
    and TempoTokens' ``load_beats`` are replaced. Schedulers are built from their spec's config with the
    loader's overrides."""
    from avgen.backbones import loader

    originals = {}
    read_files = loader.load_pretrained

    def load_pretrained(cls, name_or_path, config_key, *, subfolder=None, output_loading_info=False, **kwargs):
        specs = sources.get(str(name_or_path))
        if specs is None:
            if output_loading_info:
                kwargs["output_loading_info"] = True
            return read_files(cls, name_or_path, config_key, subfolder=subfolder, **kwargs)
        key = "text" if cls.__name__ == "CLIPTextModelWithProjection" and "text" in specs else (subfolder or "")
        if cls.__name__ == "CLIPTokenizer" and "tokenizer" in specs:
            key = "tokenizer"
        spec = specs[key]
        if spec.kind == "scheduler":
            return cls.from_config({**spec.config, **kwargs})
        out = build_spec(spec, device)
        return (out, {"missing_keys": [], "unexpected_keys": []}) if output_loading_info else out

    def load_beats(path, config_key="model.encoder.path"):
        specs = sources.get(str(path))
        if specs is None:
            return originals[("avgen.systems.tempotokens", "load_beats")](path, config_key)
        from avgen.pretrained import freeze

        model = build_spec(specs[""], device)
        freeze(model)
        return model

    class MotionModel:
        """``UNetMotionModel.from_unet2d`` building the combined UNet on ``device`` too (it copies the weights of
        the UNet and the adapter it is given, so on meta it must be made there)."""

        @staticmethod
        def from_unet2d(unet2d, adapter, **kwargs):
            with torch.device(device):
                return originals[("avgen.backbones.animatediff", "UNetMotionModel")].from_unet2d(unet2d, adapter,
                                                                                                 **kwargs)

    patches = [(name, "load_pretrained", load_pretrained) for name in LOADER_MODULES]
    patches.append(("avgen.backbones.animatediff", "UNetMotionModel", MotionModel))
    patches.append(("avgen.systems.tempotokens", "load_beats", load_beats))
    for module_name, attr, replacement in patches:
        module = importlib.import_module(module_name)
        originals[(module_name, attr)] = getattr(module, attr)
        setattr(module, attr, replacement)
    try:
        yield
    finally:
        for (module_name, attr), original in originals.items():
            setattr(importlib.import_module(module_name), attr, original)


# ---------------------------------------------------------------------------------------------- small scale
def shrink(spec: Spec, note: str, **changes: Any) -> Spec:
    """``spec`` with ``changes`` to its config (the same layout, narrower)."""
    return Spec(spec.kind, {**spec.config, **changes}, f"{note} (paper: {spec.source.split(':')[0]})")


#: every width of the ``small`` models is the paper's / 8 (GroupNorm groups 8 so they divide), depths and layouts
#: kept; the clip geometry shrinks for both paths alike, so the frozen / trainable FLOP ratio stays near the
#: paper's (``paper_flops.py --scale both`` prints both; the note records them)
SMALL: dict[str, dict[str, Spec]] = {
    "small:sd15": {
        "unet": shrink(PAPER["paper:sd15"]["unet"], "SD 1.5 UNet / 8", block_out_channels=[40, 80, 160, 160],
                       attention_head_dim=5, cross_attention_dim=96, norm_num_groups=8),
        "vae": shrink(SD_VAE, "SD VAE / 8", block_out_channels=[16, 32, 64, 64], norm_num_groups=8),
        "text_encoder": shrink(PAPER["paper:sd15"]["text_encoder"], "CLIP text / 8, 2 layers", hidden_size=96,
                               intermediate_size=384, projection_dim=96, num_hidden_layers=2),
        "tokenizer": PAPER["paper:sd15"]["tokenizer"],
        "scheduler": PAPER["paper:sd15"]["scheduler"],
    },
    "small:animatediff_v152": {
        "": shrink(PAPER["paper:animatediff_v152"][""], "motion adapter / 8", block_out_channels=[40, 80, 160, 160],
                   motion_num_attention_heads=5, motion_norm_num_groups=8),
    },
    "small:audioldm_m": {
        "unet": shrink(PAPER["paper:audioldm_m"]["unet"], "AudioLDM-m UNet / 8", block_out_channels=[24, 48, 72, 120],
                       cross_attention_dim=[24, 48, 72, 120], norm_num_groups=8,
                       projection_class_embeddings_input_dim=64, attention_head_dim=3),
        "vae": shrink(AUDIOLDM_VAE, "AudioLDM VAE / 8", block_out_channels=[16, 32, 64], norm_num_groups=8),
        "text_encoder": shrink(PAPER["paper:audioldm_m"]["text_encoder"], "CLAP text / 8, 1 layer", hidden_size=96,
                               intermediate_size=384, projection_dim=64, num_hidden_layers=1),
        "tokenizer": PAPER["paper:audioldm_m"]["tokenizer"],
        "vocoder": shrink(PAPER["paper:audioldm_m"]["vocoder"], "HiFi-GAN / 8", upsample_initial_channel=128),
        "scheduler": PAPER["paper:audioldm_m"]["scheduler"],
    },
    "small:zeroscope": {
        "unet": shrink(PAPER["paper:zeroscope"]["unet"], "zeroscope UNet3D / 8", block_out_channels=[40, 80, 160, 160],
                       attention_head_dim=8, cross_attention_dim=128, norm_num_groups=8),
        "vae": shrink(SD_VAE, "SD VAE / 8", block_out_channels=[16, 32, 64, 64], norm_num_groups=8),
        "text_encoder": shrink(PAPER["paper:zeroscope"]["text_encoder"], "OpenCLIP-H text / 8, 2 layers",
                               hidden_size=128, intermediate_size=512, projection_dim=64, num_hidden_layers=2),
        "tokenizer": PAPER["paper:zeroscope"]["tokenizer"],
        "scheduler": PAPER["paper:zeroscope"]["scheduler"],
    },
    "small:beats": {
        "": Spec("beats", {"encoder_embed_dim": 96, "encoder_ffn_embed_dim": 384, "embed_dim": 64},
                 "BEATs iter3 / 8 (12 layers, 96 wide)"),
    },
    "small:clip_l14": {
        "": shrink(PAPER["paper:clip_l14"][""], "ViT-L/14 / 8", hidden_size=128, intermediate_size=512,
                   projection_dim=96),
        "text": shrink(PAPER["paper:clip_l14"]["text"], "CLIP text / 8", hidden_size=96, intermediate_size=384,
                       projection_dim=96),
        "tokenizer": PAPER["paper:clip_l14"]["tokenizer"],
    },
    "small:audioldm_s": {
        "vae": shrink(AUDIOLDM_VAE, "AudioLDM VAE / 8", block_out_channels=[16, 32, 64], norm_num_groups=8),
        "vocoder": shrink(PAPER["paper:audioldm_s"]["vocoder"], "HiFi-GAN / 8", upsample_initial_channel=128),
    },
}

#: the ``small`` systems: sources, clip geometry, batch and the model overrides (trainable modules / 8)
SMALL_SYSTEMS: dict[str, dict[str, Any]] = {
    "joint": {
        "clip": {"seconds": 2.0, "fps": 8, "height": 64, "width": 64, "sample_rate": 16000},
        "batch": 1,
        "sources": {"video": "small:sd15", "motion_adapter": "small:animatediff_v152", "audio": "small:audioldm_m"},
        "gradient_checkpointing": False,
        "overrides": ["model.connector.channels=40", "model.connector.out_dim=160", "+model.connector.norm_groups=4",
                      "model.block.head_dim=8", "+model.block.norm_groups=8"],
    },
    "tempotokens": {
        "clip": {"seconds": 1.0, "fps": 24, "height": 64, "width": 96, "sample_rate": 16000},
        "batch": 1,
        "sources": {"t2v": "small:zeroscope", "encoder": "small:beats"},
        "gradient_checkpointing": True,
        "overrides": [],
    },
    "vta_ldm": {
        "clip": {"seconds": 2.5, "fps": 2, "height": 64, "width": 64, "sample_rate": 16000},
        "batch": 1,
        "sources": {"encoder": "small:clip_l14", "audio": "small:audioldm_s"},
        "gradient_checkpointing": True,
        "overrides": ["model.audio.seconds=2.56", "model.unet.block_out_channels=[40,80,80,160]",
                      "model.unet.cross_attention_dim=256", "+model.unet.norm_num_groups=8"],
    },
}
