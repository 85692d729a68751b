"""The model catalogue of the command lines: a model by registry name, model YAML path or ``.pt`` file.

* a name registered in ``classification.models`` (``resnet34``, ``resnet34_dero``, ``mcunet_v4_plain``...), optionally
  with a DERO style after a colon (``mcunet_v4_dero:rep``, see ``yolo_dero.nn.DERO_STYLES``);
* a path ending ``.yaml``/``.yml``: a detection model built by the project's
  :class:`yolo_dero.ultra.DeroDetectionModel` (looked up as given, in the repository, then in ``cfg/``);
* a path ending ``.pt``/``.pth``: ``torch.load`` of a pickled module or of an Ultralytics checkpoint
  (``{'model'|'ema': module}``), converted to float32. An Ultralytics model that does not declare its
  ``memory_outputs`` gets ``"first"`` (its eval forward returns (decoded, raw) predictions, see
  :func:`yolo_dero.memory.trace.select_outputs`).

Used by ``python -m yolo_dero.memory``, ``python -m yolo_dero.mcu``, :mod:`yolo_dero.report` and
:mod:`yolo_dero.compare_cls`; the analyzer itself (:mod:`yolo_dero.memory`) takes modules and knows no catalogue.
Ultralytics (through :mod:`yolo_dero.ultra`, which makes the offline set-up) is imported only when a YAML or a
``.pt`` is loaded: registry models do not need that heavy optional dependency.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn

from classification.models import get_model, is_model, list_models

from .paths import REPO_ROOT, shipped

YAML_SUFFIXES = (".yaml", ".yml")
PT_SUFFIXES = (".pt", ".pth")


class ModelNotFoundError(ValueError):
    """The model name / path does not name a model (the message lists what is available)."""


def registry_names() -> List[str]:
    """The current names of the classification registry (deprecated aliases still load, see ``is_model``)."""
    return list(list_models(include_deprecated=False))


def yaml_names() -> List[str]:
    cfg = shipped("cfg")
    return sorted(str(p.relative_to(cfg.parent)) for p in cfg.glob("*.y*ml"))


def model_display_name(spec: str) -> str:
    """``resnet34_dero`` -> itself; ``cfg/yolov5n-dero.yaml`` -> ``yolov5n-dero``."""
    s = str(spec)
    return Path(s).stem if s.lower().endswith(YAML_SUFFIXES + PT_SUFFIXES) else s


def resolve_yaml(spec: str) -> Path:
    p = Path(spec).expanduser()
    for cand in (p, REPO_ROOT / p, shipped("cfg") / p.name):
        if cand.is_file():
            return cand.resolve()
    avail = ", ".join(yaml_names()) or "none"
    raise ModelNotFoundError(f"model YAML not found: '{spec}' (looked in {Path.cwd()}, {REPO_ROOT} and "
                             f"{shipped('cfg')}); available: {avail}")


def _load_yaml(spec: str, verbose: bool = False) -> nn.Module:
    path = resolve_yaml(spec)
    from .ultra import DeroDetectionModel  # imports Ultralytics (offline, project-owned settings): on demand

    return DeroDetectionModel(str(path), verbose=verbose)


def _declare_ultralytics_outputs(model: nn.Module) -> nn.Module:
    """Give an Ultralytics model without a ``memory_outputs`` declaration the detector's ``"first"``."""
    tasks = sys.modules.get("ultralytics.nn.tasks")  # unpickling an Ultralytics model has imported it; never import
    base = getattr(tasks, "BaseModel", None)
    if base is not None and isinstance(model, base) and getattr(model, "memory_outputs", None) is None:
        model.memory_outputs = "first"
    return model


def _load_pt(spec: str) -> nn.Module:
    p = Path(spec).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"weights file not found: '{spec}'")
    if p.suffix == ".pt":
        try:  # Ultralytics checkpoints pickle classes of this project: make its glue importable first (on demand)
            from . import ultra  # noqa: F401
        except ImportError:  # pragma: no cover
            pass
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (truncated zip, not a pickle, random bytes ...)
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelNotFoundError(f"'{spec}' is not a readable PyTorch checkpoint (corrupt, truncated or not a .pt "
                                 f"file: {type(e).__name__}: {first}); pass a .pt written by torch.save / "
                                 f"train_det.py, a model YAML or a registry name") from None
    if isinstance(obj, dict):
        for key in ("ema", "model"):
            if isinstance(obj.get(key), nn.Module):
                obj = obj[key]
                break
    if not isinstance(obj, nn.Module):
        raise ModelNotFoundError(f"'{spec}' holds a {type(obj).__name__}, not a module or a checkpoint with a "
                                 f"'model'/'ema' module (a state_dict alone cannot be analysed: build the model "
                                 f"by name instead)")
    return _declare_ultralytics_outputs(obj.float())


def load_model(spec: str, verbose: bool = False) -> Tuple[nn.Module, str]:
    """Build the model ``spec`` names; returns ``(model in eval mode, display name)``."""
    s = str(spec)
    low = s.lower()
    if low.endswith(YAML_SUFFIXES):
        model = _load_yaml(s, verbose=verbose)
    elif low.endswith(PT_SUFFIXES):
        model = _load_pt(s)
    else:
        name, _, style = s.partition(":")
        names = registry_names()
        if not is_model(name):
            raise ModelNotFoundError(
                f"unknown model {name!r}; registry models: {', '.join(names) or 'none'} (a DERO style may follow a "
                f"colon: resnet34_dero:rep); or a model YAML ({', '.join(yaml_names()) or 'none in cfg/'}) or a .pt "
                f"file")
        try:
            model = get_model(name, style=style) if style else get_model(name)
        except (TypeError, ValueError) as e:  # an original takes no style; an unknown style name
            raise ModelNotFoundError(f"{s!r}: {e}") from None
    return model.eval(), model_display_name(s)
