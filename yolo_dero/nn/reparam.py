"""Structural re-parameterization: a trained DERO unit folded into one convolution (torch only).

A unit in the re-parameterizable form computes ``act(A(x))`` where ``A`` is affine in ``x`` at inference:
the branch ``bn(conv(bn_in(pad(x))))`` (BatchNorms with running statistics) plus the shortcut ``bn_sc(S(x))``,
and ``S`` is a fixed linear map: a sum-pool is a convolution with a kernel of ones, zero-padding and folding
channels are fixed channel maps. So ``A`` is one convolution with the operator's kernel, stride and padding
(a strided 1x1 becomes an ``s x s`` stride-``s`` convolution, the window of its ceil-mode sum-pool), and the unit
is ``act(conv'(x))``: after :func:`reparameterize` the network *is* a plain network.

The fold is exact (up to float rounding) only where it really is affine: a unit with the activation on the branch,
a shortcut and a non-linear activation cannot be folded, nor can ``bn_in`` in front of a conv that zero-pads
*after* it (its border pixels would differ). Such units raise :class:`NotFoldableError` naming the reason.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dero import DeroPool, DeroUnit, FixedGain, Shortcut

#: per-layer bookkeeping that frameworks attach to top-level layers and read in forward (Ultralytics: layer index
#: ``i``, input index ``f``, ``type``, parameter count ``np``); a folded layer carries it over
LAYER_ATTRIBUTES = ("i", "f", "type", "np")

__all__ = ["FoldedUnit", "NotFoldableError", "fold_unit", "reparameterize", "bn_affine", "fold_input_norm",
           "fold_reason", "shortcut_kernel"]


class NotFoldableError(ValueError):
    """A unit that has no exact single-convolution form."""


class FoldedUnit(nn.Module):
    """A folded DERO unit: ``act(conv(x))``, with right/bottom zero-padding to a multiple of ``pad_to`` first
    (only a strided 1x1 unit needs it: its ceil-mode shortcut window covers a partial last row/column), or the
    unit's TFLite-style ``same_pad``.

    Counts as one operator for the memory analyzer, as the unit did.
    Shapes: those of the unit it replaces.
    """

    is_dero_operator = True

    def __init__(self, conv: nn.Conv2d, act: nn.Module, pad_to: int = 1, same_pad: Optional[nn.Module] = None):
        super().__init__()
        self.conv, self.act, self.pad_to, self.same_pad = conv, act, pad_to, same_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad is not None:  # a unit trained with TFLite-style SAME padding (yolo_dero.nn.padding)
            x = self.same_pad(x)
        if self.pad_to > 1:
            ph, pw = (-x.shape[-2]) % self.pad_to, (-x.shape[-1]) % self.pad_to
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        return self.act(self.conv(x))


def bn_affine(bn: nn.Module, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of an inference BatchNorm (running statistics; gamma 1 and beta 0 without affine
    parameters); identity for ``nn.Identity``, its gain for a :class:`~yolo_dero.nn.dero.FixedGain`."""
    if isinstance(bn, (nn.Identity, FixedGain)):
        gain = bn.gain if isinstance(bn, FixedGain) else 1.0
        return torch.full((channels,), gain, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
        raise NotFoldableError(f"{type(bn).__name__} is not an affine BatchNorm with running statistics")
    weight = bn.weight.detach().double() if bn.weight is not None else 1.0  # affine=False: gamma 1, beta 0
    bias = bn.bias.detach().double() if bn.bias is not None else 0.0
    scale = weight / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bias - bn.running_mean.double() * scale


def folded_on_cpu(fold: Callable[[nn.Module], nn.Module], module: nn.Module) -> nn.Module:
    """``fold(module)`` computed on the CPU and moved to ``module``'s device. The folds build their index, identity
    and border tensors on the CPU, so a model on a GPU (Ultralytics fuses its model on the training device before
    validating) folds a CPU copy of each unit; ``module`` itself is left where it is."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    if tensor is None or tensor.device.type == "cpu":
        return fold(module)
    return fold(copy.deepcopy(module).cpu()).to(tensor.device)


def _is_linear(act: nn.Module) -> bool:
    return isinstance(act, nn.Identity)


def fold_reason(unit: DeroUnit) -> Optional[str]:
    """Why ``unit`` cannot be folded exactly into one convolution, or None if it can."""
    if unit.act_linearity:
        return (f"its activation is still blended with the identity (act_linearity {unit.act_linearity:g}): "
                "finish the activation anneal (train past --act-anneal-epochs) or set it to 0")
    if unit.shortcut is not None and not unit.act_after_add and not _is_linear(unit.act):
        return "its activation sits on the branch, before the add (build it with act_after_add, e.g. style 'rep')"
    conv = unit.conv
    if isinstance(unit.bn_in, nn.BatchNorm2d) and any(conv.padding):
        return ("its conv zero-pads after bn_in, so border pixels would differ "
                "(build it with act_after_add, which pads before bn_in)")
    if conv.padding_mode != "zeros" or conv.dilation != (1, 1):
        return "its conv is dilated or not zero-padded"
    if unit.shortcut is not None and conv.groups != 1 and not conv.groups == unit.c_in == unit.c_out:
        return "its shortcut would cross the groups of its grouped conv (only groups=1 and depthwise fold)"
    return None


def fold_input_norm(conv: nn.Conv2d, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias (float64) of ``conv(bn(.))`` as one convolution, ``bn`` an inference BatchNorm (or Identity)
    on the conv's input. Exact only where the conv does not zero-pad ``bn``'s output (see :func:`fold_reason`)."""
    w = conv.weight.detach().double()                      # (c_out, c_in / groups, kh, kw)
    c_out, cg = w.shape[:2]
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(c_out, dtype=torch.float64)
    a_in, t_in = bn_affine(bn, conv.in_channels)
    # input channel read by weight[o, j]: group(o) * cg + j
    idx = (torch.arange(c_out) // (c_out // conv.groups)).view(-1, 1) * cg + torch.arange(cg).view(1, -1)
    return w * a_in[idx][:, :, None, None], b + (w * t_in[idx][:, :, None, None]).sum(dim=(1, 2, 3))


def _branch(unit: DeroUnit) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias (float64) of ``bn(conv(bn_in(.)))`` (plus RepVGG's 1x1 branch) as one convolution on the
    (padded) input."""
    w, b = fold_input_norm(unit.conv, unit.bn_in)
    a_out, t_out = bn_affine(unit.bn, w.shape[0])
    w, b = w * a_out.view(-1, 1, 1, 1), b * a_out + t_out
    if unit.branch_1x1 is not None:  # RepVGG's 1x1 branch: the centre tap of the kxk window
        conv_1x1, bn_1x1 = unit.branch_1x1
        a1, t1 = bn_affine(bn_1x1, w.shape[0])
        w = w.clone()
        w[:, :, w.shape[2] // 2, w.shape[3] // 2] += conv_1x1.weight.detach().double()[:, :, 0, 0] * a1.view(-1, 1)
        b = b + t1
    return w, b


def shortcut_kernel(sc: Shortcut, weight_shape: torch.Size, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``bn_sc(S(.))`` as a kernel of ``weight_shape`` (float64) and a bias; ``S`` adds ``coefficient * x[i]`` to
    output ``o`` for every term of ``sc.channel_map()``, summed over its window."""
    c_out, cg, kh, kw = weight_shape
    k = torch.zeros(weight_shape, dtype=torch.float64)
    for i, o, coefficient in sc.channel_map():
        j = i if groups == 1 else 0  # depthwise: weight[o, 0] reads input channel o == i
        if sc.s > 1:
            k[o, j] += coefficient  # sum-pool: every position of the window
        else:
            k[o, j, kh // 2, kw // 2] += coefficient  # stride 1: the centre tap (shapes match, so padding = k // 2)
    d, e = bn_affine(sc.bn, c_out)
    return k * d.view(-1, 1, 1, 1), e


@torch.no_grad()
def fold_unit(unit: DeroUnit) -> FoldedUnit:
    """The trained ``unit`` (inference statistics) as one convolution plus its activation.

    Raises :class:`NotFoldableError` where no exact fold exists (see :func:`fold_reason`).
    """
    reason = fold_reason(unit)
    if reason:
        raise NotFoldableError(f"this DERO unit cannot be folded into one convolution: {reason}")
    conv = unit.conv
    w, b = _branch(unit)
    stride, padding, pad_to = conv.stride, unit.pad + conv.padding[0], 1
    sc = unit.shortcut
    if sc is not None and sc.ceil_mode:  # strided 1x1: an s x s stride-s window
        s = sc.s
        grown = torch.zeros(w.shape[:2] + (s, s), dtype=torch.float64)
        grown[:, :, 0, 0] = w[:, :, 0, 0]  # the 1x1 conv reads the window's top-left pixel
        w, padding, pad_to = grown, 0, s
    if sc is not None:
        k, e = shortcut_kernel(sc, w.shape, conv.groups)
        w, b = w + k, b + e
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(w.shape[-2:]), stride, padding,
                       groups=conv.groups, bias=True).to(conv.weight.device)
    folded.weight.copy_(w.to(conv.weight.dtype))
    folded.bias.copy_(b.to(conv.weight.dtype))
    return FoldedUnit(folded, unit.act, pad_to, unit.same_pad)


def reparameterize(model: nn.Module, strict: bool = True, keep_attributes: Sequence[str] = LAYER_ATTRIBUTES,
                   select: Optional[Callable[[nn.Module], bool]] = None) -> nn.Module:
    """Fold every DERO unit of ``model`` into one convolution, in place, and return ``model``.

    Uses the BatchNorms' running statistics: call it on a trained model, for inference and export (training the
    result trains a plain network). Pools without a shortcut become the bare pool. ``strict=True`` raises
    :class:`NotFoldableError` naming the first unit that cannot be folded exactly; ``strict=False`` leaves such
    units as they are (e.g. ``fuse()`` on a model of the seed's form). ``keep_attributes``: attributes a framework
    attached to the replaced modules that the replacements must carry (default :data:`LAYER_ATTRIBUTES`).
    ``select``: only units and pools for which it returns True are considered (e.g. only re-parameterizable units).
    """

    def replace(parent: nn.Module, name: str, old: nn.Module, new: nn.Module) -> None:
        for key in keep_attributes:
            if hasattr(old, key):
                setattr(new, key, getattr(old, key))
        setattr(parent, name, new)

    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            where = f"{parent_name}.{name}" if parent_name else name
            if select is not None and not select(child):
                continue
            if isinstance(child, DeroUnit):
                if fold_reason(child) is None:
                    replace(parent, name, child, folded_on_cpu(fold_unit, child))
                elif strict:
                    raise NotFoldableError(f"{where}: cannot be folded into one convolution: {fold_reason(child)}")
            elif isinstance(child, DeroPool):
                if child.shortcut is None:
                    replace(parent, name, child, child.pool if child.same_pad is None
                            else nn.Sequential(child.same_pad, child.pool))
                elif strict:
                    raise NotFoldableError(f"{where}: a pool with a shortcut is not one operator "
                                           "(build the model with a style whose pools are plain, e.g. 'rep')")
    return model
