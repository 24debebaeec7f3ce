"""benchmarks/paper_flops.py's FLOP counting: hand-computed counts of a Linear, a convolution and an attention, the
booking of a step's FLOPs to the frozen parts, and the meta device counting what the CPU counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import paper_flops  # noqa: E402
import paper_sizes  # noqa: E402


def test_linear_convolution_and_attention_flops_are_the_hand_counts():
    torch.manual_seed(0)
    m, k, n = 5, 7, 3
    linear = nn.Linear(k, n)
    assert paper_flops.count_flops(linear, torch.randn(m, k)) == 2 * m * n * k
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1)
    x = torch.randn(2, 4, 9, 9)
    out = conv(x).shape  # (2, 6, 5, 5)
    assert paper_flops.count_flops(conv, x) == 2 * out[0] * out[1] * out[2] * out[3] * 4 * 3 * 3
    b, h, length, d = 2, 3, 11, 8
    q, kk, v = (torch.randn(b, h, length, d) for _ in range(3))
    # Q·Kᵀ and A·V: 2 · B·H·L²·d each; counted on the CPU too (the math kernel, not the fused one)
    assert paper_flops.count_flops(F.scaled_dot_product_attention, q, kk, v) == 2 * 2 * b * h * length**2 * d


class TwoLinears(nn.Module):
    """A frozen encoder (``encode``) and a trained head, with the loss ``diffusion_loss`` a system has."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.frozen, self.head = nn.Linear(k, k, bias=False).requires_grad_(False), nn.Linear(k, n, bias=False)

    def encode(self, x):
        with torch.no_grad():
            return self.frozen(x)

    def diffusion_loss(self, batch, generator=None):
        return {"loss": self.head(self.encode(batch["x"])).square().mean()}


def test_step_flops_books_the_frozen_calls_to_their_part_and_the_rest_to_the_trainable_path():
    m, k, n = 4, 6, 5
    system = TwoLinears(k, n)
    flops = paper_flops.step_flops(system, {"x": torch.randn(m, k)}, {"latents": [("system", "encode")]})
    # frozen: one forward matmul; trainable: the head's forward and its weight gradient (its input needs none)
    assert flops["parts"] == {"latents": 2 * m * k * k}
    assert flops["frozen"] == 2 * m * k * k
    assert flops["trainable"] == 2 * (2 * m * n * k)
    assert flops["total"] == flops["frozen"] + flops["trainable"]
    assert "encode" not in vars(system)  # the wrapper is removed after the step


@pytest.mark.parametrize("spec, make_input", [
    (paper_sizes.Spec("vae", {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
                              "down_block_types": ["DownEncoderBlock2D"] * 2,
                              "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [8, 16],
                              "layers_per_block": 1, "norm_num_groups": 4}),
     lambda device: torch.zeros(2, 3, 16, 16, device=device)),
    (paper_sizes.Spec("clip_text", {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 12}),
     lambda device: torch.zeros(2, 12, dtype=torch.long, device=device)),
])
def test_a_model_built_on_the_meta_device_counts_the_flops_it_counts_on_the_cpu(spec, make_input):
    counts = {}
    for device in ("cpu", "meta"):
        model = paper_sizes.build_spec(spec, device)
        assert all(p.device.type == device for p in model.parameters())
        run = model.encode if hasattr(model, "encode") else model
        counts[device] = paper_flops.count_flops(run, make_input(device))
    assert counts["cpu"] > 0
    assert counts["meta"] == counts["cpu"]
