"""Deployment to microcontrollers: full-integer TFLite export, TFLite Micro arena measurement, the offline memory
plan, and the cross-check of the memory analyzer's ``tflm`` engine against the real runtime. See docs/deployment.md.

CLI: ``python -m yolo_dero.mcu export|arena|plan|crosscheck|plan-report|reparam-report ...``. Needs
requirements-mcu.txt (litert-torch, tflite-micro); importing this package does not.

Modules, each importing only the ones above it:

* ``tflite``: flatbuffer read / inspect / full-integer check, the ``OfflineMemoryAllocation`` metadata, ``require``;
* ``runtime``: TFLite Micro and LiteRT runs, each in a child process (``run_isolated``), arena sizing;
* ``export`` (int8 export), ``arena`` (arena measurement), ``offline_plan`` (planner, validator, TFLM check),
  ``fit`` (SRAM fit check, on ``arena``);
* ``reports``: the cross-check, plan and reparam reports over the model zoo (results/mcu_*.md);
* ``__main__``: the command line.
"""

from .arena import ArenaResult, measure_arena
from .export import (ConvShortcut, ExportResult, RawDetectHead, calibration_images, deployable, export_model,
                     export_tflite, lower_for_export)
from .runtime import parse_allocations
from .tflite import (FloatTensorError, GraphInfo, MissingDependencyError, check_full_int8, float_problems,
                     inspect_tflite, require)

__all__ = [
    "export_tflite", "export_model", "ExportResult", "FloatTensorError", "MissingDependencyError", "check_full_int8",
    "float_problems", "inspect_tflite", "GraphInfo", "lower_for_export", "ConvShortcut", "RawDetectHead", "deployable",
    "calibration_images", "require", "measure_arena", "parse_allocations", "ArenaResult",
]
