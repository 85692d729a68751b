"""Activation-memory analysis: peak memory of any ``nn.Module`` under docs/memory_model.md §3 (engine ``fused``)
and under TensorFlow Lite Micro's greedy planner (engine ``tflm``). See docs/memory_model.md.

Imports torch and :mod:`yolo_dero.nn` only; models are modules (a model declares its ``memory_stages`` and
``memory_outputs``). Layers, each importing only the ones above it: ``trace`` (record a forward pass),
``intervals`` (lifetimes and arena placement, pure Python; shared with :mod:`yolo_dero.mcu.offline_plan`),
``lowering`` (the operator sequence), ``engines`` (:class:`Engine`: ``lower`` + ``place``; ``FUSED``, ``TFLM`` and
the name registry), ``analyzer`` (:func:`analyze`), ``plot``. The command line (``__main__``) loads models by
name, YAML or ``.pt`` through :mod:`yolo_dero.catalog`.

CLI: ``python -m yolo_dero.memory --model resnet34_dero --imgsz 224 [--engine tflm]``.
"""

from .analyzer import MemoryResult, analyze, analyze_engines, deployed_form, input_channels, trace_model
from .engines import (ENGINES, FUSED, TFLM, Engine, FusedEngine, OpGraph, Plan, TFLMEngine, engine_names, fused_plan,
                      get_engine, plan, register_engine, tflm_plan)
from .intervals import Interval, greedy_arena, live_profile, place
from .lowering import Op, operator_sequence
from .trace import Trace, is_dero_module, record, select_outputs

__all__ = [
    "analyze", "analyze_engines", "trace_model", "deployed_form", "MemoryResult", "input_channels",
    "ENGINES", "FUSED", "TFLM", "Engine", "FusedEngine", "TFLMEngine", "OpGraph", "Plan", "get_engine",
    "register_engine", "engine_names", "plan", "fused_plan", "tflm_plan",
    "Interval", "greedy_arena", "live_profile", "place", "Op", "operator_sequence",
    "Trace", "record", "is_dero_module", "select_outputs",
]
