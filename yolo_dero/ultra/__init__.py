"""Ultralytics glue for the DERO YOLO models.

Importing this package first sets up an offline, project-owned Ultralytics environment (see :mod:`.env`),
then imports Ultralytics. Everything that touches Ultralytics in this project imports it from here.
"""

from .env import patch_ultralytics, setup_environment

setup_environment()

import ultralytics  # noqa: E402,F401

patch_ultralytics()

from .model import CheckpointError, DeroDetectionModel, DeroDetectionTrainer, DeroYOLO, check_checkpoint  # noqa: E402
from .parser import ModelConfigError, build_model, load_model_yaml, resolve_model_yaml  # noqa: E402
from .evaluate import evaluate_detector  # noqa: E402

__all__ = ["DeroYOLO", "DeroDetectionModel", "DeroDetectionTrainer", "CheckpointError", "ModelConfigError",
           "check_checkpoint", "build_model", "load_model_yaml", "resolve_model_yaml", "setup_environment",
           "evaluate_detector"]
