"""Config errors: unknown keys in avgen's own blocks, in any override form, and bad values stop with one line
naming the key (and the known keys) before anything is built; library blocks pass through."""

from __future__ import annotations

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from avgen.cli import check_overrides
from avgen.commands import run_command
from avgen.errors import ConfigError
from tests.conftest import compose, run_cli

AV_ALIGN_KNOWN = "known keys of evaluate.av_align: audio_sample_rate, flow_flags, flow_iterations, flow_levels, "
SAMPLE_KNOWN = ("known keys of sample: audio, batch_size, cross_modal_guidance, device, eta, gamma, guidance, "
                "guidance_audio, guidance_text, guidance_video, n, ")


@pytest.mark.parametrize("overrides, message", [
    (["evaluate.av_align.onset_detla=0.15"], "unknown key evaluate.av_align.onset_detla; " + AV_ALIGN_KNOWN),
    (["+evaluate.av_align.onset_detla=0.15"], "unknown key evaluate.av_align.onset_detla; " + AV_ALIGN_KNOWN),
    (["++evaluate.av_align.onset_detla=0.15"], "unknown key evaluate.av_align.onset_detla; " + AV_ALIGN_KNOWN),
    (["evaluate.av_align={onset_detla: 0.15}"], "unknown key evaluate.av_align.onset_detla; " + AV_ALIGN_KNOWN),
    (["sample.gama=2"], "unknown key sample.gama; " + SAMPLE_KNOWN),
    (["experiment=joint_cmcpe", "+model.sampling.gama=2"],
     "unknown key model.sampling.gama; known keys of model.sampling: batch_size, cross_modal_guidance, eta, gamma, "
     "guidance_audio, "),
    (["evaluate.ib_score.second=4"], "unknown key evaluate.ib_score.second; known keys of evaluate.ib_score: "),
    (["scale=tiny", "data.batch_size="], "no value for data.batch_size (data.batch_size=): expected an int, "
                                         "e.g. data.batch_size=2"),
])
def test_unknown_keys_and_missing_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_overrides(overrides)
    text = str(err.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("overrides, message", [
    (["scale=tiny", "data.batch_size=abc"], "data.batch_size=abc: data.batch_size takes a number (default "
                                            "data.batch_size=2)"),
    (["evaluate.av_align.onset_delta=abc"], "evaluate.av_align.onset_delta=abc: evaluate.av_align.onset_delta "
                                            "takes a number (default evaluate.av_align.onset_delta="),
    (["evaluate.plots=[1]"], "evaluate.plots=[1]: evaluate.plots takes a number (default evaluate.plots=0)"),
    (["init_from_strict=3"], "init_from_strict=3: init_from_strict takes true or false (default "
                             "init_from_strict=true)"),
    (["+trainer.max_stepz=3"], "unknown key trainer.max_stepz: not an argument of lightning.pytorch.Trainer; did you "
                               "mean trainer.max_steps?"),
    (["expriment=joint_cmcpe"], "unknown key expriment; known keys of the root config: "),
    (["exp=joint_cmcpe"], "unknown key exp; known keys of the root config: "),
    (["command=sample", "ckpt_path=x.ckpt", "model.sampling.steps=2"],
     "model.sampling.steps=2: with ckpt_path the model block comes from the checkpoint; write "
     "+model.sampling.steps=2 to change it"),
])
def test_wrong_types_and_typos_of_groups_and_trainer_keys_are_one_line_errors(overrides, message):
    """A value of the wrong type for a key with a number or boolean default stops before the run (not a TypeError
    deep in the data module or the metric); a trainer key Lightning's Trainer does not take, and a group name typed
    wrong (suggested as the group, with its options), too."""
    with pytest.raises(ConfigError) as err:
        check_overrides(overrides)
    text = str(err.value)
    assert message in text and "\n" not in text
    if overrides in (["expriment=joint_cmcpe"], ["exp=joint_cmcpe"]):
        assert "config groups: debug, experiment, model, part, scale; did you mean experiment=<joint_cmcpe, " in text


@pytest.mark.parametrize("overrides", [
    ["scale=tiny", "data.store.fps=30000/1001", "data.clip.fps=29.97"],  # frame rates: num/den or a decimal
    ["evaluate.av_align.onset_delta=1e-1"], ["scale=tiny", "data.batch_size=4"], ["init_from_strict=false"],
    ["scale=tiny", "data.batch_size=${oc.env:BATCH,2}"], ["evaluate.plots=null"],
    ["trainer._target_=my_lab.Trainer", "+trainer.my_option=1"],  # another Trainer class: not Lightning's arguments
])
def test_values_of_the_right_type_pass(overrides):
    check_overrides(overrides)


def test_a_gpu_trainer_on_a_machine_without_cuda_names_the_cpu_trainers(tmp_path):
    import torch

    from avgen.commands import build_trainer

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    for trainer in ("gpu", "ddp"):
        cfg = compose(["experiment=vta_ldm", "scale=tiny", f"trainer={trainer}"], tmp_path)
        with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu: this machine has no CUDA GPU; on a CPU use "
                                              r"trainer=cpu, or trainer=ddp_cpu for DDP"):
            build_trainer(cfg)


def test_a_typo_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean onset_delta\?$"):
        check_overrides(["+evaluate.av_align.onset_detla=0.15"])


@pytest.mark.parametrize("overrides", [
    ["+trainer.profiler=simple"], ["trainer.max_steps=3"], ["+logger.csv.flush_logs_every_n_steps=1"],
    ["experiment=joint_cmcpe", "model.optimizer.lr=1e-4"], ["evaluate.av_align.onset_delta=0.15"],
    ["hydra.run.dir=/tmp/x", "seed=3"], ["experiment=joint_cmcpe", "+model.video.scheduler.timestep_spacing=trailing"],
    ["+data.pin_memory=false"],  # an AVDataModule argument the data configs leave at its default
    ["evaluate.ib_score.seconds=10", "+evaluate.ib_score.image_size=28"],  # ImageBindAV sizes (tests' tiny twin)
    ["command=sample", "ckpt_path=x.ckpt", "+model.sampling.gamma=2"],  # the checkpoint's model block
    ["seed=1,2,3", "experiment=joint_cmcpe,joint_crossattn", "sample.gamma=2"],  # -m sweeps
])
def test_library_blocks_and_known_keys_pass(overrides):
    check_overrides(overrides)


def test_group_and_append_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"Could not find 'trainer/nope'.*Available options in 'trainer': cpu") as err:
        check_overrides(["trainer=nope", "seed=1"])  # with no key of avgen's set, Hydra reports it
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"\+seed=3: seed already has a value; write seed=3"):
        check_overrides(["+seed=3"])
    with pytest.raises(ConfigError, match=r"unknown key model.optimizer.lr: no model is selected; choose "
                                          r"experiment=<name> or model=<joint, tempotokens, vta_ldm>"):
        check_overrides(["model.optimizer.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown key data.prepare.clip_per_shard; known keys of data.prepare: "
                                          r".*clips_per_shard"):
        check_overrides(["+data.prepare.clip_per_shard=3"])


def test_invalid_gamma_stops_when_the_system_is_built(tmp_path):
    cfg = compose(["experiment=joint_cmcpe", "scale=tiny", "model.sampling.gamma=0"], tmp_path)
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.model)
    assert isinstance(err.value.__cause__, ConfigError)
    assert "model.sampling.gamma=0: timestep adjustment γ must be > 0" in str(err.value.__cause__)


def test_invalid_sample_gamma_stops_before_the_checkpoint_is_loaded(tmp_path, capsys):
    cfg = compose(["command=sample", "sample.gamma=-1", f"ckpt_path={tmp_path}/missing.ckpt"], tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_command(cfg)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("avgen sample: error: sample.gamma=-1: timestep adjustment γ must be > 0")


@pytest.mark.slow
def test_cli_unknown_appended_key_is_one_line_without_traceback(tmp_path):
    proc = run_cli("evaluate", "+evaluate.av_align.onset_detla=0.15", f"evaluate.pred_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("avgen evaluate: error: unknown key evaluate.av_align.onset_detla;")
