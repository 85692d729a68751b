"""The benchmark library shared by the comparison tools (:mod:`yolo_dero.compare`, :mod:`yolo_dero.compare_cls`,
:mod:`yolo_dero.report`, the ``yolo_dero.mcu`` reports); the tools are entry points and import from here.

Ratios (one helper for every ratio table), number formatting, markdown tables, writing the ``.json``/``.md`` pair,
the environment block, interleaved CPU latency, and the peak-memory figures of one model under both engines.
Torch-only (no Ultralytics import), torch imported on first use.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from classification.catalog import VARIANTS  # noqa: F401  (re-exported: the variants every benchmark compares)

MISSING = "n/a"


# (result key, label, goal) rows that both comparison benchmarks report after their accuracy rows
SPEED_MEMORY_RATIO_KEYS = [
    ("train_img_s", "training images/s", "DERO/original >= 0.90"),
    ("latency_ms", "CPU latency, batch 1", "DERO/plain <= 1.10"),
    ("fused_peak_bytes", "peak memory, fused engine", "DERO/plain = 1.00"),
    ("fused_body_peak_bytes", "body peak, fused engine", "DERO/plain = 1.00"),
    ("tflm_peak_bytes", "peak memory, tflm engine", ""),
    ("tflm_body_peak_bytes", "body peak, tflm engine", ""),
]


def ratio(a: Optional[float], b: Optional[float], digits: Optional[int] = 3) -> Optional[float]:
    """``a / b`` rounded to ``digits`` (None: not rounded), or None when either is unknown or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    q = float(a) / float(b)
    return q if digits is None else round(q, digits)


def metric(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]``, a dotted ``key`` reaching into nested dicts (``"fused.peak_bytes"``); None when absent."""
    for part in key.split("."):
        if not isinstance(row, Mapping) or part not in row:
            return None
        row = row[part]
    return row


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, ints with thousands separators, None as ``n/a``."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def throughput(epochs: Sequence[Mapping[str, float]]) -> Dict[str, Optional[float]]:
    """Training images/s from per-epoch ``{"seconds", "images"}``: the median over epochs (robust to a burst of
    load from other jobs on a shared machine; the headline figure) and the total (all images / all seconds)."""
    import statistics

    rates = [e["images"] / e["seconds"] for e in epochs if e["seconds"] > 0]
    secs = sum(e["seconds"] for e in epochs)
    return {"train_img_s": round(statistics.median(rates), 2) if rates else None,
            "train_img_s_total": round(sum(e["images"] for e in epochs) / secs, 2) if secs > 0 else None}


def kib(b: Optional[int]) -> Optional[float]:
    return None if b is None else round(b / 1024, 1)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub markdown table; cells formatted with :func:`fmt` unless already strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c, digits) for c in r) + " |")
    return "\n".join(lines)


DEFAULT_PAIRS = (("dero", "plain"), ("dero", "original"))


def ratios(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[str], pairs: Sequence[tuple] = DEFAULT_PAIRS,
           digits: Optional[int] = 3) -> Dict[str, Dict[str, Optional[float]]]:
    """The one ratio table of the benchmarks: ``{"a/b": {key: rows[a][key] / rows[b][key]}}`` for every pair of
    variants ``(a, b)`` and metric ``key`` (dotted for nested dicts, see :func:`metric`); None where a row or a
    value is missing or the denominator is zero."""
    return {f"{a}/{b}": {k: ratio(metric(rows.get(a, {}), k), metric(rows.get(b, {}), k), digits) for k in keys}
            for a, b in pairs}


def ratio_rows(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[tuple],
               pairs: Sequence[tuple] = DEFAULT_PAIRS) -> List[List[Any]]:
    """Rows ``[metric, goal, dero/plain, dero/original]`` for the metrics ``keys`` = ``(key, title, goal)``."""
    table = ratios(rows, [k for k, _, _ in keys], pairs)
    return [[title, goal] + [table[f"{a}/{b}"][key] for a, b in pairs] for key, title, goal in keys]


def cpu_name(default: Optional[str] = None) -> str:
    """The CPU's model name from /proc/cpuinfo, else ``default`` (platform's processor or machine)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default if default is not None else (platform.processor() or platform.machine())


def environment() -> Dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu": cpu_name(), "cpus": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def time_interleaved(models: Mapping[str, Any], shape, repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Median seconds per forward of each model (eval mode, ``torch.no_grad``, one fixed random input of ``shape``),
    the models timed in turn within every repeat so that a burst of load hits them alike."""
    import statistics
    import time

    import torch

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m.eval()
            for _ in range(warmup):
                m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def memory_figures(model, imgsz: int) -> Dict[str, Optional[int]]:
    """Peak activation memory (int8, batch 1) under both engines: whole network and body after the stem."""
    from .memory import analyze_engines

    res = analyze_engines(model, imgsz)
    f, t = res["fused"], res["tflm"]
    return {"fused_peak_bytes": f.peak_bytes, "fused_body_peak_bytes": f.body_peak_bytes,
            "tflm_peak_bytes": t.peak_bytes, "tflm_body_peak_bytes": t.body_peak_bytes,
            "tflm_arena_bytes": t.arena_bytes}


def write_results(out_dir: Path, stem: str, data: Dict[str, Any], markdown: str) -> tuple:
    """Write ``out_dir/stem.json`` and ``out_dir/stem.md``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def small_png(src: Path, dst: Path, max_width: int = 960, colours: int = 128) -> Path:
    """A small copy of a picture for docs: at most ``max_width`` px wide, palette PNG of ``colours`` colours."""
    from PIL import Image

    im = Image.open(src).convert("RGB")
    if im.width > max_width:
        im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.quantize(colours, dither=Image.Dither.NONE).save(dst, optimize=True)
    return dst
