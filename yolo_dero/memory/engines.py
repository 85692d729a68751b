"""The memory engines: how a deployment runtime turns a recorded trace into buffers and an arena.

See docs/memory_model.md for the model these engines implement. An :class:`Engine` has two steps:

* ``lower(trace)`` -> :class:`OpGraph`: the operator sequence this runtime executes (from
  :func:`~yolo_dero.memory.lowering.operator_sequence`) with the size of every value it touches;
* ``place(graph, bytes_per_element)`` -> :class:`Plan`: buffer lifetimes, the live-bytes profile and, where the
  runtime plans an arena, the arena and the offsets (:mod:`yolo_dero.memory.intervals`).

Two engines ship, registered by name (``get_engine("fused")`` or an instance, as timm's ``get_act_layer``):

* :data:`FUSED` (``"fused"``): docs/memory_model.md §3. DERO units are one operator; every operator writes a new
  buffer, except that elementwise operators (and operators PyTorch itself ran in place) write into a dying input
  of equal size.
* :data:`TFLM` (``"tflm"``): TensorFlow Lite Micro. No operator works in place, DERO units are their conv,
  shortcut and add operators, a strided conv/pool with PyTorch's symmetric padding is preceded by an explicit PAD
  operator (``pad_ops``), and buffers are placed by TFLM's greedy first-fit planner (``tie``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from .intervals import Interval, greedy_arena, live_profile
from .lowering import Op, operator_sequence
from .trace import Trace

#: the names of the built-in engines (``--engine`` choices; :func:`engine_names` lists every registered one)
ENGINES = ("fused", "tflm")


@dataclass
class OpGraph:
    """An engine's operator sequence with the elements of every value it reads or writes."""

    ops: List[Op]
    numel: Dict[int, int]              # value id -> elements of its storage
    inputs: List[int]                  # network inputs (live from operator 0)
    outputs: List[int]                 # network outputs (live to the last operator)


@dataclass
class Plan:
    """Result of an engine: the operator sequence, per-operator live bytes and (tflm) the arena."""

    engine: str
    ops: List[Op]
    profile: List[int]                 # bytes live while each operator runs
    buffers: List[Interval]            # (size bytes, first op, last op) of each planned buffer
    arena_bytes: Optional[int] = None
    offsets: Optional[List[int]] = None

    @property
    def peak_bytes(self) -> int:
        return max(self.profile) if self.profile else 0

    @property
    def peak_index(self) -> int:
        return max(range(len(self.profile)), key=self.profile.__getitem__) if self.profile else 0


def lifetimes(graph: OpGraph) -> Tuple[Dict[int, int], Dict[int, int]]:
    """first/last operator index of every value used by ``graph.ops`` (inputs from 0, outputs to the end)."""
    first: Dict[int, int] = {v: 0 for v in graph.inputs}
    last: Dict[int, int] = {v: 0 for v in graph.inputs}
    for i, op in enumerate(graph.ops):
        for w in op.writes:
            first.setdefault(w, i)
            last[w] = max(last.get(w, i), i)
        for r in op.reads:
            first.setdefault(r, 0)  # a value read but never written here: an input
            last[r] = max(last.get(r, 0), i)
    end = max(len(graph.ops) - 1, 0)
    for v in graph.outputs:
        if v in first:
            last[v] = end
    return first, last


class Engine:
    """A deployment runtime's memory behaviour: :meth:`lower` a trace, then :meth:`place` its buffers.

    Subclasses set ``name`` and list their keyword options: ``lower_options`` go to :meth:`lower`,
    ``place_options`` to :meth:`place`.
    """

    name: str = ""
    lower_options: Tuple[str, ...] = ()
    place_options: Tuple[str, ...] = ()

    @property
    def options(self) -> Tuple[str, ...]:
        return self.lower_options + self.place_options

    def lower(self, trace: Trace, ops: Optional[List[Op]] = None, **options: Any) -> OpGraph:
        raise NotImplementedError

    def place(self, graph: OpGraph, bytes_per_element: int = 1, **options: Any) -> Plan:
        raise NotImplementedError

    def plan(self, trace: Trace, bytes_per_element: int = 1, ops: Optional[List[Op]] = None, **options: Any) -> Plan:
        """``place(lower(trace))``; ``ops`` replaces the engine's own operator sequence."""
        unknown = [k for k in options if k not in self.options]
        if unknown:
            raise TypeError(f"engine {self.name!r} takes no option {', '.join(map(repr, unknown))} "
                            f"(options: {', '.join(self.options) or 'none'})")
        graph = self.lower(trace, ops=ops, **{k: v for k, v in options.items() if k in self.lower_options})
        return self.place(graph, bytes_per_element, **{k: v for k, v in options.items() if k in self.place_options})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _graph(trace: Trace, ops: List[Op]) -> OpGraph:
    return OpGraph(ops, {v.id: v.numel for v in trace.values}, list(trace.inputs), list(trace.outputs))


class FusedEngine(Engine):
    """docs/memory_model.md §3: new output buffers, elementwise ops in place into a dying input of equal size."""

    name = "fused"

    def lower(self, trace: Trace, ops: Optional[List[Op]] = None, **options: Any) -> OpGraph:
        return _graph(trace, operator_sequence(trace, collapse_units=True) if ops is None else ops)

    def place(self, graph: OpGraph, bytes_per_element: int = 1, **options: Any) -> Plan:
        ops = graph.ops
        first, last = lifetimes(graph)
        numel = graph.numel
        outputs = set(graph.outputs)
        parent: Dict[int, int] = {}

        def find(v: int) -> int:
            while parent.get(v, v) != v:
                v = parent[v]
            return v

        for i, op in enumerate(ops):
            used = set()
            for w in op.writes:
                old = op.inplace.get(w)
                if old is not None and old in first:          # PyTorch itself overwrote `old`
                    parent[w] = find(old)
                    used.add(old)
                    continue
                if not op.elementwise:
                    continue
                for r in op.reads:                             # write into a dying input of equal size
                    if r not in used and last.get(r) == i and r not in outputs and numel[r] == numel[w]:
                        parent[w] = find(r)
                        used.add(r)
                        break
        blocks: Dict[int, List[int]] = {}
        for v in first:
            root = find(v)
            b = blocks.setdefault(root, [0, first[v], last[v]])
            b[0] = max(b[0], numel[v] * bytes_per_element)
            b[1] = min(b[1], first[v])
            b[2] = max(b[2], last[v])
        buffers = [tuple(b) for b in blocks.values()]
        return Plan(self.name, ops, live_profile(buffers, len(ops)), buffers)


def _needs_pad(attrs: Dict) -> bool:
    """True where TFLite's SAME/VALID padding cannot express PyTorch's symmetric padding."""
    pad, stride, kernel = attrs.get("padding"), attrs.get("stride"), attrs.get("kernel")
    shape = attrs.get("in_shape")
    if not pad or not any(pad) or attrs.get("transposed") or shape is None:
        return False
    for size, k, s, p in zip(shape[-len(pad):], kernel, stride, pad):
        if p == 0:
            continue
        out = -(-size // s)  # SAME output size
        total = max((out - 1) * s + k - size, 0)
        if total // 2 != p or (size + 2 * p - k) // s + 1 != out:
            return True
    return False


class TFLMEngine(Engine):
    """TensorFlow Lite Micro: every operator writes a new buffer; greedy first-fit arena."""

    name = "tflm"
    lower_options = ("pad_ops",)
    place_options = ("tie",)

    def lower(self, trace: Trace, ops: Optional[List[Op]] = None, pad_ops: bool = True, **options: Any) -> OpGraph:
        """DERO units as their operators; with ``pad_ops`` an explicit PAD before each conv/pool whose symmetric
        padding TFLite's SAME/VALID cannot express (the given ``ops`` are rewired to read the padded value)."""
        graph = _graph(trace, operator_sequence(trace, collapse_units=False) if ops is None else ops)
        if not pad_ops:
            return graph
        numel = graph.numel
        expanded: List[Op] = []
        next_id = max(numel) + 1 if numel else 0
        for op in graph.ops:
            if op.attrs and _needs_pad(op.attrs) and op.reads:
                shape = op.attrs["in_shape"]
                pad = op.attrs["padding"]
                padded = list(shape)
                for d, p in enumerate(pad):
                    padded[len(shape) - len(pad) + d] += 2 * p
                n = 1
                for s in padded:
                    n *= s
                vid, next_id = next_id, next_id + 1
                numel[vid] = n
                src = op.reads[0]
                expanded.append(Op(kinds=["pad"], module=op.module, modules=op.modules, reads=[src], writes=[vid]))
                op.reads = [vid if r == src else r for r in op.reads]
            expanded.append(op)
        graph.ops = expanded
        return graph

    def place(self, graph: OpGraph, bytes_per_element: int = 1, tie: str = "reverse", **options: Any) -> Plan:
        """One buffer per value, in tensor order (first use, then id); TFLM's greedy planner (``tie``: see
        :func:`~yolo_dero.memory.intervals.tflm_order`)."""
        first, last = lifetimes(graph)
        order = sorted(first, key=lambda v: (first[v], v))
        buffers = [(graph.numel[v] * bytes_per_element, first[v], last[v]) for v in order]
        arena, offsets = greedy_arena(buffers, tie=tie)
        return Plan(self.name, graph.ops, live_profile(buffers, len(graph.ops)), buffers, arena_bytes=arena,
                    offsets=offsets)


FUSED = FusedEngine()
TFLM = TFLMEngine()
_REGISTRY: Dict[str, Engine] = {}


def register_engine(engine: Engine, name: Optional[str] = None) -> Engine:
    """Make ``engine`` available by ``name`` (default ``engine.name``) to :func:`get_engine` and ``analyze``."""
    if not isinstance(engine, Engine):
        raise TypeError(f"register_engine wants an Engine instance, got {type(engine).__name__}")
    _REGISTRY[name or engine.name] = engine
    return engine


register_engine(FUSED)
register_engine(TFLM)


def engine_names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def get_engine(engine: Union[str, Engine]) -> Engine:
    """An :class:`Engine` from a registered name (``"fused"``, ``"tflm"``) or an instance (returned as is)."""
    if isinstance(engine, Engine):
        return engine
    if isinstance(engine, str) and engine in _REGISTRY:
        return _REGISTRY[engine]
    raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(_REGISTRY)}")


def fused_plan(trace: Trace, bytes_per_element: int = 1, ops: Optional[List[Op]] = None) -> Plan:
    """The ``fused`` engine's plan of ``trace`` (``ops``: an operator sequence to use instead of its own)."""
    return FUSED.plan(trace, bytes_per_element, ops=ops)


def tflm_plan(trace: Trace, bytes_per_element: int = 1, pad_ops: bool = True, tie: str = "reverse",
              ops: Optional[List[Op]] = None) -> Plan:
    """The ``tflm`` engine's plan of ``trace``."""
    return TFLM.plan(trace, bytes_per_element, ops=ops, pad_ops=pad_ops, tie=tie)


def plan(trace: Trace, engine: Union[str, Engine] = "fused", bytes_per_element: int = 1, **kw: Any) -> Plan:
    """The plan of ``trace`` under ``engine`` (a name or an :class:`Engine`); ``kw``: the engine's options."""
    return get_engine(engine).plan(trace, bytes_per_element, **kw)
