"""Model size and cost: parameter count and multiply-accumulates (MACs) of one forward pass."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Union[int, Sequence[int]] = 224) -> int:
    """MACs of one image through ``model``, counting ``Conv2d`` and ``Linear`` layers only.

    This is the convention of the MCUNet/MobileNet papers: BatchNorm, activations, pooling, adds and
    biases are not counted. ``input_size`` is ``H`` (square), ``(H, W)`` or ``(C, H, W)`` (C defaults to 3).
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    shape = tuple(input_size) if len(input_size) == 3 else (3, *input_size)

    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        # every output element is a dot product over (c_in / groups) * kh * kw inputs
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
