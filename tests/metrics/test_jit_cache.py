"""``make setup``'s warm-up of librosa's numba kernels runs the onset paths avgen's metrics use."""

from __future__ import annotations

from avgen.metrics.jit_cache import main, warm


def test_warm_up_runs_the_onset_paths_on_both_dtypes(capsys):
    # the three clicks of its signal are found by the onset-accuracy detector, on float32 and float64 input
    assert warm() == ["float32: 3 onsets", "float64: 3 onsets"]
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("numba cache of librosa's kernels ready (float32: 3 onsets")
