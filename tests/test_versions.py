"""The torch/torchaudio pair check that runs when avgen is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from avgen._versions import check_torch_pair, library_versions


def test_matched_pair_passes():
    check_torch_pair("2.11.0+cu130", "2.11.0+cu130")
    check_torch_pair("2.11.0", "2.11.1")


def test_mismatch_names_both_versions_and_the_fix():
    with pytest.raises(SystemExit) as err:
        check_torch_pair("2.13.0+cpu", "2.11.0")
    msg = str(err.value)
    assert "torch 2.13.0+cpu" in msg and "torchaudio 2.11.0" in msg
    assert "pip install 'torch==2.11.0' 'torchaudio==2.11.0'" in msg


def test_import_stops_on_a_mismatched_environment():
    code = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda n: '2.13.0' if n == 'torch' else real(n); import avgen")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "torch and torchaudio do not match" in proc.stderr


def test_installed_environment_is_a_matched_pair():
    versions = library_versions()
    assert versions["torch"].split("+")[0].split(".")[:2] == versions["torchaudio"].split("+")[0].split(".")[:2]
