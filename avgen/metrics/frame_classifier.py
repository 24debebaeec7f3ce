"""Does a generated frame show what its prompt asked for? A small frame classifier trained on real frames.

The synthetic scenes' captions name the object's colour and shape (:func:`avgen.data.synthetic.caption_attributes`).
:func:`train_frame_classifier` fits a small CNN (:class:`FrameAttributeClassifier`) to recognise both from single
real frames; :func:`prompt_agreement` then asks it, for each generated clip, which colour and shape its frames show
(the class with the largest mean log-probability over the clip's frames) and counts how often that is the one the
prompt named, with a one-sided exact binomial test against chance (1 / number of classes; scipy's ``binomtest``).
The classifier's accuracy on held-out real clips (:func:`prompt_agreement` of real clips) is its own ceiling.

Used by ``python -m avgen pretrain-twins part=generators`` (:mod:`avgen.pretraining`) and by the mini benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from avgen.data.synthetic import COLOURS, SHAPES, caption_attributes

#: attribute → its classes, in the classifier's output order
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES}


class FrameAttributeClassifier(nn.Module):
    """A 4-layer CNN over an RGB frame ``(B, 3, H, W)`` float in [-1, 1] (any H, W ≥ 8): one logit head per attribute
    of :data:`ATTRIBUTES` (``{"colour": (B, 8), "shape": (B, 3)}``)."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            if out == 2 * width or len(layers) == 3:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())  # the object is small: max
        self.heads = nn.ModuleDict({name: nn.Linear(channels, len(classes)) for name, classes in ATTRIBUTES.items()})

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(frames)
        return {name: head(h) for name, head in self.heads.items()}


def attribute_labels(captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Class indices (int64 ``(N,)`` per attribute) of the colour and shape each caption names.

    Raises:
        ValueError: a caption that is not a synthetic_hits caption.
    """
    parsed = [caption_attributes(c) for c in captions]
    return {name: torch.tensor([classes.index(p[name]) for p in parsed]) for name, classes in ATTRIBUTES.items()}


def train_frame_classifier(frames: torch.Tensor, captions: Sequence[str], steps: int = 600, batch_size: int = 64,
                           lr: float = 2e-3, seed: int = 0) -> FrameAttributeClassifier:
    """Fit :class:`FrameAttributeClassifier` to real clips: ``frames`` uint8 ``(N, F, 3, H, W)``, ``captions`` (N,).

    Each step draws ``batch_size`` frames uniformly over clips and times (from a generator seeded by ``seed``, the
    weights too: the result is a function of the inputs), cross-entropy summed over the attributes, AdamW at ``lr``.
    Gradients are on whatever the caller's mode (an evaluation under ``torch.no_grad`` may train it). Returns the
    classifier in eval mode.
    """
    with torch.enable_grad():
        return _train(frames, captions, steps, batch_size, lr, seed)


def _train(frames, captions, steps, batch_size, lr, seed) -> FrameAttributeClassifier:
    labels = attribute_labels(captions)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FrameAttributeClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    n, per_clip = frames.shape[:2]
    for _ in range(steps):
        pick = torch.randint(n * per_clip, (batch_size,), generator=generator)
        x = frames.flatten(0, 1)[pick].float().div(127.5).sub(1.0)
        logits = model(x)
        loss = sum(nn.functional.cross_entropy(logits[k], labels[k][pick // per_clip]) for k in ATTRIBUTES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def prompt_agreement(classifier: FrameAttributeClassifier, frames: torch.Tensor, captions: Sequence[str]
                     ) -> dict[str, dict[str, Any]]:
    """How often the clips ``frames`` (uint8 ``(N, F, 3, H, W)``) show the colour and shape their ``captions`` name.

    Per attribute: ``accuracy`` (fraction of clips whose predicted class, the argmax of the mean log-probability over
    the clip's frames, is the named one), ``correct``, ``clips``, ``chance`` (1 / classes) and ``p_value`` (exact
    one-sided binomial test of ``correct`` out of ``clips`` against ``chance``, scipy's ``binomtest``; None where
    scipy is not installed, as on a GPU node without it).
    """
    from avgen._lazy import module_available

    binomtest = None
    if module_available("scipy"):
        from scipy.stats import binomtest

    labels = attribute_labels(captions)
    n, per_clip = frames.shape[:2]
    logits = classifier(frames.flatten(0, 1).float().div(127.5).sub(1.0))
    out = {}
    for name, classes in ATTRIBUTES.items():
        mean = logits[name].log_softmax(-1).unflatten(0, (n, per_clip)).mean(1)
        correct = int((mean.argmax(-1) == labels[name]).sum())
        chance = 1.0 / len(classes)
        out[name] = {"accuracy": correct / n, "correct": correct, "clips": n, "chance": chance,
                     "p_value": None if binomtest is None
                     else float(binomtest(correct, n, chance, alternative="greater").pvalue)}
    return out
