"""PAM (Deshmukh et al. 2024, "PAM: Prompting Audio-Language Models for Audio Quality Assessment", arXiv 2402.00282,
INTERSPEECH 2024): a no-reference audio quality score, the probability MS-CLAP 2023 gives to the first of two opposing
prompts. VTA-LDM reports it in Table 1 (``PAM ↑``; ground truth 0.316).

Reproduced from the authors' code, soham97/PAM@ead6e7f (cited ``file:line``):

- prompts: ``PAM_PROMPTS = ['the sound is clear and clean.', 'the sound is noisy and with artifacts.']``
  (``PAM/PAM.py:21``), embedded by MS-CLAP's text tower as msclap does (``caption + ' <|endoftext|>'``, GPT-2, ``!``
  padding to 77, pooled at ``(ids != 0).sum() − 1``, projection; ``PAM/PAM.py:154-177``,
  ``PAM/models/clap.py:50-59``): :meth:`avgen.encoders.ms_clap.MsClap.text_embeddings`.
- model: ``CLAP_weights_2023.pth`` (``PAM/PAM.py:19-20``) loaded ``strict=False`` into msclap's CLAP
  (``PAM/PAM.py:97-99``); its HTSAT reads ``PAM/models/config.py`` (32-kHz mel matrix, 50–14 000 Hz), the yaml's
  audio settings being ignored (``PAM/models/htsat.py:928-942``), exactly as in av-benchmark's MS-CLAP (PAM's
  ``models/htsat.py`` and ``models/config.py`` are byte-identical to msclap@3ad265d's, its ``clap.py`` the same for
  GPT-2): the same :class:`~avgen.encoders.ms_clap.MsClap`, shared with ``clap_ms`` when both run.
- audio (``dataset.py:9-11,29-69``): ``torchaudio.load`` of the file, ``torchaudio.transforms.Resample(sr, 44100)``
  per channel, then ``reshape(-1)`` (a stereo file's channels one after the other, no mono mix, no DC removal); then
  7-s windows of 308 700 samples (:func:`pam_windows`).
- score (``PAM/PAM.py:184-207``): each window's audio embedding and the two prompt embeddings L2-normalised,
  ``similarity = exp(logit_scale) · text @ audio.T``, ``softmax`` over the two prompts, the first prompt's
  probability; a file's score is the mean over its windows, the reported number the mean over files
  (``run.py:27-33``). ``logit_scale`` is the checkpoint's (:attr:`MsClap.logit_scale`); a file without one keeps
  msclap's initial ``ln(1 / 0.07)`` (``PAM/models/clap.py:90``), as PAM's ``strict=False`` load would.

Where avgen departs: the similarities and the softmax are computed in float64 (PAM: float32; differences ~1e-7).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avgen.errors import ConfigError
from avgen.metrics.cosine import MeanCosine

SOURCE = "soham97/PAM@ead6e7f"
PROMPTS = ("the sound is clear and clean.", "the sound is noisy and with artifacts.")  # PAM/PAM.py:21
SAMPLE_RATE = 44_100           # dataset.py:9 RESAMPLE_RATE
SECONDS = 7                    # dataset.py:10 AUDIO_DURATION
WINDOW_SAMPLES = SAMPLE_RATE * SECONDS  # 308 700 (dataset.py:11 SAMPLES)
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)  # CLAP.logit_scale before training (PAM/models/clap.py:90)
WINDOWS = {
    "all": "every 7-s window: floor(S / 308700) consecutive windows, plus the last 308700 samples when S is not a "
           "multiple (they overlap the previous window); the clip's score is the mean over its windows (run.py, "
           "dataset.py:44-54 with repro=False, the README's folder evaluation)",
    "first": "the first 7 s only (dataset.py:40-43 with repro=True, the paper's reproduction in pcc.py)",
}
SHORT_RULE = "a clip of at most 7 s is repeated ceil(308700 / S) times and cut to 308700 samples (dataset.py:32-38)"


def check_windows(windows: str) -> str:
    """``windows`` when it is one of :data:`WINDOWS`.

    Raises:
        ConfigError: it is not (names ``evaluate.pam.windows``).
    """
    if windows not in WINDOWS:
        raise ConfigError(f"evaluate.pam.windows={windows!r}: expected one of {tuple(WINDOWS)} ({WINDOWS['all']}; "
                          f"{WINDOWS['first']})")
    return windows


def pam_windows(audio: Any, sample_rate: int, windows: str = "all") -> Tensor:
    """One audio file as PAM's ``AudioDataset`` feeds it (``dataset.py:29-69@ead6e7f``).

    Each channel is resampled to 44.1 kHz (``torchaudio.transforms.Resample``, skipped at 44.1 kHz) and the channels
    are concatenated (``reshape(-1)``); S samples then give:

    - S ≤ 308 700: one window, the audio repeated ``ceil(308700 / S)`` times and cut;
    - ``windows='all'``: ``floor(S / 308700)`` consecutive windows, plus the last 308 700 samples when
      ``S mod 308700 ≠ 0`` (overlapping the window before it);
    - ``windows='first'``: the first 308 700 samples.

    Args:
        audio: (S,) mono or (C, S) channels-first (``torchaudio.load``'s layout), any float, at ``sample_rate`` Hz.
        sample_rate: its rate (Hz).
        windows: ``all`` or ``first`` (:data:`WINDOWS`).

    Returns:
        (W, 308 700) float32 at 44.1 kHz, W ≥ 1 windows in time order.

    Raises:
        ConfigError: ``windows`` is neither (names ``evaluate.pam.windows``).
        ValueError: empty, non-finite or more than 2-D audio.
    """
    from avgen.encoders.audio_input import _resampler

    check_windows(windows)
    wave = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
    if wave.ndim not in (1, 2) or wave.numel() == 0 or not torch.isfinite(wave).all():
        raise ValueError(f"PAM takes finite (S,) or (C, S) audio, got shape {tuple(wave.shape)}")
    if sample_rate != SAMPLE_RATE:
        wave = _resampler(int(sample_rate), SAMPLE_RATE)(wave)
    wave = wave.reshape(-1)
    length = wave.shape[0]
    if length <= WINDOW_SAMPLES:
        return wave.repeat(math.ceil(WINDOW_SAMPLES / length))[:WINDOW_SAMPLES][None]
    if windows == "first":
        return wave[:WINDOW_SAMPLES][None]
    full = length // WINDOW_SAMPLES
    parts = list(wave[:full * WINDOW_SAMPLES].reshape(full, WINDOW_SAMPLES))
    if length % WINDOW_SAMPLES:
        parts.append(wave[-WINDOW_SAMPLES:])
    return torch.stack(parts)


def pam_probabilities(audio_embeddings: Tensor, text_embeddings: Tensor, logit_scale: float) -> Tensor:
    """PAM of each window (``PAM/PAM.py:184-202@ead6e7f``): ``softmax(exp(logit_scale) · cos(a, t_k))_k`` over the
    prompts, the first prompt's (``clear and clean``) probability.

    Args:
        audio_embeddings: (W, D) projected audio embeddings, not normalised.
        text_embeddings: (2, D) projected embeddings of :data:`PROMPTS`, in that order, not normalised.
        logit_scale: ln of the softmax's scale (the checkpoint's ``logit_scale``).

    Returns:
        (W,) float64 in (0, 1).

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); t = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    >>> [round(p, 6) for p in pam_probabilities(a, t, 0.0).tolist()]  # 1 / (1 + e^-1), 1 / (1 + e)
    [0.731059, 0.268941]
    """
    if audio_embeddings.ndim != 2 or text_embeddings.shape != (2, audio_embeddings.shape[1]):
        raise ValueError(f"pam_probabilities expects (W, D) audio and (2, D) prompt embeddings, got "
                         f"{tuple(audio_embeddings.shape)} and {tuple(text_embeddings.shape)}")
    audio = F.normalize(audio_embeddings.double(), dim=-1)
    text = F.normalize(text_embeddings.double(), dim=-1)
    similarity = math.exp(logit_scale) * audio @ text.T  # (W, 2)
    return torch.softmax(similarity, dim=1)[:, 0]


class PAMScore(MeanCosine):
    """PAM over clips: mean of the per-clip scores, each the mean PAM of the clip's 7-s windows (module docstring).
    States are the score sum and the clip count (float64, summed across processes).

    Args:
        clap: a loaded :class:`~avgen.encoders.ms_clap.MsClap` (the one ``clap_ms`` uses when both run).
        windows: ``all`` (PAM's ``run.py``) or ``first`` (the paper's reproduction): :func:`pam_windows`.
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "pam"

    def __init__(self, clap: torch.nn.Module, windows: str = "all", **kwargs: Any):
        super().__init__(clap, **kwargs)
        self.windows = check_windows(windows)
        scale = getattr(clap, "logit_scale", None)
        self.logit_scale = INITIAL_LOGIT_SCALE if scale is None else float(scale)
        self.logit_scale_source = "checkpoint" if scale is not None else "msclap's initial ln(1/0.07): not in the file"
        self._prompts: Tensor | None = None

    def prompt_embeddings(self) -> Tensor:
        """(2, D) embeddings of :data:`PROMPTS`, computed once."""
        if self._prompts is None:
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                self._prompts = self.model.text_embeddings(list(PROMPTS))
        return self._prompts

    def window_scores(self, audio: Any, sample_rate: int) -> Tensor:
        """PAM (W,) float64 of each 7-s window of one clip ((S,) or (C, S) at ``sample_rate`` Hz; :func:`pam_windows`).

        Raises:
            ValueError: audio the input rule refuses (empty, non-finite).
        """
        waves = pam_windows(audio, sample_rate, self.windows).to(self.device)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            sound = self.model.audio_embeddings(waves)
        return pam_probabilities(sound, self.prompt_embeddings(), self.logit_scale)

    def clip_scores(self, audio: Sequence[Any], sample_rate: int) -> Tensor:
        """Per-clip PAM (B,) float64: the mean over each clip's windows (``PAM/PAM.py:204-207``)."""
        return torch.stack([self.window_scores(clip, sample_rate).mean() for clip in audio])

    def update(self, audio: Sequence[Any], sample_rate: int) -> None:
        """Add B clips (see :meth:`clip_scores`)."""
        self.add_scores(self.clip_scores(audio, sample_rate))

    def describe(self) -> dict[str, Any]:
        """The protocol, the model file, the prompts, the input and window rules and the softmax scale, for
        ``metrics.json``."""
        from avgen.encoders.audio_input import RESAMPLER

        return {**self.model.describe(), "protocol": f"PAM, {SOURCE} (PAM/PAM.py:184-207, dataset.py:29-83, run.py)",
                "prompts": list(PROMPTS), "sample_rate": SAMPLE_RATE, "seconds": SECONDS, "windows": self.windows,
                "length_rule": f"the file's channels resampled to 44100 Hz and concatenated (no mono mix, no DC "
                               f"removal); {SHORT_RULE}; longer: {WINDOWS[self.windows]}",
                "resampler": RESAMPLER, "logit_scale": self.logit_scale, "logit_scale_source": self.logit_scale_source,
                "score": "softmax over the two prompts of exp(logit_scale) x cosine, probability of the first "
                         "(clear and clean); higher is better, in (0, 1)"}
