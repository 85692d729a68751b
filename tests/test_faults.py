"""Fault injection: kills, full disks, concurrent runs and failed checks must never lose the user's files.

* detection checkpoints: a training process killed inside a checkpoint save (a file-size limit kills it with
  SIGXFSZ half-way through the write) keeps the previous last.pt and best.pt loadable; the resumed run lists every
  epoch once in results.csv; a full disk (the same limit with SIGXFSZ ignored, Python's default: EFBIG) leaves
  the old file whole and train_det.py says so in one line;
* built-in detection data: two generators at once produce one complete dataset; a generator killed part-way
  leaves no dataset, and its temporary folder is deleted by the next run;
* ``mcu plan X --out X`` whose check fails keeps X byte for byte; re-planning adds no buffer;
* refusals: ``mcu export --num-calib 0``, ``mcu plan --num-inputs 0``, ``train_det.py --batch 0``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import yolo_dero.ultra  # noqa: F401  (offline Ultralytics environment before any ultralytics import)
from yolo_dero.datasets.yolo_layout import generate_yolo_dataset
from yolo_dero.fileutil import remove_stale_temps
from yolo_dero.paths import REPO_ROOT

TINY = "builtin: shapes\ncache_name: tiny\nn_train: 12\nn_val: 4\nimgsz: 160\nseed: 0\n"


def _env(cache: Path) -> dict:
    """Subprocess environment: the worktree first on the path, a project cache of its own."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "ULTRALYTICS_"))}
    e.update(PYTHONPATH=os.pathsep.join([str(REPO_ROOT), e.get("PYTHONPATH", "")]), DERO_CACHE_DIR=str(cache),
             PYTHONUNBUFFERED="1")
    return e


def _py(cwd: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=_env(cwd / "cache"), capture_output=True,
                          text=True, timeout=timeout)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------------------------- detection checkpoints

KILL_IN_SECOND_SAVE = textwrap.dedent('''
    import resource, signal, sys
    from yolo_dero.ultra import model as M

    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it (a write past the limit would raise EFBIG)

    _init = M.DeroDetectionTrainer.__init__

    def __init__(self, *a, **k):
        _init(self, *a, **k)

        def limit_file_size(trainer):
            if trainer.epoch == 1:  # epoch 2: its results.csv row is written, then its save dies half-way
                half = trainer.last.stat().st_size // 2
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                resource.setrlimit(resource.RLIMIT_FSIZE, (half, resource.RLIM_INFINITY))

        self.add_callback("on_train_epoch_end", limit_file_size)

    M.DeroDetectionTrainer.__init__ = __init__
    from yolo_dero.ultra.cli import train_main

    sys.exit(train_main(sys.argv[1:]))
''')


def _rows(csv: Path) -> list[list[str]]:
    return [r.split(",") for r in csv.read_text().strip().splitlines()[1:]]


@pytest.mark.slow
def test_kill_inside_checkpoint_save_keeps_last_pt_and_resume_lists_each_epoch_once(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "kill.py").write_text(KILL_IN_SECOND_SAVE)
    run = tmp_path / "runs" / "r"
    p = _py(tmp_path, "kill.py", "--data", "tiny.yaml", "--epochs", 2, "--imgsz", 160, "--batch", 4, "--plots",
            "false", "--project", tmp_path / "runs", "--name", "r")
    assert p.returncode == -signal.SIGXFSZ, p.stdout[-2000:] + p.stderr[-2000:]
    weights = run / "weights"
    assert [n for n in _temps(weights) if n.startswith(".last.pt.tmp-")], "the kill did not hit the save"
    for f in ("last.pt", "best.pt"):  # both still hold epoch 1, whole
        assert torch.load(weights / f, map_location="cpu", weights_only=False)["epoch"] == 0
    assert [r[0] for r in _rows(run / "results.csv")] == ["1", "2"]  # epoch 2's row, but not its checkpoint

    q = _py(tmp_path, REPO_ROOT / "train_det.py", "--resume", weights / "last.pt")
    assert q.returncode == 0, q.stdout[-2000:] + q.stderr[-2000:]
    rows = _rows(run / "results.csv")
    assert [r[0] for r in rows] == ["1", "2"]  # epoch 2 once: the killed run's row was rewound
    assert float(rows[1][1]) > float(rows[0][1])  # time continues across the resume
    assert _temps(weights) == []  # the killed save's temporary file was deleted at the next start
    assert torch.load(weights / "last.pt", map_location="cpu", weights_only=False)["epoch"] == -1  # finished
    assert f"Optimizer stripped from {weights / 'best.pt'}, " in q.stdout and ".tmp-" not in q.stdout


FULL_DISK = textwrap.dedent('''
    import resource, signal, sys
    from yolo_dero.fileutil import atomic_write_bytes

    path = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (Python's default) writes past the limit fail, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
    try:
        atomic_write_bytes(path, b"new" * 1000)
    except OSError as e:
        print("OSError", e.errno)
''')


def test_full_disk_during_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old checkpoint")
    (tmp_path / "full.py").write_text(FULL_DISK)
    p = _py(tmp_path, "full.py", target)
    assert f"OSError {errno.EFBIG}" in p.stdout, p.stdout + p.stderr
    assert target.read_bytes() == b"old checkpoint"
    assert _temps(tmp_path) == []


def test_checkpoint_writes_are_atomic_only_inside_the_weights_folder(tmp_path):
    from ultralytics.engine import trainer as utrainer

    from yolo_dero.ultra.model import atomic_checkpoint_writes

    weights, other = tmp_path / "weights", tmp_path / "other.bin"
    weights.mkdir()
    seen = []
    original = os.replace

    def spy(src, dst):
        seen.append(Path(dst).name)
        original(src, dst)

    write_bytes, strip = Path.write_bytes, utrainer.strip_optimizer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("yolo_dero.fileutil.os.replace", spy)
        with atomic_checkpoint_writes(weights):
            (weights / "last.pt").write_bytes(b"x")
            other.write_bytes(b"y")
    assert seen == ["last.pt"] and (weights / "last.pt").read_bytes() == b"x" and other.read_bytes() == b"y"
    assert (Path.write_bytes, utrainer.strip_optimizer) == (write_bytes, strip)  # restored


def test_rewind_results_csv(tmp_path):
    from yolo_dero.ultra.model import rewind_results_csv

    csv = tmp_path / "results.csv"
    head = "epoch,time,train/box_loss"
    csv.write_text(head + "\n1,10.5,3\n2,21,2.5\n3,30,2\n4,41,1.5\n5,4")  # the last row torn by a kill
    # resumed from best.pt of epoch 2 (no table in it): the later rows go, times continue from 21 s
    assert rewind_results_csv(csv, None, 2) == 21.0
    assert csv.read_text() == head + "\n1,10.5,3\n2,21,2.5\n"
    # the file lost its rows: the checkpoint's own copy of the table is written back
    csv.unlink()
    saved = {"epoch": [1, 2], "time": [10.5, 21.0], "train/box_loss": [3.0, 2.5]}
    assert rewind_results_csv(csv, saved, 2) == 21.0
    assert csv.read_text() == head + "\n1,10.5,3\n2,21,2.5\n"


def test_disk_full_during_training_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from yolo_dero.ultra import DeroYOLO
    from yolo_dero.ultra.cli import train_main

    def full(self, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(DeroYOLO, "train", full)
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert train_main(["--data", str(tmp_path / "tiny.yaml"), "--no-label-scan"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: disk full while writing (No space left on device)")


# ---------------------------------------------------------------------------------------- built-in detection data


def _tiny_render(delay: float = 0.0, active: list | None = None, peak: list | None = None):
    """A trivial renderer (one 32x32 image, one box) that records how many generators run at once."""
    lock = threading.Lock()

    def render(rng, split):
        if active is not None:
            with lock:
                active.append(1)
                peak.append(len(active))
            time.sleep(delay)
            with lock:
                active.pop()
        return np.full((32, 32, 3), int(rng.integers(0, 255)), np.uint8), [(0, 4.0, 4.0, 20.0, 20.0)]

    return render


PARAMS = {"version": 1, "n_train": 6, "n_val": 2, "imgsz": 32, "seed": 0, "classes": ["a"]}


def _complete(root: Path) -> bool:
    return (len(list((root / "images" / "train").iterdir())) == 6 and len(list((root / "images" / "val").iterdir()))
            == 2 and len(list((root / "labels" / "train").iterdir())) == 6 and (root / "data.yaml").is_file()
            and (root / "annotations" / "instances_val.json").is_file() and (root / "DONE").is_file())


def test_two_generators_at_once_make_one_complete_dataset(tmp_path):
    root = tmp_path / "shapes"
    active, peak, results, errors = [], [], [], []
    render = _tiny_render(0.02, active, peak)

    def generate():
        try:
            results.append(generate_yolo_dataset(root, PARAMS, ["a"], render, "test", "thing"))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [root.resolve() / "data.yaml"] * 2
    assert max(peak) == 1 and len(peak) == 8  # one generation only; the second run waited and reused it
    assert _complete(root) and _temps(tmp_path) == []


KILLED_GENERATOR = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    from yolo_dero.datasets.yolo_layout import generate_yolo_dataset

    n = [0]

    def render(rng, split):
        n[0] += 1
        if n[0] == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # killed part-way: no clean-up code runs
        return np.zeros((32, 32, 3), np.uint8), [(0, 4.0, 4.0, 20.0, 20.0)]

    generate_yolo_dataset(sys.argv[1], PARAMS, ["a"], render, "test", "thing")
''').replace("PARAMS", repr(PARAMS))


def test_killed_generation_leaves_no_dataset_and_its_temporary_folder_is_cleaned(tmp_path):
    root = tmp_path / "shapes"
    (tmp_path / "gen.py").write_text(KILLED_GENERATOR)
    p = _py(tmp_path, "gen.py", root)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not root.exists() and _temps(tmp_path)  # nothing half-written in place; a temporary folder is left
    (tmp_path / f".shapes.tmp{_dead_pid()}").mkdir()  # as the generator before this fix named them
    generate_yolo_dataset(root, PARAMS, ["a"], _tiny_render(), "test", "thing")
    assert _complete(root) and _temps(tmp_path) == []


# ---------------------------------------------------------------------------------------- classification temporaries


def test_stale_checkpoint_temporaries_are_removed_at_training_start(tmp_path):
    from classification.train import UserError, get_args_parser, run

    dead, live = f".checkpoint.pth.tmp-{_dead_pid()}", f".checkpoint.pth.tmp-{os.getppid()}"
    for n in (dead, live, f".model_3.pth.tmp-{os.getpid()}-0a1b2c3d"):
        (tmp_path / n).write_bytes(b"half a checkpoint")
    (tmp_path / "checkpoint.pth").write_bytes(b"whole")
    args = get_args_parser().parse_args(["--model", "no_such_model", "--output-dir", str(tmp_path), "--device", "cpu"])
    with pytest.raises(UserError):  # stops after the clean-up: no data or model needed
        run(args)
    assert _temps(tmp_path) == [live]  # a running process's temporary file is left alone
    assert (tmp_path / "checkpoint.pth").read_bytes() == b"whole"
    assert remove_stale_temps(tmp_path / "missing") == []


# ---------------------------------------------------------------------------------------- mcu plan


@pytest.fixture(scope="module")
def toy_tflite(tmp_path_factory):
    """A two-unit residual toy exported to int8 TFLite (skipped without requirements-mcu.txt)."""
    from mcu_support import require_mcu_packages

    require_mcu_packages()
    from torch import nn

    from yolo_dero.mcu import export_tflite
    from yolo_dero.mcu.reports import OneConvResidual

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("faults_mcu")
    return Path(export_tflite(nn.Sequential(OneConvResidual(), OneConvResidual()).eval(), 32, d / "toy.tflite",
                              in_channels=16, num_calib=1).path)


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def test_plan_in_place_with_failing_check_keeps_the_input(toy_tflite, tmp_path, monkeypatch, capsys):
    from yolo_dero.mcu import offline_plan
    from yolo_dero.mcu.__main__ import main
    from yolo_dero.mcu.tflite import PlanError

    x = _copy(toy_tflite, tmp_path / "m")
    before = x.read_bytes()

    def failing(*a, **k):
        raise PlanError("planned TFLM outputs differ (injected)")

    monkeypatch.setattr(offline_plan, "verify_plan", failing)
    assert main(["plan", str(x), "--out", str(x)]) == 1
    assert "injected" in capsys.readouterr().err
    assert x.read_bytes() == before and _temps(x.parent) == []
    # the report in the issue: tflite_micro cannot be imported
    monkeypatch.setitem(sys.modules, "tflite_micro", None)
    assert main(["plan", str(x), "--out", str(x)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tflite_micro" in err[0] and "requirements-mcu.txt" in err[0]
    assert x.read_bytes() == before and _temps(x.parent) == []


def test_replanning_adds_no_buffer_and_in_place_plan_replaces_the_input(toy_tflite, tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    from yolo_dero.mcu.offline_plan import plan_file, validate_plan
    from yolo_dero.mcu.tflite import read_offsets

    n_buffers = lambda f: schema.Model.GetRootAs(f.read_bytes(), 0).BuffersLength()  # noqa: E731
    x = _copy(toy_tflite, tmp_path)
    plan_file(x, x, verify=False)  # in place, once checked
    first = n_buffers(x)
    for _ in range(2):
        plan_file(x, x, verify=False)
    assert n_buffers(x) == first == n_buffers(toy_tflite) + 1
    assert read_offsets(x.read_bytes()) and validate_plan(x.read_bytes())
    assert _temps(tmp_path) == []


# ---------------------------------------------------------------------------------------- refusals


def test_mcu_refuses_zero_counts(tmp_path, capsys):
    from torch import nn

    from yolo_dero.mcu import export_tflite
    from yolo_dero.mcu.__main__ import main

    out = tmp_path / "m.tflite"
    cases = [(["export", "--model", "mcunet_v4_plain", "--imgsz", "32", "--out", str(out), "--num-calib", "0"],
              "--num-calib 0: needs at least 1"),
             (["plan", str(out), "--out", str(out), "--num-inputs", "0"], "--num-inputs 0: needs at least 1"),
             (["crosscheck", "--num-calib", "-2"], "--num-calib -2: needs at least 1")]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {msg}") and "pass e.g." in err[0]
    assert not out.exists()
    with pytest.raises(ValueError, match="num_calib=0"):  # the library refuses it too
        export_tflite(nn.Conv2d(3, 4, 1), 32, out, num_calib=0)


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--batch", "-4"], ["batch=0"],
                                  ["--resume", "missing/last.pt", "--batch", "0"]])
def test_train_det_refuses_batch_below_one(argv, tmp_path, monkeypatch, capsys):
    from yolo_dero.ultra.cli import train_main

    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    assert train_main(["--project", str(tmp_path / "runs"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the batch size must be a positive number of images" in err[0]
    assert "--batch 16" in err[0] and not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "tiny").exists()
