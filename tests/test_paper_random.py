"""``scale=paper_random`` (issue 24): the papers' architectures with random weights, built on the meta device (no
memory) from ``configs/architectures/`` — every experiment composes and instantiates, the parameter counts are the
papers' and the architecture files' own; the frozen towers' cast under mixed precision; benchmarks/gpu_check.py's CPU
dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, compose

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
#: experiments whose default encoder has no architecture file yet: built with clip4clip (the paper's default)
ENCODER_OVERRIDES = {"vta_ldm_encoders": ["model.encoder.name=clip4clip"]}


_BUILT: dict[tuple[str, ...], tuple] = {}


def meta_system(experiment: str, tmp_path: Path, *extra: str):
    """``experiment``'s system at paper_random on the meta device (built once per module and overrides: the
    builds take seconds and several tests read the same system)."""
    key = (experiment, *extra)
    if key not in _BUILT:
        _BUILT[key] = _meta_system(experiment, tmp_path, *extra)
    return _BUILT[key]


def _meta_system(experiment: str, tmp_path: Path, *extra: str):
    from hydra.utils import instantiate

    defaults = [] if any(e.startswith("model.encoder.name=") for e in extra) else ENCODER_OVERRIDES.get(experiment, [])
    cfg = compose([f"experiment={experiment}", "scale=paper_random", *defaults, *extra], tmp_path)
    with torch.device("meta"):
        return instantiate(cfg.model), cfg


def count(params) -> int:
    return sum(p.numel() for p in params)


# ----------------------------------------------------------------------------------- architecture files
def test_architecture_files_cite_their_sources_and_build_to_their_parameter_counts():
    """Every component names its source, every file a repository with a revision, and a build of each component's
    config on the meta device has the parameter count the file states (the counts of the published models)."""
    from avgen.backbones import paper_random

    names = paper_random.names()
    assert {"sd15", "animatediff_v152", "audioldm_m", "zeroscope", "beats", "clip4clip", "audioldm_s"} <= set(names)
    for name in names:
        doc = paper_random.architecture(name)
        assert doc["provenance"], name
        assert any("@" in line for line in doc["provenance"]), f"{name}: no revision in its provenance"
        for component, entry in doc["components"].items():
            assert entry.get("source"), f"{name}/{component} has no source"
        for component, expected in (doc.get("parameters") or {}).items():
            entry = doc["components"][component]
            with torch.device("meta"):
                module = paper_random.build_spec(entry["kind"], entry["config"])
            assert paper_random.parameter_count(module) == expected, f"{name}/{component}"


def test_published_sizes_of_the_backbones():
    """The files' counts are the published ones: SD 1.5's "860M" U-Net, AnimateDiff v2's "453 M" motion module,
    AudioLDM-m's "416M" U-Net, ModelScope / zeroscope's 1.41B UNet3D (± 0.5 %)."""
    from avgen.backbones import paper_random

    published = {("sd15", "unet"): 860e6, ("animatediff_v152", "."): 453e6, ("audioldm_m", "unet"): 416e6,
                 ("zeroscope", "unet"): 1.41e9}
    for (name, component), size in published.items():
        stated = paper_random.architecture(name)["parameters"][component]
        assert abs(stated / size - 1) < 0.005, (name, component, stated)


def test_an_unknown_random_source_names_the_key_and_the_choices():
    from avgen.backbones.loader import resolve_source
    from avgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.video\.base=random:sd14: no architecture file .* random:sd15"):
        resolve_source("random:sd14", None, "model.video.base")
    assert resolve_source("random:sd15", None, "model.video.base") == "random:sd15"


def test_a_component_the_architecture_lacks_is_named():
    from diffusers import UNet2DConditionModel

    from avgen.backbones.paper_random import build_component
    from avgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.encoder\.path=random:beats: the architecture has no component "
                                          r"'unet'"):
        build_component(UNet2DConditionModel, "random:beats", "model.encoder.path", subfolder="unet")


# ----------------------------------------------------------------------------------- every experiment
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_at_paper_random_on_the_meta_device(experiment, tmp_path):
    """Composes with the experiment's clip geometry on synthetic data whose store holds it, and instantiates with
    every backbone at the paper's size and no memory."""
    system, cfg = meta_system(experiment, tmp_path)
    assert cfg.data.name == "synthetic_hits"
    store, clip = cfg.data.store, cfg.data.clip
    assert float(store.seconds) == float(clip.seconds) and float(store.fps) == float(clip.fps)
    devices = {p.device.type for p in system.parameters()}
    assert devices == {"meta"}, devices
    assert count(system.parameters()) > 300e6


@pytest.mark.parametrize("encoder, size", [("vivit", 88_646_400), ("vjepa", 325_971_328),
                                           ("imagebind", 719_065_088)])
def test_vta_ldm_video_encoders_build_at_their_published_size(encoder, size, tmp_path):
    """Table 2's ViViT (without its pooler, as avgen loads it), V-JEPA 2 and ImageBind-Huge (both towers, as the
    official file holds them) rows at paper_random."""
    fps = [] if encoder == "imagebind" else ["model.encoder.fps=8", "data.clip.fps=8"]
    system, _ = meta_system("vta_ldm_encoders", tmp_path, f"model.encoder.name={encoder}", *fps)
    assert count(system.encoder.parameters()) == size


def test_paper_random_keeps_each_papers_clip_geometry(tmp_path):
    geometry = {"joint_cmcpe": (4.0, 8, 256, 256), "tempotokens_vggsound": (1.0, 24, 256, 384),
                "vta_ldm": (10.0, 2, 256, 256)}
    for experiment, (seconds, fps, height, width) in geometry.items():
        clip = compose([f"experiment={experiment}", "scale=paper_random"], tmp_path).data.clip
        assert (float(clip.seconds), int(clip.fps), int(clip.height), int(clip.width)) == (seconds, fps, height, width)


def test_parameter_counts_are_the_papers(tmp_path):
    """TempoTokens: "~35M trainable parameters" (± 10 %); the SVG baseline: "the newly added modules … about
    468M" (± 2 % with the order-blind connector blocks; the public code's add 35.3M, counted below) and "the
    U-Nets in AnimateDiff and AudioLDM … exceeds 1.7B"; VTA-LDM's U-Net: the authors'
    diffusion_model_config_large_2048.json built (578,052,168)."""
    tempotokens, _ = meta_system("tempotokens_vggsound", tmp_path)
    trainable = count(p for p in tempotokens.parameters() if p.requires_grad)
    assert abs(trainable / 35e6 - 1) <= 0.10, trainable

    def added_modules(system) -> int:
        return count(p for n, p in system.named_parameters() if p.requires_grad and "motion_modules" not in n)

    joint, _ = meta_system("joint_cmcpe", tmp_path)
    unordered, _ = meta_system("joint_cmcpe", tmp_path, "model.connector.spatio_temporal=unordered")
    motion = count(p for n, p in joint.named_parameters() if "motion_modules" in n)
    # with avgen's earlier, order-blind attention blocks in the video connector, the added modules match the paper
    assert abs(added_modules(unordered) / 468e6 - 1) <= 0.02, added_modules(unordered)

    # the public code's blocks (the default) add, per block of width C (2·C0 = 640 and 4·C0 = 1280), by its layer
    # list: temporal attention 8C² + C (8 heads of C/4: q, k, v to 2C, out with bias) and its LayerNorm 2C; the
    # position-bias MLP C²/4 + 5.5C + 8; the token-shift feed-forward 3FC + 2F (F = int(8C/3)); the frame-shift
    # block 9C² + 3C; instead of two attentions of width C with their LayerNorms, 8C² + 6C: 35.3M more, so the
    # added modules come to 499.4M, 6.7 % above the paper's "about 468M".
    def public_minus_unordered(c: int) -> int:
        f = int(c * 8 / 3)
        return (8 * c * c + 3 * c) + (c * c // 4 + c + c // 2 + 4 * c + 8) + (3 * f * c + 2 * f) + (9 * c * c + 3 * c) \
            - (8 * c * c + 6 * c)

    assert added_modules(joint) - added_modules(unordered) == sum(public_minus_unordered(c) for c in (640, 1280))
    unets = count(joint.video.unet.parameters()) + count(joint.audio.unet.parameters())
    assert unets > 1.7e9 and motion > 450e6

    vta, _ = meta_system("vta_ldm", tmp_path)
    assert count(vta.unet.parameters()) == 578_052_168


def test_model_build_device_is_the_ranks_gpu_only_at_paper_random(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    from avgen.backbones.paper_random import model_build_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert model_build_device(OmegaConf.create({"scale_name": "paper_random"})) == torch.device("cuda", 3)
    assert model_build_device(OmegaConf.create({"scale_name": "paper"})) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model_build_device(OmegaConf.create({"scale_name": "paper_random"})) is None


# ----------------------------------------------------------------------------------- mixed precision
def test_bf16_mixed_casts_the_frozen_towers_and_keeps_the_trainable_weights_float32(tmp_path):
    """``trainer.precision=bf16-mixed``: after Lightning's setup hook every frozen parameter is bfloat16 (half their
    memory), every trainable one float32 (the motion modules inside the frozen U-Net too), the step's loss is
    finite, and the checkpoint holds float32 weights."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from avgen.commands import build_model

    cfg = compose(["experiment=joint_cmcpe", "scale=tiny"], tmp_path)
    system = build_model(cfg)
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen["loss"] = float(outputs["loss"])
            seen["frozen"] = {p.dtype for p in module.parameters() if not p.requires_grad}
            seen["trainable"] = {p.dtype for p in module.parameters() if p.requires_grad}
            seen["motion"] = {p.dtype for n, p in module.named_parameters() if "motion_modules" in n}

    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(1, 8, 3, 32, 32, generator=g) * 2 - 1, "audio": torch.rand(1, 16000, generator=g) * 0.6
             - 0.3, "caption": ["a ball bounces"], "key": ["k0"]}
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Probe()])
    trainer.fit(system, train_dataloaders=DataLoader([batch], batch_size=None))
    assert seen["frozen"] == {torch.bfloat16}
    assert seen["trainable"] == seen["motion"] == {torch.float32}
    assert torch.isfinite(torch.tensor(seen["loss"]))
    path = tmp_path / "bf16.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert state and {v.dtype for v in state.values()} == {torch.float32}


def test_full_precision_leaves_the_frozen_towers_alone():
    from avgen.systems.base import frozen_dtype

    assert frozen_dtype("bf16-mixed") is torch.bfloat16 and frozen_dtype("16-mixed") is torch.float16
    assert frozen_dtype("32-true") is None and frozen_dtype("bf16-true") is None
    # a run on a feature cache keeps the weights its cache descriptions hashed (dtype included)
    assert frozen_dtype("bf16-mixed", {"data": {"features": "runs/cache/features"}}) is None
    assert frozen_dtype("bf16-mixed", {"data": {"features": None}}) is torch.bfloat16


# ----------------------------------------------------------------------------------- the GPU check
@pytest.mark.slow
def test_gpu_check_cpu_dry_run_passes_and_reports_every_part(tmp_path):
    """Without CUDA the check says so and runs its code path at scale=tiny: training steps with and without
    gradient checkpointing, the frozen dtype check, sampling throughput, and a 1-process DDP fit (gloo) that saves a
    checkpoint; exit 0, a JSON with every part."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-dry-run", "--systems",
                           "vta_ldm", "--steps", "1", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA device" in proc.stdout or "CPU dry run" in proc.stdout
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert set(parts) == {"environment", "train/vta_ldm/gc=off", "train/vta_ldm/gc=on", "ddp", "sample/vta_ldm",
                          "summary"}
    assert all(parts[p]["status"] == "ok" for p in parts), {p: parts[p].get("error") for p in parts}
    assert parts["train/vta_ldm/gc=on"]["dtypes"]["ok"] and parts["train/vta_ldm/gc=on"]["steps_per_s"] > 0
    assert parts["ddp"]["backend"] == "gloo" and parts["ddp"]["wrapped"] == "DistributedDataParallel"
    assert parts["ddp"]["checkpoint_has_trainable"] and parts["ddp"]["global_step"] == 2
    assert parts["sample/vta_ldm"]["samples_per_s"] > 0 and report["complete"]
    assert "| train/vta_ldm/gc=off | ok |" in report["table"]


def test_export_names_random_sources_and_refuses_to_copy_them(tmp_path):
    """An export of a paper_random model records its frozen parts as ``random:`` architectures (``from_pretrained``
    builds them again); there are no weights to include."""
    from avgen.errors import ConfigError
    from avgen.export import copy_frozen, source_kind

    assert source_kind("random:sd15") == "random"
    with pytest.raises(ConfigError, match=r"model\.video\.base=random:sd15 has no weights to copy"):
        copy_frozen("random:sd15", "random", "video.base", tmp_path / "frozen", None)
    assert not (tmp_path / "frozen").exists()


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("avgen_gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_peak_memory_resets_at_the_part_start_and_reads_fits():
    """PeakMemory resets CUDA's peak counter when a part starts, so a part never reports an earlier part's peak (the
    first H200 run reported the DDP part's 15.98 GiB for every sampling part); peak + context against 40/48/80 GiB."""
    gpu_check = _gpu_check_module()
    gib = 2 ** 30

    class FakeCuda:
        def __init__(self):
            self.peak, self.now, self.resets = 50 * gib, 3 * gib, 0

        def reset_peak_memory_stats(self, device):
            self.resets += 1
            self.peak = self.now

        def max_memory_allocated(self, device):
            return self.peak

        def memory_allocated(self, device):
            return self.now

    cuda = FakeCuda()
    memory = gpu_check.PeakMemory(torch.device("cuda", 0), context=int(0.5 * gib), cuda=cuda)
    assert cuda.resets == 1 and memory.allocated_gib() == 3.0
    cuda.peak = int(39.6 * gib)  # the part's own peak: 39.6 + 0.5 context > 40
    assert memory.read() == {"peak_allocated_gib": 39.6, "peak_plus_context_gib": 40.1,
                             "fits_gib": {"40": False, "48": True, "80": True}}
    assert gpu_check.PeakMemory(torch.device("cpu"), cuda=cuda).read() == {} and cuda.resets == 1


@pytest.mark.slow
def test_gpu_check_training_and_sampling_parts_each_measure_from_their_own_start(tmp_path, monkeypatch):
    """Each training and sampling part starts its own PeakMemory before it builds the model and reads it at the end
    (the class of fault above: a part reading a peak counter it did not reset)."""
    gpu_check = _gpu_check_module()
    calls: list[str] = []

    class Recorder:
        def __init__(self, device, context=0, cuda=None):
            calls.append("start")

        def allocated_gib(self):
            calls.append("between")
            return None

        def read(self):
            calls.append("read")
            return {"peak_allocated_gib": 1.0}

    real_build = gpu_check.build_system

    def build(*args, **kwargs):
        calls.append("build")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(gpu_check, "PeakMemory", Recorder)
    monkeypatch.setattr(gpu_check, "build_system", build)
    cpu = torch.device("cpu")
    train = gpu_check.train_part("vta_ldm", "tiny", cpu, True, 1, tmp_path / "data", 0)
    assert train["status"] == "ok" and train["peak_allocated_gib"] == 1.0, train.get("error")
    assert calls == ["start", "build", "between", "read"]
    calls.clear()
    sample = gpu_check.sample_part("vta_ldm", "tiny", cpu, tmp_path / "data", 60.0, short=1)
    assert sample["status"] == "ok" and sample["peak_allocated_gib"] == 1.0, sample.get("error")
    assert calls == ["start", "build", "read"]


def test_gpu_check_batch_overrides_parse_or_name_the_bad_entry():
    """``--batch joint=2,vta_ldm=16`` → per-system micro-batches; an unknown system, a missing ``=`` or a batch below
    1 is refused with the entry named."""
    gpu_check = _gpu_check_module()
    assert gpu_check.parse_batches(" joint=2, vta_ldm=16 ,") == {"joint": 2, "vta_ldm": 16}
    assert gpu_check.parse_batches("") == {}
    for bad in ("joint", "unet=2", "joint=0", "joint=-1", "joint=two"):
        with pytest.raises(ValueError, match=repr(bad.split(",")[0])):
            gpu_check.parse_batches(bad)
