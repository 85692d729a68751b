"""The deployment reports over the model zoo: ``python -m yolo_dero.mcu crosscheck | plan-report | reparam-report``.

* :func:`crosscheck` -> results/mcu_crosscheck.{md,json}: for every case of :data:`DEFAULT_CASES` the memory
  analyzer's ``tflm`` engine (``analyze(deployable(model), imgsz, engine="tflm")``: predicted planned arena and
  largest live set) against the head that TFLite Micro measures on the full-integer export
  (:func:`~yolo_dero.mcu.export.export_tflite`, :func:`~yolo_dero.mcu.arena.measure_arena`);
* :func:`plan_report` -> results/mcu_plan.{md,json}: online vs planned heads of the same models (without the toys)
  under the offline memory plan (:func:`~yolo_dero.mcu.offline_plan.plan_file`);
* :func:`reparam_report` -> results/mcu_reparam.{md,json}: original / plain / DERO in the ``rep`` style (folded
  into plain convolutions by the export) / DERO in the default style, per family and input size;
* :func:`payoff_report` -> results/mcu_payoff.{md,json}: the same four variants of every family at two sizes, built
  with SAME padding, online and offline-planned TFLM heads beside the analyzer's ``fused`` figure.

The cases: small toy nets on 16x32x32 tensors (:func:`toy_models`, rows of the cross-check) and the zoo models,
built with randomised BatchNorm statistics (:func:`build`) so that nothing folds away by accident. What the
figures mean (why analyzer and runtime differ, what sets each planned peak) is in docs/deployment.md; the
generated markdown points there.
"""

from __future__ import annotations

import datetime
import importlib.metadata as md
import json
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from classification.catalog import CATALOG, variant_names

from ..benchmark import ratios
from ..memory import analyze, input_channels
from ..catalog import load_model
from ..nn import DeroUnit
from ..nn.padding import to_same_padding
from .arena import measure_arena
from .export import deployable, export_tflite, is_detection_model, lower_for_export
from .offline_plan import plan_file
from .tflite import read_graph


# ------------------------------------------------------------------------------------------------
# models: toys and zoo cases


class ClassicResidual(nn.Module):
    """``y = x + conv2(relu(conv1(x)))``, 16 channels, 3x3."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


class OneConvResidual(nn.Module):
    """``y = x + relu(conv(x))``: a residual around one operator, no BatchNorm (what a DERO unit becomes in
    TFLite once ``bn_in`` and ``bn_sc`` are folded)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()

    def forward(self, x):
        return x + self.relu(self.conv(x))


def toy_models() -> "OrderedDict[str, Callable[[], nn.Module]]":
    """Toy nets on 16x32x32 tensors (T = 16,384 bytes at int8)."""
    return OrderedDict([
        ("toy_plain_chain", lambda: nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())])),
        ("toy_classic_residual", lambda: nn.Sequential(ClassicResidual(), ClassicResidual())),
        ("toy_one_conv_residual", lambda: nn.Sequential(OneConvResidual(), OneConvResidual())),
        ("toy_dero_1x1", lambda: nn.Sequential(*[DeroUnit(16, 16, k=1, shortcut_bn=False) for _ in range(4)])),
        ("toy_plain_1x1", lambda: nn.Sequential(*[DeroUnit(16, 16, k=1, shortcut=False) for _ in range(4)])),
        ("toy_dero_3x3", lambda: nn.Sequential(*[DeroUnit(16, 16, k=3) for _ in range(4)])),
        ("toy_plain_3x3", lambda: nn.Sequential(*[DeroUnit(16, 16, k=3, shortcut=False) for _ in range(4)])),
    ])


#: the DERO form whose shortcut stays an add on the runtime (activation before the add, pre-norm): the classifiers'
#: default from the sixth to the twelfth session, which the cross-check and payoff reports measure. Today's default
#: (``rep-slice``) folds into its plain twin at export (``reparam-report``).
PRE_NORM = "project-slice-nodwbias"


def _pre_norm(name: str, variant: str) -> str:
    """A zoo model spec with the pre-norm DERO style pinned for its DERO and plain variants."""
    return name if variant == "original" else f"{name}:{PRE_NORM}"


#: (row label, model spec for the loader or a toy name, imgsz, family, variant)
DEFAULT_CASES: List[Tuple[str, str, int, str, str]] = [
    *[(n, n, 32, "toy", n.split("_", 1)[1]) for n in toy_models()],
    *[(name, _pre_norm(name, variant), size, CATALOG[arch].title, variant)  # labelled by registry name
      for arch, size in (("mcunet_v4", 96), ("resnet34", 64)) for variant, name in variant_names(arch).items()],
    ("yolov5n", "cfg/yolov5n.yaml", 128, "YOLOv5n", "original"),
    ("yolov5n-plain", "cfg/yolov5n-plain.yaml", 128, "YOLOv5n", "plain"),
    ("yolov5n-dero", "cfg/yolov5n-dero.yaml", 128, "YOLOv5n", "dero"),
]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (so nothing folds away by
    accident, and quantization sees realistic ranges); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


def build(spec: str) -> Tuple[nn.Module, int]:
    """(model in eval mode with randomised BatchNorm statistics, input channels)."""
    toys = toy_models()
    if spec in toys:
        torch.manual_seed(0)
        model, c = toys[spec]().eval(), 16
    else:
        torch.manual_seed(0)
        model, _ = load_model(spec)
        c = input_channels(model)
    return randomize_batchnorm(model, seed=1), c


def _env() -> Dict[str, str]:
    vs = []
    for p in ("torch", "litert-torch", "ai-edge-litert", "tflite-micro"):
        try:
            vs.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError:
            pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "versions": ", ".join(vs)}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# ------------------------------------------------------------------------------------------------
# crosscheck: analyzer tflm engine vs measured TFLM arena


def run_case(label: str, spec: str, imgsz: int, workdir: Path, num_calib: int = 4,
             keep: Optional[Path] = None, bisect: bool = True) -> Dict[str, Any]:
    row: Dict[str, Any] = {"model": label, "spec": spec, "imgsz": imgsz}
    t0 = time.time()
    try:
        model, c = build(spec)
    except Exception as e:  # a detection YAML that does not load yet
        row["error"] = f"load: {type(e).__name__}: {e}"
        return row
    det = is_detection_model(model)
    net = deployable(model)
    r = analyze(net, imgsz, engine="tflm", in_channels=c, outputs="all" if det else "auto", name=label)
    row.update(analyzer_tflm_arena=r.arena_bytes, analyzer_tflm_live=r.peak_bytes,
               analyzer_peak_operator=r.peak_operator)
    rf = analyze(net, imgsz, engine="fused", in_channels=c, outputs="all" if det else "auto", name=label)
    row["analyzer_fused_peak"] = rf.peak_bytes
    low, _ = lower_for_export(net)  # the graph as exported: shortcut convs, bn_in folded or depthwise
    rl = analyze(low, imgsz, engine="tflm", in_channels=c, outputs="all" if det else "auto", name=label)
    row["analyzer_tflm_arena_lowered"] = rl.arena_bytes
    out = (keep or workdir) / f"{label}_{imgsz}.tflite"
    try:
        e = export_tflite(model, imgsz, out, num_calib=num_calib, in_channels=c)
    except Exception as ex:
        row["error"] = f"export: {type(ex).__name__}: {str(ex)[:500]}"
        return row
    row.update(op_counts=e.op_counts, lowering=e.lowering, file_bytes=e.bytes, export_notes=e.notes)
    a = measure_arena(out, bisect=bisect)
    row.update(tflm_head=a.head_bytes, tflm_tail=a.tail_bytes, tflm_total=a.total_bytes,
               tflm_min_arena=a.minimal_arena_bytes, max_abs_diff_lsb=a.max_abs_diff_lsb,
               max_abs_diff_lsb_optimized=a.max_abs_diff_lsb_optimized, outputs_match=a.outputs_match,
               tflm_detail=a.detail, arena_notes=a.notes)
    row["ratio_measured_over_analyzer"] = round(a.head_bytes / r.arena_bytes, 3) if r.arena_bytes else None
    row["ratio_measured_over_analyzer_lowered"] = round(a.head_bytes / rl.arena_bytes, 3) if rl.arena_bytes else None
    row["seconds"] = round(time.time() - t0, 1)
    return row


#: (row key, name in the ratio record) of :func:`variant_ratios`
VARIANT_RATIO_KEYS = (("tflm_head", "head"), ("tflm_min_arena", "min arena"), ("analyzer_tflm_arena", "analyzer tflm"),
                      ("analyzer_fused_peak", "analyzer fused"))


def variant_ratios(rows: Sequence[Dict[str, Any]], cases: Sequence[Tuple[str, str, int, str, str]]
                   ) -> List[Dict[str, Any]]:
    """Per family: measured DERO/plain and original/plain (head and minimal arena) and the analyzer's."""
    by = {r["model"]: r for r in rows}
    fam: Dict[str, Dict[str, Dict[str, Any]]] = OrderedDict()
    for label, _, _, family, variant in cases:
        if family != "toy" and label in by and "tflm_head" in by[label]:
            fam.setdefault(family, {})[variant] = by[label]
    out = []
    for family, v in fam.items():
        plain = v.get("plain")
        if not plain:
            continue
        d: Dict[str, Any] = {"family": family, "imgsz": plain["imgsz"]}
        pairs = [(var, "plain") for var in ("dero", "original") if var in v]
        for pair, table in ratios(v, [k for k, _ in VARIANT_RATIO_KEYS], pairs).items():
            d.update({f"{pair} {name}": table[k] for k, name in VARIANT_RATIO_KEYS})
        out.append(d)
    return out


def crosscheck_markdown(rows: Sequence[Dict[str, Any]], ratios: Sequence[Dict[str, Any]], env: Dict[str, str]
                        ) -> str:
    lines = ["# Analyzer `tflm` engine vs TensorFlow Lite Micro (measured)", "",
             "Generated by `python -m yolo_dero.mcu crosscheck` "
             f"({env.get('date', '')}; {env.get('versions', '')}). int8, batch 1; bytes.", "",
             "* **analyzer arena**: `analyze(model, imgsz, engine=\"tflm\").arena_bytes` (greedy planner model); "
             "**analyzer live**: its largest live set; **fused**: engine `fused` (docs/memory_model.md §3).",
             "* **TFLM head**: `Arena allocation head` from `print_allocations()` (planned activation buffers); "
             "**tail**: persistent allocations; **min arena**: smallest `arena_size` that allocates (bisection).",
             "* **analyzer arena, lowered**: the same engine on the graph as exported (`lower_for_export`: DERO "
             "shortcut -> one conv, `bn_in` folded or a 1x1 depthwise conv).",
             "* **ratio** = TFLM head / analyzer arena (**ratio, lowered**: / analyzer arena, lowered). **diff**: max |TFLM - LiteRT| output difference in LSB "
             "on one random int8 input.",
             "* Models are exported after the deployment lowering of docs/deployment.md (DERO shortcut -> one conv, "
             "`bn_in` folded into 1x1 convs, else a 1x1 depthwise conv); the analyzer sees the model as written.",
             "* Detection models: backbone + neck + Detect convolutions, raw per-level outputs (no decode, no NMS); "
             "the analyzer is run on the same wrapper.", "",
             "| model | imgsz | analyzer arena | analyzer live | fused | analyzer arena, lowered | TFLM head | ratio "
             "| ratio, lowered | TFLM tail | min arena | ops | diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r and "tflm_head" not in r:
            lines.append(f"| {r['model']} | {r['imgsz']} | {_fmt(r.get('analyzer_tflm_arena'))} | "
                         f"{_fmt(r.get('analyzer_tflm_live'))} | {_fmt(r.get('analyzer_fused_peak'))} | "
                         f"{_fmt(r.get('analyzer_tflm_arena_lowered'))} | "
                         f"failed: {r['error'][:120].replace('|', '/')} | | | | | | |")
            continue
        ops = sum(r["op_counts"].values())
        lines.append(
            f"| {r['model']} | {r['imgsz']} | {_fmt(r['analyzer_tflm_arena'])} | {_fmt(r['analyzer_tflm_live'])} | "
            f"{_fmt(r['analyzer_fused_peak'])} | {_fmt(r['analyzer_tflm_arena_lowered'])} | {_fmt(r['tflm_head'])} | "
            f"{r['ratio_measured_over_analyzer']} | {r['ratio_measured_over_analyzer_lowered']} | "
            f"{_fmt(r['tflm_tail'])} | {_fmt(r['tflm_min_arena'])} | {ops} | {r['max_abs_diff_lsb']} |")
    if ratios:
        lines += ["", "## Variant ratios", "",
                  "| family | imgsz | DERO/plain TFLM head | DERO/plain min arena | DERO/plain analyzer tflm | "
                  "DERO/plain analyzer fused | original/plain TFLM head | original/plain min arena | "
                  "original/plain analyzer tflm | original/plain analyzer fused |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for d in ratios:
            lines.append("| " + " | ".join(_fmt(d.get(k)) for k in (
                "family", "imgsz", "dero/plain head", "dero/plain min arena", "dero/plain analyzer tflm",
                "dero/plain analyzer fused", "original/plain head", "original/plain min arena",
                "original/plain analyzer tflm", "original/plain analyzer fused")) + " |")
    lines += ["", "## Operators per exported model", ""]
    for r in rows:
        if "op_counts" in r:
            lines.append(f"* {r['model']}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["op_counts"].items())))
    return "\n".join(lines) + "\n"


#: appended to results/mcu_crosscheck.md by the full run (``crosscheck`` without ``--only``)
CROSSCHECK_NOTES = """
## Reading the table

Why the analyzer's figures and the measured ones differ, and what the runtime says about DERO: docs/deployment.md,
section "Reading the cross-check" (written from an earlier run of this table; the table above is the measurement).
"""


def crosscheck(cases: Optional[Sequence[Tuple[str, str, int, str, str]]] = None, out_md: Optional[Path] = None,
               out_json: Optional[Path] = None, only: Optional[Sequence[str]] = None, num_calib: int = 4,
               keep: Optional[Path] = None, log: Callable[[str], None] = print,
               explanations: str = "") -> Dict[str, Any]:
    cases = list(cases or DEFAULT_CASES)
    if only:
        cases = [c for c in cases if c[0] in only or c[3] in only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec, imgsz, _, _ in cases:
            row = run_case(label, spec, imgsz, Path(tmp), num_calib=num_calib, keep=keep)
            log(json.dumps({k: row.get(k) for k in ("model", "analyzer_tflm_arena", "tflm_head",
                                                    "ratio_measured_over_analyzer", "tflm_min_arena",
                                                    "max_abs_diff_lsb", "seconds", "error")}))
            rows.append(row)
    ratios = variant_ratios(rows, cases)
    env = _env()
    result = {"env": env, "rows": rows, "ratios": ratios}
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=1))
    if out_md:
        Path(out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(out_md).write_text(crosscheck_markdown(rows, ratios, env) + explanations)
    return result


# ------------------------------------------------------------------------------------------------
# plan-report: online vs planned heads


def plan_report(keep: Optional[Path] = None, out_md: Optional[Path] = None, out_json: Optional[Path] = None,
                only: Optional[Sequence[str]] = None, num_calib: int = 4, n_inputs: int = 2,
                log=print) -> Dict[str, Any]:
    """Online vs planned head bytes of the cross-check models (original/plain/DERO of MCUNet-v4 at 96,
    ResNet34 at 64, YOLOv5n at 128). Reuses ``keep/{label}_{imgsz}.tflite`` (as written by
    ``crosscheck --keep``) where present, else exports the model there."""
    cases = [c for c in DEFAULT_CASES if c[3] != "toy"]
    if only:
        cases = [c for c in cases if c[0] in only or c[3] in only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(keep) if keep else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        for label, spec, imgsz, family, variant in cases:
            t0 = time.time()
            f = d / f"{label}_{imgsz}.tflite"
            row: Dict[str, Any] = {"model": label, "family": family, "variant": variant, "imgsz": imgsz}
            try:
                if not f.exists():
                    model, c = build(spec)
                    export_tflite(model, imgsz, f, num_calib=num_calib, in_channels=c)
                r = plan_file(f, Path(tmp) / f"{label}_planned.tflite", inplace=True, n_inputs=n_inputs)
                r0 = plan_file(f, Path(tmp) / f"{label}_planned_noinplace.tflite", inplace=False, verify=False)
                g = read_graph(f)
                row.update(online_head=r.verification["online_head_bytes"],
                           planned_head=r.verification["planned_head_bytes"],
                           planned_head_model=r.plan["head_bytes"], largest_live=r.plan["largest_live_bytes"],
                           peak_operator=r.plan["peak_operator"], peak_live=r.plan["peak_live"],
                           inplace_pairs=len(r.plan["inplace_pairs"]),
                           noinplace_planned=r0.plan["head_bytes"], noinplace_live=r0.plan["largest_live_bytes"],
                           ordering=r.plan["ordering"], bit_identical=r.verification["bit_identical"],
                           litert_diff=r.verification["max_abs_diff_lsb_litert"], ops=len(g.ops),
                           n_inputs=n_inputs)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            row["seconds"] = round(time.time() - t0, 1)
            log(json.dumps(row))
            rows.append(row)
    env = _env()
    res = {"env": env, "rows": rows}
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(res, indent=1))
    if out_md:
        Path(out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(out_md).write_text(plan_markdown(rows, env))
    return res


def plan_markdown(rows: Sequence[Dict[str, Any]], env: Dict[str, str]) -> str:
    L = ["# Offline memory plan vs TFLM's online planner", "",
         f"Generated by `python -m yolo_dero.mcu plan-report` ({env.get('date', '')}; {env.get('versions', '')}). "
         "int8, batch 1; bytes. Models as exported for results/mcu_crosscheck.md (same builds, synthetic "
         "calibration).", "",
         "* **online head**: TFLM's `Arena allocation head` for the file without a plan (greedy online planner).",
         "* **planned head**: the same, measured in TFLM, for the file with the `OfflineMemoryAllocation` "
         "written by `python -m yolo_dero.mcu plan` (elementwise ops in place where allowed, see "
         "docs/deployment.md).",
         "* **largest live**: the lower bound, the largest set of buffers live at one operator (after in-place "
         "sharing); **peak operator**: where it occurs. **no in-place**: planned head / largest live with "
         "`--no-inplace` (placement only).",
         "* **pairs**: tensors written in place. **check**: planned outputs bit-identical to the unplanned "
         "TFLM run on the random int8 inputs, and max |diff| to LiteRT's reference kernels.", "",
         "| model | imgsz | online head | planned head | planned/online | largest live | peak operator | "
         "no in-place: planned | no in-place: largest live | pairs | check |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            L.append(f"| {r['model']} | {r['imgsz']} | failed: {r['error'][:150].replace('|', '/')} | | | | | | | | |")
            continue
        L.append(f"| {r['model']} | {r['imgsz']} | {_fmt(r['online_head'])} | {_fmt(r['planned_head'])} | "
                 f"{round(r['planned_head'] / r['online_head'], 3)} | {_fmt(r['largest_live'])} | "
                 f"`{r['peak_operator']}` | {_fmt(r['noinplace_planned'])} | {_fmt(r['noinplace_live'])} | "
                 f"{r['inplace_pairs']} | {'bit-identical' if r['bit_identical'] else 'DIFF'} x{r['n_inputs']}, "
                 f"LiteRT {r['litert_diff']} LSB |")
    fam: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            fam.setdefault(r["family"], {})[r["variant"]] = r
    L += ["", "## Variant ratios (planned head)", "",
          "| family | DERO/plain online | DERO/plain planned | original/plain online | original/plain planned |",
          "|---|---|---|---|---|"]
    for f, v in fam.items():
        p = v.get("plain")
        if not p:
            continue
        cells = []
        for var in ("dero", "original"):
            if var in v:
                cells += [round(v[var]["online_head"] / p["online_head"], 3),
                          round(v[var]["planned_head"] / p["planned_head"], 3)]
            else:
                cells += ["-", "-"]
        L.append(f"| {f} | " + " | ".join(str(c) for c in cells) + " |")
    L += ["", "## What sets each planned peak", "",
          "Buffers live at the peak operator of the in-place plan (tensors sharing one buffer joined by `=`; "
          "names shortened to the last two module-path components):", ""]
    for r in rows:
        if "error" not in r:
            L.append(f"* **{r['model']}** {_fmt(r['largest_live'])} B at `{r['peak_operator']}`: "
                     + ", ".join(f"`{n}` {_fmt(b)}" for n, b in r.get("peak_live", [])))
    bad = [r["model"] for r in rows if "error" not in r and r["planned_head"] > r["online_head"]]
    L += ["", f"planned <= online: {'yes, every row' if not bad else 'NO for ' + ', '.join(bad)}."]
    return "\n".join(L) + "\n" + PLAN_NOTES


#: appended to results/mcu_plan.md
PLAN_NOTES = """
## Reading the table

Why planned DERO still exceeds planned plain, and what would close the gap: docs/deployment.md, section "Reading
the plan report" (written from an earlier run of this table; the table above is the measurement).
"""


# ------------------------------------------------------------------------------------------------
# reparam-report: the re-parameterizable DERO form on TFLM


def _reparam_specs(arch: str) -> Dict[str, str]:
    """The reparam-report rows of a zoo architecture: ``{row variant: model spec}`` (a style after the colon)."""
    n = variant_names(arch)
    return {"original": n["original"], "plain (rep)": f"{n['plain']}:rep", "DERO rep, folded": f"{n['dero']}:rep",
            "DERO default (rep-slice), folded": n["dero"], "DERO pre-norm": f"{n['dero']}:{PRE_NORM}"}


#: (family, input size, {variant: model spec}); the plain twin is the reference every variant is compared with
REPARAM_CASES: List[Tuple[str, int, Dict[str, str]]] = [
    (family, size, specs)
    for family, sizes, specs in [
        *[(CATALOG[arch].title, sizes, _reparam_specs(arch)) for arch, sizes in (("mcunet_v4", (96, 176)),
                                                                                  ("resnet34", (64,)))],
        ("YOLOv5n", (128,), {"original": "cfg/yolov5n.yaml", "plain (rep)": "cfg/yolov5n-plain-rep.yaml",
                             "DERO rep, folded": "cfg/yolov5n-dero-rep.yaml",
                             "DERO pre-norm": "cfg/yolov5n-dero.yaml"}),
        # C3 with its parallel branch (the seed's C3 structure): its own plain twin is the reference
        ("YOLOv5n-C3", (128,), {"plain (rep)": "cfg/yolov5n-plain-rep-c3.yaml",
                                "DERO rep, folded": "cfg/yolov5n-dero-rep-c3.yaml"}),
    ]
    for size in sizes
]
REPARAM_PLAIN = "plain (rep)"  # the reference row of each family and size


def _reparam_key(family: str, size: int, variant: str) -> str:
    return f"{family} @{size} {variant}"


def _saved_rows(out_json: Path, force: bool) -> Dict[str, Dict[str, Any]]:
    """The rows a resumable zoo report already measured (none with ``force``), by key."""
    if force or not out_json.is_file():
        return {}
    return {r["key"]: r for r in json.loads(out_json.read_text())["rows"]}


def reparam_report(out_md: Path, out_json: Path, only: Optional[Sequence[str]] = None, num_calib: int = 2,
                   force: bool = False) -> Dict[str, Any]:
    """Measure every case (or the families in ``only``), reusing rows already in ``out_json`` unless ``force``."""
    rows = _saved_rows(out_json, force)
    with tempfile.TemporaryDirectory() as tmp:
        for family, size, specs in REPARAM_CASES:
            if only and family not in only:
                continue
            for variant, spec in specs.items():
                key = _reparam_key(family, size, variant)
                if key in rows and "error" not in rows[key]:
                    continue
                row = run_case(key.replace(" ", "_").replace(",", "").replace("@", ""), spec, size, Path(tmp),
                               num_calib=num_calib, bisect=False)  # head bytes need no minimal-arena search
                row.update(key=key, family=family, variant=variant)
                rows[key] = row
                _write_reparam(rows, out_md, out_json)
    return _write_reparam(rows, out_md, out_json)


def _ops(row: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row.get("op_counts", {}).items()))


def _write_reparam(rows: Dict[str, Dict[str, Any]], out_md: Path, out_json: Path) -> Dict[str, Any]:
    result = {"rows": list(rows.values())}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    out_md.write_text(reparam_markdown(rows))
    return result


def reparam_markdown(rows: Dict[str, Dict[str, Any]]) -> str:
    lines = ["# The re-parameterizable DERO form on TensorFlow Lite Micro", "",
             "Regenerate: `python -m yolo_dero.mcu reparam-report` (full-int8 export, BatchNorm statistics randomised "
             "as in the cross-check; head bytes measured by TFLite Micro's allocator). `DERO rep, folded` is DERO in "
             "the `rep` style, each unit folded into one convolution by the export; `DERO default (rep-slice), "
             "folded` the classifiers' default style since the thirteenth session, folded the same way; `DERO "
             "pre-norm` the activation-before-add form (the classifiers' default style of the sixth to twelfth "
             "sessions, `project-slice-nodwbias`; YOLOv5n's `cfg/yolov5n-dero.yaml`) with its shortcut as a second "
             "convolution and an add.", "",
             "| model | variant | TFLM head B | / plain | analyzer fused B | operators | same graph as plain | "
             "TFLM vs LiteRT (LSB) |",
             "|---|---|---|---|---|---|---|---|"]
    for family, size, specs in REPARAM_CASES:
        plain = rows.get(_reparam_key(family, size, REPARAM_PLAIN), {})
        for variant in specs:
            r = rows.get(_reparam_key(family, size, variant))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {family} @{size} | {variant} | error: {r['error'][:120]} | | | | | |")
                continue
            ratio = f"{r['tflm_head'] / plain['tflm_head']:.3f}" if plain.get("tflm_head") else ""
            same = "yes" if plain.get("op_counts") == r.get("op_counts") and \
                plain.get("tflm_head") == r.get("tflm_head") else "no"
            lines.append(f"| {family} @{size} | {variant} | {r['tflm_head']:,} | {ratio} | "
                         f"{r.get('analyzer_fused_peak', 0):,} | {_ops(r)} | {same} | {r.get('max_abs_diff_lsb')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# payoff: where does the original cost more than plain on the real runtime, and does DERO remove that cost?


#: (family, input sizes, {variant: model spec}); every model is built with TFLite-style SAME padding
#: (:func:`~yolo_dero.nn.padding.to_same_padding`), the deployment configuration the README recommends
PAYOFF_CASES: List[Tuple[str, Tuple[int, ...], Dict[str, str]]] = [
    ("ResNet34", (64, 128), {"original": "resnet34", "plain": "resnet34_plain:rep",
                             "DERO seed form": "resnet34_dero:" + PRE_NORM, "DERO rep": "resnet34_dero:rep"}),
    ("MCUNet-v4", (96, 176), {"original": "mcunet_v4", "plain": "mcunet_v4_plain:rep",
                              "DERO seed form": "mcunet_v4_dero:" + PRE_NORM, "DERO rep": "mcunet_v4_dero:rep"}),
    ("DenseNet121", (64, 128), {"original": "densenet121", "plain": "densenet121_plain:rep",
                                "DERO seed form": "densenet121_dero:" + PRE_NORM, "DERO rep": "densenet121_dero:rep"}),
    ("YOLOv5n", (128, 256), {"original": "cfg/yolov5n.yaml", "plain": "cfg/yolov5n-plain-rep.yaml",
                             "DERO seed form": "cfg/yolov5n-dero.yaml", "DERO rep": "cfg/yolov5n-dero-rep.yaml"}),
]


def payoff_case(spec: str, imgsz: int, workdir: Path, num_calib: int = 2, n_inputs: int = 2) -> Dict[str, Any]:
    """Export ``spec`` (SAME padding, randomised BatchNorm statistics) and measure its TFLite Micro head with the
    online planner and with the offline plan (in-place elementwise ops), beside the analyzer's ``fused`` peak."""
    t0 = time.time()
    model, c = build(spec)
    to_same_padding(model)
    det = is_detection_model(model)
    fused = analyze(deployable(model), imgsz, engine="fused", in_channels=c, outputs="all" if det else "auto")
    row: Dict[str, Any] = {"spec": spec, "imgsz": imgsz, "analyzer_fused": fused.peak_bytes,
                           "analyzer_peak_operator": fused.peak_operator}
    out = workdir / f"{spec.replace('/', '_').replace(':', '_')}_{imgsz}.tflite"
    e = export_tflite(model, imgsz, out, num_calib=num_calib, in_channels=c)
    refused = [n for n in e.notes if n.startswith("TFLite Micro will not allocate")]
    if refused:
        raise RuntimeError(f"{refused[0]} ({len(refused)} such operator(s))")
    r = plan_file(out, workdir / f"{out.stem}_planned.tflite", inplace=True, n_inputs=n_inputs)
    row.update(op_counts=e.op_counts, lowering=e.lowering, online_head=r.verification["online_head_bytes"],
               planned_head=r.verification["planned_head_bytes"], peak_operator=r.plan["peak_operator"],
               bit_identical=r.verification["bit_identical"], litert_diff=r.verification["max_abs_diff_lsb_litert"],
               seconds=round(time.time() - t0, 1))
    return row


def payoff_report(out_md: Path, out_json: Path, only: Optional[Sequence[str]] = None, num_calib: int = 2,
                  force: bool = False, log=print) -> Dict[str, Any]:
    """Every :data:`PAYOFF_CASES` row (or the families in ``only``), resuming from the rows in ``out_json``."""
    rows = _saved_rows(out_json, force)
    with tempfile.TemporaryDirectory() as tmp:
        for family, sizes, specs in PAYOFF_CASES:
            if only and family not in only:
                continue
            for size in sizes:
                for variant, spec in specs.items():
                    key = _reparam_key(family, size, variant)
                    if key in rows and "error" not in rows[key]:
                        continue
                    try:
                        row = payoff_case(spec, size, Path(tmp), num_calib=num_calib)
                    except Exception as ex:  # noqa: BLE001  (one failing export must not lose the others)
                        row = {"spec": spec, "imgsz": size, "error": f"{type(ex).__name__}: {str(ex)[:400]}"}
                    row.update(key=key, family=family, variant=variant, size=size)
                    rows[key] = row
                    log(json.dumps({k: row.get(k) for k in ("key", "online_head", "planned_head", "analyzer_fused",
                                                            "peak_operator", "error")}))
                    _write_payoff(rows, out_md, out_json)
    return _write_payoff(rows, out_md, out_json)


def _write_payoff(rows: Dict[str, Dict[str, Any]], out_md: Path, out_json: Path) -> Dict[str, Any]:
    result = {"env": _env(), "rows": list(rows.values())}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    out_md.write_text(payoff_markdown(rows, result["env"]))
    return result


def payoff_markdown(rows: Dict[str, Dict[str, Any]], env: Dict[str, str]) -> str:
    lines = ["# The payoff on TensorFlow Lite Micro: original, plain and DERO, measured", "",
             f"Regenerate: `python -m yolo_dero.mcu payoff` ({env.get('date', '')}; {env.get('versions', '')}). "
             "Every model is built with TFLite-style SAME padding (`yolo_dero.nn.padding.to_same_padding`, the "
             "deployment configuration), exported full-int8 (`export_tflite`: re-parameterizable units folded, "
             "pads folded into their operators) with randomised BatchNorm statistics, and measured by TFLite "
             "Micro's allocator: **online** = TFLM's own planner, **planned** = with the offline memory plan "
             "(`python -m yolo_dero.mcu export` writes it by default; elementwise operators in place). "
             "**analyzer fused** = `python -m yolo_dero.memory --engine fused`, the figure the README sells. "
             "*planned / fused* within 1.05 means the runtime delivers the analyzer's figure; above it, the "
             "peak operator names what keeps it there.", "",
             "| model | variant | online B | planned B | analyzer fused B | planned / fused | planned / plain | "
             "peak operator (planned) | PAD ops | planned = online outputs | vs LiteRT (LSB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, sizes, specs in PAYOFF_CASES:
        for size in sizes:
            plain = rows.get(f"{family} @{size} plain", {})
            for variant in specs:
                r = rows.get(f"{family} @{size} {variant}")
                if r is None:
                    continue
                if "error" in r:
                    lines.append(f"| {family} @{size} | {variant} | error: {r['error'][:140]} | | | | | | | | |")
                    continue
                to_plain = f"{r['planned_head'] / plain['planned_head']:.3f}" if plain.get("planned_head") else ""
                pads = r["op_counts"].get("PAD", 0) + r["op_counts"].get("PADV2", 0)
                lines.append(f"| {family} @{size} | {variant} | {r['online_head']:,} | {r['planned_head']:,} | "
                             f"{r['analyzer_fused']:,} | {r['planned_head'] / r['analyzer_fused']:.3f} | {to_plain} | "
                             f"{r['peak_operator']} | {pads} | {'bit-identical' if r['bit_identical'] else 'NO'} | "
                             f"{r['litert_diff']} |")
    return "\n".join(lines) + "\n"
