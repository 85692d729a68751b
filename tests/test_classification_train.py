"""classification/train.py end to end on a tiny ImageFolder: DDP on CPU, checkpoints and resume (also after a
kill), --test-only reproducing the training accuracy, clear errors on bad input, and the built-in data."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classification.data import builtin_dataset, make_shapes_dataset
from classification.models import get_model, list_models

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "classification" / "train.py")
ACC_RE = re.compile(r"Acc@1 ([\d.]+) Acc@5 ([\d.]+)")
MODEL = next((m for m in ("mcunet_v4_dero", "mcunet_v4_plain") if m in list_models()), "resnet34")
SIZES = ["--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32"]
TIMEOUT = 300


def _env(tmp: Path) -> dict:
    """The script imports the project as installed; PYTHONPATH makes that this checkout, whatever is installed."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", DERO_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _common(data: Path, out: Path | None = None) -> list:
    args = ["--model", MODEL, "--data-path", str(data), "-b", "8", "-j", "0", "--seed", "0", "--print-freq", "1",
            *SIZES]
    if out is not None:
        args += ["--output-dir", str(out)]
    return args


def _train(tmp: Path, *args, torchrun: int = 0) -> subprocess.CompletedProcess:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", TRAIN]
    else:
        cmd = [sys.executable, TRAIN]
    return subprocess.run(cmd + [str(a) for a in args], cwd=tmp, env=_env(tmp), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"exit {p.returncode}\nSTDOUT:\n{p.stdout[-4000:]}\nSTDERR:\n{p.stderr[-4000:]}"
    return p.stdout


def _acc(text: str) -> list[tuple[str, str]]:
    return ACC_RE.findall(text)


def _epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cls_train")


@pytest.fixture(scope="module")
def data(work) -> Path:
    """3 classes, 8 train + 4 val images each, 32x32."""
    return make_shapes_dataset(work / "tiny", train_per_class=8, val_per_class=4, size=32, num_classes=3)


@pytest.fixture(scope="module")
def trained(work, data):
    """One epoch of single-process training: (output dir, the last printed (Acc@1, Acc@5))."""
    out = work / "run1"
    text = _ok(_train(work, *_common(data, out), "--epochs", "1", "--lr", "0.02"))
    accs = _acc(text)
    assert len(accs) == 1, text
    return out, accs[-1]


# ---------------------------------------------------------------------------------------------------------


def test_builtin_data_deterministic_and_idempotent(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", train_per_class=3, val_per_class=2, size=32)
    b = make_shapes_dataset(tmp_path / "b", train_per_class=3, val_per_class=2, size=32)
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb and len(fa) == 10 * 5
    assert all(_sha(a / f) == _sha(b / f) for f in fa)
    assert {p.name for p in (a / "train").iterdir()} == {p.name for p in (a / "val").iterdir()}

    # the cached entry point: generated once (tmp dir + rename, marker written), then reused untouched
    c = builtin_dataset(tmp_path / "c", train_per_class=3, val_per_class=2, size=32)
    marker = c / ".complete.json"
    assert marker.is_file()
    stamp = marker.stat().st_mtime_ns
    assert builtin_dataset(tmp_path / "c", train_per_class=3, val_per_class=2, size=32) == c
    assert marker.stat().st_mtime_ns == stamp
    assert all(_sha(a / f) == _sha(c / f) for f in fa)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # a partial directory without the marker is replaced
    shutil.rmtree(c / "val")
    marker.unlink()
    builtin_dataset(tmp_path / "c", train_per_class=3, val_per_class=2, size=32)
    assert all(_sha(a / f) == _sha(c / f) for f in fa)


@pytest.mark.slow
def test_torchrun_two_processes_cpu(work, data):
    out = work / "ddp"
    # the seed's recipe flags
    text = _ok(_train(work, *_common(data, out), "--epochs", "1", "--amp", "--wd", "0.00004", "--random-erase",
                      "0.1", "--label-smoothing", "0.1", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0",
                      torchrun=2))
    assert len(_acc(text)) == 1, text  # evaluated once, printed by rank 0 only
    assert "2 process(es)" in text
    assert (out / "checkpoint.pth").is_file() and (out / "model_0.pth").is_file()
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["args"]["world_size"] == 2
    assert {"model", "optimizer", "lr_scheduler", "epoch", "args"} <= set(ckpt)
    assert not any(k.startswith("module.") for k in ckpt["model"])


@pytest.mark.slow
def test_test_only_reproduces_training_accuracy(work, data, trained):
    out, acc = trained
    text = _ok(_train(work, *_common(data), "--test-only", "--weights", out / "checkpoint.pth"))
    assert _acc(text) == [acc]
    # a bare state_dict works too
    sd = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    torch.save(sd, work / "bare.pth")
    text = _ok(_train(work, *_common(data), "--test-only", "--weights", work / "bare.pth"))
    assert _acc(text) == [acc]


@pytest.mark.slow
def test_resume_continues_to_epochs(work, data, trained):
    src, _ = trained
    out = work / "resume"
    shutil.copytree(src, out)
    text = _ok(_train(work, *_common(data, out), "--epochs", "2", "--lr", "0.02", "--resume", out / "checkpoint.pth"))
    assert "continuing at epoch 1 of 2" in text
    assert len(_acc(text)) == 1  # only epoch 1 ran
    assert _epoch(out / "checkpoint.pth") == 1
    assert (out / "model_0.pth").is_file() and (out / "model_1.pth").is_file()
    assert _sha(out / "model_0.pth") == _sha(src / "model_0.pth")


@pytest.mark.slow
def test_no_epoch_checkpoints_keeps_only_the_resumable_one(work, data, trained):
    src, _ = trained
    out = work / "one_file"
    out.mkdir()
    shutil.copy(src / "checkpoint.pth", out / "checkpoint.pth")
    _ok(_train(work, *_common(data, out), "--epochs", "2", "--lr", "0.02", "--resume", out / "checkpoint.pth",
               "--no-epoch-checkpoints"))
    assert _epoch(out / "checkpoint.pth") == 1
    assert sorted(f.name for f in out.iterdir()) == ["checkpoint.pth"]


@pytest.mark.slow
def test_resume_after_kill(work, data):
    out = work / "killed"
    cmd = [sys.executable, TRAIN, *map(str, _common(data, out)), "--epochs", "3", "--lr", "0.02"]
    proc = subprocess.Popen(cmd, cwd=work, env=_env(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + TIMEOUT
        # checkpoint.pth is written right after model_0.pth: epoch 0 is then complete
        while not (out / "checkpoint.pth").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # somewhere in epoch 1 (or while saving it)
    finally:
        proc.wait(timeout=60)
    done = _epoch(out / "checkpoint.pth")  # the surviving checkpoint loads
    assert done in (0, 1)
    print(f"killed after epoch {done} was saved")
    assert not (out / "model_2.pth").exists()
    text = _ok(_train(work, *_common(data, out), "--epochs", "3", "--lr", "0.02", "--resume",
                      out / "checkpoint.pth"))
    assert f"continuing at epoch {done + 1} of 3" in text
    assert len(_acc(text)) == 2 - done
    assert _epoch(out / "checkpoint.pth") == 2
    assert all((out / f"model_{e}.pth").is_file() for e in range(3))


def test_unknown_model(work, data):
    p = _train(work, "--model", "resnet_nope", "--data-path", data, "--test-only")
    assert p.returncode != 0
    assert "unknown model 'resnet_nope'" in p.stderr and "resnet34" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_data_dir(work, tmp_path):
    missing = tmp_path / "no_such_dataset"
    p = _train(work, "--model", MODEL, "--data-path", missing, "--epochs", "1")
    assert p.returncode != 0
    assert str(missing) in p.stderr and "does not exist" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_val_split(work, data, tmp_path):
    root = tmp_path / "no_val"
    shutil.copytree(data / "train", root / "train")
    p = _train(work, *_common(root, tmp_path / "out"), "--epochs", "1")
    assert p.returncode != 0
    assert "no 'val/' directory" in p.stderr and str(root) in p.stderr
    assert "Traceback" not in p.stderr


def test_weights_of_another_architecture(work, data, tmp_path):
    torch.save(get_model("resnet34", num_classes=3).state_dict(), tmp_path / "r34.pth")
    assert MODEL != "resnet34" or "resnet50" in list_models()
    other = MODEL if MODEL != "resnet34" else "resnet50"
    args = [a if a != MODEL else other for a in _common(data)]
    p = _train(work, *args, "--test-only", "--weights", tmp_path / "r34.pth")
    assert p.returncode != 0
    assert "does not fit --model" in p.stderr and "missing keys" in p.stderr and "unexpected keys" in p.stderr
    assert "conv1.weight" in p.stderr  # names the first mismatched keys
    assert "Traceback" not in p.stderr


def test_weights_of_another_dero_style_name_the_option(work, data, tmp_path):
    """A DERO checkpoint of another unit style has other shortcut BatchNorms: the error names the style it fits."""
    torch.save(get_model("mcunet_v4_dero", num_classes=3, style="seed").state_dict(), tmp_path / "seed.pth")
    args = [a if a != MODEL else "mcunet_v4_dero" for a in _common(data)]
    p = _train(work, *args, "--test-only", "--weights", tmp_path / "seed.pth")
    assert p.returncode != 0
    assert "was trained with DERO style 'seed'" in p.stderr and "add --dero-style seed" in p.stderr
    assert "Traceback" not in p.stderr
    # a checkpoint of the default before the thirteenth session (which stored no --dero-style) is named too
    torch.save(get_model("mcunet_v4_dero", num_classes=3, style="project-slice-nodwbias").state_dict(),
               tmp_path / "old.pth")
    p = _train(work, *args, "--test-only", "--weights", tmp_path / "old.pth")
    assert p.returncode != 0 and "add --dero-style project-slice-nodwbias" in p.stderr, p.stderr[-2000:]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(work, data):
    out = work / "nan"
    # epoch 0 at lr 0.01 is fine; the exponential schedule makes epoch 1's lr 1e28, so its loss blows up
    p = _train(work, *_common(data, out), "--epochs", "3", "--lr", "0.01", "--lr-scheduler", "exponentiallr",
               "--lr-gamma", "1e30")
    assert p.returncode != 0
    assert "non-finite loss" in p.stderr and "epoch 1" in p.stderr and "lower --lr or disable --amp" in p.stderr
    assert "Traceback" not in p.stderr
    assert _epoch(out / "checkpoint.pth") == 0
    assert _sha(out / "checkpoint.pth") == _sha(out / "model_0.pth")
    assert not (out / "model_1.pth").exists()
    assert not [f for f in out.iterdir() if ".tmp-" in f.name]


def test_reparameterized_model_evaluates_like_the_trained_one(work, data):
    """A model trained in the re-parameterizable style evaluates the same folded (--reparameterize), and its
    folded weights reload for evaluation but are refused for training."""
    from yolo_dero.nn import reparameterize

    out = work / "rep"
    rep = ["--dero-style", "rep"]
    text = _ok(_train(work, *_common(data, out), *rep, "--epochs", "1", "--lr", "0.02"))
    acc = _acc(text)[-1]
    ckpt = out / "checkpoint.pth"
    text = _ok(_train(work, *_common(data), *rep, "--test-only", "--weights", ckpt, "--reparameterize"))
    assert "re-parameterized (folded) model" in text and _acc(text) == [acc]
    model = get_model(MODEL, num_classes=3, style="rep")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    torch.save(reparameterize(model.eval()).state_dict(), work / "folded.pth")
    text = _ok(_train(work, *_common(data), *rep, "--test-only", "--weights", work / "folded.pth"))
    assert "folded (re-parameterized) weights" in text and _acc(text) == [acc]
    p = _train(work, *_common(data, work / "rep2"), *rep, "--epochs", "1", "--weights", work / "folded.pth")
    assert p.returncode == 2 and "cannot be trained" in p.stderr


@pytest.mark.parametrize("how", ["script", "module"])
def test_train_runs_as_a_script_and_as_a_module(tmp_path, how):
    """No sys.path edits in train.py: the installed (here: PYTHONPATH) project serves both README forms."""
    cmd = [sys.executable, TRAIN] if how == "script" else [sys.executable, "-m", "classification.train"]
    p = subprocess.run([*cmd, "--help"], cwd=tmp_path if how == "script" else REPO, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 0 and "--model" in p.stdout, p.stderr[-3000:]
