"""Measure a TFLite model's arena in the TensorFlow Lite Micro interpreter (:func:`measure_arena`).

From TFLM's ``print_allocations()`` (read by :mod:`yolo_dero.mcu.runtime`):

* **head**: the non-persistent, planned activation buffers (what the memory analyzer's ``tflm`` engine
  predicts as ``arena_bytes``),
* **tail**: persistent allocations (tensor structs, node data, quantization parameters, kernel op data,
  scratch requests),
* **total** = head + tail as allocated with the arena size given.

The **minimal arena** is found by bisection on ``arena_size`` (:func:`~yolo_dero.mcu.runtime.minimal_arena`). It
can exceed ``total`` slightly because of alignment of the arena start and of the head/tail boundary. A file with an
offline memory plan is measured without it too (the online head).

One inference on a random int8 input is compared with the LiteRT interpreter (``ai-edge-litert``, reference
kernels) on the same input: outputs must agree within ``tolerance`` LSB (default 2). The difference to
LiteRT's default optimized kernels is reported too (not checked). Every TFLM and LiteRT call runs in a forked
child process (:func:`~yolo_dero.mcu.runtime.run_isolated`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .runtime import allocates, allocations, compare_with_litert, minimal_arena, working_arena
from .tflite import has_plan, require, strip_plan


@dataclass
class ArenaResult:
    path: str
    head_bytes: int                      # planned (non-persistent) activation buffers
    tail_bytes: int                      # persistent allocations
    total_bytes: int                     # head + tail with a generous arena
    minimal_arena_bytes: Optional[int]   # smallest arena_size that allocates (bisection)
    bisection_tries: int
    file_bytes: int
    detail: Dict[str, int] = field(default_factory=dict)
    input_shape: List[int] = field(default_factory=list)
    input_dtype: str = ""
    outputs_checked: bool = False
    max_abs_diff_lsb: Optional[int] = None
    tolerance_lsb: int = 2
    outputs_match: Optional[bool] = None
    litert_resolver: str = "BUILTIN_REF"
    max_abs_diff_lsb_optimized: Optional[int] = None   # against LiteRT's default (optimized/XNNPACK) kernels
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    online_head_bytes: Optional[int] = None  # offline memory plan in the file: head with the plan removed

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def measure_arena(path: Union[str, Path, bytes], bisect: bool = True, check_outputs: bool = True,
                  tolerance: int = 2, align: int = 16) -> ArenaResult:
    """Measure head/tail/total arena bytes of a ``.tflite`` under TFLM, the minimal arena, and the output check."""
    require("tflite_micro")
    t0 = time.time()
    model = path if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    model = bytes(model)
    size, alloc = working_arena(model)  # TFLM's own default is 10x the flatbuffer
    minimal, tries = (None, 0)
    if bisect:
        upper = alloc["total"] + 4 * align
        if not allocates(model, upper):
            upper = size
        minimal, tries = minimal_arena(model, upper, align)
    res = ArenaResult(path=str(path) if not isinstance(path, (bytes, bytearray)) else "<bytes>",
                      head_bytes=alloc["head"], tail_bytes=alloc["tail"], total_bytes=alloc["total"],
                      minimal_arena_bytes=minimal, bisection_tries=tries, file_bytes=len(model),
                      detail=alloc["detail"], tolerance_lsb=tolerance)
    # an offline memory plan in the file: head bytes of the same file without the plan
    try:
        planned = has_plan(model)
    except ImportError:  # ai-edge-litert (the flatbuffer schema) missing: no plan report
        planned = False
    if planned:
        res.online_head_bytes = allocations(strip_plan(model), size)["head"]
        res.notes.append(f"offline memory plan: planned head {res.head_bytes} B, online head {res.online_head_bytes} B")
    if check_outputs:
        require("ai_edge_litert")
        diff, shapes, dt = compare_with_litert(model, size)
        res.outputs_checked, res.max_abs_diff_lsb = True, diff
        try:
            res.max_abs_diff_lsb_optimized = compare_with_litert(model, size, resolver="AUTO")[0]
        except RuntimeError as e:  # LiteRT's optimized kernels crashed: reported, not fatal
            res.notes.append(f"LiteRT optimized kernels: {e}")
        res.outputs_match = diff <= tolerance
        res.input_shape, res.input_dtype = shapes[0], dt
    res.seconds = round(time.time() - t0, 1)
    return res
