"""Parity of avgen's MS-CLAP 2023 (HTSAT in transformers' ClapAudioModel, GPT2Model, msclap's Projection) with
msclap's own modules (hkchengrex/MS-CLAP@3ad265d = microsoft/CLAP@e8a6467), random weights.

Not part of ``make test``: it needs a checkout of MS-CLAP (``--ms-clap DIR``, the repository root) and builds the
full-size HTSAT (28 M parameters; a few seconds on 2 CPUs). msclap's ``AudioEncoder`` (``HTSATWrapper``: width 96,
depths [2, 2, 6, 2], heads [4, 8, 16, 32] from ``msclap/models/config.py``) and ``TextEncoder`` (over a tiny local
GPT-2, as ``AutoModel.from_pretrained`` loads it) are randomised, saved as ``{'model': state_dict}`` the way
``CLAPWrapper.load_clap`` reads the published file, and loaded by :func:`avgen.encoders.ms_clap.load_ms_clap`.
torchlibrosa is not installed here: its ``Spectrogram`` / ``LogmelFilterBank`` are stood in for by avgen's
torchlibrosa-layout modules (the same keys; so the front end itself is not compared, only that its tensors are read
from the file), ``SpecAugmentation`` (training only) by an identity. Checks: the audio embedding (HTSAT's
``latent_output`` through the projection) on two random 7-s clips at 44.1 kHz, and the caption embedding of msclap's
tokenisation (GPT-2 pooled at ``(ids != 0).sum() − 1``) of two captions, one with a ``!``. Measured 2026-11-30 with
torch 2.11 / transformers 5.23 (``PYTHONPATH=. python benchmarks/ms_clap_parity.py --ms-clap <checkout>``, the
checkout from ``git archive`` of 3ad265d): max |difference| 1.2e-6 (audio, embeddings up to 3.6) and 6e-7 (text).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn


def stub_torchlibrosa() -> None:
    from avgen.encoders.panns import LogMelFilterBank, PowerSpectrogram

    class Spectrogram(PowerSpectrogram):
        def __init__(self, n_fft, hop_length, win_length, window, center, pad_mode, freeze_parameters):
            super().__init__(n_fft, hop_length, center=center, pad_mode=pad_mode)

    class LogmelFilterBank(LogMelFilterBank):
        def __init__(self, sr, n_fft, n_mels, fmin, fmax, ref, amin, top_db, freeze_parameters):
            super().__init__(sr, n_fft, n_mels, fmin, fmax, ref=ref, amin=amin)

    class SpecAugmentation(nn.Identity):
        def __init__(self, **kwargs):
            super().__init__()

    package, stft, augmentation = (types.ModuleType(n) for n in ("torchlibrosa", "torchlibrosa.stft",
                                                                  "torchlibrosa.augmentation"))
    stft.Spectrogram, stft.LogmelFilterBank, augmentation.SpecAugmentation = Spectrogram, LogmelFilterBank, \
        SpecAugmentation
    sys.modules.update({"torchlibrosa": package, "torchlibrosa.stft": stft, "torchlibrosa.augmentation": augmentation})


def reference_modules(root: Path, scratch: Path):
    shutil.copytree(root / "msclap" / "models", scratch / "msclap_models")
    stub_torchlibrosa()
    sys.path.insert(0, str(scratch))
    from msclap_models.clap import AudioEncoder, TextEncoder

    return AudioEncoder, TextEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms-clap", type=Path, required=True, help="MS-CLAP repository root (3ad265d / e8a6467)")
    args = parser.parse_args()
    from transformers import GPT2Model

    from avgen.backbones.tiny import gpt2_tokenizer
    from avgen.encoders.ms_clap import load_ms_clap, tiny_ms_clap_configs

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        AudioEncoder, TextEncoder = reference_modules(args.ms_clap, scratch)
        gpt2 = scratch / "gpt2"  # msclap's TextEncoder tests 'gpt' in the name
        GPT2Model(tiny_ms_clap_configs(257)[1]).save_pretrained(gpt2)
        gpt2_tokenizer().save_pretrained(gpt2)
        audio = AudioEncoder("HTSAT", 768, 1024, 44100, 1024, 320, 64, 50, 8000, 527).eval()
        text = TextEncoder(1024, str(gpt2), 16).eval()
        with torch.no_grad():  # the zero/one initialisations of norms and biases would hide errors
            for module in (audio, text):
                for name, p in module.named_parameters():
                    if "logmel" not in name and "spectrogram" not in name:
                        p.add_(0.02 * torch.randn_like(p))
            bn = audio.base.htsat.bn0
            bn.running_mean.uniform_(-30, -10)
            bn.running_var.uniform_(50, 200)
        state = {**{f"audio_encoder.{k}": v for k, v in audio.state_dict().items()},
                 **{f"caption_encoder.{k}": v for k, v in text.state_dict().items()},
                 "logit_scale": torch.tensor(2.66)}
        torch.save({"model": state}, scratch / "CLAP_weights_2023.pth")
        ours = load_ms_clap(scratch / "CLAP_weights_2023.pth", gpt2)

        with torch.no_grad():
            wave = torch.randn(2, 308_700) * 0.1
            reference = audio(wave)[0]
            print("audio embedding max |difference|:", (reference - ours.audio_embeddings(wave)).abs().max().item(),
                  "of max", reference.abs().max().item())
            captions = ["a dog barks twice", "rain on a tin roof!"]
            tokens = [ours.tokens(c) for c in captions]
            reference = torch.cat([text({k: v for k, v in t.items()}) for t in tokens])
            print("text embedding max |difference|:", (reference - ours.text_embeddings(captions)).abs().max().item(),
                  "of max", reference.abs().max().item())


if __name__ == "__main__":
    main()
