"""YOLOv5 building blocks rebuilt from the DERO unit (torch only).

Two module kinds replace Ultralytics' ``Conv`` and ``C3`` in the DERO YOLOv5n YAML; both are made of
:class:`~yolo_dero.nn.dero.DeroUnit` and nothing else, so every residual spans exactly one operator:

* :class:`DeroConv` -- one convolution as a DERO unit with YOLO's SiLU activation and Ultralytics'
  ``Conv`` argument order ``(c1, c2, k, s, p)``. Used for the 6x6/2 stem, every strided 3x3 conv and the
  neck's 1x1 lateral convs.
* :class:`DeroC3` -- the CSP bottleneck ``C3`` reorganized into a *chain* of DERO units: its 1x1 entry
  (``c1 -> c_``), each bottleneck as a 1x1 unit and a 3x3 unit (``c_ -> c_``), its 1x1 exit
  (``c_ -> c2``), with ``c_ = int(c2 * e)`` as in ``C3``. C3's parallel 1x1 branch and its concat are
  dropped: that branch's output would have to stay alive while the whole bottleneck chain runs, which is
  exactly the long-lived tensor DERO removes. The bottleneck residual (which spans two convs in C3) is
  replaced by each unit's own one-operator shortcut.

Two more reproduce the seed's own YOLOv5n-DERO layout (``cfg/yolov5n-dero-seed.yaml``):

* :class:`DeroC3Seed` -- ``C3`` with every convolution a DERO unit but its structure kept: the parallel 1x1
  branch and the concat stay, the bottleneck residual goes (each unit has its own shortcut).
* :class:`DeroSPPF` -- ``SPPF`` with its two 1x1 convolutions as DERO units (max-pools and concat stock).

One more makes the YOLOv8 layout a YAML away (``cfg/yolov8n-dero.yaml``):

* :class:`DeroC2f` -- ``C2f`` with every convolution a DERO unit, its structure kept as the seed keeps C3's
  (the split, the growing list of bottleneck outputs and the concat stay; each bottleneck is two 3x3 units and
  loses its two-operator residual, every unit having its own shortcut).

``shortcut=False`` builds the plain twin of any module (the units without shortcuts, no shortcut
parameters).

Each module also converts from the Ultralytics module it replaces (``DeroConv.from_conv``, ``DeroC3.from_c3``,
``DeroC3Seed.from_c3``, ``DeroSPPF.from_sppf``; the pattern of ``nn.SyncBatchNorm.convert_sync_batchnorm``): the
DERO module takes the stock module's channels, kernel, stride, padding and repeats, and the bookkeeping attributes
Ultralytics' ``parse_model`` attaches (``i``, ``f``, ``type``; ``np`` recounted). The stock module is read
duck-typed (its ``conv``, ``cv1``... attributes), so this file still imports torch only; its weights are not kept
(a converted model is initialised afresh).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .dero import DeroUnit

__all__ = ["DeroConv", "DeroC3", "DeroC3Seed", "DeroC2f", "DeroSPPF", "YOLO_ACT"]

YOLO_ACT = "silu"  # the YOLO family's activation (Ultralytics' Conv.default_act)


def _bookkeeping(new: nn.Module, old: nn.Module) -> nn.Module:
    """Copy Ultralytics' layer attributes (``i``, ``f``; ``type`` names the new class, ``np`` recounted)."""
    for a in ("i", "f"):
        if hasattr(old, a):
            setattr(new, a, getattr(old, a))
    if hasattr(old, "type"):
        new.type = f"{type(new).__module__}.{type(new).__name__}"
    if hasattr(old, "np"):
        new.np = sum(p.numel() for p in new.parameters())
    return new


def _conv_geometry(conv: nn.Module) -> tuple:
    """``(c1, c2, k, s, p)`` of an Ultralytics ``Conv`` (its ``conv`` attribute: a square, ungrouped Conv2d)."""
    c = conv.conv
    if c.groups != 1 or c.dilation != (1, 1) or len(set(c.kernel_size)) != 1 or len(set(c.stride)) != 1 \
            or not isinstance(c.padding, tuple) or len(set(c.padding)) != 1:
        raise ValueError(f"cannot convert {c}: a DERO unit needs a square, ungrouped, undilated convolution")
    return c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]


def _c3_geometry(c3: nn.Module) -> tuple:
    """``(c1, c2, n, hidden, shortcut)`` of an Ultralytics ``C3`` (its bottlenecks' ``add`` is its shortcut flag)."""
    c1, c_ = c3.cv1.conv.in_channels, c3.cv1.conv.out_channels
    shortcut = all(getattr(b, "add", True) for b in c3.m)
    return c1, c3.cv3.conv.out_channels, len(c3.m), c_, shortcut


class DeroConv(DeroUnit):
    """A YOLO convolution as one DERO unit: ``y = SiLU(conv(bn_in(x))) + bn_sc(S(x))``.

    Args follow Ultralytics' ``Conv``: ``c1, c2, k=1, s=1, p=None`` (padding ``k // 2`` by default), plus
    ``shortcut`` (False: the plain twin), ``drop_path``, and the style's unit keywords (``shortcut_bn``, ``norm``,
    ``act_after_add``, ``shortcut_shrink``, ...; see :class:`~yolo_dero.nn.DeroStyle`), passed to the unit.
    Shapes: ``(N, c1, H, W) -> (N, c2, H_out, W_out)``.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: Optional[int] = None,
                 shortcut: bool = True, drop_path: float = 0.0, shortcut_bn="all", **unit_kwargs):
        super().__init__(c1, c2, k=k, s=s, p=p, act=YOLO_ACT, shortcut=shortcut, drop_path=drop_path,
                         shortcut_bn=shortcut_bn, **unit_kwargs)

    @classmethod
    def from_conv(cls, conv: nn.Module, shortcut: bool = True, **style) -> "DeroConv":
        """The DERO unit replacing an Ultralytics ``Conv`` (same channels, kernel, stride and padding)."""
        c1, c2, k, s, p = _conv_geometry(conv)
        return _bookkeeping(cls(c1, c2, k, s, p, shortcut=shortcut, **style), conv)


class DeroC3(nn.Sequential):
    """``C3`` as a chain of DERO units: 1x1 entry, ``n`` x (1x1, 3x3) bottlenecks, 1x1 exit.

    Args follow Ultralytics' ``C3``: ``c1, c2, n=1, shortcut=True, e=0.5``; hidden width ``c_ = int(c2 * e)``.
    ``shortcut=False`` builds the plain chain. ``2 + 2 n`` units in all, each a one-operator residual.
    ``**style``: the units' style keywords (:meth:`~yolo_dero.nn.DeroStyle.unit_kwargs`), as for :class:`DeroConv`.
    Shapes: ``(N, c1, H, W) -> (N, c2, H, W)``.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5,
                 drop_path: float = 0.0, hidden: Optional[int] = None, **style):
        c_ = int(c2 * e) if hidden is None else hidden
        unit = dict(shortcut=shortcut, drop_path=drop_path, **style)
        units = [DeroConv(c1, c_, 1, **unit)]
        for _ in range(n):
            units.append(DeroConv(c_, c_, 1, **unit))
            units.append(DeroConv(c_, c_, 3, **unit))
        units.append(DeroConv(c_, c2, 1, **unit))
        super().__init__(*units)
        self.c1, self.c2, self.n, self.hidden = c1, c2, n, c_

    @classmethod
    def from_c3(cls, c3: nn.Module, shortcut: bool = True, **style) -> "DeroC3":
        """The DERO chain replacing an Ultralytics ``C3`` (same channels, hidden width and repeats); the units get
        shortcuts where ``shortcut`` and the C3's own bottleneck shortcut flag are both true."""
        c1, c2, n, c_, sc = _c3_geometry(c3)
        return _bookkeeping(cls(c1, c2, n, shortcut=shortcut and sc, hidden=c_, **style), c3)


class DeroC3Seed(nn.Module):
    """``C3`` as the seed builds it: ``cv3(cat(m(cv1(x)), cv2(x)))`` with every convolution a DERO unit.

    ``cv1``, ``cv2``: 1x1 ``c1 -> c_``; ``m``: ``n`` x (1x1, 3x3) units at ``c_``; ``cv3``: 1x1 ``2 c_ -> c2``. The
    parallel branch ``cv2(x)`` stays alive while ``m`` runs, as in the original C3.
    Shapes: ``(N, c1, H, W) -> (N, c2, H, W)``.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5,
                 drop_path: float = 0.0, hidden: Optional[int] = None, **style):
        super().__init__()
        c_ = int(c2 * e) if hidden is None else hidden
        unit = dict(shortcut=shortcut, drop_path=drop_path, **style)
        self.cv1 = DeroConv(c1, c_, 1, **unit)
        self.cv2 = DeroConv(c1, c_, 1, **unit)
        self.m = nn.Sequential(*(DeroConv(c_, c_, k, **unit) for _ in range(n) for k in (1, 3)))
        self.cv3 = DeroConv(2 * c_, c2, 1, **unit)

    @classmethod
    def from_c3(cls, c3: nn.Module, shortcut: bool = True, **style) -> "DeroC3Seed":
        """The seed's DERO C3 replacing an Ultralytics ``C3`` (as :meth:`DeroC3.from_c3`)."""
        c1, c2, n, c_, sc = _c3_geometry(c3)
        return _bookkeeping(cls(c1, c2, n, shortcut=shortcut and sc, hidden=c_, **style), c3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class DeroC2f(nn.Module):
    """``C2f`` with DERO units: ``cv2(cat(y0, y1, m_1(y1), m_2(m_1(y1)), ...))`` where ``y0, y1 = cv1(x).chunk(2)``.

    ``cv1``: 1x1 ``c1 -> 2 c``; ``m``: ``n`` bottlenecks, each two 3x3 units at ``c`` (no residual around the pair);
    ``cv2``: 1x1 ``(2 + n) c -> c2``; hidden width ``c = int(c2 * e)`` as in ``C2f``.
    Shapes: ``(N, c1, H, W) -> (N, c2, H, W)``.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5,
                 drop_path: float = 0.0, hidden: Optional[int] = None, **style):
        super().__init__()
        self.c = c = int(c2 * e) if hidden is None else hidden
        unit = dict(shortcut=shortcut, drop_path=drop_path, **style)
        self.cv1 = DeroConv(c1, 2 * c, 1, **unit)
        self.cv2 = DeroConv((2 + n) * c, c2, 1, **unit)
        self.m = nn.ModuleList(nn.Sequential(DeroConv(c, c, 3, **unit), DeroConv(c, c, 3, **unit))
                               for _ in range(n))

    @classmethod
    def from_c2f(cls, c2f: nn.Module, shortcut: bool = True, **style) -> "DeroC2f":
        """The DERO C2f replacing an Ultralytics ``C2f`` (same channels, hidden width and repeats). Unlike C3's,
        C2f's bottleneck flag (``False`` in the neck) is not read: every unit's shortcut follows ``shortcut``."""
        c1, c = c2f.cv1.conv.in_channels, c2f.c
        return _bookkeeping(cls(c1, c2f.cv2.conv.out_channels, len(c2f.m), shortcut=shortcut, hidden=c, **style), c2f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class DeroSPPF(nn.Module):
    """``SPPF`` (``k`` x ``k`` max-pool applied three times, four tensors concatenated) with DERO-unit 1x1 convs.

    Shapes: ``(N, c1, H, W) -> (N, c2, H, W)``.
    """

    def __init__(self, c1: int, c2: int, k: int = 5, shortcut: bool = True, **style):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = DeroConv(c1, c_, 1, shortcut=shortcut, **style)
        self.cv2 = DeroConv(c_ * 4, c2, 1, shortcut=shortcut, **style)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    @classmethod
    def from_sppf(cls, sppf: nn.Module, shortcut: bool = True, **style) -> "DeroSPPF":
        """The DERO SPPF replacing an Ultralytics ``SPPF`` (same channels and pool size; three pools, no residual)."""
        c1, c2 = sppf.cv1.conv.in_channels, sppf.cv2.conv.out_channels
        if getattr(sppf, "n", 3) != 3 or getattr(sppf, "add", False) or c1 // 2 != sppf.cv1.conv.out_channels:
            raise ValueError("only the YOLOv5/v8 SPPF (three pools, hidden c1 // 2, no residual) converts to DeroSPPF")
        k = sppf.m.kernel_size
        return _bookkeeping(cls(c1, c2, k if isinstance(k, int) else k[0], shortcut=shortcut, **style), sppf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))
