"""Exact TFLite flatbuffer rewrites that remove operators whose outputs the arena would hold for nothing.

**Pads.** Fold explicit ``PAD`` operators into the convolution or max-pool that reads them.

An exporter writes PyTorch's symmetric padding of a strided operator as ``PAD`` + the operator with ``VALID``
padding; the padded copy then lives beside the input in the arena. Where the pad amounts are exactly TFLite's
``SAME`` amounts for that operator (a model trained with :func:`yolo_dero.nn.padding.to_same_padding`), the pair is
the operator with ``SAME`` padding, and the copy disappears:

* ``PAD`` (int8 pads with the zero point, i.e. real 0) before ``CONV_2D`` / ``DEPTHWISE_CONV_2D``: TFLite's ``SAME``
  convolution reads its padding as real 0 too (it offsets the input by its zero point);
* ``PADV2`` with the lowest representable value before ``MAX_POOL_2D``: a ``SAME`` max-pool ignores padding, and
  every ``SAME`` window holds at least one real pixel.

Anything else stays as it is.

**Transpose pairs.** A ``TRANSPOSE`` whose output feeds a second ``TRANSPOSE`` with the inverse permutation (the
converter leaves such NHWC -> NCHW -> NHWC round trips where a tensor has several readers) is a copy: the second
one's readers read the first one's input instead, and both operators go once nothing else reads them.

Both rewrites are exact: the rewritten file's int8 outputs equal the original file's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..nn.padding import same_pads
from .tflite import METADATA_NAME, repack, schema_module

__all__ = ["fold_pads", "cancel_transposes", "simplify", "simplify_file", "RewriteError"]


class RewriteError(ValueError):
    """A file the rewrite cannot change safely."""


def _const(model, tensor) -> Optional[np.ndarray]:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers or []) else None
    if buf is None or buf.data is None or len(buf.data) == 0:
        return None
    dtype = {2: np.int32, 4: np.int64, 9: np.int8, 3: np.uint8, 0: np.float32}.get(tensor.type)
    return None if dtype is None else np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), dtype)


def _quant(t) -> Tuple:
    q = t.quantization
    if q is None:
        return ()
    return (tuple(np.asarray(q.scale if q.scale is not None else []).tolist()),
            tuple(np.asarray(q.zeroPoint if q.zeroPoint is not None else []).tolist()))


def _foldable(model, sg, pad_op, consumer, codes: Dict[int, str]) -> bool:
    """Whether ``pad_op`` followed by ``consumer`` is exactly ``consumer`` with ``SAME`` padding."""
    schema = schema_module()
    kind, target = codes[pad_op.opcodeIndex], codes[consumer.opcodeIndex]
    opts = consumer.builtinOptions
    if opts is None or opts.padding != schema.Padding.VALID:
        return False
    t_in, t_out = sg.tensors[pad_op.inputs[0]], sg.tensors[pad_op.outputs[0]]
    if _quant(t_in) != _quant(t_out) or t_in.shape is None or len(t_in.shape) != 4:
        return False
    if target in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        w = sg.tensors[consumer.inputs[1]].shape  # (O, kh, kw, I) or (1, kh, kw, C)
        kh, kw = int(w[1]), int(w[2])
        dh, dw = opts.dilationHFactor, opts.dilationWFactor
        if kind == "PADV2":
            value = _const(model, sg.tensors[pad_op.inputs[2]])
            zp = _quant(t_out)[1]
            if value is None or len(value) != 1 or not zp or int(value[0]) != int(zp[0]):
                return False
    elif target == "MAX_POOL_2D" and kind == "PADV2":
        kh, kw, dh, dw = opts.filterHeight, opts.filterWidth, 1, 1
        value = _const(model, sg.tensors[pad_op.inputs[2]])
        lowest = {9: -128, 3: 0}.get(t_in.type)
        if value is None or len(value) != 1 or lowest is None or int(value[0]) != lowest:
            return False
    else:
        return False
    pads = _const(model, sg.tensors[pad_op.inputs[1]])
    if pads is None or pads.size != 8:
        return False
    pads = pads.reshape(4, 2).tolist()
    _, h, w, _ = (int(v) for v in t_in.shape)
    return pads[0] == [0, 0] and pads[3] == [0, 0] \
        and tuple(pads[1]) == same_pads(h, kh, opts.strideH, dh) \
        and tuple(pads[2]) == same_pads(w, kw, opts.strideW, dw)


def _remove_tensors(model, sg, unused: List[int]) -> None:
    """Drop tensors no operator uses and renumber every reference (operators, subgraph and signature I/O)."""
    keep = [i for i in range(len(sg.tensors)) if i not in set(unused)]
    new = {old: i for i, old in enumerate(keep)}

    def remap(indices):
        return None if indices is None else [new[int(i)] if int(i) >= 0 else int(i) for i in indices]

    sg.tensors = [sg.tensors[i] for i in keep]
    for op in sg.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = remap(op.intermediates)
    sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
    for sig in model.signatureDefs or []:
        for tm in (sig.inputs or []) + (sig.outputs or []):
            tm.tensorIndex = new[tm.tensorIndex]


def _codes(model) -> Dict[int, str]:
    schema = schema_module()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return {i: names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "?")
            for i, oc in enumerate(model.operatorCodes)}


def _consumers(sg) -> Dict[int, List[int]]:
    out: Dict[int, List[int]] = {}
    for j, op in enumerate(sg.operators):
        for t in op.inputs if op.inputs is not None else []:
            if int(t) >= 0:
                out.setdefault(int(t), []).append(j)
    return out


def _drop(model, sg, drop_ops) -> None:
    """Remove operators ``drop_ops`` and every tensor no remaining operator or subgraph I/O uses."""
    sg.operators = [op for j, op in enumerate(sg.operators) if j not in drop_ops]
    used = {int(t) for op in sg.operators for t in list(op.inputs if op.inputs is not None else [])
            + list(op.outputs if op.outputs is not None else []) if int(t) >= 0}
    used |= {int(t) for t in sg.inputs} | {int(t) for t in sg.outputs}
    _remove_tensors(model, sg, [i for i in range(len(sg.tensors)) if i not in used])


def fold_pads(model) -> int:
    """Fold every foldable ``PAD``/``PADV2`` of ``model`` (a ``ModelT``) into its consumer, in place; how many."""
    schema = schema_module()
    codes = _codes(model)
    folded = 0
    for sg in model.subgraphs:
        consumers = _consumers(sg)
        outputs = {int(t) for t in sg.outputs}
        drop_ops = set()
        for j, op in enumerate(sg.operators):
            if codes[op.opcodeIndex] not in ("PAD", "PADV2"):
                continue
            t_out = int(op.outputs[0])
            users = consumers.get(t_out, [])
            if t_out in outputs or len(users) != 1:
                continue
            consumer = sg.operators[users[0]]
            if int(consumer.inputs[0]) != t_out or not _foldable(model, sg, op, consumer, codes):
                continue
            consumer.inputs = [int(op.inputs[0])] + [int(t) for t in consumer.inputs[1:]]
            consumer.builtinOptions.padding = schema.Padding.SAME
            drop_ops.add(j)
            folded += 1
        if drop_ops:
            _drop(model, sg, drop_ops)
    return folded


def cancel_transposes(model) -> int:
    """Remove every ``TRANSPOSE`` that undoes the ``TRANSPOSE`` before it (see the module docstring), in place;
    returns how many operators were removed."""
    codes = _codes(model)
    removed = 0
    for sg in model.subgraphs:
        while True:
            consumers = _consumers(sg)
            outputs = {int(t) for t in sg.outputs}
            drop_ops = set()
            for j, first in enumerate(sg.operators):
                if codes[first.opcodeIndex] != "TRANSPOSE":
                    continue
                p1 = _const(model, sg.tensors[int(first.inputs[1])])
                src, mid = int(first.inputs[0]), int(first.outputs[0])
                for k in consumers.get(mid, []):
                    second = sg.operators[k]
                    if k in drop_ops or codes[second.opcodeIndex] != "TRANSPOSE" or int(second.inputs[0]) != mid:
                        continue
                    p2 = _const(model, sg.tensors[int(second.inputs[1])])
                    dst = int(second.outputs[0])
                    if p1 is None or p2 is None or dst in outputs \
                            or [int(p1[int(i)]) for i in p2] != list(range(len(p2))):
                        continue
                    for op in sg.operators:  # the readers of the round trip read its input
                        if op.inputs is not None:
                            op.inputs = [src if int(t) == dst else int(t) for t in op.inputs]
                    drop_ops.add(k)
                if drop_ops and mid not in outputs and all(c in drop_ops for c in consumers.get(mid, [])):
                    drop_ops.add(j)
                if drop_ops:
                    break  # consumers changed: rescan
            if not drop_ops:
                break
            removed += len(drop_ops)
            _drop(model, sg, drop_ops)
    return removed


def simplify(src: bytes) -> Tuple[bytes, Dict[str, int]]:
    """``src`` (a TFLite flatbuffer) with pads folded and transpose round trips removed, and the counts
    (``pads_folded``, ``transposes_removed``). Raises :class:`RewriteError` on a file with an offline memory plan
    (its offsets are per tensor: simplify first, then plan)."""
    schema = schema_module()
    model = schema.ModelT.InitFromPackedBuf(src, 0)
    if any((m.name.decode() if isinstance(m.name, bytes) else m.name) == METADATA_NAME
           for m in model.metadata or []):
        raise RewriteError("the file has an offline memory plan; simplify it before planning "
                           "(python -m yolo_dero.mcu plan runs after export)")
    counts = {"transposes_removed": cancel_transposes(model), "pads_folded": fold_pads(model)}
    return (repack(model) if any(counts.values()) else src), counts


def simplify_file(path: Union[str, Path]) -> Dict[str, int]:
    """:func:`simplify` the file at ``path`` in place (written beside it and renamed); returns the counts."""
    path = Path(path)
    data, counts = simplify(path.read_bytes())
    if any(counts.values()):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return counts
