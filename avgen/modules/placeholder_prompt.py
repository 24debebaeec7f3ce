"""Pseudo-text tokens placed into a frozen CLIP text encoder's input (TempoTokens, Sec. 3, Fig. 2/6).

TempoTokens conditions a frozen text-to-video model on audio by writing learned tokens into the
token-embedding sequence of its CLIP text encoder, one prompt per video frame, so that every frame
gets its own cross-attention context (Eq. 7: frame v^(i) conditioned on c^(i)). A prompt template
names where the tokens go with placeholders:

- ``<temp>``: the frame's temporal token (AudioMapper output for that frame);
- ``<local1>`` … ``<localK>``: the frame's context-window means (Eqs. 2–3), window k;
- ``<class>``: the clip's attentive-pooling token (Eqs. 4–6), the same in every frame;
- ``{caption}``: the clip's caption (text), for the text+audio prompts of Table 2.

E.g. the public code's prompt ``"<temp> <local1> <local2> <local3> <local4> <class>"`` (audio only),
``"A video of <temp> <local1> <local2> <local3> <local4> <class>"`` or ``"{caption}"`` (text only).

The placeholders are added to the tokenizer as new tokens (so they are never split), replaced by
an ordinary token id before the text encoder runs, and their rows of the token-embedding output are
overwritten with the audio tokens through a forward hook on the embedding layer — the text encoder
itself is not modified and needs no new embedding rows. Gradients flow through the frozen encoder
to the audio tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from avgen.errors import ConfigError

PLACEHOLDER = re.compile(r"<(temp|class|local(\d+))>")


class PlaceholderPrompt:
    """Encode per-frame prompts whose placeholders carry audio tokens.

    Args:
        tokenizer: the text encoder's (CLIP) tokenizer; placeholder tokens are added to it.
        text_encoder: the frozen CLIP text model (its token-embedding layer gets a forward hook
            while :meth:`encode` runs).
        template: the prompt, with placeholders and optionally ``{caption}``.
    """

    def __init__(self, tokenizer, text_encoder: nn.Module, template: str):
        self.tokenizer, self.text_encoder, self.template = tokenizer, text_encoder, template
        self.names = sorted({m.group(0) for m in PLACEHOLDER.finditer(template)}, key=_order)
        for name in self.names:
            match = PLACEHOLDER.fullmatch(name)
            if match.group(2) is not None and int(match.group(2)) < 1:
                raise ConfigError(f"model.prompt: {name} — window placeholders are <local1>, <local2>, ...")
        if self.names:
            tokenizer.add_tokens(self.names, special_tokens=True)
        self.ids = {name: tokenizer.convert_tokens_to_ids(name) for name in self.names}
        self.filler = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def windows(self) -> int:
        """How many window placeholders the template uses (the highest k of ``<localk>``)."""
        return max((int(n[6:-1]) for n in self.names if n.startswith("<local")), default=0)

    def texts(self, captions: list[str]) -> list[str]:
        return [self.template.replace("{caption}", c) for c in captions]

    def encode(self, captions: list[str], tokens: Mapping[str, torch.Tensor], frames: int) -> torch.Tensor:
        """Per-frame text states (B, F, L, D).

        Args:
            captions: one per clip (used where the template has ``{caption}``).
            tokens: ``temp`` (B, F, d), ``local`` (B, F, K, d), ``class`` (B, d) — whichever the
                template uses; d = the text encoder's embedding width.
            frames: F.
        """
        b = len(captions)
        enc = self.tokenizer(self.texts(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = enc.input_ids.to(self._device())
        values, slots = self._slot_values(ids, tokens, b, frames)
        rows = ids.repeat_interleave(frames, dim=0)  # (B·F, L), frame-major within each clip
        slot_rows = slots.repeat_interleave(frames, dim=0)
        safe = torch.where(slot_rows >= 0, torch.full_like(rows, self.filler), rows)
        embedding = self.text_encoder.get_input_embeddings()

        def overwrite(module, args, output):
            mask = slot_rows >= 0
            if not mask.any():
                return output
            out = output.clone()
            out[mask] = values[mask].to(out.dtype)
            return out

        handle = embedding.register_forward_hook(overwrite)
        try:
            states = self.text_encoder(safe).last_hidden_state
        finally:
            handle.remove()
        return states.reshape(b, frames, *states.shape[1:])

    def _slot_values(self, ids: torch.Tensor, tokens: Mapping[str, torch.Tensor], b: int, frames: int):
        """(values (B·F, L, d) to write, slots (B, L): index of the placeholder at each position or −1)."""
        slots = torch.full_like(ids, -1)
        columns = []
        for index, name in enumerate(self.names):
            slots[ids == self.ids[name]] = index
            columns.append(self._token(name, tokens, b, frames))
        if not columns:
            d = self.text_encoder.get_input_embeddings().embedding_dim
            return torch.zeros(b * frames, ids.shape[1], d, device=ids.device), slots
        stacked = torch.stack(columns, dim=2).reshape(b * frames, len(columns), -1)  # (B·F, P, d)
        index = slots.repeat_interleave(frames, dim=0).clamp(min=0)  # (B·F, L)
        values = torch.gather(stacked, 1, index[..., None].expand(-1, -1, stacked.shape[-1]))
        return values, slots

    @staticmethod
    def _token(name: str, tokens: Mapping[str, torch.Tensor], b: int, frames: int) -> torch.Tensor:
        """The (B, F, d) values of one placeholder."""
        key = "local" if name.startswith("<local") else name[1:-1]
        if key not in tokens:
            raise KeyError(f"model.prompt uses {name}, but no {key!r} tokens were given")
        value = tokens[key]
        if key == "local":
            k = int(name[6:-1])
            if k > value.shape[2]:
                raise ConfigError(f"model.prompt uses {name}, but only {value.shape[2]} context windows are computed "
                                 f"(model.windows)")
            return value[:, :, k - 1]
        if key == "class":
            return value[:, None].expand(b, frames, value.shape[-1])
        return value

    def _device(self) -> torch.device:
        return self.text_encoder.get_input_embeddings().weight.device


def _order(name: str) -> tuple[int, int]:
    match = PLACEHOLDER.fullmatch(name)
    if match.group(1) == "temp":
        return (0, 0)
    if match.group(1) == "class":
        return (2, 0)
    return (1, int(match.group(2)))
