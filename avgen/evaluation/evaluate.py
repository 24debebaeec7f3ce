"""``python -m avgen evaluate``: score a folder of generated sounding videos.

Inputs: ``evaluate.pred_dir`` holds videos with an audio stream, or silent videos with a
``<stem>.wav`` (``.flac``, ...) beside them: any container and codec FFmpeg reads, any extension
case, any file name (:func:`avgen.media.scan_media`). Every other file is skipped and named with its
reason. Clips are scored in parallel worker processes; a clip that cannot be read is reported with
its reason and never stops the run. Outputs in the run folder:

- ``metrics.json``: value per metric and variant, number of clips scored, failures with reasons,
  skipped files with reasons, extractor weight hashes, library versions and the evaluate config;
- ``per_clip.csv``: one row per clip (AV-Align, CLIPSIM, CLAP, ImageBind and KL scores, onset and peak
  counts, video and audio durations in seconds with a note when they differ by more than one
  frame, and every metric's error for the clip);
- ``per_label.csv``: per label (``label`` in ``<stem>.json`` beside the clip, else its reference's in
  ``evaluate.ref_dir``) and in total, the clip count and each per-clip metric's mean and count; weighted by the
  counts, the labels sum back to ``metrics.json``. Distribution metrics (FVD, FAD, IS, ...) are not split
  (:func:`avgen.evaluation.annotations.per_label_rows` says why);
- ``plots/<stem>.png`` for the first ``evaluate.plots`` clips (frames, flow magnitude with peaks,
  waveform with onsets, matches).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from avgen.errors import ConfigError
from avgen.evaluation.annotations import ClipAnnotations, per_label_rows
from avgen.evaluation.processes import AlignmentPool, Processes
from avgen.evaluation.scorers import (
    AVAILABLE,
    MAIN_PROCESS,
    NEEDS_REFERENCE,
    OPTION_BLOCKS,
    REFERENCE_SET,
    score_in_main_process,
)
from avgen.samples import export_split_clips, find_clips

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateSettings:
    """The ``evaluate`` config block, typed and checked (:meth:`check_inputs`) before any clip or model loads.

    ``metrics``: names of :data:`avgen.evaluation.scorers.AVAILABLE`; ``options``: the per-metric
    blocks (``fvd``, ``fad``, ``clipsim``, ``clap``, ``panns``, ``is_video``, ``imagebind``, ``ib_score``, ``passt``,
    ``fd_vggish_frames``, ``onset``);
    ``av_align``: :class:`~avgen.metrics.av_align.AVAlignConfig` fields. The other fields are the keys
    of the same name in ``configs/evaluate/default.yaml``.
    """

    pred_dir: str | Path | None = None
    metrics: tuple[str, ...] = ("av_align",)
    ref_dir: str | Path | None = None
    prompt: str | None = None
    workers: int = 2
    decode_threads: int = 2
    audio: str = "stream"
    plots: int = 0
    overwrite: bool = False
    device: str = "auto"
    cache_dir: str | Path | None = None
    cache_pred: bool = False
    av_align: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, block: Mapping[str, Any]) -> EvaluateSettings:
        """From the ``evaluate`` block (or keyword arguments of the same names).

        Raises:
            ConfigError: a key the block does not have.
        """
        plain = {k for k in cls.__dataclass_fields__ if k != "options"}
        unknown = sorted(set(block) - plain - set(OPTION_BLOCKS))
        if unknown:
            raise ConfigError(f"evaluate: unknown keys {unknown}; known: {sorted(plain | set(OPTION_BLOCKS))}")
        values = {k: v for k, v in block.items() if k in plain and v is not None or k in ("ref_dir", "prompt")}
        values["metrics"] = tuple(block.get("metrics") or cls.metrics)
        values["av_align"] = dict(block.get("av_align") or {})
        return cls(**values, options={k: dict(block.get(k) or {}) for k in OPTION_BLOCKS})

    def check_inputs(self) -> None:
        """Refuse what cannot run, before anything loads.

        Raises:
            ConfigError: no ``pred_dir``, an unknown metric, a metric that needs ``ref_dir`` without one.
        """
        if not self.pred_dir:
            raise ConfigError("evaluate needs evaluate.pred_dir=<folder of generated videos (with sound, or with "
                              "<stem>.wav beside them; any container)>")
        unknown = [m for m in self.metrics if m not in AVAILABLE]
        if unknown:
            raise ConfigError(f"evaluate.metrics: unknown {unknown}; known: {list(AVAILABLE)}")
        from avgen.samples import AUDIO_SOURCES

        if self.audio not in AUDIO_SOURCES:
            raise ConfigError(f"evaluate.audio={self.audio!r}: expected stream (each clip's own audio stream) or file "
                              f"(the <stem>.wav/.flac beside it when there is one, as av-benchmark reads)")
        wanted = [m for m in self.metrics if m in NEEDS_REFERENCE]
        if wanted and not self.ref_dir:
            raise ConfigError(f"evaluate.metrics {wanted} compare with reference clips: set evaluate.ref_dir=<folder "
                              f"of clips or a shard split folder> (kl, kl_passt, fd_passt: a folder with clips of the "
                              f"same stems)")


@dataclass
class EvaluationResult:
    """What one ``evaluate`` run found: :meth:`to_json` is ``metrics.json``; ``rows`` are ``per_clip.csv``,
    ``per_label`` is ``per_label.csv``."""

    pred_dir: str
    clips_dir: str
    ref_dir: str | None
    metrics: dict[str, Any]
    clips: int
    processes: int
    failures: list[dict[str, str]]
    skipped: dict[str, list[dict[str, str]]]
    splits: dict[str, Any]
    extractors: dict[str, Any]
    av_align_config: dict[str, Any]
    versions: dict[str, str]
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_label: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"pred_dir": self.pred_dir, "clips_dir": self.clips_dir, "ref_dir": self.ref_dir,
                "metrics": self.metrics, "clips": self.clips, "processes": self.processes, "failures": self.failures,
                **self.skipped, "splits": self.splits, "extractors": self.extractors,
                "av_align_config": self.av_align_config, "versions": self.versions, "config": self.config}

    def write(self, out: str | Path) -> None:
        """``metrics.json``, ``per_clip.csv`` and ``per_label.csv`` in ``out`` (atomically)."""
        from avgen.media import write_bytes_atomic

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2, default=str)
        write_bytes_atomic(out / "metrics.json", text.encode(), overwrite=True)
        _write_csv(out / "per_clip.csv", self.rows)
        _write_csv(out / "per_label.csv", self.per_label, list(self.per_label[-1]) if self.per_label else ["label"])


@dataclass
class _Plan:
    requested: Path     # evaluate.pred_dir as given
    clips_dir: Path     # the folder of clip files (the exported split for a shard split)
    clips: list[Path]   # every clip, sorted
    skipped: dict[str, list[dict[str, str]]]


def evaluate(settings: Mapping[str, Any] | EvaluateSettings, out_dir: str | Path, *,
             config: Mapping[str, Any] | None = None) -> EvaluationResult:
    """Score every clip of ``settings.pred_dir`` and write ``metrics.json`` and ``per_clip.csv`` to ``out_dir``:
    plan (find the clips; a shard split is exported as files first), run (AV-Align in worker processes,
    the other metrics in this process over one decoding pass), merge (the processes' rows, values and
    failures), write (process 0). ``config`` is recorded in ``metrics.json`` (default: ``settings``).

    ``fvd`` / ``fad`` compare with ``ref_dir`` (a folder of clips or a shard split); the reference clips'
    features of every metric are kept in the feature store at ``cache_dir`` (:mod:`avgen.data.feature_store`), so a
    re-score extracts only new or changed reference clips, and with ``cache_pred`` the generated clips' too. Without
    ``cache_dir`` the store is ``<out_dir>/features``, a new one per run that no other run reuses: pass one
    ``cache_dir`` to every run (the command line's default is ``${paths.data_dir}/.features``). A store that can be
    read but not written is used read-only (logged; ``writable: false`` in each metric's ``feature_store`` report).
    ``clipsim`` / ``clap`` score each clip against ``<stem>.txt`` beside it, else ``prompt``. ``is`` and ``kl``
    use the PANNs CNN14 of ``panns``; ``kl`` pairs each clip with the
    reference of the same stem in the folder ``ref_dir``, or with the shard split clip named as ``source``
    in ``<stem>.json``; ``is_video`` uses the C3D of ``is_video``; ``imagebind`` the ImageBind file of
    ``imagebind``; ``ib_score`` the one of ``ib_score`` (av-benchmark's protocol; ``metrics.json`` gets
    ``ib_score`` ×100 and ``ib_score_raw``). ``onset_acc`` / ``onset_ap`` match each clip's audio onsets with its
    annotated ``events`` (``<stem>.json`` beside it, else its reference's in ``ref_dir``; :mod:`avgen.metrics.onset`).

    AV-Align workers start from a fork server, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard (the command line has it).

    Raises:
        ConfigError: bad settings (:meth:`EvaluateSettings.check_inputs`), a ``pred_dir`` without clips, a
            ``cache_dir`` that cannot be created or read.
        FileExistsError: ``metrics.json`` exists in ``out_dir`` and ``overwrite`` is false.
    """
    from avgen.metrics.av_align import AVAlignConfig

    s = settings if isinstance(settings, EvaluateSettings) else EvaluateSettings.from_mapping(settings)
    s.check_inputs()
    out = Path(out_dir)
    if (out / "metrics.json").exists() and not s.overwrite:
        raise FileExistsError(f"{out / 'metrics.json'} exists; pass evaluate.overwrite=true or another run folder")
    av_align = asdict(AVAlignConfig(**s.av_align))
    procs = Processes(s.device)
    try:
        plan = _plan(s, out, procs)
        rows, main = _run(s, plan, out, procs, av_align)
    finally:
        procs.close()
    result = _merge(s, plan, rows, main, av_align, procs.world,
                    dict(config) if config is not None else {**asdict(s), "metrics": list(s.metrics)})
    if procs.rank == 0:  # every process holds the same result; the first writes it
        result.write(out)
    return result


def evaluate_folder(pred_dir: str | Path, out_dir: str | Path, *, metrics: list[str], workers: int = 2,
                    plots: int = 0, av_align: dict | None = None, ref_dir: str | Path | None = None,
                    fvd: dict | None = None, fad: dict | None = None, clipsim: dict | None = None,
                    clap: dict | None = None, panns: dict | None = None, is_video: dict | None = None,
                    imagebind: dict | None = None, prompt: str | None = None, decode_threads: int = 2,
                    cache_dir: str | Path | None = None, device: str = "auto", overwrite: bool = False,
                    config: dict | None = None, **blocks: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`evaluate` with the ``evaluate`` block's keys as keyword arguments (``blocks``: the option
    blocks of metrics added since, passed through); returns ``metrics.json``'s content
    (:meth:`EvaluationResult.to_json`).

    ``cache_dir`` defaults to ``<out_dir>/features``: a new feature store per run, so nothing is reused across runs
    (each run extracts every reference clip again). A script that scores several runs against one test set passes
    the same ``cache_dir`` to each (the command line's default is ``${paths.data_dir}/.features``)."""
    block = dict(pred_dir=pred_dir, metrics=metrics, workers=workers, plots=plots, av_align=av_align, ref_dir=ref_dir,
                 fvd=fvd, fad=fad, clipsim=clipsim, clap=clap, panns=panns, is_video=is_video, imagebind=imagebind,
                 prompt=prompt, decode_threads=decode_threads, cache_dir=cache_dir, device=device,
                 overwrite=overwrite, **blocks)
    return evaluate(block, out_dir, config=config or {}).to_json()


def _plan(s: EvaluateSettings, out: Path, procs: Processes) -> _Plan:
    """The clips to score (a shard split exported as files first) and the files skipped, with reasons."""
    from avgen.data.shards import MANIFEST

    requested = clips_dir = Path(s.pred_dir)
    if (requested / MANIFEST).is_file():  # a shard split: its clips (ground truth) as files first
        if procs.rank == 0:
            export_split_clips(requested, out / "clips")
        procs.gather(None)  # the others wait for the files
        clips_dir = out / "clips"
    found = find_clips(clips_dir)
    skipped = {"skipped": found.skipped_json()}
    distribution = [m for m in s.metrics if m in REFERENCE_SET]  # fvd, fad, kvd, fd_panns, fd_vggish_frames
    if s.ref_dir and distribution and not (Path(s.ref_dir) / MANIFEST).is_file():
        skipped["ref_skipped"] = find_clips(s.ref_dir, "evaluate.ref_dir").skipped_json()
    folders = {"skipped": "evaluate.pred_dir", "ref_skipped": "evaluate.ref_dir"}
    for key, entries in skipped.items():  # the command prints each reason; scripts get this and metrics.json
        if entries and procs.rank == 0:
            log.warning("%d files in %s skipped (reasons in metrics.json '%s'): %s", len(entries), folders[key],
                        key, ", ".join(e["file"] for e in entries))
    return _Plan(requested, clips_dir, found.files, skipped)


def _run(s: EvaluateSettings, plan: _Plan, out: Path, procs: Processes, av_align: dict
         ) -> tuple[list[dict], tuple[dict, dict, list[dict], dict]]:
    """AV-Align rows of every clip (all processes, sorted) and the main-process metrics' (values,
    descriptions, failures, per-clip scores); plots of the first readable clips."""
    metrics = list(s.metrics)
    main_metrics = [m for m in metrics if m in MAIN_PROCESS]
    mine = plan.clips[procs.rank::procs.world]  # this process's share (all of them without torchrun)
    with AlignmentPool(s.workers if "av_align" in metrics else 0) as pool:
        pending = pool.submit([(str(p), av_align, None) for p in mine]) if "av_align" in metrics else None
        # With cores to spare, AV-Align runs in the worker processes while the main process decodes the
        # clips again for the feature-based metrics (on a GPU when there is one). Without (2 cores and 2
        # workers), overlapping only oversubscribes: measured 8.7-9.2 s vs 8.1 s sequential for 24 clips.
        rows = None
        if pending is not None and not (main_metrics and pool.spare_cores()):
            rows = pool.collect(pending)
        main = score_in_main_process(main_metrics, mine, ref_dir=s.ref_dir, options=s.options, prompt=s.prompt,
                                     cache_dir=s.cache_dir or out / "features", device=s.device, procs=procs,
                                     cache_pred=s.cache_pred,
                                     all_clips=plan.clips, decode_threads=s.decode_threads, audio=s.audio)
        if rows is None:
            rows = pool.collect(pending) if pending is not None else [{"clip": p.name} for p in mine]
        rows = sorted((r for part in procs.gather(rows) for r in part), key=lambda r: r["clip"])
        ok = [r for r in rows if "error" not in r]
        if s.plots and procs.rank == 0:  # the first readable clips; plotting re-runs their alignment
            plot_dir = out / "plots"
            plot_dir.mkdir(parents=True, exist_ok=True)
            chosen = [plan.clips_dir / r["clip"] for r in ok[:s.plots]]
            pool.collect(pool.submit([(str(p), av_align, str(plot_dir / f"{p.stem}.png")) for p in chosen]), "plots")
    return rows, main


def _merge(s: EvaluateSettings, plan: _Plan, rows: list[dict], main: tuple, av_align: dict, world: int,
           config: dict) -> EvaluationResult:
    """The result of every process: mean AV-Align of the readable clips, the main-process values, the per-clip
    rows joined with the main-process scores, and one failure entry per clip with every metric's reason."""
    from avgen._versions import library_versions

    more_values, extractors, more_failures, per_clip = main
    ok = [r for r in rows if "error" not in r]
    failures = [{"clip": r["clip"], "reason": r["error"]} for r in rows if "error" in r] + more_failures
    variants = sorted({k for r in ok for k in r if k.startswith("av_align_")})
    values: dict[str, Any] = {}
    if variants and ok:
        values["av_align"] = {k.removeprefix("av_align_"): sum(r[k] for r in ok) / len(ok) for k in variants}
    values.update(more_values)
    for row in rows:  # per-clip scores of the main-process metrics (clipsim, clap, imagebind, kl) and durations
        row.update(per_clip.get(row["clip"], {}))
    reasons: dict[str, list[str]] = {}
    for f in sorted(failures, key=lambda f: f["clip"]):  # one entry per clip, every metric's reason
        if f["reason"] not in reasons.setdefault(f["clip"], []):
            reasons[f["clip"]].append(f["reason"])
    for row in rows:  # the CSV's error column carries every metric's reason too
        if row["clip"] in reasons:
            row["error"] = "; ".join(reasons[row["clip"]])
    ref_dir = s.ref_dir
    try:
        annotations = ClipAnnotations(ref_dir, plan.clips)
        labels = {p.name: annotations.label(p) for p in plan.clips}
    except Exception as exc:  # unreadable reference jsons cost the labels, never the scores already computed
        log.warning("per_label.csv without labels: evaluate.ref_dir=%s: %s: %s", ref_dir, type(exc).__name__, exc)
        labels = {}
    per_label = per_label_rows(rows, labels, values)
    return EvaluationResult(
        pred_dir=str(plan.requested.absolute()), clips_dir=str(plan.clips_dir.absolute()),
        ref_dir=str(Path(ref_dir).absolute()) if ref_dir else None, metrics=values,
        clips=len(plan.clips) - len(reasons), processes=world,
        failures=[{"clip": c, "reason": "; ".join(r)} for c, r in reasons.items()], skipped=plan.skipped,
        splits={key: info for key, info in (("pred_dir", split_list(plan.requested)),
                                            ("ref_dir", split_list(ref_dir) if ref_dir else None)) if info},
        extractors=extractors, av_align_config=av_align, versions=library_versions(), config=config, rows=rows,
        per_label=per_label)


def _write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """``rows`` as CSV with columns ``fields`` (default: per_clip.csv's ``clip``, the others sorted, ``error``)."""
    fields = fields or ["clip"] + sorted({k for r in rows for k in r} - {"clip", "error"}) + ["error"]
    from avgen.media import atomic_write

    with atomic_write(path, "w", overwrite=True) as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(r)


def split_list(folder: str | Path) -> dict[str, Any] | None:
    """What ``metrics.json`` records about a prepared shard split it scored (``None`` for a plain folder):
    dataset, split, clips, and for datasets defined by a clip list how many listed clips were present and
    the SHA-1 of the list, so two test sets can be compared at a glance."""
    from avgen.data.shards import MANIFEST, Manifest

    if not (Path(folder) / MANIFEST).is_file():
        return None
    manifest = Manifest.load(folder)
    return {"dataset": manifest.dataset, "split": manifest.split, "clips": manifest.num_clips,
            **({"list": manifest.prepare["list"]} if manifest.prepare.get("list") else {})}


