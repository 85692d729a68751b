"""Offline memory plan for TFLite Micro (yolo_dero/mcu/offline_plan.py, tflite.py): planner, validator, metadata, CLI.

Needs requirements-mcu.txt (litert-torch, tflite-micro, ai-edge-litert). Without them every test here is
skipped with a message, unless ``DERO_REQUIRE_MCU=1`` or ``CI`` is set, which turns the skip into a failure
(as tests/test_mcu.py).

Toys on 16x32x32 int8 tensors, T = 16,384 bytes:

* two one-conv residual units ``x + relu(conv(x))``: TFLM's online planner keeps x, the conv output and the
  sum -> 3T = 49,152; with the ADD written over its conv operand the plan needs 2T = 32,768 (a plain chain);
* two classic residual blocks ``x + conv2(relu(conv1(x)))``: 3T live, TFLM's greedy planner reserves 4T =
  65,536; placement alone (``--no-inplace``) reaches the largest live set 3T = 49,152.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

T = 16 * 32 * 32

from mcu_support import require_mcu_packages  # noqa: E402  (tests/mcu_support.py)

require_mcu_packages()

from yolo_dero.mcu import export_tflite, measure_arena  # noqa: E402
from yolo_dero.mcu.reports import ClassicResidual, OneConvResidual  # noqa: E402
from yolo_dero.mcu.offline_plan import plan_file, validate_plan  # noqa: E402
from yolo_dero.mcu.tflite import PlanError, has_plan, read_graph, read_offsets, strip_plan, write_plan  # noqa: E402


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    out = {}
    for name, make in (("one_conv", lambda: nn.Sequential(OneConvResidual(), OneConvResidual())),
                       ("classic", lambda: nn.Sequential(ClassicResidual(), ClassicResidual()))):
        torch.manual_seed(0)
        r = export_tflite(make().eval(), 32, d / f"{name}.tflite", in_channels=16, num_calib=2)
        out[name] = r.path
    return d, out


def test_one_conv_chain_planned_in_place(toys):
    d, f = toys
    r = plan_file(f["one_conv"], d / "one_conv_planned.tflite", n_inputs=3)
    v = r.verification
    assert v["online_head_bytes"] == 3 * T == 49152
    assert v["planned_head_bytes"] == 2 * T == 32768
    assert r.plan["head_bytes"] == r.plan["largest_live_bytes"] == 2 * T
    assert v["bit_identical"] and v["max_abs_diff_lsb_litert"] <= 2
    assert len(r.plan["inplace_pairs"]) == 2 and all("ADD" in p[0] for p in r.plan["inplace_pairs"])
    data = (d / "one_conv_planned.tflite").read_bytes()
    vals = read_offsets(data)
    g = read_graph(data)
    assert vals[:3] == [1, 0, len(g.tensors)]
    offs = vals[3:]
    for t, o in zip(g.tensors, offs):
        assert (o == -1) == (t.kind != "activation"), (t.name, t.kind, o)
        assert o == -1 or o % 16 == 0
    assert validate_plan(data).inplace_pairs == 2
    # measure_arena reports both heads of a planned file
    a = measure_arena(d / "one_conv_planned.tflite", bisect=False)
    assert (a.head_bytes, a.online_head_bytes) == (2 * T, 3 * T) and a.outputs_match


def test_validator_refuses_unsafe_plans(toys):
    d, f = toys
    src = open(f["one_conv"], "rb").read()
    g = read_graph(src)
    acts = [t.index for t in g.tensors if t.kind == "activation"]
    # everything at offset 0: the input and the first conv output are live together and are no in-place pair
    bad = write_plan(src, [0 if t.kind == "activation" else -1 for t in g.tensors])
    with pytest.raises(PlanError, match="not an in-place pair") as ei:
        validate_plan(bad)
    assert g.tensors[g.inputs[0]].name in str(ei.value)
    # the valid plan, with one in-place output moved 16 bytes: a shifted overlap is refused
    plan_file(f["one_conv"], d / "tmp.tflite", verify=False)
    good = (d / "tmp.tflite").read_bytes()
    validate_plan(good)
    offs = read_offsets(good)[3:]
    add_out = g.ops[[k for k, op in enumerate(g.ops) if op["op"] == "ADD"][0]]["outputs"][0]
    shifted = list(offs)
    shifted[add_out] += 16
    with pytest.raises(PlanError, match=g.tensors[add_out].name.split(";")[0][-20:]):
        validate_plan(write_plan(src, shifted))
    # misaligned offsets and offsets on constants are refused
    mis = list(offs)
    mis[acts[0]] += 4
    with pytest.raises(PlanError, match="aligned"):
        validate_plan(write_plan(src, mis))
    const = next(t.index for t in g.tensors if t.kind == "constant")
    c = list(offs)
    c[const] = 0
    with pytest.raises(PlanError, match="constant"):
        validate_plan(write_plan(src, c))
    with pytest.raises(PlanError, match="no 'OfflineMemoryAllocation'"):
        validate_plan(src)


def test_no_inplace_classic_blocks_reach_largest_live_set(toys):
    d, f = toys
    r = plan_file(f["classic"], d / "classic_planned.tflite", inplace=False, n_inputs=2)
    assert r.plan["inplace_pairs"] == []
    assert r.plan["head_bytes"] == r.plan["largest_live_bytes"] == 3 * T == 49152
    assert r.verification["online_head_bytes"] == 4 * T == 65536
    assert r.verification["planned_head_bytes"] == 3 * T
    assert r.verification["bit_identical"]


def test_metadata_is_replaced_and_removed(toys):
    d, f = toys
    src = open(f["one_conv"], "rb").read()
    n = len(read_graph(src).tensors)
    once = write_plan(src, [-1] * n)
    twice = write_plan(once, [-1] * n)
    from ai_edge_litert import schema_py_generated as schema

    names = lambda b: [schema.Model.GetRootAs(b, 0).Metadata(i).Name()  # noqa: E731
                       for i in range(schema.Model.GetRootAs(b, 0).MetadataLength())]
    assert names(twice).count(b"OfflineMemoryAllocation") == 1
    assert has_plan(twice) and not has_plan(strip_plan(twice)) and not has_plan(src)
    with pytest.raises(PlanError):
        write_plan(src, [-1] * (n - 1))
    # planning a planned file starts from the unplanned model and gives the same plan
    plan_file(f["one_conv"], d / "a.tflite", verify=False)
    plan_file(d / "a.tflite", d / "b.tflite", verify=False)
    assert read_offsets((d / "a.tflite").read_bytes()) == read_offsets((d / "b.tflite").read_bytes())


def test_cli_plan_and_arena(toys, tmp_path, capsys):
    from yolo_dero.mcu.__main__ import main

    _, f = toys
    out, js = tmp_path / "p.tflite", tmp_path / "p.json"
    assert main(["plan", f["one_conv"], "--out", str(out), "--json", str(js), "--num-inputs", "1"]) == 0
    text = capsys.readouterr().out
    assert "online 49,152 B -> planned 32,768 B" in text and "bit-identical" in text
    d = json.loads(js.read_text())
    assert d["verification"]["planned_head_bytes"] == 32768
    assert main(["arena", str(out), "--no-bisect"]) == 0
    assert "vs online (plan removed) 49,152 B" in capsys.readouterr().out
    assert main(["plan", f["classic"], "--out", str(tmp_path / "c.tflite"), "--no-inplace", "--num-inputs", "1"]) == 0
    assert "online 65,536 B -> planned 49,152 B" in capsys.readouterr().out
