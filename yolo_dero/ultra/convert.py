"""The DERO delta on top of Ultralytics' model builder.

Ultralytics builds the detector (``DetectionModel.__init__``: its ``parse_model`` with scales, channel rounding,
repeats, ``Detect.legacy``, the SPPF v5 quirk); the project only renames and converts:

1. :func:`stock_layout` -- a project YAML names DERO modules per row (``DeroConv``, ``DeroC3``, ``DeroC3Seed``,
   ``DeroC2f``, ``DeroSPPF``); each is written as the Ultralytics module it replaces (``Conv``, ``C3``, ``C3``,
   ``C2f``, ``SPPF``) and remembered by layer index. Any module Ultralytics knows may appear too (it stays stock).
2. :func:`convert_to_dero` -- after Ultralytics has built that stock layout, each remembered layer is replaced by
   the DERO module converted from it (``DeroConv.from_conv``, ``DeroC3.from_c3``, ...), in the YAML's unit style
   and with shortcuts where the YAML's ``dero_shortcuts`` (and a row's explicit shortcut argument) allow.

Row arguments of the DERO names, as before: ``DeroConv [c2, k, s, p, shortcut]``, ``DeroC3``/``DeroC3Seed``/
``DeroC2f [c2, shortcut, e]``, ``DeroSPPF [c2, k, shortcut]``; an explicit ``shortcut`` is AND-ed with
``dero_shortcuts``.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Dict, Tuple

from torch import nn

from ..nn.yolo_blocks import DeroC2f, DeroC3, DeroC3Seed, DeroConv, DeroSPPF
from .parser import ModelConfigError

# DERO row name -> (Ultralytics module it replaces, converter)
DERO_MODULES = {
    "DeroConv": ("Conv", DeroConv.from_conv),
    "DeroC3": ("C3", DeroC3.from_c3),
    "DeroC3Seed": ("C3", DeroC3Seed.from_c3),
    "DeroC2f": ("C2f", DeroC2f.from_c2f),
    "DeroSPPF": ("SPPF", DeroSPPF.from_sppf),
}
# index of a row's explicit shortcut argument
_SHORTCUT_ARG = {"DeroConv": 4, "DeroC3": 1, "DeroC3Seed": 1, "DeroC2f": 1, "DeroSPPF": 2}


def _known_to_ultralytics(name: str) -> bool:
    import torch
    from ultralytics.nn import tasks

    if name.startswith("nn."):
        return isinstance(getattr(torch.nn, name[3:], None), type)
    m = vars(tasks).get(name)
    return isinstance(m, type) and issubclass(m, nn.Module)


def stock_layout(d: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[int, Tuple[str, bool]]]:
    """``(stock YAML dict, {layer index: (DERO module name, explicit shortcut)})`` of a project model YAML dict."""
    for key in ("nc", "backbone", "head"):
        if key not in d:
            raise ModelConfigError(f"model YAML lacks '{key}:'")
    act = d.get("activation")
    if act and "silu" not in str(act).lower():
        raise ModelConfigError(f"activation {act!r} not supported: the YOLO DERO modules use SiLU")
    stock, plan = deepcopy(d), {}
    rows = list(stock["backbone"]) + list(stock["head"])
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 4):
            raise ModelConfigError(f"layer {i}: expected [from, number, module, args], got {row!r}")
        f, _, name, args = row
        for x in [f] if isinstance(f, int) else f:
            if not (isinstance(x, int) and (x == -1 or (i > 0 and -i <= x < i))):
                raise ModelConfigError(f"layer {i}: 'from' index {x} does not refer to an earlier layer")
        args = list(args or [])
        if name in DERO_MODULES:
            j = _SHORTCUT_ARG[name]
            shortcut = bool(args[j]) if len(args) > j else True
            if name == "DeroConv":
                args = args[:4]
            elif name == "DeroSPPF":
                args = args[:2]
            elif len(args) > 2:  # DeroC3/DeroC2f [c2, shortcut, e] -> C3/C2f [c2, shortcut, g=1, e]
                args = [args[0], args[1], 1, *args[2:]]
            plan[i] = (name, shortcut)
            row[2], row[3] = DERO_MODULES[name][0], args
        elif not _known_to_ultralytics(str(name)):
            raise ModelConfigError(
                f"layer {i}: module '{name}' is neither a DERO module ({', '.join(DERO_MODULES)}) "
                f"nor one Ultralytics' parse_model knows")
    return stock, plan


def convert_to_dero(layers: nn.Sequential, plan: Dict[int, Tuple[str, bool]], style_kwargs: Dict[str, Any],
                    shortcuts: bool = True) -> nn.Sequential:
    """Replace, in place, each planned layer of Ultralytics' ``layers`` by its DERO conversion (repeated layers,
    an ``nn.Sequential`` of stock modules, convert one by one); returns ``layers``."""
    for i, (name, explicit) in plan.items():
        convert = DERO_MODULES[name][1]
        kw = dict(shortcut=shortcuts and explicit, **style_kwargs)
        old = layers[i]
        if type(old) is nn.Sequential:  # n > 1 repeats of a module without a repeat argument
            new = nn.Sequential(*(convert(m, **kw) for m in old))
            for a in ("i", "f"):
                setattr(new, a, getattr(old, a))
            new.type = f"{type(new[0]).__module__}.{type(new[0]).__name__}"
            new.np = sum(p.numel() for p in new.parameters())
        else:
            new = convert(old, **kw)
        layers[i] = new
    return layers
