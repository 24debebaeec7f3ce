"""Parity of avgen's Synchformer with av-benchmark's own (hkchengrex/av-benchmark@050a5cd), random weights.

Not part of ``make test``: it needs a checkout of av-benchmark (``--av-benchmark DIR``, the repository root)
and builds the full-size reference (237 M parameters, ~1 GB, ~1 min on 2 CPUs). The reference imports timm
(only ``trunc_normal_`` / ``to_2tuple``: stubbed here) and a transformers-4 AST copy whose two transformers-5
incompatibilities (``find_pruneable_heads_and_indices``, ``get_head_mask``) are patched in a temporary copy.
Checks: identical state-dict keys and shapes; the audio tower on 2×3 segments, the sync transformer on one
14-segment window and the video tower on one segment, all with the reference's randomised weights loaded
strictly into avgen's model. Measured 2026-11-30 with torch 2.11: max |difference| 0.0, 6e-7, 0.0 (run with
PYTHONPATH=. from a worktree).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch


def reference_module(root: Path, scratch: Path):
    shutil.copytree(root / "av_bench" / "synchformer", scratch / "av_bench" / "synchformer")
    (scratch / "av_bench" / "__init__.py").write_text("")
    ast_file = scratch / "av_bench" / "synchformer" / "hf_src" / "modeling_ast.py"
    text = ast_file.read_text()
    text = text.replace("from transformers.pytorch_utils import find_pruneable_heads_and_indices, prune_linear_layer",
                        "find_pruneable_heads_and_indices = prune_linear_layer = None")
    text = text.replace("head_mask = self.get_head_mask(head_mask, self.config.num_hidden_layers)",
                        "head_mask = [None] * self.config.num_hidden_layers")
    ast_file.write_text(text)
    layers = types.ModuleType("timm.layers")
    layers.trunc_normal_ = lambda t, std=1.0, **_: torch.nn.init.trunc_normal_(t, std=std)
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    sys.modules.setdefault("timm", types.ModuleType("timm"))
    sys.modules["timm.layers"] = layers
    sys.path.insert(0, str(scratch))
    from av_bench.synchformer.synchformer import Synchformer as Reference

    return Reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--av-benchmark", type=Path, required=True, help="av-benchmark repository root (050a5cd)")
    args = parser.parse_args()
    from avgen.encoders.synchformer import Synchformer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        reference = reference_module(args.av_benchmark, Path(scratch))().eval()
    with torch.no_grad():
        for p in reference.parameters():  # the reference's zero/one initialisations would hide errors
            p.copy_(0.02 * torch.randn_like(p) + (1.0 if p.ndim == 1 and p.shape[0] == 768 else 0.0))
    ours = Synchformer()
    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        mel = torch.randn(2, 3, 66, 128)  # the reference's (B, S, T, F); avgen's (B, S, F, T)
        audio = reference.afeat_extractor(mel)[0] - ours.extract_afeats(mel.transpose(2, 3))
        print("audio tower:", audio.abs().max().item())
        v, a = torch.randn(1, 14, 8, 768), torch.randn(1, 14, 6, 768)
        print("sync transformer:", (reference.compare_v_a(v, a) - ours.compare_v_a(v, a)).abs().max().item())
        video = torch.rand(1, 1, 16, 3, 224, 224) * 2 - 1
        print("video tower:", (reference.extract_vfeats(video) - ours.extract_vfeats(video)).abs().max().item())


if __name__ == "__main__":
    main()
