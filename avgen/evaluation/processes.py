"""Where ``evaluate`` runs: the processes of a torchrun launch (:class:`Processes`), the AV-Align worker
pool (:class:`AlignmentPool`, :func:`score_clip`) and the device of the feature extractors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avgen.parallel import worker_pool

if TYPE_CHECKING:
    from avgen.media import Clip


def score_clip(job: tuple[str, dict, str | None]) -> dict[str, Any]:
    """Worker: AV-Align of one clip (at its own frame rate) and its durations; errors become a row with
    the reason."""
    from avgen.media import read_clip
    from avgen.metrics.av_align import AVAlignConfig, align_clip, plot_alignment

    path, cfg_dict, plot_path = job
    row: dict[str, Any] = {"clip": Path(path).name}
    try:
        clip = read_clip(path)
        fps = float(clip.fps)
        result = align_clip(clip.frames, fps, clip.audio, clip.sample_rate, AVAlignConfig(**cfg_dict))
        row.update({f"av_align_{k}": float(v) for k, v in result.scores.items()})
        row.update(onsets=len(result.onsets), frames=int(clip.frames.shape[0]), fps=fps, **clip_durations(clip))
        row.update({f"peaks_{k}": len(v) for k, v in result.peaks.items()})
        if plot_path:
            plot_alignment(plot_path, clip.frames, fps, clip.audio, clip.sample_rate, result)
    except Exception as exc:  # one unreadable clip never stops an evaluation
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def clip_durations(clip: Clip) -> dict[str, Any]:
    """The per-clip CSV's duration columns: ``video_seconds`` (frames / fps), ``audio_seconds`` (samples /
    rate) and ``duration_note``, empty unless the two differ by more than one frame. AV-Align keeps its
    official definition over whatever each stream holds; the note says when they do not cover the same time."""
    return {"video_seconds": round(clip.video_seconds, 6), "audio_seconds": round(clip.audio_seconds, 6),
            "duration_note": clip.duration_mismatch() or ""}


def _not_distributed() -> bool:
    return False


class Processes:
    """The processes of one ``evaluate`` run. Started by torchrun (``WORLD_SIZE`` > 1, with ``RANK``,
    ``LOCAL_RANK`` and the rendezvous variables), they form a process group (NCCL on GPUs, else gloo):
    process ``r`` scores clips ``r, r + W, ...`` of the sorted list and its share of the reference clips,
    metric states are summed (tensors) or concatenated (lists) across processes, per-clip rows and
    failures are gathered, and every process ends with the same result, which process 0 writes.
    Without torchrun this is one process and every call is local."""

    def __init__(self, device: str = "auto"):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                cuda = torch.cuda.is_available() and device in ("auto", "cuda")
                if cuda:
                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                dist.init_process_group("nccl" if cuda else "gloo")
                self.started = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def reduce(self, metric) -> None:
        """Replace a metric's states by their sum (tensor states) or concatenation in rank order (list
        states) over the processes, in place (every avgen metric reduces that way). Its ``compute`` is then
        told that it runs alone (``distributed_available_fn``), so torchmetrics does not reduce again."""
        if self.world == 1:
            return
        import torch.distributed as dist

        metric.distributed_available_fn = _not_distributed

        for name, value in metric.metric_state.items():
            if isinstance(value, list):
                parts = self.gather([t.detach().cpu() for t in value])
                setattr(metric, name, [t.to(metric.device) for part in parts for t in part])
            else:
                total = value.detach().clone()
                dist.all_reduce(total)
                setattr(metric, name, total)

    def close(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()


class AlignmentPool:
    """AV-Align jobs (:func:`score_clip`) in ``workers`` processes (none for ``workers <= 1``: then
    :meth:`collect` runs them in this process). :meth:`submit` returns at once, so the main process can
    work while the pool does; :meth:`collect` waits with a progress bar."""

    def __init__(self, workers: int):
        self.workers, self.pool = int(workers), None

    def __enter__(self) -> AlignmentPool:
        if self.workers > 1:
            # librosa and the metric are imported once by the fork server, not by every worker
            self.pool = worker_pool(self.workers, preload=("avgen.evaluation.processes", "avgen.metrics.av_align",
                                                           "librosa.onset")).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.__exit__(*exc)

    def spare_cores(self) -> bool:
        """Whether the machine has cores beyond the workers' for the main process (two or more)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.pool is not None and cores >= self.workers + 2

    def submit(self, jobs: list) -> tuple[list, Any]:
        if self.pool is None or len(jobs) <= 1:
            return jobs, None
        return jobs, self.pool.imap(score_clip, jobs, chunksize=1)

    def collect(self, pending: tuple[list, Any], desc: str = "av_align") -> list[dict]:
        from tqdm import tqdm

        jobs, results = pending
        progress = dict(total=len(jobs), desc=desc, unit="clip", file=sys.stderr, disable=None)
        if results is None:
            return [score_clip(j) for j in tqdm(jobs, **progress)]
        return list(tqdm(results, **progress))


def device_for(device: str):
    import torch

    if device == "auto":  # under torchrun, cuda is this process's GPU (LOCAL_RANK, set by Processes)
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)

