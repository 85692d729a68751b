"""Activation-memory analysis: peak memory of any ``nn.Module`` under docs/memory_model.md §3 (engine ``fused``)
and under TensorFlow Lite Micro's greedy planner (engine ``tflm``). See docs/memory_model.md.

CLI: ``python -m yolo_dero.memory --model resnet34dero --imgsz 224 [--engine tflm]``.
"""

from .analyzer import MemoryResult, analyze, analyze_engines, input_channels, trace_model
from .engines import ENGINES, Op, Plan, fused_plan, greedy_arena, operator_sequence, plan, tflm_plan
from .trace import Trace, is_dero_module, record

__all__ = [
    "analyze", "analyze_engines", "trace_model", "MemoryResult", "input_channels", "ENGINES", "Op", "Plan",
    "plan", "fused_plan", "tflm_plan", "greedy_arena", "operator_sequence", "Trace", "record", "is_dero_module",
]
