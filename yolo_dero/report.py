"""``python -m yolo_dero.report``: parameters, MACs, peak activation memory and CPU latency of every
architecture as original, plain and DERO.

    python -m yolo_dero.report                                   # everything -> results/memory_report.{md,json}
    python -m yolo_dero.report --archs resnet34 mcunet --repeats 3   # a quick run
    python -m yolo_dero.report --no-latency --markdown /tmp/r.md --json /tmp/r.json

Memory comes from :mod:`yolo_dero.memory` (engines ``fused`` = docs/memory_model.md §3 and ``tflm``; int8, batch 1).
Latency: batch 1, float32, ``torch.no_grad``, eval mode, the model as built (BatchNorm not folded), the
three variants of an architecture timed interleaved (orig, plain, dero, orig, plain, dero, ...) in the
same process after a warm-up; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from classification.catalog import CATALOG, variant_names

from .benchmark import cpu_name, ratios, time_interleaved
from .catalog import load_model
from .fileutil import outputs_problem
from .memory import analyze_engines
from .memory.plot import plot_profiles
from .paths import REPO_ROOT

#: architecture -> (display name, catalogue architecture or YAML per variant, image sizes)
ARCHS: Dict[str, Dict] = {
    **{key: {"title": CATALOG[arch].title, "arch": arch, "imgsz": [CATALOG[arch].imgsz]}
       for key, arch in (("resnet34", "resnet34"), ("resnet50", "resnet50"), ("mcunet", "mcunet_v4"),
                         ("densenet121", "densenet121"))},
    # the detector default and its plain twin, as deployed (the analyzer folds `rep` units, as TFLite Micro sees them)
    "yolov5n": {"title": "YOLOv5n", "yaml": {"original": "cfg/yolov5n.yaml", "plain": "cfg/yolov5n-plain-rep-c3.yaml",
                                              "dero": "cfg/yolov5n-dero-rep-c3.yaml"}, "imgsz": [640, 320]},
}


def variant_specs(arch: str) -> Dict[str, Optional[str]]:
    """``{variant: model spec}`` of a report architecture; a spec is None when the model is not available."""
    cfg = ARCHS[arch]
    if "yaml" in cfg:
        return {v: (p if (REPO_ROOT / p).is_file() else None) for v, p in cfg["yaml"].items()}
    return variant_names(cfg["arch"])


def measure(archs: Sequence[str], repeats: int = 15, latency: bool = True, plot_arch: Optional[str] = None,
            plot_path: Optional[Path] = None, log=print) -> Dict:
    rows: List[Dict] = []
    missing: List[str] = []
    for arch in archs:
        cfg = ARCHS[arch]
        specs = variant_specs(arch)
        for v, s in specs.items():
            if s is None:
                missing.append(f"{cfg['title']} {v}")
        avail = {v: s for v, s in specs.items() if s is not None}
        if not avail:
            continue
        models = {}
        for v, s in avail.items():
            models[v], _ = load_model(s)
        for size in cfg["imgsz"]:
            plot_results = []
            for v, s in avail.items():
                t0 = time.perf_counter()
                res = analyze_engines(models[v], size, name=s.split("/")[-1].rsplit(".", 1)[0]
                                      if s.endswith(".yaml") else s)
                f, t = res["fused"], res["tflm"]
                rows.append({
                    "arch": arch, "title": cfg["title"], "imgsz": size, "variant": v, "model": s,
                    "params": f.params, "macs": f.macs,
                    "fused": f.to_dict(), "tflm": t.to_dict(),
                    "analysis_seconds": round(time.perf_counter() - t0, 2),
                })
                log(f"{cfg['title']:<12} {size:>4} {v:<8} fused {f.peak_bytes / 1024:8.1f} KiB "
                    f"(body {f.body_peak_bytes / 1024:7.1f})  tflm live {t.peak_bytes / 1024:8.1f} "
                    f"arena {t.arena_bytes / 1024:8.1f} KiB  [{rows[-1]['analysis_seconds']:.1f} s]")
                if arch == plot_arch and size == cfg["imgsz"][0]:
                    plot_results.append(f)
            if latency:
                shape = (1, 3, size, size)
                lat = time_interleaved(models, shape, repeats)
                for r in rows:
                    if r["arch"] == arch and r["imgsz"] == size:
                        r["latency_ms"] = round(lat[r["variant"]] * 1000, 2)
                log(f"{cfg['title']:<12} {size:>4} latency (median of {repeats}): "
                    + ", ".join(f"{v} {lat[v] * 1000:.1f} ms" for v in lat))
            if plot_results and plot_path is not None:
                # profile dicts lose the MemoryResult; re-plot from the fused results kept above
                plot_profiles(plot_results, plot_path,
                              title=f"{cfg['title']} at {size}: fused engine, int8 (plain and DERO coincide)")
                log(f"wrote {plot_path}")
    return {
        "rows": rows, "missing": missing, "repeats": repeats if latency else 0,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine(),
                        "processor": cpu_name(platform.processor() or "unknown"), "cpus": os.cpu_count()},
    }


def _k(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / 1024:.1f}"


#: the metrics of the ratio table, in column order (dotted keys reach into the engine results)
REPORT_RATIO_KEYS = ("params", "macs", "fused.peak_bytes", "fused.body_peak_bytes", "tflm.peak_bytes",
                     "tflm.body_peak_bytes", "tflm.arena_bytes", "latency_ms")


def to_markdown(report: Dict) -> str:
    rows = report["rows"]
    env = report["environment"]
    out = ["# Memory, size and latency: original vs plain vs DERO", "",
           "Generated by `python -m yolo_dero.report`. Peak activation memory at int8 (1 byte per element), "
           "batch 1, KiB = 1024 bytes; model of docs/memory_model.md. `fused`: docs/memory_model.md §3 "
           "(conv+BN+act one "
           "operator, elementwise ops in place into a dying input, a DERO unit = one operator |x|+|y|). "
           "`tflm`: TensorFlow Lite Micro (nothing in place, DERO unit = conv + shortcut ops + add, explicit PAD "
           "before strided convs with PyTorch padding); *live* = largest live set, *arena* = TFLM's greedy planner. "
           "*body* = everything after the stem (memory_stages). "
           f"Latency: CPU, float32, batch 1, median of {report['repeats']} interleaved runs "
           f"(torch {env['torch']}, {env['threads']} threads, {env.get('processor', env['machine'])})."
           + (f" {report['note']}" if report.get("note") else ""), ""]
    hdr = ("| architecture | imgsz | variant | model | params (M) | MACs (M) | fused peak | fused body | "
           "tflm live | tflm body | tflm arena | latency (ms) |")
    out += [hdr, "|" + "---|" * 12]
    for r in rows:
        f, t = r["fused"], r["tflm"]
        out.append(f"| {r['title']} | {r['imgsz']} | {r['variant']} | `{r['model']}` | {r['params'] / 1e6:.2f} | "
                   f"{r['macs'] / 1e6:.1f} | {_k(f['peak_bytes'])} | {_k(f['body_peak_bytes'])} | "
                   f"{_k(t['peak_bytes'])} | {_k(t['body_peak_bytes'])} | {_k(t['arena_bytes'])} | "
                   f"{r.get('latency_ms', '-')} |")
    out += ["", "## Ratios", "",
            "| architecture | imgsz | ratio | params | MACs | fused peak | fused body | tflm live | tflm body | "
            "tflm arena | latency |", "|" + "---|" * 11]
    groups: Dict = {}
    for r in rows:
        groups.setdefault((r["title"], r["imgsz"]), {})[r["variant"]] = r
    for (title, size), g in groups.items():
        if g.get("plain") is None:
            continue
        table = ratios(g, REPORT_RATIO_KEYS, pairs=(("dero", "plain"), ("original", "plain")), digits=None)
        for v, label in (("dero", "DERO/plain"), ("original", "original/plain")):
            if v not in g:
                continue
            out.append(f"| {title} | {size} | {label} | "
                       + " | ".join("-" if x is None else f"{x:.2f}" for x in table[f"{v}/plain"].values()) + " |")
    out += ["", "## Stage peaks (fused engine, KiB)", ""]
    for (title, size), g in groups.items():
        stages: List[str] = []
        for r in g.values():
            stages += [s for s in r["fused"]["stages"] if s not in stages]
        out += [f"**{title} at {size}**", "", "| variant | " + " | ".join(stages) + " | peak operator |",
                "|" + "---|" * (len(stages) + 2)]
        for v, r in g.items():
            st = r["fused"]["stages"]
            out.append(f"| {v} | " + " | ".join(_k(st.get(s)) for s in stages)
                       + f" | {r['fused']['peak_operator']} |")
        mods = {v: r["fused"].get("modules", {}) for v, r in g.items()}
        if all("model.2" in m for m in mods.values()):
            out.append("")
            out.append("First C3 (`model.2`) alone: " + ", ".join(f"{v} {_k(m['model.2'])} KiB"
                                                                  for v, m in mods.items()))
        out.append("")
    if report["missing"]:
        out += ["Not measured (model not available): " + ", ".join(report["missing"]), ""]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m yolo_dero.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS), help="architectures to measure")
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per variant (default 15)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    ap.add_argument("--threads", type=int, help="torch intra-op threads for the latency runs (default: torch's)")
    ap.add_argument("--json", default=str(REPO_ROOT / "results" / "memory_report.json"), metavar="FILE")
    ap.add_argument("--markdown", default=str(REPO_ROOT / "results" / "memory_report.md"), metavar="FILE")
    ap.add_argument("--plot-arch", choices=list(ARCHS), default="resnet34",
                    help="architecture whose profiles go to docs/memory_profile_<arch>.png")
    ap.add_argument("--plot", metavar="FILE.png", help="profile plot path (default docs/memory_profile_<arch>.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--note", help="a sentence added to the report's header (e.g. where latency was measured)")
    ap.add_argument("--from-json", metavar="FILE", help="re-render the markdown of a saved JSON report; no measuring")
    args = ap.parse_args(argv)
    problem = outputs_problem((args.json, "--json"), (args.markdown, "--markdown"),
                              (None if args.no_plot or args.from_json else args.plot, "--plot"))
    if problem:  # before measuring, not after
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        if args.note:
            report["note"] = args.note
        md = to_markdown(report)
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(md)
        if Path(args.json).resolve() != Path(args.from_json).resolve():
            Path(args.json).write_text(json.dumps(report, indent=1))
        print(md)
        return 0
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    plot_arch = None if args.no_plot or args.plot_arch not in args.archs else args.plot_arch
    plot_path = Path(args.plot) if args.plot else REPO_ROOT / "docs" / f"memory_profile_{args.plot_arch}.png"
    report = measure(args.archs, args.repeats, not args.no_latency, plot_arch, plot_path)
    if args.note:
        report["note"] = args.note
    md = to_markdown(report)
    for path, text in ((args.markdown, md), (args.json, json.dumps(report, indent=1))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        print(f"wrote {path}")
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
