"""VTA-LDM's context (avgen.modules.vta_condition): the text | video | flow layout through one φ, pe on the video
tokens only, the video null over the video and flow slots, and the conditions' checks."""

from __future__ import annotations

import re

import pytest
import torch

from avgen.modules.vta_condition import VTACondition, check_conditions, sinusoidal_table


def test_check_conditions_orders_and_refuses():
    assert check_conditions(["flow", "video"]) == ("video", "flow")
    assert check_conditions(["flow", "pe", "text", "video"]) == ("video", "text", "pe", "flow")
    for given in (["flow"], ["text", "flow"]):
        with pytest.raises(ValueError, match=re.escape(f"model.conditions={given!r}: flow is computed from the "
                                                       f"video's frames and conditions with it; add video")):
            check_conditions(given)
    with pytest.raises(ValueError, match=r"unknown condition 'depth'; expected a subset of \['video', 'text', 'pe', "
                                         r"'flow'\]"):
        check_conditions(["video", "depth"])


def tokens(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_text_video_flow_layout():
    """(B, 3T, D_φ): slots [0, T) φ(text) repeated, [T, 2T) φ(video + PE), [2T, 3T) φ(flow) without PE; padded
    slots zero and masked in both halves that come from the video."""
    torch.manual_seed(0)
    condition = VTACondition(4, 6, ["video", "text", "pe", "flow"])
    video, flow, text = tokens(1, 2, 3, 4), tokens(2, 2, 3, 4), tokens(3, 2, 4)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    video, flow = video * mask[..., None], flow * mask[..., None]
    context, full_mask = condition(video, mask, text, flow=flow)
    assert context.shape == (2, 9, 6) and full_mask.shape == (2, 9)
    phi = condition.projection
    with torch.no_grad():
        assert torch.allclose(context[:, :3], phi(text)[:, None].expand(2, 3, 6), atol=1e-6)
        assert torch.allclose(context[:, 3:6], phi(video + sinusoidal_table(3, 4)) * mask[..., None], atol=1e-6)
        assert torch.allclose(context[:, 6:], phi(flow) * mask[..., None], atol=1e-6)
    assert full_mask.tolist() == [[True] * 9, [True] * 3 + [True, False, False] * 2]


def test_the_video_null_covers_the_flow_slots():
    condition = VTACondition(4, 6, ["video", "text", "flow"])
    video, flow, text = tokens(1, 2, 3, 4), tokens(2, 2, 3, 4), tokens(3, 2, 4)
    kept, _ = condition(video, None, text, flow=flow)
    context, mask = condition(video, None, text, flow=flow, keep_video=torch.tensor([True, False]))
    assert torch.equal(context[0], kept[0]) and torch.equal(context[1, :3], kept[1, :3])  # text stays
    assert torch.equal(context[1, 3:], torch.zeros(6, 6)) and mask.all()


def test_flow_tokens_must_match_the_video():
    condition = VTACondition(4, 6, ["video", "flow"])
    with pytest.raises(ValueError, match=r"the flow condition needs flow tokens shaped as the video's \(2, 3, 4\); "
                                         r"got none"):
        condition(tokens(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"got \(2, 2, 4\)"):
        condition(tokens(1, 2, 3, 4), flow=tokens(2, 2, 2, 4))
