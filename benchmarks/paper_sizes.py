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
import copy
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
SD_VAE = Spec("vae", {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
                      "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                      "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
                      "sample_size": 256, "scaling_factor": 0.18215},
              "hub stabilityai/sd-vae-ft-mse vae config.json (SD's kl-f8 first stage: ch 128, ch_mult 1,2,4,4, "
              "2 res blocks, z 4; the same numbers as open-mmlab/mmagic configs/stable_diffusion/"
              "stable-diffusion_ddim_denoisingunet.py's vae); zeroscope_v2_576w's vae/ (SD 2's) is the same network")
AUDIOLDM_VAE = Spec("vae", {"in_channels": 1, "out_channels": 1, "latent_channels": 8,
                            "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
                            "block_out_channels": [128, 256, 512], "layers_per_block": 2, "norm_num_groups": 32,
                            "sample_size": 256, "scaling_factor": 0.9227914214134216},
                    "haoheliu/AudioLDM@4054cb418ba3d947d94f6ad302f1d6a320e2313c audioldm/utils.py "
                    "default_audioldm_config: first_stage ddconfig ch 128, ch_mult [1,2,4], num_res_blocks 2, z 8 "
                    "(every AudioLDM v1 size: s, m, l); scaling_factor: hub cvssp/audioldm-m-full vae/config.json")
CLIP_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
               "projection_dim": 768}
CLIP_L_TEXT_SOURCE = ("hub openai/clip-vit-large-patch14 config.json text_config (SD 1.5's text_encoder is this "
                      "tower: 12 layers, 768 wide, 3072 FFN, 77 positions; transformers' CLIPTextConfig defaults)")
CLIP_L_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu"}
CLIP_L_VISION_SOURCE = ("hub openai/clip-vit-large-patch14 config.json vision_config: ViT-L/14 at 224 px, 24 layers, "
                        "1024 wide, 4096 FFN, projection 768 (VTA-LDM's f_V, 768-d; "
                        "/work/shared/reference/official-code-notes.md section 2)")

PAPER: dict[str, dict[str, Spec]] = {
    # the joint system's video model: an SD1.5-layout UNet + AnimateDiff v2 motion modules, SD's VAE, CLIP text
    "paper:sd15": {
        "unet": Spec("unet2d", {"sample_size": 64, "in_channels": 4, "out_channels": 4, **SD15_BLOCKS,
                                "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                                "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32},
                     "hub SG161222/Realistic_Vision_V5.1_noVAE unet/config.json = runwayml/stable-diffusion-v1-5's "
                     "(320/640/1280/1280, 2 layers per block, 8 heads, context 768; the Rust port in the code index "
                     "cites https://huggingface.co/runwayml/stable-diffusion-v1-5/blob/main/unet/config.json with "
                     "these values)"),
        "vae": SD_VAE,
        "text_encoder": Spec("clip_text", CLIP_L_TEXT, CLIP_L_TEXT_SOURCE),
        "tokenizer": Spec("clip_tokenizer", {"model_max_length": 77}, "SD 1.5 tokenizer: 77 tokens"),
        "scheduler": Spec("scheduler", {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                        "beta_schedule": "scaled_linear", "clip_sample": False,
                                        "set_alpha_to_one": False, "steps_offset": 1},
                          "SD 1.5 scheduler/scheduler_config.json"),
    },
    "paper:animatediff_v152": {
        "": Spec("motion_adapter", {"block_out_channels": [320, 640, 1280, 1280], "motion_layers_per_block": 2,
                                    "motion_mid_block_layers_per_block": 1, "motion_num_attention_heads": 8,
                                    "motion_norm_num_groups": 32, "motion_max_seq_length": 32,
                                    "use_motion_mid_block": True},
                 "hub guoyww/animatediff-motion-adapter-v1-5-2 config.json (v2: a motion mid block; v3's config, "
                 "pinned in a repository of the code index, differs only in use_motion_mid_block false)"),
    },
    "paper:audioldm_m": {
        "unet": Spec("unet2d", {"sample_size": 128, "in_channels": 8, "out_channels": 8, **AUDIOLDM_BLOCKS,
                                "block_out_channels": [192, 384, 576, 960], "layers_per_block": 2,
                                "cross_attention_dim": [192, 384, 576, 960], "norm_num_groups": 32,
                                "class_embed_type": "simple_projection",
                                "projection_class_embeddings_input_dim": 512, "class_embeddings_concat": True},
                     "haoheliu/AudioLDM@4054cb41 audioldm/utils.py: model_channels 192 for '-m-' models, "
                     "channel_mult [1,2,3,5], num_res_blocks 2, attention at 8,4,2× (3 attention levels), "
                     "extra_film_condition_dim 512 concatenated; self-attention only (diffusers' conversion: "
                     "cross_attention_dim = the block widths); head count left at the class default"),
        "vae": AUDIOLDM_VAE,
        "text_encoder": Spec("clap_text", {"vocab_size": 50265, "hidden_size": 768, "intermediate_size": 3072,
                                           "num_hidden_layers": 12, "num_attention_heads": 12,
                                           "max_position_embeddings": 514, "type_vocab_size": 1,
                                           "projection_dim": 512, "pad_token_id": 1, "bos_token_id": 0,
                                           "eos_token_id": 2},
                             "hub cvssp/audioldm-m-full text_encoder/config.json: CLAP's RoBERTa-base text tower "
                             "(12 layers, 768, 514 positions) with a 512-d projection"),
        "tokenizer": Spec("roberta_tokenizer", {"model_max_length": 512},
                          "ASSUMED: RobertaTokenizer's model_max_length 512 (AudioLDM pads prompts to it)"),
        "vocoder": Spec("hifigan", {"model_in_dim": 64, "sampling_rate": 16000, "upsample_initial_channel": 1024,
                                    "upsample_rates": [5, 4, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 8, 4, 4],
                                    "resblock_kernel_sizes": [3, 7, 11],
                                    "resblock_dilation_sizes": [[1, 3, 5]] * 3, "normalize_before": False},
                        "hub cvssp/audioldm-m-full vocoder/config.json (HiFi-GAN V1; not run in training)"),
        "scheduler": Spec("scheduler", {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195,
                                        "beta_schedule": "scaled_linear", "clip_sample": False,
                                        "set_alpha_to_one": False, "steps_offset": 1},
                          "AudioLDM linear_start 0.0015, linear_end 0.0195 (audioldm/utils.py)"),
    },
    "paper:zeroscope": {
        "unet": Spec("unet3d", {"sample_size": 32, "in_channels": 4, "out_channels": 4, **ZEROSCOPE_BLOCKS,
                                "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                                "attention_head_dim": 64, "cross_attention_dim": 1024, "norm_num_groups": 32},
                     "hub cerspense/zeroscope_v2_576w unet/config.json (ModelScope's UNet3D: 320/640/1280/1280, "
                     "2 layers per block, 64-d heads, context 1024; diffusers' UNet3DConditionModel defaults)"),
        "vae": SD_VAE,
        "text_encoder": Spec("clip_text", {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096,
                                           "num_hidden_layers": 23, "num_attention_heads": 16,
                                           "max_position_embeddings": 77, "hidden_act": "gelu",
                                           "projection_dim": 512},
                             "hub cerspense/zeroscope_v2_576w text_encoder/config.json: OpenCLIP ViT-H/14's text "
                             "tower as SD 2 keeps it (23 of 24 layers, 1024 wide, 4096 FFN)"),
        "tokenizer": Spec("clip_tokenizer", {"model_max_length": 77}, "zeroscope tokenizer: 77 tokens"),
        "scheduler": Spec("scheduler", {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                        "beta_schedule": "scaled_linear", "clip_sample": False,
                                        "set_alpha_to_one": False, "steps_offset": 1},
                          "zeroscope scheduler/scheduler_config.json"),
    },
    "paper:beats": {
        "": Spec("beats", {}, "avgen.encoders.beats.BEATsConfig defaults = BEATs_iter3_plus_AS2M cpt2's cfg "
                              "(12 layers, 768 wide, 3072 FFN, 16×16 patches, 512-d patch embedding; "
                              "microsoft/unilm beats/BEATs.py)"),
    },
    "paper:clip_l14": {
        "": Spec("clip_vision", CLIP_L_VISION, CLIP_L_VISION_SOURCE),
        "text": Spec("clip_text_projection", CLIP_L_TEXT, CLIP_L_TEXT_SOURCE),
        "tokenizer": Spec("clip_tokenizer", {"model_max_length": 77}, "CLIP tokenizer: 77 tokens"),
    },
    # VTA-LDM's codec: audioldm-s-full's VAE (the same first stage as every AudioLDM v1 size) and vocoder
    "paper:audioldm_s": {
        "vae": AUDIOLDM_VAE,
        "vocoder": Spec("hifigan", {"model_in_dim": 64, "sampling_rate": 16000, "upsample_initial_channel": 1024,
                                    "upsample_rates": [5, 4, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 8, 4, 4],
                                    "resblock_kernel_sizes": [3, 7, 11],
                                    "resblock_dilation_sizes": [[1, 3, 5]] * 3, "normalize_before": False},
                        "HiFi-GAN V1 as in cvssp/audioldm-s-full's vocoder (not run in training)"),
    },
}

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
def _clip_tokenizer(config: Mapping[str, Any]):
    from avgen.backbones.tiny import clip_tokenizer

    return clip_tokenizer(int(config["model_max_length"]))


def _roberta_tokenizer(config: Mapping[str, Any]):
    from avgen.backbones.tiny import roberta_tokenizer

    return roberta_tokenizer(int(config["model_max_length"]))


def _beats(config: Mapping[str, Any]):
    from avgen.encoders.beats import BEATs, BEATsConfig

    model = BEATs(BEATsConfig(**{"finetuned_model": False, **config}))
    return model


def _transformers(model_cls: str, config_cls: str):
    def build(config: Mapping[str, Any]):
        import transformers

        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
    return build


def _diffusers(name: str):
    def build(config: Mapping[str, Any]):
        import diffusers

        return getattr(diffusers, name)(**config)
    return build


#: kind → builder of the module (or tokenizer) from its config
KINDS = {
    "unet2d": _diffusers("UNet2DConditionModel"),
    "unet3d": _diffusers("UNet3DConditionModel"),
    "vae": _diffusers("AutoencoderKL"),
    "motion_adapter": _diffusers("MotionAdapter"),
    "clip_text": _transformers("CLIPTextModel", "CLIPTextConfig"),
    "clip_text_projection": _transformers("CLIPTextModelWithProjection", "CLIPTextConfig"),
    "clip_vision": _transformers("CLIPVisionModelWithProjection", "CLIPVisionConfig"),
    "clap_text": _transformers("ClapTextModelWithProjection", "ClapTextConfig"),
    "hifigan": _transformers("SpeechT5HifiGan", "SpeechT5HifiGanConfig"),
    "beats": _beats,
    "clip_tokenizer": _clip_tokenizer,
    "roberta_tokenizer": _roberta_tokenizer,
}

#: the modules whose ``load_pretrained`` (imported by name) the backbone loaders call
LOADER_MODULES = ("avgen.backbones.loader", "avgen.backbones.animatediff", "avgen.backbones.audioldm",
                  "avgen.backbones.text2video", "avgen.encoders.clip_text", "avgen.encoders.frames")


def build_spec(spec: Spec, device: str | torch.device = "meta", seed: int = 0):
    """The module (random weights; on ``meta``: none) or tokenizer of ``spec``."""
    if spec.kind in ("clip_tokenizer", "roberta_tokenizer"):
        return KINDS[spec.kind](spec.config)
    torch.manual_seed(seed)
    with torch.device(device):
        module = KINDS[spec.kind](copy.deepcopy(spec.config))
    return module.eval()


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
