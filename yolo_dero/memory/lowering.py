"""Lowering: the engine-level operator sequence of a recorded trace (docs/memory_model.md).

:func:`operator_sequence` turns the recorded aten operators into engine operators: optionally collapsing every
DERO unit into one operator (reads the unit's input, writes its output), then fusing BatchNorm / activation
epilogues into their producer (conv+BN+act is one operator) and a BatchNorm whose producer cannot absorb it into
its single reader (a pre-normalisation). The engines (:mod:`yolo_dero.memory.engines`) start from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .trace import RawOp, Trace

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
