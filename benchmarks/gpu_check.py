"""GPU readiness of the three systems at the papers' sizes with random weights (``scale=paper_random``).

One bounded script (default 5 minutes) for a lent GPU: for each system at its paper's per-GPU micro-batch (joint 1,
TempoTokens 4, VTA-LDM 2) and clip geometry, on random tensors in the batch contract's shapes (video (B, F, 3, H, W)
in [-1, 1], audio (B, S) in [-1, 1], captions):

1. ``environment``: the GPU, its memory, bf16 support, NCCL, the CUDA context's size;
2. ``train/<system>/gc=<off|on>``: build on the GPU (:func:`avgen.backbones.paper_random.build_device`), cast the
   frozen towers as ``trainer.precision=bf16-mixed`` does (:meth:`avgen.systems.base.AVSystem.cast_frozen`) and check
   their dtype (frozen bf16, trainable float32), then warm-up + ``--steps`` AdamW steps under bf16 autocast, without
   and with gradient checkpointing: peak ``torch.cuda.max_memory_allocated``, steps/s, whether peak + context fits in
   40, 48 and 80 GiB (an out-of-memory is a result, not a crash);
3. ``sample/<system>``: sampling at the paper's step count (joint 25 DDIM, TempoTokens 25 DPM-Solver++, VTA-LDM 300
   DDPM) in bf16: samples/s (extrapolated from a short run when the full count does not fit the time left; the JSON
   says so);
4. ``ddp``: ``python -m avgen fit``'s own builders (:func:`avgen.commands.build_model`, :func:`~avgen.commands.
   build_trainer`) with ``trainer=ddp trainer.devices=1 trainer.precision=bf16-mixed``: a 1-process NCCL fit of
   TempoTokens at paper_random for 2 steps, checking the backend, the rank's device (``cuda:LOCAL_RANK``), the
   frozen dtype inside the fit, and that a checkpoint saves and loads.

``--batch joint=2,vta_ldm=16`` sizes another per-GPU micro-batch; ``--parts train`` runs only the training parts.
Each training part also reports ``between_steps_gib``, the memory allocated between two steps (weights + AdamW state).

Parts run in that order of value; the JSON (``--out``) is rewritten after each, so a run cut short still reports.
Without CUDA it says so and runs the same code path at ``scale=tiny`` on the CPU (``trainer=ddp_cpu``, gloo) as a
dry run, exit 0 when every part passes.

On a lent accelerator (torch, lightning, transformers installed; not diffusers, hydra-core, omegaconf,
webdataset): ``make gpu-wheels`` here, carry ``wheels/``, then there
``pip install --no-index --no-deps wheels/*.whl && PYTHONPATH=. python benchmarks/gpu_check.py --out $OUT/gpu.json``.
Its results on one H200: README ("GPU readiness") and ``benchmarks/results/gpu_check_h200/``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc as garbage
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: system → its paper experiment, per-GPU micro-batch and sampler steps (the papers'; DESIGN and the issue)
SYSTEMS: dict[str, dict[str, Any]] = {
    "joint": {"experiment": "joint_cmcpe", "batch": 1, "sampling_steps": 25},
    "tempotokens": {"experiment": "tempotokens_vggsound", "batch": 4, "sampling_steps": 25},
    "vta_ldm": {"experiment": "vta_ldm", "batch": 2, "sampling_steps": 300},
}
#: modules the check imports besides torch, lightning and transformers (what a lent machine may lack)
NEEDED = ("diffusers", "hydra", "omegaconf", "antlr4", "yaml", "safetensors", "webdataset", "torchaudio")
GIB = 2 ** 30
MEMORY_SIZES_GIB = (40, 48, 80)
CAPTION = "a drumstick hits a metal railing twice"


#: the kinds of part, in the order they run
PARTS = ("train", "ddp", "sample")


# ---------------------------------------------------------------------------------------------- setup
def parse_batches(text: str) -> dict[str, int]:
    """``"joint=2,vta_ldm=16"`` → ``{"joint": 2, "vta_ldm": 16}``.

    Raises:
        ValueError: an entry is not ``<system>=<positive int>`` or names an unknown system.
    """
    out: dict[str, int] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in SYSTEMS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{item!r} is not <system>=<batch> with a system among {', '.join(SYSTEMS)} and a "
                             "batch >= 1")
        out[name.strip()] = int(value)
    return out


def missing_modules() -> list[str]:
    """The modules of :data:`NEEDED` that do not import here."""
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any failure means the check cannot use it
            missing.append(name)
    return missing


def compose(overrides: list[str], run_dir: Path | None = None):
    """avgen's config with ``overrides``, composed as the command line would (outputs under ``run_dir``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from avgen.cli import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        if run_dir is None:
            return hydra_compose("config", overrides=overrides)
        cfg = hydra_compose("config", overrides=[f"hydra.run.dir={run_dir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg["hydra"]
    return cfg


def random_batch(clip, batch: int, device, seed: int = 0) -> dict[str, Any]:
    """Random tensors in the batch contract's shapes for ``clip`` (``data.clip``): video (B, F, 3, H, W) and audio
    (B, S), both float32 in [-1, 1], on ``device``; captions and keys."""
    import torch

    frames = round(float(clip.seconds) * float(clip.fps))
    samples = round(float(clip.seconds) * int(clip.sample_rate))
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, frames, 3, int(clip.height), int(clip.width), generator=g) * 2 - 1
    audio = (torch.rand(batch, samples, generator=g) * 2 - 1) * 0.3
    return {"video": video.to(device), "audio": audio.to(device), "caption": [CAPTION] * batch,
            "key": [f"clip{i:03d}" for i in range(batch)]}


class Report:
    """The JSON report, rewritten after every part."""

    def __init__(self, path: Path, budget_s: float):
        self.path, self.budget_s, self.began = path, budget_s, time.monotonic()
        self.data: dict[str, Any] = {"format": "avgen-gpu-check/1", "complete": False, "parts": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.began)

    def put(self, name: str, entry: dict[str, Any]) -> None:
        entry.setdefault("seconds", None)
        self.data["parts"][name] = entry
        self.data["elapsed_s"] = round(time.monotonic() - self.began, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)
        status = entry.get("status", "?")
        print(f"[gpu_check] {name}: {status} {json.dumps({k: v for k, v in entry.items() if k != 'status'}, default=str)[:400]}",
              flush=True)


@contextlib.contextmanager
def timed(entry: dict[str, Any]):
    began = time.monotonic()
    try:
        yield
    finally:
        entry["seconds"] = round(time.monotonic() - began, 2)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    import torch

    garbage.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak device memory of one part, measured from the part's own start.

    Constructing it resets CUDA's peak counter (``torch.cuda.reset_peak_memory_stats``), so :meth:`read` gives the
    peak of ``torch.cuda.max_memory_allocated`` since then, not an earlier part's (the first GPU run of this check
    reported the DDP part's 15.98 GiB for all three sampling parts, because sampling read the peak without resetting
    it). Off CUDA it records nothing and :meth:`read` returns ``{}``.

    Args:
        device: the ``torch.device`` the part runs on.
        context: bytes of the CUDA context (device memory in use that torch did not allocate), added for the fits.
        cuda: the module with ``reset_peak_memory_stats`` / ``max_memory_allocated`` / ``memory_allocated``
            (``torch.cuda``; tests pass a stand-in).
    """

    def __init__(self, device, context: int = 0, cuda=None):
        import torch

        self.device, self.context = device, int(context)
        self.cuda = cuda if cuda is not None else torch.cuda
        self.on = device.type == "cuda"
        if self.on:
            self.cuda.reset_peak_memory_stats(device)

    def allocated_gib(self) -> float | None:
        """Memory allocated now (GiB), e.g. the weights and optimizer state between steps; ``None`` off CUDA."""
        return round(self.cuda.memory_allocated(self.device) / GIB, 2) if self.on else None

    def read(self) -> dict[str, Any]:
        """``peak_allocated_gib``, ``peak_plus_context_gib`` and ``fits_gib`` (size in GiB → peak + context fits)."""
        if not self.on:
            return {}
        peak = int(self.cuda.max_memory_allocated(self.device))
        return {"peak_allocated_gib": round(peak / GIB, 2),
                "peak_plus_context_gib": round((peak + self.context) / GIB, 2),
                "fits_gib": {str(size): (peak + self.context) <= size * GIB for size in MEMORY_SIZES_GIB}}


# ---------------------------------------------------------------------------------------------- parts
def environment(device, scale: str) -> dict[str, Any]:
    """torch / CUDA / NCCL facts, the CUDA context's bytes (device memory in use that torch did not allocate)."""
    import lightning
    import torch
    import transformers

    out: dict[str, Any] = {"status": "ok", "scale": scale, "torch": torch.__version__,
                           "lightning": lightning.__version__, "transformers": transformers.__version__,
                           "device": str(device)}
    try:
        import diffusers
        out["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        torch.zeros(1, device=device)  # make the context
        free_bytes, total = torch.cuda.mem_get_info(device)
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}", total_gib=round(total / GIB, 2),
                   bf16_supported=torch.cuda.is_bf16_supported(), cuda=torch.version.cuda,
                   nccl_available=torch.distributed.is_nccl_available(),
                   nccl=".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else None,
                   context_bytes=int(total - free_bytes - torch.cuda.memory_reserved(device)))
    else:
        out.update(name="cpu", bf16_supported=True, nccl_available=torch.distributed.is_nccl_available(),
                   context_bytes=0, note="no CUDA device: a CPU dry run of the same code path at scale=tiny")
    return out


def build_system(name: str, scale: str, device, gradient_checkpointing: bool, data_dir: Path):
    """``name``'s system from its paper experiment at ``scale`` on ``device`` (built there), in train mode."""
    from hydra.utils import instantiate

    from avgen.backbones.paper_random import build_device

    spec = SYSTEMS[name]
    cfg = compose([f"experiment={spec['experiment']}", f"scale={scale}", f"paths.data_dir={data_dir}",
                   f"model.gradient_checkpointing={str(gradient_checkpointing).lower()}"])
    with build_device(device if scale == "paper_random" else None):
        system = instantiate(cfg.model)
    system.to(device)
    return system.train(), cfg


def dtype_check(system) -> dict[str, Any]:
    """Frozen and trainable parameters' dtypes (counts of elements) after :meth:`cast_frozen`."""
    frozen: dict[str, int] = {}
    trainable: dict[str, int] = {}
    for p in system.parameters():
        bucket = trainable if p.requires_grad else frozen
        bucket[str(p.dtype).removeprefix("torch.")] = bucket.get(str(p.dtype).removeprefix("torch."), 0) + p.numel()
    ok = set(frozen) <= {"bfloat16"} and set(trainable) <= {"float32"}
    return {"frozen": frozen, "trainable": trainable, "ok": ok}


def train_part(name: str, scale: str, device, gc_on: bool, steps: int, data_dir: Path, context: int
               ) -> dict[str, Any]:
    """Build, cast, and time ``steps`` training steps (after one warm-up) in bf16 autocast."""
    import torch

    entry: dict[str, Any] = {"batch": SYSTEMS[name]["batch"], "gradient_checkpointing": gc_on}
    system = optimizer = batch = None
    try:
        memory = PeakMemory(device, context)
        began = time.monotonic()
        system, cfg = build_system(name, scale, device, gc_on, data_dir)
        sync(device)
        entry["build_s"] = round(time.monotonic() - began, 2)
        entry["cast_parameters"] = system.cast_frozen(torch.bfloat16)
        entry["dtypes"] = dtype_check(system)
        entry["parameters"] = {"total": sum(p.numel() for p in system.parameters()),
                               "trainable": sum(p.numel() for p in system.parameters() if p.requires_grad)}
        entry["clip"] = dict(cfg.data.clip)
        batch = random_batch(cfg.data.clip, SYSTEMS[name]["batch"], device)
        optimizer = torch.optim.AdamW([p for p in system.parameters() if p.requires_grad], lr=1e-5)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = system.diffusion_loss(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        entry["warmup_loss"] = step()
        sync(device)
        entry["between_steps_gib"] = memory.allocated_gib()  # weights + optimizer state (gradients are freed)
        began = time.monotonic()
        losses = [step() for _ in range(steps)]
        sync(device)
        seconds = time.monotonic() - began
        entry.update(steps=steps, steps_per_s=round(steps / seconds, 3),
                     samples_per_s=round(steps * SYSTEMS[name]["batch"] / seconds, 3),
                     loss_finite=all(map(lambda v: v == v and abs(v) != float("inf"), losses)))
        entry.update(memory.read())
        entry["status"] = "ok" if entry["dtypes"]["ok"] and entry["loss_finite"] else "FAIL"
    except Exception as exc:  # noqa: BLE001 - OOM and failures are results
        if type(exc).__name__ == "OutOfMemoryError":
            entry.update(status="oom", error=str(exc).splitlines()[0][:300],
                         fits_gib={str(size): False for size in MEMORY_SIZES_GIB})
        else:
            entry.update(status="FAIL", error=f"{type(exc).__name__}: {exc}"[:600],
                         traceback=traceback.format_exc()[-2000:])
    finally:
        del system, optimizer, batch
        free(device)
    return entry


def sample_part(name: str, scale: str, device, data_dir: Path, time_left: float, short: int = 2, context: int = 0
                ) -> dict[str, Any]:
    """Sampling throughput at the paper's step count (bf16 autocast), extrapolated from runs of ``short`` and
    ``2 * short`` steps when it would not fit half of ``time_left`` seconds."""
    import torch

    spec = SYSTEMS[name]
    entry: dict[str, Any] = {"batch": spec["batch"], "paper_steps": spec["sampling_steps"]}
    system = None
    try:
        memory = PeakMemory(device, context)
        system, cfg = build_system(name, scale, device, False, data_dir)
        system.eval()
        system.cast_frozen(torch.bfloat16)
        batch = random_batch(cfg.data.clip, spec["batch"], device)

        def run(steps: int) -> float:
            sync(device)
            began = time.monotonic()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                if name == "joint":
                    system.generate(batch["caption"], steps=steps)
                elif name == "tempotokens":
                    system.generate(batch["audio"], batch["caption"], steps=steps)
                else:
                    system.generate(batch["video"], steps=steps, sampler="ddpm")
            sync(device)
            return time.monotonic() - began

        t_short = run(short)
        if device.type == "cuda":
            t_short = run(short)  # warm (kernels, allocator)
        t_more = run(2 * short)
        per_step = max((t_more - t_short) / short, 1e-6)
        overhead = max(t_short - short * per_step, 0.0)
        estimate = overhead + spec["sampling_steps"] * per_step
        if device.type == "cuda" and estimate < 0.5 * time_left:  # the CPU dry run always extrapolates
            seconds = run(spec["sampling_steps"])
            entry["measured_steps"] = spec["sampling_steps"]
        else:
            seconds = estimate
            entry["extrapolated_from_steps"] = [short, 2 * short]
        entry.update(seconds_per_batch=round(seconds, 3), samples_per_s=round(spec["batch"] / seconds, 4),
                     seconds_per_step=round(per_step, 4), status="ok")
        entry.update(memory.read())
    except Exception as exc:  # noqa: BLE001
        status = "oom" if type(exc).__name__ == "OutOfMemoryError" else "FAIL"
        entry.update(status=status, error=f"{type(exc).__name__}: {exc}"[:600], traceback=traceback.format_exc()[-2000:])
    finally:
        del system
        free(device)
    return entry


def ddp_part(scale: str, device, work: Path) -> dict[str, Any]:
    """A 1-process DDP fit through ``trainer=ddp`` (``ddp_cpu`` without CUDA) with avgen's own builders."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    from avgen.commands import build_model, build_trainer

    entry: dict[str, Any] = {}
    trainer_group = "ddp" if device.type == "cuda" else "ddp_cpu"
    run_dir = work / "ddp_run"
    cfg = compose([f"experiment={SYSTEMS['tempotokens']['experiment']}", f"scale={scale}",
                   f"paths.data_dir={work / 'data'}", f"trainer={trainer_group}", "trainer.devices=1",
                   "trainer.max_steps=2", "trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=1",
                   "trainer.log_every_n_steps=1", "logger=csv"], run_dir)
    batch = SYSTEMS["tempotokens"]["batch"] if scale == "paper_random" else 2

    class RandomBatches(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return random_batch(cfg.data.clip, batch, "cpu", seed=index)

    seen: dict[str, Any] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            import torch.distributed as dist

            seen["backend"] = dist.get_backend() if dist.is_initialized() else None
            seen["world_size"] = trainer.world_size
            seen["strategy"] = type(trainer.strategy).__name__
            seen["wrapped"] = type(trainer.strategy.model).__name__
            seen["param_device"] = str(next(p for p in module.parameters() if p.requires_grad).device)
            seen["dtypes"] = dtype_check(module)

    model = build_model(cfg)
    entry["built_on"] = str(next(model.parameters()).device)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(Probe())
    trainer.fit(model, train_dataloaders=DataLoader(RandomBatches(), batch_size=None))
    ckpt = run_dir / "gpu_check.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want_device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if device.type == "cuda" else "cpu"
    entry.update(seen, global_step=trainer.global_step, checkpoint_tensors=len(state),
                 checkpoint_has_trainable=trainable <= set(state),
                 checkpoint_dtypes=sorted({str(v.dtype).removeprefix("torch.") for v in state.values()}))
    backend_ok = seen.get("backend") == ("nccl" if device.type == "cuda" else "gloo")
    ok = (backend_ok and entry["global_step"] == 2 and entry["checkpoint_has_trainable"]
          and seen.get("param_device") == want_device and seen.get("dtypes", {}).get("ok"))
    entry["status"] = "ok" if ok else "FAIL"
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return entry


def table(report: Report) -> str:
    """The one table of the run: system, configuration, memory (peak; allocated between training steps, i.e. the
    weights and the optimizer state), speed, fits."""
    rows = ["| part | status | batch | peak GiB | +context GiB | between steps GiB | steps/s | samples/s | "
            "fits 40/48/80 GiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, e in report.data["parts"].items():
        if not (name.startswith("train/") or name.startswith("sample/")):
            continue
        fits = e.get("fits_gib")
        fit_text = "/".join("yes" if fits[str(s)] else "no" for s in MEMORY_SIZES_GIB) if fits else "-"
        rows.append(f"| {name} | {e.get('status')} | {e.get('batch', '-')} | {e.get('peak_allocated_gib', '-')} | "
                    f"{e.get('peak_plus_context_gib', '-')} | {e.get('between_steps_gib') or '-'} | "
                    f"{e.get('steps_per_s', '-')} | "
                    f"{e.get('samples_per_s', '-')} | {fit_text} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop starting parts after this many seconds")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the CPU dry run even when CUDA is there")
    parser.add_argument("--batch", default="", help="per-GPU micro-batch overrides, e.g. joint=2,vta_ldm=16 (sizing "
                        "a job at another global batch: the papers' 16 or 128 over 8 GPUs)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    args = parser.parse_args(argv)
    try:
        batches = parse_batches(args.batch)
    except ValueError as exc:
        parser.error(f"--batch: {exc}")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts: expected some of {', '.join(PARTS)}, got {args.parts!r}")
    for name, size in batches.items():
        SYSTEMS[name]["batch"] = size

    missing = missing_modules()
    if missing:
        print(f"[gpu_check] missing modules: {', '.join(missing)}; build wheels here with `make gpu-wheels`, carry "
              f"wheels/ and `pip install --no-index --no-deps wheels/*.whl` there", file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available() and not args.cpu_dry_run
    if not cuda:  # the dry run checks the code path, not the speed: one timed step, sampling extrapolated
        args.steps = min(args.steps, 1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    scale = "paper_random" if cuda else "tiny"
    if not cuda:
        print("[gpu_check] no CUDA device: running the CPU dry run of the same code path at scale=tiny")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {', '.join(unknown)}; expected some of {', '.join(SYSTEMS)}")
    report = Report(args.out, args.budget_s)
    failed = False
    with tempfile.TemporaryDirectory(prefix="avgen-gpu-check-") as tmp:
        work = Path(tmp)
        env = environment(device, scale)
        report.put("environment", env)
        context = int(env.get("context_bytes") or 0)
        plan: list[tuple[str, Any]] = []
        for name in systems:
            plan.append((f"train/{name}/gc=off", lambda n=name: train_part(n, scale, device, False, args.steps,
                                                                           work / "data", context)))
            plan.append((f"train/{name}/gc=on", lambda n=name: train_part(n, scale, device, True, args.steps,
                                                                          work / "data", context)))
        plan.append(("ddp", lambda: ddp_part(scale, device, work)))
        for name in systems:
            plan.append((f"sample/{name}", lambda n=name: sample_part(n, scale, device, work / "data", report.left(),
                                                                      short=2 if cuda else 1, context=context)))
        plan = [(part, run) for part, run in plan if part.split("/")[0] in parts]
        for part, run in plan:
            if report.left() <= 0:
                report.put(part, {"status": "skipped", "reason": f"time budget of {args.budget_s:g} s spent"})
                continue
            entry: dict[str, Any] = {}
            with timed(entry):
                try:
                    entry.update(run())
                except Exception as exc:  # noqa: BLE001 - report and go on
                    entry.update(status="FAIL", error=f"{type(exc).__name__}: {exc}"[:600],
                                 traceback=traceback.format_exc()[-2000:])
            failed |= entry.get("status") == "FAIL"
            report.put(part, entry)
    report.data["complete"] = not any(e.get("status") == "skipped" for e in report.data["parts"].values())
    report.data["table"] = table(report)
    report.put("summary", {"status": "FAIL" if failed else "ok"})
    print(report.data["table"])
    print(f"[gpu_check] report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
