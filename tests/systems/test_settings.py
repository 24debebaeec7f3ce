"""Typed settings of the systems (``model.sampling``, ``model.validation``): the model YAML is the one
source of their defaults, every bad value is refused with the key named, before any backbone loads and,
for ``sample.<key>``, before any input is read or any weight moves."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import avgen.systems.joint as joint_module
import avgen.systems.tempotokens as tempotokens_module
from avgen.config_files import model_config_node
from avgen.data.geometry import ClipGeometry
from avgen.errors import ConfigError
from avgen.systems.joint import JointAudioVideo, JointSampling
from avgen.systems.settings import ValidationSettings
from avgen.systems.tempotokens import TempoTokens, TempoTokensSampling
from avgen.systems.vta_ldm import VTALDM
from tests.conftest import compose

SYSTEMS = {"joint": (JointAudioVideo, "model=joint"), "tempotokens": (TempoTokens, "model=tempotokens"),
           "vta_ldm": (VTALDM, "model=vta_ldm")}
# (sampling steps, validation steps) by scale
STEPS = {"joint": {"paper": (25, 25), "tiny": (25, 4)}, "tempotokens": {"paper": (25, 25), "tiny": (4, 3)},
         "vta_ldm": {"paper": (300, 50), "tiny": (4, 3)}}


@pytest.mark.parametrize("name", list(SYSTEMS))
@pytest.mark.parametrize("scale", ["paper", "tiny"])
def test_the_model_yaml_is_the_one_source_of_defaults(name, scale, tmp_path):
    cls, experiment = SYSTEMS[name]
    assert cls.MODEL_CONFIG == name
    for settings in (cls.sampling_settings, ValidationSettings):  # no default written in Python
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(settings))
    # what a run composes at that scale is what a system built without the block gets
    cfg = compose([experiment, f"scale={scale}"], tmp_path)
    composed = OmegaConf.to_container(cfg.model.sampling, resolve=True)
    from_yaml = cls.sampling_settings.from_config(None, model_config=name, scale=scale).to_dict()
    assert composed == from_yaml and list(from_yaml) == list(cls.sampling_settings.names())
    validation = OmegaConf.to_container(cfg.model.validation, resolve=True)
    assert ValidationSettings.from_config(None, model_config=name, scale=scale).to_dict() == validation
    # the scale-dependent defaults resolve at that scale
    assert (from_yaml["steps"], validation["steps"]) == STEPS[name][scale]


def test_partial_blocks_are_completed_from_the_yaml():
    sampling = JointSampling.from_config({"gamma": 2}, model_config="joint", scale="paper")
    assert sampling == JointSampling(steps=25, batch_size=4, gamma=2.0, guidance_video=7.5, guidance_audio=2.5,
                                     negative_prompt=None, eta=0.0, cross_modal_guidance=1.0)
    assert isinstance(sampling.gamma, float)
    tt = TempoTokensSampling.from_config({"negative_prompt": None}, model_config="tempotokens", scale="tiny")
    assert tt.negative_prompt == "" and tt.steps == 4 and tt.guidance == 25.0


BAD = [
    (JointSampling, "steps", 0, r"model\.sampling\.steps=0: expected an integer >= 1"),
    (JointSampling, "steps", 2.5, r"model\.sampling\.steps=2\.5: expected an integer >= 1"),
    (JointSampling, "steps", "4", r"model\.sampling\.steps='4': expected an integer >= 1"),
    (JointSampling, "batch_size", True, r"model\.sampling\.batch_size=True: expected an integer >= 1"),
    (JointSampling, "gamma", 0, r"model\.sampling\.gamma=0: timestep adjustment γ must be > 0"),
    (JointSampling, "guidance_audio", -1, r"model\.sampling\.guidance_audio=-1: expected a guidance scale >= 0"),
    (JointSampling, "guidance_video", math.nan, r"model\.sampling\.guidance_video=nan: expected a guidance scale"),
    (JointSampling, "negative_prompt", 3, r"model\.sampling\.negative_prompt=3: expected a string"),
    (JointSampling, "eta", 1.5, r"model\.sampling\.eta=1\.5: expected DDIM eta in \[0, 1\]"),
    (JointSampling, "eta", True, r"model\.sampling\.eta=True: expected DDIM eta in \[0, 1\]"),
    (TempoTokensSampling, "guidance", "high", r"model\.sampling\.guidance='high': expected a guidance scale"),
    (TempoTokensSampling, "gamma", 1.5, r"model\.sampling\.gamma: not a sampling setting of this system; expected "
                                        r"one of: steps, batch_size, guidance, negative_prompt"),
]


@pytest.mark.parametrize("cls, key, value, message", BAD)
def test_bad_sampling_values_are_refused_naming_the_key(cls, key, value, message):
    name = "joint" if cls is JointSampling else "tempotokens"
    with pytest.raises(ConfigError, match=message):
        cls.from_config({key: value}, model_config=name, scale="paper")


@pytest.mark.parametrize("key, value, message", [
    ("samples", -1, r"model\.validation\.samples=-1: expected an integer >= 0"),
    ("steps", 0, r"model\.validation\.steps=0: expected an integer >= 1"),
    ("av_align", "yes", r"model\.validation\.av_align='yes': expected true or false"),
    ("every", 2, r"model\.validation\.every: not a validation setting"),
])
def test_bad_validation_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        ValidationSettings.from_config({key: value}, model_config="joint", scale="paper")


def test_updated_checks_only_what_is_given_and_names_the_source():
    base = JointSampling.from_config(None, model_config="joint", scale="paper")
    new = base.updated("sample", steps=3, gamma=None, negative_prompt="bad quality")
    assert (new.steps, new.gamma, new.negative_prompt) == (3, 1.5, "bad quality")
    assert base.steps == 25  # frozen: the system's block is never changed by a call
    with pytest.raises(ConfigError, match=r"sample\.gamma=-2: timestep adjustment γ must be > 0"):
        base.updated("sample", gamma=-2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.steps = 3


def test_a_missing_model_yaml_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGEN_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"model[/\\]joint\.yaml: model config not found"):
        model_config_node("joint", "sampling", scale="paper")


@pytest.mark.parametrize("name, loader", [("joint", "load_animatediff"), ("tempotokens", "load_text2video")])
@pytest.mark.parametrize("override", ["model.sampling.steps=0", "+model.validation.every=3", "data.clip.fps=-1"])
def test_bad_settings_stop_the_system_before_any_backbone_loads(name, loader, override, tmp_path, monkeypatch):
    module = joint_module if name == "joint" else tempotokens_module

    def no_backbones(*args, **kwargs):
        raise AssertionError("a backbone was loaded before the settings were checked")

    monkeypatch.setattr(module, loader, no_backbones)
    cfg = compose([SYSTEMS[name][1], "scale=tiny", override], tmp_path)
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    assert "a backbone was loaded" not in str(info.value)  # Hydra wraps what the constructor raised
    key = override.lstrip("+").partition("=")[0].removeprefix("data.")
    assert key.split(".")[-1] in str(info.value)


def _untouchable(*args, **kwargs):
    raise AssertionError("sample_to_files read inputs or moved weights before checking its settings")


@pytest.mark.parametrize("cls, options, message", [
    (JointAudioVideo, {"steps": 0}, r"sample\.steps=0"),
    (JointAudioVideo, {"gamma": 0.0}, r"sample\.gamma=0\.0"),
    (JointAudioVideo, {"batch_size": -2}, r"sample\.batch_size=-2"),
    (TempoTokens, {"guidance": -1.0}, r"sample\.guidance=-1\.0"),
    (TempoTokens, {"negative_prompt": 5}, r"sample\.negative_prompt=5"),
])
def test_sample_options_are_checked_before_any_input_or_device(cls, options, message, tmp_path):
    name = cls.MODEL_CONFIG
    stub = SimpleNamespace(sampling=cls.sampling_settings.from_config(None, model_config=name, scale="tiny"),
                           warn_unused_sample_options=_untouchable, _prompts=_untouchable, _inputs=_untouchable,
                           to_sampling_device=_untouchable)
    with pytest.raises(ConfigError, match=message):
        cls.sample_to_files(stub, tmp_path / "out", n=1, **options)
    assert not (tmp_path / "out").exists()


def test_a_system_holds_its_clip_as_a_typed_geometry(tmp_path):
    cfg = compose(["experiment=joint_cmcpe", "scale=tiny", "data.clip.fps=29.97", "data.clip.seconds=0.5"], tmp_path)
    system = instantiate(cfg.model)
    assert isinstance(system.clip, ClipGeometry)
    assert system.clip.fps == Fraction(30000, 1001)
    assert system.num_frames == round(Fraction(1, 2) * Fraction(30000, 1001)) == 15
    assert system.num_samples == system.clip.sample_rate // 2
    assert system.latent_shapes(1)[0][2] == 15
