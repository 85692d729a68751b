"""Same-padded models export without PAD operators; the TFLite rewrites are exact (bit-identical int8 outputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mcu_support import require_mcu_packages
from torch import nn

require_mcu_packages()

from yolo_dero.mcu import export_tflite, measure_arena  # noqa: E402
from yolo_dero.mcu.reports import randomize_batchnorm  # noqa: E402
from yolo_dero.mcu.export import inspect_tflite  # noqa: E402
from yolo_dero.mcu.rewrite import RewriteError, simplify  # noqa: E402
from yolo_dero.nn import DeroUnit  # noqa: E402
from yolo_dero.nn.padding import to_same_padding  # noqa: E402


class Toy(nn.Module):
    """A strided DERO unit (re-parameterizable), a stock strided max-pool, and a tensor read twice (by the next
    strided unit and by a later concat, as YOLO's saved layers are)."""

    def __init__(self):
        super().__init__()
        self.down = DeroUnit(8, 16, k=3, s=2, norm="post", act_after_add=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.down2 = DeroUnit(16, 16, k=3, s=2, norm="post", act_after_add=True)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        t = self.pool(self.down(x))
        return torch.cat([self.up(self.down2(t)), t], 1)


def _run(path, x: np.ndarray) -> np.ndarray:
    """The first output of ``path`` on ``x`` (already in the input's dtype), through LiteRT's reference kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    outs = []
    for im in x:
        it.set_tensor(it.get_input_details()[0]["index"], im[None])
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
    return np.concatenate(outs)


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("same")
    torch.manual_seed(0)
    model = to_same_padding(randomize_batchnorm(Toy())).eval()
    raw = export_tflite(model, 32, d / "raw.tflite", in_channels=8, num_calib=2, simplify=False)
    flt = export_tflite(model, 32, d / "float.tflite", in_channels=8, quantize=False, check=False)
    return model, raw, flt


def test_same_padded_float_export_computes_what_torch_computes(toy_files):
    model, _, flt = toy_files
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        y = model(x)
    out = torch.from_numpy(_run(flt.path, x.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)
    assert ((out - y).abs().max() / y.abs().max()).item() < 1e-5


def test_rewrite_removes_pads_and_round_trips_exactly(toy_files, tmp_path):
    _, raw, _ = toy_files
    before = inspect_tflite(raw.path).op_counts()
    assert before.get("PADV2", 0) + before.get("PAD", 0) + before.get("TRANSPOSE", 0) > 0  # something to remove
    data, counts = simplify(open(raw.path, "rb").read())
    assert sum(counts.values()) > 0
    out = tmp_path / "simple.tflite"
    out.write_bytes(data)
    after = inspect_tflite(out).op_counts()
    assert not {"PAD", "PADV2", "TRANSPOSE"} & set(after), after
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(3, 32, 32, 8), dtype=np.int8)
    assert np.array_equal(_run(raw.path, x), _run(out, x))  # bit-identical
    simple, plain = measure_arena(out, bisect=False), measure_arena(raw.path, bisect=False)
    assert simple.outputs_match and simple.head_bytes <= plain.head_bytes


def test_rewrite_refuses_a_planned_file(toy_files, tmp_path):
    from yolo_dero.mcu.tflite import METADATA_NAME, write_plan

    _, raw, _ = toy_files
    data, _ = simplify(open(raw.path, "rb").read())
    n = len(inspect_tflite(data).tensors)
    planned = write_plan(data, [0] * n)
    with pytest.raises(RewriteError, match="offline memory plan"):
        simplify(planned)
    assert METADATA_NAME


def test_payoff_table_ratios_and_errors():
    from yolo_dero.mcu.reports import payoff_markdown

    def row(planned, fused, op="#7 DEPTHWISE_CONV_2D -> x", pads=0):
        return {"online_head": planned + 1000, "planned_head": planned, "analyzer_fused": fused, "peak_operator": op,
                "op_counts": {"PAD": pads}, "bit_identical": True, "litert_diff": 1}

    rows = {"MCUNet-v4 @176 original": row(340736, 340736), "MCUNet-v4 @176 plain": row(309760, 309760),
            "MCUNet-v4 @176 DERO rep": row(309760, 309760),
            "MCUNet-v4 @176 DERO seed form": {"error": "RuntimeError: TFLM failed"}}
    md = payoff_markdown(rows, {"date": "d", "versions": "v"})
    line = next(x for x in md.splitlines() if x.startswith("| MCUNet-v4 @176 | original |"))
    assert "| 340,736 | 340,736 | 1.000 | 1.100 |" in line
    assert "| MCUNet-v4 @176 | DERO seed form | error: RuntimeError: TFLM failed |" in md
    assert "MCUNet-v4 @96" not in md  # rows not measured are left out, not invented
