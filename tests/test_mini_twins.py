"""The mini twins' codecs (issue 22): reconstruction metrics, the training recipe (``pretrain-twins part=codecs``:
resumable to the bit, a manifest, publishing), ``mini:`` sources, and the committed weights' measured quality."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose

MINI_STORE = {"seconds": 2.0, "fps": 8, "height": 32, "width": 32, "sample_rate": 16000}


# ----------------------------------------------------------------------------------- metrics
def test_frame_psnr_exact_values():
    from avgen.metrics.codec import frame_psnr

    ref = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    est = ref.clone()
    est[0] += 1                       # MSE 1 → 20 log10 255
    est[1, :, :2] += 10               # half the pixels off by 10 → MSE 50
    psnr = frame_psnr(ref, est)
    assert psnr[0].item() == pytest.approx(20 * math.log10(255), abs=1e-4)
    assert psnr[1].item() == pytest.approx(10 * math.log10(255 ** 2 / 50), abs=1e-4)
    assert math.isinf(frame_psnr(ref, ref)[0].item())
    with pytest.raises(ValueError, match="one shape"):
        frame_psnr(ref, est[:, :2])


def test_log_spectral_distance_exact_values():
    from avgen.metrics.codec import log_spectral_distance

    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    assert log_spectral_distance(x, x).tolist() == [0.0, 0.0]
    # 10× the amplitude is 100× the power: log10 differs by 2 in every bin
    assert log_spectral_distance(x, 10 * x).tolist() == pytest.approx([2.0, 2.0], abs=1e-6)
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        log_spectral_distance(x[0], x[0])


def test_onset_f1_pools_one_to_one_matches():
    from avgen.metrics.codec import onset_f1

    # clip 1: one of two onsets within 50 ms; clip 2: two onsets near one event match it once (one-to-one)
    scores = onset_f1([[0.5, 1.0], [0.3]], [[0.52, 1.3], [0.29, 0.31]], window=0.05)
    assert (scores.matched, scores.events, scores.onsets) == (2, 3, 4)
    assert scores.precision == pytest.approx(0.5)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 * 2 / 7)
    assert onset_f1([[0.5]], [[0.56]], window=0.05).f1 == 0.0
    assert onset_f1([[0.5]], [[0.56]], window=0.125).f1 == 1.0
    assert math.isnan(onset_f1([[]], [[]], window=0.05).f1)
    with pytest.raises(ValueError, match="clips"):
        onset_f1([[0.5]], [], window=0.05)


def test_impact_contrast_exact_values():
    from avgen.metrics.codec import impact_contrast

    floor = np.full(1600, 0.01)  # 4 windows of 400 samples at 16 kHz (25 ms)
    hit = floor.copy()
    hit[500] = -0.5
    assert impact_contrast(hit, 16000) == pytest.approx(0.5 / 0.01)
    assert impact_contrast(floor, 16000) == pytest.approx(1.0)
    assert impact_contrast(np.r_[hit, np.ones(399)], 16000) == pytest.approx(50.0)  # the partial window is dropped
    assert impact_contrast(np.zeros(800), 16000) == 1.0
    assert impact_contrast(np.r_[np.zeros(1200), 0.1 * np.ones(400)], 16000) == float("inf")
    assert impact_contrast(hit, 16000, window_seconds=0.05) == pytest.approx(0.5 / 0.255)  # median of 2 windows
    assert impact_contrast(hit, 16000, window_seconds=0.0125) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="at least 400"):
        impact_contrast(np.ones(100), 16000)
    with pytest.raises(ValueError, match="window_seconds"):
        impact_contrast(hit, 16000, window_seconds=0)


def test_impact_contrast_tells_impacts_from_noise():
    """Real synthetic 1-s windows mostly clear IMPACT_CONTRAST; white noise, loud or quiet, does not."""
    from avgen.data.geometry import ClipGeometry
    from avgen.data.synthetic import generate_clip
    from avgen.metrics.codec import IMPACT_CONTRAST, impact_contrast

    geo = ClipGeometry(**MINI_STORE)
    values = [impact_contrast(generate_clip(seed, geo).audio[:16000], 16000) for seed in range(20)]
    assert np.mean(np.array(values) > IMPACT_CONTRAST) >= 0.75
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.5):
        assert impact_contrast(scale * rng.standard_normal(16000), 16000) < 2.5


def test_onsets_of_a_synthetic_clip_match_its_events():
    """The detector on the original audio: the ceiling the vocoder is measured against."""
    from avgen.data.geometry import ClipGeometry
    from avgen.data.synthetic import generate_clip
    from avgen.metrics.codec import clip_onsets, onset_f1

    geo = ClipGeometry(**MINI_STORE)
    clips = [generate_clip(seed, geo) for seed in range(4)]
    detected = [clip_onsets(c.audio, geo.sample_rate).tolist() for c in clips]
    assert onset_f1([c.meta["events"] for c in clips], detected, window=1 / 8).f1 == 1.0


# ----------------------------------------------------------------------------------- the recipe
def bank(n: int = 6):
    """``n`` synthetic clips at the mini store geometry in a ClipBank (seeds 1000, 1001, ...)."""
    return bank_of_seeds(range(1000, 1000 + n))


def test_clip_bank_batches_are_a_function_of_seed_and_step():
    b = bank(3)
    one = b.random_segments(4, 800, b.generator(0, 7), multiple=160)
    assert torch.equal(one, b.random_segments(4, 800, b.generator(0, 7), multiple=160))
    assert not torch.equal(one, b.random_segments(4, 800, b.generator(0, 8), multiple=160))
    # every segment is a hop-aligned slice of some clip
    for segment in one:
        hits = [(c, s) for c in range(3) for s in range(0, b.audio.shape[1] - 800 + 1, 160)
                if torch.equal(b.audio[c, s:s + 800], segment)]
        assert hits
    frames = b.random_frames(5, b.generator(1, 0))
    assert frames.shape == (5, 3, 32, 32) and frames.dtype == torch.uint8
    with pytest.raises(ValueError, match="segments of"):
        b.random_segments(1, b.audio.shape[1] + 1, b.generator(0, 0))


MINI_STORE_CONFIG = {"seconds": 2.0, "fps": 8, "short_side": 32, "sample_rate": 16000}


def test_rendered_clip_bank_is_the_prepared_split_without_the_codec(tmp_path):
    """pretrain_twins.clip_source=rendered: the clips prepare writes, drawn in memory: the same keys, labels,
    captions, events (to the store's float32) and audio (the store's 16-bit FLAC, exactly); frames without h264."""
    from avgen.data.clip_bank import ClipBank
    from avgen.data.geometry import ClipGeometry
    from avgen.data.shards import Manifest
    from avgen.data.stream import Shard
    from avgen.data.synthetic_prepare import prepare_synthetic_hits, rendered_clip_bank

    root = tmp_path / "store"
    prepare_synthetic_hits(str(root), MINI_STORE_CONFIG, clips={"train": 3, "test": 3}, clips_per_shard=2, seed=5,
                           preview=0, workers=1)
    geometry = ClipGeometry(**MINI_STORE)
    for split in ("train", "test"):
        shards = [Shard(str(root / split / s.name), s.clips) for s in Manifest.load(root / split).shards]
        stored = ClipBank.read(shards, geometry, split=split)
        rendered = rendered_clip_bank(split, 3, MINI_STORE_CONFIG, seed=5, clip=geometry)
        assert stored.source == "store" and rendered.source == "rendered"
        assert rendered.keys == stored.keys and rendered.keys[0] == f"synthetic_hits/{split}000000/0"
        assert rendered.labels == stored.labels and rendered.captions == stored.captions
        assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(rendered.events, stored.events))
        assert torch.equal(rendered.audio, stored.audio)
        assert rendered.frames.shape == stored.frames.shape == (3, 16, 3, 32, 32)
        assert rendered.frames.dtype == torch.uint8
        difference = (rendered.frames.float() - stored.frames.float()).abs().mean().item()
        assert 0.5 < difference < 8.0, difference  # the h264 error of the store, and only that
        assert rendered.geometry == geometry
    # the first clips of a longer split are the shorter split's, and another seed draws other clips
    assert rendered_clip_bank("test", 2, MINI_STORE_CONFIG, seed=5).captions == rendered.captions[:2]
    assert not torch.equal(rendered_clip_bank("test", 1, MINI_STORE_CONFIG, seed=6).audio, rendered.audio[:1])


def test_rendered_clip_bank_refuses_what_it_cannot_render():
    from avgen.data.synthetic_prepare import rendered_clip_bank
    from avgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.clip is 16x32 .* set data.clip.height and width to 32"):
        rendered_clip_bank("train", 1, MINI_STORE_CONFIG, clip={"height": 16, "width": 32})
    with pytest.raises(ConfigError, match="split 'dev'"):
        rendered_clip_bank("dev", 1, MINI_STORE_CONFIG)
    with pytest.raises(ConfigError, match=r"data.prepare.clips.val=0"):
        rendered_clip_bank("val", 0, MINI_STORE_CONFIG)


def test_learning_rate_schedule():
    from avgen.systems.codec_twins import TwinTraining

    class Dummy(TwinTraining):
        @staticmethod
        def build(config):
            return torch.nn.Linear(1, 1)

    m = Dummy({}, steps=110, batch_size=1, lr=1.0, warmup_steps=10, final_lr_fraction=0.1)
    assert m.lr_factor(0) == pytest.approx(0.1)
    assert m.lr_factor(9) == pytest.approx(1.0)
    assert m.lr_factor(10) == pytest.approx(1.0)
    assert m.lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert m.lr_factor(110) == pytest.approx(0.1)


# small models: the recipe's code at test speed
SMALL = [
    "pretrain_twins.codecs.frames_vae.model.block_out_channels=[8,8,8]",
    "pretrain_twins.codecs.frames_vae.model.norm_num_groups=4",
    "pretrain_twins.codecs.frames_vae.batch_size=4",
    "pretrain_twins.codecs.mel_vae.model.block_out_channels=[8,8,8]",
    "pretrain_twins.codecs.mel_vae.model.norm_num_groups=4",
    "pretrain_twins.codecs.mel_vae.batch_size=2",
    "pretrain_twins.codecs.mel_vae.mel_frames=16",
    "pretrain_twins.codecs.vocoder.model.upsample_initial_channel=32",
    "pretrain_twins.codecs.vocoder.model.resblock_kernel_sizes=[3]",
    "pretrain_twins.codecs.vocoder.model.resblock_dilation_sizes=[[1]]",
    "pretrain_twins.codecs.vocoder.batch_size=2",
    "pretrain_twins.codecs.vocoder.mel_frames=8",
    "pretrain_twins.codecs.mel_vae_decoder.batch_size=2",
    "pretrain_twins.codecs.mel_vae_decoder.mel_frames=16",
    "pretrain_twins.codecs.mel_vae_decoder.disc_channels=8",
    "pretrain_twins.codecs.vocoder_finetune.batch_size=2",
    "pretrain_twins.codecs.vocoder_finetune.mel_frames=8",
    "pretrain_twins.evaluate.clips=2",
    "pretrain_twins.evaluate.strip_clips=1",
    "data.prepare.clips={train:4,val:1,test:2}",
    "data.prepare.clips_per_shard=4",
    "data.prepare.preview=0",
    "data.prepare.workers=1",
    "callbacks.progress_bar=null",
]


CODEC_STAGES = ("frames_vae", "mel_vae", "mel_vae_decoder", "vocoder", "vocoder_finetune")


def steps(n: int, every: int = 2) -> list[str]:
    return [f"pretrain_twins.codecs.{s}.steps={n}" for s in CODEC_STAGES] + \
        [f"pretrain_twins.codecs.{s}.warmup_steps=2" for s in CODEC_STAGES] + \
        [f"pretrain_twins.checkpoint_every={every}"]


def recipe(tmp_path: Path, run: str, *extra: str) -> Path:
    from avgen.commands import run_command

    cfg = compose(["command=pretrain-twins", "part=codecs", *SMALL, *extra], tmp_path, run_dir=tmp_path / run)
    return run_command(cfg)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{p.parent.name}/{k}": v for p in sorted(folder.glob("*/*.safetensors")) for k, v in load_file(p).items()}


@pytest.mark.slow
def test_recipe_resumes_to_the_bit_and_writes_a_manifest(tmp_path, one_thread, capsys):
    """Ctrl-C at step 3 of a 5-step stage, then the same command: the weights equal an uninterrupted run's to the bit
    (batches and noise come from the step number; optimiser and schedule from the checkpoint)."""
    import signal

    straight = recipe(tmp_path, "straight", *steps(5))
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C once it caught one
    try:
        with pytest.raises(SystemExit):
            recipe(tmp_path, "resumed", *steps(5),
                   "+callbacks.ctrl_c={_target_: tests.helpers.KeyboardInterruptAt, step: 3}")
    finally:
        signal.signal(signal.SIGINT, handler)
    out = capsys.readouterr().out
    assert "continue after a stop with: python -m avgen pretrain-twins" in out
    assert f"hydra.run.dir={tmp_path / 'resumed'}" in out
    resumed = recipe(tmp_path, "resumed", *steps(5))
    out = capsys.readouterr().out
    assert "frames_vae: resuming from" in out and "(step 3 of 5)" in out
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and len(a) > 50
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["format"] == "avgen-mini-twins/1" and manifest["part"] == "codecs"
    assert manifest["data"]["dataset"] == "synthetic_hits" and manifest["data"]["seed"] == 0
    assert manifest["data"]["train_clips"] == 4 and manifest["data"]["held_out_clips"] == 2
    assert manifest["recipe"]["command"].startswith("python -m avgen pretrain-twins")
    assert manifest["recipe"]["config"]["pretrain_twins"]["codecs"]["vocoder"]["steps"] == 5
    from avgen.pretrained import sha256_file

    for name in ("frames_vae", "mel_vae", "vocoder"):
        entry = manifest["components"][name]
        assert entry["steps"] == 5 and entry["parameters"] > 0
        for file, digest in entry["files"].items():
            assert sha256_file(resumed / name / file) == digest
    assert manifest["components"]["frames_vae"]["scaling_factor"] > 0
    # the tuned decoder and vocoder are published in place of the stages they continue, which the manifest names
    assert manifest["components"]["mel_vae"]["stage"] == "mel_vae_decoder"
    assert manifest["components"]["mel_vae"]["base"]["stage"] == "mel_vae"
    assert manifest["components"]["mel_vae"]["base"]["steps"] == 5
    assert manifest["components"]["vocoder"]["stage"] == "vocoder_finetune"
    from diffusers import AutoencoderKL

    base = AutoencoderKL.from_pretrained(resumed.parent / "mel_vae" / "model")   # the mel_vae stage's own
    tuned = AutoencoderKL.from_pretrained(resumed / "mel_vae")
    same = {k: torch.equal(v, tuned.state_dict()[k]) for k, v in base.state_dict().items()}
    assert all(v for k, v in same.items() if k.startswith(("encoder.", "quant_conv.")))   # the latent space kept
    assert not all(v for k, v in same.items() if k.startswith("decoder."))
    assert tuned.config.scaling_factor == base.config.scaling_factor
    from avgen.backbones.mini import latent_space_tag

    assert latent_space_tag(resumed) != ""
    metrics = manifest["metrics"]
    assert set(metrics) >= {"frames_vae", "mel_vae", "vocoder", "mel_vae+vocoder", "reference"}
    assert metrics["reference"]["onset_1frame_f1"] == 1.0
    assert (resumed / "frames_strip.png").stat().st_size > 0

    # a finished stage is not retrained; a third run only measures and writes
    recipe(tmp_path, "resumed", *steps(5))
    assert capsys.readouterr().out.count("not retrained") == len(CODEC_STAGES)
    assert all(torch.equal(a[k], v) for k, v in weights(resumed).items())

    # publish: refuses an existing folder without overwrite, and a folder the recipe did not write even with it
    target = tmp_path / "published"
    recipe(tmp_path, "resumed", *steps(5), f"pretrain_twins.publish_dir={target}")
    assert json.loads((target / "manifest.json").read_text()) == manifest | {"recipe": json.loads(
        (target / "manifest.json").read_text())["recipe"]}
    with pytest.raises(SystemExit):
        recipe(tmp_path, "resumed", *steps(5), f"pretrain_twins.publish_dir={target}")
    assert "pretrain_twins.overwrite=true" in capsys.readouterr().err
    (target / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        recipe(tmp_path, "resumed", *steps(5), f"pretrain_twins.publish_dir={target}", "pretrain_twins.overwrite=true")
    assert "notes.txt" in capsys.readouterr().err
    assert (target / "notes.txt").read_text() == "mine"


def test_recipe_refuses_bad_settings(tmp_path, capsys):
    from avgen.commands import run_command

    cfg = compose(["command=pretrain-twins"], tmp_path)
    with pytest.raises(SystemExit):
        run_command(cfg)
    assert "part=codecs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe(tmp_path, "r", "pretrain_twins.stages=[frames_vae,decoder]")
    assert "'decoder'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe(tmp_path, "r", "pretrain_twins.stages=[]")
    assert "nothing to train" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("mine")
    for override, message in (("trainer.accumulate_grad_batches=2", "set trainer.accumulate_grad_batches=1"),
                               ("resume=/tmp/x.ckpt", "use resume=auto"),
                               ("pretrain_twins.codecs.vocoder.mel_frames=250", "use 1 to 200"),
                               ("pretrain_twins.codecs.mel_vae.mel_frames=30", "a multiple of 4 from 4 to 200"),
                               ("pretrain_twins.codecs.mel_vae.mel_frames=0", "a multiple of 4 from 4 to 200"),
                               ("pretrain_twins.codecs.mel_vae.mel_frames=300", "do not fit the clips"),
                               ("pretrain_twins.codecs.vocoder.steps=0", "vocoder.steps=0: expected an integer >= 1"),
                               ("pretrain_twins.checkpoint_every=0", "checkpoint_every=0"),
                               ("pretrain_twins.evaluate.clips=0", "at least 1 clip"),
                               ("pretrain_twins.evaluate.split=nope", "pretrain_twins.evaluate.split=nope"),
                               ("pretrain_twins.clip_source=disk", "expected store (the prepared shards) or rendered"),
                               ("pretrain_twins.stages=vocoder", "expected a list"),
                               ("pretrain_twins.part=generators", "choose the part with part=generators"),
                               ("pretrain_twins.part=motion", "this avgen trains part codecs or generators"),
                               (f"pretrain_twins.publish_dir={tmp_path / 'a_file'}", "is a file")):
        with pytest.raises(SystemExit):
            # the frames VAE would train first: every setting is checked before any stage trains
            recipe(tmp_path, "r", "pretrain_twins.stages=[frames_vae,mel_vae,vocoder]", override)
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (override, err)
        assert not (tmp_path / "r" / "frames_vae" / "checkpoints").exists(), override
    # clips rendered in memory: refused before any training, and nothing prepared
    fresh = tmp_path / "fresh"
    for override, message in (("data.name=vggsound", "clip_source=rendered draws synthetic_hits' clips"),
                              ("data.clip.height=16", "data.clip is 16x32"),
                              ("data.prepare.clips.test=0", "data.prepare.clips.test clips of the test split"),
                              ("pretrain_twins.evaluate.split=nope", "evaluate.split=nope: synthetic_hits has no such "
                                                                     "split; use test or val"),
                              ("data.subset=loud", "data.subset=loud: a subset selects clips of a prepared store")):
        with pytest.raises(SystemExit):
            recipe(fresh, "rendered", "pretrain_twins.stages=[frames_vae]", "pretrain_twins.clip_source=rendered",
                   override)
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (override, err)
        assert not (fresh / "rendered" / "frames_vae").exists(), override
        assert not list(fresh.glob("data/synthetic_hits*")), override


def test_recipe_commit_is_read_once_per_process(monkeypatch):
    """The revision is the one the process started with: asked again after HEAD moved, the same answer (a copy)."""
    from avgen import pretraining

    answers = iter([{"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": True}])
    monkeypatch.setattr(pretraining, "_PROCESS_REVISION", None)
    monkeypatch.setattr(pretraining, "_git_revision", lambda: next(answers))
    first = pretraining.recipe_commit()
    first["commit"] = "changed by the caller"
    assert pretraining.recipe_commit() == {"commit": "a" * 40, "dirty": False}


@pytest.mark.slow
def test_sessions_record_their_clip_source_and_a_switch_is_noted(tmp_path, one_thread, capsys, monkeypatch):
    """A stage continued on rendered clips after training on the store's says so, and each session in the manifest
    names its clips; every session and the manifest name the revision the process loaded, though git's HEAD moves
    (here: a new revision each time git is asked) while it runs."""
    from avgen import pretraining

    revisions = iter(f"{n:040x}" for n in range(1, 100))
    monkeypatch.setattr(pretraining, "_PROCESS_REVISION", None)
    monkeypatch.setattr(pretraining, "_git_revision", lambda: {"commit": next(revisions), "dirty": False})
    only = ("pretrain_twins.stages=[frames_vae]",)
    recipe(tmp_path, "r", *steps(2), *only)
    assert "note: its checkpoint trained on clips" not in capsys.readouterr().out
    twins = recipe(tmp_path, "r", *steps(3), *only, "pretrain_twins.clip_source=rendered")
    out = capsys.readouterr().out
    assert "frames_vae: note: its checkpoint trained on clips from store (this run's come from rendered" in out
    assert "frames_vae: resuming from" in out
    manifest = json.loads((twins / "manifest.json").read_text())
    sessions = manifest["components"]["frames_vae"]["sessions"]
    assert [(entry["clip_source"], entry["from_step"], entry["to_step"]) for entry in sessions] == \
        [("store", 0, 2), ("rendered", 2, 3)]
    assert [entry["commit"] for entry in sessions] == [f"{1:040x}"] * 2 == [manifest["recipe"]["commit"]] * 2
    assert manifest["data"]["clip_source"] == "rendered"
    # finished: reused on the store's clips, with the same note
    recipe(tmp_path, "r", *steps(3), *only)
    out = capsys.readouterr().out
    assert "note: its checkpoint trained on clips from rendered (this run's come from store" in out
    assert "finished (3 steps" in out


@pytest.mark.slow
def test_a_stage_subset_run_reuses_finished_stages_and_publishes_only_all(tmp_path, one_thread, capsys):
    """stages=[vocoder] alone cannot be published; once every stage has finished in the folder, a vocoder-only run
    measures and writes all three."""
    target = tmp_path / "published"
    with pytest.raises(SystemExit):
        recipe(tmp_path, "r", *steps(2), "pretrain_twins.stages=[vocoder]", f"pretrain_twins.publish_dir={target}")
    assert "no finished frames_vae, mel_vae" in capsys.readouterr().err and not target.exists()
    recipe(tmp_path, "r", *steps(2), "pretrain_twins.stages=[frames_vae,mel_vae]")
    twins = recipe(tmp_path, "r", *steps(2), "pretrain_twins.stages=[vocoder]", f"pretrain_twins.publish_dir={target}")
    assert sorted(json.loads((twins / "manifest.json").read_text())["components"]) == ["frames_vae", "mel_vae",
                                                                                        "vocoder"]
    assert (target / "frames_vae").is_dir()
    # a component folder holding a file the recipe did not write is not replaced
    (target / "vocoder" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        recipe(tmp_path, "r", *steps(2), "pretrain_twins.stages=[vocoder]", f"pretrain_twins.publish_dir={target}",
               "pretrain_twins.overwrite=true")
    assert "vocoder/notes.txt" in capsys.readouterr().err
    # other training settings for a finished stage: said, and the manifest keeps what it was trained with
    twins = recipe(tmp_path, "r", *steps(2), "pretrain_twins.stages=[vocoder]",
                   "pretrain_twins.codecs.vocoder.batch_size=3")
    assert "it was trained with batch_size=2 (given batch_size=3)" in capsys.readouterr().out
    manifest = json.loads((twins / "manifest.json").read_text())
    assert manifest["components"]["vocoder"]["trained_with"]["batch_size"] == 2
    # a changed model in the same folder is refused, naming the key
    with pytest.raises(SystemExit):
        recipe(tmp_path, "r", *steps(2), "pretrain_twins.stages=[vocoder]",
               "pretrain_twins.codecs.vocoder.model.upsample_initial_channel=64")
    assert "pretrain_twins.codecs.vocoder.model differs" in capsys.readouterr().err


@pytest.mark.slow
def test_tuning_stages_start_from_published_codecs_and_keep_their_latent_space(tmp_path, one_thread, capsys):
    """pretrain_twins.start_from: a published folder's codecs become the run's finished stages; mel_vae_decoder and
    vocoder_finetune train on them; the result has the same latent-space tag (generators still fit) but another
    version tag, and the manifest says where each component came from."""
    from diffusers import AutoencoderKL

    from avgen.backbones import mini
    from avgen.pretrained import sha256_file

    base = tmp_path / "base"
    recipe(tmp_path, "r", *steps(2), "pretrain_twins.stages=[frames_vae,mel_vae,vocoder]",
           f"pretrain_twins.publish_dir={base}")
    tuning = ["pretrain_twins.stages=[mel_vae_decoder,vocoder_finetune]"]
    with pytest.raises(SystemExit):   # a fresh folder has no mel VAE to continue
        recipe(tmp_path, "fresh", *steps(2), *tuning)
    assert "mel_vae_decoder continues the mel_vae stage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe(tmp_path, "t", *steps(2), "pretrain_twins.stages=[mel_vae,mel_vae_decoder]",
               f"pretrain_twins.start_from={base}")
    assert f"pretrain_twins.start_from={base} gives mel_vae; remove it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe(tmp_path, "t", *steps(2), "pretrain_twins.stages=[vocoder_finetune,mel_vae_decoder]",
               f"pretrain_twins.start_from={base}")
    assert "list them in training order (mel_vae_decoder, vocoder_finetune)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe(tmp_path, "r", *steps(2), *tuning, f"pretrain_twins.start_from={base}")
    assert "already holds a frames_vae of its own" in capsys.readouterr().err

    tuned = recipe(tmp_path, "t", *steps(2), *tuning, f"pretrain_twins.start_from={base}")
    out = capsys.readouterr().out
    assert "frames_vae: taken from" in out and "mel_vae_decoder: training 2 steps" in out
    manifest = json.loads((tuned / "manifest.json").read_text())
    given = json.loads((base / "manifest.json").read_text())["components"]
    assert manifest["components"]["frames_vae"]["files"] == given["frames_vae"]["files"]
    assert manifest["components"]["frames_vae"]["from"]["tag"] == mini.version_tag(base)
    assert manifest["components"]["frames_vae"]["trained_with"] == given["frames_vae"]["trained_with"]
    assert manifest["components"]["mel_vae"]["base"]["from"]["tag"] == mini.version_tag(base)
    assert manifest["components"]["mel_vae"]["steps"] == 2
    assert manifest["components"]["vocoder"]["files"] != given["vocoder"]["files"]
    assert mini.latent_space_tag(tuned) == mini.latent_space_tag(base)
    assert mini.version_tag(tuned) != mini.version_tag(base)
    vae = AutoencoderKL.from_pretrained(tuned / "mel_vae")
    assert vae.config.scaling_factor == pytest.approx(given["mel_vae"]["scaling_factor"])
    for name in ("frames_vae", "mel_vae", "vocoder"):
        assert all(sha256_file(tuned / name / f) == d for f, d in manifest["components"][name]["files"].items())
    # the same command again adopts nothing new and retrains nothing
    recipe(tmp_path, "t", *steps(2), *tuning, f"pretrain_twins.start_from={base}")
    out = capsys.readouterr().out
    assert "taken from" not in out and out.count("not retrained") == 2

    # a frame VAE trained anew in a folder, the other codecs taken from the published ones: a new latent space
    recipe(tmp_path, "own", *steps(2), "pretrain_twins.stages=[frames_vae]", "pretrain_twins.seed=1")
    capsys.readouterr()
    for chosen, message in (("[mel_vae,decoder]", "start_from_components names 'decoder'; " + f"{base} gives "
                                                  "frames_vae, mel_vae, vocoder"),
                            ("mel_vae", "start_from_components=mel_vae: expected a list"),
                            ("[frames_vae,mel_vae,vocoder]", "already holds a frames_vae of its own")):
        with pytest.raises(SystemExit):
            recipe(tmp_path, "own", *steps(2), "pretrain_twins.stages=[vocoder_finetune]",
                   f"pretrain_twins.start_from={base}", f"pretrain_twins.start_from_components={chosen}")
        assert message in capsys.readouterr().err, chosen
    mixed = recipe(tmp_path, "own", *steps(2), "pretrain_twins.stages=[vocoder_finetune]",
                   f"pretrain_twins.start_from={base}", "pretrain_twins.start_from_components=[mel_vae,vocoder]")
    out = capsys.readouterr().out
    assert "mel_vae: taken from" in out and "vocoder: taken from" in out and "frames_vae: taken from" not in out
    components = json.loads((mixed / "manifest.json").read_text())["components"]
    assert "from" not in components["frames_vae"] and components["mel_vae"]["from"]["tag"] == mini.version_tag(base)
    assert components["frames_vae"]["files"] != given["frames_vae"]["files"]
    assert components["mel_vae"]["files"] == given["mel_vae"]["files"]
    assert mini.latent_space_tag(mixed) != mini.latent_space_tag(base)


def mel_vae_config() -> dict:
    return {"in_channels": 1, "out_channels": 1, "latent_channels": 4, "block_out_channels": [8, 8],
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "norm_num_groups": 4, "layers_per_block": 1}


def test_decoder_stage_gradients_train_the_decoder_and_the_discriminator_each_on_its_own_loss():
    """One backward of MelVAEDecoderTraining's loss: no gradient reaches the encoder; the decoder's is that of L1 +
    λ·L_G with LDM's adaptive λ; the discriminator's is that of its hinge loss alone (the generator term holds it
    fixed)."""
    from diffusers import AutoencoderKL

    from avgen.systems.codec_twins import MelVAEDecoderTraining

    torch.manual_seed(0)
    vae = AutoencoderKL(**mel_vae_config())
    vae.register_to_config(scaling_factor=0.5)
    module = MelVAEDecoderTraining(mel_vae_config(), vae=vae, steps=4, batch_size=2, lr=1e-3, mel_frames=16,
                                   disc_channels=8)
    assert module.model.config.scaling_factor == 0.5
    module.bank = bank(2)
    losses = module.losses(module.bank.generator(0, 0))
    module.zero_grad()
    losses["loss"].backward()
    assert all(p.grad is None for p in module.model.encoder.parameters())
    assert all(p.grad is None for p in module.model.quant_conv.parameters())
    decoder_grad = module.model.decoder.conv_out.weight.grad.clone()
    disc_grad = [p.grad.clone() for p in module.discriminator.parameters()]

    # the same step by hand
    generator = module.bank.generator(0, 0)
    audio = module.bank.random_segments(2, 16 * module.mel.hop_length, generator, multiple=module.mel.hop_length)
    x = module.mel(audio).unsqueeze(1)
    with torch.no_grad():
        posterior = module.model.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    module.zero_grad()
    recon = module.model.decode(z).sample
    rec = (recon - x).abs().sum() / 2
    last = module.model.decoder.conv_out.weight
    d_fake = module.discriminator(recon)
    g_loss = -d_fake.mean()
    grad_rec = torch.autograd.grad(rec, last, retain_graph=True)[0].norm()
    grad_g = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
    weight = float((grad_rec / (grad_g + 1e-4)).clamp(0, 1e4)) * 0.5
    assert float(losses["adaptive_weight"]) == pytest.approx(weight, rel=1e-5)
    (rec + weight * g_loss).backward(inputs=[last])
    assert torch.allclose(decoder_grad, last.grad, rtol=1e-4, atol=1e-6)
    d_loss = 0.5 * (torch.relu(1 - module.discriminator(x)).mean()
                    + torch.relu(1 + module.discriminator(recon.detach())).mean())
    params = list(module.discriminator.parameters())
    expected = torch.autograd.grad(d_loss, params)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(disc_grad, expected))


def test_tuning_stages_refuse_a_base_of_another_config():
    from diffusers import AutoencoderKL

    from avgen.systems.codec_twins import MelVAEDecoderTraining, VocoderFinetuning

    other = AutoencoderKL(**{**mel_vae_config(), "latent_channels": 8})
    with pytest.raises(ValueError, match="latent_channels: 4 here, 8 there"):
        MelVAEDecoderTraining(mel_vae_config(), vae=other, steps=1, batch_size=1, lr=1e-3)
    with pytest.raises(ValueError, match="train the mel_vae stage first"):
        MelVAEDecoderTraining(mel_vae_config(), steps=1, batch_size=1, lr=1e-3)
    with pytest.raises(ValueError, match="train the mel_vae and vocoder stages first"):
        VocoderFinetuning({"model_in_dim": 64, "upsample_rates": [5, 4, 2, 2, 2],
                           "upsample_kernel_sizes": [11, 8, 4, 4, 4]}, vae=other, steps=1, batch_size=1, lr=1e-3)


def test_latent_space_tag_follows_the_encoders_only(tmp_path):
    """Generators fit codecs whose VAE encoders are theirs: a changed decoder or vocoder keeps the latent-space tag
    (and check_generators_codecs passes), a changed encoder weight changes it (and the check refuses)."""
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan

    from avgen.backbones import mini

    folder = fake_weights(tmp_path)
    tag = mini.latent_space_tag(folder)
    generators = tmp_path / "generators"
    generators.mkdir()
    (generators / "manifest.json").write_text(json.dumps({"format": "avgen-mini-twins/1", "part": "generators",
                                                          "codecs": {"tag": "old", "latent_space": tag},
                                                          "components": {}}))
    vae = AutoencoderKL.from_pretrained(folder / "mel_vae")
    vocoder = SpeechT5HifiGan.from_pretrained(folder / "vocoder")
    with torch.no_grad():
        vae.decoder.conv_out.weight.add_(1.0)
        vocoder.conv_post.weight.add_(1.0)
    vae.save_pretrained(folder / "mel_vae")
    vocoder.save_pretrained(folder / "vocoder")
    assert mini.latent_space_tag(folder) == tag
    mini.check_generators_codecs(generators, folder)   # the version tag differs; the latent space does not
    with torch.no_grad():
        vae.encoder.conv_in.weight.add_(1e-3)
    vae.save_pretrained(folder / "mel_vae")
    assert mini.latent_space_tag(folder) != tag
    with pytest.raises(mini.MiniWeightsError, match=f"trained on the latent spaces {tag}"):
        mini.check_generators_codecs(generators, folder)
    # a manifest from before the latent-space tag: the codecs' version tag decides
    (generators / "manifest.json").write_text(json.dumps({"format": "avgen-mini-twins/1", "part": "generators",
                                                          "codecs": {"tag": mini.version_tag(folder)}}))
    mini.check_generators_codecs(generators, folder)


def test_generators_are_checked_against_the_latent_space_of_their_own_vae(tmp_path):
    """Per-modality tags (``codecs.latent_spaces``): a changed mel VAE encoder refuses the audio U-Net trained in the
    old one but not the video generators beside it (a twin checks only the components it takes), and the message
    names the component and the VAE; the combined tag still changes."""
    from diffusers import AutoencoderKL

    from avgen.backbones import mini

    folder = fake_weights(tmp_path)
    tags, combined = mini.latent_space_tags(folder), mini.latent_space_tag(folder)
    assert set(tags) == set(mini.LATENT_CODECS) and len(set(tags.values())) == 2
    assert tags["frames_vae"] == mini.latent_space_tag(folder, ("frames_vae",))
    assert mini.LATENT_CODEC_OF["audioldm_unet"] == "mel_vae" and mini.LATENT_CODEC_OF["animatediff_motion"] == \
        "frames_vae" and mini.LATENT_CODEC_OF["zeroscope_unet"] == "frames_vae"
    generators = tmp_path / "generators"
    generators.mkdir()
    (generators / "manifest.json").write_text(json.dumps({
        "format": "avgen-mini-twins/1", "part": "generators",
        "codecs": {"tag": "old", "latent_space": combined, "latent_spaces": tags},
        "components": {"audioldm_unet": {}, "animatediff_image": {}}}))
    mini.check_generators_codecs(generators, folder)
    vae = AutoencoderKL.from_pretrained(folder / "mel_vae")
    with torch.no_grad():
        vae.encoder.conv_in.weight.add_(1e-3)
    vae.save_pretrained(folder / "mel_vae")
    assert mini.latent_space_tag(folder) != combined
    assert mini.latent_space_tags(folder)["frames_vae"] == tags["frames_vae"]
    mini.check_generators_codecs(generators, folder, components=["animatediff_image"])
    with pytest.raises(mini.MiniWeightsError, match=f"audioldm_unet was trained in the latent space "
                                                    f"{tags['mel_vae']} of mel_vae"):
        mini.check_generators_codecs(generators, folder)


def test_latent_scaling_factor_gives_unit_variance():
    from avgen.pretraining import latent_scaling_factor
    from avgen.systems.codec_twins import FramesVAETraining

    config = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 8],
              "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
              "norm_num_groups": 4}
    torch.manual_seed(0)
    module = FramesVAETraining(config, steps=1, batch_size=2, lr=1e-3)
    module.bank = bank(2)
    factor = latent_scaling_factor(module, module.bank, examples=64)
    generator = module.bank.generator(12345, 0)
    module.batch_size = 64
    with torch.no_grad():
        posterior = module.model.encode(module.inputs(generator)).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    assert float((z * factor).std()) == pytest.approx(1.0, abs=1e-5)


def test_vocoder_whose_upsampling_is_not_the_mel_hop_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        recipe(tmp_path, "r", "pretrain_twins.stages=[vocoder]",
               "pretrain_twins.codecs.vocoder.model.upsample_rates=[5,4,2,2,1]")
    assert "make 80 samples per mel frame" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- mini: sources
def fake_weights(tmp_path: Path) -> Path:
    """A mini-twins folder in the committed layout: the tiny twins' codecs, re-seeded, with a manifest."""
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan

    from avgen.backbones import tiny
    from avgen.pretrained import sha256_file

    tiny_audio = tiny.materialize("audioldm", tmp_path / "tiny")
    tiny_video = tiny.materialize("animatediff", tmp_path / "tiny")
    folder = tmp_path / "weights"
    torch.manual_seed(7)
    models = {"frames_vae": AutoencoderKL.from_pretrained(tiny_video / "vae"),
              "mel_vae": AutoencoderKL.from_pretrained(tiny_audio / "vae"),
              "vocoder": SpeechT5HifiGan.from_pretrained(tiny_audio / "vocoder")}
    components = {}
    for name, model in models.items():
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(folder / name)
        components[name] = {"files": {p.name: sha256_file(p) for p in (folder / name).iterdir()}}
    (folder / "manifest.json").write_text(json.dumps({"format": "avgen-mini-twins/1", "part": "codecs",
                                                      "components": components}))
    return folder


def test_mini_source_swaps_in_the_trained_parts(tmp_path, monkeypatch):
    from avgen.backbones import mini
    from avgen.backbones.audioldm import load_audio_codec
    from avgen.backbones.loader import resolve_source
    from avgen.errors import ConfigError

    folder = fake_weights(tmp_path)
    monkeypatch.setenv(mini.WEIGHTS_ENV, str(folder))
    # the codecs alone (the committed generators were trained on the committed codecs, not these)
    monkeypatch.setitem(mini.MINI_TWINS, "audioldm", ("audioldm", {"vae": ("codecs", "mel_vae"),
                                                                   "vocoder": ("codecs", "vocoder")}))
    twin = Path(resolve_source("mini:audioldm", tmp_path / "twins"))
    assert twin.name == f"mini-audioldm-v3-{mini.version_tag(folder)}"
    for sub, component in (("vae", "mel_vae"), ("vocoder", "vocoder")):
        for file in (folder / component).iterdir():
            assert (twin / sub / file.name).read_bytes() == file.read_bytes()
    tiny_twin = tmp_path / "tiny" / "audioldm-v3"
    assert (twin / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tiny_twin / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    codec = load_audio_codec("mini:audioldm", tiny_dir=tmp_path / "twins")
    assert codec.vocoder.conv_pre.weight.requires_grad is False
    assert resolve_source("mini:audioldm", tmp_path / "twins") == str(twin)  # reused

    with pytest.raises(ConfigError, match="unknown mini twin 'vivit'"):
        resolve_source("mini:vivit", tmp_path / "twins")
    with pytest.raises(ConfigError, match="no folder to write it to"):
        resolve_source("mini:audioldm", None)
    # altered bytes: refused, naming the file
    weights_file = next((folder / "vocoder").glob("*.safetensors"))
    weights_file.write_bytes(weights_file.read_bytes()[:-1] + b"\0")
    with pytest.raises(mini.MiniWeightsError, match="SHA-256 differs"):
        resolve_source("mini:audioldm", tmp_path / "other")
    shutil.rmtree(folder / "vocoder")
    with pytest.raises(mini.MiniWeightsError, match="missing"):
        resolve_source("mini:audioldm", tmp_path / "other")
    (folder / "manifest.json").unlink()
    with pytest.raises(mini.MiniWeightsError, match="no mini twins there .*manifest.json is missing"):
        resolve_source("mini:zeroscope", tmp_path / "other")


def test_scale_blocks():
    from avgen.config_files import scale_blocks
    from avgen.errors import ConfigError
    from avgen.systems.base import system_arguments

    assert scale_blocks("paper") == () and scale_blocks("mini") == ("tiny", "mini")
    with pytest.raises(ConfigError, match="model.scale='small'"):
        system_arguments("small", {}, audio={})
    args = system_arguments("mini", {"audio": {"base": "tiny:audioldm", "seconds": 1.28}},
                            mini={"audio": {"base": "mini:audioldm"}}, audio={"base": "cvssp/audioldm"})
    assert args == {"audio": {"base": "mini:audioldm", "seconds": 1.28}}


# ----------------------------------------------------------------------------------- the committed mini twins
HELD_OUT_SEEDS = range(900_000, 900_012)  # not of the form prepare uses (64-bit blake2b seeds): clips never trained on
# the committed twins measured 26.2 dB and mel L1 0.16 on these 12 clips (27.1 dB, 0.158 on the recipe's 64 test clips)
PSNR_FLOOR = 25.0
MEL_L1_CEILING = 0.25


@pytest.fixture(scope="module")
def held_out():
    return bank_of_seeds(HELD_OUT_SEEDS)


def bank_of_seeds(seeds):
    from avgen.data.clip_bank import ClipBank
    from avgen.data.geometry import ClipGeometry
    from avgen.data.synthetic import generate_clip

    geo = ClipGeometry(**MINI_STORE)
    clips = [generate_clip(seed, geo) for seed in seeds]
    return ClipBank(frames=torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 1, 4, 2, 3).contiguous(),
                    audio=torch.from_numpy(np.stack([c.audio for c in clips])),
                    events=[np.asarray(c.meta["events"]) for c in clips], keys=[str(s) for s in seeds],
                    labels=[c.meta["label"] for c in clips], captions=[c.meta["caption"] for c in clips], geometry=geo)


def test_committed_manifest_matches_the_files_and_the_recipe():
    from avgen.backbones import mini

    manifest = mini.read_manifest(mini.WEIGHTS_DIR)
    assert set(manifest["components"]) == {"frames_vae", "mel_vae", "vocoder"}
    for name in manifest["components"]:
        mini.verify_component(name, mini.WEIGHTS_DIR, manifest)
    recipe_cfg = manifest["recipe"]["config"]["pretrain_twins"]
    from omegaconf import OmegaConf

    from avgen.config_files import config_dir

    shipped = OmegaConf.to_container(OmegaConf.load(config_dir() / "part" / "codecs.yaml").pretrain_twins,
                                     resolve=True)
    # the committed weights were made by the recipe as configs/part/codecs.yaml states it
    assert recipe_cfg["codecs"] == shipped["codecs"] and recipe_cfg["seed"] == shipped["seed"]
    assert manifest["data"]["dataset"] == "synthetic_hits" and manifest["data"]["train_clips"] == 512
    assert manifest["recipe"]["commit"]


def test_committed_codecs_reconstruct_clips_they_never_saw(tmp_path, held_out, one_thread):
    """What scale=tiny cannot do: a clip through the mini twins' frame VAE, mel VAE and vocoder comes back
    (tiny's random codecs: decoded frames correlate about 0 with the input, decoded audio peaks near 1e-8)."""
    from diffusers import AutoencoderKL

    from avgen.backbones.audioldm import load_audio_codec
    from avgen.backbones.loader import resolve_source
    from avgen.pretraining import evaluate_codecs

    video_vae = AutoencoderKL.from_pretrained(Path(resolve_source("mini:animatediff", tmp_path)) / "vae").eval()
    codec = load_audio_codec("mini:audioldm", tiny_dir=tmp_path)
    metrics = evaluate_codecs({"frames_vae": video_vae, "mel_vae": codec.vae, "vocoder": codec.vocoder}, held_out,
                              {"1frame": 1 / 8, "50ms": 0.05})
    assert metrics["reference"]["onset_1frame_f1"] == 1.0
    assert metrics["frames_vae"]["psnr_db"] > PSNR_FLOOR
    assert metrics["mel_vae"]["mel_l1"] < MEL_L1_CEILING
    assert metrics["vocoder"]["onset_1frame_f1"] >= 0.8
    assert metrics["mel_vae+vocoder"]["onset_1frame_f1"] >= 0.8
    assert 0.3 < metrics["vocoder"]["peak"] < 2.0   # the clips peak at 0.9

    with torch.no_grad():
        x = held_out.frames[0].float().div(127.5).sub(1)
        recon = video_vae.decode(video_vae.encode(x).latent_dist.mean).sample
    assert torch.corrcoef(torch.stack([x.flatten(), recon.flatten()]))[0, 1] > 0.9


@pytest.mark.parametrize("experiment", ["joint_cmcpe", "tempotokens_vggsound", "vta_ldm"])
def test_every_system_fits_at_scale_mini(tmp_path, tiny_shards, experiment):
    """scale=mini builds each system on the mini twins (8×8 frame latents: 4× down, not tiny's 2×) and trains."""
    from safetensors.torch import load_file

    from avgen.backbones import mini
    from avgen.commands import build_model, run_command

    common = [f"experiment={experiment}", "scale=mini", f"data.root={tiny_shards}", "data.auto_prepare=false",
              "data.store.seconds=1.0", "model.validation.samples=0", "trainer.limit_val_batches=0"]
    cfg = compose(["command=fit", *common, "trainer.max_steps=2"], tmp_path)
    run_command(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    model = build_model(compose(["command=fit", *common], tmp_path))
    manifest = mini.read_manifest()
    component = "mel_vae" if experiment == "vta_ldm" else "frames_vae"
    vae = {"vta_ldm": lambda: model.codec.vae, "joint_cmcpe": lambda: model.video.vae,
           "tempotokens_vggsound": lambda: model.t2v.vae}[experiment]()
    assert vae.config.scaling_factor == pytest.approx(manifest["components"][component]["scaling_factor"])
    committed = load_file(mini.WEIGHTS_DIR / component / "diffusion_pytorch_model.safetensors")
    state = vae.state_dict()
    assert all(torch.equal(state[k], v) for k, v in committed.items())

    # shared as a pipeline folder, the mini twins come back with it (referenced as mini: sources)
    from avgen.export import export_pipeline
    from avgen.pipelines import from_pretrained

    folder = export_pipeline(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "export")
    index = json.loads((folder / "avgen_index.json").read_text())
    kinds = {c.get("kind") for c in index["components"].values() if c.get("type") == "frozen"}
    assert "mini" in kinds
    assert "scale=mini" in (folder / "README.md").read_text()
    pipe = from_pretrained(folder, tiny_dir=tmp_path / "twins")
    with pytest.MonkeyPatch.context() as patch:  # other mini twins than those it was exported with: refused
        patch.setenv(mini.WEIGHTS_ENV, str(fake_weights(tmp_path / "other")))
        from avgen.errors import PipelineFolderError

        with pytest.raises(PipelineFolderError, match="exported with the mini twins"):
            from_pretrained(folder, tiny_dir=tmp_path / "twins")
        patch.setenv(mini.WEIGHTS_ENV, str(tmp_path / "nowhere"))  # no twins there: said so, naming the variable
        with pytest.raises(mini.MiniWeightsError, match=f"{mini.WEIGHTS_ENV}=.*nowhere: no mini twins there"):
            from_pretrained(folder, tiny_dir=tmp_path / "twins")
    system = pipe.model
    loaded = {"vta_ldm": lambda: system.codec.vae, "joint_cmcpe": lambda: system.video.vae,
              "tempotokens_vggsound": lambda: system.t2v.vae}[experiment]().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in committed.items())


def test_every_experiment_composes_at_scale_mini(tmp_path):
    """Each experiment at scale=mini: the synthetic data at the mini store, the system's mini sources where its
    model file has a mini block (the others keep the tiny twins)."""
    from omegaconf import OmegaConf

    from avgen.cli import group_options
    from avgen.systems.base import system_arguments

    for experiment in group_options("experiment"):
        cfg = compose([f"experiment={experiment}", "scale=mini"], tmp_path)
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert plain["scale_name"] == "mini" and plain["data"]["name"] == "synthetic_hits"
        assert plain["data"]["root"].endswith("synthetic_hits/32x32_8fps_2.0s_16000hz")
        model = plain["model"]
        args = system_arguments("mini", model["tiny"], mini=model["mini"],
                                **{k: model.get(k) for k in ("video", "audio", "t2v")})
        sources = [args[k]["base"] for k in ("video", "audio", "t2v") if args[k]]
        assert sources and all(s.startswith("mini:") for s in sources), (experiment, sources)


def test_a_fresh_vocoder_is_trainable():
    """The fault class behind a first recipe run whose vocoder never learned: an initial output so small (1e-8) that
    both losses sit on their log floors, where every gradient is exactly zero."""
    from avgen.systems.codec_twins import VocoderTraining

    config = {"model_in_dim": 64, "sampling_rate": 16000, "upsample_initial_channel": 32,
              "upsample_rates": [5, 4, 2, 2, 2], "upsample_kernel_sizes": [11, 8, 4, 4, 4],
              "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]], "normalize_before": False}
    torch.manual_seed(0)
    module = VocoderTraining(config, steps=1, batch_size=2, lr=1e-3, mel_frames=16)
    module.bank = bank(2)
    losses = module.losses(module.bank.generator(0, 0))
    losses["loss"].backward()
    grads = [p.grad for p in module.model.parameters() if p.grad is not None]
    assert len(grads) == len(list(module.model.parameters()))
    assert all(float(g.abs().max()) > 0 for g in grads[:3] + grads[-3:])
    with torch.no_grad():
        peak = module.model(module.mel(module.bank.audio[:1, :16 * 160])).abs().max()
    assert peak > 1e-2
