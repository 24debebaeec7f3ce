"""avgen.modules.connector_events: the video connector's event code (model.video_connector_events)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avgen.errors import ConfigError
from avgen.modules.connector_events import EventCode, VideoConnectorEvents, code_directions, event_frame_labels


def test_event_labels_are_the_floor_of_time_times_fps_inside_the_clip():
    events = [torch.tensor([0.13, 0.9, 0.95]), np.array([]), [1.0, -0.01, 0.999], torch.tensor([[0.125]])]
    labels = event_frame_labels(events, 8, 8.0)
    assert labels.dtype == torch.float32 and labels.shape == (4, 8)
    # 0.13·8 = 1.04 -> 1; 0.9·8 = 7.2 and 0.95·8 = 7.6 -> 7 (one 1); 1.0 s and -0.01 s lie outside; 0.125·8 = 1 exactly
    assert labels.tolist() == [[0, 1, 0, 0, 0, 0, 0, 1], [0] * 8, [0, 0, 0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert event_frame_labels([[0.5]], 25, 25.0)[0].nonzero().tolist() == [[12]]
    # an event on a frame's start, as float32 holds it (0.7 s -> 0.69999998 s), stays on that frame
    assert event_frame_labels([np.array([0.7], np.float32)], 10, 10.0)[0].nonzero().tolist() == [[7]]
    assert event_frame_labels([[0.6999]], 10, 10.0)[0].nonzero().tolist() == [[6]]


def test_code_directions_are_seeded_unit_vectors_and_the_code_puts_them_on_the_labelled_frames():
    e_hit, e_none = code_directions(32)
    assert torch.allclose(e_hit.norm(), torch.tensor(1.0)) and torch.allclose(e_none.norm(), torch.tensor(1.0))
    assert torch.equal(code_directions(32)[0], e_hit) and not torch.equal(code_directions(32, seed=1)[0], e_hit)
    generator = torch.Generator().manual_seed(123)
    first = torch.randn(32, generator=generator)
    assert torch.allclose(e_hit, first / first.norm())
    code = EventCode(32)
    assert code.state_dict() == {}  # rebuilt from the seed, not stored in checkpoints
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = code.code(labels)
    assert out.shape == (2, 3, 32)
    assert torch.equal(out[0, 1], e_hit) and torch.equal(out[0, 0], e_none) and torch.equal(out[1, 0], e_hit)


def test_event_loss_is_zero_on_the_code_at_any_scale_and_the_score_ranks_it():
    code = EventCode(16, seed=7)
    labels = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    exact = code.code(labels)
    assert code.loss(3.0 * exact, labels).item() == pytest.approx(0.0, abs=1e-12)
    assert code.loss(exact.to(torch.bfloat16), labels).dtype == torch.float32
    # every frame's code the wrong one: |e_hit − e_none|² per frame
    wrong = code.loss(code.code(1 - labels), labels).item()
    assert wrong == pytest.approx(float((code.e_hit - code.e_none).pow(2).sum()), rel=1e-5)
    # one frame of four wrong: a quarter of that
    half = exact.clone()
    half[0, 0] = code.e_hit
    assert code.loss(half, labels).item() == pytest.approx(wrong / 4, rel=1e-5)
    score = code.score(exact)
    cos = float(code.e_hit @ code.e_none)
    assert torch.allclose(score, torch.tensor([[cos - 1, 1 - cos, cos - 1, 1 - cos]]), atol=1e-6)


@pytest.mark.parametrize("config, match", [
    ({"wieght": 1}, r"unknown key\(s\) \['wieght'\]"),
    ({"weight": -1}, r"model.video_connector_events.weight=-1: expected a number ≥ 0"),
    ({"weight": 1, "teacher_forcing": 1.5}, r"teacher_forcing=1.5: expected a share in \[0, 1\]"),
    ({"weight": 1, "clean_x0_prob": True}, r"clean_x0_prob=True"),
    ({"weight": 1, "connector_only_steps": 2.5}, r"connector_only_steps=2.5: expected an integer ≥ 0"),
    ({"weight": 1, "draws_per_clip": 0}, r"draws_per_clip=0: expected an integer ≥ 1"),
    ({"teacher_forcing": 0.5}, r"need model.video_connector_events.weight > 0"),
    ({"connector_only_steps": 10}, r"need model.video_connector_events.weight > 0"),
])
def test_bad_settings_name_the_key(config, match):
    with pytest.raises(ConfigError, match=match):
        VideoConnectorEvents.from_config(config)


def test_settings_default_off_and_read_values():
    assert not VideoConnectorEvents.from_config(None).enabled
    settings = VideoConnectorEvents.from_config({"weight": 2, "teacher_forcing": 1, "connector_only_steps": 5})
    assert settings == VideoConnectorEvents(2.0, 1.0, 5, 8, 0.5, 123) and settings.enabled
