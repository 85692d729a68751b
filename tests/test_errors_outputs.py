"""Every tool that writes refuses an output path it cannot write before its work (model build, validation,
export, measurement): one line naming the path and the fix, exit code 2, no traceback (issue 14, item 11). And
``val_det.py --device`` beyond the machine's, like ``train_det.py``'s.

An output "cannot be written" here because its folder would be under a regular file: that fails for root too.
The work each tool would do is replaced by a function that fails the test, so a missing check shows as that
failure, fast, not as minutes of work."""

from __future__ import annotations

from pathlib import Path

import pytest

# Ultralytics' logger binds the stderr of the moment it is imported: import it here, not inside a test's capsys
import yolo_dero.ultra  # noqa: F401


def _one_line_error(capsys, code, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


def _no_work(*_a, **_k):
    raise AssertionError("the tool started its work before checking its outputs")


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A regular file: nothing can be created under it."""
    f = tmp_path / "a_file"
    f.write_text("x")
    return f


def test_output_problem_helper(tmp_path, blocked):
    from yolo_dero.fileutil import output_problem, outputs_problem

    assert output_problem(None, "--json") is None
    assert output_problem(tmp_path / "new" / "sub" / "m.json", "--json") is None
    assert (tmp_path / "new" / "sub").is_dir() and not any((tmp_path / "new" / "sub").iterdir())  # probe removed
    assert output_problem(tmp_path / "runs", "--project", folder=True) is None
    assert output_problem(tmp_path / "gone" / "runs", "--project", folder=True, keep=False) is None
    assert not (tmp_path / "gone").exists()  # keep=False: the folders the probe made are removed again
    line = output_problem(blocked / "m.json", "--json")
    assert line.startswith(f"--json {blocked / 'm.json'}: cannot create or write its folder {blocked} (")
    assert line.endswith("pass a writable path with --json")
    assert "is a folder, not a file" in output_problem(tmp_path, "--out")
    assert "cannot create or write this folder" in output_problem(blocked, "--project", folder=True)
    assert outputs_problem((tmp_path / "a.md", "--md"), (blocked / "k", "--keep", True)).startswith("--keep ")


# ------------------------------------------------------------------------------------------------------ val_det.py


def test_val_det_device_and_outputs_checked_before_work(tmp_path, blocked, capsys, monkeypatch):
    import torch

    from yolo_dero.ultra import cli

    monkeypatch.setattr(cli, "evaluate_detector", _no_work)
    w = str(tmp_path / "best.pt")
    n = torch.cuda.device_count()
    _one_line_error(capsys, cli.val_main(["--weights", w, "--device", str(n + 7), "--project", str(tmp_path)]),
                    f"--device {n + 7}", "--device cpu")
    _one_line_error(capsys, cli.val_main(["--weights", w, "--project", str(blocked / "val")]),
                    f"--project {blocked / 'val'}", "cannot create or write", "pass a writable folder with --project")
    _one_line_error(capsys, cli.val_main(["--weights", w, "--project", str(tmp_path),
                                          "--json-out", str(blocked / "v.json")]),
                    f"--json-out {blocked / 'v.json'}", "cannot create or write", "--json-out")
    _one_line_error(capsys, cli.val_main(["--weights", w, "--project", str(tmp_path), "--json-out", str(tmp_path)]),
                    "is a folder, not a file")
    _one_line_error(capsys, cli.val_main(["--weights", w, "--imgsz", "0", "--project", str(tmp_path)]),
                    "--imgsz 0", "at least 1")


def test_train_det_outputs_checked_before_the_data(tmp_path, blocked, capsys, monkeypatch):
    from yolo_dero.ultra import cli

    monkeypatch.setattr(cli, "resolve_data", _no_work)  # not even the built-in data is generated first
    code = cli.train_main(["--epochs", "1", "--project", str(tmp_path), "--json-out", str(blocked / "r.json")])
    _one_line_error(capsys, code, "--json-out", "cannot create or write")
    code = cli.train_main(["--epochs", "1", "--project", str(blocked / "runs")])
    _one_line_error(capsys, code, f"--project {blocked / 'runs'}", "cannot create or write")


# --------------------------------------------------------------------------------------- python -m yolo_dero.memory


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_memory_outputs_checked_before_work(flag, blocked, capsys, monkeypatch):
    import yolo_dero.memory.__main__ as mem

    monkeypatch.setattr(mem, "load_model", _no_work)
    code = mem.main(["--model", "resnet34", "--imgsz", "32", flag, str(blocked / "out.x")])
    _one_line_error(capsys, code, f"{flag} {blocked / 'out.x'}", "cannot create or write", f"with {flag}")


# ------------------------------------------------------------------------------------------ python -m yolo_dero.mcu


@pytest.mark.parametrize("cmd, func, argv, flag", [
    ("export", "_export", ["--model", "mcunet_v4_plain", "--imgsz", "32", "--out", "{B}/m.tflite"], "--out"),
    ("plan", "_plan", ["{T}", "--out", "{B}/p.tflite"], "--out"),
    ("plan", "_plan", ["{T}", "--out", "{D}/p.tflite", "--json", "{B}/p.json"], "--json"),
    ("arena", "_arena", ["{T}", "--json", "{B}/a.json"], "--json"),
    ("crosscheck", "_crosscheck", ["--md", "{B}/c.md"], "--md"),
    ("plan-report", "_plan_report", ["--md", "{D}/r.md", "--json", "{D}/r.json", "--keep", "{B}/keep"], "--keep"),
    ("reparam-report", "_reparam_report", ["--md", "{D}/r.md", "--json", "{B}/r.json"], "--json"),
])
def test_mcu_outputs_checked_before_work(cmd, func, argv, flag, tmp_path, blocked, capsys, monkeypatch):
    import yolo_dero.mcu.__main__ as mcu

    monkeypatch.setattr(mcu, func, _no_work)
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"\x00\x00\x00\x00TFL3" + b"\x00" * 64)  # passes the identifier check; never parsed here
    args = [a.format(B=blocked, T=tfl, D=tmp_path / "out") for a in argv]
    _one_line_error(capsys, mcu.main([cmd, *args]), f"error: {flag} {blocked}", "cannot create or write",
                    f"with {flag}")


def test_mcu_export_out_is_a_folder(tmp_path, capsys, monkeypatch):
    import yolo_dero.mcu.__main__ as mcu

    monkeypatch.setattr(mcu, "_export", _no_work)
    code = mcu.main(["export", "--model", "mcunet_v4_plain", "--imgsz", "32", "--out", str(tmp_path)])
    _one_line_error(capsys, code, f"--out {tmp_path}: is a folder, not a file")


# ------------------------------------------------------------------------------------ python -m yolo_dero.visualize


def test_visualize_out_checked_before_work(tmp_path, blocked, capsys, monkeypatch):
    import yolo_dero.visualize as vis

    monkeypatch.setattr(vis, "yolo_column", _no_work)
    with pytest.raises(SystemExit) as ei:
        vis.main(["--weights", str(tmp_path / "a.pt"), "--source", str(tmp_path), "--out", str(blocked / "pics")])
    _one_line_error(capsys, ei.value.code, f"--out {blocked / 'pics'}", "cannot create or write",
                    "pass a writable folder with --out")


# ------------------------------------------------------------------------- compare, compare_cls, report and study


@pytest.mark.parametrize("module, func, argv, flag", [
    ("compare", "run", ["--out", "{B}/res"], "--out"),
    ("compare", "run", ["--out", "{D}", "--project", "{D}", "--docs-picture", "{B}/side.png"], "--docs-picture"),
    ("compare_cls", "run", ["--arch", "mcunet_v4", "--out", "{D}", "--project", "{B}/runs"], "--project"),
    ("report", "measure", ["--json", "{D}/r.json", "--markdown", "{B}/r.md"], "--markdown"),
    ("study", "write_table", ["table", "--out", "{B}/study"], "--out"),
    ("study", "run_cls", ["cls", "--out", "{D}", "--runs", "{B}/runs", "--seeds", "0"], "--runs"),
])
def test_comparison_and_report_outputs_checked_before_work(module, func, argv, flag, tmp_path, blocked, capsys,
                                                           monkeypatch):
    import importlib

    mod = importlib.import_module(f"yolo_dero.{module}")
    monkeypatch.setattr(mod, func, _no_work)
    code = mod.main([a.format(B=blocked, D=tmp_path / "out") for a in argv])
    _one_line_error(capsys, code, f"error: {flag} {blocked}", "cannot create or write", f"with {flag}")
