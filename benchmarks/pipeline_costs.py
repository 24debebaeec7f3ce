"""What a shared model costs against the checkpoint it came from, as ratios measured in one command.

For each system (joint, TempoTokens, VTA-LDM) at ``scale=tiny`` (trained 2 steps on tiny synthetic shards):

1. loading: ``avgen.from_pretrained(<export>)`` (JSON + safetensors, SHA-256 checked) vs ``load_system(<ckpt>)``,
   the loader of ``python -m avgen sample``; target ≈ 1 (the frozen parts dominate both);
2. generating: ``pipe(...)`` + ``out.save(...)`` vs ``sample_to_files`` of the same inputs, seed and steps;
   target ≈ 1 (the same generation code; the pipeline adds input checks and a progress hook);
3. size: the export folder's bytes vs the checkpoint's (the checkpoint also holds the optimizer state).

Each timing is the median of ``--repeats`` runs, both sides interleaved.

    .venv/bin/python benchmarks/pipeline_costs.py [--repeats 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EXPERIMENTS = {"joint": "joint_cmcpe", "tempotokens": "tempotokens_vggsound", "vta_ldm": "vta_ldm"}
CLIP = {"seconds": 1.0, "fps": 8, "height": 32, "width": 32, "sample_rate": 16000}


def train(system: str, root: Path, shards: Path) -> Path:
    from avgen.commands import run_command
    from tests.conftest import compose

    run = root / system
    run_command(compose(["command=fit", f"experiment={EXPERIMENTS[system]}", "scale=tiny", f"data.root={shards}",
                         "data.auto_prepare=false", "trainer.max_steps=2", "trainer.limit_val_batches=0",
                         "model.validation.samples=0", "model.ema_decay=0.9"], run, run_dir=run / "run"))
    return run / "run" / "checkpoints" / "last.ckpt"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import numpy as np

    import avgen
    from avgen.commands import load_system
    from avgen.data.synthetic_prepare import prepare_synthetic_hits
    from avgen.export import export_pipeline
    from avgen.media import write_mp4, write_wav

    with tempfile.TemporaryDirectory(prefix="avgen-bench-") as scratch:
        root = Path(scratch)
        shards = root / "data"
        prepare_synthetic_hits(str(shards), CLIP, clips={"train": 8, "val": 2, "test": 2}, clips_per_shard=4,
                               preview=0, workers=1)
        t = np.arange(16000) / 16000
        wave = (0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-4 * (t % 0.25))).astype(np.float32)
        audio = write_wav(root / "in.wav", wave, 16000)
        frames = np.zeros((12, 32, 32, 3), np.uint8)
        frames[:, :, ::4] = 200
        video = write_mp4(root / "in.mp4", frames, 8, audio=wave[:12000], sample_rate=16000)
        inputs = {"joint": ({"prompt": ["a red ball bounces", "a blue cube falls"]},
                            {"n": 2, "prompt": ["a red ball bounces", "a blue cube falls"]}),
                  "tempotokens": ({"audio": str(audio)}, {"audio": str(audio)}),
                  "vta_ldm": ({"video": str(video)}, {"video": str(video)})}
        rows = [f"{'system':<12} {'load export/ckpt':>17} {'generate pipe/sample':>21} {'size export/ckpt':>17}"]
        for system in EXPERIMENTS:
            ckpt = train(system, root, shards)
            export = export_pipeline(ckpt, root / f"{system}_export")
            tiny_dir = root / "tiny"
            loads: dict[str, list[float]] = {"export": [], "ckpt": []}
            runs: dict[str, list[float]] = {"pipe": [], "sample": []}
            for k in range(args.repeats):
                start = time.perf_counter()
                pipe = avgen.from_pretrained(export, device="cpu", tiny_dir=tiny_dir)
                loads["export"].append(time.perf_counter() - start)
                start = time.perf_counter()
                model, _ = load_system(ckpt)
                loads["ckpt"].append(time.perf_counter() - start)
                call, sample = inputs[system]
                start = time.perf_counter()
                out = pipe(steps=args.steps, seed=k, **call)
                out.save(root / f"{system}_pipe_{k}")
                runs["pipe"].append(time.perf_counter() - start)
                start = time.perf_counter()
                model.sample_to_files(root / f"{system}_sample_{k}", steps=args.steps, seed=k, device="cpu", **sample)
                runs["sample"].append(time.perf_counter() - start)
            load_ratio = statistics.median(loads["export"]) / statistics.median(loads["ckpt"])
            run_ratio = statistics.median(runs["pipe"]) / statistics.median(runs["sample"])
            size_ratio = folder_bytes(export) / ckpt.stat().st_size
            rows.append(f"{system:<12} {load_ratio:>17.2f} {run_ratio:>21.2f} {size_ratio:>17.2f}")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
