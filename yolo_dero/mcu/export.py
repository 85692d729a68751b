"""Full-integer TFLite export (int8 weights and activations, int8 input and output, NHWC input).

Path (litert-torch 0.10; docs/deployment.md): the model is lowered for deployment
(:func:`lower_for_export`), wrapped to take NHWC input, exported with ``torch.export.export(strict=True)``
(non-strict export leaves adds and means in float), quantized post-training with torchao's PT2E
``prepare_pt2e`` / ``convert_pt2e`` and litert-torch's int8 quantizer extended to every activation
(:class:`FullInt8Quantizer`), calibrated on a few images, and converted with
``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``. The written flatbuffer is
then checked (:func:`~yolo_dero.mcu.tflite.check_full_int8`): no float tensor and no QUANTIZE/DEQUANTIZE from
or to float may be left anywhere in the graph, or :class:`~yolo_dero.mcu.tflite.FloatTensorError` is raised.

Deployment lowering (exact, the function of the network is unchanged; see docs/deployment.md):

* every DERO shortcut ``bn_sc(S(x))`` (sum-pool, channel zero-pad or fold, BatchNorm) becomes one
  convolution with fixed weights (a depthwise one where channels match): sum-pooling with
  ``divisor_override`` has no int8 TFLite kernel (it lowers to a float ``STABLEHLO_REDUCE_WINDOW``);
* a DERO unit's pre-normalisation ``bn_in`` is folded into its convolution where that is exact
  (padding 0: all 1x1 units); in front of a padded conv it becomes a 1x1 depthwise conv;
* conv + BatchNorm pairs are folded by ``prepare_pt2e`` itself.

Detection models export backbone + neck + head **without the box decode and without NMS**: the outputs are
the raw per-level head maps ``cat(box_head(x_i), cls_head(x_i))``, NHWC
(:class:`RawDetectHead`, run by Ultralytics' ``_predict_once``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.resolve import resolve_data
from ..memory import input_channels
from ..catalog import load_model
from ..nn.dero import DeroUnit, Shortcut
from ..nn.reparam import bn_affine, fold_input_norm, reparameterize
from ..paths import REPO_ROOT
from .rewrite import simplify_file
from .tflite import check_full_int8, inspect_tflite, require, tflm_problems

ImgSize = Union[int, Sequence[int]]


def _imgsz(imgsz: ImgSize) -> Tuple[int, int]:
    if isinstance(imgsz, int):
        return imgsz, imgsz
    s = list(imgsz)
    return (int(s[0]), int(s[0])) if len(s) == 1 else (int(s[0]), int(s[1]))


# ------------------------------------------------------------------------------------------------
# deployment lowering


class ConvShortcut(nn.Module):
    """``bn_sc(S(x))`` of a :class:`~yolo_dero.nn.dero.Shortcut` as one convolution with fixed weights.

    The weight of output channel ``o`` is the BatchNorm scale ``a_o`` times the map's coefficient on every input
    channel that ``S`` maps to ``o`` (``o`` itself for growth/identity/slice, ``o, o + c_out, ...`` for a fold,
    ``+o`` and ``-(o + c_out)`` for a signed shrink) over the whole
    ``k x k`` window when ``S`` sum-pools, the bias is the BatchNorm shift: exactly ``bn(S(x))``, zero padding
    included. A 1x1 strided shortcut (``ceil_mode``) pads right/bottom first where the size is odd.
    """

    def __init__(self, sc: Shortcut):
        super().__init__()
        c_in, c_out = sc.c_in, sc.c_out
        k, s, p = (sc.k, sc.s, sc.p) if sc.s > 1 else (1, 1, 0)
        self.ceil_mode = bool(sc.s > 1 and sc.ceil_mode)
        self.k, self.s = k, s
        a, b = (t.float() for t in bn_affine(sc.bn, c_out))  # identity without a BatchNorm
        depthwise = c_in == c_out
        groups = c_out if depthwise else 1
        conv = nn.Conv2d(c_in, c_out, k, s, p, groups=groups, bias=True)
        w = torch.zeros_like(conv.weight)
        if depthwise:
            w[:] = a.view(-1, 1, 1, 1)
        else:
            for i, o, coefficient in sc.channel_map():  # growth: o = i; fold: i % c_out; slice: i; signed: +-1
                w[o, i] += coefficient * a[o]
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ceil_mode:
            h, w = x.shape[-2:]
            ph, pw = (-h) % self.s, (-w) % self.s
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        return self.conv(x)


#: an input channel whose BatchNorm running variance is below this never varied in training: a dead channel
CONSTANT_CHANNEL_VAR = 1e-10


def _fold_bn_in(unit: DeroUnit) -> Tuple[bool, int]:
    """Fold ``unit.bn_in`` into ``unit.conv`` when the conv has no padding (exact); returns (folded, number of
    constant input channels).

    A channel that never varied in training (running variance below :data:`CONSTANT_CHANNEL_VAR`, e.g. a dead ReLU6)
    gets a BatchNorm scale of about ``gamma / sqrt(eps)``, some 300x the others. Folded into the conv's weights it
    would own each output channel's int8 weight range and round every other input channel's weight to zero (one such
    channel cost a trained MCUNet-DERO 24 points of int8 top-1). Its input is its running mean, so ``bn_in`` outputs
    ``beta`` there: the fold uses scale 0 and shift ``beta``, which is what the trained network computes.
    """
    conv, bn = unit.conv, unit.bn_in
    if not isinstance(bn, nn.BatchNorm2d) or any(conv.padding) or conv.padding_mode != "zeros":
        return False, 0
    constant = bn.running_var < CONSTANT_CHANNEL_VAR
    if bool(constant.any()):
        bn = copy.deepcopy(bn)
        if bn.weight is None:  # affine=False: gamma 1, beta 0, made explicit so one channel can be frozen
            bn.weight, bn.bias = nn.Parameter(torch.ones(bn.num_features)), nn.Parameter(torch.zeros(bn.num_features))
        with torch.no_grad():  # bn(x) = beta where x is its running mean: scale 0, shift beta
            bn.weight[constant] = 0.0
            bn.running_mean[constant] = 0.0
    w, b = fold_input_norm(conv, bn)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True)
    with torch.no_grad():
        new.weight.copy_(w.float())
        new.bias.copy_(b.float())
    unit.conv = new
    unit.bn_in = nn.Identity()
    return True, int(constant.sum())


def bn_as_depthwise(bn: nn.BatchNorm2d) -> nn.Conv2d:
    """An eval BatchNorm as the equivalent 1x1 depthwise convolution (weight = scale, bias = shift).

    A standalone BatchNorm is lowered by litert-torch to float SUB/MUL/ADD even between quantize nodes;
    a depthwise conv is an int8 ``DEPTHWISE_CONV_2D``.
    """
    c = bn.num_features
    a = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    conv = nn.Conv2d(c, c, 1, groups=c, bias=True)
    with torch.no_grad():
        conv.weight.copy_(a.view(c, 1, 1, 1))
        conv.bias.copy_(bn.bias.detach() - bn.running_mean * a)
    return conv


class SiLUAsMul(nn.Module):
    """``x * sigmoid(x)`` written out: litert-torch lowers ``nn.SiLU`` to a float composite even between
    quantize nodes, while sigmoid (int8 LOGISTIC, fixed output scale 1/256) and mul (int8 MUL) quantize."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def standalone_batchnorms(model: nn.Module, in_channels: Optional[int] = None, size: int = 64) -> List[nn.Module]:
    """The BatchNorms of ``model`` whose input is not a convolution's output (found in one eval forward pass at
    ``size``): the converter folds a BatchNorm only into the conv before it and would leave these float."""
    conv_outputs, found = [], []

    def after_conv(_m, _inp, out):
        conv_outputs.append(out)  # kept alive, so no later tensor can reuse its id

    def check(m, inp):
        if not any(inp[0] is t for t in conv_outputs):
            found.append(m)

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(check) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels or input_channels(model), size, size))
    finally:
        for h in handles:
            h.remove()
    return found


def lower_for_export(model: nn.Module, fold_bn_in: bool = True,
                     in_channels: Optional[int] = None) -> Tuple[nn.Module, Dict[str, int]]:
    """A deep copy of ``model`` (eval) with DERO shortcuts as single convs and ``bn_in`` folded or lowered.

    ``bn_in`` of a unit whose conv has no padding is folded into the conv (exact); in front of a padded conv
    it becomes a 1x1 depthwise conv (:func:`bn_as_depthwise`), one more operator and one more buffer.
    ``nn.SiLU`` becomes :class:`SiLUAsMul` (LOGISTIC + MUL in int8; one more buffer per activation).
    Re-parameterizable units (``act_after_add``) are first folded into one conv each, and a classifier's
    ``head_norm`` BatchNorm becomes a depthwise conv, as does any other BatchNorm that does not follow a conv
    (:func:`standalone_batchnorms`: DenseNet's pre-activation BatchNorms).
    Returns ``(lowered model, counts)`` with counts ``{"shortcuts", "bn_in_folded", "bn_in_depthwise",
    "reparameterized"[, "head_norm_depthwise", "silu", "bn_in_constant_channels"]}``.
    """
    model = copy.deepcopy(model).eval()
    counts = {"shortcuts": 0, "bn_in_folded": 0, "bn_in_depthwise": 0}
    # re-parameterizable units (and their plain twins) become one conv each: the plain network's graph
    n_units = sum(isinstance(m, DeroUnit) for m in model.modules())
    reparameterize(model, strict=False, select=lambda m: getattr(m, "act_after_add", False))
    counts["reparameterized"] = n_units - sum(isinstance(m, DeroUnit) for m in model.modules())
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Shortcut):
                setattr(parent, name, ConvShortcut(child))
                counts["shortcuts"] += 1
    if fold_bn_in:
        for m in model.modules():
            if isinstance(m, DeroUnit):
                folded, constant = _fold_bn_in(m)
                counts["bn_in_folded"] += int(folded)
                if constant:
                    counts["bn_in_constant_channels"] = counts.get("bn_in_constant_channels", 0) + constant
    for m in model.modules():
        if isinstance(m, DeroUnit) and isinstance(m.bn_in, nn.BatchNorm2d):
            m.bn_in = bn_as_depthwise(m.bn_in)
            counts["bn_in_depthwise"] += 1
    if isinstance(getattr(model, "head_norm", None), nn.BatchNorm2d):
        # the DERO styles' BatchNorm before the classifier follows an add or a ReLU, where the converter cannot fold
        # it and would leave it float: it becomes an int8 depthwise conv (one small operator at the head)
        model.head_norm = bn_as_depthwise(model.head_norm)
        counts["head_norm_depthwise"] = 1
    standalone = standalone_batchnorms(model, in_channels)
    for parent in list(model.modules()):  # pre-activation BatchNorms (DenseNet's): the same, wherever they are
        for name, child in list(parent.named_children()):
            if child in standalone:
                setattr(parent, name, bn_as_depthwise(child))
                counts["bn_depthwise"] = counts.get("bn_depthwise", 0) + 1
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SiLU):
                setattr(parent, name, SiLUAsMul())
                counts["silu"] = counts.get("silu", 0) + 1
    return model, counts


class _RawDetect(nn.Module):
    """The Detect layer's box and class convolutions per level, ``cat(box_i(x_i), cls_i(x_i))``: no DFL / anchor
    decode, sigmoid or NMS (those belong to post-processing). Keeps the layer's ``i`` and ``f``."""

    def __init__(self, head: nn.Module):
        super().__init__()
        heads = getattr(head, "one2many", None)
        if isinstance(heads, dict) and heads.get("box_head") is not None:
            self.cv2, self.cv3 = heads["box_head"], heads["cls_head"]
        else:  # named as in Detect, so the deployed graph's module names are the detector's
            self.cv2, self.cv3 = head.cv2, head.cv3
        self.i, self.f = head.i, head.f

    def forward(self, x: List[torch.Tensor]) -> List[torch.Tensor]:
        return [torch.cat([self.cv2[i](x[i]), self.cv3[i](x[i])], 1) for i in range(len(x))]


class RawDetectHead(nn.Module):
    """An Ultralytics detection model up to its raw head outputs: ``[cat(box_i, cls_i) per level]``.

    The model's layers with the Detect layer swapped for :class:`_RawDetect` (its own box and class convolutions),
    run by Ultralytics' own ``BaseModel._predict_once`` (the routing of ``f`` and ``save``).
    """

    def __init__(self, det_model: nn.Module):
        super().__init__()
        self.model = nn.Sequential(*det_model.model[:-1], _RawDetect(det_model.model[-1]))
        self.save = list(getattr(det_model, "save", []))

    def forward(self, x):
        from ultralytics.nn.tasks import BaseModel

        return BaseModel._predict_once(self, x)


def is_detection_model(model: nn.Module) -> bool:
    seq = getattr(model, "model", None)
    return isinstance(seq, nn.Sequential) and len(seq) > 0 and hasattr(seq[-1], "stride") and hasattr(seq[-1], "nl")


def deployable(model: nn.Module) -> nn.Module:
    """The module that is exported (and analysed for the cross-check): detection models -> raw head."""
    return RawDetectHead(model).eval() if is_detection_model(model) else model.eval()


# ------------------------------------------------------------------------------------------------
# quantizer

#: operators that only move or select data: their output shares the input's quantization parameters
SHARED_QPARAM_OPS = frozenset({
    "permute", "permute_copy", "view", "view_copy", "reshape", "_unsafe_view", "flatten", "squeeze",
    "squeeze_copy", "unsqueeze", "unsqueeze_copy", "constant_pad_nd", "pad", "max_pool2d",
    "max_pool2d_with_indices", "upsample_nearest2d", "slice", "slice_copy", "clone", "contiguous",
    "expand", "expand_copy", "hardtanh", "relu", "select", "transpose", "t",
})


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def full_int8_quantizer():
    """litert-torch's static int8 quantizer (per-channel weights) with every float activation annotated.

    litert-torch 0.10 annotates conv/linear/add/mul/cat/pools only; an unannotated operator (a standalone
    BatchNorm, SiLU, upsampling, padding, the network input) would stay in float between a DEQUANTIZE and a
    QUANTIZE. This subclass gives every remaining operator on the activation path int8 inputs and an int8
    output (shared with the input for pure data movement).
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torch.fx import Node
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    class FullInt8Quantizer(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            act = self.global_config.output_activation
            acts = set()
            for n in model.graph.nodes:
                if n.op == "placeholder":
                    acts.add(n)
                elif n.op == "call_function" and any(a in acts for a in n.all_input_nodes):
                    acts.add(n)
            for n in model.graph.nodes:
                if n.op != "call_function" or n not in acts:
                    continue
                val = n.meta.get("val")
                if not isinstance(val, torch.Tensor) or not val.is_floating_point():
                    continue
                ann = n.meta.get("quantization_annotation")
                if ann is not None and ann._annotated:
                    continue
                ins = [a for a in n.all_input_nodes if isinstance(a, Node) and a in acts
                       and isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].is_floating_point()]
                if _op_name(n.target) in SHARED_QPARAM_OPS and len(ins) == 1:
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={ins[0]: act}, output_qspec=SharedQuantizationSpec((ins[0], n)),
                        _annotated=True)
                else:
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={a: act for a in ins}, output_qspec=act, _annotated=True)
            return model

    return FullInt8Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


# ------------------------------------------------------------------------------------------------
# calibration data

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: what ``python -m yolo_dero.mcu export`` calibrates on without ``--calib``: the val images of the built-in
#: real-image detection set (real MNIST digits on real photographs, 192x192 JPEGs, generated locally on first use
#: from pip packages, no download), resized to the model input, for classification and detection models alike.
DEFAULT_CLI_CALIB = "data/photo_digits.yaml"


def cli_calibration_source(calib: Optional[str], channels: int = 3) -> str:
    """The calibration source of the ``export`` command: ``calib`` if given (``synthetic`` for noise), else the
    built-in real images of :data:`DEFAULT_CLI_CALIB` (an absolute path, so any working directory works) for an RGB
    model, and noise for a model whose input is not 3 channels (no real images of that kind ship)."""
    if calib:
        return calib
    if channels != 3:
        return "synthetic"
    return str(REPO_ROOT / DEFAULT_CLI_CALIB)


def _image_files(calib: str) -> List[Path]:
    p = Path(calib).expanduser()
    if p.suffix.lower() in (".yaml", ".yml") and p.is_file():
        import yaml

        d = yaml.safe_load(p.read_text())
        try:  # the project's resolver: built-in datasets (data/shapes.yaml is generated on first use), roots
            res = resolve_data(p, splits=("val",))
            d, p = dict(res.data), Path(res.yaml_path)
        except Exception:  # noqa: BLE001  (plain Ultralytics-style YAML: read it as is below)
            pass
        root = Path(d.get("path", p.parent))
        if not root.is_absolute():
            root = p.parent / root
        for key in ("val", "train", "test"):
            v = d.get(key)
            for sub in ([v] if isinstance(v, str) else (v or [])):
                files = _image_files(str(root / sub))
                if files:
                    return files
        return []
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file() and p.suffix == ".txt":
        return [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return [p]
    return []


def calibration_images(calib: Union[None, str, Sequence[torch.Tensor]], imgsz: ImgSize, num: int = 8, channels: int = 3,
                       seed: int = 0) -> List[torch.Tensor]:
    """``num`` NHWC float images in [0, 1] (what the float model expects).

    ``calib``: a list of ``(1, H, W, C)`` tensors -> the first ``num`` of them; None / "synthetic" / "random" ->
    deterministic uniform noise (no dataset needed: the library default, which keeps tests fast; the ``export``
    command instead defaults to real images, see :func:`cli_calibration_source`); a folder of
    images, a ``.txt`` list, or a data YAML (``path`` + ``val``/``train``; the project's ``data/*.yaml``
    through :func:`yolo_dero.datasets.resolve.resolve_data`, so ``data/shapes.yaml`` works) -> the first
    ``num`` images, resized (no letterbox) to ``imgsz``, RGB.
    """
    h, w = _imgsz(imgsz)
    if isinstance(calib, (list, tuple)):  # NHWC tensors the caller prepared (e.g. normalised training images)
        return list(calib)[:num]
    if calib in (None, "", "synthetic", "random"):
        g = torch.Generator().manual_seed(seed)
        return [torch.rand(1, h, w, channels, generator=g) for _ in range(num)]
    files = _image_files(calib)
    if not files:
        raise FileNotFoundError(f"no calibration images found in '{calib}' (a folder, a .txt list or a data "
                                f"YAML; or use --calib synthetic)")
    import cv2

    out = []
    for f in files[:num]:
        im = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if im is None:
            continue
        im = cv2.cvtColor(cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        t = torch.from_numpy(im).float().div(255.0)[None]
        out.append(t[..., :channels] if channels <= 3 else t)
    if not out:
        raise FileNotFoundError(f"no readable images in '{calib}'")
    return out


# ------------------------------------------------------------------------------------------------
# export


@dataclass
class ExportResult:
    path: str
    imgsz: Tuple[int, int]
    input_shape: List[int]
    output_shapes: List[List[int]]
    op_counts: Dict[str, int]
    bytes: int
    seconds: float
    quantized: bool
    lowering: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    """Silence litert-torch's progress lines and Python warnings (C-level logs still go to fd 2)."""
    if not enabled:
        yield
        return
    import warnings

    levels = {n: logging.getLogger(n).level for n in ("", "absl")}
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                yield
            finally:
                for n, lv in levels.items():
                    logging.getLogger(n).setLevel(lv)


def export_tflite(model: nn.Module, imgsz: ImgSize, out: Union[str, Path],
                  calib: Union[None, str, Sequence[torch.Tensor]] = None,
                  num_calib: int = 8, in_channels: Optional[int] = None, quantize: bool = True,
                  check: bool = True, lower: bool = True, quiet: bool = True, simplify: bool = True) -> ExportResult:
    """Export ``model`` to a full-integer TFLite flatbuffer at ``out`` (NHWC int8 input, int8 outputs).

    ``quantize=False`` writes the float model (used by the tests of the check); with ``check=True`` the
    float/QUANTIZE check then raises :class:`FloatTensorError`, as it does for any leftover float tensor.
    ``calib`` (see :func:`calibration_images`): None calibrates on synthetic noise here (fast, fine for memory
    figures); ``python -m yolo_dero.mcu export`` passes real images by default (:func:`cli_calibration_source`).
    ``simplify``: exact graph rewrites (:mod:`~yolo_dero.mcu.rewrite`): every ``PAD`` that equals TFLite's
    ``SAME`` padding folded into its operator (models trained with :func:`yolo_dero.nn.padding.to_same_padding`),
    ``TRANSPOSE`` round trips removed.
    """
    if quantize and num_calib < 1:
        raise ValueError(f"num_calib={num_calib}: full-integer quantization needs at least one calibration image")
    require("litert_torch", "torchao")
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    t0 = time.time()
    h, w = _imgsz(imgsz)
    c = in_channels or input_channels(model)
    net = deployable(model)
    counts: Dict[str, int] = {}
    if lower:
        net, counts = lower_for_export(net, in_channels=c)
    with torch.no_grad():
        probe = net(torch.zeros(1, c, h, w))
    n_out = len(probe) if isinstance(probe, (list, tuple)) else 1
    out_idx = [i for i in range(n_out)
               if (probe[i] if isinstance(probe, (list, tuple)) else probe).dim() >= 3]
    wrapped = litert_torch.to_channel_last_io(net, args=[0], outputs=out_idx).eval()
    sample = (torch.zeros(1, h, w, c),)
    images = calibration_images(calib, (h, w), num_calib, c)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(quiet), torch.no_grad():
        if quantize:
            quantizer = full_int8_quantizer()
            graph = torch.export.export(wrapped, sample, strict=True).module()
            prepared = prepare_pt2e(graph, quantizer)
            for im in images:
                prepared(im)
            converted = convert_pt2e(prepared, fold_quantize=False)
            edge = litert_torch.convert(converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        else:
            edge = litert_torch.convert(wrapped, sample)
        edge.export(str(out))
    if simplify:
        counts.update(simplify_file(out))
    info = check_full_int8(out) if check else inspect_tflite(out)
    return ExportResult(
        path=str(out), imgsz=(h, w), input_shape=info.tensors[info.inputs[0]]["shape"],
        output_shapes=[info.tensors[i]["shape"] for i in info.outputs], op_counts=info.op_counts(),
        bytes=out.stat().st_size, seconds=round(time.time() - t0, 1), quantized=quantize, lowering=counts,
        notes=(["detection: raw head outputs, no box decode / NMS"] if is_detection_model(model) else [])
        + [f"TFLite Micro will not allocate this model: {p}" for p in tflm_problems(info)])


def export_model(spec: str, imgsz: ImgSize, out: Union[str, Path], **kw) -> ExportResult:
    """Load ``spec`` (registry name, model YAML or .pt; see :mod:`yolo_dero.catalog`) and export it."""
    model, _ = load_model(spec)
    return export_tflite(model, imgsz, out, **kw)
