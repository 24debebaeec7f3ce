"""Config composition: every experiment and every group option composes; experiments smoke-run at scale=tiny."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from avgen.cli import group_options
from avgen.commands import run_command
from tests.conftest import compose

EXPERIMENTS = group_options("experiment")


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks", "paths", "scale", "data", "part"])
def test_every_group_option_composes(tmp_path, group):
    for option in group_options(group):
        cfg = compose([f"{group}={option}"], tmp_path)
        OmegaConf.to_container(cfg, resolve=True)


def test_trainers_instantiate_on_cpu(tmp_path):
    for option in ("default", "cpu", "ddp_cpu"):
        cfg = compose([f"trainer={option}"], tmp_path)
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_steps == cfg.trainer.max_steps


def test_scale_tiny_wins_over_experiment_and_group_defaults(tmp_path):
    cfg = compose(["scale=tiny", "data.clip.fps=4"], tmp_path)
    assert cfg.scale_name == "tiny" and cfg.data.name == "synthetic_hits"
    assert cfg.data.clip.height == 32 and cfg.data.clip.fps == 4  # command line beats the scale file
    assert cfg.trainer.accelerator == "cpu"
    # data.store names the folder: a lower clip rate is served from the same shards
    assert cfg.data.root.endswith("synthetic_hits/32x32_8fps_1.0s_16000hz")
    assert compose(["scale=tiny", "data.store.fps=16"], tmp_path).data.root.endswith("32x32_16fps_1.0s_16000hz")


def test_slurm_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose(["hydra/launcher=slurm"], tmp_path)
    assert cfg is not None


@pytest.fixture(scope="module")
def smoke_data_dir(tmp_path_factory):
    """One data folder for every experiment's smoke run: the synthetic set is prepared by the first, read by the
    others (each experiment at scale=tiny reads the same store)."""
    return tmp_path_factory.mktemp("smoke_data")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_at_tiny_scale(tmp_path, experiment, smoke_data_dir):
    """Smoke test: each experiment file trains two steps and validates at scale=tiny."""
    cfg = compose(["command=fit", f"experiment={experiment}", "scale=tiny", "trainer.max_steps=2",
                   "trainer.limit_val_batches=1", "logger=csv", f"paths.data_dir={smoke_data_dir}"], tmp_path)
    run_command(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
