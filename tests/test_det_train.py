"""End-to-end: train_det.py / val_det.py on tiny data, offline, reload, resume, ONNX export, COCO layout.

Every CLI run is a fresh subprocess with a project cache of its own (DERO_CACHE_DIR) and a network guard
(sitecustomize) that records and refuses any connection, DNS lookup or urlopen.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from yolo_dero.paths import REPO_ROOT

pytestmark = pytest.mark.slow

GUARD = textwrap.dedent('''
    """Test network guard: record and refuse every attempt to reach the network."""
    import os, socket, urllib.request

    _LOG = os.environ.get("DERO_NET_LOG")
    _LOCAL = {None, "localhost", "127.0.0.1", "::1", "0.0.0.0", ""}

    def _record(what):
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{os.getpid()} {what}\\n")

    _connect, _connect_ex, _gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _remote(sock, address):
        return sock.family != getattr(socket, "AF_UNIX", None) and not (
            isinstance(address, tuple) and address and address[0] in _LOCAL)

    def connect(self, address):
        if _remote(self, address):
            _record(f"socket.connect {address!r}")
            raise OSError("network disabled by test guard")
        return _connect(self, address)

    def connect_ex(self, address):
        if _remote(self, address):
            _record(f"socket.connect_ex {address!r}")
            return 111
        return _connect_ex(self, address)

    def getaddrinfo(host, *a, **k):
        if host not in _LOCAL:
            _record(f"getaddrinfo {host!r}")
            raise socket.gaierror("network disabled by test guard")
        return _gai(host, *a, **k)

    def create_connection(address, *a, **k):
        _record(f"create_connection {address!r}")
        raise OSError("network disabled by test guard")

    def gethostbyname(host):
        _record(f"gethostbyname {host!r}")
        raise socket.gaierror("network disabled by test guard")

    def urlopen(url, *a, **k):
        _record(f"urlopen {getattr(url, 'full_url', url)!r}")
        raise OSError("network disabled by test guard")

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo, socket.create_connection, socket.gethostbyname = getaddrinfo, create_connection, gethostbyname
    urllib.request.urlopen = urlopen
''')


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: fresh project cache (no fonts, no settings yet), network guard, tiny data."""
    root = tmp_path_factory.mktemp("det")
    guard = root / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    e = dict(os.environ)
    for k in [k for k in e if k.startswith("YOLO_") or k.startswith("ULTRALYTICS_")]:
        e.pop(k)
    e.update(PYTHONPATH=os.pathsep.join([str(guard), str(REPO_ROOT), e.get("PYTHONPATH", "")]),
             DERO_CACHE_DIR=str(root / "cache"), DERO_NET_LOG=str(root / "net.log"), PYTHONUNBUFFERED="1")
    e.pop("DERO_COCO_DIR", None)
    tiny = root / "tiny.yaml"
    tiny.write_text("builtin: shapes\ncache_name: tiny\nn_train: 12\nn_val: 4\nimgsz: 160\nseed: 0\n")
    return {"env": e, "root": root, "tiny": tiny, "log": root / "net.log"}


def run(env, *args, check=True, timeout=600):
    p = subprocess.run([sys.executable, *map(str, args)], cwd=env["root"], env=env["env"], capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def net_attempts(env):
    return env["log"].read_text() if env["log"].exists() else ""


def test_network_guard_is_active(env):
    p = run(env, "-c", "import urllib.request\ntry:\n urllib.request.urlopen('http://example.com')\n"
                       "except OSError: print('refused')", check=True)
    assert "refused" in p.stdout and "urlopen 'http://example.com'" in net_attempts(env)
    env["log"].unlink()


@pytest.fixture(scope="module")
def dero_run(env):
    """One epoch of DERO YOLOv5n (plots on) + val_det.py on its best.pt, both offline in fresh processes."""
    out = env["root"] / "dero.json"
    p = run(env, REPO_ROOT / "train_det.py", "--model", "cfg/yolov5n-dero.yaml", "--data", env["tiny"],
            "--epochs", 1, "--imgsz", 160, "--batch", 4, "--project", env["root"] / "runs", "--name", "dero",
            "--json-out", out)
    res = json.loads(out.read_text())
    vout = env["root"] / "dero_val.json"
    v = run(env, REPO_ROOT / "val_det.py", "--weights", res["best"], "--batch", 4, "--json-out", vout,
            "--project", env["root"] / "val")
    return {"train": p, "res": res, "val": v, "val_res": json.loads(vout.read_text())}


def test_offline_train_and_val_make_no_network_attempt(env, dero_run):
    assert net_attempts(env) == ""
    settings = Path(env["env"]["DERO_CACHE_DIR"]) / "ultralytics" / "Ultralytics"
    assert (settings / "Arial.ttf").is_file() and (settings / "Arial.Unicode.ttf").is_file()
    s = json.loads((settings / "settings.json").read_text())
    assert s["sync"] is False and s["mlflow"] is False and s["runs_dir"] == str(REPO_ROOT / "runs")
    assert list((Path(dero_run["res"]["save_dir"])).glob("*.jpg"))  # plots were drawn (with the local font)


def test_dero_one_epoch_training(dero_run):
    res = dero_run["res"]
    assert Path(res["best"]).is_file() and res["epochs"] == 1 and res["imgsz"] == 160
    assert "Results saved to" in dero_run["train"].stdout and "mAP50-95" in dero_run["train"].stdout
    assert 0.0 <= res["map50"] <= 1.0


def test_best_pt_reloads_in_a_fresh_process_and_validates(dero_run):
    v = dero_run["val_res"]
    for k in ("map50_95", "map50", "params", "imgsz", "weights", "data"):
        assert k in v
    assert set(v["pycocotools"]) >= {"map50_95", "map50"}
    assert v["imgsz"] == 160 and v["params"] > 2_000_000 and v["pycocotools"]["n_images"] == 4
    assert v["pycocotools"]["unmatched_predictions"] == 0 and v["pycocotools"]["images_not_in_gt"] == 0
    assert "pycocotools   mAP50-95" in dero_run["val"].stdout
    assert abs(v["map50_95"] - v["pycocotools"]["map50_95"]) < 0.05


def test_onnx_export_matches_pytorch(dero_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import shutil

    from yolo_dero.ultra import DeroYOLO

    best = tmp_path / "best.pt"
    shutil.copy(dero_run["res"]["best"], best)
    model = DeroYOLO(str(best))
    f = model.export(format="onnx", imgsz=160, device="cpu")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 160, 160)
    sess = ort.InferenceSession(f)
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    ref = DeroYOLO(str(best)).model.float().eval()
    with torch.no_grad():
        pt_out = ref(x)[0].numpy()
    assert onnx_out.shape == pt_out.shape
    # rows 0-3 are box coordinates in pixels, decoded as the expectation of a 16-bin softmax times the stride:
    # float32 rounding of equivalent formulations of a briefly trained DERO model moves them by up to ~0.2 px, so they
    # get half a pixel; the class scores get 1e-3. A wrong export (a misplaced pad, a lost shortcut) misses both.
    box_err = np.abs(onnx_out[:, :4] - pt_out[:, :4]).max()
    assert box_err < 0.5, box_err
    assert np.allclose(onnx_out[:, 4:], pt_out[:, 4:], rtol=1e-3, atol=1e-3), np.abs(onnx_out - pt_out)[:, 4:].max()
    # predict through Ultralytics with both the .pt and the .onnx: same detections
    root = yaml.safe_load(Path(dero_run["res"]["data"]).read_text())["path"]
    image = str(sorted((Path(root) / "images" / "val").glob("*.jpg"))[0])
    r_pt = model.predict(image, imgsz=160, conf=0.001, device="cpu", verbose=False)[0].boxes
    r_onnx = DeroYOLO(f, task="detect").predict(image, imgsz=160, conf=0.001, device="cpu", verbose=False)[0].boxes
    assert len(r_pt) == len(r_onnx) > 0
    assert torch.allclose(r_pt.xyxy[:10].cpu(), r_onnx.xyxy[:10].cpu(), atol=0.5)


def test_plain_one_epoch_with_bad_labels(env, tmp_path):
    from yolo_dero.datasets import generate_shapes
    from yolo_dero.nn.dero import DeroUnit

    y = generate_shapes(tmp_path / "bad", n_train=12, n_val=4, imgsz=160, seed=1)
    labels = sorted((y.parent / "labels" / "train").iterdir())
    labels[0].write_text(labels[0].read_text() + "9 0.5 0.5 0.1 0.1\n")
    n1 = len(labels[1].read_text().splitlines())
    labels[1].write_text(labels[1].read_text() + "0 1.4 0.5 0.1 0.1\n")
    out = tmp_path / "plain.json"
    p = run(env, REPO_ROOT / "train_det.py", "--model", "cfg/yolov5n-plain.yaml", "--data", y, "--epochs", 1,
            "--imgsz", 160, "--batch", 4, "--project", tmp_path / "runs", "--name", "plain", "--plots", "false",
            "--json-out", out)
    n0 = len(labels[0].read_text().splitlines())
    assert f"{labels[0]}:{n0}: class 9 out of range 0-5 -> image skipped" in p.stdout
    assert f"{labels[1]}:{n1 + 1}: coordinates outside [0, 1]" in p.stdout
    res = json.loads(out.read_text())
    ckpt = torch.load(res["best"], map_location="cpu", weights_only=False)
    units = [m for m in ckpt["model"].modules() if isinstance(m, DeroUnit)]
    assert units and all(u.shortcut is None for u in units)
    assert not any("shortcut" in n for n, _ in ckpt["model"].named_parameters())


STOP_AFTER_FIRST_EPOCH = textwrap.dedent('''
    import sys
    from yolo_dero.ultra import model as M

    _init = M.DeroDetectionTrainer.__init__

    def __init__(self, *a, **k):
        _init(self, *a, **k)

        def stop(trainer):
            if trainer.epoch == 0:
                raise KeyboardInterrupt  # as if Ctrl-C arrived right after epoch 1 was saved

        self.add_callback("on_model_save", stop)
        self.add_callback("on_train_start", lambda trainer: print("training", type(trainer.model).__name__))

    M.DeroDetectionTrainer.__init__ = __init__
    from yolo_dero.ultra.cli import train_main

    sys.exit(train_main(sys.argv[1:]))
''')


def test_interrupted_training_resumes_to_the_same_epochs(env, tmp_path):
    script = tmp_path / "interrupted_train.py"
    script.write_text(STOP_AFTER_FIRST_EPOCH)
    p = run(env, script, "--data", env["tiny"], "--epochs", 2, "--imgsz", 160, "--batch", 4, "--plots", "false",
            "--project", tmp_path / "runs", "--name", "r", check=False)
    assert p.returncode == 130, p.stdout[-3000:] + p.stderr[-3000:]
    last = tmp_path / "runs" / "r" / "weights" / "last.pt"
    assert f"--resume {last}" in p.stdout
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0
    out = tmp_path / "resumed.json"
    q = run(env, REPO_ROOT / "train_det.py", "--resume", last, "--json-out", out)
    assert "Resuming" in q.stdout
    res = json.loads(out.read_text())
    assert res["epochs"] == 2 and res["save_dir"] == str(tmp_path / "runs" / "r")
    rows = (tmp_path / "runs" / "r" / "results.csv").read_text().strip().splitlines()
    assert [r.split(",")[0].strip() for r in rows[1:]] == ["1", "2"]
    # a finished run has nothing left to resume: clear error
    done = run(env, REPO_ROOT / "train_det.py", "--resume", res["last"], check=False)
    assert done.returncode == 2 and "nothing to resume" in done.stderr


@pytest.mark.parametrize("kind, wrapper", [("feature", "DistillationModel"), ("head", "HeadDistillationModel")])
def test_distillation_resumes_and_saves_only_the_student(env, dero_run, tmp_path, kind, wrapper):
    """--teacher: Ultralytics' distillation wrapper through our trainer, with its feature loss or ours at the head's
    outputs. An interrupted run resumes with its teacher, weight and kind of distillation (its last.pt holds the
    wrapper), the loss has a distillation term in every epoch, and best.pt holds the student alone."""
    teacher = dero_run["res"]["best"]  # any detector can teach; the original YOLOv5n in the study
    bad = run(env, REPO_ROOT / "train_det.py", "--data", env["tiny"], "--distill-weight", 3, check=False)
    assert bad.returncode == 2 and "--distill-weight needs --teacher" in bad.stderr
    script = tmp_path / "interrupted_train.py"
    script.write_text(STOP_AFTER_FIRST_EPOCH)
    p = run(env, script, "--data", env["tiny"], "--epochs", 2, "--imgsz", 160, "--batch", 4, "--plots", "false",
            "--project", tmp_path / "runs", "--name", "kd", "--teacher", teacher, "--distill", kind,
            "--distill-weight", 3, check=False)
    assert p.returncode == 130, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"training {wrapper}\n" in p.stdout
    last = tmp_path / "runs" / "kd" / "weights" / "last.pt"
    import yolo_dero.ultra  # noqa: F401  (its offline set-up comes before the unpickling imports Ultralytics)

    assert type(torch.load(last, map_location="cpu", weights_only=False)["ema"]).__name__ == wrapper
    out = tmp_path / "resumed.json"
    q = run(env, script, "--resume", last, "--json-out", out)  # stops only after a first epoch: runs to the end
    assert f"training {wrapper}\n" in q.stdout
    rows = (tmp_path / "runs" / "kd" / "results.csv").read_text().strip().splitlines()
    col = [c.strip() for c in rows[0].split(",")].index("train/dis_loss")
    assert [float(r.split(",")[col]) > 0 for r in rows[1:]] == [True, True]
    best = torch.load(json.loads(out.read_text())["best"], map_location="cpu", weights_only=False)
    student = best["ema"] if best.get("ema") is not None else best["model"]
    assert type(student).__name__ == "DeroDetectionModel" and not hasattr(student, "teacher_model")
    assert best["train_args"]["distill_model"] == str(Path(teacher).resolve()) and best["train_args"]["dis"] == 3.0
    from yolo_dero.ultra import DeroDetectionModel
    from yolo_dero.ultra.model import DEFAULT_DETECTOR

    fresh = DeroDetectionModel(DEFAULT_DETECTOR, nc=student.yaml["nc"], verbose=False)  # the student, no projector
    assert sum(t.numel() for t in student.parameters()) == sum(t.numel() for t in fresh.parameters())


def test_a_teacher_with_other_classes_is_refused_before_training(env, tmp_path):
    """A teacher must predict the student's classes: one trained on other data is named in one line, exit 2."""
    from yolo_dero.ultra import DeroDetectionModel

    ck = tmp_path / "other17.pt"
    torch.save({"model": DeroDetectionModel("cfg/yolov5n.yaml", nc=17, verbose=False).half(),
                "train_args": {"imgsz": 160, "task": "detect"}, "epoch": -1, "optimizer": None}, ck)
    p = run(env, REPO_ROOT / "train_det.py", "--data", env["tiny"], "--epochs", 1, "--project", tmp_path / "runs",
            "--teacher", ck, check=False)
    assert p.returncode == 2 and f"--teacher '{ck}' predicts 17 classes, the data has" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # refused before Ultralytics made a run folder


def test_val_det_on_a_tiny_coco_layout(env, tmp_path):
    """data/coco.yaml path logic (--data-path) and the 80->91 map, end to end through val_det.py."""
    from test_det_data import _coco_like

    from yolo_dero.ultra import DeroDetectionModel

    root = _coco_like(tmp_path / "coco")
    names = yaml.safe_load((REPO_ROOT / "data" / "coco.yaml").read_text())["names"]
    m = DeroDetectionModel("cfg/yolov5n-dero.yaml", nc=80, verbose=False)
    m.names = names
    ck = tmp_path / "untrained80.pt"
    torch.save({"model": m.half(), "train_args": {"imgsz": 128, "task": "detect"}, "epoch": -1,
                "optimizer": None}, ck)
    out = tmp_path / "coco.json"
    p = run(env, REPO_ROOT / "val_det.py", "--weights", ck, "--data", "data/coco.yaml", "--data-path", root,
            "--imgsz", 128, "--batch", 4, "--json-out", out, "--project", tmp_path / "val")
    res = json.loads(out.read_text())
    pc = res["pycocotools"]
    assert pc["n_images"] == 4 and pc["unmatched_predictions"] == 0 and pc["images_not_in_gt"] == 0
    assert pc["n_predictions"] > 0
    assert res["coco_json"] == str(root / "annotations" / "instances_val2017.json")
    preds = json.loads(Path(res["predictions_json"]).read_text())
    from yolo_dero.ultra.cocoeval import COCO80_TO_91

    assert {d["category_id"] for d in preds} <= set(COCO80_TO_91)  # Ultralytics wrote COCO ids
    assert net_attempts(env) == ""
    assert "pycocotools" in p.stdout
    # without the dataset: an error that names the expected paths (no download)
    q = run(env, REPO_ROOT / "val_det.py", "--weights", ck, "--data", "data/coco.yaml", check=False)
    assert q.returncode == 2 and "DERO_COCO_DIR" in q.stderr and "val2017.txt" in q.stderr


def test_bad_weights_give_clear_errors(tmp_path, capsys):
    from yolo_dero.ultra import CheckpointError, check_checkpoint
    from yolo_dero.ultra.cli import val_main

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt or not a .pt file"):
        check_checkpoint(corrupt)
    other = tmp_path / "resnet_state_dict.pt"
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="weights of another architecture"):
        check_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        check_checkpoint(tmp_path / "missing.pt")
    assert val_main(["--weights", str(corrupt)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_mcu_val_scores_the_int8_export_of_a_trained_detector(env, dero_run, tmp_path):
    """``python -m yolo_dero.mcu val``: the checkpoint's own data by default, float and int8 mAP from the same decode,
    the .tflite kept where asked; offline."""
    import importlib.util

    if importlib.util.find_spec("litert_torch") is None and not os.environ.get("CI"):
        pytest.skip("deployment packages not installed: pip install -r requirements-mcu.txt")
    out, tfl = tmp_path / "val.json", tmp_path / "d.tflite"
    p = run(env, "-m", "yolo_dero.mcu", "val", "--weights", dero_run["res"]["best"], "--imgsz", 64, "--num-calib", 4,
            "--tflite", tfl, "--json", out)
    r = json.loads(out.read_text())
    assert Path(r["data"]).name.startswith("tiny") and r["imgsz"] == 64  # the data it was trained on
    assert tfl.is_file() and r["tflite_bytes"] == tfl.stat().st_size
    for form in ("float", "int8"):
        assert 0.0 <= r[form]["map50_95"] <= 1.0 and r[form]["pycocotools"]["n_images"] == 4
    assert "int8 - float: mAP50-95" in p.stdout and net_attempts(env) == ""
    missing = run(env, "-m", "yolo_dero.mcu", "val", "--weights", tmp_path / "none.pt", check=False)
    assert missing.returncode == 2 and "none.pt" in missing.stderr and "Traceback" not in missing.stderr


def test_pycocotools_scores_only_the_images_ultralytics_validated(dero_run, tmp_path):
    """An image Ultralytics drops (a bad label) is left out of pycocotools' set too, so both mAPs cover the same
    images."""
    from yolo_dero.datasets import generate_shapes
    from yolo_dero.ultra.evaluate import evaluate_detector

    y = generate_shapes(tmp_path / "s", n_train=1, n_val=4, imgsz=96, seed=0)
    sorted((y.parent / "labels" / "val").iterdir())[0].write_text("99 0.5 0.5 0.2 0.2\n")
    r = evaluate_detector(dero_run["res"]["best"], data=str(y), imgsz=96, batch=4, project=str(tmp_path / "val"),
                          label_scan=False)
    assert r["pycocotools"]["n_images"] == 3


ANNEAL_PROBE = textwrap.dedent('''
    import sys
    import torch
    from yolo_dero.nn import DeroUnit
    from yolo_dero.ultra import model as M
    from yolo_dero.ultra.anneal import student_model

    _init = M.DeroDetectionTrainer.__init__

    def unit_t(model):
        return next(m for m in student_model(model).modules()
                    if isinstance(m, DeroUnit) and not isinstance(m.act, torch.nn.Identity)).act_linearity

    def __init__(self, *a, **k):
        _init(self, *a, **k)

        def stop(trainer):
            if trainer.epoch == 0 and "--resume" not in sys.argv:
                raise KeyboardInterrupt  # as if Ctrl-C arrived right after epoch 1 was saved

        self.add_callback("on_train_batch_start", lambda tr: print(
            f"batch {tr.epoch} {len(tr.train_loader)} t={unit_t(tr.model):.6f} ema={unit_t(tr.ema.ema):.6f}"))
        self.add_callback("on_model_save", stop)
        self.add_callback("on_train_end", lambda tr: print(f"end t={unit_t(tr.model):.6f}"))

    M.DeroDetectionTrainer.__init__ = __init__
    from yolo_dero.ultra.cli import train_main

    sys.exit(train_main(sys.argv[1:]))
''')


def test_activation_anneal_runs_per_batch_resumes_and_ends_as_built(env, tmp_path):
    """--act-anneal-epochs: every batch of the first N epochs trains with t = 1 - (epoch + batch / batches) / N on the
    trained model (the EMA copy, which validates and is saved, stays at 0); the length travels in the checkpoint's
    model YAML, so a resumed run continues the schedule; the model ends as built and folds. Bad lengths and models
    without DERO units are refused before training."""
    rep = "cfg/yolov5n-dero-rep-c3.yaml"
    common = ["--data", env["tiny"], "--imgsz", 160, "--batch", 4, "--plots", "false", "--project", tmp_path / "runs"]
    too_long = run(env, REPO_ROOT / "train_det.py", "--model", rep, "--epochs", 3, "--act-anneal-epochs", 3, *common,
                   check=False)
    assert too_long.returncode == 2 and "must be in (0, 2]" in too_long.stderr, too_long.stderr[-2000:]
    original = run(env, REPO_ROOT / "train_det.py", "--model", "cfg/yolov5n.yaml", "--epochs", 2,
                   "--act-anneal-epochs", 1, *common, check=False)
    assert original.returncode == 2 and "no DERO unit with an activation" in original.stderr, original.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # refused before Ultralytics made a run folder

    script = tmp_path / "anneal_probe.py"
    script.write_text(ANNEAL_PROBE)
    p = run(env, script, "--model", rep, "--epochs", 3, "--act-anneal-epochs", 2, "--name", "a", *common, check=False)
    assert p.returncode == 130, p.stdout[-3000:] + p.stderr[-3000:]
    last = tmp_path / "runs" / "a" / "weights" / "last.pt"
    import yolo_dero.ultra  # noqa: F401  (its offline set-up comes before the unpickling imports Ultralytics)

    assert torch.load(last, map_location="cpu", weights_only=False)["ema"].yaml["act_anneal_epochs"] == 2
    out = tmp_path / "resumed.json"
    q = run(env, script, "--resume", last, "--json-out", out)
    seen = [m.split() for m in re.findall(r"batch \d+ \d+ t=\S+ ema=\S+", p.stdout + q.stdout)]
    epochs = [int(s[1]) for s in seen]
    assert sorted(set(epochs)) == [0, 1, 2], epochs
    nb = int(seen[0][2])
    assert len(seen) == 3 * nb
    for k, (_, epoch, _, t, ema) in enumerate(seen):
        expected = max(0.0, 1.0 - (int(epoch) + (k % nb) / nb) / 2)
        assert float(t.split("=")[1]) == pytest.approx(expected, abs=1e-6), (k, seen)
        assert float(ema.split("=")[1]) == 0.0
    assert float(seen[0][3].split("=")[1]) == 1.0 and float(seen[-1][3].split("=")[1]) == 0.0
    assert "end t=0.000000" in q.stdout
    from yolo_dero.nn import DeroUnit
    from yolo_dero.ultra import DeroYOLO

    best = DeroYOLO(json.loads(out.read_text())["best"])
    best.model.fuse(verbose=False)  # folds: refused for any unit left at t != 0
    assert not any(isinstance(m, DeroUnit) for m in best.model.modules())
