"""CLIP's text tower as a frozen condition encoder: the pooled, projected text embedding of a caption
(``CLIPTextModelWithProjection.text_embeds``), as VTA-LDM's public code computes its text condition (Xu et al. 2024,
arXiv 2407.07464, Table 3; the ``clip_text`` of its ``Clip4Video``: tokenizer padding to the longest caption,
truncation at 77 tokens).

A hub folder of a full CLIP model (``openai/clip-vit-large-patch14``: ``config.json`` of a ``CLIPModel``, the
tokenizer files beside it) loads directly: transformers takes the text tower's config and weights from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from avgen.backbones.loader import load_pretrained, resolve_source
from avgen.pretrained import FrozenModule


class CLIPTextEmbedder(FrozenModule):
    """Captions → (B, D) float32 ``text_embeds`` (D = the model's ``projection_dim``: 768 for ViT-L/14).

    Args:
        model: the text tower with its projection; frozen here.
        tokenizer: its tokenizer (captions longer than ``max_length`` tokens are truncated).
    """

    def __init__(self, model: CLIPTextModelWithProjection, tokenizer: CLIPTokenizer, max_length: int = 77):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.freeze()

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    def forward(self, captions: Sequence[str]) -> Tensor:
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"CLIPTextEmbedder expects a list of strings, one per clip, got {captions!r}")
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        device = self.model.device
        with torch.no_grad():
            out = self.model(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        return out.text_embeds.float()


def load_clip_text(source: str | os.PathLike, config_key: str = "model.text_encoder.path", *,
                   tiny_dir: str | os.PathLike | None = None) -> CLIPTextEmbedder:
    """The frozen :class:`CLIPTextEmbedder` of a CLIP folder or hub id (local files only), or ``tiny:clip4clip``.

    Raises:
        PretrainedModelMissing: no such folder or cached hub model (the message names ``config_key``).
    """
    source = resolve_source(str(source), tiny_dir, config_key)
    model = load_pretrained(CLIPTextModelWithProjection, source, config_key)
    tokenizer = load_pretrained(CLIPTokenizer, source, config_key)
    return CLIPTextEmbedder(model, tokenizer, max_length=min(77, model.config.max_position_embeddings))
