"""Eager inference fusion for every DERO unit, the seed's form included (torch only).

A unit of the re-parameterizable form folds into one convolution (:mod:`yolo_dero.nn.reparam`). A unit of the
seed's form, ``act(conv(bn_in(x))) + bn_sc(S(x))``, cannot: its activation sits between the branch and the add.
What can still go is every BatchNorm pass:

* ``bn_in`` folds into the conv's weights and bias. The conv zero-pads ``bn_in(x)``, not ``x``, so the folded conv
  is off at the border by a fixed map (the conv of ``bn_in``'s shift over the padding ring); that map depends only
  on the input size, is computed once per size, and is added to the border rows and columns alone;
* ``bn_sc`` becomes a per-channel scale and shift applied while the shortcut is accumulated, in place, into the
  activation's output; an identity shortcut is a plain in-place add.

So the fused unit runs one convolution, one in-place activation and one in-place accumulate: the plain layer's
work plus the shortcut's single read of ``x``.
"""

from __future__ import annotations

import copy
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dero import DeroPool, DeroUnit, Shortcut, fold_channels
from .reparam import (LAYER_ATTRIBUTES, bn_affine, fold_input_norm, fold_reason, fold_unit, folded_on_cpu,
                      shortcut_kernel)

__all__ = ["FusedUnit", "FusedPool", "fuse_units"]


def _exporting() -> bool:
    """Whether a tracer or compiler is capturing the graph (then every op is out of place). TorchScript/ONNX export
    traces; ``torch.export`` and ``torch.compile`` compile. Called in every forward, so only the cheap checks."""
    return Shortcut.exportable or torch.jit.is_tracing() or torch.compiler.is_compiling()


def _inplace(act: nn.Module) -> nn.Module:
    """A copy of ``act`` that works in place where the module supports it (ReLU, ReLU6, SiLU, Hardswish)."""
    if hasattr(act, "inplace"):
        act = copy.copy(act)
        act.inplace = True
    return act


class _FusedShortcut(nn.Module):
    """``bn_sc(S(x))`` accumulated into ``y`` in place.

    A strided sum-pool runs as a depthwise convolution with ``bn_sc``'s scale in its kernel and its shift in its
    bias (PyTorch's sum-pool, ``avg_pool2d`` with ``divisor_override``, is several times slower on CPU); a stride-1
    shortcut is an in-place add, or multiply-add with ``bn_sc``. A signed channel map (``shrink="signed"``) runs
    as one convolution whose kernel holds its +-1 terms and ``bn_sc``.
    """

    def __init__(self, sc: Shortcut):
        super().__init__()
        self.c_in, self.c_out, self.k, self.s, self.p, self.ceil_mode = \
            sc.c_in, sc.c_out, sc.k, sc.s, sc.p, sc.ceil_mode
        self.slice = sc.shrink == "slice"  # S keeps the first c_out channels: the rest is an identity shortcut
        if self.slice:
            self.c_in = sc.c_out
        self.normed = not isinstance(sc.bn, nn.Identity)  # a BatchNorm or a fixed gain
        self.dense = sc.shrink == "signed"  # a signed map runs as one convolution with its +-1 kernel and bn_sc
        if self.dense:
            k = sc.k if sc.s > 1 else 1
            weight, bias = shortcut_kernel(sc, torch.Size((sc.c_out, sc.c_in, k, k)), 1)
            self.register_buffer("dense_weight", weight.float())
            self.register_buffer("dense_bias", bias.float())
            self.dense_padding = sc.p if sc.s > 1 else 0
            return
        scale, shift = bn_affine(sc.bn, sc.c_out)
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))
        if self.s > 1:
            # input channel i lands on output channel i % c_out (fold) or i (growth); bn_sc's shift is added once
            # per output channel, by the first input channel that lands there
            out = torch.arange(self.c_in) % self.c_out
            self.register_buffer("pool_weight", scale[out].float().view(-1, 1, 1, 1).repeat(1, 1, self.k, self.k))
            bias = torch.where(torch.arange(self.c_in) < self.c_out, shift[out], torch.zeros(()))
            self.register_buffer("pool_bias", bias.float())

    def forward(self, y: torch.Tensor, x: torch.Tensor, exporting: bool = False) -> torch.Tensor:
        if self.ceil_mode:  # a strided 1x1's window covers a partial last row/column
            x = F.pad(x, (0, (-x.shape[-1]) % self.s, 0, (-x.shape[-2]) % self.s))
        if self.dense:
            x = F.conv2d(x, self.dense_weight, self.dense_bias, self.s, self.dense_padding)
            return y + x if exporting else y.add_(x)
        if self.slice:
            x = x[:, :self.c_out]
        c = min(self.c_in, self.c_out)
        if self.s > 1:
            x = F.conv2d(x, self.pool_weight, self.pool_bias, self.s, self.p, groups=self.c_in)
        if self.c_in > self.c_out:
            x = fold_channels(x, self.c_out)
        if exporting:
            if self.s == 1 and self.normed:
                x = x * self.scale[:, :c] + self.shift[:, :c]
            if c < self.c_out:
                pad = self.shift[:, c:] if self.normed else torch.zeros_like(self.shift[:, c:])
                x = torch.cat([x, pad.expand(x.shape[0], -1, x.shape[2], x.shape[3])], 1)
            return y + x
        target = y if c == self.c_out else y[:, :c]  # zero-padded channels get bn_sc's shift alone
        if self.s > 1 or not self.normed:
            target.add_(x)
        else:
            target.addcmul_(x, self.scale[:, :c]).add_(self.shift[:, :c])
        if self.normed and c < self.c_out:
            y[:, c:].add_(self.shift[:, c:])
        return y

    def extra_repr(self) -> str:
        return f"{self.c_in}->{self.c_out}, s={self.s}, normed={self.normed}"


class FusedUnit(nn.Module):
    """A DERO unit of the seed's form fused for inference: ``act(conv'(x) + border) + scale * S(x) + shift``.

    ``conv'`` is the unit's conv with ``bn_in`` (or the post-conv BatchNorm) folded in; ``border`` corrects the
    output rows and columns whose window reads the conv's zero padding (see the module docstring). Exact up to
    float rounding, for inference only (BatchNorms frozen at their running statistics). Counts as one operator for
    the memory analyzer, as the unit did.
    Shapes: those of the unit it replaces.
    """

    is_dero_operator = True

    def __init__(self, unit: DeroUnit):
        super().__init__()
        if unit.act_linearity:
            raise ValueError(f"cannot fuse a unit whose activation is still blended with the identity "
                             f"(act_linearity {unit.act_linearity:g}): finish the activation anneal first")
        conv = unit.conv
        w, b = fold_input_norm(conv, unit.bn_in)
        a_out, t_out = bn_affine(unit.bn, conv.out_channels)
        w, b = w * a_out.view(-1, 1, 1, 1), b * a_out + t_out
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              groups=conv.groups, bias=True).to(conv.weight.device)
        with torch.no_grad():
            self.conv.weight.copy_(w.to(conv.weight.dtype))
            self.conv.bias.copy_(b.to(conv.weight.dtype))
        self.conv.requires_grad_(False)
        self.act, self.act_out_of_place = _inplace(unit.act), unit.act
        self.shortcut = _FusedShortcut(unit.shortcut) if unit.shortcut is not None else None
        self.same_pad = unit.same_pad  # TFLite-style SAME padding, before everything (the conv then has none)
        # the border map: only where bn_in has a shift and the conv zero-pads its output. Per output channel, each
        # kernel tap that reads padding misses sum_c w[o, c, u, v] * shift[c] (times the post-conv BatchNorm's scale)
        _, t_in = bn_affine(unit.bn_in, conv.in_channels)
        self.has_border = isinstance(unit.bn_in, nn.BatchNorm2d) and any(conv.padding) and bool(t_in.abs().sum() > 0)
        if self.has_border:
            w_out = conv.weight.detach().double() * a_out.view(-1, 1, 1, 1)
            c_out, cg = w_out.shape[:2]
            idx = (torch.arange(c_out) // (c_out // conv.groups)).view(-1, 1) * cg + torch.arange(cg).view(1, -1)
            # numpy, not a buffer: the map is computed outside any tracer and exports as a constant
            self.border_taps = (w_out * t_in[idx][:, :, None, None]).sum(1).cpu().numpy()  # (c_out, kh, kw)
        self._borders: Dict[Tuple, Tuple[torch.Tensor, Tuple[int, int, int, int]]] = {}

    def _border(self, h: int, w: int, like: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
        """The border map for an ``h x w`` input (cached per size, dtype and device) and the widths of its bands
        (top, bottom, left, right output rows/columns that read padding)."""
        key = (h, w, like.dtype, like.device)
        if key not in self._borders:
            (ph, pw), (sh, sw), (kh, kw) = self.conv.padding, self.conv.stride, self.conv.kernel_size
            rows, cols = _reads_padding(h, kh, sh, ph), _reads_padding(w, kw, sw, pw)  # (ho, kh), (wo, kw)
            missed = rows[:, None, :, None] | cols[None, :, None, :]                  # (ho, wo, kh, kw)
            border = -np.einsum("ouv,ijuv->oij", self.border_taps, missed.astype(np.float64))
            top, bottom = _bands(rows.any(1))
            left, right = _bands(cols.any(1))
            bands = (top, bottom, left, right)
            self._borders[key] = (torch.from_numpy(border[None]).to(like.device, like.dtype), bands)
        return self._borders[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exporting = _exporting()
        if self.same_pad is not None:
            x = self.same_pad(x)
        y = self.conv(x)
        if self.has_border:
            border, (top, bottom, left, right) = self._border(int(x.shape[-2]), int(x.shape[-1]), y)
            if exporting:
                y = y + border
            else:
                _add_bands(y, border, top, bottom, left, right)
        y = self.act(y) if not exporting else self.act_out_of_place(y)
        return y if self.shortcut is None else self.shortcut(y, x, exporting)


def _reads_padding(n_in: int, k: int, s: int, p: int) -> np.ndarray:
    """``[i, u]``: whether tap ``u`` of output ``i`` of a conv (kernel ``k``, stride ``s``, padding ``p``) reads
    padding."""
    n_out = (n_in + 2 * p - k) // s + 1
    pos = np.arange(n_out)[:, None] * s - p + np.arange(k)[None, :]
    return (pos < 0) | (pos >= n_in)


def _bands(touches: np.ndarray) -> Tuple[int, int]:
    """How many leading and trailing entries of ``touches`` are True (outputs whose window reads padding)."""
    n = len(touches)
    lead = next((i for i, t in enumerate(touches) if not t), n)
    trail = next((i for i, t in enumerate(touches[::-1]) if not t), n)
    return lead, trail


def _add_bands(y: torch.Tensor, border: torch.Tensor, top: int, bottom: int, left: int, right: int) -> None:
    """``y += border`` where ``border`` is zero outside the bands (in place, bands only)."""
    h, w = y.shape[-2:]
    if top + bottom >= h or left + right >= w:
        y.add_(border)
        return
    if top:
        y[..., :top, :].add_(border[..., :top, :])
    if bottom:
        y[..., h - bottom:, :].add_(border[..., h - bottom:, :])
    if left:
        y[..., top:h - bottom, :left].add_(border[..., top:h - bottom, :left])
    if right:
        y[..., top:h - bottom, w - right:].add_(border[..., top:h - bottom, w - right:])


class FusedPool(nn.Module):
    """A pool with a DERO shortcut fused for inference: ``pool(x) + scale * S(x) + shift``."""

    is_dero_operator = True

    def __init__(self, unit: DeroPool):
        super().__init__()
        self.pool = unit.pool
        self.shortcut = _FusedShortcut(unit.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(self.pool(x), x, _exporting())


@torch.no_grad()
def fuse_units(model: nn.Module, keep_attributes: Sequence[str] = LAYER_ATTRIBUTES) -> nn.Module:
    """Every DERO unit of ``model`` in its fastest exact inference form, in place; returns ``model``.

    Units that fold into one convolution are folded (:func:`~yolo_dero.nn.reparam.fold_unit`, the deployed plain
    network); the others (the seed's form) become :class:`FusedUnit`; pools with a shortcut :class:`FusedPool`,
    pools without one the bare pool. For eager inference (``fuse()``); call it on a model in eval mode with its
    trained running statistics. ``keep_attributes``: as in :func:`~yolo_dero.nn.reparam.reparameterize`.
    """
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DeroUnit):
                new = folded_on_cpu(fold_unit if fold_reason(child) is None else FusedUnit, child)
            elif isinstance(child, DeroPool) and child.same_pad is not None:
                new = child  # already one pass per path; the padded copies differ (-inf and zeros)
            elif isinstance(child, DeroPool):
                new = child.pool if child.shortcut is None else folded_on_cpu(FusedPool, child)
            else:
                continue
            for key in keep_attributes:
                if hasattr(child, key):
                    setattr(new, key, getattr(child, key))
            setattr(parent, name, new.eval())
    return model

