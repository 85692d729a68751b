"""``python -m yolo_dero.mcu export``: the offline memory plan by default, ``--no-plan``, and the ``--sram-kb`` fit check.

Needs requirements-mcu.txt (litert-torch, tflite-micro, ai-edge-litert). Without them every test here is
skipped with a message, unless ``DERO_REQUIRE_MCU=1`` or ``CI`` is set, which turns the skip into a failure
(as tests/test_mcu.py).

Toys on 16x32x32 int8 tensors, T = 16,384 bytes, saved as pickled modules (``--model toy.pt``):

* two one-conv residual units ``x + relu(conv(x))``: operators CONV, ADD, CONV, ADD. TFLM's online planner
  keeps x, the conv output and the sum -> head 3T = 49,152; planned with the ADD written over its conv
  operand -> 2T = 32,768, first reached at operator #0 (CONV_2D: x and its output);
* two classic residual blocks ``x + conv2(relu(conv1(x)))``: operators CONV, CONV, ADD, ... The largest live
  set is 3T, first at #1 CONV_2D (x, conv1's and conv2's outputs); TFLM's online placement reserves 4T = 65,536.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

T = 16 * 32 * 32

from mcu_support import require_mcu_packages  # noqa: E402  (tests/mcu_support.py)

require_mcu_packages()

from yolo_dero.mcu import measure_arena  # noqa: E402
from yolo_dero.mcu.__main__ import EXIT_NO_FIT, main, unplanned_path  # noqa: E402
from yolo_dero.mcu.reports import ClassicResidual, OneConvResidual  # noqa: E402
from yolo_dero.mcu.fit import activation_peak, fit_check  # noqa: E402
from yolo_dero.mcu.offline_plan import validate_plan  # noqa: E402
from yolo_dero.mcu.tflite import has_plan, strip_plan  # noqa: E402


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _export_args(model, out, *extra):
    return ["export", "--model", str(model), "--imgsz", "32", "--out", str(out), "--num-calib", "2",
            "--num-inputs", "1", *extra]


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    paths = {}
    for name, make in (("one_conv", lambda: nn.Sequential(OneConvResidual(), OneConvResidual())),
                       ("classic", lambda: nn.Sequential(ClassicResidual(), ClassicResidual()))):
        torch.manual_seed(0)
        paths[name] = d / f"{name}.pt"
        torch.save(make().eval(), paths[name])
    return d, paths


@pytest.fixture(scope="module")
def default_export(toys):
    """``export`` with no plan option and ``--sram-kb 64`` (the one-conv chain: planned arena about 33 KiB)."""
    d, m = toys
    out = d / "oc.tflite"
    rc, text, err = _run(_export_args(m["one_conv"], out, "--sram-kb", "64"))
    return out, rc, text, err


def test_default_export_is_planned_and_verified(default_export):
    out, rc, text, err = default_export
    assert rc == 0, err
    data = out.read_bytes()
    assert has_plan(data)
    assert validate_plan(data).inplace_pairs == 2
    assert "online 49,152 B -> planned 32,768 B" in text and "bit-identical" in text
    assert not unplanned_path(out).exists()      # removed after the check (--keep-unplanned keeps it)
    a = measure_arena(out, bisect=False, check_outputs=False)
    assert (a.head_bytes, a.online_head_bytes) == (2 * T, 3 * T)


def test_fit_line_of_the_default_export(default_export):
    out, _, text, _ = default_export
    line = [x for x in text.splitlines() if x.startswith("fit:")]
    assert len(line) == 1
    f = fit_check(out, 64)
    assert f.fits and f.head_bytes == 2 * T and f.planned
    assert f.peak_operator.startswith("#0 CONV_2D") and f.peak_live_bytes == 2 * T
    assert line[0] == f.line()
    assert f"fits 64 KiB SRAM with {f.margin_bytes / 1024:.1f} KiB ({f.margin_bytes:,} B) to spare" in line[0]
    assert "activation peak at #0 CONV_2D" in line[0]
    assert f.arena_bytes >= f.head_bytes + f.tail_bytes and f.tail_bytes > 0


def test_fit_boundary_and_arena_cli(default_export):
    out, *_ = default_export
    need = fit_check(out, 64).arena_bytes
    assert need % 16 == 0
    exact = fit_check(out, need / 1024)
    assert exact.fits and exact.margin_bytes == 0
    short = fit_check(out, (need - 16) / 1024)
    assert not short.fits and short.margin_bytes == -16
    # the arena subcommand takes the flag as well: 32 KiB holds the head (exactly 2T) but not the tail
    rc, text, _ = _run(["arena", str(out), "--no-check", "--sram-kb", "32"])
    assert rc == EXIT_NO_FIT == 3
    assert f"does NOT fit 32 KiB SRAM: misses by {(need - 32768) / 1024:.1f} KiB ({need - 32768:,} B)" in text
    assert "activation peak at #0 CONV_2D" in text


def test_activation_peak_counts_in_place_pairs_once(default_export):
    out, *_ = default_export
    data = out.read_bytes()
    assert activation_peak(data) == activation_peak(out)
    assert activation_peak(data)[1] == 2 * T                     # planned: the ADD output shares its operand
    label, live = activation_peak(strip_plan(data))              # online: x, conv output and sum
    assert live == 3 * T and label.startswith("#1 ADD")


def test_no_plan_writes_the_unplanned_file_and_misses(toys):
    d, m = toys
    out = d / "classic.tflite"
    rc, text, err = _run(_export_args(m["classic"], out, "--no-plan", "--sram-kb", "48"))
    assert rc == EXIT_NO_FIT, err
    assert not has_plan(out.read_bytes()) and not unplanned_path(out).exists()
    assert "offline plan" not in text
    line = [x for x in text.splitlines() if x.startswith("fit:")][0]
    assert "does NOT fit 48 KiB SRAM: misses by" in line
    # online head 4T with 3T live at the peak (placement gap), first at conv2 of the first block
    assert "head 65,536 B (online planner, activation peak at #1 CONV_2D" in line
    assert "49,152 B live there" in line


def test_keep_unplanned_and_no_inplace(toys):
    d, m = toys
    out = d / "classic_planned.tflite"
    rc, text, err = _run(_export_args(m["classic"], out, "--keep-unplanned", "--no-inplace"))
    assert rc == 0, err
    raw = unplanned_path(out)
    assert raw.name == "classic_planned_unplanned.tflite" and not has_plan(raw.read_bytes())
    assert has_plan(out.read_bytes())
    assert "no in-place" in text and "online 65,536 B -> planned 49,152 B" in text
    assert "fit:" not in text                                   # no --sram-kb, no fit line


def test_failed_plan_check_leaves_no_out_and_keeps_the_export(toys, monkeypatch):
    import yolo_dero.mcu.offline_plan as plan
    from yolo_dero.mcu.tflite import PlanError

    def broken(*a, **k):
        raise PlanError("planned TFLM outputs differ (simulated)")

    monkeypatch.setattr(plan, "verify_plan", broken)
    d, m = toys
    out = d / "failed.tflite"
    out.write_bytes(b"an earlier planned file")                  # must not pass for this export
    rc, text, err = _run(_export_args(m["one_conv"], out, "--plan", "--sram-kb", "64"))  # --plan: old alias
    assert rc == 1
    assert "simulated" in err and "removed the earlier" in err
    assert not out.exists()
    raw = unplanned_path(out)
    assert raw.exists() and not has_plan(raw.read_bytes()) and str(raw) in err
    assert "fit:" not in text                                    # no fit verdict for a failed export


def test_unknown_model_keeps_an_earlier_out(tmp_path):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"an earlier export")
    rc, _, err = _run(["export", "--model", str(tmp_path / "missing.pt"), "--imgsz", "32", "--out", str(out)])
    assert rc == 2 and "missing.pt" in err
    assert out.read_bytes() == b"an earlier export"             # nothing was exported: nothing removed


@pytest.mark.parametrize("cmd", ["export", "arena"])
@pytest.mark.parametrize("value", ["0", "-64", "nan"])
def test_non_positive_sram_is_refused(tmp_path, cmd, value):
    out = tmp_path / "m.tflite"
    argv = (["export", "--model", "mcunet_v4_plain", "--imgsz", "32", "--out", str(out)] if cmd == "export"
            else ["arena", str(out)]) + [f"--sram-kb={value}"]
    rc, _, err = _run(argv)
    assert rc == 2
    assert f"--sram-kb {value}" in err and "positive number of KiB" in err and "--sram-kb 256" in err
    assert not out.exists() and not unplanned_path(out).exists()


def test_no_plan_with_plan_options_is_refused(tmp_path):
    for extra in (["--keep-unplanned"], ["--plan"], ["--no-inplace"]):
        rc, _, err = _run(["export", "--model", "mcunet_v4_plain", "--imgsz", "32", "--out", str(tmp_path / "m.tflite"),
                           "--no-plan", *extra])
        assert rc == 2 and extra[0] in err
