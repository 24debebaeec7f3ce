"""Shared fixtures: a tiny synthetic dataset (made once per session) and config composition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIGS = REPO / "tests" / "configs"
CASES_DIR = REPO / "tests" / "data" / "cases"  # copies of ../shared/cases (real-world files)
TINY_CLIP = {"seconds": 1.0, "fps": 8, "height": 32, "width": 32, "sample_rate": 16000}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: each worker, and the commands its tests start, computes on
    # one thread (two workers of two threads each on two cores are slower than one worker, not faster)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """train 12 clips (3 shards), val 5, test 5 (2 shards each) of 1 s, 8 fps, 32×32."""
    from avgen.data.synthetic_prepare import prepare_synthetic_hits

    root = tmp_path_factory.mktemp("data") / "synthetic_hits"
    prepare_synthetic_hits(str(root), TINY_CLIP, clips={"train": 12, "val": 5, "test": 5}, clips_per_shard=4,
                           preview=0, workers=1)
    return root


TINY_EXPERIMENTS = {"joint": "joint_cmcpe", "tempotokens": "tempotokens_vggsound", "vta_ldm": "vta_ldm"}


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_shards, tmp_path_factory):
    """``get(system)`` → ``last.ckpt`` of a 2-step ``scale=tiny`` fit of ``joint``, ``tempotokens`` or ``vta_ldm``
    (its experiment in :data:`TINY_EXPERIMENTS`) with EMA (decay 0.5), trained on first use and kept for the
    session (about 2 s each)."""
    made: dict[str, Path] = {}

    def get(system: str) -> Path:
        if system not in made:
            from avgen.commands import run_command

            tmp = tmp_path_factory.mktemp(f"ckpt_{system}")
            run_command(compose(["command=fit", f"experiment={TINY_EXPERIMENTS[system]}", "scale=tiny",
                                 f"data.root={tiny_shards}", "data.auto_prepare=false", "trainer.max_steps=2",
                                 "trainer.limit_val_batches=0", "model.validation.samples=0", "model.ema_decay=0.5"],
                                tmp, run_dir=tmp / "run"))
            made[system] = tmp / "run" / "checkpoints" / "last.ckpt"
        return made[system]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests: the test machine's two cores are shared with the
    decoding workers, and one thread per process is several times faster there."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose(overrides: list[str], tmp_path: Path, *, run_dir: Path | None = None):
    """Compose the avgen config as the command line would, with outputs under ``tmp_path``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from avgen.cli import config_dir, register_resolvers

    register_resolvers()
    run_dir = run_dir or tmp_path / "run"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"hydra.searchpath=[file://{TEST_CONFIGS}]",
                                                 f"hydra.run.dir={run_dir}",
                                                 f"paths.data_dir={tmp_path / 'data'}",
                                                 *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.root_dir = str(REPO)
        del cfg["hydra"]
    return cfg


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m avgen <args>`` in a subprocess (the way users and SLURM run it)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("AVGEN_RUN_ID", None)
    return subprocess.run([sys.executable, "-m", "avgen", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


# The longest modules first (their summed test time on 2 cores, most first): pytest-xdist's loadscope scheduling
# hands out modules in collection order as workers free up, and a long module collected last (alphabetical order put
# test_mini_generators.py near the end) ran alone on one worker while the others sat idle.
LONGEST_MODULES = (
    "tests/test_mini_generators.py", "tests/test_slurm.py", "tests/evaluation/test_evaluate.py",
    "tests/test_sweeps.py", "tests/test_mini_twins.py", "tests/test_app.py", "tests/test_paper_random.py",
    "tests/test_configs.py", "tests/test_export.py", "tests/systems/test_joint.py", "tests/data/test_prepare.py",
    "tests/test_checkpoint_config.py", "tests/test_cli.py", "tests/systems/test_joint_vs_diffusers.py",
)


def pytest_collection_modifyitems(session, config, items):
    """Run :data:`LONGEST_MODULES` first, in that order; every other module keeps its place after them."""
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}

    def module_rank(item) -> int:
        path = Path(str(item.fspath)).resolve()
        try:
            name = path.relative_to(REPO).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=module_rank)  # stable: the order inside a module and among the others is kept
