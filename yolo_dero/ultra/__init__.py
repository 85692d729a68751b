"""Ultralytics glue for the DERO YOLO models.

Importing this package makes the project's one offline set-up call, :func:`.env.setup_offline` (environment
defaults, project-owned settings, a local font; see :mod:`.env`), which imports Ultralytics. Everything in the
project that touches Ultralytics imports it from here, so the set-up comes first.
"""

from .env import OfflineSetupError, setup_offline

setup_offline()

# after the set-up: these modules import Ultralytics
from .model import (CheckpointError, DeroDetectionModel, DeroDetectionTrainer, DeroHeadDistillationTrainer,  # noqa: E402
                    DeroYOLO, check_checkpoint)
from .parser import ModelConfigError, load_model_yaml, resolve_model_yaml  # noqa: E402
from .convert import convert_to_dero, stock_layout  # noqa: E402
from .evaluate import evaluate_detector  # noqa: E402

__all__ = ["DeroYOLO", "DeroDetectionModel", "DeroDetectionTrainer", "DeroHeadDistillationTrainer", "CheckpointError",
           "ModelConfigError", "OfflineSetupError", "check_checkpoint", "convert_to_dero", "stock_layout",
           "load_model_yaml", "resolve_model_yaml", "setup_offline", "evaluate_detector"]
