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


def sampling_stub(cls):
    """What ``cls.sample_to_files`` may touch before its options are checked: its settings and its checks."""
    return SimpleNamespace(sampling=cls.sampling_settings.from_config(None, model_config=cls.MODEL_CONFIG,
                                                                      scale="tiny"),
                           sample_options=cls.sample_options, _prompts=_untouchable, _inputs=_untouchable,
                           to_sampling_device=_untouchable, dub_to_files=_untouchable)


@pytest.mark.parametrize("cls, options, message", [
    (JointAudioVideo, {"steps": 0}, r"sample\.steps=0"),
    (JointAudioVideo, {"gamma": 0.0}, r"sample\.gamma=0\.0"),
    (JointAudioVideo, {"batch_size": -2}, r"sample\.batch_size=-2"),
    (TempoTokens, {"guidance": -1.0}, r"sample\.guidance=-1\.0"),
    (TempoTokens, {"negative_prompt": 5}, r"sample\.negative_prompt=5"),
])
def test_sample_options_are_checked_before_any_input_or_device(cls, options, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        cls.sample_to_files(sampling_stub(cls), tmp_path / "out", n=1, **options)
    assert not (tmp_path / "out").exists()


# every sample.* value each system reads as a number, a flag, a list or a path; the exact one-line message
BAD_SAMPLE_VALUES = [
    ({"n": 0}, "sample.n=0: expected an integer >= 1"),
    ({"n": -1}, "sample.n=-1: expected an integer >= 1"),
    ({"n": "abc"}, "sample.n='abc': expected an integer >= 1"),
    ({"n": math.nan}, "sample.n=nan: expected an integer >= 1"),
    ({"n": math.inf}, "sample.n=inf: expected an integer >= 1"),
    ({"n": 2.5}, "sample.n=2.5: expected an integer >= 1"),
    ({"n": True}, "sample.n=True: expected an integer >= 1"),
    ({"prompt": []}, "sample.prompt=[]: an empty list; give at least one prompt or leave sample.prompt unset"),
    ({"prompt": 5}, "sample.prompt=5: expected a string or a list of strings (on the command line: "
                    "sample.prompt=\"...\" or 'sample.prompt=[a,b]')"),
    ({"prompt": ["a", 1]}, "sample.prompt=['a', 1]: expected a string or a list of strings (on the command line: "
                           "sample.prompt=\"...\" or 'sample.prompt=[a,b]')"),
    ({"seed": "x"}, "sample.seed='x': expected an integer"),
    ({"seed": 0.5}, "sample.seed=0.5: expected an integer"),
    ({"overwrite": "yes"}, "sample.overwrite='yes': expected true or false"),
    ({"device": 0}, "sample.device=0: expected a string (quote it on the command line)"),
]


@pytest.mark.parametrize("cls", [JointAudioVideo, TempoTokens, VTALDM], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("options, message", BAD_SAMPLE_VALUES, ids=lambda v: str(v)[:30])
def test_every_sample_value_is_checked_before_any_input_or_device(cls, options, message, tmp_path):
    with pytest.raises(ConfigError) as info:
        cls.sample_to_files(sampling_stub(cls), tmp_path / "out", **options)
    assert str(info.value) == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cls, path_key", [(JointAudioVideo, "video"), (TempoTokens, "audio"), (VTALDM, "video")])
def test_an_input_path_that_is_not_a_string_is_refused(cls, path_key, tmp_path):
    with pytest.raises(ConfigError) as info:
        cls.sample_to_files(sampling_stub(cls), tmp_path / "out", **{path_key: 123})
    assert str(info.value) == (f"sample.{path_key}=123: expected the path of a file or a folder (quote it on the "
                               f"command line)")


@pytest.mark.parametrize("cls, options, message", [
    (JointAudioVideo, {"video": "v.mp4", "prompt": ["a", "b"]},
     "sample.prompt=['a', 'b']: with sample.video the joint model takes one caption for every input video"),
    (TempoTokens, {"prompt": ["a", "b"]}, "sample.prompt=['a', 'b']: TempoTokens takes one caption for every input"),
    (VTALDM, {"prompt": ["a", "b"]}, "sample.prompt=['a', 'b']: VTA-LDM takes one caption for every input"),
])
def test_a_prompt_list_is_refused_where_one_caption_serves_every_input(cls, options, message, tmp_path):
    with pytest.raises(ConfigError) as info:
        cls.sample_to_files(sampling_stub(cls), tmp_path / "out", **options)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("cls, options, named, takes", [
    (TempoTokens, {"video": "/cases/base.mp4"}, "sample.video=/cases/base.mp4",
     "which generates the video for sample.audio (an audio or video file of any container, or a folder of them; "
     "unset: the data's test clips); unset it. TempoTokens takes sample.n, audio, prompt, steps, guidance, "
     "negative_prompt, seed, batch_size, device, overwrite"),
    (VTALDM, {"audio": "a.wav", "gamma": 2.0}, "sample.audio=a.wav, sample.gamma=2.0",
     "which generates the audio for sample.video (a video file of any container, or a folder of them; unset: the "
     "data's test clips); unset them. VTALDM takes sample.n, video, prompt, steps, guidance, guidance_text, "
     "negative_prompt, sampler, seed, batch_size, device, overwrite, saliency"),
    (JointAudioVideo, {"audio": "a.wav"}, "sample.audio=a.wav",
     "which generates sounding videos from sample.prompt (unset: the data's captions), or the audio for "
     "sample.video (a video file of any container, or a folder of them); unset it. JointAudioVideo takes sample.n, "
     "prompt, steps, gamma, guidance_video, guidance_audio, negative_prompt, seed, batch_size, device, overwrite, "
     "eta, video, cross_modal_guidance"),
    (JointAudioVideo, {"saliency": False, "guidance": 3.0}, "sample.guidance=3.0, sample.saliency=false", None),
])
def test_a_sample_option_the_system_does_not_use_is_refused(cls, options, named, takes, tmp_path):
    with pytest.raises(ConfigError) as info:
        cls.sample_to_files(sampling_stub(cls), tmp_path / "out", **options, sampler=None)  # None: not set
    assert str(info.value).startswith(f"{named}: not used by {cls.__name__}, ")
    if takes:
        assert str(info.value) == f"{named}: not used by {cls.__name__}, {takes}"
    assert not (tmp_path / "out").exists()


def test_a_system_holds_its_clip_as_a_typed_geometry(tmp_path):
    cfg = compose(["experiment=joint_cmcpe", "scale=tiny", "data.clip.fps=29.97", "data.clip.seconds=0.5"], tmp_path)
    system = instantiate(cfg.model)
    assert isinstance(system.clip, ClipGeometry)
    assert system.clip.fps == Fraction(30000, 1001)
    assert system.num_frames == round(Fraction(1, 2) * Fraction(30000, 1001)) == 15
    assert system.num_samples == system.clip.sample_rate // 2
    assert system.latent_shapes(1)[0][2] == 15


def test_sample_device_null_or_empty_is_auto():
    """sample.device=null ("null = the model's default", configs/config.yaml) reads as auto, not as an empty device
    name torch refuses."""
    from avgen.systems.settings import SampleOptions

    base = {"n": 1, "prompt": None, "seed": 0, "overwrite": False}
    assert [SampleOptions.from_values({**base, "device": d}, key="sample").device for d in (None, "", "cpu")] == \
        ["auto", "auto", "cpu"]
