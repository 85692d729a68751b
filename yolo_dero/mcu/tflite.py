"""TFLite flatbuffers: read, inspect, and the ``OfflineMemoryAllocation`` metadata (read/write/strip).

The lowest layer of :mod:`yolo_dero.mcu` (it imports no other module of the package):

* :func:`require` import-checks the deployment packages (requirements-mcu.txt) with the install hint;
* :func:`inspect_tflite` / :func:`check_full_int8`: operators and tensors of subgraph 0, and the full-integer check
  (no float tensor, no QUANTIZE/DEQUANTIZE from or to float) that raises :class:`FloatTensorError`;
* :func:`read_graph`: subgraph 0 with TFLM's tensor lifetimes (a graph input lives from operator 0, a graph output
  until the last operator, lifetimes inclusive at both ends, sizes rounded up to 16 bytes); constants, variable
  tensors and tensors no operator uses are marked as such;
* :func:`read_offsets` / :func:`write_plan` / :func:`strip_plan` / :func:`has_plan`: the metadata entry named
  ``OfflineMemoryAllocation`` that TFLM's planner honours (little-endian int32 ``[version=1, subgraph=0,
  number_of_tensors, offset_0, ..., offset_{n-1}]``, ``-1`` for tensors TFLM plans itself; "Offline planned
  tensor allocations" in TFLM's docs/memory_management.md), written through the flatbuffer object API of ``ai_edge_litert.schema_py_generated`` with constant buffers
  16-byte aligned and file identifier ``TFL3``.

The schema comes from ``ai-edge-litert``, imported on first use (importing this module needs numpy only).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

METADATA_NAME = "OfflineMemoryAllocation"
ALIGN = 16
TFLITE_MAGIC = b"TFL3"  # the flatbuffer file identifier, bytes 4..8 of every .tflite

_TYPE_BYTES = {"INT8": 1, "UINT8": 1, "BOOL": 1, "INT16": 2, "UINT16": 2, "FLOAT16": 2, "BFLOAT16": 2,
               "INT32": 4, "UINT32": 4, "FLOAT32": 4, "INT64": 8, "UINT64": 8, "FLOAT64": 8,
               "COMPLEX64": 8, "INT4": 1}

Source = Union[str, Path, bytes, bytearray]


class MissingDependencyError(ImportError):
    """litert-torch / tflite-micro / ai-edge-litert are not installed (requirements-mcu.txt)."""


class FloatTensorError(RuntimeError):
    """The converted graph still holds float tensors or QUANTIZE/DEQUANTIZE between float and int8."""


class PlanError(RuntimeError):
    """An offline plan that is not safe (overlapping live tensors that are no in-place pair, misalignment,
    wrong metadata) or a planned file whose TFLM outputs differ from the unplanned file's."""


def require(*modules: str) -> None:
    """Import-check the deployment packages; raise :class:`MissingDependencyError` with the install hint."""
    missing = []
    for m in modules:
        try:
            __import__(m)
        except ImportError:
            missing.append(m)
    if missing:
        raise MissingDependencyError(
            f"missing deployment package(s) {', '.join(missing)}: pip install -r requirements-mcu.txt")


def _align(n: int, a: int = ALIGN) -> int:
    return (int(n) + a - 1) // a * a


def schema_module():
    """``ai_edge_litert.schema_py_generated`` (the TFLite flatbuffer schema), imported on first use."""
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _bytes(src: Source) -> bytes:
    return bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()


def _names(enum_cls) -> Dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


# ------------------------------------------------------------------------------------------------
# inspection and the full-integer check


def read_model(path_or_bytes: Union[str, Path, bytes]):
    """The flatbuffer as the schema's object API (``ModelT``)."""
    schema = schema_module()
    buf = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    return schema.ModelT.InitFromPackedBuf(bytes(buf), 0)


@dataclass
class GraphInfo:
    """Operators and tensors of subgraph 0 of a TFLite model."""

    ops: List[Dict[str, Any]]
    tensors: List[Dict[str, Any]]
    inputs: List[int]
    outputs: List[int]

    def op_counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for op in self.ops:
            out[op["op"]] = out.get(op["op"], 0) + 1
        return out


def inspect_tflite(path_or_bytes) -> GraphInfo:
    schema = schema_module()
    model = read_model(path_or_bytes)
    op_names, t_names = _names(schema.BuiltinOperator), _names(schema.TensorType)
    sg = model.subgraphs[0]
    tensors = []
    for t in sg.tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        const = t.buffer > 0 and model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data) > 0
        tensors.append({"name": name, "type": t_names.get(t.type, str(t.type)),
                        "shape": [int(s) for s in (t.shape if t.shape is not None else [])], "constant": bool(const)})
    ops = []
    for op in sg.operators:
        oc = model.operatorCodes[op.opcodeIndex]
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        name = op_names.get(code, str(code))
        if name == "CUSTOM":
            name = f"CUSTOM:{oc.customCode.decode() if isinstance(oc.customCode, bytes) else oc.customCode}"
        ops.append({"op": name, "inputs": [int(i) for i in op.inputs if i >= 0] if op.inputs is not None else [],
                    "outputs": [int(i) for i in op.outputs] if op.outputs is not None else []})
    return GraphInfo(ops, tensors, [int(i) for i in sg.inputs], [int(i) for i in sg.outputs])


#: TFLite Micro's CONCATENATION kernel refuses more inputs than this (kMaxInputNum in its concatenation.cc)
TFLM_MAX_CONCAT_INPUTS = 10


def tflm_problems(info: GraphInfo) -> List[str]:
    """Operators TFLite Micro's kernels will refuse at allocation (LiteRT runs them): one line each."""
    out = []
    for i, op in enumerate(info.ops):
        if op["op"] == "CONCATENATION" and len(op["inputs"]) > TFLM_MAX_CONCAT_INPUTS:
            out.append(f"operator #{i} CONCATENATION has {len(op['inputs'])} inputs; TFLite Micro's kernel takes at "
                       f"most {TFLM_MAX_CONCAT_INPUTS} (concatenate in steps of at most {TFLM_MAX_CONCAT_INPUTS})")
    return out


FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})


def float_problems(info: GraphInfo) -> List[str]:
    """Everything that is not full-integer: float tensors, (DE)QUANTIZE from/to float, float I/O."""
    problems = []
    for i, t in enumerate(info.tensors):
        if t["type"] in FLOAT_TYPES:
            problems.append(f"tensor {i} '{t['name']}' is {t['type']} {t['shape']}")
    for k, op in enumerate(info.ops):
        if op["op"] in ("DEQUANTIZE", "QUANTIZE"):
            types = [info.tensors[i]["type"] for i in op["inputs"] + op["outputs"]]
            if op["op"] == "DEQUANTIZE" or any(t in FLOAT_TYPES for t in types):
                problems.append(f"operator {k} {op['op']} {' -> '.join(types)}")
    for kind, idx in (("input", info.inputs), ("output", info.outputs)):
        for i in idx:
            if info.tensors[i]["type"] != "INT8":
                problems.append(f"graph {kind} {i} is {info.tensors[i]['type']}, not INT8")
    return problems


def check_full_int8(path_or_bytes) -> GraphInfo:
    """Raise :class:`FloatTensorError` unless the model is int8 end to end; returns its :class:`GraphInfo`."""
    info = inspect_tflite(path_or_bytes)
    problems = float_problems(info)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise FloatTensorError(f"the converted model is not full-integer ({len(problems)} problem(s)):\n  {shown}")
    return info


# ------------------------------------------------------------------------------------------------
# graph with TFLM's lifetimes


@dataclass
class TensorLife:
    index: int
    name: str
    kind: str                 # "activation" | "constant" | "variable" | "unused"
    bytes: int                # aligned to 16
    shape: List[int]
    type: str
    first: int = -1           # operator index that creates it (0 for graph inputs)
    last: int = -1            # last operator reading it (last operator for graph outputs)


@dataclass
class Graph:
    tensors: List[TensorLife]
    ops: List[Dict[str, Any]]          # {"op", "inputs", "outputs"}
    inputs: List[int]
    outputs: List[int]

    def live(self, a: int, b: int) -> bool:
        ta, tb = self.tensors[a], self.tensors[b]
        return ta.first <= tb.last and tb.first <= ta.last


def read_graph(src: Source) -> Graph:
    """Subgraph 0 of a ``.tflite`` with TFLM's lifetime rules (see the module docstring)."""
    schema = schema_module()
    model = schema.ModelT.InitFromPackedBuf(_bytes(src), 0)
    if not model.subgraphs:
        raise PlanError("the model has no subgraph")
    if len(model.subgraphs) > 1:
        raise PlanError(f"the model has {len(model.subgraphs)} subgraphs; only single-subgraph models are planned")
    sg = model.subgraphs[0]
    op_names, t_names = _names(schema.BuiltinOperator), _names(schema.TensorType)
    tensors: List[TensorLife] = []
    for i, t in enumerate(sg.tensors or []):
        buf = model.buffers[t.buffer] if t.buffer is not None and 0 < t.buffer < len(model.buffers) else None
        const = buf is not None and ((buf.data is not None and len(buf.data) > 0) or (buf.size or 0) > 0)
        typ = t_names.get(t.type, str(t.type))
        shape = [int(s) for s in (t.shape if t.shape is not None else [])]
        n = int(np.prod(shape)) if shape else 1
        kind = "constant" if const else ("variable" if t.isVariable else "activation")
        tensors.append(TensorLife(i, _s(t.name), kind, _align(n * _TYPE_BYTES.get(typ, 4)), shape, typ))
    ops = []
    for op in sg.operators or []:
        oc = model.operatorCodes[op.opcodeIndex]
        name = op_names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "?")
        ops.append({"op": name, "inputs": [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0],
                    "outputs": [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0]})
    inputs = [int(i) for i in sg.inputs]
    outputs = [int(i) for i in sg.outputs]
    for i in inputs:
        tensors[i].first = 0
        tensors[i].last = max(tensors[i].last, 0)
    for k, op in enumerate(ops):
        for i in op["inputs"]:
            tensors[i].last = max(tensors[i].last, k)
        for o in op["outputs"]:
            if tensors[o].first < 0:
                tensors[o].first = k
            tensors[o].last = max(tensors[o].last, k)
    for o in outputs:
        tensors[o].last = max(len(ops) - 1, 0)
        if tensors[o].first < 0:
            tensors[o].first = 0
    for t in tensors:
        if t.kind == "activation" and t.first < 0:
            t.kind = "unused"
    return Graph(tensors, ops, inputs, outputs)


def short_name(name: str) -> str:
    """The last module path component of a converter tensor name (``.../DeroUnit_0/Conv2d_conv;1`` ->
    ``DeroUnit_0/Conv2d_conv``)."""
    first = name.split(";")[0]
    parts = [p for p in first.split("/") if p]
    return "/".join(x.split(".")[-1] for x in parts[-2:]) if parts else name


# ------------------------------------------------------------------------------------------------
# OfflineMemoryAllocation metadata


def _aligned_buffer_cls():
    schema = schema_module()

    class AlignedBufferT(schema.BufferT):
        """BufferT whose data vector starts on a 16-byte boundary (as the converter writes constants)."""

        def Pack(self, builder):
            data = None
            if self.data is not None:
                payload = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(payload), ALIGN)
                builder.head = builder.head - len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    return AlignedBufferT


def repack(model) -> bytes:
    import flatbuffers

    cls = _aligned_buffer_cls()
    for i, b in enumerate(model.buffers or []):
        nb = cls()
        nb.data, nb.offset, nb.size = b.data, b.offset, b.size
        model.buffers[i] = nb
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def encode_offsets(offsets: Sequence[int]) -> bytes:
    return struct.pack(f"<{3 + len(offsets)}i", 1, 0, len(offsets), *[int(o) for o in offsets])


def read_offsets(src: Source) -> Optional[List[int]]:
    """The ``OfflineMemoryAllocation`` values ``[version, subgraph, n, offsets...]`` of a file, or None."""
    schema = schema_module()
    m = schema.Model.GetRootAs(_bytes(src), 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if _s(md.Name()) == METADATA_NAME:
            buf = m.Buffers(md.Buffer())
            raw = buf.DataAsNumpy().tobytes() if not buf.DataIsNone() else b""
            return list(struct.unpack(f"<{len(raw) // 4}i", raw[: len(raw) // 4 * 4]))
    return None


def has_plan(src: Source) -> bool:
    return read_offsets(src) is not None


def write_plan(src: Source, offsets: Optional[Sequence[int]]) -> bytes:
    """The model with its ``OfflineMemoryAllocation`` entry set to ``offsets`` (replacing an existing one);
    ``offsets=None`` removes the entry (the unplanned model)."""
    schema = schema_module()
    model = schema.ModelT.InitFromPackedBuf(_bytes(src), 0)
    md = [m for m in (model.metadata or []) if _s(m.name) != METADATA_NAME]
    old = [m for m in (model.metadata or []) if _s(m.name) == METADATA_NAME]
    if offsets is not None:
        n = len(model.subgraphs[0].tensors)
        if len(offsets) != n:
            raise PlanError(f"{len(offsets)} offsets for {n} tensors")
        data = np.frombuffer(encode_offsets(offsets), dtype=np.uint8).copy()
        if old:  # reuse the old entry's buffer
            bi = old[0].buffer
        else:
            model.buffers.append(schema.BufferT())
            bi = len(model.buffers) - 1
        model.buffers[bi].data, model.buffers[bi].offset, model.buffers[bi].size = data, 0, 0
        e = schema.MetadataT()
        e.name, e.buffer = METADATA_NAME.encode(), bi
        md.append(e)
    elif old:
        for m in sorted(old, key=lambda m: -m.buffer):
            _drop_buffer(model, m.buffer, md)
    model.metadata = md or None
    return repack(model)


def _drop_buffer(model, index: int, metadata: Sequence) -> None:
    """Remove buffer ``index`` where that moves no other buffer (it is the last and nothing else reads it), as
    :func:`write_plan` appends its own; elsewhere only empty it. Re-planning a planned file then adds no buffer."""
    users = {t.buffer for sg in (model.subgraphs or []) for t in (sg.tensors or [])}
    users |= {m.buffer for m in metadata} | set(model.metadataBuffer or [])
    if index == len(model.buffers) - 1 and index not in users:
        model.buffers.pop()
    else:
        model.buffers[index].data = None


def strip_plan(src: Source) -> bytes:
    return write_plan(src, None)
