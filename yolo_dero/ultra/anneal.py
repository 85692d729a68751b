"""The activation anneal for detectors: the DERO unit's activation blended with the identity, ``t`` falling from 1
to 0 over a detector's first epochs (:func:`~yolo_dero.nn.set_activation_linearity`; the classifiers' is
``classification/train.py --act-anneal-epochs``).

The length lives in the model YAML as the top-level key :data:`ANNEAL_KEY` (``train_det.py --act-anneal-epochs``
trains a copy of the YAML with the key set, :func:`yaml_with_anneal`), so it travels inside every checkpoint: a
resumed run continues the schedule from its step, and Ultralytics' train arguments, which refuse keys they do not
know, stay untouched. The trainer anneals the model it trains only; its EMA copy, which validation, ``best.pt`` and
export use, keeps ``t = 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from ..fileutil import atomic_write_bytes
from ..nn import activation_anneal_problem
from ..paths import cache_dir
from .parser import ModelConfigError, load_model_yaml, resolve_model_yaml

ANNEAL_KEY = "act_anneal_epochs"


def student_model(model: torch.nn.Module) -> torch.nn.Module:
    """The detector being trained inside its wrappers (DDP's ``module``, Ultralytics' distillation ``student_model``):
    a teacher is never annealed."""
    model = getattr(model, "module", model)
    return getattr(model, "student_model", model)


def anneal_epochs(model: torch.nn.Module) -> float:
    """The anneal length the model's YAML asks for (0: no anneal)."""
    cfg: Any = getattr(student_model(model), "yaml", None)
    value = cfg.get(ANNEAL_KEY) if isinstance(cfg, dict) else None
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelConfigError(f"{ANNEAL_KEY}: {value!r} is not a number of epochs; set it to e.g. half of --epochs, "
                               f"or 0 for no anneal")
    return float(value)


def check_activation_anneal(model: torch.nn.Module, epochs: int) -> float:
    """The anneal length for a run of ``epochs`` epochs, after checking that it leaves the last epoch at ``t = 0`` (the
    form that folds and deploys) and that the model has DERO units with an activation to anneal; 0 without one.
    Sets ``t = 0`` on the model."""
    n = anneal_epochs(model)
    problem = activation_anneal_problem(student_model(model), n, epochs) if n else None
    if problem:
        raise ModelConfigError(f"{ANNEAL_KEY} {n:g} (--act-anneal-epochs) for {epochs} epochs: {problem} (e.g. "
                               f"cfg/yolov5n-dero-rep-c3.yaml with --act-anneal-epochs {max(1, epochs // 2)})")
    return n


def yaml_with_anneal(model_yaml: str | Path, epochs: float) -> Path:
    """A copy of ``model_yaml`` with ``act_anneal_epochs: epochs``, written under the project cache (``models/``,
    named after the YAML, so the scale letter stays). Ultralytics builds a run's model from its YAML file, and its
    DDP workers do too: the setting has to be in a file."""
    source = resolve_model_yaml(model_yaml)
    load_model_yaml(source)  # a malformed file fails here in one line
    cfg = yaml.safe_load(source.read_text(encoding="utf-8"))
    cfg[ANNEAL_KEY] = epochs
    out = cache_dir() / "models" / f"{source.stem}-anneal{epochs:g}{source.suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, yaml.safe_dump(cfg, sort_keys=False).encode())
    return out
