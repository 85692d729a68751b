"""Offline memory plan for TensorFlow Lite Micro: planner, validator and TFLM check.

TFLM's planner honours a model metadata entry named ``OfflineMemoryAllocation`` (one arena offset per tensor,
``-1`` for tensors it should plan itself; read and written by :mod:`yolo_dero.mcu.tflite`). It validates nothing
but the count, so this module

1. **plans** (:func:`plan_model`): the lifetime of every activation tensor from the operator order, with
   TFLM's rules (:func:`~yolo_dero.mcu.tflite.read_graph`). The output of a strictly elementwise operator
   (:data:`INPLACE_OPS`: ADD, SUB, MUL, LOGISTIC, ...) may share its buffer with an input that has the
   output's exact shape and type and whose last reader is that operator (never a graph input or a
   variable). Shared tensors form one buffer; the buffers are placed in one arena, 16-byte aligned, by
   first-fit/best-fit (:func:`yolo_dero.memory.intervals.place`, the interval core the memory analyzer's engines
   use too) over several orderings (and random ones while time allows), keeping the best; it
   stops as soon as the lower bound (the largest live set) is reached. Constants, variable tensors
   (TFLM allocates them persistently) and tensors no operator uses get ``-1``.
2. **validates** (:func:`validate_plan`): re-reads a planned file and checks every pair of tensors that
   overlap both in arena bytes and in lifetime is an allowed in-place pair (as defined above, at the same
   offset), that offsets are 16-byte aligned and that constants / variables are left to TFLM; anything else
   raises :class:`~yolo_dero.mcu.tflite.PlanError` naming the tensors. :func:`plan_file` always runs it on what it
   wrote.
3. **writes** the metadata entry (:func:`~yolo_dero.mcu.tflite.write_plan`, replacing an existing one).
4. **verifies** (:func:`verify_plan`): the planned and the unplanned file in TFLM on random int8 inputs
   (outputs must be bit-identical) and against LiteRT's reference kernels (within ``tolerance`` LSB),
   plus both measured arena heads.

Assumptions: TFLM's reference kernels (the ``tflite-micro`` Python package). In-place execution was
verified only for the reference kernels with identical input/output shapes; optimized kernels (CMSIS-NN)
were not tried. See docs/deployment.md, section "Offline memory plan".
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..fileutil import atomic_file
from ..memory.intervals import Interval
from ..memory.intervals import live_profile as interval_profile
from ..memory.intervals import place as place_intervals
from .runtime import litert_reference, run_tflm, working_arena
from .tflite import (ALIGN, METADATA_NAME, Graph, PlanError, Source, has_plan, read_graph, read_offsets, require,
                     short_name, strip_plan, write_plan)

#: operators whose output element i depends only on input element(s) i (reference kernels read element i
#: before writing it): their output may overwrite an input of the exact same shape and type
INPLACE_OPS = frozenset({"ADD", "SUB", "MUL", "LOGISTIC", "TANH", "RELU", "RELU6", "RELU_N1_TO_1",
                         "LEAKY_RELU", "HARD_SWISH", "ABS", "NEG"})


def inplace_pair(g: Graph, a: int, b: int) -> Optional[int]:
    """The operator index if ``a`` and ``b`` may share bytes (one is the output of an elementwise operator,
    the other an input of it with the same shape and type whose last reader it is), else None."""
    for src, out in ((a, b), (b, a)):
        ts, to = g.tensors[src], g.tensors[out]
        k = to.first
        if k < 0 or k >= len(g.ops) or ts.last != k or src in g.inputs or src in g.outputs:
            continue
        op = g.ops[k]
        if op["op"] in INPLACE_OPS and op["outputs"] == [out] and src in op["inputs"] \
                and ts.shape == to.shape and ts.type == to.type and ts.kind == to.kind == "activation":
            return k
    return None


# ------------------------------------------------------------------------------------------------
# planner


@dataclass
class Buffer:
    tensors: List[int]
    first: int
    last: int
    bytes: int
    offset: int = -1


def _groups(g: Graph, inplace: bool) -> List[Buffer]:
    acts = [t.index for t in g.tensors if t.kind == "activation"]
    group = {i: i for i in acts}   # tensor -> representative (its buffer)
    members = {i: [i] for i in acts}
    if inplace:
        for k, op in enumerate(g.ops):
            if op["op"] not in INPLACE_OPS or len(op["outputs"]) != 1:
                continue
            out = op["outputs"][0]
            if g.tensors[out].kind != "activation" or g.tensors[out].first != k:
                continue
            cands = [i for i in dict.fromkeys(op["inputs"]) if g.tensors[i].kind == "activation"
                     and inplace_pair(g, i, out) == k
                     and max(g.tensors[m].last for m in members[group[i]]) == k]
            if not cands:
                continue
            # share with the operand created last (the conv output rather than the long-lived skip)
            src = max(cands, key=lambda i: (g.tensors[i].first, i))
            r = group[src]
            members[r].append(out)
            group[out] = r
            del members[out]
    bufs = []
    for r, ms in members.items():
        bufs.append(Buffer(sorted(ms), min(g.tensors[m].first for m in ms), max(g.tensors[m].last for m in ms),
                           max(g.tensors[m].bytes for m in ms)))
    return bufs


def intervals(bufs: Sequence[Buffer]) -> List[Interval]:
    """The buffers as ``(bytes, first op, last op)`` intervals of :mod:`yolo_dero.memory.intervals`."""
    return [(b.bytes, b.first, b.last) for b in bufs]


def live_profile(bufs: Sequence[Buffer], n_ops: int) -> List[int]:
    return interval_profile(intervals(bufs), max(n_ops, 1))


def place(bufs: Sequence[Buffer], n_ops: int, time_budget: float = 2.0, seed: int = 0) -> Tuple[int, str]:
    """Set ``offset`` of every buffer; returns ``(head bytes, name of the winning ordering)``.

    Orderings: by start (first-fit by start time is optimal for equal sizes on an interval graph), by size
    then start, by size then lifetime length, by size x length, by end, TFLM's (size, reverse index), each
    with first-fit and best-fit, then random orderings while ``time_budget`` seconds allow. Stops at the
    lower bound (largest live set).
    """
    if not bufs:
        return 0, "empty"
    ivs = intervals(bufs)
    lb = max(live_profile(bufs, n_ops))
    idx = list(range(len(bufs)))
    ln = lambda i: bufs[i].last - bufs[i].first + 1  # noqa: E731
    orders = {
        "start": sorted(idx, key=lambda i: (bufs[i].first, -bufs[i].bytes, -ln(i))),
        "size,start": sorted(idx, key=lambda i: (-bufs[i].bytes, bufs[i].first)),
        "size,length": sorted(idx, key=lambda i: (-bufs[i].bytes, -ln(i), bufs[i].first)),
        "size*length": sorted(idx, key=lambda i: (-bufs[i].bytes * ln(i), bufs[i].first)),
        "length": sorted(idx, key=lambda i: (-ln(i), -bufs[i].bytes, bufs[i].first)),
        "end": sorted(idx, key=lambda i: (bufs[i].last, -bufs[i].bytes)),
        "tflm": sorted(idx, key=lambda i: (-bufs[i].bytes, -bufs[i].tensors[0])),
    }
    best: Optional[Tuple[int, List[int], str]] = None
    for name, order in orders.items():
        for bf in (False, True):
            head, offs = place_intervals(ivs, order, bf)
            if best is None or head < best[0]:
                best = (head, offs, f"{name}/{'best' if bf else 'first'}-fit")
            if best[0] <= lb:
                break
        if best[0] <= lb:
            break
    rng = random.Random(seed)
    t0, tries = time.time(), 0
    while best[0] > lb and time.time() - t0 < time_budget:
        tries += 1
        base = orders["size,start"] if tries % 2 else orders["start"]
        order = list(base)
        for _ in range(max(1, len(order) // 8)):  # perturb a few positions
            a, b = rng.randrange(len(order)), rng.randrange(len(order))
            order[a], order[b] = order[b], order[a]
        head, offs = place_intervals(ivs, order, bool(tries % 3 == 0))
        if head < best[0]:
            best = (head, offs, f"random #{tries}")
    for b, o in zip(bufs, best[1]):
        b.offset = o
    return best[0], best[2]


@dataclass
class Plan:
    offsets: List[int]                 # one per tensor, -1 = not in the arena / left to TFLM
    head_bytes: int                    # max(offset + size): the planned arena head
    largest_live_bytes: int            # lower bound: largest live set of the buffers
    peak_operator: str                 # operator where the largest live set occurs
    inplace_pairs: List[Tuple[str, str, str]]   # (operator, input tensor, output tensor) sharing bytes
    n_buffers: int
    ordering: str
    inplace: bool
    peak_live: List[Tuple[str, int]] = field(default_factory=list)   # (tensor, bytes) live at the peak

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("offsets")
        return d


def plan_graph(g: Graph, inplace: bool = True, time_budget: float = 2.0) -> Plan:
    bufs = _groups(g, inplace)
    head, how = place(bufs, len(g.ops), time_budget=time_budget)
    offsets = [-1] * len(g.tensors)
    for b in bufs:
        for t in b.tensors:
            offsets[t] = b.offset
    prof = live_profile(bufs, len(g.ops))
    k = int(np.argmax(prof)) if prof else 0
    peak = (f"#{k} {g.ops[k]['op']} -> {short_name(g.tensors[g.ops[k]['outputs'][0]].name)}"
            if g.ops and g.ops[k]["outputs"] else "-")
    pairs = []
    for b in bufs:
        for t in b.tensors[1:]:
            k2 = g.tensors[t].first
            src = [i for i in b.tensors if i in g.ops[k2]["inputs"]]
            pairs.append((f"#{k2} {g.ops[k2]['op']}", g.tensors[src[0]].name if src else "?", g.tensors[t].name))
    live = [(" = ".join(short_name(g.tensors[t].name) for t in b.tensors), b.bytes)
            for b in bufs if g.ops and b.first <= k <= b.last]
    return Plan(offsets, head, max(prof) if prof else 0, peak, pairs, len(bufs), how, inplace, live)


def plan_model(src: Source, inplace: bool = True, time_budget: float = 2.0) -> Plan:
    return plan_graph(read_graph(src), inplace=inplace, time_budget=time_budget)


# ------------------------------------------------------------------------------------------------
# validator


@dataclass
class Validation:
    head_bytes: int
    planned_tensors: int
    online_tensors: int
    inplace_pairs: int


def validate_plan(src: Source, graph: Optional[Graph] = None) -> Validation:
    """Check the ``OfflineMemoryAllocation`` of a file; raises :class:`PlanError` naming what is unsafe."""
    vals = read_offsets(src)
    if vals is None:
        raise PlanError(f"no '{METADATA_NAME}' metadata in the model")
    g = graph or read_graph(src)
    errs: List[str] = []
    if len(vals) < 3 or vals[0] != 1 or vals[1] != 0:
        raise PlanError(f"bad {METADATA_NAME} header {vals[:3]} (want version 1, subgraph 0)")
    n, offs = vals[2], vals[3:]
    if n != len(g.tensors) or len(offs) != n:
        raise PlanError(f"{METADATA_NAME} holds {len(offs)} offsets (header says {n}) for {len(g.tensors)} tensors")
    planned = []
    for t, o in zip(g.tensors, offs):
        if o == -1:
            continue
        if o < 0:
            errs.append(f"tensor {t.index} '{t.name}': negative offset {o}")
        elif t.kind != "activation":
            errs.append(f"tensor {t.index} '{t.name}' is {t.kind} but has offset {o} (must be -1)")
        elif o % ALIGN:
            errs.append(f"tensor {t.index} '{t.name}': offset {o} is not {ALIGN}-byte aligned")
        else:
            planned.append(t.index)
    pairs = 0
    by_off = sorted(planned, key=lambda i: offs[i])
    for x, a in enumerate(by_off):
        ea = offs[a] + g.tensors[a].bytes
        for b in by_off[x + 1:]:
            if offs[b] >= ea:
                break
            if not g.live(a, b):
                continue
            if offs[a] == offs[b] and inplace_pair(g, a, b) is not None:
                pairs += 1   # an in-place pair must start at the same byte (a shifted overlap is unsafe)
                continue
            ta, tb = g.tensors[a], g.tensors[b]
            errs.append(f"tensors {a} '{ta.name}' [{offs[a]}, {offs[a] + ta.bytes}) ops {ta.first}-{ta.last} and "
                        f"{b} '{tb.name}' [{offs[b]}, {offs[b] + tb.bytes}) ops {tb.first}-{tb.last} overlap in "
                        f"bytes and lifetime and are not an in-place pair")
    if errs:
        shown = "\n  ".join(errs[:20]) + (f"\n  ... {len(errs) - 20} more" if len(errs) > 20 else "")
        raise PlanError(f"unsafe offline memory plan ({len(errs)} problem(s)):\n  {shown}")
    head = max((offs[i] + g.tensors[i].bytes for i in planned), default=0)
    online = sum(1 for t, o in zip(g.tensors, offs) if t.kind == "activation" and o == -1)
    return Validation(head, len(planned), online, pairs)


# ------------------------------------------------------------------------------------------------
# verification in TFLM


def _random_inputs(g: Graph, seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in g.inputs:
        t = g.tensors[i]
        dt = np.dtype(t.type.lower()) if t.type not in ("BOOL",) else np.dtype(bool)
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            out.append(rng.integers(info.min, info.max + 1, size=tuple(t.shape), dtype=np.int64).astype(dt))
        else:
            out.append(rng.random(tuple(t.shape)).astype(dt))
    return out


@dataclass
class Verification:
    online_head_bytes: int
    planned_head_bytes: int
    planned_tail_bytes: int
    n_inputs: int
    bit_identical: bool
    max_abs_diff_lsb_litert: int
    tolerance_lsb: int


def verify_plan(planned: bytes, unplanned: bytes, n_inputs: int = 3, tolerance: int = 2, seed: int = 0,
                graph: Optional[Graph] = None) -> Verification:
    """Measure both heads and run ``n_inputs`` random inputs through TFLM (planned and unplanned, each in a
    child process) and LiteRT's reference kernels. Raises :class:`PlanError` unless the planned outputs are
    bit-identical to the unplanned TFLM run and within ``tolerance`` LSB of LiteRT."""
    if n_inputs < 1:
        raise ValueError(f"n_inputs={n_inputs}: a check on no input would prove nothing")
    g = graph or read_graph(planned)
    size_u, alloc_u = working_arena(unplanned)
    size_p, alloc_p = working_arena(planned)
    worst, same = 0, True
    for s in range(n_inputs):
        xs = _random_inputs(g, seed + s)
        got_u = run_tflm(unplanned, size_u, xs, len(g.outputs))
        got_p = run_tflm(planned, size_p, xs, len(g.outputs))
        ref = litert_reference(planned, xs)
        for u, p, r in zip(got_u, got_p, ref):
            u, p = np.asarray(u), np.asarray(p).reshape(np.shape(u))
            if not np.array_equal(u, p):
                same = False
                d = int(np.max(np.abs(u.astype(np.int64) - p.astype(np.int64))))
                raise PlanError(f"planned TFLM outputs differ from the unplanned TFLM run on random input {s} "
                                f"(max |diff| {d} LSB): the plan is unsafe for these kernels")
            worst = max(worst, int(np.max(np.abs(np.asarray(r).reshape(p.shape).astype(np.int64)
                                                 - p.astype(np.int64)))) if p.size else 0)
    if worst > tolerance:
        raise PlanError(f"planned TFLM outputs differ from LiteRT's reference kernels by {worst} LSB "
                        f"(> tolerance {tolerance})")
    return Verification(alloc_u["head"], alloc_p["head"], alloc_p["tail"], n_inputs, same, worst, tolerance)


# ------------------------------------------------------------------------------------------------
# one call: plan, write, validate, verify


@dataclass
class PlanResult:
    path: str
    out: str
    plan: Dict[str, Any]
    validation: Dict[str, Any]
    verification: Optional[Dict[str, Any]] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def plan_file(src: Union[str, Path], out: Union[str, Path], inplace: bool = True, verify: bool = True,
              n_inputs: int = 3, tolerance: int = 2, time_budget: float = 2.0) -> PlanResult:
    """Plan ``src``, write ``out`` with the metadata, validate it (always) and verify it in TFLM.

    The planned model is written to a temporary file beside ``out`` and renamed to ``out`` only once it is
    validated and verified: on any failure (:class:`PlanError`, a missing package, a kill) ``out`` keeps what it
    held before -- which matters when ``out`` is ``src`` itself.
    """
    require("ai_edge_litert", *(["tflite_micro"] if verify else []))  # before any work or write
    if verify and n_inputs < 1:
        raise ValueError(f"n_inputs={n_inputs}: the TFLM check needs at least one input (or verify=False)")
    t0 = time.time()
    raw = Path(src).read_bytes()
    unplanned = strip_plan(raw) if has_plan(raw) else raw
    g = read_graph(unplanned)
    p = plan_graph(g, inplace=inplace, time_budget=time_budget)
    data = write_plan(unplanned, p.offsets)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f:  # renamed to ``out`` only if the block below does not raise
        f.write(data)
        f.flush()
        v = validate_plan(Path(f.name).read_bytes())  # what is on disk, not what we meant to write
        if v.head_bytes != p.head_bytes:
            raise PlanError(f"validated head {v.head_bytes} != planned head {p.head_bytes}")
        ver = None
        if verify:
            ver = verify_plan(data, unplanned, n_inputs=n_inputs, tolerance=tolerance, graph=g)
    res = PlanResult(str(src), str(out), p.to_dict(), asdict(v), asdict(ver) if ver else None,
                     round(time.time() - t0, 1))
    if ver and ver.planned_head_bytes != p.head_bytes:
        res.notes.append(f"TFLM head {ver.planned_head_bytes} != planned {p.head_bytes} "
                         f"(online-planned scratch buffers or alignment)")
    return res
