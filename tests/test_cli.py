"""The command line: help, errors, command rewriting, multirun, run folders (subprocesses, as users run it)."""

from __future__ import annotations

import json

import pytest

from avgen.cli import COMMANDS, group_options, rewrite_argv
from tests.conftest import run_cli


def test_rewrite_turns_command_word_into_override():
    assert rewrite_argv(["fit", "experiment=x", "seed=3"]) == ["command=fit", "experiment=x", "seed=3"]
    # -m before the word and --cfg's value are not mistaken for the command
    assert rewrite_argv(["-m", "fit", "seed=1,2"]) == ["-m", "command=fit", "seed=1,2"]
    assert rewrite_argv(["--cfg", "job", "prepare"]) == ["--cfg", "job", "command=prepare"]
    # Lightning's DDP re-launch passes the already rewritten argv
    assert rewrite_argv(["command=fit", "hydra.run.dir=x"]) == ["command=fit", "hydra.run.dir=x"]


def test_unknown_command_exits_2_listing_valid_ones(tmp_path):
    proc = run_cli("frobnicate", "x=1", cwd=tmp_path)
    assert proc.returncode == 2
    for command in COMMANDS:
        assert command in proc.stderr
    assert "frobnicate" in proc.stderr


def test_help_lists_commands_experiments_and_groups(tmp_path, capsys):
    assert rewrite_argv(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"  {command} " in out
    for experiment in group_options("experiment"):
        assert f"  {experiment}" in out
    for group, option in (("trainer", "ddp_cpu"), ("scale", "tiny"), ("logger", "wandb"), ("data", "synthetic_hits"),
                          ("hydra/launcher", "slurm")):
        line = next(text for text in out.splitlines() if text.strip().startswith(f"{group}:"))
        assert option in line
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "experiments (experiment=<name>)" in proc.stdout


def test_unknown_group_option_lists_valid_names(tmp_path):
    proc = run_cli("fit", "trainer=nope", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Could not find 'trainer/nope'" in proc.stderr
    for option in ("cpu", "ddp", "ddp_cpu", "gpu"):
        assert option in proc.stderr


def test_commands_that_need_missing_parts_fail_clearly(tmp_path):
    proc = run_cli("fit", "scale=tiny", f"paths.data_dir={tmp_path}/data", cwd=tmp_path)
    assert proc.returncode == 1 and "no model selected" in proc.stderr and "experiment=" in proc.stderr
    proc = run_cli("evaluate", cwd=tmp_path)
    assert proc.returncode == 1 and "evaluate.pred_dir" in proc.stderr
    proc = run_cli("evaluate", f"evaluate.pred_dir={tmp_path}", "evaluate.metrics=[av_align,isv]", cwd=tmp_path)
    assert proc.returncode == 1 and "unknown ['isv']" in proc.stderr
    (tmp_path / "clip.mp4").write_bytes(b"")
    proc = run_cli("evaluate", f"evaluate.pred_dir={tmp_path}", "evaluate.metrics=[imagebind]", cwd=tmp_path,
                   env={"AVGEN_IMAGEBIND_PATH": str(tmp_path / "imagebind_huge.pth")})
    assert proc.returncode == 1 and "evaluate.imagebind.path" in proc.stderr and "Traceback" not in proc.stderr
    assert "dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth" in proc.stderr
    proc = run_cli("sample", cwd=tmp_path)
    assert proc.returncode == 1 and "ckpt_path" in proc.stderr


@pytest.mark.slow
def test_multirun_and_slurm_run_folders(tmp_path):
    """-m runs one job per value; under SLURM the run folder is named from the job and array ids."""
    proc = run_cli("-m", "prepare", "scale=tiny", "data.prepare.seed=1,2", "data.prepare.clips={train:2,val:1,test:1}",
                   "data.prepare.preview=0", "data.root=${paths.data_dir}/seed${data.prepare.seed}",
                   f"paths.data_dir={tmp_path}/data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seeds = {}
    for seed in (1, 2):
        manifest = json.loads((tmp_path / "data" / f"seed{seed}" / "train" / "manifest.json").read_text())
        seeds[seed] = manifest["prepare"]["config"]["seed"]
    assert seeds == {1: 1, 2: 2}
    assert len(list((tmp_path / "runs" / "default").glob("multirun-*/[01]"))) == 2

    env = {"SLURM_JOB_ID": "991", "SLURM_ARRAY_JOB_ID": "990", "SLURM_ARRAY_TASK_ID": "3"}
    proc = run_cli("prepare", "scale=tiny", "data.prepare.clips={train:2,val:1,test:1}", "data.prepare.preview=0",
                   f"paths.data_dir={tmp_path}/data2", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "default" / "slurm-990_3" / ".hydra" / "config.yaml").exists()


def test_prepare_is_idempotent_and_refuses_to_overwrite(tmp_path):
    args = ("prepare", "scale=tiny", "data.prepare.clips={train:2,val:1,test:1}", "data.prepare.preview=0",
            f"paths.data_dir={tmp_path}/data")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    manifest = next((tmp_path / "data").glob("synthetic_hits/*/train/manifest.json"))
    before = manifest.read_text()
    assert run_cli(*args, cwd=tmp_path).returncode == 0  # same config: kept as is
    assert manifest.read_text() == before
    proc = run_cli(*args, "data.prepare.seed=5", cwd=tmp_path)  # another config: refused
    assert proc.returncode == 1 and "overwrite=true" in proc.stderr and manifest.read_text() == before
    assert run_cli(*args, "data.prepare.seed=5", "overwrite=true", cwd=tmp_path).returncode == 0
    assert '"seed": 5' in manifest.read_text()


def test_local_multirun_with_ddp_is_refused(tmp_path):
    proc = run_cli("-m", "fit", "trainer=ddp_cpu", "scale=tiny", "seed=1,2", f"paths.data_dir={tmp_path}/data",
                   cwd=tmp_path)
    assert proc.returncode == 1 and "hydra/launcher=slurm" in proc.stderr and "every rank" in proc.stderr


@pytest.mark.parametrize("experiment, key", [("joint_cmcpe", "model.video.base"),
                                             ("tempotokens_vggsound", "model.t2v.base")])
def test_missing_pretrained_weights_stop_with_the_key_and_the_tiny_hint(tmp_path, experiment, key, capsys):
    """In-process (the command's own error path, without a subprocess's seconds of imports)."""
    from avgen.commands import run_command
    from tests.conftest import compose

    with pytest.raises(SystemExit) as exit_:
        run_command(compose(["command=fit", f"experiment={experiment}"], tmp_path))
    err = capsys.readouterr().err
    assert exit_.value.code == 1  # handled: an unhandled error would raise here, not exit 1
    line = err.strip().splitlines()[-1]  # one line
    assert line.startswith("avgen fit: error: ") and key in line and "scale=tiny" in line
    assert "huggingface-cli download" in line


def test_help_lists_every_evaluate_metric():
    from avgen.cli import help_text
    from avgen.evaluation import AVAILABLE

    line = next(line for line in help_text().splitlines() if line.strip().startswith("evaluate"))
    assert line.split("evaluate.metrics=[")[1].split("]")[0].split(",") == list(AVAILABLE)


def test_lightning_log_lines_go_through_the_root_handlers_once():
    """The lightning package's own console handler (added on every import) is removed and its loggers propagate,
    so a Lightning line prints once, in the root's format, and reaches the run's log file; file handlers stay."""
    import logging

    import lightning  # noqa: F401  (adds its console handler)

    from avgen.commands import route_library_logs

    logger = logging.getLogger("lightning")
    root = logging.getLogger()
    saved = (list(logger.handlers), logger.propagate, list(root.handlers))
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    file_handler = logging.FileHandler("/dev/null")
    try:
        logger.addHandler(logging.StreamHandler())
        logger.addHandler(file_handler)
        logger.propagate = False
        root.addHandler(Collect())
        route_library_logs()
        assert [type(h) for h in logger.handlers] == [logging.FileHandler] and logger.propagate
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("GPU available: False")
        assert [r.getMessage() for r in records] == ["GPU available: False"]
    finally:
        file_handler.close()
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        root.handlers[:] = saved[2]
