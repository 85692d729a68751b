"""The comparison benchmarks end to end at a tiny budget, and the shared helpers."""

import json
from pathlib import Path

import numpy as np

from yolo_dero.benchmark import markdown_table, ratio, ratios

MAIN_TABLE_HEADER = "| variant |"


def table_rows(md: str, header_start: str = MAIN_TABLE_HEADER):
    lines = md.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith(header_start))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def test_helpers():
    assert ratio(3, 2) == 1.5 and ratio(None, 2) is None and ratio(1, 0) is None
    r = ratios({"dero": {"x": 2.0}, "plain": {"x": 1.0}, "original": {"x": 4.0}}, ["x"])
    assert r == {"dero/plain": {"x": 2.0}, "dero/original": {"x": 0.5}}
    md = markdown_table(["a", "b"], [[1234, None], ["s", 0.5]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1,234 | n/a |", "| s | 0.500 |"]


def test_det_compare_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("DERO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    from yolo_dero import compare

    data = tmp_path / "tiny.yaml"
    data.write_text("builtin: shapes\ncache_name: tiny_cmp\nn_train: 12\nn_val: 4\nimgsz: 96\nseed: 0\n")
    out = tmp_path / "results"
    assert compare.main(["--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0",
                         "--repeats", "2", "--pictures", "2", "--no-val-per-epoch", "--project", str(tmp_path / "runs"),
                         "--docs-picture", str(tmp_path / "docs" / "side.png"), "--out", str(out)]) == 0
    md = (out / "det_compare.md").read_text()
    header, rows = table_rows(md)
    assert [r[0] for r in rows] == ["original", "plain", "dero"]
    assert len(header) == 14 and all(len(r) == len(header) for r in rows)
    assert all(c and c != "n/a" for r in rows for c in r), md  # every column filled
    js = json.loads((out / "det_compare.json").read_text())
    for v in ("original", "plain", "dero"):
        row = js["rows"][v]
        assert row["train_img_s"] > 0 and row["latency_ms"] > 0 and row["gflops"] > 0 and row["params"] > 0
        assert row["val_images"] == 4 and len(row["train_epochs"]) == 1 and row["train_epochs"][0]["images"] == 12
    # the DERO unit never raises the peak above the plain twin under the default (fused) engine
    assert js["ratios"]["dero/plain"]["fused_peak_bytes"] == 1.0
    assert "DERO/plain" in md and "DERO/original" in md
    (out / "det_compare.md").unlink()  # the markdown is rebuilt from the JSON alone
    assert compare.main(["--markdown-from", str(out / "det_compare.json")]) == 0
    assert (out / "det_compare.md").read_text() == md
    pics = js["pictures"]
    assert len(pics["files"]) == 2 and Path(pics["index"]).is_file() and (tmp_path / "docs" / "side.png").is_file()


def _tiny_imagefolder(root: Path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_cls_compare_end_to_end(tmp_path):
    from yolo_dero import compare_cls

    _tiny_imagefolder(tmp_path / "data")
    out = tmp_path / "results"
    argv = ["--data-path", str(tmp_path / "data"), "--epochs", "1", "--imgsz", "32", "-b", "4", "-j", "0",
            "--eval-imgsz", "64", "--repeats", "1", "--project", str(tmp_path / "runs"), "--out", str(out)]
    assert compare_cls.main(["--arch", "mcunet_v4", *argv]) == 0
    md = (out / "cls_compare.md").read_text()
    header, rows = table_rows(md)
    assert [r[1] for r in rows] == ["mcunet_v4", "mcunet_v4_plain", "mcunet_v4_dero"]
    assert all(c and c != "n/a" for r in rows for c in r), md
    js = json.loads((out / "cls_compare.json").read_text())["archs"]["mcunet_v4"]
    assert js["ratios"]["dero/plain"]["fused_peak_bytes"] == 1.0
    assert all(js["rows"][v]["train_img_s"] > 0 for v in ("original", "plain", "dero"))
    # a second architecture joins the same files; the first stays
    assert compare_cls.main(["--arch", "resnet34", *argv]) == 0
    both = json.loads((out / "cls_compare.json").read_text())["archs"]
    assert list(both) == ["resnet34", "mcunet_v4"]
    md = (out / "cls_compare.md").read_text()
    assert "resnet34 original vs plain vs DERO" in md and "mcunet_v4 original vs plain vs DERO" in md
