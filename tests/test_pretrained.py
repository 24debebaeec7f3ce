"""avgen.pretrained: one registry of the pretrained files and hub models the configs name, and the frozen rule."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from avgen.pretrained import HUB_MODELS, ORIGINS, SYSTEM_HUB_MODELS, FrozenModule, HoldsFrozen, freeze
from tests.conftest import compose

# the experiment whose composed config holds each key (the default config holds evaluate.*)
EXPERIMENT = {"model.encoder.path": "tempotokens_vggsound", "model.t2v.base": "tempotokens_vggsound"}


def composed(key: str, tmp_path, extra=()):
    name = EXPERIMENT.get(key) or ("joint_cmcpe" if key.startswith("model.") else None)
    overrides = [f"experiment={name}"] if name else []
    if key == "model.encoder.path" and "cavp" in extra:
        overrides = ["experiment=tempotokens_cavp"]
    return OmegaConf.select(compose(["command=fit", *overrides], tmp_path), key)


@pytest.mark.parametrize("role", sorted(ORIGINS))
def test_every_registered_file_is_read_from_its_config_key_and_environment_variable(role, tmp_path, monkeypatch):
    origin = ORIGINS[role]
    if origin.env is None:  # read from a key that names a folder beside another file (the VGGish PCA parameters)
        assert composed(origin.config_key, tmp_path) is None
        return
    monkeypatch.setenv(origin.env, f"/weights/{origin.file}")
    assert composed(origin.config_key, tmp_path, extra=(role,)) == f"/weights/{origin.file}"


@pytest.mark.parametrize("key", sorted(HUB_MODELS))
def test_every_hub_model_is_the_default_of_its_config_key(key, tmp_path):
    assert composed(key, tmp_path) == HUB_MODELS[key]


@pytest.mark.parametrize("experiment, key", [(e, k) for e, keys in SYSTEM_HUB_MODELS.items() for k in keys])
def test_every_system_hub_model_is_the_default_of_its_experiment(experiment, key, tmp_path):
    cfg = compose(["command=fit", f"experiment={experiment}"], tmp_path)
    assert OmegaConf.select(cfg, key) == SYSTEM_HUB_MODELS[experiment][key]


def test_frozen_parts_stay_in_eval_mode_without_gradients():
    class Part(FrozenModule):
        def __init__(self):
            super().__init__()
            self.dropout, self.linear = torch.nn.Dropout(0.5), torch.nn.Linear(2, 2)

    class Parent(HoldsFrozen):
        def __init__(self):
            super().__init__()
            self.mine, self.theirs, self.trained = Part().freeze(), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2)
            self.hold_frozen(self.theirs)

    parent = Parent().train()
    assert parent.training and parent.trained.training
    assert not parent.mine.training and not parent.mine.dropout.training and not parent.theirs.training
    assert not any(p.requires_grad for p in parent.mine.parameters())
    assert all(p.requires_grad for p in parent.trained.parameters())
    assert parent.frozen_modules() == [parent.theirs]
    lone = freeze(torch.nn.BatchNorm1d(3))
    assert not lone.training and not any(p.requires_grad for p in lone.parameters())


def test_video_encoder_defaults_are_their_modules_hub_ids():
    from avgen.encoders import clip4clip, languagebind, vivit, vjepa
    from avgen.encoders.video_tokens import DEFAULT_SOURCES, VIDEO_ENCODERS

    modules = {"clip4clip": clip4clip, "languagebind": languagebind, "vivit": vivit, "vjepa": vjepa}
    assert set(DEFAULT_SOURCES) == set(modules) and set(modules) < set(VIDEO_ENCODERS)
    assert all(DEFAULT_SOURCES[name] == module.HUB_ID for name, module in modules.items())


@pytest.mark.parametrize("loader,key", [
    ("avgen.encoders.vggish:VGGishFeatures", "evaluate.fad.vggish_path"),
    ("avgen.encoders.imagebind:load_imagebind", "evaluate.imagebind.path"),
    ("avgen.encoders.panns:load_cnn14", "evaluate.panns.path"),
    ("avgen.encoders.passt:load_passt", "evaluate.passt.path"),
    ("avgen.encoders.synchformer:load_synchformer", "evaluate.desync.path"),
    ("avgen.encoders.beats:load_beats", "model.encoder.path"),
    ("avgen.encoders.cavp:load_cavp", "model.encoder.path"),
    ("avgen.encoders.cavp_video:load_cavp_video", "model.encoder.path"),
])
def test_a_file_that_is_not_weights_is_one_config_error_line(tmp_path, loader, key):
    """A weight file that exists but is not a checkpoint (a text file here) is a WeightsFileError: a ConfigError,
    so the command line prints one line (no traceback), naming the file and the config key."""
    import importlib

    from avgen.errors import ConfigError, WeightsFileError

    module, name = loader.split(":")
    bad = tmp_path / "weights.pth"
    bad.write_text("not a checkpoint\n")
    with pytest.raises(WeightsFileError) as err:
        getattr(importlib.import_module(module), name)(bad, config_key=key)
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message
    assert str(bad) in message and key in message
