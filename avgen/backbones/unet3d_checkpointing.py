"""Gradient checkpointing for diffusers' ``UNet3DConditionModel`` (ModelScope / zeroscope).

diffusers refuses ``enable_gradient_checkpointing()`` for the UNet3D (``_supports_gradient_checkpointing
= False``) and its 3D blocks never read their ``gradient_checkpointing`` flag, yet TempoTokens trains
through the frozen UNet (its gradients reach the per-frame contexts) and needs the memory saving.
Here every layer the 3D blocks call one after the other (each ``ResnetBlock2D``,
``TemporalConvLayer``, spatial ``Transformer2DModel`` and ``TransformerTemporalModel``, the UNet's
``transformer_in`` included) runs under non-reentrant ``torch.utils.checkpoint``: its activations
are dropped after the forward pass and recomputed in the backward pass.

The layers are not replaced: each gets an instance ``forward`` that calls its class's ``forward``
through ``checkpoint``, so module names, ``state_dict`` keys and hooks stay as they are, and
:func:`disable_unet3d_checkpointing` removes the instance attribute. Checkpointing applies only while
gradients are recorded (``torch.is_grad_enabled()``); sampling under ``no_grad`` runs the plain
layers. Nothing here changes the train/eval mode: keep the frozen UNet in eval mode, because
upstream builds its ``TemporalConvLayer`` s with dropout 0.1 (recomputation replays the RNG state,
so gradients stay exact even with dropout on, but the frozen model was not meant to drop).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn
from torch.utils.checkpoint import checkpoint

# The layers the UNet3D blocks call in sequence; none contains another, so none is checkpointed twice.
CHECKPOINTED_LAYERS = (ResnetBlock2D, TemporalConvLayer, Transformer2DModel, TransformerTemporalModel)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's ``forward`` of ``self``, under non-reentrant checkpointing while gradients are recorded."""
    forward = type(self).forward.__get__(self)
    if torch.is_grad_enabled():
        # Non-reentrant: tensors inside kwargs (cross_attention_kwargs) get gradients too, and inputs
        # that do not require grad (the frozen UNet's own activations at the first layer) are allowed.
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpointed_layers(unet: nn.Module) -> list[nn.Module]:
    """The layers of ``unet`` that :func:`enable_unet3d_checkpointing` checkpoints, in module order."""
    return [module for module in unet.modules() if isinstance(module, CHECKPOINTED_LAYERS)]


def is_checkpointed(module: nn.Module) -> bool:
    """Whether ``module`` runs under checkpointing (its ``forward`` was patched by this module)."""
    patched = module.__dict__.get("forward")
    return getattr(patched, "__func__", None) is _checkpointed_forward


def enable_unet3d_checkpointing(unet: nn.Module) -> int:
    """Checkpoint every resnet, temporal convolution, spatial and temporal transformer of ``unet``
    (a ``UNet3DConditionModel``); returns how many layers are checkpointed. Calling it again is harmless."""
    layers = checkpointed_layers(unet)
    if not layers:
        raise ValueError(f"{type(unet).__name__} has none of the layers UNet3D checkpointing wraps "
                         f"({', '.join(cls.__name__ for cls in CHECKPOINTED_LAYERS)}); expected a UNet3DConditionModel")
    for layer in layers:
        layer.forward = types.MethodType(_checkpointed_forward, layer)
    return len(layers)


def disable_unet3d_checkpointing(unet: nn.Module) -> None:
    """Undo :func:`enable_unet3d_checkpointing`: every layer runs its class's ``forward`` again."""
    for layer in checkpointed_layers(unet):
        if is_checkpointed(layer):
            del layer.forward
