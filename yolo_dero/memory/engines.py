"""Operator sequences and the two memory engines (``fused`` and ``tflm``) over a recorded trace.

See docs/memory_model.md for the model these functions implement. In short:

* :func:`operator_sequence` turns the recorded aten operators into engine operators: optionally
  collapsing every DERO unit into one operator (reads the unit's input, writes its output), then
  fusing BatchNorm / activation epilogues into their producer (conv+BN+act is one operator) and a
  BatchNorm whose producer cannot absorb it into its single reader (a pre-normalisation).
* :func:`fused_plan`: docs/memory_model.md §3. Every operator writes a new buffer, except that elementwise
  operators (and operators PyTorch itself ran in place) write into a dying input of equal size.
* :func:`tflm_plan`: TensorFlow Lite Micro. No operator works in place, DERO units are their conv,
  shortcut and add operators, a strided conv/pool with PyTorch's symmetric padding is preceded by an
  explicit PAD operator, and buffers are placed by TFLM's greedy first-fit planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .trace import RawOp, Trace

ENGINES = ("fused", "tflm")

#: operators that compute each output element from the same element of their inputs
ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "rsub", "neg", "abs", "relu", "relu6", "silu", "sigmoid", "tanh", "hardtanh",
    "hardswish", "hardsigmoid", "gelu", "leaky_relu", "elu", "clamp", "clamp_min", "clamp_max", "exp",
    "log", "sqrt", "rsqrt", "pow", "maximum", "minimum", "where", "mish", "softplus", "_to_copy", "clone",
    "native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "batch_norm", "add_", "sub_", "mul_", "div_", "relu_", "silu_", "sigmoid_", "hardtanh_", "hardswish_",
    "clamp_", "clamp_min_", "leaky_relu_", "gelu_", "copy_", "dropout", "dropout_",
})
BATCH_NORM = frozenset({"native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                        "batch_norm"})
ACTIVATIONS = frozenset({
    "relu", "relu_", "relu6", "silu", "silu_", "sigmoid", "sigmoid_", "hardtanh", "hardtanh_", "hardswish",
    "hardswish_", "hardsigmoid", "gelu", "leaky_relu", "leaky_relu_", "elu", "clamp", "clamp_", "clamp_min",
    "clamp_min_", "mish", "tanh",
})
EPILOGUE = BATCH_NORM | ACTIVATIONS


@dataclass
class Op:
    """One engine operator (possibly several fused aten operators or a whole DERO unit)."""

    kinds: List[str]
    module: str
    modules: Tuple[str, ...]
    reads: List[int]
    writes: List[int]
    inplace: Dict[int, int] = field(default_factory=dict)
    group: Optional[int] = None
    attrs: Dict = field(default_factory=dict)
    prologue: List[str] = field(default_factory=list)   # folded pre-normalisations ("bn")

    @property
    def kind(self) -> str:
        return "+".join([_short(k) for k in self.prologue] + [_short(k) for k in self.kinds])

    @property
    def label(self) -> str:
        return f"{self.module or '<top>'} ({self.kind})"

    @property
    def elementwise(self) -> bool:
        return self.group is None and self.kinds[0] in ELEMENTWISE


def _short(kind: str) -> str:
    if kind in BATCH_NORM:
        return "bn"
    if kind == "convolution":
        return "conv"
    if kind.endswith("_") and not kind.startswith("_"):
        return kind[:-1]
    return kind


def _from_raw(op: RawOp) -> Op:
    return Op(kinds=[op.kind], module=op.module, modules=op.modules, reads=list(op.reads), writes=list(op.writes),
              inplace=dict(op.inplace), group=op.group, attrs=dict(op.attrs))


def _collapse_groups(trace: Trace, ops: List[Op]) -> List[Op]:
    """Replace the operators of each DERO / leaf unit with one operator reading x and writing y."""
    producer_group: Dict[int, Optional[int]] = {}
    for op in ops:
        for w in op.writes:
            producer_group[w] = op.group
    readers: Dict[int, List[Optional[int]]] = {}
    for op in ops:
        for r in op.reads:
            readers.setdefault(r, []).append(op.group)
    outputs = set(trace.outputs)
    group_names = {g.id: g for g in trace.groups}
    result: List[Op] = []
    i = 0
    while i < len(ops):
        op = ops[i]
        if op.group is None:
            result.append(op)
            i += 1
            continue
        gid = op.group
        members = []
        while i < len(ops) and ops[i].group == gid:
            members.append(ops[i])
            i += 1
        produced = {w for m in members for w in m.writes}
        reads: List[int] = []
        for m in members:
            for r in m.reads:
                if r not in produced and r not in reads:
                    reads.append(r)
        writes = [w for w in (w for m in members for w in m.writes)
                  if w in outputs or any(g != gid for g in readers.get(w, []))]
        inplace = {}
        for m in members:
            for w, old in m.inplace.items():
                if w in writes and old not in produced:
                    inplace[w] = old
        g = group_names[gid]
        result.append(Op(kinds=[g.cls], module=g.module, modules=members[0].modules, reads=reads, writes=writes,
                         inplace=inplace, group=gid))
    return result


def _fuse(trace: Trace, ops: List[Op]) -> List[Op]:
    """Fuse BN/activation epilogues into their producer; fuse a leftover BN into its single reader."""
    outputs = set(trace.outputs)

    def reader_index(seq: List[Op]) -> Dict[int, List[int]]:
        idx: Dict[int, List[int]] = {}
        for i, op in enumerate(seq):
            for r in op.reads:
                idx.setdefault(r, []).append(i)
        return idx

    # epilogues: A writes v, v's only reader is B (BN or activation) reading nothing else -> A+B
    changed = True
    while changed:
        changed = False
        readers = reader_index(ops)
        producer = {w: i for i, op in enumerate(ops) for w in op.writes}
        for j, b in enumerate(ops):
            if b.kinds[0] not in EPILOGUE or len(b.reads) != 1 or len(b.writes) != 1:
                continue
            v = b.reads[0]
            i = producer.get(v)
            if i is None or v in outputs or readers.get(v) != [j]:
                continue
            a = ops[i]
            if b.group is not None and b.group != a.group:
                continue
            w = b.writes[0]
            a.writes = [w if x == v else x for x in a.writes]
            old = a.inplace.pop(v, None)
            if old is not None:       # A overwrote `old` in place; B overwrote v: the fused op overwrites `old`
                a.inplace[w] = old
            a.kinds = a.kinds + b.kinds
            del ops[j]
            changed = True
            break

    # prologues: a BN that no producer absorbed, whose output has a single reader C -> C reads BN's input
    changed = True
    while changed:
        changed = False
        readers = reader_index(ops)
        for j, b in enumerate(ops):
            if b.kinds[0] not in BATCH_NORM or len(b.reads) != 1 or len(b.writes) != 1:
                continue
            w = b.writes[0]
            rs = readers.get(w, [])
            if w in outputs or len(rs) != 1 or b.inplace:
                continue
            c = ops[rs[0]]
            if c.group != b.group:
                continue
            c.reads = list(dict.fromkeys(b.reads[0] if x == w else x for x in c.reads))
            c.inplace = {k: v for k, v in c.inplace.items() if v != w}
            c.prologue = c.prologue + b.prologue + b.kinds
            del ops[j]
            changed = True
            break
    return ops


def _drop_unused_outputs(trace: Trace, ops: List[Op]) -> List[Op]:
    """Forget secondary outputs nobody reads (max-pool indices, BatchNorm statistics)."""
    read = {r for op in ops for r in op.reads} | set(trace.outputs)
    for op in ops:
        if len(op.writes) > 1:
            keep = [w for w in op.writes if w in read]
            op.writes = keep or op.writes[:1]
            op.inplace = {w: o for w, o in op.inplace.items() if w in op.writes}
    return ops


def operator_sequence(trace: Trace, collapse_units: bool = True) -> List[Op]:
    """The engine-level operator sequence of a trace."""
    ops = _drop_unused_outputs(trace, [_from_raw(op) for op in trace.ops])
    if collapse_units:
        ops = _collapse_groups(trace, ops)
    return _fuse(trace, ops)


# ------------------------------------------------------------------------------------------------
# lifetimes and plans


@dataclass
class Plan:
    """Result of an engine: the operator sequence, per-operator live bytes and (tflm) the arena."""

    engine: str
    ops: List[Op]
    profile: List[int]                 # bytes live while each operator runs
    buffers: List[Tuple[int, int, int]]  # (size bytes, first op, last op) of each planned buffer
    arena_bytes: Optional[int] = None
    offsets: Optional[List[int]] = None

    @property
    def peak_bytes(self) -> int:
        return max(self.profile) if self.profile else 0

    @property
    def peak_index(self) -> int:
        return max(range(len(self.profile)), key=self.profile.__getitem__) if self.profile else 0


def _lifetimes(trace: Trace, ops: List[Op]) -> Tuple[Dict[int, int], Dict[int, int]]:
    """first/last operator index of every value used by ``ops`` (inputs from 0, outputs to the end)."""
    first: Dict[int, int] = {v: 0 for v in trace.inputs}
    last: Dict[int, int] = {v: 0 for v in trace.inputs}
    for i, op in enumerate(ops):
        for w in op.writes:
            first.setdefault(w, i)
            last[w] = max(last.get(w, i), i)
        for r in op.reads:
            first.setdefault(r, 0)  # a value read but never written here: an input
            last[r] = max(last.get(r, 0), i)
    end = max(len(ops) - 1, 0)
    for v in trace.outputs:
        if v in first:
            last[v] = end
    return first, last


def _profile(n_ops: int, buffers: Sequence[Tuple[int, int, int]]) -> List[int]:
    delta = [0] * (n_ops + 1)
    for size, a, b in buffers:
        delta[a] += size
        delta[b + 1] -= size
    prof, run = [], 0
    for i in range(n_ops):
        run += delta[i]
        prof.append(run)
    return prof


def fused_plan(trace: Trace, bytes_per_element: int = 1, ops: Optional[List[Op]] = None) -> Plan:
    """docs/memory_model.md §3: new output buffers, elementwise ops in place into a dying input of equal size."""
    ops = operator_sequence(trace, collapse_units=True) if ops is None else ops
    first, last = _lifetimes(trace, ops)
    numel = {v.id: v.numel for v in trace.values}
    outputs = set(trace.outputs)
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
    return Plan("fused", ops, _profile(len(ops), buffers), buffers)


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


def greedy_arena(buffers: Sequence[Tuple[int, int, int]], tie: str = "reverse") -> Tuple[int, List[int]]:
    """TFLM's GreedyMemoryPlanner: place buffers largest first at the lowest offset that fits.

    ``buffers`` are ``(size, first_op, last_op)`` in tensor order. TFLM fills its online-planned list
    from the tail and sorts it with a stable descending bubble sort, so equal sizes go in *reverse*
    tensor order (``tie="reverse"``); ``tie="forward"`` breaks ties by tensor order instead. Each
    buffer goes at the lowest offset where it does not overlap, in arena space, any already placed
    buffer whose lifetime overlaps its own; gaps left this way can make the arena larger than the
    largest live set. Returns ``(arena bytes, offsets)``.
    """
    order = list(range(len(buffers)))
    if tie == "reverse":
        order.reverse()
    elif tie != "forward":
        raise ValueError("tie must be 'reverse' or 'forward'")
    order.sort(key=lambda i: -buffers[i][0])  # stable
    offsets = [0] * len(buffers)
    placed: List[int] = []  # kept sorted by offset
    arena = 0
    for i in order:
        size, a, b = buffers[i]
        candidate = 0
        for j in placed:
            sj, aj, bj = buffers[j]
            if bj < a or aj > b:
                continue  # not alive at the same time
            if offsets[j] - candidate >= size:
                break     # fits in the gap below this buffer
            candidate = max(candidate, offsets[j] + sj)
        offsets[i] = candidate
        placed.append(i)
        placed.sort(key=lambda j: offsets[j])
        arena = max(arena, candidate + size)
    return arena, offsets


def tflm_plan(trace: Trace, bytes_per_element: int = 1, pad_ops: bool = True, tie: str = "reverse",
              ops: Optional[List[Op]] = None) -> Plan:
    """TFLite Micro: every operator writes a new buffer; greedy first-fit arena."""
    ops = operator_sequence(trace, collapse_units=False) if ops is None else ops
    numel = {v.id: v.numel for v in trace.values}
    if pad_ops:
        expanded: List[Op] = []
        next_id = max(numel) + 1 if numel else 0
        for op in ops:
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
        ops = expanded
    first, last = _lifetimes(trace, ops)
    order = sorted(first, key=lambda v: (first[v], v))
    buffers = [(numel[v] * bytes_per_element, first[v], last[v]) for v in order]
    arena, offsets = greedy_arena(buffers, tie=tie)
    return Plan("tflm", ops, _profile(len(ops), buffers), buffers, arena_bytes=arena, offsets=offsets)


def plan(trace: Trace, engine: str = "fused", bytes_per_element: int = 1, **kw) -> Plan:
    if engine == "fused":
        return fused_plan(trace, bytes_per_element, **kw)
    if engine == "tflm":
        return tflm_plan(trace, bytes_per_element, **kw)
    raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
