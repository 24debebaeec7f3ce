"""avgen: audio-visual generation research framework (TempoTokens, VTA-LDM, joint SVG baseline)."""

import os as _os

from avgen._versions import check_torch_pair as _check_torch_pair

# Set AVGEN_SKIP_VERSION_CHECK=1 only to debug an environment; mismatched pairs crash later anyway.
if _os.environ.get("AVGEN_SKIP_VERSION_CHECK") != "1":
    _check_torch_pair()

__version__ = "0.1.0"


def __getattr__(name: str):
    """``avgen.from_pretrained`` (:func:`avgen.pipelines.from_pretrained`), imported on first use so that
    ``import avgen`` stays light."""
    if name == "from_pretrained":
        from avgen.pipelines import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'avgen' has no attribute {name!r}")
