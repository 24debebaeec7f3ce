"""``evaluate=vta_ldm_table1``: the preset composes and pins exactly the columns of VTA-LDM's Table 1 (FAD on VGGish,
IS, FD on PANNs, KL, PAM, CLAP on laion/clap-htsat-unfused, CAVP, AV-Align official), PAM sharing clap_ms's files."""

from __future__ import annotations

from avgen.evaluation.evaluate import EvaluateSettings
from tests.conftest import compose


def test_vta_ldm_table1_lists_exactly_the_tables_columns(tmp_path):
    default = compose(["command=evaluate"], tmp_path).evaluate
    vta = compose(["command=evaluate", "evaluate=vta_ldm_table1", "evaluate.clap_ms.path=/w/CLAP_weights_2023.pth",
                   "evaluate.clap_ms.text_model=/w/gpt2"], tmp_path).evaluate
    assert list(vta.metrics) == ["fad", "is", "fd_panns", "kl", "pam", "clap", "cavp", "av_align"]
    assert vta.fad.extractor == "vggish" and vta.clap.model == "laion/clap-htsat-unfused"
    assert list(vta.av_align.variants) == ["official"] and vta.pam.windows == "all"
    assert vta.pam.path == "/w/CLAP_weights_2023.pth" and vta.pam.text_model == "/w/gpt2"  # one MS-CLAP load
    assert vta.fd_panns.panns_path == vta.panns.path and vta.panns == default.panns and vta.cavp == default.cavp
    settings = EvaluateSettings.from_mapping(dict(vta))
    assert settings.options["fd_panns"] == {"panns_path": vta.panns.path, "sample_rate": 16000}
    assert settings.metrics == ("fad", "is", "fd_panns", "kl", "pam", "clap", "cavp", "av_align")
