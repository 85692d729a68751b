"""Activation-memory analysis of any ``nn.Module`` under the memory model of docs/memory_model.md.

    >>> from yolo_dero.memory import analyze
    >>> r = analyze(model, imgsz=224)                 # engine "fused", int8
    >>> r.peak_bytes, r.peak_operator, r.body_peak_bytes, r.stages
    >>> analyze(model, 224, engine="tflm").arena_bytes

One eval forward pass at batch 1 is recorded (see :mod:`yolo_dero.memory.trace`); an engine of
:mod:`yolo_dero.memory.engines` lowers it to an operator sequence (:mod:`yolo_dero.memory.lowering`) and places
its buffers (:mod:`yolo_dero.memory.intervals`). Stages come
from the model's ``memory_stages`` (``{"stem": [module names], "layer1": [...], ..., "head": [...]}``)
or, without it, from a documented fallback (see docs/memory_model.md).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..nn.reparam import reparameterize
from .engines import ENGINES, Engine, Plan, engine_names, get_engine
from .lowering import Op, operator_sequence
from .trace import LeafPredicate, Trace, record

ImgSize = Union[int, Sequence[int]]
EngineLike = Union[str, Engine]


@dataclass
class MemoryResult:
    """The figures of one model under one engine. Bytes throughout; ``profile[i]`` is the live bytes
    while operator ``i`` runs (its inputs, its outputs and every buffer kept alive across it)."""

    model: str
    imgsz: Tuple[int, int]
    engine: str
    bytes_per_element: int
    peak_bytes: int
    peak_operator: str
    peak_index: int
    body_peak_bytes: int
    body_peak_operator: str
    stem_peak_bytes: int
    stages: Dict[str, int]
    stage_spans: Dict[str, Tuple[int, int]]       # first/last operator index of each stage
    modules: Dict[str, int]                       # peak per module named in the stages (YOLO: per layer)
    profile: List[int]
    operators: List[str]
    operator_stages: List[str]
    stages_source: str                            # "memory_stages" or "fallback"
    params: int
    macs: int
    arena_bytes: Optional[int] = None             # tflm: the greedy planner's arena
    notes: List[str] = field(default_factory=list)

    @property
    def num_operators(self) -> int:
        return len(self.profile)

    def to_dict(self, operators: bool = False) -> Dict[str, Any]:
        d = asdict(self)
        d["imgsz"] = list(self.imgsz)
        d["stage_spans"] = {k: list(v) for k, v in self.stage_spans.items()}
        d["num_operators"] = self.num_operators
        if not operators:
            d.pop("operators")
            d.pop("operator_stages")
        if self.arena_bytes is None:
            d.pop("arena_bytes")
        return d


def _imgsz(imgsz: ImgSize) -> Tuple[int, int]:
    if isinstance(imgsz, int):
        return imgsz, imgsz
    h, w = (list(imgsz) + list(imgsz))[:2] if len(imgsz) == 1 else list(imgsz)[:2]
    return int(h), int(w)


def input_channels(model: nn.Module) -> int:
    """Input channels: a model's ``yaml['ch']`` (Ultralytics-style models), else the first conv's ``in_channels``."""
    yaml = getattr(model, "yaml", None)
    if isinstance(yaml, dict) and isinstance(yaml.get("ch"), int):
        return yaml["ch"]
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels
    return 3


def _match(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _stages_from_memory_stages(ops: Sequence[Op], stages: Mapping[str, Sequence[str]]
                               ) -> List[Optional[Tuple[str, str]]]:
    """(stage, matched module name) of each operator, None where no listed module encloses it."""
    table = [(p, s) for s, names in stages.items() for p in names]
    table.sort(key=lambda ps: -len(ps[0]))  # most specific module name first
    out: List[Optional[Tuple[str, str]]] = []
    for op in ops:
        found = None
        for mod in reversed((op.module,) + tuple(op.modules)):
            if not mod:
                continue
            for prefix, stage in table:
                if _match(mod, prefix):
                    found = (stage, prefix)
                    break
            if found:
                break
        out.append(found)
    return out


def _downsamples(op: Op, shapes: Mapping[int, Tuple[int, ...]]) -> bool:
    ins = [shapes[r] for r in op.reads if len(shapes.get(r, ())) == 4]
    outs = [shapes[w] for w in op.writes if len(shapes.get(w, ())) == 4]
    return bool(ins and outs) and outs[0][2] * outs[0][3] < ins[0][2] * ins[0][3]


def fallback_stages(trace: Trace) -> Dict[str, List[str]]:
    """Stages for a model without ``memory_stages``, as module-name lists (same form).

    stem = the modules of the operators (fused engine sequence) up to the end of the first run of
    consecutive spatially downsampling operators (ResNet: conv+BN+ReLU /2 and max-pool /2; MCUNet:
    the first conv). The rest is grouped by module name at the shallowest depth that gives at least
    three distinct names (ResNet: layer1..layer4, avgpool, fc).
    """
    ops = operator_sequence(trace, collapse_units=True)
    shapes = {v.id: v.shape for v in trace.values}
    n = len(ops)
    stem_end, i = -1, 0
    while i < n and not _downsamples(ops[i], shapes):
        i += 1
    while i < n and _downsamples(ops[i], shapes):
        stem_end = i
        i += 1
    stages: Dict[str, List[str]] = {"stem": []}
    for op in ops[:stem_end + 1]:
        for mod in (op.module,) + tuple(op.modules[1:]):
            if mod and mod not in stages["stem"]:
                stages["stem"].append(mod)
                break
    depth = 1
    while depth < 4:
        keys = {".".join(op.module.split(".")[:depth]) for op in ops if op.module}
        if len(keys) >= 3:
            break
        depth += 1
    for op in ops[stem_end + 1:]:
        key = ".".join(op.module.split(".")[:depth])
        if key and key not in stages:
            stages[key] = [key]
    return stages


def _assign(ops: Sequence[Op], stages: Mapping[str, Sequence[str]]) -> List[Tuple[str, str]]:
    names = _stages_from_memory_stages(ops, stages)
    first = next(iter(stages))
    prev = (first, (list(stages[first]) or [first])[0])
    filled = []
    for s in names:  # operators outside every listed module belong to the stage (and module) before them
        prev = s or prev
        filled.append(prev)
    return filled


def _result(name: str, size: Tuple[int, int], p: Plan, trace: Trace, bpe: int, stages: Mapping[str, Sequence[str]],
            source: str, params: int) -> MemoryResult:
    ops = p.ops
    stem = next(iter(stages))
    assigned = _assign(ops, stages)
    op_stages = [s for s, _ in assigned]
    module_peak: Dict[str, int] = {}
    for (_, mod), b in zip(assigned, p.profile):
        module_peak[mod] = max(module_peak.get(mod, 0), b)
    prof = p.profile
    stage_peak: Dict[str, int] = {}
    spans: Dict[str, Tuple[int, int]] = {}
    order = list(stages)
    for i, s in enumerate(op_stages):
        stage_peak[s] = max(stage_peak.get(s, 0), prof[i])
        a, b = spans.get(s, (i, i))
        spans[s] = (min(a, i), max(b, i))
    ordered = [s for s in order if s in stage_peak] + [s for s in stage_peak if s not in order]
    stage_peak = {s: stage_peak[s] for s in ordered}
    spans = {s: spans[s] for s in ordered}
    body = [i for i, s in enumerate(op_stages) if s != stem]
    body_i = max(body, key=prof.__getitem__) if body else None
    notes = []
    if stem not in stage_peak:
        notes.append("no operator was assigned to the stem")
    peak_i = p.peak_index
    return MemoryResult(
        model=name, imgsz=size, engine=p.engine, bytes_per_element=bpe,
        peak_bytes=p.peak_bytes, peak_operator=ops[peak_i].label if ops else "", peak_index=peak_i,
        body_peak_bytes=prof[body_i] if body_i is not None else 0,
        body_peak_operator=ops[body_i].label if body_i is not None else "",
        stem_peak_bytes=stage_peak.get(stem, 0), stages=stage_peak, stage_spans=spans,
        modules=module_peak, profile=list(prof),
        operators=[op.label for op in ops], operator_stages=op_stages, stages_source=source,
        params=params, macs=trace.macs, arena_bytes=p.arena_bytes, notes=notes)


def trace_model(model: nn.Module, imgsz: ImgSize = 224, leaf: Optional[LeafPredicate] = None,
                outputs: Any = "auto", in_channels: Optional[int] = None) -> Trace:
    """Record one eval forward pass at batch 1 (see :func:`yolo_dero.memory.trace.record`)."""
    h, w = _imgsz(imgsz)
    c = in_channels or input_channels(model)
    return record(model, (1, c, h, w), leaf=leaf, outputs=outputs)


def deployed_form(model: nn.Module) -> nn.Module:
    """``model`` as the export writes it: re-parameterizable DERO units (``act_after_add``) folded into one
    convolution each (a copy; ``model`` itself is returned when it has none)."""
    if not any(getattr(m, "act_after_add", False) for m in model.modules()):
        return model
    return reparameterize(copy.deepcopy(model), strict=False, select=lambda m: getattr(m, "act_after_add", False))


def analyze_engines(model: nn.Module, imgsz: ImgSize = 224, engines: Sequence[EngineLike] = ENGINES,
                    bytes_per_element: int = 1, name: Optional[str] = None,
                    stages: Optional[Mapping[str, Sequence[str]]] = None, leaf: Optional[LeafPredicate] = None,
                    outputs: Any = "auto", in_channels: Optional[int] = None,
                    trace: Optional[Trace] = None, **engine_kw) -> Dict[str, MemoryResult]:
    """Analyse one model under several engines (names or :class:`Engine` instances) from a single recorded forward
    pass; the results are keyed by engine name. ``engine_kw`` go to the engines that take them (tflm: ``pad_ops``,
    ``tie``); an option that no registered engine takes is an error."""
    engs = [get_engine(e) for e in engines]
    known = {k for e in engs + [get_engine(n) for n in engine_names()] for k in e.options}
    unknown = [k for k in engine_kw if k not in known]
    if unknown:
        raise TypeError(f"unknown engine option(s) {', '.join(map(repr, unknown))}; the engines take "
                        f"{', '.join(sorted(known)) or 'none'}")
    if bytes_per_element <= 0:
        raise ValueError("bytes_per_element must be positive")
    size = _imgsz(imgsz)
    trace = trace or trace_model(deployed_form(model), size, leaf=leaf, outputs=outputs, in_channels=in_channels)
    stages = stages if stages is not None else getattr(model, "memory_stages", None)
    source = "memory_stages"
    if not stages:
        stages, source = fallback_stages(trace), "fallback"
    name = name or type(model).__name__
    params = sum(p.numel() for p in model.parameters())
    out = {}
    for e in engs:
        kw = {k: v for k, v in engine_kw.items() if k in e.options}
        out[e.name] = _result(name, size, e.plan(trace, bytes_per_element, **kw), trace, bytes_per_element, stages,
                              source, params)
    return out


def analyze(model: nn.Module, imgsz: ImgSize = 224, engine: EngineLike = "fused", bytes_per_element: int = 1,
            name: Optional[str] = None, stages: Optional[Mapping[str, Sequence[str]]] = None,
            leaf: Optional[LeafPredicate] = None, outputs: Any = "auto", in_channels: Optional[int] = None,
            **engine_kw) -> MemoryResult:
    """Peak activation memory of ``model`` at ``imgsz`` under ``engine`` ("fused", "tflm" or an :class:`Engine`).

    Args:
        model: any module; DERO units (``is_dero_operator``) count as one operator.
        imgsz: int or (height, width); batch 1, ``in_channels`` inferred from the first conv.
        bytes_per_element: 1 for int8 (default), 4 for float32.
        stages: override ``model.memory_stages``.
        leaf: predicate for modules that count as one operator (default: ``is_dero_operator``).
        outputs: network outputs: "auto" (what the model declares in ``memory_outputs``, e.g. the project's
            detection model: the decoded predictions only; else all), "all", "first" or a callable picking them
            from the forward's return value.
        engine_kw: tflm options ``pad_ops`` (default True) and ``tie`` ("reverse" or "forward").
    """
    eng = get_engine(engine)
    return analyze_engines(model, imgsz, (eng,), bytes_per_element, name, stages, leaf, outputs, in_channels,
                           **engine_kw)[eng.name]
