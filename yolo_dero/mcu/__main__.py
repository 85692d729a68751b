"""``python -m yolo_dero.mcu {export,arena,crosscheck}`` (see docs/deployment.md).

    python -m yolo_dero.mcu export --model mcunet_v4_dero --imgsz 96 --out m.tflite [--calib DIR|YAML|synthetic] [--num-calib 8]
        [--no-plan | --keep-unplanned] [--no-inplace] [--num-inputs 3] [--sram-kb 256]
    python -m yolo_dero.mcu arena m.tflite [--json arena.json] [--sram-kb 256]
    python -m yolo_dero.mcu crosscheck [--only MCUNet-v4 toy_plain_chain ...]
    python -m yolo_dero.mcu plan m.tflite --out m_planned.tflite [--no-inplace] [--json plan.json]
    python -m yolo_dero.mcu plan-report [--keep DIR] [--only MCUNet-v4 ...]
    python -m yolo_dero.mcu val --weights best.pt [--data data.yaml] [--imgsz 160] [--tflite d.tflite] [--json r.json]

val scores a trained detector as deployed: its full-int8 export run on TFLite Micro's arithmetic (LiteRT's reference
kernels), mAP50-95 / mAP50 by Ultralytics and pycocotools, next to the float model through the same decode.

export writes --out with an offline memory plan (elementwise ops in place), verified bit-identical to the
unplanned file in TFLM; --no-plan writes the plain export there instead. Exit codes: 0 done (and fits, with
--sram-kb), 1 the plan or the TFLM output check failed, 2 bad arguments / missing package / float tensors left,
3 (EXIT_NO_FIT) the model does not fit --sram-kb.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..fileutil import outputs_problem
from ..memory import input_channels
from ..catalog import load_model
from ..nn.padding import to_same_padding, uses_same_padding
from ..paths import REPO_ROOT
from .arena import measure_arena
from ..datasets import DatasetError
from ..ultra.model import CheckpointError
from .detect_eval import evaluate_int8_detector
from .export import cli_calibration_source, export_tflite
from .fit import fit_check, sram_problem
from .offline_plan import plan_file
from .reports import CROSSCHECK_NOTES, crosscheck, payoff_report, plan_report, reparam_report
from .tflite import TFLITE_MAGIC, FloatTensorError, MissingDependencyError, PlanError, require


#: exit status of ``export`` / ``arena --sram-kb`` when the model does not fit the part's SRAM
EXIT_NO_FIT = 3


def unplanned_path(out) -> Path:
    """Where ``export`` writes the export before it is planned: ``m.tflite`` -> ``m_unplanned.tflite``."""
    out = Path(out)
    return out.with_name(out.stem + "_unplanned" + out.suffix)


def _export(a) -> int:
    plan = not a.no_plan
    # the plan's check runs in TFLM and the fit check measures there: fail before exporting, not after
    require("litert_torch", "torchao", *(("ai_edge_litert", "tflite_micro") if plan or a.sram_kb else ()))
    model, _ = load_model(a.model)  # a wrong name or path fails here, before anything is written or removed
    if a.same_padding and not uses_same_padding(model):
        to_same_padding(model)
        print("same padding: strided layers pad like TFLite's SAME (the architecture as trained with it; weights "
              "trained without it would compute something else)")
    out = Path(a.out)
    raw = unplanned_path(out) if plan else out
    try:
        channels = input_channels(model)
        calib = cli_calibration_source(a.calib, channels)
        print(f"calibration: {a.num_calib} image(s) from {calib}" + (
            f" (uniform noise: the model takes {channels} channels, the built-in images are RGB)"
            if calib in ("synthetic", "random") and not a.calib else " (uniform noise)" if calib in
            ("synthetic", "random") else " (the built-in real images)" if not a.calib else ""))
        r = export_tflite(model, a.imgsz, raw, calib=calib, num_calib=a.num_calib, quiet=not a.verbose)
        print(f"wrote {r.path} ({r.bytes:,} bytes, {r.seconds} s{', without a plan' if plan else ''}): "
              f"input int8 NHWC {r.input_shape}, outputs {r.output_shapes}")
        print("operators: " + ", ".join(f"{k} {v}" for k, v in sorted(r.op_counts.items())))
        print(f"lowering: {r.lowering}; full-integer check passed")
        for n in r.notes:
            print(f"note: {n}")
        rc = _plan_one(str(raw), str(out), inplace=not a.no_inplace, json_out=None, n_inputs=a.num_inputs) \
            if plan else 0
    except Exception:
        _failed(out, raw if plan else None)
        raise
    if rc:
        _failed(out, raw)
        return rc
    if plan and not a.keep_unplanned:
        raw.unlink()
        print(f"removed {raw} (the export without the plan; --keep-unplanned keeps it)")
    if a.sram_kb is not None:
        return _fit(out, a.sram_kb)
    return 0


def _failed(out: Path, raw) -> None:
    """A failed export leaves no ``--out``: an earlier file there (a planned file of an earlier run, verified
    then) must not pass for this export's result. The unplanned export is kept for inspection."""
    if raw is not None and out.exists():
        out.unlink()
        print(f"note: removed the earlier {out} so that it cannot pass for this export", file=sys.stderr)
    if raw is not None and Path(raw).exists():
        print(f"note: the export without the plan is kept at {raw} (export --no-plan writes it to --out)",
              file=sys.stderr)


def _fit(path, sram_kb: float, arena=None) -> int:
    f = fit_check(path, sram_kb, arena=arena)
    print(f.line())
    return 0 if f.fits else EXIT_NO_FIT


def _plan_one(src: str, out: str, inplace: bool, json_out, n_inputs: int = 3) -> int:
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
    res = plan_report(keep=Path(a.keep) if a.keep else None, out_md=Path(a.md), out_json=Path(a.json),
                      only=a.only, num_calib=a.num_calib, n_inputs=a.num_inputs)
    print(f"wrote {a.md} and {a.json} ({len(res['rows'])} models)")
    return 0 if all("error" not in r for r in res["rows"]) else 1


def _val(a) -> int:
    try:
        r = evaluate_int8_detector(a.weights, a.data, a.imgsz, num_calib=a.num_calib, tflite=a.tflite)
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nweights {r['weights']}, data {r['data']}, imgsz {r['imgsz']} (letterboxed, the export's fixed input)")
    for form in ("float", "int8"):
        f = r[form]
        print(f"{form:5}  mAP50-95 {f['map50_95']:.4f}  mAP50 {f['map50']:.4f}   pycocotools mAP50-95 "
              f"{f['pycocotools']['map50_95']:.4f}")
    print(f"int8 - float: mAP50-95 {r['int8']['map50_95'] - r['float']['map50_95']:+.4f}; the .tflite: "
          f"{r['tflite_bytes']:,} bytes, {', '.join(f'{k} {v}' for k, v in sorted(r['op_counts'].items()))}"
          + (f", written to {a.tflite}" if a.tflite else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2, default=str))
        print(f"JSON written to {a.json}")
    return 0


def _arena(a) -> int:
    r = measure_arena(a.file, bisect=not a.no_bisect, check_outputs=not a.no_check, tolerance=a.tolerance)
    print(f"{r.path}: TFLM arena head (activations) {r.head_bytes:,} B, tail (persistent) {r.tail_bytes:,} B, "
          f"total {r.total_bytes:,} B, minimal arena {r.minimal_arena_bytes:,} B" if r.minimal_arena_bytes else
          f"{r.path}: head {r.head_bytes:,} B, tail {r.tail_bytes:,} B, total {r.total_bytes:,} B")
    if r.online_head_bytes is not None:  # offline memory plan in the file
        print(f"offline memory plan: planned head {r.head_bytes:,} B vs online (plan removed) {r.online_head_bytes:,} B")
    if r.outputs_checked:
        print(f"TFLM vs LiteRT on one random {r.input_dtype} input {r.input_shape}: max |diff| "
              f"{r.max_abs_diff_lsb} LSB ({'ok' if r.outputs_match else 'MISMATCH'}, tolerance {r.tolerance_lsb})")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r.to_dict(), indent=1))
    if r.outputs_match is False:
        return 1
    return _fit(a.file, a.sram_kb, arena=r) if a.sram_kb is not None else 0


def _reparam_report(a) -> int:
    res = reparam_report(Path(a.md), Path(a.json), only=a.only, num_calib=a.num_calib, force=a.force)
    print(f"wrote {a.md} and {a.json} ({len(res['rows'])} rows)")
    return 0 if all("error" not in r for r in res["rows"]) else 1


def _payoff(a) -> int:
    res = payoff_report(Path(a.md), Path(a.json), only=a.only, num_calib=a.num_calib, force=a.force)
    print(f"wrote {a.md} and {a.json} ({len(res['rows'])} rows)")
    return 0 if all("error" not in r for r in res["rows"]) else 1


def _crosscheck(a) -> int:
    res = crosscheck(out_md=Path(a.md), out_json=Path(a.json), only=a.only, num_calib=a.num_calib,
                     keep=Path(a.keep) if a.keep else None, explanations=CROSSCHECK_NOTES if not a.only else "")
    print(f"wrote {a.md} and {a.json} ({len(res['rows'])} models)")
    return 0


# count options that must be at least 1: with 0 the command would succeed without checking anything
# (an uncalibrated export still passing its check, a plan "bit-identical on 0 inputs")
COUNT_OPTIONS = {"num_calib": ("--num-calib", "calibration images", 8),
                 "num_inputs": ("--num-inputs", "random inputs for the TFLM check", 3),
                 "imgsz": ("--imgsz", "the input size in pixels", 96)}


def count_problem(a: argparse.Namespace) -> str | None:
    """The one-line error for a count option below 1, or None."""
    for dest, (flag, what, example) in COUNT_OPTIONS.items():
        n = getattr(a, dest, None)
        if n is not None and n < 1:
            return f"{flag} {n}: needs at least 1 ({what}); pass e.g. {flag} {example}"
    return None


def tflite_problem(a: argparse.Namespace) -> str | None:
    """``arena``/``plan`` given a file that is not a TFLite flatbuffer (the parser would fail deep inside with
    "unpack_from requires a buffer of at least ... bytes"), or None."""
    if a.cmd not in ("arena", "plan"):
        return None
    path = Path(a.file)
    if not path.is_file():
        return f"{path}: no such file (expected a .tflite written by python -m yolo_dero.mcu export)"
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != TFLITE_MAGIC:
        return (f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier at bytes 4..8); pass a .tflite written "
                f"by python -m yolo_dero.mcu export")
    return None


#: the outputs each subcommand writes: (argument, flag, is a folder)
OUTPUTS = {"export": (("out", "--out", False),), "arena": (("json", "--json", False),),
           "plan": (("out", "--out", False), ("json", "--json", False)),
           "crosscheck": (("md", "--md", False), ("json", "--json", False), ("keep", "--keep", True)),
           "plan-report": (("md", "--md", False), ("json", "--json", False), ("keep", "--keep", True)),
           "reparam-report": (("md", "--md", False), ("json", "--json", False)),
           "payoff": (("md", "--md", False), ("json", "--json", False)),
           "val": (("tflite", "--tflite", False), ("json", "--json", False))}


def output_problem(a: argparse.Namespace) -> str | None:
    """An output path of the subcommand that cannot be written (probed now, before the export or measurement it
    would otherwise fail after), or None."""
    return outputs_problem(*((getattr(a, dest, None), flag, folder) for dest, flag, folder in OUTPUTS.get(a.cmd, ())))


def plan_options_problem(a: argparse.Namespace) -> str | None:
    """``export --no-plan`` together with an option that only means something with the plan, or None."""
    if not getattr(a, "no_plan", False):
        return None
    clash = [f for f, d in (("--plan", "plan"), ("--keep-unplanned", "keep_unplanned"), ("--no-inplace", "no_inplace"))
             if getattr(a, d, False)]
    return f"--no-plan with {', '.join(clash)}: those options apply to the plan; drop one side" if clash else None


def _zoo_report(sub, name: str, stem: str, families: str, help: str) -> None:
    """A report over zoo families that resumes from its JSON file (``reparam-report``, ``payoff``)."""
    r = sub.add_parser(name, help=help)
    r.add_argument("--md", default=str(REPO_ROOT / "results" / f"{stem}.md"))
    r.add_argument("--json", default=str(REPO_ROOT / "results" / f"{stem}.json"))
    r.add_argument("--only", nargs="*", default=None, help=f"families ({families})")
    r.add_argument("--num-calib", type=int, default=2)
    r.add_argument("--force", action="store_true", help="measure again rows already in the JSON file")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m yolo_dero.mcu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="full-integer TFLite export")
    e.add_argument("--model", required=True, help="registry name, model YAML or .pt")
    e.add_argument("--imgsz", type=int, required=True)
    e.add_argument("--out", required=True, help="output .tflite")
    e.add_argument("--calib", default=None,
                   help="image folder, .txt list or data YAML, or 'synthetic' for uniform noise (default: the val "
                        "images of the built-in real-image set data/photo_digits.yaml, generated locally on first "
                        "use, resized to --imgsz)")
    e.add_argument("--num-calib", type=int, default=8)
    e.add_argument("--verbose", action="store_true", help="show the converter's progress output")
    e.add_argument("--same-padding", action="store_true",
                   help="build the model with TFLite-style SAME padding (yolo_dero.nn.padding) before exporting: "
                        "no PAD operators; for architectures and for weights trained with it")
    e.add_argument("--no-plan", action="store_true",
                   help="write the export to --out without an offline memory plan (TFLM plans online)")
    e.add_argument("--plan", action="store_true",
                   help="accepted for old command lines; planning is the default (no OUT_planned.tflite any more)")
    e.add_argument("--keep-unplanned", action="store_true",
                   help="keep the export without the plan beside --out as OUT_unplanned.tflite")
    e.add_argument("--no-inplace", action="store_true", help="plan placement only: no elementwise op in place")
    e.add_argument("--num-inputs", type=int, default=3, help="random int8 inputs for the plan's TFLM check")
    e.add_argument("--sram-kb", type=float, default=None, metavar="N",
                   help=f"check the TFLM arena against N KiB of SRAM (exit {EXIT_NO_FIT} if it does not fit)")
    ar = sub.add_parser("arena", help="measure a .tflite in TFLite Micro")
    ar.add_argument("file")
    ar.add_argument("--json", default=None)
    ar.add_argument("--no-bisect", action="store_true")
    ar.add_argument("--no-check", action="store_true", help="skip the TFLM vs LiteRT output check")
    ar.add_argument("--tolerance", type=int, default=2)
    ar.add_argument("--sram-kb", type=float, default=None, metavar="N",
                    help=f"check the arena against N KiB of SRAM (exit {EXIT_NO_FIT} if it does not fit)")
    c = sub.add_parser("crosscheck", help="analyzer tflm engine vs measured TFLM arena -> results/mcu_crosscheck.*")
    c.add_argument("--md", default=str(REPO_ROOT / "results" / "mcu_crosscheck.md"))
    c.add_argument("--json", default=str(REPO_ROOT / "results" / "mcu_crosscheck.json"))
    c.add_argument("--only", nargs="*", default=None, help="row labels or families (toy, MCUNet-v4, ResNet34, YOLOv5n)")
    c.add_argument("--num-calib", type=int, default=4)
    c.add_argument("--keep", default=None, help="folder to keep the .tflite files in")
    _zoo_report(sub, "reparam-report", "mcu_reparam", "MCUNet-v4, ResNet34, YOLOv5n",
                "original / plain / DERO (rep, folded) / DERO on TFLM -> results/mcu_reparam.*")
    _zoo_report(sub, "payoff", "mcu_payoff", "ResNet34, MCUNet-v4, DenseNet121, YOLOv5n",
                "original / plain / DERO seed form / DERO rep of every family, SAME padding, online and planned TFLM "
                "heads vs the analyzer -> results/mcu_payoff.*")
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
    v = sub.add_parser("val", help="a trained detector's mAP as deployed: its full-int8 .tflite vs the float model")
    v.add_argument("--weights", required=True, help="a .pt written by train_det.py (best.pt / last.pt)")
    v.add_argument("--data", default=None, help="data YAML (default: the data it was trained on)")
    v.add_argument("--imgsz", type=int, default=None, help="the export's input size (default: the training size)")
    v.add_argument("--num-calib", type=int, default=64, help="training images to calibrate the int8 export on")
    v.add_argument("--tflite", default=None, help="keep the exported .tflite here")
    v.add_argument("--json", default=None, help="write the figures as JSON")
    a = p.parse_args(argv)
    problem = count_problem(a) or plan_options_problem(a)
    if problem is None:
        problem = (sram_problem(getattr(a, "sram_kb", None)) or tflite_problem(a)  # the options first, then the file
                   or output_problem(a))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return {"export": _export, "arena": _arena, "crosscheck": _crosscheck, "plan": _plan,
                "plan-report": _plan_report, "reparam-report": _reparam_report, "payoff": _payoff,
                "val": _val}[a.cmd](a)
    except Exception as ex:  # noqa: BLE001  (one clear line for CLI users)
        if isinstance(ex, (FloatTensorError, MissingDependencyError, FileNotFoundError, ValueError)):
            print(f"error: {ex}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
