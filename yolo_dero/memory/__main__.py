"""``python -m yolo_dero.memory``: peak activation memory of registry models, model YAMLs and ``.pt`` files.

    python -m yolo_dero.memory --model resnet34_dero --imgsz 224
    python -m yolo_dero.memory --model cfg/yolov5n-dero.yaml --imgsz 320 --engine tflm
    python -m yolo_dero.memory --model resnet34 --imgsz 224 --compare resnet34_plain resnet34_dero \\
        --plot profile.png --json memory.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..catalog import ModelNotFoundError, load_model
from ..fileutil import outputs_problem
from .analyzer import MemoryResult, analyze_engines
from .engines import engine_names
from .plot import plot_profiles


def kib(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / 1024:.1f}"


def format_table(results: Sequence[MemoryResult]) -> str:
    """Stage peaks side by side (KiB), then whole/body peaks and peak operators per model."""
    r0 = results[0]
    h, w = r0.imgsz
    lines = [f"activation memory, engine '{r0.engine}', {r0.bytes_per_element} byte(s) per element, "
             f"input 1x{h}x{w} (KiB = 1024 bytes)", ""]
    stages: List[str] = []
    for r in results:
        stages += [s for s in r.stages if s not in stages]
    names = [r.model for r in results]
    width = max([12] + [len(n) + 2 for n in names])
    sw = max([10] + [len(s) + 2 for s in stages])
    lines.append("stage".ljust(sw) + "".join(n.rjust(width) for n in names))
    lines.append("-" * (sw + width * len(names)))
    for s in stages:
        lines.append(s.ljust(sw) + "".join(kib(r.stages.get(s)).rjust(width) for r in results))
    lines.append("-" * (sw + width * len(names)))
    lines.append("whole peak".ljust(sw) + "".join(kib(r.peak_bytes).rjust(width) for r in results))
    lines.append("body peak".ljust(sw) + "".join(kib(r.body_peak_bytes).rjust(width) for r in results))
    if any(r.arena_bytes is not None for r in results):
        lines.append("tflm arena".ljust(sw) + "".join(kib(r.arena_bytes).rjust(width) for r in results))
    lines.append("operators".ljust(sw) + "".join(str(r.num_operators).rjust(width) for r in results))
    lines.append("params (M)".ljust(sw) + "".join(f"{r.params / 1e6:.3f}".rjust(width) for r in results))
    lines.append("MACs (M)".ljust(sw) + "".join(f"{r.macs / 1e6:.1f}".rjust(width) for r in results))
    lines.append("")
    for r in results:
        lines.append(f"{r.model}: whole peak {kib(r.peak_bytes)} KiB ({r.peak_bytes:,} B) at op {r.peak_index} "
                     f"{r.peak_operator}; body peak {kib(r.body_peak_bytes)} KiB at {r.body_peak_operator}"
                     + (f"; planned arena {kib(r.arena_bytes)} KiB ({r.arena_bytes:,} B)"
                        if r.arena_bytes is not None else "")
                     + (f"  [stages: {r.stages_source}]" if r.stages_source != "memory_stages" else ""))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m yolo_dero.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registry name, model YAML path or .pt file")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[224], help="input size: N or H W (default 224)")
    ap.add_argument("--engine", choices=engine_names(), default="fused",
                    help="fused: docs/memory_model.md §3 (default); tflm: TFLite Micro, no in-place, greedy arena")
    ap.add_argument("--bytes-per-element", type=int, choices=(1, 2, 4), default=1,
                    help="1 = int8 (default), 4 = float32")
    ap.add_argument("--json", metavar="FILE", help="write the figures (and the profile) as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="plot the profiles of all models")
    ap.add_argument("--compare", nargs="+", default=[], metavar="NAME_OR_YAML", help="more models, side by side")
    ap.add_argument("--operators", action="store_true", help="also print every operator with its live bytes")
    args = ap.parse_args(argv)
    if len(args.imgsz) > 2:
        ap.error("--imgsz takes N or H W")
    if min(args.imgsz) < 1:
        print(f"error: --imgsz {' '.join(map(str, args.imgsz))}: the input size must be at least 1 pixel; pass e.g. "
              f"--imgsz 224 (or H W: --imgsz 224 320)", file=sys.stderr)
        return 2
    problem = outputs_problem((args.json, "--json"), (args.plot, "--plot"))  # before any model is built
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    imgsz = tuple(args.imgsz) if len(args.imgsz) == 2 else args.imgsz[0]

    results: List[MemoryResult] = []
    for spec in [args.model] + list(args.compare):
        try:
            model, name = load_model(spec)
        except (ModelNotFoundError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        results.append(analyze_engines(model, imgsz, (args.engine,), args.bytes_per_element, name=name)[args.engine])
    print(format_table(results))
    if args.operators:
        for r in results:
            print(f"\n{r.model}: operator, stage, live KiB")
            for i, (op, st, b) in enumerate(zip(r.operators, r.operator_stages, r.profile)):
                print(f"{i:5d}  {st:<14} {b / 1024:10.1f}  {op}{'  <- peak' if i == r.peak_index else ''}")
    if args.json:
        d = results[0].to_dict(operators=True)
        if len(results) > 1:
            d["compare"] = [r.to_dict(operators=True) for r in results[1:]]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(d, indent=1))
        print(f"\nwrote {args.json}")
    if args.plot:
        print(f"wrote {plot_profiles(results, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
