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

``shortcut=False`` builds the plain twin of either module (the units without shortcuts, no shortcut
parameters).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from .dero import DeroUnit

__all__ = ["DeroConv", "DeroC3", "YOLO_ACT"]

YOLO_ACT = "silu"  # the YOLO family's activation (Ultralytics' Conv.default_act)


class DeroConv(DeroUnit):
    """A YOLO convolution as one DERO unit: ``y = SiLU(conv(bn_in(x))) + bn_sc(S(x))``.

    Args follow Ultralytics' ``Conv``: ``c1, c2, k=1, s=1, p=None`` (padding ``k // 2`` by default), plus
    ``shortcut`` (False: the plain twin) and ``drop_path``.
    Shapes: ``(N, c1, H, W) -> (N, c2, H_out, W_out)``.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: Optional[int] = None,
                 shortcut: bool = True, drop_path: float = 0.0):
        super().__init__(c1, c2, k=k, s=s, p=p, act=YOLO_ACT, shortcut=shortcut, drop_path=drop_path)


class DeroC3(nn.Sequential):
    """``C3`` as a chain of DERO units: 1x1 entry, ``n`` x (1x1, 3x3) bottlenecks, 1x1 exit.

    Args follow Ultralytics' ``C3``: ``c1, c2, n=1, shortcut=True, e=0.5``; hidden width ``c_ = int(c2 * e)``.
    ``shortcut=False`` builds the plain chain. ``2 + 2 n`` units in all, each a one-operator residual.
    Shapes: ``(N, c1, H, W) -> (N, c2, H, W)``.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5,
                 drop_path: float = 0.0):
        c_ = int(c2 * e)
        units = [DeroConv(c1, c_, 1, shortcut=shortcut, drop_path=drop_path)]
        for _ in range(n):
            units.append(DeroConv(c_, c_, 1, shortcut=shortcut, drop_path=drop_path))
            units.append(DeroConv(c_, c_, 3, shortcut=shortcut, drop_path=drop_path))
        units.append(DeroConv(c_, c2, 1, shortcut=shortcut, drop_path=drop_path))
        super().__init__(*units)
        self.c1, self.c2, self.n, self.hidden = c1, c2, n, c_
