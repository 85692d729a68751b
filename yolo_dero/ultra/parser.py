"""The project's own YOLO YAML parser.

Ultralytics' ``parse_model`` knows the channel arithmetic only of the modules it lists internally; a new
module falls through with its YAML arguments unscaled. This parser handles exactly the module kinds the
project's YAMLs use and refuses anything else by name:

=================  ==============================================================================
module             channel logic (``width``/``depth`` from ``scales[scale]``, ``max_channels`` cap)
=================  ==============================================================================
``Conv``           ``c2 = make_divisible(min(args[0], max_ch) * width, 8)``; args ``[c1, c2, k, s, p]``
``DeroConv``       same as ``Conv``; plus ``shortcut`` from the YAML's ``dero_shortcuts`` key
``C3``             as ``Conv``; repeats ``n = max(round(n * depth), 1)`` go into args ``[c1, c2, n, ...]``
``DeroC3``         same as ``C3``; plus ``shortcut`` from ``dero_shortcuts`` (also ``DeroC3Seed``)
``DeroSPPF``       as ``SPPF``; plus ``shortcut`` from ``dero_shortcuts``
``SPPF``           as ``Conv`` (no repeats); v5 rows (``[c2, k]``) get an activated ``cv1`` like stock
``nn.Upsample``    channels unchanged
``Concat``         ``c2 = sum of the inputs' channels``
``Detect``         args ``[nc, reg_max, end2end, [channels of inputs]]``, legacy (v5/v8) class head
=================  ==============================================================================

Besides the layer lists the parser reads a top-level ``stages:`` mapping (stage name -> layer indices,
given as integers or ``"a-b"`` ranges; first key ``stem``; every layer in exactly one stage) and returns it as
an ordered dict of qualified module names (``"model.<i>"``) for the memory analyzer.
"""

from __future__ import annotations

import ast
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..fileutil import yaml_problem
from ..nn.yolo_blocks import DeroC3, DeroC3Seed, DeroConv, DeroSPPF
from ..paths import REPO_ROOT, shipped



def _log():
    from ultralytics.utils import LOGGER

    return LOGGER


class ModelConfigError(ValueError):
    """A model YAML the parser cannot build (unknown module, bad stages, missing keys)."""


def _ultra_modules() -> dict[str, type]:
    from ultralytics.nn.modules import C3, SPPF, Concat, Conv, Detect

    return {"Conv": Conv, "C3": C3, "SPPF": SPPF, "Concat": Concat, "Detect": Detect}


def supported_modules() -> dict[str, type]:
    """YAML module name -> class, for every module kind this parser knows."""
    return {**_ultra_modules(), "DeroConv": DeroConv, "DeroC3": DeroC3, "DeroC3Seed": DeroC3Seed,
            "DeroSPPF": DeroSPPF, "nn.Upsample": nn.Upsample}


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (Ultralytics' channel rounding)."""
    return int(math.ceil(x / divisor) * divisor)


def guess_scale(path: str | Path) -> str:
    """The scale letter from a file name like ``yolov5n-dero.yaml`` (Ultralytics' rule), or ``''``."""
    m = re.search(r"yolo(e-)?v?\d+([nslmx])", Path(path).stem)
    return m.group(2) if m else ""


def resolve_model_yaml(path: str | Path) -> Path:
    """Find a model YAML: as given (relative to cwd), else relative to the repository, else by name among the
    project's model YAMLs (``<repo>/cfg``, or an installed wheel's package data: :func:`~yolo_dero.paths.shipped`)."""
    p = Path(path).expanduser()
    cfg = shipped("cfg")
    for cand in (p, REPO_ROOT / p, cfg / p.name):
        if cand.is_file():
            return cand.resolve()
    raise FileNotFoundError(f"model YAML not found: '{path}' (looked in {Path.cwd()}, {REPO_ROOT} and {cfg})")


def load_model_yaml(path: str | Path) -> dict[str, Any]:
    """Read a model YAML into the dict Ultralytics keeps as ``model.yaml`` (adds ``scale`` and ``yaml_file``)."""
    file = resolve_model_yaml(path)
    with open(file, encoding="utf-8") as f:
        try:
            d = yaml.safe_load(f)
        except yaml.YAMLError as e:  # one line with the file and the position, not a scanner traceback
            raise ModelConfigError(f"{file}: not valid YAML ({yaml_problem(e)}); fix the file") from None
    if not isinstance(d, dict):
        raise ModelConfigError(f"{file}: not a model YAML (top level must be a mapping)")
    d["scale"] = guess_scale(file)
    d["yaml_file"] = str(file)
    return d


def _parse_stage_indices(spec: Any, n_layers: int, stage: str) -> list[int]:
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    out: list[int] = []
    for it in items:
        if isinstance(it, int):
            out.append(it)
        elif isinstance(it, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", it):
            a, b = (int(x) for x in it.split("-"))
            out.extend(range(a, b + 1))
        else:
            raise ModelConfigError(f"stages.{stage}: entries must be layer indices or 'a-b' ranges, got {it!r}")
    for i in out:
        if not 0 <= i < n_layers:
            raise ModelConfigError(f"stages.{stage}: layer {i} out of range (model has {n_layers} layers)")
    return out


def parse_stages(d: dict, n_layers: int) -> "OrderedDict[str, list[str]]":
    """The YAML's ``stages:`` as ``{name: ["model.<i>", ...]}``; first key ``stem``, each layer exactly once."""
    spec = d.get("stages")
    if not spec:
        _log().warning("model YAML has no 'stages:' key; memory_stages = stem (layer 0), body, head (last layer)")
        spec = {"stem": [0], "body": [f"1-{n_layers - 2}"], "head": [n_layers - 1]}
    if not isinstance(spec, dict):
        raise ModelConfigError("'stages:' must map stage names to lists of layer indices")
    names = list(spec)
    if names[0] != "stem":
        raise ModelConfigError(f"'stages:' must start with 'stem', got {names[0]!r}")
    seen: dict[int, str] = {}
    stages: OrderedDict[str, list[str]] = OrderedDict()
    for name, idx in spec.items():
        layers = _parse_stage_indices(idx, n_layers, name)
        for i in layers:
            if i in seen:
                raise ModelConfigError(f"stages: layer {i} is in both {seen[i]!r} and {name!r}")
            seen[i] = name
        stages[str(name)] = [f"model.{i}" for i in layers]
    missing = sorted(set(range(n_layers)) - set(seen))
    if missing:
        raise ModelConfigError(f"stages: layers {missing} belong to no stage")
    return stages


def _literal(a: Any, names: dict[str, Any]) -> Any:
    if isinstance(a, str):
        if a in names:
            return names[a]
        try:
            return ast.literal_eval(a)
        except (ValueError, SyntaxError):
            return a
    return a


def build_model(d: dict, ch: int = 3, verbose: bool = True):
    """Build the layers of a model YAML dict.

    Returns ``(nn.Sequential of layers, sorted save list, memory_stages)``; each layer carries Ultralytics'
    attributes ``i`` (index), ``f`` (from), ``type`` and ``np`` (parameter count).
    """
    from ultralytics.nn.modules import Detect

    modules = supported_modules()
    for key in ("nc", "backbone", "head"):
        if key not in d:
            raise ModelConfigError(f"model YAML lacks '{key}:'")
    nc = d["nc"]
    act = d.get("activation")
    if act and "silu" not in str(act).lower():
        raise ModelConfigError(f"activation {act!r} not supported: the YOLO DERO modules use SiLU")
    depth, width, max_channels = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), float("inf")
    scales, scale = d.get("scales"), d.get("scale")
    if scales:
        if not scale:
            scale = next(iter(scales))
            _log().warning(f"no model scale in the file name; assuming scale '{scale}'")
        if scale not in scales:
            raise ModelConfigError(f"scale {scale!r} not among the YAML's scales {list(scales)}")
        depth, width, max_channels = scales[scale]
    dero_shortcut = bool(d.get("dero_shortcuts", True))
    from ..nn import get_style

    try:  # the units' style (yolo_dero.nn.DeroStyle); a YAML without the key keeps the seed's unit
        style = get_style(d.get("dero_style", "seed"))
    except ValueError as e:
        raise ModelConfigError(f"dero_style: {e}") from None
    reg_max, end2end = d.get("reg_max", 16), bool(d.get("end2end") or False)

    if verbose:
        _log().info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    chs = [ch]
    layers, save = [], []
    rows = list(d["backbone"]) + list(d["head"])
    for i, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise ModelConfigError(f"layer {i}: expected [from, number, module, args], got {row!r}")
        f, n, mname, args = row
        if mname not in modules:
            raise ModelConfigError(
                f"layer {i}: module '{mname}' is not supported by the DERO YAML parser "
                f"(supported: {', '.join(sorted(modules))})")
        m = modules[mname]
        args = [_literal(a, {"nc": nc}) for a in (args or [])]
        for x in [f] if isinstance(f, int) else f:
            if not (isinstance(x, int) and (x == -1 or (i > 0 and -i <= x < i))):
                raise ModelConfigError(f"layer {i}: 'from' index {x} does not refer to an earlier layer")
        n_ = n = max(round(n * depth), 1) if n > 1 else n
        if m in (modules["Conv"], DeroConv, modules["C3"], DeroC3, DeroC3Seed, modules["SPPF"], DeroSPPF):
            c1 = chs[f]
            c2 = make_divisible(min(args[0], max_channels) * width, 8)
            args = [c1, c2, *args[1:]]
            if m in (modules["C3"], DeroC3, DeroC3Seed):
                args.insert(2, n)
                n = 1
            dero = m in (DeroConv, DeroC3, DeroC3Seed, DeroSPPF)
            kwargs = {"shortcut": dero_shortcut} if dero else {}
            if m in (DeroC3, DeroC3Seed) and len(args) > 3:  # an explicit YAML shortcut arg is AND-ed with the switch
                args[3] = bool(args[3]) and dero_shortcut
                kwargs = {}
            if m is DeroConv and len(args) > 5:
                args = args[:5] + [bool(args[5]) and dero_shortcut] + args[6:]
                kwargs = {}
            if dero:
                kwargs.update(style.unit_kwargs())
            first = m(*args, **kwargs)
            rest = [m(c2, *args[1:], **kwargs) for _ in range(n - 1)]  # repeats chain at c2 channels
            m_ = nn.Sequential(first, *rest) if n > 1 else first
            if m is modules["SPPF"] and len(args) <= 3:  # v5 rows: stock builds SPPF.cv1 activated
                from ultralytics.nn.modules import Conv

                m_.cv1.act = Conv.default_act
        elif m is nn.Upsample:
            c2 = chs[f]
            m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        elif m is modules["Concat"]:
            if isinstance(f, int):
                raise ModelConfigError(f"layer {i}: Concat needs a list of inputs")
            c2 = sum(chs[x] for x in f)
            m_ = m(*args)
        elif m is Detect:
            if isinstance(f, int):
                f = [f]
            args = [args[0] if args else nc, reg_max, end2end, [chs[x] for x in f]]
            previous = Detect.legacy
            Detect.legacy = True  # v5 layouts use the legacy (plain-conv) class branch, as stock
            try:
                m_ = m(*args)
            finally:
                Detect.legacy = previous
            c2 = chs[-1]
        else:  # pragma: no cover - guarded by the lookup above
            raise ModelConfigError(f"layer {i}: no channel rule for {mname}")
        t = mname if mname.startswith("nn.") else f"{m.__module__}.{m.__name__}"
        m_.np = sum(p.numel() for p in m_.parameters())
        m_.i, m_.f, m_.type = i, f, t
        if verbose:
            _log().info(f"{i:>3}{f!s:>20}{n_:>3}{m_.np:10.0f}  {t:<40}{args!s:<30}")
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            chs = []
        chs.append(c2)
    stages = parse_stages(d, len(layers))
    return nn.Sequential(*layers), sorted(save), stages


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
