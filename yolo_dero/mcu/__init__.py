"""Deployment to microcontrollers: full-integer TFLite export, TFLite Micro arena measurement, and the
cross-check of the memory analyzer's ``tflm`` engine against the real runtime. See docs/deployment.md.

CLI: ``python -m yolo_dero.mcu export|arena|crosscheck ...``. Needs requirements-mcu.txt (litert-torch,
tflite-micro); importing this package does not.
"""

from .export import (ConvShortcut, ExportResult, FloatTensorError, GraphInfo, MissingDependencyError, RawDetectHead,
                     calibration_images, check_full_int8, deployable, export_model, export_tflite, float_problems,
                     inspect_tflite, lower_for_export, require)
from .arena import ArenaResult, measure_arena, parse_allocations

__all__ = [
    "export_tflite", "export_model", "ExportResult", "FloatTensorError", "MissingDependencyError", "check_full_int8",
    "float_problems", "inspect_tflite", "GraphInfo", "lower_for_export", "ConvShortcut", "RawDetectHead", "deployable",
    "calibration_images", "require", "measure_arena", "parse_allocations", "ArenaResult",
]
