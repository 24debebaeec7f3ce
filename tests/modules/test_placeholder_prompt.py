"""Audio tokens written into the CLIP text sequence at placeholder positions (TempoTokens)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from avgen.backbones.tiny import clip_tokenizer
from avgen.modules.placeholder_prompt import PlaceholderPrompt


@pytest.fixture()
def clip_parts():
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    return tokenizer, model


def plain(tokenizer, model, text: str) -> torch.Tensor:
    ids = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return model(ids).last_hidden_state[0]


def word_embedding(tokenizer, model, word: str) -> torch.Tensor:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    assert len(ids) == 1
    return model.get_input_embeddings().weight[ids[0]].detach()


def test_placeholder_with_a_word_embedding_equals_the_word(clip_parts):
    tokenizer, model = clip_parts
    prompt = PlaceholderPrompt(tokenizer, model, "a video of <temp> and {caption}")
    x = word_embedding(tokenizer, model, "x")
    with torch.no_grad():
        states = prompt.encode(["y"], {"temp": x.expand(1, 3, -1)}, frames=3)
        reference = plain(tokenizer, model, "a video of x and y")
    assert states.shape == (1, 3, 77, 32)
    for f in range(3):
        assert torch.allclose(states[0, f], reference, atol=1e-5)


def test_every_frame_gets_its_own_tokens(clip_parts):
    tokenizer, model = clip_parts
    prompt = PlaceholderPrompt(tokenizer, model, "<temp> <local1> <local2> <class>")
    assert prompt.names == ["<temp>", "<local1>", "<local2>", "<class>"] and prompt.windows == 2
    g = torch.Generator().manual_seed(0)
    temp = torch.randn(2, 4, 32, generator=g)
    tokens = {"temp": temp, "local": torch.randn(2, 4, 2, 32, generator=g), "class": torch.randn(2, 32, generator=g)}
    with torch.no_grad():
        states = prompt.encode(["", ""], tokens, frames=4)
        same = dict(tokens, temp=temp[:, :1].expand(-1, 4, -1), local=tokens["local"][:, :1].expand(-1, 4, -1, -1))
        shared = prompt.encode(["", ""], same, frames=4)
    assert not torch.allclose(states[0, 0], states[0, 1])
    assert torch.allclose(shared[0, 0], shared[0, 3]) and torch.allclose(shared[0, 0], states[0, 0])
    assert not torch.allclose(states[0], states[1])  # clips keep their own tokens


def test_gradients_reach_the_tokens_only(clip_parts):
    tokenizer, model = clip_parts
    model.requires_grad_(False)
    prompt = PlaceholderPrompt(tokenizer, model, "<temp> <class>")
    temp = torch.randn(1, 2, 32, requires_grad=True)
    cls = torch.randn(1, 32, requires_grad=True)
    prompt.encode(["a"], {"temp": temp, "class": cls}, frames=2).square().mean().backward()
    assert temp.grad is not None and temp.grad.abs().sum() > 0 and cls.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_template_without_placeholders_is_plain_text(clip_parts):
    tokenizer, model = clip_parts
    prompt = PlaceholderPrompt(tokenizer, model, "{caption}")
    with torch.no_grad():
        states = prompt.encode(["a dog barks"], {}, frames=2)
        assert torch.allclose(states[0, 1], plain(tokenizer, model, "a dog barks"), atol=1e-6)


def test_missing_tokens_and_windows_are_clear_errors(clip_parts):
    tokenizer, model = clip_parts
    prompt = PlaceholderPrompt(tokenizer, model, "<temp> <local3>")
    with pytest.raises(KeyError, match="<local3>"):
        prompt.encode(["a"], {"temp": torch.zeros(1, 2, 32)}, frames=2)
    with pytest.raises(ValueError, match="model.windows"):
        prompt.encode(["a"], {"temp": torch.zeros(1, 2, 32), "local": torch.zeros(1, 2, 2, 32)}, frames=2)
