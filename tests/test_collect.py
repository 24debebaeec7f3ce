"""``python -m avgen collect``: runs, multirun and sweep folders made by hand (and one real fit) to one table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from avgen.collect import collect, lower_is_better, main, read_validation

CSV_HEADER = "epoch,lr-Adam,step,train/loss,val/loss,val/av_align\n"


def make_run(folder: Path, overrides: list[str], *, csv: str | None = None, max_steps: int | None = None,
             steps: tuple[int, ...] = (), evaluations: dict[str, dict] | None = None, status: dict | None = None,
             log: str = "") -> Path:
    """A run folder as fit, evaluate and the sweep task runner leave it: ``.hydra/`` (overrides, and a config with
    ``trainer.max_steps``), ``logs/metrics.csv``, ``checkpoints/step_<n>.ckpt`` holding ``global_step`` n,
    ``<folder>/metrics.json`` per evaluation, ``sweep_status.json`` and the job log ``commands.log``."""
    import torch

    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if max_steps is not None:
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": max_steps}}))
    if csv is not None:
        (folder / "logs").mkdir()
        (folder / "logs" / "metrics.csv").write_text(csv)
    for step in steps:
        (folder / "checkpoints").mkdir(exist_ok=True)
        torch.save({"global_step": step}, folder / "checkpoints" / f"step_{step:07d}.ckpt")
    for age, (where, metrics) in enumerate((evaluations or {}).items()):
        (folder / where).mkdir(parents=True)
        (folder / where / "metrics.json").write_text(json.dumps({"pred_dir": "x", "metrics": metrics, "clips": 4}))
        os.utime(folder / where / "metrics.json", (1_000_000 + age, 1_000_000 + age))  # in the order given
    if status is not None:
        (folder / "sweep_status.json").write_text(json.dumps(status))
    (folder / "commands.log").write_text(log)
    return folder


def three_runs(root: Path) -> Path:
    """``a`` done (evaluated), ``b`` unfinished (step 2 of 6, its CSV cut mid-line), ``c`` failed (a traceback)."""
    runs = root / "runs" / "ablation"
    common = ["command=fit", "experiment=tempotokens_ablations", "scale=tiny"]
    make_run(runs / "a", [*common, "model.depth=2", "seed=1", f"hydra.run.dir={runs / 'a'}"], max_steps=6,
             steps=(4, 6), csv=CSV_HEADER + "0,,1,0.9,,\n0,,1,,0.5,0.1\n0,,3,,0.25,0.3\n0,,5,,0.4,0.2\n",
             evaluations={"evaluate": {"fvd": 123.456789, "av_align": {"official": 0.25, "pr": 0.3}, "is_video": None}})
    make_run(runs / "b", [*common, "model.depth=4", "seed=1", "paths.output_dir=/elsewhere"], max_steps=6, steps=(2,),
             csv=CSV_HEADER + "0,,1,,0.75,0.05\n0,,2,,0.6")
    make_run(runs / "c", [*common, "+model.depth=8", "seed=1"], max_steps=6,
             log="[2026-12-01 02:27:41,555][avgen][INFO] - starting\nTraceback (most recent call last):\n"
                 '  File "x.py", line 1, in <module>\nRuntimeError: CUDA out of memory\n')
    return runs


def test_runs_folder_gives_one_row_per_run_with_status_and_the_overrides_that_vary(tmp_path, capsys):
    runs = three_runs(tmp_path)
    assert main([str(runs)]) == 0
    assert (runs / "results.csv").read_text() == (
        "run,status,step,model.depth,av_align.official,av_align.pr,fvd,is_video,val/av_align,val/av_align (best),"
        "val/loss,val/loss (best),note\n"
        "a,done,6,2,0.25,0.3,123.456789,,0.2,0.3,0.4,0.25,\n"
        "b,unfinished,2,4,,,,,0.05,0.05,0.75,0.75,logs/metrics.csv: incomplete last line left out; "
        "stopped at step 2 of trainer.max_steps=6\n"
        "c,failed,,8,,,,,,,,,commands.log: RuntimeError: CUDA out of memory\n")
    markdown = (runs / "results.md").read_text()
    assert markdown == (
        "<!-- written by `python -m avgen collect`; run it again to refresh -->\n"
        "# Results of ablation\n\n"
        f"Runs in `{runs}`: 3 (1 done, 1 unfinished, 1 failed)  \n"
        "Same in every run: `experiment=tempotokens_ablations`, `scale=tiny`, `seed=1`\n\n"
        "| run | status | step | model.depth | av_align.official | av_align.pr | fvd | is_video | val/av_align | "
        "val/av_align (best) | val/loss | val/loss (best) | note |\n"
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        "| a | done | 6 | 2 | 0.25 | 0.3 | 123.5 |  | 0.2 | 0.3 | 0.4 | 0.25 |  |\n"
        "| b | unfinished | 2 | 4 |  |  |  |  | 0.05 | 0.05 | 0.75 | 0.75 | logs/metrics.csv: incomplete last line "
        "left out; stopped at step 2 of trainer.max_steps=6 |\n"
        "| c | failed |  | 8 |  |  |  |  |  |  |  |  | commands.log: RuntimeError: CUDA out of memory |\n")
    out = capsys.readouterr().out
    assert out == markdown + "\n" + f"wrote {runs / 'results.csv'}\nwrote {runs / 'results.md'}\n"


def test_best_is_the_minimum_of_a_loss_and_the_maximum_otherwise_final_is_the_last_logged(tmp_path):
    file = tmp_path / "metrics.csv"
    file.write_text("step,val/loss,val/fvd,val/av_align,val/clap,train/loss\n"
                    "0,,,,,9\n1,3.0,300,0.2,0.1,\n3,1.0,100,0.5,0.4,\n5,2.0,200,0.3,0.2,\n6,,,,,0.5\n"
                    "7,0.5,\n")  # a line of the wrong width: left out
    notes: list[str] = []
    values, steps = read_validation(file, notes)
    assert values == {"val/loss": 2.0, "val/loss (best)": 1.0, "val/fvd": 200.0, "val/fvd (best)": 100.0,
                      "val/av_align": 0.3, "val/av_align (best)": 0.5, "val/clap": 0.2, "val/clap (best)": 0.4}
    assert steps == 7
    assert notes == ["logs/metrics.csv: line 7 (wrong number of fields) left out"]


@pytest.mark.parametrize("name,lower", [("val/loss", True), ("val/diffusion_loss", True), ("val/fvd", True),
                                        ("val/fad", True), ("val/kl_softmax", True), ("val/fd_panns", True),
                                        ("val/desync", True), ("val/lsd", True), ("val/mel_error", True),
                                        ("val/av_align_official", False), ("val/clap", False), ("val/is", False)])
def test_which_metrics_are_better_low(name, lower):
    assert lower_is_better(name) is lower


def sweep_folder(root: Path) -> Path:
    """A sweep folder: rows ``w0`` done, ``w1`` failed in its evaluate step, ``w2`` preempted, ``w3`` not started."""
    sweep = root / "tt3"
    base = ["command=fit", "experiment=tempotokens_ablations"]
    rows = []
    for index, (name, paper) in enumerate([("w0", {"fvd": 100.0, "av_align": 0.3}), ("w1", {"fvd": 90.0}),
                                           ("w2", {}), ("w3", {"fvd": 80.0})]):
        overrides = [f"model.windows.resolutions={index}"]
        rows.append({"index": index, "name": name, "run_dir": str(sweep / name), "overrides": overrides,
                     "paper": paper, "steps": [["fit", *base[1:], *overrides], ["evaluate", "evaluate.pred_dir=x"]]})
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({
        "format": "avgen-sweep/1", "file": "/x/tt3.yaml", "table": "TempoTokens Table 3: context-window resolutions",
        "source": "Yariv et al. 2024, Table 3", "launcher": "local", "created": "now", "rows": rows, "jobs": []}))
    make_run(sweep / "w0", [*base, "model.windows.resolutions=0"], steps=(4,),
             evaluations={"evaluate": {"fvd": 120.0, "av_align": {"official": 0.2875, "pr": 0.31}}},
             status={"state": "done", "step": 1, "returncode": 0})
    make_run(sweep / "w1", [*base, "model.windows.resolutions=1"], steps=(4,),
             status={"state": "failed", "step": 1, "returncode": 1})
    make_run(sweep / "w2", [*base, "model.windows.resolutions=2"], steps=(2,),
             status={"state": "preempted", "step": 0, "returncode": 75})
    return sweep


def test_sweep_folder_puts_the_paper_values_beside_ours_in_the_sweeps_order(tmp_path):
    sweep = sweep_folder(tmp_path)
    result = collect(sweep)
    assert [r.status for r in result.runs] == ["done", "failed", "preempted", "pending"]
    assert result.csv_path.read_text() == (
        "run,status,step,model.windows.resolutions,fvd,fvd (paper),av_align.official,av_align.official (paper),"
        "av_align.pr,note\n"
        "w0,done,4,0,120.0,100.0,0.2875,0.3,0.31,\n"
        "w1,failed,4,1,,90.0,,,,step 1 (evaluate) exited 1\n"
        "w2,preempted,2,2,,,,,,preempted in step 0 (fit); the requeued task resumes\n"
        "w3,pending,,3,,80.0,,,,no run folder yet\n")
    assert result.markdown.splitlines()[1:5] == [
        "# TempoTokens Table 3: context-window resolutions", "", "Paper values: Yariv et al. 2024, Table 3.  ",
        f"Runs in `{sweep}`: 4 (1 done, 1 failed, 1 preempted, 1 pending)  "]
    assert result.markdown.splitlines()[5] == "Same in every run: `experiment=tempotokens_ablations`"
    assert "| w0 | done | 4 | 0 | 120 | 100 | 0.2875 | 0.3 | 0.31 |  |" in result.markdown


def test_a_sweep_file_gives_paper_values_to_a_multirun_folder_by_overrides(tmp_path, capsys):
    multirun = tmp_path / "multirun-2026"
    multirun.mkdir()
    (multirun / "multirun.yaml").write_text("hydra: {}\n")
    for job, mode in {0: "text", 1: "audio", 2: "both", 10: "text"}.items():  # 10 sorts after 2 (natural order)
        make_run(multirun / str(job), ["command=fit", f"model.prompt={mode}", f"seed={job}"], steps=(4,),
                 evaluations={"evaluate": {"fvd": 100.0 + job}})
    sweep_file = tmp_path / "tt2.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "table": "TempoTokens Table 2", "source": "the paper", "base": ["experiment=x"],
        "rows": [{"name": "ours", "overrides": [], "paper": {"fvd": 1.0}},
                 {"name": "audio", "overrides": ["model.prompt=audio"], "paper": {"fvd": 2.0}},
                 {"name": "text", "overrides": ["model.prompt=text"], "paper": {"fvd": 3.0}},
                 {"name": "text-seed10", "overrides": ["model.prompt=text", "seed=10"], "paper": {"fvd": 4.0}}]}))
    assert main([str(multirun), "--sweep", str(sweep_file), "--out", str(tmp_path / "table")]) == 0
    assert (tmp_path / "table" / "results.csv").read_text() == (
        "run,status,step,row,model.prompt,seed,fvd,fvd (paper),note\n"
        "1,done,4,audio,audio,1,101.0,2.0,\n"
        "0,done,4,text,text,0,100.0,3.0,\n"
        "10,done,4,text-seed10,text,10,110.0,4.0,\n"
        "2,done,4,,both,2,102.0,,\n")
    assert "\nSweep rows without a run: ours\n" in capsys.readouterr().out


def test_broken_files_mark_their_run_and_never_stop_the_table(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "newest", ["model.depth=2"], steps=(4,),
             evaluations={"evaluate": {"fvd": 10.0, "fad": 1.0}, "sample/g3/evaluate": {"fvd": 20.0}})
    broken = make_run(runs / "broken", ["model.depth=3"], steps=(4,), evaluations={"evaluate": {"fvd": 1.0}})
    (broken / "evaluate" / "metrics.json").write_text('{"metrics": {"fvd": 1.')
    make_run(runs / "survived", ["model.depth=4"], steps=(4,), max_steps=4,
             log="[2026-12-01 02:27:41,555][avgen][WARNING] - clip 3 skipped:\nTraceback (most recent call last):\n"
                 "ValueError: no audio stream\n")
    make_run(runs / "crashed", ["model.depth=5"], steps=(2,), max_steps=4,
             log="[2026-12-01 02:27:41,555][avgen][ERROR] - NCCL timeout\n")
    bare = runs / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    (bare / "checkpoints" / "last.ckpt").write_bytes(b"cut")  # a checkpoint killed while written
    rows = {r.name: r for r in collect(runs).runs}
    assert rows["newest"].metrics == {"fvd": 20.0, "fad": 1.0}
    assert rows["newest"].notes == ["metrics of 2 evaluations, the newest value of each: evaluate, sample/g3/evaluate "
                                    "(oldest first)"]
    assert (rows["broken"].status, rows["broken"].metrics) == ("done", {})
    assert rows["broken"].notes == ["evaluate/metrics.json unreadable (JSONDecodeError: Expecting ',' delimiter: "
                                    "line 1 column 22 (char 21))"]
    assert (rows["survived"].status, rows["survived"].notes) == ("done", [])
    assert (rows["crashed"].status, rows["crashed"].notes) == ("failed", ["commands.log: NCCL timeout"])
    assert (rows["bare"].status, rows["bare"].overrides) == ("failed", None)
    assert rows["bare"].notes == ["no .hydra/overrides.yaml", "no complete checkpoint in checkpoints/",
                                  "no checkpoint and no metrics.json"]


def test_no_run_found_exits_1_with_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "nothing").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err == (f"avgen collect: no runs in {tmp_path / 'empty'}: looked for folders holding "
                                       ".hydra/, logs/metrics.csv, checkpoints/ or sweep_status.json, and for a "
                                       "sweep.json\n")
    assert not (tmp_path / "empty" / "results.csv").exists()


def test_replaces_its_own_results_and_refuses_anyone_elses(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs / "a", ["seed=1"], steps=(1,))
    assert main([str(runs)]) == 0
    assert main([str(runs)]) == 0
    assert capsys.readouterr().out.endswith(f"replaced {runs / 'results.csv'}\nreplaced {runs / 'results.md'}\n")
    (runs / "results.md").write_text("# my notes\n")
    assert main([str(runs)]) == 1
    assert capsys.readouterr().err == (f"avgen collect: {runs / 'results.md'} exists and was not written by avgen "
                                       f"collect; move it or pass --out DIR\n")
    assert (runs / "results.md").read_text() == "# my notes\n"


def test_the_command_line_dispatches_collect_before_hydra(tmp_path, capsys):
    from avgen.cli import help_text
    from avgen.cli import main as cli_main

    assert cli_main(["collect", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"avgen collect: no runs in {tmp_path}")
    assert any(line.split()[:1] == ["collect"] for line in help_text().splitlines())


def test_a_sweep_file_it_cannot_use_is_refused_in_one_line(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", ["seed=1"], steps=(1,))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{"name": "a", "paper": {"fvd": "n/a"}}]}))
    assert main([str(tmp_path / "runs"), "--sweep", str(bad)]) == 1
    assert capsys.readouterr().err == (f"avgen collect: sweep file {bad}: row a: paper must map metric keys to "
                                       "numbers, got {'fvd': 'n/a'}\n")
    assert not (tmp_path / "runs" / "results.csv").exists()


def test_a_paper_value_of_a_validation_metric_sits_beside_it_once(tmp_path):
    """A sweep naming ``val/loss`` in ``paper``: one ``val/loss`` column (the final value), its ``(paper)`` column
    right after it, then ``val/loss (best)``; never a second ``val/loss``."""
    runs = tmp_path / "runs"
    make_run(runs / "a", ["seed=1"], csv="step,val/loss\n1,0.5\n3,0.25\n", max_steps=4, steps=(4,))
    make_run(runs / "b", ["seed=2"], csv="step,val/loss\n1,0.125\n3,0.75\n", max_steps=4, steps=(4,))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"rows": [{"name": "a", "paper": {"val/loss": 0.5}}]}))
    assert main([str(runs), "--sweep", str(sweep)]) == 0
    assert (runs / "results.csv").read_text().splitlines() == [
        "run,status,step,seed,val/loss,val/loss (paper),val/loss (best),note",
        "a,done,4,1,0.25,0.5,0.25,", "b,done,4,2,0.75,,0.125,"]
