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

``shortcut=False`` builds the plain twin of any module (the units without shortcuts, no shortcut
parameters).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .dero import DeroUnit

__all__ = ["DeroConv", "DeroC3", "DeroC3Seed", "DeroSPPF", "YOLO_ACT"]

YOLO_ACT = "silu"  # the YOLO family's activation (Ultralytics' Conv.default_act)


class DeroConv(DeroUnit):
    """A YOLO convolution as one DERO unit: ``y = SiLU(conv(bn_in(x))) + bn_sc(S(x))``.

    Args follow Ultralytics' ``Conv``: ``c1, c2, k=1, s=1, p=None`` (padding ``k // 2`` by default), plus
    ``shortcut`` (False: the plain twin), ``drop_path``, and the style's ``shortcut_bn``, ``norm`` and
    ``act_after_add`` (see :class:`~yolo_dero.nn.DeroStyle`).
    Shapes: ``(N, c1, H, W) -> (N, c2, H_out, W_out)``.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: Optional[int] = None,
                 shortcut: bool = True, drop_path: float = 0.0, shortcut_bn="all", norm: str = "pre",
                 act_after_add: bool = False):
        super().__init__(c1, c2, k=k, s=s, p=p, act=YOLO_ACT, shortcut=shortcut, drop_path=drop_path,
                         shortcut_bn=shortcut_bn, norm=norm, act_after_add=act_after_add)


class DeroC3(nn.Sequential):
    """``C3`` as a chain of DERO units: 1x1 entry, ``n`` x (1x1, 3x3) bottlenecks, 1x1 exit.

    Args follow Ultralytics' ``C3``: ``c1, c2, n=1, shortcut=True, e=0.5``; hidden width ``c_ = int(c2 * e)``.
    ``shortcut=False`` builds the plain chain. ``2 + 2 n`` units in all, each a one-operator residual.
    ``**style``: the units' style keywords (:meth:`~yolo_dero.nn.DeroStyle.unit_kwargs`), as for :class:`DeroConv`.
    Shapes: ``(N, c1, H, W) -> (N, c2, H, W)``.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5,
                 drop_path: float = 0.0, **style):
        c_ = int(c2 * e)
        unit = dict(shortcut=shortcut, drop_path=drop_path, **style)
        units = [DeroConv(c1, c_, 1, **unit)]
        for _ in range(n):
            units.append(DeroConv(c_, c_, 1, **unit))
            units.append(DeroConv(c_, c_, 3, **unit))
        units.append(DeroConv(c_, c2, 1, **unit))
        super().__init__(*units)
        self.c1, self.c2, self.n, self.hidden = c1, c2, n, c_


class DeroC3Seed(nn.Module):
    """``C3`` as the seed builds it: ``cv3(cat(m(cv1(x)), cv2(x)))`` with every convolution a DERO unit.

    ``cv1``, ``cv2``: 1x1 ``c1 -> c_``; ``m``: ``n`` x (1x1, 3x3) units at ``c_``; ``cv3``: 1x1 ``2 c_ -> c2``. The
    parallel branch ``cv2(x)`` stays alive while ``m`` runs, as in the original C3.
    Shapes: ``(N, c1, H, W) -> (N, c2, H, W)``.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5,
                 drop_path: float = 0.0, **style):
        super().__init__()
        c_ = int(c2 * e)
        unit = dict(shortcut=shortcut, drop_path=drop_path, **style)
        self.cv1 = DeroConv(c1, c_, 1, **unit)
        self.cv2 = DeroConv(c1, c_, 1, **unit)
        self.m = nn.Sequential(*(DeroConv(c_, c_, k, **unit) for _ in range(n) for k in (1, 3)))
        self.cv3 = DeroConv(2 * c_, c2, 1, **unit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))
