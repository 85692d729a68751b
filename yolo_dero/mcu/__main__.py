"""``python -m yolo_dero.mcu {export,arena,crosscheck}`` (see docs/deployment.md).

    python -m yolo_dero.mcu export --model mcunet_dero_v4 --imgsz 96 --out m.tflite [--calib DIR|YAML] [--num-calib 8]
    python -m yolo_dero.mcu arena m.tflite [--json arena.json]
    python -m yolo_dero.mcu crosscheck [--only MCUNet-v4 toy_plain_chain ...]
    python -m yolo_dero.mcu plan m.tflite --out m_planned.tflite [--no-inplace] [--json plan.json]
    python -m yolo_dero.mcu plan-report [--keep DIR] [--only MCUNet-v4 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..paths import REPO_ROOT


def _export(a) -> int:
    from .export import export_model

    r = export_model(a.model, a.imgsz, a.out, calib=a.calib, num_calib=a.num_calib, quiet=not a.verbose)
    print(f"wrote {r.path} ({r.bytes:,} bytes, {r.seconds} s): input int8 NHWC {r.input_shape}, "
          f"outputs {r.output_shapes}")
    print("operators: " + ", ".join(f"{k} {v}" for k, v in sorted(r.op_counts.items())))
    print(f"lowering: {r.lowering}; full-integer check passed")
    for n in r.notes:
        print(f"note: {n}")
    if getattr(a, "plan", False):  # --- offline memory plan (plan.py) ---
        out = Path(a.out)
        planned = out.with_name(out.stem + "_planned" + out.suffix)
        return _plan_one(str(out), str(planned), inplace=True, json_out=None)
    return 0


# --- offline memory plan (yolo_dero/mcu/plan.py) ---
def _plan_one(src: str, out: str, inplace: bool, json_out, n_inputs: int = 3) -> int:
    from .plan import PlanError, plan_file

    try:
        r = plan_file(src, out, inplace=inplace, n_inputs=n_inputs)
    except PlanError as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 1
    p, v = r.plan, r.verification
    print(f"wrote {r.out}: offline plan ({'in-place elementwise ops' if inplace else 'no in-place'}), "
          f"{len(p['inplace_pairs'])} tensor(s) written in place, {p['n_buffers']} buffers, "
          f"head {p['head_bytes']:,} B (largest live set {p['largest_live_bytes']:,} B at {p['peak_operator']})")
    if v:
        print(f"TFLM head: online {v['online_head_bytes']:,} B -> planned {v['planned_head_bytes']:,} B; "
              f"outputs bit-identical to the unplanned TFLM run on {v['n_inputs']} random int8 input(s), "
              f"max |diff| to LiteRT reference {v['max_abs_diff_lsb_litert']} LSB")
    for n in r.notes:
        print(f"note: {n}")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(r.to_dict(), indent=1))
    return 0


def _plan(a) -> int:
    return _plan_one(a.file, a.out, inplace=not a.no_inplace, json_out=a.json, n_inputs=a.num_inputs)


def _plan_report(a) -> int:
    from .plan import plan_report

    res = plan_report(keep=Path(a.keep) if a.keep else None, out_md=Path(a.md), out_json=Path(a.json),
                      only=a.only, num_calib=a.num_calib, n_inputs=a.num_inputs)
    print(f"wrote {a.md} and {a.json} ({len(res['rows'])} models)")
    return 0 if all("error" not in r for r in res["rows"]) else 1
# --- end offline memory plan ---


def _arena(a) -> int:
    from .arena import measure_arena

    r = measure_arena(a.file, bisect=not a.no_bisect, check_outputs=not a.no_check, tolerance=a.tolerance)
    print(f"{r.path}: TFLM arena head (activations) {r.head_bytes:,} B, tail (persistent) {r.tail_bytes:,} B, "
          f"total {r.total_bytes:,} B, minimal arena {r.minimal_arena_bytes:,} B" if r.minimal_arena_bytes else
          f"{r.path}: head {r.head_bytes:,} B, tail {r.tail_bytes:,} B, total {r.total_bytes:,} B")
    if r.online_head_bytes is not None:  # offline memory plan in the file (plan.py)
        print(f"offline memory plan: planned head {r.head_bytes:,} B vs online (plan removed) {r.online_head_bytes:,} B")
    if r.outputs_checked:
        print(f"TFLM vs LiteRT on one random {r.input_dtype} input {r.input_shape}: max |diff| "
              f"{r.max_abs_diff_lsb} LSB ({'ok' if r.outputs_match else 'MISMATCH'}, tolerance {r.tolerance_lsb})")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r.to_dict(), indent=1))
    return 0 if (r.outputs_match is not False) else 1


def _reparam_report(a) -> int:
    from .reparam_report import reparam_report

    res = reparam_report(Path(a.md), Path(a.json), only=a.only, num_calib=a.num_calib, force=a.force)
    print(f"wrote {a.md} and {a.json} ({len(res['rows'])} rows)")
    return 0 if all("error" not in r for r in res["rows"]) else 1


def _crosscheck(a) -> int:
    from .crosscheck import EXPLANATIONS, crosscheck

    res = crosscheck(out_md=Path(a.md), out_json=Path(a.json), only=a.only, num_calib=a.num_calib,
                     keep=Path(a.keep) if a.keep else None, explanations=EXPLANATIONS if not a.only else "")
    print(f"wrote {a.md} and {a.json} ({len(res['rows'])} models)")
    return 0


# count options that must be at least 1: with 0 the command would succeed without checking anything
# (an uncalibrated export still passing its check, a plan "bit-identical on 0 inputs")
COUNT_OPTIONS = {"num_calib": ("--num-calib", "calibration images", 8),
                 "num_inputs": ("--num-inputs", "random inputs for the TFLM check", 3)}


def count_problem(a: argparse.Namespace) -> str | None:
    """The one-line error for a count option below 1, or None."""
    for dest, (flag, what, example) in COUNT_OPTIONS.items():
        n = getattr(a, dest, None)
        if n is not None and n < 1:
            return f"{flag} {n}: needs at least 1 ({what}); pass e.g. {flag} {example}"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m yolo_dero.mcu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="full-integer TFLite export")
    e.add_argument("--model", required=True, help="registry name, model YAML or .pt")
    e.add_argument("--imgsz", type=int, required=True)
    e.add_argument("--out", required=True, help="output .tflite")
    e.add_argument("--calib", default=None, help="image folder, .txt list or data YAML (default: synthetic)")
    e.add_argument("--num-calib", type=int, default=8)
    e.add_argument("--verbose", action="store_true", help="show the converter's progress output")
    e.add_argument("--plan", action="store_true", help="also write OUT_planned.tflite with an offline memory plan")
    ar = sub.add_parser("arena", help="measure a .tflite in TFLite Micro")
    ar.add_argument("file")
    ar.add_argument("--json", default=None)
    ar.add_argument("--no-bisect", action="store_true")
    ar.add_argument("--no-check", action="store_true", help="skip the TFLM vs LiteRT output check")
    ar.add_argument("--tolerance", type=int, default=2)
    c = sub.add_parser("crosscheck", help="analyzer tflm engine vs measured TFLM arena -> results/mcu_crosscheck.*")
    c.add_argument("--md", default=str(REPO_ROOT / "results" / "mcu_crosscheck.md"))
    c.add_argument("--json", default=str(REPO_ROOT / "results" / "mcu_crosscheck.json"))
    c.add_argument("--only", nargs="*", default=None, help="row labels or families (toy, MCUNet-v4, ResNet34, YOLOv5n)")
    c.add_argument("--num-calib", type=int, default=4)
    c.add_argument("--keep", default=None, help="folder to keep the .tflite files in")
    # --- offline memory plan (plan.py) ---
    rr = sub.add_parser("reparam-report", help="original / plain / DERO (rep, folded) / DERO on TFLM -> "
                                               "results/mcu_reparam.*")
    rr.add_argument("--md", default=str(REPO_ROOT / "results" / "mcu_reparam.md"))
    rr.add_argument("--json", default=str(REPO_ROOT / "results" / "mcu_reparam.json"))
    rr.add_argument("--only", nargs="*", default=None, help="families (MCUNet-v4, ResNet34, YOLOv5n)")
    rr.add_argument("--num-calib", type=int, default=2)
    rr.add_argument("--force", action="store_true", help="measure again rows already in the JSON file")
    pl = sub.add_parser("plan", help="write an offline memory plan (OfflineMemoryAllocation) into a .tflite")
    pl.add_argument("file")
    pl.add_argument("--out", required=True, help="planned .tflite")
    pl.add_argument("--no-inplace", action="store_true", help="placement only: no elementwise op in place")
    pl.add_argument("--json", default=None)
    pl.add_argument("--num-inputs", type=int, default=3, help="random int8 inputs for the TFLM check")
    pr = sub.add_parser("plan-report", help="online vs planned heads of the cross-check models -> results/mcu_plan.*")
    pr.add_argument("--md", default=str(REPO_ROOT / "results" / "mcu_plan.md"))
    pr.add_argument("--json", default=str(REPO_ROOT / "results" / "mcu_plan.json"))
    pr.add_argument("--keep", default=None, help="folder of exported .tflite files (crosscheck --keep); exported there if missing")
    pr.add_argument("--only", nargs="*", default=None, help="row labels or families (MCUNet-v4, ResNet34, YOLOv5n)")
    pr.add_argument("--num-calib", type=int, default=4)
    pr.add_argument("--num-inputs", type=int, default=2)
    # --- end offline memory plan ---
    a = p.parse_args(argv)
    if count_problem(a):
        print(f"error: {count_problem(a)}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return {"export": _export, "arena": _arena, "crosscheck": _crosscheck, "plan": _plan,
                "plan-report": _plan_report, "reparam-report": _reparam_report}[a.cmd](a)
    except Exception as ex:  # noqa: BLE001  (one clear line for CLI users)
        from .export import FloatTensorError, MissingDependencyError

        if isinstance(ex, (FloatTensorError, MissingDependencyError, FileNotFoundError, ValueError)):
            print(f"error: {ex}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
