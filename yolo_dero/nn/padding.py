"""TensorFlow-style "same" padding for strided operators (torch only).

PyTorch pads a strided convolution symmetrically (``k // 2`` on each side). TensorFlow Lite's ``SAME`` padding puts
``total // 2`` before and the rest after, where ``total = max((ceil(n / s) - 1) * s + k - n, 0)``: on an even input
a 3x3 stride-2 conv pads (0, 1), not (1, 1). The output sizes agree, but the windows are shifted by one pixel, so
an exporter must write PyTorch's padding as an explicit ``PAD`` operator, whose padded copy of the input lives
beside the input and raises peak memory on the microcontroller.

A model trained with :func:`to_same_padding` computes exactly what TFLite's ``SAME`` operators compute, so its
export can fold every ``PAD`` into the operator after it (:mod:`yolo_dero.mcu.rewrite`) and its arena needs no
padded copies. The change alters what the model computes: apply it before training, not to trained weights.
Stride-1 operators with odd kernels are already ``SAME`` and stay as they are.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["same_pads", "SamePad", "to_same_padding", "uses_same_padding"]


def same_pads(n: int, k: int, s: int, d: int = 1) -> Tuple[int, int]:
    """TensorFlow's ``SAME`` padding (before, after) of one spatial dimension of size ``n`` for kernel ``k``, stride
    ``s`` and dilation ``d``."""
    total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


class SamePad(nn.Module):
    """Pad an ``(N, C, H, W)`` input the way TFLite's ``SAME`` padding does for a ``k x k`` stride-``s`` window,
    with ``value`` (0 for convolutions and sum-pools, ``-inf`` for max-pools). The amounts depend on the input size,
    so the module works at any resolution."""

    def __init__(self, k: int, s: int, value: float = 0.0):
        super().__init__()
        self.k, self.s, self.value = k, s, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pads(int(x.shape[-2]), self.k, self.s)
        left, right = same_pads(int(x.shape[-1]), self.k, self.s)
        if not (top or bottom or left or right):
            return x
        # padded channels-last: the TFLite converter then sees an NHWC PAD before the NHWC operator and folds the
        # pair into the operator's SAME padding (an NCHW pad is exported as TRANSPOSE, PAD, TRANSPOSE instead)
        return F.pad(x.permute(0, 2, 3, 1), (0, 0, left, right, top, bottom), value=self.value).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"k={self.k}, s={self.s}" + (f", value={self.value}" if self.value else "")


class _SamePadHook:
    """A forward pre-hook that pads a foreign module's input (a stock ``nn.Conv2d``/``nn.MaxPool2d`` or a framework's
    conv block whose own padding was set to 0). A class, not a closure, so models with it still pickle."""

    def __init__(self, k: int, s: int, value: float = 0.0):
        self.pad = SamePad(k, s, value)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.pad(args[0]),) + tuple(args[1:])


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _needs_same(k, s, p) -> bool:
    """Whether a window with kernel ``k``, stride ``s`` and PyTorch padding ``p`` differs from ``SAME`` somewhere."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(s), _pair(p)
    return (sh > 1 or sw > 1) and (kh > 1 or kw > 1) and (ph, pw) == (kh // 2, kw // 2)


def _convert_leaf(module: nn.Module, hook_on: nn.Module) -> bool:
    """Set a strided conv's or max-pool's padding to 0 and pad its input ``SAME`` instead (a pre-hook on
    ``hook_on``)."""
    if isinstance(module, nn.Conv2d):
        if not _needs_same(module.kernel_size, module.stride, module.padding) or module.dilation != (1, 1):
            return False
        if module.kernel_size[0] != module.kernel_size[1] or module.stride[0] != module.stride[1]:
            raise ValueError(f"same padding needs square kernels and strides, got {module}")
        module.padding = (0, 0)
        hook_on.register_forward_pre_hook(_SamePadHook(module.kernel_size[0], module.stride[0]))
        hook_on.is_dero_operator = True  # the memory analyzer: the pad belongs to this operator (one group)
        return True
    if isinstance(module, nn.MaxPool2d):
        if not _needs_same(module.kernel_size, module.stride, module.padding) or module.ceil_mode:
            return False
        module.padding = 0
        hook_on.register_forward_pre_hook(_SamePadHook(_pair(module.kernel_size)[0], _pair(module.stride)[0],
                                                       float("-inf")))
        hook_on.is_dero_operator = True
        return True
    return False


def to_same_padding(model: nn.Module) -> nn.Module:
    """Make every strided operator of ``model`` pad like TFLite's ``SAME``, in place; returns ``model``.

    DERO units, folded units and DERO pools switch through their own ``use_same_padding()`` (the shortcut's sum-pool
    then reads the same padded input as the operator). A stock strided ``nn.Conv2d`` or ``nn.MaxPool2d`` gets a
    pre-hook that pads its input; Ultralytics' ``Conv`` block (``act(bn(conv(x)))``, with ``forward_fuse``) gets the
    hook on the block, so the padding survives Ultralytics folding the BatchNorm into a new conv. Apply it to a model
    before training (it changes what a trained model computes); the result is marked ``same_padding = True``.
    """
    handled = set()
    for m in model.modules():
        if id(m) in handled:
            continue
        if hasattr(m, "use_same_padding"):
            m.use_same_padding()
            handled.update(id(c) for c in m.modules())
        elif hasattr(m, "forward_fuse") and isinstance(getattr(m, "conv", None), nn.Conv2d):
            _convert_leaf(m.conv, m)  # Ultralytics' Conv block, act(bn(conv(x))): pad before the block
            handled.add(id(m.conv))
        elif isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            _convert_leaf(m, m)
    model.same_padding = True
    return model


def uses_same_padding(model: nn.Module) -> bool:
    """Whether ``model`` (or a part of it, e.g. a detector's layer list) was converted by :func:`to_same_padding`."""
    return any(getattr(m, "same_padding", False) for m in model.modules())
