"""FLOPs of one training step of each system, split into the frozen parts a feature cache replaces and the rest.

Each system is built from the composed config of its paper experiment (``configs/experiment/<name>.yaml``) with its
backbones at the papers' size (``paper_sizes.PAPER``) on the ``meta`` device: no memory and no weights, only shapes.
One ``diffusion_loss`` + ``backward`` on a batch of the paper's clip geometry and per-GPU batch runs under
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention: 2 FLOPs per multiply-add; element-wise
ops, norms and FFTs are not counted). The calls that compute the cacheable parts (``FROZEN_CALLS``: the VAE encoders
with the mel, the text encoders, BEATs, the per-frame ViT) are wrapped so the FLOPs spent inside them are booked to
their part; everything else is the trainable path (the denoiser's forward and backward, gradient-checkpointing
recomputation, the self-conditioning pass, the mapper, TempoTokens' text encoder that its trained tokens pass through).

On the meta device a data-dependent branch cannot look at values, so the step's random draws come from a seeded CPU
generator as in training; the self-conditioning pass of the joint system runs with probability 0.5 per step, so its
expected cost is reported (both branches are counted).

    PYTHONPATH=. .venv/bin/python benchmarks/paper_flops.py [--json out.json] [--scale paper|small]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import paper_sizes  # noqa: E402

EXPERIMENTS = {"joint": "joint_cmcpe", "tempotokens": "tempotokens_vggsound", "vta_ldm": "vta_ldm"}

#: the computations kept once per run, not per step (the text encoders' output for a dropped caption): booked to
#: :data:`ONCE` and left out of the step's FLOPs
ONCE = "once per run"
#: part → the calls that compute it in ``diffusion_loss``: ("system" | "system.<attr>" | a module path, attribute).
#: Besides these, ``system.part_features(batch, name)`` (the feature-cache API every cacheable part goes through) is
#: booked to ``name`` and ``system.kept_output`` to :data:`ONCE`; the calls here cover the code paths before it.
FROZEN_CALLS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "joint": {"video_latents": [("avgen.systems.joint", "encode_video")],
              "audio_latents": [("avgen.systems.joint", "encode_audio")],
              "text": [("system", "encode_text")]},
    "tempotokens": {"video_latents": [("avgen.systems.tempotokens", "encode_video")],
                    "encoder": [("system.encoder", "forward")]},
    "vta_ldm": {"audio_latents": [("avgen.systems.vta_ldm", "encode_audio")],
                "encoder": [("system", "video_tokens")],
                "flow": [("system", "flow_tokens")],
                "text": [("system.text_encoder", "forward")]},
}


# ---------------------------------------------------------------------------------------------- building
def source_overrides(name: str, sources: Mapping[str, str]) -> list[str]:
    """The model overrides that point a system's backbone keys at ``sources`` (paper_sizes.SYSTEMS[...])."""
    if name == "joint":
        return [f"model.video.base={sources['video']}", f"model.video.motion_adapter={sources['motion_adapter']}",
                "model.video.vae=null", f"model.audio.base={sources['audio']}"]
    if name == "tempotokens":
        return [f"model.t2v.base={sources['t2v']}", f"model.encoder.path={sources['encoder']}"]
    return [f"model.encoder.path={sources['encoder']}", f"model.audio.base={sources['audio']}",
            f"model.text_encoder.path={sources['encoder']}"]


def compose(name: str, overrides: Sequence[str] = (), run_dir: str | Path | None = None):
    """The config of ``name``'s paper experiment with ``overrides``, composed as the command line would; with
    ``run_dir`` also the Hydra run config (commands that write a run folder need it), outputs under ``run_dir``
    (:func:`gpu_check.compose`)."""
    from gpu_check import compose as compose_config

    return compose_config([f"experiment={EXPERIMENTS[name]}", "paths.data_dir=/tmp/avgen-flops", *overrides],
                          None if run_dir is None else Path(run_dir))


def build_system(name: str, sources: Mapping[str, Mapping[str, paper_sizes.Spec]], device: str,
                 overrides: Sequence[str] = ()):
    """``name``'s system from its paper experiment's config with ``overrides``; backbone sources named in
    ``sources`` are built from their specs on ``device`` (``meta``: shapes only). The mel front end stays on the
    CPU (autocast, which it turns off, has no meta device); ``encode_audio`` moves the mel to the VAE's device."""
    from hydra.utils import instantiate

    cfg = compose(name, overrides)
    torch.manual_seed(0)
    with paper_sizes.built_from_specs(sources, device):
        system = instantiate(cfg.model)
    to_device(system, device)
    return system.train(), cfg


def to_device(system, device: str) -> None:
    """``system.to(device)``, the mel front end kept on the CPU when ``device`` is meta."""
    system.to(device)
    _mel_on_cpu(system)


def _mel_on_cpu(system) -> None:
    from avgen.backbones.audioldm import AudioLDMMel

    for holder in [system, *vars(system).values()]:
        mel = getattr(holder, "mel", None)
        if isinstance(mel, AudioLDMMel) and mel.window.device.type == "meta":
            fresh = AudioLDMMel(sample_rate=mel.sample_rate, n_fft=mel.n_fft, win_length=mel.win_length,
                                hop_length=mel.hop_length, n_mels=mel.n_mels, log_floor=mel.log_floor)
            setattr(holder, "mel", fresh)
    for holder in [system, *vars(system).values()]:  # the same mel may hang off a backbone and the system
        if hasattr(holder, "mel") and holder.mel.window.device.type == "meta":
            setattr(holder, "mel", system.mel)


#: systems whose audio goes to the mel front end, which stays on the CPU (:func:`build_system`)
AUDIO_ON_CPU = ("joint", "vta_ldm")


def batch_for(clip: Mapping[str, Any], batch: int, device: str = "cpu", seed: int = 0,
              audio_device: str | None = None) -> dict[str, Any]:
    """A decoded batch of ``clip``'s geometry: video (B, F, 3, H, W) in [-1, 1] and audio (B, S) on ``device``
    (``audio_device`` for the audio when given), captions, keys."""
    frames = round(float(clip["seconds"]) * float(clip["fps"]))
    samples = round(float(clip["seconds"]) * int(clip["sample_rate"]))
    g = torch.Generator().manual_seed(seed)
    video = (torch.empty(batch, frames, 3, clip["height"], clip["width"], device="meta") if device == "meta"
             else torch.rand(batch, frames, 3, clip["height"], clip["width"], generator=g) * 2 - 1)
    audio = torch.rand(batch, samples, generator=g) * 0.6 - 0.3
    audio = audio.to(audio_device or device)
    captions = ["a drumstick hits a metal railing twice"] * batch
    return {"video": video, "audio": audio, "caption": captions, "key": [f"clip{i:03d}" for i in range(batch)]}


# ---------------------------------------------------------------------------------------------- counting
class PartMeter:
    """Books the FLOPs counted by ``counter`` inside the wrapped calls to their part (outermost call only)."""

    def __init__(self, counter: FlopCounterMode):
        self.counter = counter
        self.parts: dict[str, int] = {}
        self.depth = 0

    def wrap(self, part: str | Callable[..., str], fn: Callable) -> Callable:
        """``fn`` booking its FLOPs to ``part`` (or to ``part(*args, **kwargs)`` when it is a function)."""
        @functools.wraps(fn)
        def measured(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            name = part(*args, **kwargs) if callable(part) else part
            self.depth += 1
            before = self.counter.get_total_flops()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.parts[name] = self.parts.get(name, 0) + self.counter.get_total_flops() - before
        return measured


def _part_name(batch, name, *args, **kwargs) -> str:
    """The part a ``part_features(batch, name)`` call computes."""
    return name


@contextlib.contextmanager
def metered(system, calls: Mapping[str, Sequence[tuple[str, str]]], meter: PartMeter) -> Iterator[None]:
    """Within the block, the ``calls`` of each part (on ``system`` or in a module), ``system.part_features`` (booked
    to the part it is asked for) and ``system.kept_output`` (booked to :data:`ONCE`) go through ``meter``."""
    restore = []
    calls = {**calls, _part_name: [("system", "part_features")], ONCE: [("system", "kept_output")]}
    for part, targets in calls.items():
        for where, attr in targets:
            if where == "system":
                owner = system
            elif where.startswith("system."):
                owner = getattr(system, where.split(".", 1)[1], None)
            else:
                owner = importlib.import_module(where)
            if owner is None or not hasattr(owner, attr):
                continue
            instance_attr = isinstance(owner, torch.nn.Module)
            restore.append((owner, attr, instance_attr, getattr(owner, attr)))
            setattr(owner, attr, meter.wrap(part, getattr(owner, attr)))
    try:
        yield
    finally:
        for owner, attr, instance_attr, original in reversed(restore):
            if instance_attr:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


@contextlib.contextmanager
def meta_safe() -> Iterator[None]:
    """Two calls that read values, replaced for tensors on the meta device by ones that compute the same matmuls
    (so the same FLOPs): transformers' check whether an attention mask can be skipped (it then builds the mask) and
    ``PlaceholderPrompt.encode``'s masked write of the placeholder embeddings (:func:`_placeholder_encode_meta`).
    Only modules already imported are patched: a model of a module not imported cannot run in the block."""
    patches = []
    if "transformers" in sys.modules:
        from transformers import masking_utils

        def guarded(original):
            def check(padding_mask, *args, **kwargs):
                if padding_mask is not None and padding_mask.device.type == "meta":
                    return False
                return original(padding_mask, *args, **kwargs)
            return check

        for name in ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa"):
            patches.append((masking_utils, name, guarded(getattr(masking_utils, name))))
    if "avgen.modules.placeholder_prompt" in sys.modules:
        from avgen.modules.placeholder_prompt import PlaceholderPrompt

        def encode_on_meta(original):
            def encode(self, captions, tokens, frames):
                if self._device().type != "meta":
                    return original(self, captions, tokens, frames)
                return _placeholder_encode_meta(self, captions, tokens, frames)
            return encode

        patches.append((PlaceholderPrompt, "encode", encode_on_meta(PlaceholderPrompt.encode)))
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def _placeholder_encode_meta(prompt, captions, tokens, frames: int) -> torch.Tensor:
    """``PlaceholderPrompt.encode`` with a text encoder on the meta device: the token ids and placeholder slots are
    worked out on the CPU (boolean indexing reads values) and the placeholder embeddings are written with
    ``torch.where`` instead of a masked assignment; the text encoder runs on the same (B·F, L) rows, so the matmuls,
    and the FLOPs, are those of ``encode``."""
    b = len(captions)
    enc = prompt.tokenizer(prompt.texts(list(captions)), padding="max_length",
                           max_length=prompt.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    ids = enc.input_ids
    slots = torch.full_like(ids, -1)
    columns = []
    for index, name in enumerate(prompt.names):
        slots[ids == prompt.ids[name]] = index
        columns.append(prompt._token(name, tokens, b, frames))
    slot_rows = slots.repeat_interleave(frames, dim=0)
    rows = torch.where(slot_rows >= 0, torch.full_like(slot_rows, prompt.filler), ids.repeat_interleave(frames, 0))
    stacked = torch.stack(columns, dim=2).reshape(b * frames, len(columns), -1)
    index = slot_rows.clamp(min=0).to("meta")
    values = torch.gather(stacked, 1, index[..., None].expand(-1, -1, stacked.shape[-1]))
    mask = (slot_rows >= 0).to("meta")[..., None]

    def overwrite(module, args, output):
        return torch.where(mask, values.to(output.dtype), output)

    handle = prompt.text_encoder.get_input_embeddings().register_forward_hook(overwrite)
    try:
        states = prompt.text_encoder(rows.to("meta")).last_hidden_state
    finally:
        handle.remove()
    return states.reshape(b, frames, *states.shape[1:])


@contextlib.contextmanager
def counting() -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` (no printout) with attention run as the math kernel on every device (the CPU's fused
    kernel has no FLOP formula, so the CPU would count no attention) and the meta device's mask workarounds
    (:func:`meta_safe`)."""
    with meta_safe(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as :func:`counting` counts them."""
    with counting() as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def step_flops(system, batch: Mapping[str, Any], calls: Mapping[str, Sequence[tuple[str, str]]],
               seed: int = 1) -> dict[str, Any]:
    """FLOPs of one ``diffusion_loss`` + ``backward`` of ``system`` on ``batch`` (generator seeded with
    ``seed``): ``total``, ``parts`` ({part: FLOPs inside its calls}), ``frozen`` (their sum) and ``trainable``
    (the rest); ``once``: FLOPs of outputs kept for the run (not in ``total``)."""
    with counting() as counter:
        meter = PartMeter(counter)
        with metered(system, calls, meter):
            loss = system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))["loss"]
            loss.backward()
    system.zero_grad(set_to_none=True)
    parts = dict(meter.parts)
    once = parts.pop(ONCE, 0)
    total = counter.get_total_flops() - once
    frozen = sum(parts.values())
    return {"total": total, "parts": parts, "frozen": frozen, "trainable": total - frozen, "once": once}


def joint_seeds(system, batch: Mapping[str, Any]) -> tuple[int, int]:
    """Two generator seeds for the joint system's step on ``batch``: one that runs the self-conditioning pass, one
    that does not (found by replaying the step's draws up to that decision)."""
    found: dict[bool, int] = {}
    for seed in range(64):
        runs = _joint_self_conditions(system, batch, seed)
        found.setdefault(runs, seed)
        if len(found) == 2:
            return found[True], found[False]
    raise RuntimeError("no seed in 0..63 gives both self-conditioning branches")


def _joint_self_conditions(system, batch: Mapping[str, Any], seed: int) -> bool:
    marker = []

    def stop(*args, **kwargs):
        marker.append(torch.is_grad_enabled())
        raise _Stop

    system.denoiser.forward = stop
    try:
        with meta_safe():
            system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))
    except _Stop:
        pass
    finally:
        del system.denoiser.forward
    return not marker[0]  # the no-grad pass is the self-conditioning one


class _Stop(Exception):
    pass


def system_flops(name: str, system, clip: Mapping[str, Any], batch: int, device: str) -> dict[str, Any]:
    """The step's FLOPs (``step_flops``) of ``system`` at ``clip`` and ``batch``; for the joint system the mean of
    the step with and without the self-conditioning pass (each drawn with probability 1 − p and p,
    ``self_condition_prob`` p)."""
    calls = FROZEN_CALLS[name]
    data = batch_for(clip, batch, device, audio_device="cpu" if name in AUDIO_ON_CPU else None)
    if name != "joint" or not system.self_condition_prob:
        return step_flops(system, data, calls)
    with_sc, without_sc = joint_seeds(system, data)
    a, b = step_flops(system, data, calls, with_sc), step_flops(system, data, calls, without_sc)
    p = system.self_condition_prob
    out = {key: p * a[key] + (1 - p) * b[key] for key in ("total", "frozen", "trainable")}
    out["parts"] = {part: p * a["parts"].get(part, 0) + (1 - p) * b["parts"].get(part, 0)
                    for part in a["parts"] | b["parts"]}
    out["self_conditioning_pass"] = a["trainable"] - b["trainable"]
    return out


def summarise(name: str, flops: Mapping[str, Any], clip: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """The numbers of the note: frozen / trainable ratio and the frozen share of the step's FLOPs."""
    return {"system": name, "clip": dict(clip), "batch": batch, **flops,
            "ratio": flops["frozen"] / flops["trainable"], "frozen_share": flops["frozen"] / flops["total"]}


def paper_scale(name: str, checkpointing: bool | None = None) -> dict[str, Any]:
    """``name`` at the papers' size on the meta device (``paper_sizes.SYSTEMS[name]``); ``checkpointing``: the
    denoiser's gradient checkpointing (default: the paper's setting)."""
    setup = paper_sizes.SYSTEMS[name]
    checkpointing = setup["gradient_checkpointing"] if checkpointing is None else checkpointing
    overrides = [*source_overrides(name, setup["sources"]),
                 f"model.gradient_checkpointing={str(checkpointing).lower()}",
                 "data.clip={" + ",".join(f"{k}:{v}" for k, v in setup["clip"].items()) + "}"]
    system, _ = build_system(name, paper_sizes.PAPER, "meta", overrides)
    return summarise(name, system_flops(name, system, setup["clip"], setup["batch"], "meta"), setup["clip"],
                     setup["batch"])


def small_scale(name: str, device: str = "meta") -> dict[str, Any]:
    """``name`` at the benchmark's ``small`` size (``paper_sizes.SMALL_SYSTEMS[name]``), counted the same way."""
    setup = paper_sizes.SMALL_SYSTEMS[name]
    system, _ = build_system(name, paper_sizes.SMALL, device, small_overrides(name))
    return summarise(name, system_flops(name, system, setup["clip"], setup["batch"], device), setup["clip"],
                     setup["batch"])


def small_overrides(name: str) -> list[str]:
    """The config overrides of ``name`` at ``small``: sources, clip geometry and the system's own blocks."""
    setup = paper_sizes.SMALL_SYSTEMS[name]
    return [*source_overrides(name, setup["sources"]),
            f"model.gradient_checkpointing={str(setup['gradient_checkpointing']).lower()}",
            "data.clip={" + ",".join(f"{k}:{v}" for k, v in setup["clip"].items()) + "}",
            *setup.get("overrides", [])]


def check_meta(name: str, data_dir: str) -> dict[str, Any]:
    """``name`` at ``scale=tiny`` (tiny twins written under ``data_dir``): the step's FLOPs counted on the CPU and,
    after moving the system to the meta device, on meta; they must be equal, part by part."""
    system, cfg = build_system(name, {}, "cpu", ["scale=tiny", f"paths.data_dir={data_dir}"])
    clip, batch = dict(cfg.data.clip), int(cfg.data.batch_size)
    cpu = system_flops(name, system, clip, batch, "cpu")
    to_device(system, "meta")
    meta = system_flops(name, system, clip, batch, "meta")
    return {"system": name, "cpu": cpu, "meta": meta,
            "equal": cpu["total"] == meta["total"] and cpu["parts"] == meta["parts"]}


def describe(row: Mapping[str, Any]) -> str:
    parts = ", ".join(f"{part} {value / 1e9:.4g}" for part, value in row["parts"].items())
    return (f"{row['system']:<12} batch {row['batch']}: frozen {row['frozen'] / 1e9:.5g} GFLOP ({parts}); "
            f"trainable path {row['trainable'] / 1e9:.5g} GFLOP; ratio {row['ratio']:.3f}; "
            f"frozen share {row['frozen_share']:.1%}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("paper", "small", "both"), default="both")
    parser.add_argument("--systems", nargs="*", default=list(EXPERIMENTS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--check-meta", action="store_true",
                        help="only compare CPU and meta counts of each system at scale=tiny")
    args = parser.parse_args(argv)
    if args.check_meta:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            checks = [check_meta(name, tmp) for name in args.systems]
        for c in checks:
            print(f"{c['system']:<12} tiny: CPU {c['cpu']['total']:.0f} FLOP, meta {c['meta']['total']:.0f} FLOP, "
                  f"parts equal: {c['cpu']['parts'] == c['meta']['parts']} -> {'OK' if c['equal'] else 'DIFFER'}")
        return 0 if all(c["equal"] for c in checks) else 1
    rows: dict[str, dict[str, Any]] = {}
    for name in args.systems:
        row: dict[str, Any] = {}
        if args.scale in ("paper", "both"):
            row["paper"] = paper_scale(name)
            print("paper", describe(row["paper"]), flush=True)
        if args.scale in ("small", "both"):
            row["small"] = small_scale(name)
            print("small", describe(row["small"]), flush=True)
        if "paper" in row and "small" in row:
            row["small_vs_paper_ratio"] = row["small"]["ratio"] / row["paper"]["ratio"]
            print(f"{name}: small ratio / paper ratio = {row['small_vs_paper_ratio']:.3f} (target 0.8–1.2)")
        rows[name] = row
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
