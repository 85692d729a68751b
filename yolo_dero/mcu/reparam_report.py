"""Deployment of the re-parameterizable DERO form: does the folded network equal its plain twin on TFLite Micro?

For each family and input size the report exports (full int8, ``export_tflite``) and measures under TFLite Micro
(``measure_arena``): the original residual network, the plain twin in the ``rep`` style, DERO in the ``rep`` style
(folded into plain convolutions by the export) and DERO in the default style (the seed's act-before-add form).
Each row also carries the analyzer's ``fused`` peak. Rows are cached in the JSON file, so an interrupted report
resumes; ``python -m yolo_dero.mcu reparam-report`` writes ``results/mcu_reparam.{md,json}``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .crosscheck import run_case

#: (family, input size, {variant: model spec}); the plain twin is the reference every variant is compared with
CASES: List[Tuple[str, int, Dict[str, str]]] = [
    (family, size, specs)
    for family, sizes, specs in [
        ("MCUNet-v4", (96, 176), {"original": "mcunet_v4", "plain (rep)": "mcunet_plain_v4:rep",
                                  "DERO rep, folded": "mcunet_dero_v4:rep", "DERO default": "mcunet_dero_v4"}),
        ("ResNet34", (64,), {"original": "resnet34", "plain (rep)": "resnet34plain:rep",
                             "DERO rep, folded": "resnet34dero:rep", "DERO default": "resnet34dero"}),
        ("YOLOv5n", (128,), {"original": "cfg/yolov5n.yaml", "plain (rep)": "cfg/yolov5n-plain-rep.yaml",
                             "DERO rep, folded": "cfg/yolov5n-dero-rep.yaml", "DERO default": "cfg/yolov5n-dero.yaml"}),
    ]
    for size in sizes
]
PLAIN, FOLDED = "plain (rep)", "DERO rep, folded"


def _key(family: str, size: int, variant: str) -> str:
    return f"{family} @{size} {variant}"


def reparam_report(out_md: Path, out_json: Path, only: Optional[Sequence[str]] = None, num_calib: int = 2,
                   force: bool = False) -> Dict[str, Any]:
    """Measure every case (or the families in ``only``), reusing rows already in ``out_json`` unless ``force``."""
    rows: Dict[str, Dict[str, Any]] = {}
    if out_json.is_file() and not force:
        rows = {r["key"]: r for r in json.loads(out_json.read_text())["rows"]}
    with tempfile.TemporaryDirectory() as tmp:
        for family, size, specs in CASES:
            if only and family not in only:
                continue
            for variant, spec in specs.items():
                key = _key(family, size, variant)
                if key in rows and "error" not in rows[key]:
                    continue
                row = run_case(key.replace(" ", "_").replace(",", "").replace("@", ""), spec, size, Path(tmp),
                               num_calib=num_calib, bisect=False)  # head bytes need no minimal-arena search
                row.update(key=key, family=family, variant=variant)
                rows[key] = row
                _write(rows, out_md, out_json)
    return _write(rows, out_md, out_json)


def _ops(row: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row.get("op_counts", {}).items()))


def _write(rows: Dict[str, Dict[str, Any]], out_md: Path, out_json: Path) -> Dict[str, Any]:
    result = {"rows": list(rows.values())}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    out_md.write_text(markdown(rows))
    return result


def markdown(rows: Dict[str, Dict[str, Any]]) -> str:
    lines = ["# The re-parameterizable DERO form on TensorFlow Lite Micro", "",
             "Regenerate: `python -m yolo_dero.mcu reparam-report` (full-int8 export, BatchNorm statistics randomised "
             "as in the cross-check; head bytes measured by TFLite Micro's allocator). `DERO rep, folded` is DERO in "
             "the `rep` style, each unit folded into one convolution by the export; `DERO default` is the default "
             "(activation-before-add) form with its shortcut as a second convolution and an add.", "",
             "| model | variant | TFLM head B | / plain | analyzer fused B | operators | same graph as plain | "
             "TFLM vs LiteRT (LSB) |",
             "|---|---|---|---|---|---|---|---|"]
    for family, size, specs in CASES:
        plain = rows.get(_key(family, size, PLAIN), {})
        for variant in specs:
            r = rows.get(_key(family, size, variant))
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
