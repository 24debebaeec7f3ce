"""The cross-attention context of VTA-LDM (Xu et al. 2024, "Video-to-Audio Generation with Hidden Alignment",
arXiv 2407.07464, §3, Table 3 and appendix D): a trained linear projection φ of the condition tokens, laid out as the
authors' public code lays them out.

Conditions (``model.conditions``, any non-empty subset; ``pe`` and ``flow`` need ``video``):

- ``text``: the caption's pooled, projected CLIP text embedding (B, D), repeated once per time slot and placed
  *before* the video tokens (the public code's ``concat`` layout), through the same φ;
- ``video``: the frame (or time-slot) tokens of the video encoder (B, T, D);
- ``pe``: a sinusoidal position table (Vaswani et al. 2017, §3.5) added to the video tokens before φ (not
  concatenated; video tokens only, never to the flow tokens);
- ``flow``: the tokens (B, T, D) the same frozen video encoder gives for the clip's optical-flow images
  (:mod:`avgen.media.optical_flow`; appendix D item 3: "optical flow video embeddings ... concatenated with the
  original video embeddings"), placed *after* the video tokens, through the same φ, with the video's mask. The paper
  gives no layout; after the video keeps the text | video layout of the other rows unchanged.

Shapes: with T video slots the context is (B, T_c, D_φ), laid out text | video | flow: T_c = T for one condition,
2T for text + video (slots [0, T) the text, [T, 2T) the video) or video + flow (video, then flow), 3T for all three.
The null of the video condition (Eq. 2's ∅) is an all-zero context in the video slots *and the flow slots* (the flow
is derived from the video, so it is dropped with it) with the mask all true there (the paper's zero embedding); the
null of the text condition is the embedding of the negative prompt (the empty prompt in training).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

CONDITIONS = ("video", "text", "pe", "flow")


def check_conditions(conditions: Sequence[str], key: str = "model.conditions") -> tuple[str, ...]:
    """The conditions as a tuple in canonical order.

    Raises:
        ValueError: empty, an unknown name, ``pe`` or ``flow`` without ``video``; the message names ``key``.
    """
    given = list(conditions)
    unknown = sorted(set(given) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"{key}={given}: unknown condition {unknown[0]!r}; expected a subset of {list(CONDITIONS)}")
    if "flow" in given and "video" not in given:
        raise ValueError(f"{key}={given}: flow is computed from the video's frames and conditions with it; add video")
    if not {"video", "text"} & set(given):
        raise ValueError(f"{key}={given}: needs video or text (pe only marks the video tokens' positions)")
    if "pe" in given and "video" not in given:
        raise ValueError(f"{key}={given}: pe is added to the video tokens; add video")
    return tuple(c for c in CONDITIONS if c in given)


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """(length, dim) float32: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim))
    (Vaswani et al. 2017, §3.5; the public code's ``sinusoidal_positional_embedding``)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


class VTACondition(nn.Module):
    """φ and the layout of the context (module docstring).

    Args:
        in_dim: width of the condition tokens (the encoder's, e.g. 768 for CLIP ViT-L/14; the text embedding
            must have the same width, since both go through φ).
        out_dim: the U-Net's cross-attention width (2048).
        conditions: a subset of :data:`CONDITIONS` (:func:`check_conditions`).
    """

    def __init__(self, in_dim: int, out_dim: int, conditions: Sequence[str] = ("video",)):
        super().__init__()
        self.conditions = check_conditions(conditions)
        self.projection = nn.Linear(in_dim, out_dim)  # φ

    def forward(self, video: Tensor | None = None, video_mask: Tensor | None = None, text: Tensor | None = None,
                num_slots: int | None = None, keep_video: Tensor | None = None, flow: Tensor | None = None,
                flow_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The context (B, T_c, D_φ) and its attention mask (B, T_c) bool, laid out text | video | flow.

        Args:
            video: (B, T, D) video tokens (zero past each clip's end), when ``video`` is a condition.
            video_mask: (B, T) bool, True at real tokens (default all True).
            text: (B, D) text embeddings, when ``text`` is a condition.
            num_slots: T for a text-only context (default: the video's T).
            keep_video: (B,) bool; False gives clip i the video null (zeros after φ, mask all true) in the video
                and flow slots.
            flow: (B, T, D) tokens of the clip's flow images, when ``flow`` is a condition (same T as ``video``).
            flow_mask: (B, T) bool (default: the video's mask).

        Raises:
            ValueError: a condition's tokens missing, or flow tokens of another shape than the video's.
        """
        parts, masks = [], []
        if "video" in self.conditions:
            if video is None:
                raise ValueError("the video condition needs video tokens")
            b, slots = video.shape[:2]
            mask = torch.ones(b, slots, dtype=torch.bool, device=video.device) if video_mask is None else video_mask
        else:
            b, slots, mask = text.shape[0], int(num_slots), None
        if "text" in self.conditions:
            if text is None:
                raise ValueError("the text condition needs text embeddings")
            parts.append(text[:, None, :].expand(b, slots, text.shape[-1]))
            masks.append(torch.ones(b, slots, dtype=torch.bool, device=text.device))
        if "video" in self.conditions:
            tokens = video.float()
            if "pe" in self.conditions:
                tokens = tokens + sinusoidal_table(slots, tokens.shape[-1]).to(tokens.device)
            parts.append(tokens * mask[..., None])
            masks.append(mask)
        if "flow" in self.conditions:
            if flow is None or flow.shape != video.shape:
                got = "none" if flow is None else tuple(flow.shape)
                raise ValueError(f"the flow condition needs flow tokens shaped as the video's {tuple(video.shape)}; "
                                 f"got {got}")
            mask_f = mask if flow_mask is None else flow_mask
            parts.append(flow.float() * mask_f[..., None])
            masks.append(mask_f)
        context = self.projection(torch.cat(parts, dim=1).to(self.projection.weight.dtype))
        full_mask = torch.cat(masks, dim=1).to(context.device)
        context = context * full_mask[..., None]  # padded slots carry nothing
        if "video" in self.conditions and keep_video is not None:
            null = ~keep_video.to(context.device)
            # the video slots, and the flow slots after them: both come from the video
            derived = slots * (2 if "flow" in self.conditions else 1)
            video_slots = torch.zeros(full_mask.shape, dtype=torch.bool, device=context.device)
            video_slots[:, -derived:] = True
            dropped = null[:, None] & video_slots
            context = context.masked_fill(dropped[..., None], 0.0)
            full_mask = full_mask | dropped
        return context, full_mask
