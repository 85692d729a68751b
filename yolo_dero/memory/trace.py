"""Record one eval forward pass as a sequence of aten operators over activation buffers.

The recorder runs the model once at batch 1 under a :class:`TorchDispatchMode` and sees every aten
operator after PyTorch's decompositions, with module context from forward pre/post hooks. Python
control flow (a detection head: concat, view, split, shape tests) simply runs; only the operators
that actually execute are recorded, so no symbolic tracing is needed. Which returned tensors are the
network's outputs is the caller's choice or the model's declaration (``memory_outputs``; see
:func:`select_outputs`).

Bookkeeping:

* An *activation* is any tensor derived from the network input. Tensors computed from parameters,
  buffers or shapes alone (anchors, strides, BatchNorm placeholders) are constants: in a deployed
  graph they live in flash, so they are not recorded.
* A *value* is one version of one storage. An operator that returns a fresh storage writes a new
  value. An operator whose output shares a storage with an input is a *view* and is not recorded
  (views are free: a later reader of the view reads the base value). An operator that mutates an
  argument in place (``relu_``, ``add_``, ``copy_`` into a slice) writes a new version of that
  storage; the new version remembers the old one (``RawOp.inplace``).
* Storage identity is the storage's data pointer; every storage seen is kept alive until the
  recording ends, so the allocator cannot hand the same address to a later tensor.
* Operators inside a module whose class (or instance) has ``is_dero_operator = True`` (or that a
  caller's ``leaf`` predicate selects) carry that module's *group* id, so an engine can treat the
  whole unit as one operator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

LeafPredicate = Callable[[nn.Module], bool]


@dataclass
class Value:
    """One version of one activation storage."""

    id: int
    numel: int                      # elements of the storage
    shape: Tuple[int, ...]          # shape of the tensor that produced it
    producer: int                   # raw operator index, -1 for the network input


@dataclass
class RawOp:
    """One recorded aten operator that writes at least one activation value."""

    index: int
    kind: str                       # aten overload packet name, e.g. "convolution", "relu_", "cat"
    module: str                     # innermost module's qualified name ("" at top level)
    modules: Tuple[str, ...]        # every enclosing module's qualified name, outermost first
    group: Optional[int]            # id of the enclosing DERO / leaf unit, if any
    reads: List[int]                # activation values read (deduplicated, in argument order)
    writes: List[int]               # activation values written
    inplace: Dict[int, int] = field(default_factory=dict)  # written value -> the version it overwrote
    macs: int = 0
    attrs: Dict[str, Any] = field(default_factory=dict)    # stride/padding/kernel/input shape of conv & pool


@dataclass
class Group:
    """One invocation of a DERO (or other leaf) module."""

    id: int
    module: str
    cls: str


@dataclass
class Trace:
    """Everything an engine needs: values, operators, unit groups, network inputs and outputs."""

    values: List[Value]
    ops: List[RawOp]
    groups: List[Group]
    inputs: List[int]
    outputs: List[int]
    input_shape: Tuple[int, ...]

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)


def is_dero_module(m: nn.Module) -> bool:
    """The default leaf predicate: modules that declare ``is_dero_operator = True``."""
    return bool(getattr(m, "is_dero_operator", False))


def _pair(v: Any, n: int = 2) -> Tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return tuple(int(v[0]) for _ in range(n))
        return tuple(int(x) for x in v)
    return tuple(int(v) for _ in range(n))


def _conv_attrs(args: Sequence[Any]) -> Dict[str, Any]:
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x, w = args[0], args[1]
    nsp = w.dim() - 2
    return {"in_shape": tuple(x.shape), "kernel": tuple(w.shape[2:]), "stride": _pair(args[3], nsp),
            "padding": _pair(args[4], nsp), "transposed": bool(args[6])}


def _pool_attrs(kind: str, args: Sequence[Any]) -> Dict[str, Any]:
    # avg_pool2d(self, kernel_size, stride=[], padding=0, ...),
    # max_pool2d[_with_indices](self, k, stride=[], padding=0, ...)
    x = args[0]
    k = _pair(args[1])
    stride = _pair(args[2]) if len(args) > 2 and args[2] not in (None, [], ()) else k
    padding = _pair(args[3]) if len(args) > 3 else (0, 0)
    return {"in_shape": tuple(x.shape), "kernel": k, "stride": stride, "padding": padding}


def _macs(kind: str, args: Sequence[Any], outs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of convolutions and matrix products (the usual MAC count)."""
    try:
        if kind == "convolution":
            w, transposed = args[1], bool(args[6])
            per = w.shape[1] * math.prod(w.shape[2:])
            return int((args[0].numel() if transposed else outs[0].numel()) * per)
        if kind in ("addmm", "mm", "bmm", "baddbmm"):
            a = args[1] if kind in ("addmm", "baddbmm") else args[0]
            return int(outs[0].numel() * a.shape[-1])
        if kind == "linear":
            return int(outs[0].numel() * args[0].shape[-1])
    except (AttributeError, IndexError, TypeError):
        return 0
    return 0


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.values: List[Value] = []
        self.ops: List[RawOp] = []
        self.groups: List[Group] = []
        self.current: Dict[int, int] = {}      # storage key -> current value id (activations only)
        self.keep: List[torch.Tensor] = []     # keeps every storage seen alive (unique data pointers)
        self.module_stack: List[str] = []
        self.group_stack: List[Tuple[int, int]] = []  # (depth of the unit's module, group id)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def key(t: torch.Tensor) -> Optional[int]:
        if t.numel() == 0 or t.device.type == "meta":
            return None
        return t.untyped_storage().data_ptr()

    def new_value(self, t: torch.Tensor, producer: int) -> int:
        numel = t.untyped_storage().nbytes() // max(t.element_size(), 1)
        v = Value(len(self.values), int(numel), tuple(t.shape), producer)
        self.values.append(v)
        self.current[self.key(t)] = v.id
        return v.id

    def add_input(self, t: torch.Tensor) -> int:
        self.keep.append(t)
        return self.new_value(t, -1)

    # -- dispatch -----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.record(func, args, kwargs, out)
        except Exception as exc:  # pragma: no cover - a bug here must not hide the model's own error
            raise RuntimeError(f"memory recorder failed on {func}: {exc}") from exc
        return out

    def record(self, func, args, kwargs, out) -> None:
        in_tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        reads: List[int] = []
        in_keys = set()
        for t in in_tensors:
            k = self.key(t)
            if k is None:
                continue
            in_keys.add(k)
            vid = self.current.get(k)
            if vid is not None and vid not in reads:
                reads.append(vid)
        if not reads:
            return  # constants only: not an activation operator
        out_tensors = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        self.keep.extend(in_tensors)
        self.keep.extend(out_tensors)

        # arguments the schema says are written (in-place / out= operators)
        mutated: List[torch.Tensor] = []
        schema = func._schema
        if schema.is_mutable:
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    val = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
                    if isinstance(val, torch.Tensor):
                        mutated.append(val)

        index = len(self.ops)
        writes: List[int] = []
        inplace: Dict[int, int] = {}
        done = set()
        for t in mutated:
            k = self.key(t)
            if k is None or k in done:
                continue
            done.add(k)
            old = self.current.get(k)
            vid = self.new_value(t, index)
            writes.append(vid)
            if old is not None:
                inplace[vid] = old
        for t in out_tensors:
            k = self.key(t)
            if k is None or k in in_keys or k in done:
                continue  # a view (or the returned mutated argument): free
            done.add(k)
            writes.append(self.new_value(t, index))
        if not writes:
            return  # a pure view operator
        kind = func.overloadpacket.__name__
        attrs: Dict[str, Any] = {}
        if kind == "convolution":
            attrs = _conv_attrs(args)
        elif kind in ("avg_pool2d", "max_pool2d", "max_pool2d_with_indices"):
            attrs = _pool_attrs(kind, args)
        self.ops.append(RawOp(
            index=index, kind=kind,
            module=self.module_stack[-1] if self.module_stack else "",
            modules=tuple(self.module_stack),
            group=self.group_stack[0][1] if self.group_stack else None,
            reads=reads, writes=writes, inplace=inplace,
            macs=_macs(kind, args, out_tensors), attrs=attrs))


def _first(out: Any) -> Any:
    """The first element of a tuple/list return whose first element is a tensor, else ``out`` itself."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


def select_outputs(model: nn.Module, out: Any, outputs: Any = "auto") -> Any:
    """The network outputs among ``out``, the forward's return value.

    ``outputs``: "all"; "first" (of a tuple/list return, e.g. a detector's (decoded, raw per-level) pair in eval
    mode, where a deployed graph returns the decoded predictions only); a callable on ``out``; or "auto": what the
    model declares in its ``memory_outputs`` attribute (any of the above; the project's detection model declares
    "first"), "all" where it declares nothing.
    """
    if outputs == "auto":
        outputs = getattr(model, "memory_outputs", None) or "all"
        if outputs == "auto":
            raise ValueError(f"{type(model).__name__}.memory_outputs must be 'all', 'first' or a callable, not 'auto'")
    if callable(outputs):
        return outputs(out)
    if outputs == "first":
        return _first(out)
    if outputs == "all":
        return out
    raise ValueError(f"outputs must be 'auto', 'all', 'first' or a callable, got {outputs!r}")


def record(model: nn.Module, input_shape: Sequence[int], leaf: Optional[LeafPredicate] = None,
           outputs: Any = "auto", dtype: torch.dtype = torch.float32) -> Trace:
    """Run ``model`` once in eval mode on ``torch.randn(input_shape)`` and record its operators.

    Args:
        model: any module; it is put in eval mode for the pass and its training flag restored after.
        input_shape: full input shape including batch, e.g. ``(1, 3, 224, 224)``.
        leaf: predicate selecting modules that count as one operator (default: ``is_dero_operator``).
        outputs: which returned tensors are network outputs ("auto", "all", "first" or a callable on the output;
            see :func:`select_outputs`).
    """
    leaf = leaf or is_dero_module
    names = {m: n for n, m in model.named_modules()}
    rec = _Recorder()
    next_group = [0]

    def pre(m, _inp):
        rec.module_stack.append(names.get(m, "?"))
        if leaf(m) and not rec.group_stack:
            gid = next_group[0]
            next_group[0] += 1
            rec.groups.append(Group(gid, names.get(m, "?"), type(m).__name__))
            rec.group_stack.append((len(rec.module_stack), gid))

    def post(m, _inp, _out):
        if rec.group_stack and rec.group_stack[-1][0] == len(rec.module_stack):
            rec.group_stack.pop()
        if rec.module_stack:
            rec.module_stack.pop()

    handles = []
    for m in names:
        # first of the pre-hooks: what a module's own pre-hooks compute (SAME padding) is inside its scope
        handles.append(m.register_forward_pre_hook(pre, prepend=True))
        handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(*input_shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
        in_id = rec.add_input(x)
        with torch.no_grad(), rec:
            out = model(x)
        # the root module's hooks fire too; names[model] == ""
        selected = select_outputs(model, out, outputs)
        out_ids: List[int] = []
        for t in tree_flatten(selected)[0]:
            if isinstance(t, torch.Tensor):
                k = rec.key(t)
                vid = rec.current.get(k) if k is not None else None
                if vid is not None and vid not in out_ids:
                    out_ids.append(vid)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rec.keep.clear()
    return Trace(values=rec.values, ops=rec.ops, groups=rec.groups, inputs=[in_id], outputs=out_ids,
                 input_shape=tuple(input_shape))
