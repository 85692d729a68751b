"""The accuracy study's pieces: train.py as a library (history, resume, per-iteration schedule, distillation,
DERO styles), the real-image benchmarks, and the study command end to end on a one-epoch budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import classification.train as T
from classification.data import make_shapes_dataset
from yolo_dero import study


def _args(data: Path, out: Path, *extra) -> list:
    return ["--model", "mcunet_v4_dero", "--data-path", str(data), "--output-dir", str(out), "-b", "8", "-j", "0",
            "--seed", "0", "--print-freq", "1000", "--train-crop-size", "32", "--val-resize-size", "32",
            "--val-crop-size", "32", "--lr", "0.01", *map(str, extra)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("study") / "tiny", train_per_class=6, val_per_class=3,
                               size=32, num_classes=3)


def test_run_returns_history_and_resume_keeps_it(tiny, tmp_path):
    out = tmp_path / "run"
    h = T.run(T.get_args_parser().parse_args(_args(tiny, out, "--epochs", "1")))
    assert [e.epoch for e in h.epochs] == [0] and h.acc1 == h.epochs[0].acc1
    assert h.epochs[0].train_images == 18 and h.epochs[0].train_seconds > 0
    assert math.isfinite(h.epochs[0].first_loss) and h.checkpoint == str(out / "checkpoint.pth")
    seen = []
    h2 = T.run(T.get_args_parser().parse_args(_args(tiny, out, "--epochs", "2", "--resume", out / "checkpoint.pth")),
               on_epoch_end=seen.append)
    assert [e.epoch for e in h2.epochs] == [0, 1]  # epoch 0 read back from the checkpoint
    assert h2.epochs[0] == h.epochs[0] and [e.epoch for e in seen] == [1]


def test_channels_last_trains_nhwc_and_its_checkpoint_evaluates_without_the_flag(tiny, tmp_path):
    out = tmp_path / "nhwc"
    h = T.run(T.get_args_parser().parse_args(_args(tiny, out, "--epochs", "1", "--channels-last")))
    assert math.isfinite(h.epochs[0].train_loss)
    sd = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    w = sd["features.stem.conv.weight"]  # a 3x3 conv over 3 channels: the layouts differ, and it trained in NHWC
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    again = T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "eval", "--test-only", "--weights",
                                                       out / "checkpoint.pth")))
    assert abs(again.acc1 - h.acc1) < 1e-6  # the same weights in either layout: the same predictions


def test_per_iteration_schedule_warms_up_within_the_epoch(tiny, tmp_path):
    args = T.get_args_parser().parse_args(_args(tiny, tmp_path, "--epochs", "2", "--lr-warmup-epochs", "1",
                                                "--lr-warmup-method", "linear", "--lr-scheduler",
                                                "cosineannealinglr", "--lr-step-unit", "iter"))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched = T.build_scheduler(opt, args, iters_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(args.lr * args.lr_warmup_decay)
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] < lrs[4] == pytest.approx(args.lr)  # warm-up over the first epoch
    assert lrs[4] > lrs[5] > lrs[6] > lrs[7]  # cosine over the second, step by step


def test_distillation_and_dero_style_flags(tiny, tmp_path):
    teacher = tmp_path / "teacher"
    T.run(T.get_args_parser().parse_args(_args(tiny, teacher, "--epochs", "1", "--model", "mcunet_v4")))
    h = T.run(T.get_args_parser().parse_args(_args(
        tiny, tmp_path / "student", "--epochs", "1", "--dero-style", "seed", "--shortcut-gain", "0",
        "--teacher", "mcunet_v4", "--teacher-weights", teacher / "checkpoint.pth", "--distill-alpha", "1.0")))
    assert len(h.epochs) == 1 and math.isfinite(h.epochs[0].train_loss)
    sd = torch.load(tmp_path / "student" / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    assert any(k.endswith("shortcut.bn.weight") and k.startswith("features.stage1.0.depthwise") for k in sd)
    with pytest.raises(T.UserError, match="--teacher-weights"):
        T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "x", "--epochs", "1", "--teacher", "mcunet_v4")))
    with pytest.raises(T.UserError, match="DERO models only"):
        T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "y", "--epochs", "1", "--model", "resnet34",
                                                   "--dero-style", "seed")))
    with pytest.raises(T.UserError, match="unknown DERO style"):
        T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "z", "--epochs", "1", "--dero-style", "nope")))


def test_distiller_loss_is_kl_at_temperature():
    teacher = torch.nn.Linear(4, 3)
    d = T.Distiller(teacher, alpha=1.0, temperature=2.0)
    x = torch.randn(5, 4)
    assert float(d.loss(torch.tensor(9.0), teacher(x).detach(), x)) == pytest.approx(0.0, abs=1e-6)
    assert float(d.loss(torch.tensor(9.0), torch.zeros(5, 3), x)) > 0
    assert float(T.Distiller(teacher, 0.0, 2.0).loss(torch.tensor(9.0), torch.zeros(5, 3), x)) == 9.0


def test_real_image_sources_are_real_and_deterministic():
    from yolo_dero.datasets.real_images import digit_on_photo, mnist_digits, photographs

    digits, labels = mnist_digits()
    assert digits.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    photos = photographs()
    assert len(photos) >= 15 and all(p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= 150 for p in photos)
    a = digit_on_photo(np.random.default_rng([0, 7]), digits[7], 32)
    b = digit_on_photo(np.random.default_rng([0, 7]), digits[7], 32)
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and a.std() > 10


def test_photo_digits_detection_set(tmp_path):
    import yaml

    from yolo_dero.datasets.photo_digits_det import generate_photo_digits_det

    y = generate_photo_digits_det(tmp_path / "det", n_train=6, n_val=3, imgsz=96)
    d = yaml.safe_load(y.read_text())
    assert d["names"] == {i: str(i) for i in range(10)}
    labels = sorted((tmp_path / "det" / "labels" / "train").glob("*.txt"))
    rows = [list(map(float, line.split())) for f in labels for line in f.read_text().splitlines()]
    assert len(labels) == 6 and rows and all(0 <= r[0] <= 9 and 0 < r[3] <= 1 and 0 < r[4] <= 1 for r in rows)
    coco = json.loads((tmp_path / "det" / "annotations" / "instances_val.json").read_text())
    assert len(coco["images"]) == 3 and coco["annotations"]
    assert generate_photo_digits_det(tmp_path / "det", n_train=6, n_val=3, imgsz=96) == y  # cached


def _fake_run(out: Path, arm: str, seed: int, acc: float, diverged=None) -> None:
    rec = {"arch": "resnet34", "arm": arm, "model": "m", "seed": seed, "acc1": acc, "best_acc1": acc,
           "first_loss": 2.3, "epoch1_loss": 2.0 if diverged is None else None, "diverged": diverged,
           "train_img_s": 100.0, "budget_argv": ["--epochs", "1"]}
    study._write_json(out / "cls-x" / "resnet34" / arm / f"seed{seed}.json", rec)


def test_table_mean_std_and_diverged(tmp_path):
    for s, acc in enumerate([80.0, 82.0, 84.0]):
        _fake_run(tmp_path, "original", s, acc)
    _fake_run(tmp_path, "dero", 0, 90.0)
    _fake_run(tmp_path, "dero", 1, 10.0, diverged="nan")
    text = study.write_table(tmp_path).read_text()
    orig = next(line for line in text.splitlines() if line.startswith("| original"))
    assert "82.00 ± 2.00" in orig and "0/3" in orig
    dero = next(line for line in text.splitlines() if line.startswith("| dero"))
    assert "50.00 ± 56.57" in dero and "1/2" in dero and "nan" in dero


def test_int8_records_have_their_own_table(tmp_path):
    """int8 records sit beside the training runs; the accuracy table ignores them, the int8 table reads them."""
    for s, acc in enumerate([80.0, 82.0]):
        _fake_run(tmp_path, "dero-rep", s, acc)
        study._write_json(tmp_path / "cls-x" / "resnet34" / "dero-rep" / f"int8_seed{s}.json",
                          {"arch": "resnet34", "arm": "dero-rep", "seed": s, "float_acc1": acc,
                           "int8_acc1": acc - 1.0, "agreement": 97.0})
    text = study.write_table(tmp_path).read_text()
    assert "81.00 ± 1.41" in next(line for line in text.splitlines() if line.startswith("| dero-rep"))
    int8 = study.write_int8_table(tmp_path, "cls-x").read_text()
    row = next(line for line in int8.splitlines() if line.startswith("| resnet34 | dero-rep"))
    assert "81.00 ± 1.41 | 80.00 ± 1.41 | -1.00 ± 0.00" in row


@pytest.mark.slow
def test_study_command_trains_records_and_skips_done_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["cls", "--arch", "mcunet_v4", "--arms", "original", "dero-kd", "--seeds", "0", "--epochs", "1",
            "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--device", "cpu"]
    assert study.main(argv) == 0
    files = sorted((tmp_path / "out").rglob("seed0.json"))
    assert [f.parent.name for f in files] == ["dero-kd", "original"]
    rec = json.loads(files[0].read_text())
    assert "--teacher" in rec["argv"] and len(rec["epochs"]) == 1 and 0 <= rec["acc1"] <= 100
    assert "| dero-kd |" in (tmp_path / "out" / "accuracy_study.md").read_text()
    capsys.readouterr()
    assert study.main(argv) == 0
    assert capsys.readouterr().out.count("done already") == 2


def test_test_only_without_weights_is_refused(tiny, tmp_path):
    with pytest.raises(T.UserError, match="--test-only needs"):
        T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path, "--test-only")))


def test_training_speed_times_every_arm(tmp_path):
    speed = study.training_speed("mcunet_v4", imgsz=32, batch=2, steps=1, rounds=3)
    assert set(speed) == {"original", "plain", "dero", "dero-rep", "dero-seed", "dero-annealing"}
    assert all(s["img_s"] > 0 for s in speed.values()) and speed["original"]["vs_original"] == 1.0
    for s in speed.values():
        assert 0 < s["vs_original_q1"] <= s["vs_original"] <= s["vs_original_q3"]

    # the ratio pairs the arms round by round: a round where the machine slowed the arm alone (round 2) or the
    # original alone (round 3) moves one ratio each, where the ratio of the medians would read 0.25, not 0.5
    assert study.paired_ratio([1.0, 0.5, 0.5], [2.0, 2.0, 0.5]) == (0.5, 0.25, 1.0)

    md = study.write_speed(tmp_path, ["mcunet_v4"], imgsz=32, batch=2, steps=1, rounds=1).read_text()
    assert "| mcunet_v4 | 2, 32 |" in md and "| dero / original | dero-rep / original |" in md
    assert "halfway through its activation anneal" in md and "mcunet_v4 " in md.split("halfway")[1]
    from yolo_dero.nn import DeroUnit

    fns = study._speed_step_fns("mcunet_v4", 32, 2, "cpu")
    linearity = {arm: {u.act_linearity for u in m.modules() if isinstance(u, DeroUnit)} for arm, (m, _) in fns.items()}
    assert 0.5 in linearity["dero-annealing"] and linearity["dero"] == {0.0}


def test_training_speed_of_the_detector_trains_every_arm(tmp_path):
    """YOLOv5n's arms train on Ultralytics' detection loss: a finite loss whose gradients reach the weights, timed."""
    fns = study._speed_step_fns("yolov5n", 64, 2, "cpu")
    assert set(fns) == set(study.YOLO_SPEED_YAMLS) | set(study.YOLO_SPEED_DISTILLED)
    for arm in ["dero", "dero-rep-c3-hkd"]:  # the distilled one: its student learns, its teacher stays frozen
        model, loss_fn = fns[arm]
        loss = loss_fn()
        assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
        loss.backward()
        student = getattr(model, "student_model", model)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in fns["dero-rep-c3-hkd"][0].teacher_model.parameters())
    md = study.write_speed(tmp_path, ["yolov5n"], det_imgsz=64, det_batch=2, steps=1, rounds=1).read_text()
    assert "| yolov5n | 2, 64 |" in md
    assert "dero-rep-c3 (`cfg/yolov5n-dero-rep-c3.yaml`)" in md and "of the original" in md  # the detector's default
    assert "dero-rep-c3-hkd (`cfg/yolov5n-dero-rep-c3.yaml` distilled" in md


def test_latency_times_every_form_of_every_family(tmp_path, capsys):
    from yolo_dero.nn import DeroUnit, FoldedUnit, FusedUnit

    models = study.latency_models("mcunet_v4")
    assert set(models) == set(study.LATENCY_ARMS)
    assert not any(isinstance(m, (DeroUnit, FusedUnit)) for m in models["dero rep, folded"].modules())
    assert any(isinstance(m, FusedUnit) for m in models["dero seed, fused"].modules())
    assert any(isinstance(m, FoldedUnit) for m in models["plain"].modules())
    md = study.write_latency(tmp_path, [("mcunet_v4", 32), ("yolov5n", 64)], iters=1, rounds=1).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| yolov5n @64 |"))
    assert "n/a" in row  # YOLOv5n's DERO units are of the seed's form: no separate default arm
    assert "| mcunet_v4 @32 |" in md and "seed fused / plain" in md
    import torch

    md = study.write_latency(tmp_path, [("mcunet_v4", 32)], iters=1, rounds=1, flush_denormal=True).read_text()
    assert "denormal floats flushed to zero" in md
    assert torch.tensor(1e-40).item() != 0.0  # the setting is restored afterwards
    assert study.main(["latency", "--out", str(tmp_path), "--cases", "resnet18@64"]) == 2
    assert "unknown architecture resnet18" in capsys.readouterr().err


def test_latency_compile_wraps_every_arm(tmp_path, monkeypatch):
    """``--compile`` times each arm through ``torch.compile`` (stubbed here: compiling six models takes minutes)."""
    compiled = []

    def fake_compile(model):
        compiled.append(model)
        return lambda x: model(x)

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert study.main(["latency", "--out", str(tmp_path), "--cases", "mcunet_v4@32", "--iters", "1",
                       "--rounds", "1", "--compile"]) == 0
    assert len(compiled) == len(study.LATENCY_ARMS)
    assert "compiled by `torch.compile`" in (tmp_path / "latency.md").read_text()
    assert json.loads((tmp_path / "latency.json").read_text())["settings"]["compile"] is True
    assert study.main(["latency", "--out", str(tmp_path), "--cases", "yolov5n@64", "--compile"]) == 2


def test_same_padding_is_recorded_and_a_mismatch_refused(tiny, tmp_path):
    from yolo_dero.nn.padding import uses_same_padding

    out = tmp_path / "same"
    args = T.get_args_parser().parse_args(_args(tiny, out, "--epochs", "1", "--same-padding"))
    assert uses_same_padding(T.build_model(args, 3))
    T.run(args)
    ckpt = out / "checkpoint.pth"
    with pytest.raises(T.UserError, match="trained with --same-padding: add --same-padding"):
        T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "eval", "--test-only", "--weights", ckpt)))
    h = T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "eval", "--test-only", "--weights", ckpt,
                                                   "--same-padding")))
    assert math.isfinite(h.acc1)


def test_gradient_clipping_is_part_of_the_budget():
    base = ["cls", "--arch", "mcunet_v4", "--lr", "0.05"]
    plain, clipped = study.parser().parse_args(base), study.parser().parse_args(base + ["--clip-grad-norm", "1"])
    assert study.budget_tag(clipped) == study.budget_tag(plain) + "-clip1"  # never mixed in one table
    assert "--clip-grad-norm" not in study.cls_budget_argv(plain)
    argv = study.cls_budget_argv(clipped)
    assert argv[argv.index("--clip-grad-norm") + 1] == "1"


def test_a_detection_arm_can_override_keys_of_its_yaml(tmp_path):
    import yaml

    from yolo_dero.study import DET_ARMS, det_model_cfg, det_model_label

    assert det_model_cfg("dero", tmp_path, 40) == DET_ARMS["dero"]
    path = det_model_cfg("dero-poststem", tmp_path, 40)
    cfg = yaml.safe_load(open(path))
    assert cfg["dero_style"] == "identity-poststem" and list(cfg)[:2] == ["nc", "scales"]  # order kept
    assert path.endswith("yolov5n-dero-poststem.yaml")  # the scale letter survives in the name
    assert det_model_label("dero-poststem", 40) == "cfg/yolov5n-dero.yaml with dero_style: identity-poststem"
    assert det_model_label("dero-rep-c3par-anneal", 40) == "cfg/yolov5n-dero-rep-c3.yaml with act_anneal_epochs: 20"
    # the anneal arms anneal over half of the budget's epochs, and the copy builds with it
    annealed = det_model_cfg("dero-rep-c3par-anneal", tmp_path, 40)
    assert yaml.safe_load(open(annealed))["act_anneal_epochs"] == 20
    from yolo_dero.ultra import DeroDetectionModel
    from yolo_dero.ultra.anneal import check_activation_anneal

    assert check_activation_anneal(DeroDetectionModel(annealed, nc=3, verbose=False), 40) == 20


def test_a_detection_arm_can_edit_the_layer_rows(tmp_path):
    import yaml

    from yolo_dero.paths import REPO_ROOT
    from yolo_dero.study import det_model_cfg
    from yolo_dero.ultra import DeroDetectionModel

    def c3(cfg):
        return [(sec, row) for sec in ("backbone", "head") for row in cfg[sec] if row[2].startswith("DeroC3")]

    base = c3(yaml.safe_load(open(REPO_ROOT / "cfg" / "yolov5n-dero-rep.yaml")))
    wide = c3(yaml.safe_load(open(det_model_cfg("dero-rep-wide", tmp_path, 40))))
    assert [row[3] for _, row in wide] == [[row[3][0], True, 0.6] for _, row in base]
    neck = c3(yaml.safe_load(open(det_model_cfg("dero-rep-necknosc", tmp_path, 40))))
    assert [row[3][1] for _, row in neck] == [sec == "backbone" for sec, _ in neck]  # only the neck's C3s lose theirs
    only = yaml.safe_load(open(det_model_cfg("dero-rep-c3only", tmp_path, 40)))
    convs = [row[3] for sec in ("backbone", "head") for row in only[sec] if row[2] == "DeroConv"]
    assert len(convs) == 9 and all(len(a) == 5 and a[4] is False for a in convs) and convs[0][:4] == [64, 6, 2, 2]
    # the edited rows build: a wider chain has more parameters, a unit without its shortcut loses its shortcut BatchNorm
    def n(arm):
        model = DeroDetectionModel(det_model_cfg(arm, tmp_path, 40), nc=3, verbose=False)
        return sum(p.numel() for p in model.parameters())

    rep = n("dero-rep")
    assert n("dero-rep-wide") > rep > n("dero-rep-necknosc") and rep > n("dero-rep-c3only")


def test_the_bias_warmup_is_part_of_the_detection_budget():
    base = ["det", "--epochs", "20"]
    default, zero = study.parser().parse_args(base), study.parser().parse_args(base + ["--warmup-bias-lr", "0"])
    assert study.budget_tag(zero) == study.budget_tag(default) + "-wb0" and default.warmup_bias_lr is None
    faster = study.parser().parse_args(base + ["--lr0", "0.004", "--warmup-epochs", "2"])
    assert study.budget_tag(faster) == study.budget_tag(default) + "-lr0.004-w2"


def test_a_distilled_detection_arm_needs_the_same_seeds_original(tmp_path):
    args = study.parser().parse_args(["det", "--runs", str(tmp_path), "--epochs", "3"])
    assert study.det_teacher("dero", 0, args) is None and "dero-kd" not in study.DET_DEFAULT_ARMS
    with pytest.raises(SystemExit, match="run the 'original' arm first"):
        study.det_teacher("dero-kd", 1, args)
    best = tmp_path / study.budget_tag(args) / "yolov5n" / "original" / "seed1" / "weights" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    assert study.det_teacher("dero-kd", 1, args) == best
    # distillation at the head's outputs: the same teacher, never a default arm
    assert study.det_teacher("dero-rep-c3par-hkd", 1, args) == best
    assert not {"dero-rep-c3par-hkd", "plain-rep-c3-hkd"} & set(study.DET_DEFAULT_ARMS)


def test_int8_goes_on_past_an_untrained_run_and_names_it(tmp_path, capsys):
    """A study run in pieces: the recorded runs stay in the table, an untrained one is listed with the command that
    trains it, and the exit code says something is missing."""
    study._write_json(tmp_path / "cls-x" / "resnet34" / "dero-rep" / "int8_seed0.json",
                      {"arch": "resnet34", "arm": "dero-rep", "seed": 0, "float_acc1": 80.0, "int8_acc1": 79.0,
                       "agreement": 97.0})
    rc = study.main(["int8", "--budget", "cls-x", "--arch", "resnet34", "--arms", "dero-rep", "original",
                     "--seeds", "0", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "| resnet34 | dero-rep | 0 |" in out
    assert "original" in err and "train the arm first" in err and "--arms original --seeds 0" in err


def test_activation_anneal_runs_its_schedule_and_ends_as_built(tiny, tmp_path, monkeypatch):
    """--act-anneal-epochs N: t falls per iteration from 1 to 0 over N epochs, the later epochs train at t = 0, a
    resumed run continues the schedule, and a value that leaves no epoch at t = 0 or a model without DERO units is
    refused."""
    seen = []
    real = T.set_activation_linearity
    monkeypatch.setattr(T, "set_activation_linearity", lambda m, t: seen.append(t) or real(m, t))

    class Stop(Exception):
        pass

    def stop_after_first(rec):
        raise Stop

    anneal = ["--epochs", "3", "--dero-style", "rep-slice", "--act-anneal-epochs", "2"]
    with pytest.raises(Stop):
        T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "a", *anneal)), on_epoch_end=stop_after_first)
    first = list(seen)  # the schedule's calls (the length check sets t = 0 through yolo_dero.nn)
    seen.clear()
    h = T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "a", *anneal, "--resume",
                                                   tmp_path / "a" / "checkpoint.pth")))
    ts = first + seen
    assert len(first) == 3 and len(ts) == 9  # 18 images, batch 8: 3 iterations an epoch
    assert ts[0] == 1.0 and ts[3] == pytest.approx(0.5) and all(a > b for a, b in zip(ts[:6], ts[1:6]))
    assert ts[6:] == [0.0] * 3 and math.isfinite(h.epochs[-1].train_loss)
    seen.clear()
    T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "b", "--epochs", "1", "--dero-style", "rep-slice")))
    assert seen == []  # no anneal: the units are never touched
    # the default: half of the epochs for a DERO model in a re-parameterizable style (the default style), else none
    args = T.get_args_parser().parse_args(_args(tiny, tmp_path / "c", "--epochs", "2"))
    T.run(args)
    assert args.act_anneal_epochs == 1.0 and seen[0] == 1.0 and seen[-1] == 0.0
    from classification.models import get_model

    assert T.default_act_anneal(get_model("mcunet_v4_dero", num_classes=10, style="rep"), 30) == 15.0
    for name, style in (("mcunet_v4_dero", "project-slice-nodwbias"), ("mcunet_v4_plain", None), ("mcunet_v4", None)):
        assert T.default_act_anneal(get_model(name, num_classes=10, **({"style": style} if style else {})), 30) == 0
    for bad, match in ((["--epochs", "2", "--act-anneal-epochs", "2"], r"must be in \(0, 1\]"),
                       (["--epochs", "2", "--act-anneal-epochs", "1", "--model", "mcunet_v4"], "no DERO unit")):
        with pytest.raises(T.UserError, match=match):
            T.run(T.get_args_parser().parse_args(_args(tiny, tmp_path / "bad", *bad)))


def test_anneal_arms_anneal_over_half_of_the_budget(tmp_path, monkeypatch):
    """The "-anneal" arms pass --act-anneal-epochs as half of the study's --epochs, whatever the budget."""
    seen = []

    class Captured(Exception):
        pass

    def fake_run(args, on_epoch_end=None):
        seen.append(args)
        raise Captured

    monkeypatch.setattr(T, "run", fake_run)
    for epochs, half in (("30", 15.0), ("7", 3.5)):
        args = study.parser().parse_args(["cls", "--arch", "mcunet_v4", "--arms", "dero-rep-slice-anneal", "--epochs",
                                          epochs, "--runs", str(tmp_path), "--out", str(tmp_path)])
        with pytest.raises(Captured):
            study.run_cls("mcunet_v4", "dero-rep-slice-anneal", 0, args)
        assert seen[-1].act_anneal_epochs == half and seen[-1].dero_style == "rep-slice"
    assert not [a for a, (_, extra) in study.CLS_ARMS.items()
                if a.endswith("-anneal") and "--act-anneal-epochs" not in extra]
    # an arm named after a style anneals only when it says so; "dero" trains the default recipe, train.py's own
    for arm, anneal in (("dero-rep-slice", 0.0), ("dero-rep", 0.0), ("dero", None), ("plain-rep", 0.0)):
        with pytest.raises(Captured):
            study.run_cls("mcunet_v4", arm, 0, args)
        assert seen[-1].act_anneal_epochs == anneal, arm
