"""Does a ``.tflite`` fit a part's SRAM? The TFLite Micro arena, measured, against the SRAM size.

:func:`fit_check` measures the file in TFLM (:func:`~yolo_dero.mcu.arena.measure_arena`: head = activations,
tail = persistent allocations, and the smallest ``arena_size`` that allocates, by bisection) and compares that
minimal arena with ``sram_kb * 1024`` bytes. :func:`activation_peak` names the operator where the activation
bytes peak, from the file's own graph with TFLM's lifetime rules (:func:`~yolo_dero.mcu.tflite.read_graph`);
where the file carries an offline memory plan (``OfflineMemoryAllocation``), tensors that share arena bytes
(elementwise operators written in place) count once.

What it does not count: the stack, buffers the application keeps outside the arena, and the flatbuffer itself
(it stays in flash). The tail is measured with the x86-64 build of the ``tflite-micro`` Python package
(reference kernels, 8-byte pointers in TFLM's tensor and node structs); a 32-bit MCU build's tail differs, and
optimized kernels (CMSIS-NN) may request scratch buffers. See docs/deployment.md, "Fit check".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .arena import ArenaResult, measure_arena
from .tflite import has_plan, read_graph, read_offsets, require, short_name, strip_plan


def sram_problem(sram_kb: Optional[float]) -> Optional[str]:
    """The one-line error for an SRAM size that is not a positive, finite number of KiB, or None."""
    if sram_kb is None:
        return None
    if not (isinstance(sram_kb, (int, float)) and math.isfinite(sram_kb) and sram_kb > 0):
        return (f"--sram-kb {sram_kb:g}: needs the part's SRAM as a positive number of KiB; "
                f"pass e.g. --sram-kb 256")
    return None


def live_bytes_per_operator(src: Union[str, Path, bytes]) -> Tuple[List[int], Any]:
    """Arena bytes of the activation tensors live at each operator, and the graph.

    Without a plan every live activation tensor counts in full (TFLM's online planner runs nothing in place).
    With an offline plan, tensors placed by the plan count as the union of their byte ranges (tensors
    sharing bytes count once); tensors the plan leaves to TFLM (offset ``-1``) count in full.
    """
    vals = read_offsets(src)
    g = read_graph(strip_plan(src) if vals is not None else src)
    offs = vals[3:] if vals is not None else [-1] * len(g.tensors)
    acts = [t for t in g.tensors if t.kind == "activation"]
    prof = []
    for k in range(max(len(g.ops), 1)):
        live = [t for t in acts if t.first <= k <= t.last]
        online = sum(t.bytes for t in live if offs[t.index] < 0)
        spans = sorted((offs[t.index], offs[t.index] + t.bytes) for t in live if offs[t.index] >= 0)
        union, end = 0, -1
        for s, e in spans:
            if e > end:
                union += e - max(s, end)
                end = e
        prof.append(online + union)
    return prof, g


def activation_peak(src: Union[str, Path, bytes]) -> Tuple[str, int]:
    """``("#k OP -> tensor", bytes)``: the first operator where the live activation bytes peak (see
    :func:`live_bytes_per_operator`) and those bytes."""
    prof, g = live_bytes_per_operator(src)
    if not g.ops:
        return "-", 0
    k = max(range(len(prof)), key=lambda i: (prof[i], -i))
    outs = g.ops[k]["outputs"]
    label = f"#{k} {g.ops[k]['op']}" + (f" -> {short_name(g.tensors[outs[0]].name)}" if outs else "")
    return label, prof[k]


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB ({n:,} B)"


@dataclass
class FitResult:
    path: str
    sram_kb: float
    sram_bytes: int
    arena_bytes: int          # the minimal arena that allocates (bisection), else head + tail
    head_bytes: int           # activations
    tail_bytes: int           # persistent allocations
    fits: bool
    margin_bytes: int         # sram_bytes - arena_bytes (negative: misses by that much)
    peak_operator: str        # where the live activation bytes peak
    peak_live_bytes: int      # live activation bytes there (the head when placement leaves no gap)
    planned: bool             # the file carries an offline memory plan

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line: fits with X KiB to spare / does NOT fit, misses by Y KiB; arena, head, tail, peak."""
        verdict = (f"fits {self.sram_kb:g} KiB SRAM with {_kib(self.margin_bytes)} to spare" if self.fits else
                   f"does NOT fit {self.sram_kb:g} KiB SRAM: misses by {_kib(-self.margin_bytes)}")
        gap = (f", {self.peak_live_bytes:,} B live there (the rest of the head: placement gaps or scratch)"
               if self.peak_live_bytes != self.head_bytes else "")
        what = "minimal arena" if self.arena_bytes != self.head_bytes + self.tail_bytes else "arena"
        return (f"fit: {verdict}; TFLM {what} {self.arena_bytes:,} B = head {self.head_bytes:,} B "
                f"({'offline plan' if self.planned else 'online planner'}, activation peak at "
                f"{self.peak_operator}{gap}) + tail {self.tail_bytes:,} B (persistent)")


def fit_check(path: Union[str, Path], sram_kb: float, arena: Optional[ArenaResult] = None) -> FitResult:
    """Measure ``path`` in TFLM (or take ``arena``, a :func:`measure_arena` result of the same file) and
    compare its arena with ``sram_kb`` KiB. Raises ``ValueError`` for a non-positive ``sram_kb``."""
    problem = sram_problem(sram_kb)
    if problem:
        raise ValueError(problem)
    require("tflite_micro", "ai_edge_litert")
    a = arena or measure_arena(path, bisect=True, check_outputs=False)
    need = max(a.minimal_arena_bytes or 0, a.head_bytes + a.tail_bytes)
    sram = int(round(sram_kb * 1024))
    label, live = activation_peak(path)
    return FitResult(str(path), float(sram_kb), sram, need, a.head_bytes, a.tail_bytes, need <= sram, sram - need,
                     label, live, has_plan(path))
