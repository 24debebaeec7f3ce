"""The mini twins' codecs against the tiny twins' random ones, on the same held-out clips, in one command.

Quality (``avgen.pretraining.evaluate_codecs`` on ``--clips`` synthetic clips of 2 s generated from seeds no training
run uses): frame PSNR (dB), mel L1 (natural-log mel), vocoder and VAE+vocoder onset F1 against the clips' events
(±1 video frame and ±50 ms) and log-spectral distance, plus the correlation of decoded with input frames and the
decoded audio's peak (the two numbers issue 22 started from: tiny −0.02 and 2e-8).

Cost: the wall time of encoding + decoding one clip (16 frames through the frame VAE; its log-mel through the mel
VAE and the vocoder), mini / tiny, medians of ``--repeats`` interleaved runs.

    .venv/bin/python benchmarks/mini_codecs.py [--clips 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def codecs(source: str, tiny_dir: Path):
    from diffusers import AutoencoderKL

    from avgen.backbones.audioldm import load_audio_codec
    from avgen.backbones.loader import resolve_source

    video = AutoencoderKL.from_pretrained(Path(resolve_source(f"{source}:animatediff", tiny_dir)) / "vae").eval()
    audio = load_audio_codec(f"{source}:audioldm", tiny_dir=tiny_dir)
    return {"frames_vae": video, "mel_vae": audio.vae, "vocoder": audio.vocoder}


def main() -> None:
    import torch

    from avgen.pretraining import evaluate_codecs, onsets_unmeasured
    from tests.test_mini_twins import HELD_OUT_SEEDS, bank_of_seeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    unmeasured = onsets_unmeasured("codecs")
    if unmeasured:  # the table's onset F1 columns
        raise SystemExit(f"mini_codecs.py: {unmeasured}")
    seeds = range(HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.start + args.clips)
    bank = bank_of_seeds(seeds)
    tolerances = {"1frame": 1 / 8, "50ms": 0.05}
    results, times = {}, {"tiny": [], "mini": []}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        models = {scale: codecs(scale, Path(tmp)) for scale in ("tiny", "mini")}
        for scale, m in models.items():
            results[scale] = evaluate_codecs(m, bank, tolerances)
        from avgen.backbones.audioldm import AudioLDMMel

        mel = AudioLDMMel()
        for _ in range(args.repeats):
            for scale, m in models.items():
                began = time.perf_counter()
                x = bank.frames[1].float().div(127.5).sub(1)
                m["frames_vae"].decode(m["frames_vae"].encode(x).latent_dist.mean)
                spec = mel(bank.audio[1:2]).unsqueeze(1)  # (1, 1, 200, 64): 200 frames divide by 4
                decoded = m["mel_vae"].decode(m["mel_vae"].encode(spec).latent_dist.mean).sample.squeeze(1)
                m["vocoder"](decoded)
                times[scale].append(time.perf_counter() - began)
    rows = [("frame PSNR (dB)", "frames_vae", "psnr_db"), ("frame correlation", "frames_vae", "correlation"),
            ("mel L1", "mel_vae", "mel_l1"), ("vocoder onset F1 ±1 frame", "vocoder", "onset_1frame_f1"),
            ("vocoder onset F1 ±50 ms", "vocoder", "onset_50ms_f1"), ("vocoder LSD", "vocoder", "lsd"),
            ("vocoder peak", "vocoder", "peak"), ("VAE+vocoder onset F1 ±1 frame", "mel_vae+vocoder",
                                                    "onset_1frame_f1"),
            ("VAE+vocoder LSD", "mel_vae+vocoder", "lsd")]
    print(f"{args.clips} held-out clips of 2 s (original audio onset F1 ±1 frame: "
          f"{results['mini']['reference']['onset_1frame_f1']:.3f})")
    print(f"{'':32s} {'tiny':>10s} {'mini':>10s}")
    for label, part, key in rows:
        values = [results[s][part].get(key) for s in ("tiny", "mini")]
        print(f"{label:32s} " + " ".join(f"{v:10.4g}" if v is not None else f"{'-':>10s}" for v in values))
    ratio = statistics.median(times["mini"]) / statistics.median(times["tiny"])
    print(f"encode + decode of one clip, mini / tiny: {ratio:.2f} (medians of {args.repeats})")
    print(json.dumps({"quality": results, "cost_ratio_mini_over_tiny": ratio}, default=float))


if __name__ == "__main__":
    main()
