"""Model YAML loading for the DERO YOLO models: finding a YAML (:func:`resolve_model_yaml`), reading it with its
scale letter (:func:`load_model_yaml`) and its ``stages:`` (:func:`parse_stages`).

Building is Ultralytics' own ``parse_model`` plus the DERO conversion (:mod:`.convert`). Besides the layer lists,
a project YAML has a top-level ``stages:`` mapping (stage name -> layer indices, given as integers or ``"a-b"``
ranges; first key ``stem``; every layer in exactly one stage), returned as an ordered dict of qualified module
names (``"model.<i>"``) for the memory analyzer.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import yaml

from ..fileutil import yaml_problem
from ..paths import REPO_ROOT, shipped


def _log():
    from ultralytics.utils import LOGGER

    return LOGGER


class ModelConfigError(ValueError):
    """A model YAML that cannot be built (unknown module, bad stages, missing keys)."""


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
