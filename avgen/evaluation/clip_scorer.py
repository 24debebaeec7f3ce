"""Per-clip scores of clip files through ``evaluate``'s own code, for ``python -m avgen filter``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from avgen.errors import ConfigError
from avgen.evaluation.processes import AlignmentPool, device_for
from avgen.evaluation.scorers import PER_CLIP, feed_scorers, per_clip_scorers


class ClipScorer:
    """Per-clip scores of clip files through ``evaluate``'s own code: AV-Align by
    :func:`~avgen.evaluation.processes.score_clip` in ``workers`` processes, CLIPSIM / CLAP / ImageBind by
    the scorers :func:`~avgen.evaluation.evaluate.evaluate` uses (:func:`~avgen.evaluation.scorers.per_clip_scorers`,
    :func:`~avgen.evaluation.scorers.feed_scorers`), each model loaded once for every :meth:`score` call.
    Used by ``python -m avgen filter`` so that a curation threshold and a reported metric are the same
    number.

    Args:
        metrics: a subset of :data:`PER_CLIP`.
        av_align: :class:`~avgen.metrics.av_align.AVAlignConfig` fields (``evaluate.av_align``).
        options: ``{metric: evaluate.<metric> block}`` (``clap``: ``model``; ``imagebind``: ``path``).
        prompt: the CLIPSIM/CLAP prompt of clips without a ``<stem>.txt``.
        device: the feature extractors' device (``auto``: CUDA when available).
        workers: AV-Align processes; decode_threads: clips decoded ahead of the extractors.

    Use as a context manager (the AV-Align worker pool lives inside the ``with`` block).

    Raises:
        ConfigError: a metric outside :data:`PER_CLIP`.
    """

    def __init__(self, metrics: list[str], *, av_align: dict | None = None, options: dict[str, dict] | None = None,
                 prompt: str | None = None, device: str = "auto", workers: int = 2, decode_threads: int = 2):
        from avgen.metrics.av_align import AVAlignConfig

        unknown = [m for m in metrics if m not in PER_CLIP]
        if unknown:
            raise ConfigError(f"{unknown}: not per-clip metrics; per-clip scores exist for {list(PER_CLIP)}")
        self.metrics = list(metrics)
        self.av_align = asdict(AVAlignConfig(**(av_align or {})))
        self.scorers = per_clip_scorers(self.metrics, options or {}, prompt, device_for(device))
        self.workers, self.decode_threads = int(workers), int(decode_threads)
        self._pool: AlignmentPool | None = None

    def __enter__(self) -> ClipScorer:
        self._pool = AlignmentPool(self.workers if "av_align" in self.metrics else 0).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.__exit__(*exc)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        """``{metric: what scored it}``: the AV-Align config, each model's name, hashes and settings."""
        info: dict[str, Any] = {"av_align": {"config": self.av_align}} if "av_align" in self.metrics else {}
        for scorer in self.scorers:
            info[scorer.name] = {k: v for k, v in scorer.metric.describe().items() if k != "clips"}
        return info

    def score(self, paths: list[Path], metrics: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """``{clip file name: {column: value, "error": reasons, "errors": {metric: reason}}}`` for every
        clip of ``paths``, for ``metrics`` (default: all of this scorer's). A clip a metric could not score
        lacks that metric's column and has its reason in ``errors`` (an unreadable clip: every metric);
        ``error`` joins them, as in ``per_clip.csv``. Columns as in ``per_clip.csv``:
        ``av_align_<variant>``, ``clipsim``, ``clap``, ``imagebind``, plus AV-Align's onset/peak counts
        and the durations."""
        if self._pool is None:
            raise RuntimeError("ClipScorer.score runs inside `with ClipScorer(...) as scorer:`")
        wanted = self.metrics if metrics is None else [m for m in metrics if m in self.metrics]
        rows: dict[str, dict[str, Any]] = {p.name: {} for p in paths}
        errors: dict[str, dict[str, str]] = {}
        if "av_align" in wanted:
            pool = self._pool
            for row in pool.collect(pool.submit([(str(p), self.av_align, None) for p in paths])):
                name = row.pop("clip")
                if "error" in row:
                    errors.setdefault(name, {})["av_align"] = " ".join(row.pop("error").split())
                rows[name].update(row)
        scorers = [s for s in self.scorers if s.name in wanted]
        if scorers:
            failures: list[dict] = []
            for name, scores in feed_scorers(scorers, paths, failures, self.decode_threads).items():
                rows[name].update(scores)
            for failure in failures:  # "<metric>: reason" from a scorer; an unreadable clip fails them all
                reason = " ".join(failure["reason"].split())
                owner = next((s.name for s in scorers if reason.startswith(f"{s.name}: ")), None)
                for metric in [owner] if owner else [s.name for s in scorers]:
                    errors.setdefault(failure["clip"], {})[metric] = reason.removeprefix(f"{metric}: ")
        for name, reasons in errors.items():
            rows[name]["errors"] = reasons
            rows[name]["error"] = "; ".join(f"{m}: {r}" for m, r in reasons.items())
        return rows

