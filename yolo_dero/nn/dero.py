"""The DERO unit: a residual connection that spans exactly one operator.

A classic residual block ``y = x + F(x)`` keeps ``x`` alive while every operator inside ``F`` runs.
A DERO unit wraps a *single* operator, so its shortcut reads the same input the operator reads anyway
and no tensor outlives the plain network's:

    y = drop_path(act(conv(bn_in(x)))) + bn_sc(S(x))          (the seed's form)
    y = act(drop_path(conv(bn_in(pad(x)))) + bn_sc(S(x)))     (``act_after_add``: re-parameterizable)

In the second form everything inside ``act`` is affine in ``x`` once trained, so the unit folds into one
convolution (:func:`yolo_dero.nn.reparam.reparameterize`) and the deployed network *is* a plain network.

``S`` is parameter-free and reshapes ``x`` to the operator's output shape (see :class:`Shortcut`).
With ``shortcut=False`` the unit is its *plain twin* ``act(conv(bn_in(x)))``: the same layer with no
shortcut parameters at all. This module is the only implementation of the unit; the classification
zoo and the YOLO modules both build on it. It imports torch only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .padding import SamePad

ActivationSpec = Union[None, bool, str, nn.Module, Callable[[], nn.Module]]
ShortcutNorm = Union[bool, str]  # True / "all", False / "none", "changes", "strided" or "mean"


@dataclass(frozen=True)
class DeroStyle:
    """How the units of a DERO model are built and initialised (one value per model, shared by every unit).

    Attributes:
        shortcut_norm: where the shortcut has its own BatchNorm: ``"all"`` (every unit, the seed's unit),
            ``"changes"`` (only where ``S`` changes the statistics of ``x``: a strided sum-pool or a channel fold;
            identity and zero-padded shortcuts stay exact identities, so gradients pass through a chain of units
            unscaled, as in a residual network), ``"strided"`` (only after a sum-pool; tried for MCUNet, the signal
            grows without bound), ``"none"``, or ``"mean"``: no BatchNorm anywhere, and where ``S`` sums (a sum-pool
            window, a fold's channel groups) it averages instead, a fixed scale that keeps the shortcut at the scale
            of ``x`` without the two statistics passes (forward and backward) of a BatchNorm in training.
        shortcut_gain: initial weight of the shortcut BatchNorms (0 starts the network as its plain twin).
        norm: where the operator's BatchNorm sits: ``"pre"`` (``act(conv(bn_in(x)))``, conv with bias: the seed's
            unit) or ``"post"`` (``act(bn(conv(x)))``, conv without bias: the conv's scale no longer matters, as in
            the original networks, which keeps depthwise and thin convolutions trainable at high learning rates).
        head_norm: a BatchNorm on the last feature map before the classifier's global pooling. Identity shortcuts
            let the features' scale grow with depth; the head BatchNorm keeps the logits' scale fixed (as the final
            BN-ReLU of a pre-activation ResNet). At deployment it folds into the linear classifier.
        act_after_add: the activation follows the add (``act(branch + shortcut)``), and a pre-norm unit pads before
            ``bn_in``, so a trained unit folds exactly into one convolution (the re-parameterizable form).
        pool_shortcut: whether pooling operators (the ResNet/DenseNet stem max-pool) get a shortcut; a max-pool plus
            a sum-pool is not one operator, so the re-parameterizable styles keep pools plain.
        branch_1x1: a parallel 1x1 conv + BatchNorm branch in every unit (RepVGG's; needs ``norm="post"`` and
            ``act_after_add``, and folds into the kxk kernel's centre).
        identity_shortcuts_only: shortcuts only where ``S`` is the identity (same channels, stride 1), as RepVGG's
            identity branch; elsewhere the unit has none.
        branch_gain: initial weight of the operator's BatchNorm in units with a shortcut (``norm="post"`` only);
            0 starts every unit as its shortcut alone ("zero-init residual").
        shortcut_shrink: how ``S`` matches fewer output channels: ``"fold"`` (sum groups of ``c_out`` channels, the
            seed's), ``"slice"`` (keep the first ``c_out`` channels, an exact identity on them) or ``"projection"``
            (slice in the projection unit of an inverted bottleneck, fold elsewhere; the builders decide which units
            project). In an inverted bottleneck the fold adds every expanded channel onto the block input's channels,
            so the input's share of the signal shrinks with every block; the slice keeps it, as the original's block
            residual does. Where a unit reduces a wide input instead (YOLO's C3 entry, ResNet50's 1x1 reduce), the
            fold keeps every input channel in the sum, and the study found it better there. ``"signed"``: as
            ``"projection"``, but an inverted bottleneck carries its input as ``x`` and ``-x`` (its expand's shortcut
            appends ``-x``, its projection's subtracts that copy back, see :class:`Shortcut`): with the activation
            after the add, ``relu6(x) - relu6(-x)`` keeps the negative half of the block input that a ReLU6 on ``x``
            alone would clip, so the re-parameterizable form keeps MobileNetV2's linear residual stream.
        depthwise_bias: whether a pre-norm unit's depthwise (grouped) conv has a bias. ``bn_in``'s shift already
            gives each depthwise channel its own constant (``shift * sum(kernel)``), so the bias adds little, while on
            CPU a depthwise convolution with a bias trains more slowly than one without; pointwise and full convs keep
            theirs (their ``c_out`` constants would otherwise be tied to ``c_in`` shifts). Figures:
            docs/accuracy_study.md, finding 6c and "Training throughput".
        stem_norm: the norm of the unit that reads the image (the model's first): None (as every unit), ``"post"``
            (a BatchNorm after a bias-free conv, as the original networks' stems), ``"none"``, or ``"stats"`` (a
            ``bn_in`` with batch statistics but no gamma/beta). A learned pre-norm stem normalizes the image itself,
            so training computes the stem conv's gradient with respect to the image, at the input's full resolution;
            each alternative trains faster, and YOLOv5n worse (docs/accuracy_study.md, finding 6e). Builders apply it
            with :func:`apply_stem_norm`.
    """

    shortcut_norm: str = "all"
    shortcut_gain: float = 1.0
    norm: str = "pre"
    head_norm: bool = False
    act_after_add: bool = False
    pool_shortcut: bool = True
    branch_1x1: bool = False
    identity_shortcuts_only: bool = False
    branch_gain: float = 1.0
    shortcut_shrink: str = "fold"
    depthwise_bias: bool = True
    stem_norm: Optional[str] = None

    def __post_init__(self):
        if self.shortcut_norm not in ("all", "changes", "strided", "none", "mean"):
            raise ValueError(f"shortcut_norm must be 'all', 'changes', 'strided', 'none' or 'mean', "
                             f"got {self.shortcut_norm!r}")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {self.norm!r}")
        if self.stem_norm not in (None, "post", "none", "stats"):
            raise ValueError(f"stem_norm must be None, 'post', 'none' or 'stats', got {self.stem_norm!r}")
        if self.shortcut_shrink not in ("fold", "slice", "projection", "signed"):
            raise ValueError(f"shortcut_shrink must be 'fold', 'slice', 'projection' or 'signed', "
                             f"got {self.shortcut_shrink!r}")

    def unit_kwargs(self) -> Dict[str, object]:
        """The :class:`DeroUnit` keyword arguments this style sets."""
        kw = dict(shortcut_bn=self.shortcut_norm, norm=self.norm, act_after_add=self.act_after_add)
        if self.branch_1x1 or self.identity_shortcuts_only:  # RepVGG's extras: absent from the DERO styles' kwargs
            kw.update(branch_1x1=self.branch_1x1, identity_shortcuts_only=self.identity_shortcuts_only)
        if self.shortcut_shrink == "slice":  # "projection" / "signed": the builder sets it on its projection units
            kw.update(shortcut_shrink=self.shortcut_shrink)
        if not self.depthwise_bias:
            kw.update(depthwise_bias=False)
        return kw

    @property
    def projection_shrink(self) -> str:
        """The ``shortcut_shrink`` of a unit that projects an inverted bottleneck back to its block's width (with
        ``"signed"`` also its expand's: the pair carries the block input as ``x`` and ``-x``)."""
        return {"fold": "fold", "signed": "signed"}.get(self.shortcut_shrink, "slice")


# "seed": the unit exactly as the seed trains it; "identity": the seed's pre-norm unit with exact identity shortcuts;
# "identity-nostembn" / "identity-poststem" / "identity-statstem": "identity" whose first unit reads the image
# without a bn_in / with its BatchNorm after the conv instead / with a bn_in that learns no gamma and beta;
# "identity-headnorm": identity shortcuts and a BatchNorm before the classifier's pooling; "slice": that, with every
# shrinking shortcut slicing instead of folding; "post": identity shortcuts and the BatchNorm after the conv;
# "rep" / "rep-pre": the re-parameterizable form (activation after the add, pools plain) with the BatchNorm after /
# before the conv; "rep-slice" / "rep-pre-slice": "rep" / "rep-pre" with slicing shortcuts; "rep-signed": "rep"
# whose inverted bottlenecks carry their input as x and -x through the ReLU6s (expand appends -x, projection
# subtracts it); "project-slice": "identity-headnorm" whose inverted-bottleneck projections slice (the same model as
# "identity-headnorm" where no block projects); "project-slice-nodwbias": that with bias-free depthwise convs (the
# same model where no conv is depthwise);
# "default": the accuracy study's winner (docs/accuracy_study.md, finding 17): "rep-slice", which trains with the
# activation anneal (classification/train.py anneals it by default) and deploys folded, as its plain twin.
DERO_STYLES: Dict[str, DeroStyle] = {
    "seed": DeroStyle(shortcut_norm="all", norm="pre"),
    "identity": DeroStyle(shortcut_norm="changes", norm="pre"),
    "post": DeroStyle(shortcut_norm="changes", norm="post"),
    "identity-nostembn": DeroStyle(shortcut_norm="changes", norm="pre", stem_norm="none"),
    "identity-poststem": DeroStyle(shortcut_norm="changes", norm="pre", stem_norm="post"),
    "identity-statstem": DeroStyle(shortcut_norm="changes", norm="pre", stem_norm="stats"),
    "identity-headnorm": DeroStyle(shortcut_norm="changes", norm="pre", head_norm=True),
    "rep": DeroStyle(shortcut_norm="changes", norm="post", head_norm=True, act_after_add=True, pool_shortcut=False),
    "slice": DeroStyle(shortcut_norm="changes", norm="pre", head_norm=True, shortcut_shrink="slice"),
    "project-slice": DeroStyle(shortcut_norm="changes", norm="pre", head_norm=True, shortcut_shrink="projection"),
    "project-slice-nodwbias": DeroStyle(shortcut_norm="changes", norm="pre", head_norm=True,
                                        shortcut_shrink="projection", depthwise_bias=False),
    "rep-slice": DeroStyle(shortcut_norm="changes", norm="post", head_norm=True, act_after_add=True,
                           pool_shortcut=False, shortcut_shrink="slice"),
    "rep-pre-slice": DeroStyle(shortcut_norm="changes", norm="pre", head_norm=True, act_after_add=True,
                               pool_shortcut=False, shortcut_shrink="slice"),
    "rep-signed": DeroStyle(shortcut_norm="changes", norm="post", head_norm=True, act_after_add=True,
                            pool_shortcut=False, shortcut_shrink="signed"),
    "rep-mean": DeroStyle(shortcut_norm="mean", norm="post", head_norm=True, act_after_add=True, pool_shortcut=False),
    "rep-pre": DeroStyle(shortcut_norm="changes", norm="pre", head_norm=True, act_after_add=True,
                         pool_shortcut=False),
    # not DERO: RepVGG's training-time unit (kxk + 1x1 + identity BatchNorm branches) on the same topology, the
    # strongest known re-parameterizable baseline
    "repvgg": DeroStyle(shortcut_norm="all", norm="post", act_after_add=True, pool_shortcut=False, branch_1x1=True,
                        identity_shortcuts_only=True),
}
DERO_STYLES["default"] = DERO_STYLES["rep-slice"]


def get_style(style: Union[str, DeroStyle, None] = None, **overrides) -> DeroStyle:
    """A :class:`DeroStyle` from a name in :data:`DERO_STYLES` (None = ``"default"``) or an instance."""
    if style is None:
        style = "default"
    if isinstance(style, str):
        try:
            style = DERO_STYLES[style]
        except KeyError:
            raise ValueError(f"unknown DERO style {style!r}; use one of {sorted(DERO_STYLES)}") from None
    return replace(style, **overrides) if overrides else style


def init_shortcuts(model: nn.Module, style: DeroStyle) -> None:
    """Set every shortcut BatchNorm of ``model`` to the style's initial gain and, with ``branch_gain != 1``, the
    post-norm BatchNorm of every unit that has a shortcut to ``branch_gain`` (after the family's weight init)."""
    for m in model.modules():
        if isinstance(m, Shortcut) and isinstance(m.bn, nn.BatchNorm2d):
            nn.init.constant_(m.bn.weight, style.shortcut_gain)
            nn.init.zeros_(m.bn.bias)
        elif style.branch_gain != 1.0 and isinstance(m, DeroUnit) and m.shortcut is not None \
                and isinstance(m.bn, nn.BatchNorm2d):
            nn.init.constant_(m.bn.weight, style.branch_gain)


def apply_stem_norm(model: nn.Module, style: DeroStyle) -> nn.Module:
    """Give ``model``'s first :class:`DeroUnit` (the one that reads the image: builders register the stem first)
    the style's ``stem_norm``; returns ``model``. ``"none"`` drops a pre-norm stem's ``bn_in`` (the conv keeps its
    bias); ``"post"`` replaces it by a BatchNorm after the conv, whose bias it then drops; ``"stats"`` by a
    BatchNorm without gamma/beta (nothing before the conv learns, so training needs no gradient for the image)."""
    stem = next((m for m in model.modules() if isinstance(m, DeroUnit)), None)
    if style.stem_norm is None or stem is None or not isinstance(stem.bn_in, nn.BatchNorm2d):
        return model
    if style.stem_norm == "stats":
        stem.bn_in = nn.BatchNorm2d(stem.c_in, affine=False).to(stem.conv.weight.device)
        return model
    stem.bn_in = nn.Identity()
    if style.stem_norm == "post":
        stem.bn = nn.BatchNorm2d(stem.c_out).to(stem.conv.weight.device)
        stem.conv.bias = None
    return model


_ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "identity": nn.Identity,
    "none": nn.Identity,
}


def make_activation(act: ActivationSpec) -> nn.Module:
    """Turn an activation spec (None/False, a name, a module class or an instance) into a module."""
    if act is None or act is False:
        return nn.Identity()
    if act is True:
        return nn.ReLU(inplace=True)
    if isinstance(act, str):
        try:
            return _ACTIVATIONS[act.lower()]()
        except KeyError:
            raise ValueError(f"unknown activation {act!r}; use one of {sorted(_ACTIVATIONS)}") from None
    if isinstance(act, nn.Module):
        return act
    return act()


class DropPath(nn.Module):
    """Stochastic depth: drop the whole branch for a random subset of samples while training.

    Surviving samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def fold_channels(x: torch.Tensor, c_out: int) -> torch.Tensor:
    """Match ``c_out`` channels without parameters: zero-pad growth, fold (sum groups) shrink.

    Shrink: pad the channels to a multiple of ``c_out``, split into groups of ``c_out`` consecutive
    channels and sum the groups, so channel ``j`` of the result is ``sum_g x[g * c_out + j]``.
    """
    c_in = x.shape[1]
    if c_in == c_out:
        return x
    if c_in < c_out:
        return F.pad(x, (0, 0, 0, 0, 0, c_out - c_in))
    groups = -(-c_in // c_out)  # ceil division
    if groups * c_out != c_in:
        x = F.pad(x, (0, 0, 0, 0, 0, groups * c_out - c_in))
    n, _, h, w = x.shape
    return x.view(n, groups, c_out, h, w).sum(dim=1)


def _batch_norm_then_zero_pad(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(zero-pad(x))`` in training, with the BatchNorm run on ``x``'s own channels only.

    A zero channel has batch mean and variance 0, so it normalizes to the BatchNorm's shift and moves the running
    statistics only by their decay: the same values, gradients and running statistics as the padded BatchNorm, without
    its passes over the zeros (13 of the 16 channels at YOLOv5n's stem, half at every strided unit that doubles its
    channels)."""
    c, n_pad = x.shape[1], bn.num_features - x.shape[1]
    momentum = bn.momentum
    running_mean = running_var = None
    if bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        momentum = momentum if momentum is not None else 1.0 / float(bn.num_batches_tracked)
        with torch.no_grad():
            bn.running_mean[c:].mul_(1.0 - momentum)  # the zero channels' batch statistics are 0
            bn.running_var[c:].mul_(1.0 - momentum)
        running_mean, running_var = bn.running_mean[:c], bn.running_var[:c]  # views: updated in place
    weight, bias = (bn.weight[:c], bn.bias[:c]) if bn.affine else (None, None)
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum if momentum is not None else 0.0,
                     bn.eps)
    shift = bn.bias[c:] if bn.affine else x.new_zeros(n_pad)
    return torch.cat([y, shift.view(1, n_pad, 1, 1).expand(x.shape[0], n_pad, *x.shape[2:])], 1)


def _append_zeros(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """Append ``n`` zero slices along ``dim`` with a concat (exports exactly, unlike ``F.pad``)."""
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x, x.new_zeros(shape)], dim)


class FixedGain(nn.Module):
    """``bn_sc`` of a ``"mean"`` shortcut: the fixed scale ``gain`` (``1 / n`` for a sum of ``n`` terms), no
    statistics and no parameters. Not a BatchNorm, so nothing that converts or re-initialises BatchNorms (sync-BN,
    weight init) touches it; the folds read it through :func:`yolo_dero.nn.reparam.bn_affine`. :class:`Shortcut`
    applies it inside its own pooling or fold, at no extra pass."""

    def __init__(self, gain: float):
        super().__init__()
        self.gain = float(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain

    def extra_repr(self) -> str:
        return f"gain=1/{round(1.0 / self.gain)}"


class Shortcut(nn.Module):
    """Parameter-free ``S`` followed by an optional BatchNorm: the shortcut path of a DERO unit.

    ``S(x)`` has the operator's output shape:

    * stride ``s > 1``: sum-pooling with the operator's kernel, stride and padding (average pooling
      with ``divisor_override=1``); for a 1x1 kernel the window is ``s x s`` (ceil mode, so the
      output size equals the strided 1x1 conv's ``ceil(H / s)``);
    * ``c_in < c_out``: zero-pad the missing channels; ``c_in > c_out``: fold (see :func:`fold_channels`), or with
      ``shrink="slice"`` keep the first ``c_out`` channels (an exact identity on them, so no BatchNorm under
      ``bn="changes"``);
    * ``shrink="signed"``, the pair that carries ``x`` as ``x`` and ``-x`` through activations: growth appends
      ``-x`` after ``x`` (as far as ``c_out`` allows) and zero-pads the rest; a shrink outputs
      ``x[:c_out] - x[c_out:2 c_out]`` (no BatchNorm under ``"changes"``: past ReLU6s it is ``clip(x, -6, 6)``);
    * otherwise identity.

    Shapes: ``(N, c_in, H, W) -> (N, c_out, H_out, W_out)``.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, p: Optional[int] = None,
                 bn: ShortcutNorm = True, shrink: str = "fold"):
        super().__init__()
        if shrink not in ("fold", "slice", "signed"):
            raise ValueError(f"shortcut shrink must be 'fold', 'slice' or 'signed', got {shrink!r}")
        self.c_in, self.c_out, self.s = c_in, c_out, s
        # a channel map that changes nothing is the identity/zero-pad map: "fold" ("signed" also changes growth)
        self.shrink = shrink if c_in > c_out or (shrink == "signed" and c_in < c_out) else "fold"
        if s > 1 and k == 1:
            self.k, self.p, self.ceil_mode = s, 0, True
        else:
            self.k, self.p, self.ceil_mode = k, (k // 2 if p is None else p), False
        terms = (self.k * self.k if s > 1 else 1) * (-(-c_in // c_out) if self.shrink == "fold" and c_in > c_out else 1)
        if bn == "mean":  # S averages its terms instead of summing them, and nothing else normalizes
            self.bn = FixedGain(1.0 / terms) if terms > 1 else nn.Identity()
            return
        if bn == "changes":  # only where S changes the statistics: a sum-pool or a fold (a slice keeps them)
            bn = s > 1 or (c_in > c_out and self.shrink == "fold")  # a slice or a signed shrink keeps them
        elif bn == "strided":  # only after a sum-pool (a fold of zero-padded channels stays an exact identity)
            bn = s > 1
        elif isinstance(bn, str):
            if bn not in ("all", "none"):
                raise ValueError(f"shortcut BatchNorm must be True/False, 'all', 'changes', 'strided', 'none' or "
                                 f"'mean', got {bn!r}")
            bn = bn == "all"
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()

    exportable = False  # set by :func:`exportable_shortcuts` while a model is exported

    def target_channels(self) -> torch.Tensor:
        """For each input channel ``i``, the output channel ``S`` adds it to (-1: ``S`` drops it): ``i`` for
        identity and growth, ``i mod c_out`` for a fold, ``i`` if ``i < c_out`` else -1 for a slice (and the
        ``+1`` term of a signed map; :meth:`channel_map` has every term)."""
        i = torch.arange(self.c_in)
        if self.shrink in ("slice", "signed"):
            return torch.where(i < self.c_out, i, torch.full_like(i, -1))
        return i % self.c_out

    def channel_map(self) -> List[Tuple[int, int, float]]:
        """Every term of ``S``'s channel map as ``(input channel, output channel, coefficient)``: output ``o`` is
        the sum of ``coefficient * x[i]`` (each summed over the sum-pool's window). The folded, fused and exported
        forms of the shortcut are built from it."""
        terms = [(i, o, 1.0) for i, o in enumerate(self.target_channels().tolist()) if o >= 0]
        if self.shrink == "signed" and self.c_in < self.c_out:  # growth: -x after x
            terms += [(i, self.c_in + i, -1.0) for i in range(min(self.c_in, self.c_out - self.c_in))]
        elif self.shrink == "signed":  # shrink: minus the second c_out channels
            terms += [(self.c_out + o, o, -1.0) for o in range(min(self.c_out, self.c_in - self.c_out))]
        return terms

    def _signed(self, x: torch.Tensor) -> torch.Tensor:
        """The signed channel map (growth: ``[x, -x, 0]``; shrink: ``x[:c_out] - x[c_out:2 c_out]``), with a concat
        and slices only (exports exactly)."""
        c_in, c_out = int(self.c_in), int(self.c_out)
        if c_in < c_out:
            m = min(c_in, c_out - c_in)
            return _append_zeros(torch.cat([x, -x[:, :m]], 1), 1, c_out - c_in - m)
        m = min(c_out, c_in - c_out)
        if m == c_out:
            return x[:, :c_out] - x[:, c_out:2 * c_out]
        return x[:, :c_out] - _append_zeros(x[:, c_out:c_out + m], 1, c_out - m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exportable:
            return self.bn(self._exportable_s(x))
        if self.shrink == "slice":  # before the sum-pool, which then reads only the channels kept
            x = x[:, :self.c_out]
        elif self.shrink == "signed" and self.c_in > self.c_out:  # likewise: linear, so before the pool
            x = self._signed(x)
        gain = self.bn.gain if isinstance(self.bn, FixedGain) else None  # applied by the pool where there is one
        if self.s > 1 and not self.ceil_mode and (x.shape[1] >= 16 or not x.requires_grad):
            # the same sum as a depthwise conv with a kernel of ones: on CPU 1.5-3x faster than avg_pool2d with
            # divisor_override, forward and backward, from 16 channels on; on an RGB input only forward is faster
            # (YOLOv5n's 6x6 stem window on the image, which needs no gradient: 3.6 against 6.3 ms at batch 16)
            x = F.conv2d(x, x.new_full((x.shape[1], 1, self.k, self.k), gain or 1.0), None, self.s, self.p,
                         groups=x.shape[1])
        elif self.s > 1:
            x = F.avg_pool2d(x, self.k, self.s, self.p, ceil_mode=self.ceil_mode,
                             count_include_pad=True, divisor_override=round(1.0 / gain) if gain else 1)
        if self.shrink == "signed" and x.shape[1] < self.c_out:
            return self._signed(x) if gain is not None else self.bn(self._signed(x))  # a gain: the pool's (s > 1)
        if gain is None and x.shape[1] < self.c_out and self.bn.training and type(self.bn) is nn.BatchNorm2d:
            return _batch_norm_then_zero_pad(self.bn, x)
        if gain is None:
            return self.bn(fold_channels(x, self.c_out))
        return fold_channels(x, self.c_out) if self.s > 1 else fold_channels(x, self.c_out) * gain

    def _exportable_s(self, x: torch.Tensor) -> torch.Tensor:
        """``S(x)`` in ops that exporters translate exactly (same math as :meth:`forward`).

        * ONNX export drops ``divisor_override``, so the sum-pool is ``avg_pool2d * k^2`` (with
          ``count_include_pad=True`` every window of a non-ceil-mode pool covers k^2 positions);
        * ``F.pad`` on channels exports as a Pad that onnxslim folds in the wrong order, so zero channels
          are appended with a concat.
        The ceil-mode window of a strided 1x1 is emulated by zero rows/columns fixed at the traced size.
        """
        c_in, c_out = int(self.c_in), int(self.c_out)  # static ints: traced shape arithmetic truncates
        if c_in > c_out and self.shrink == "slice":
            x, c_in = x[:, :c_out], c_out
        elif c_in > c_out and self.shrink == "signed":
            x, c_in = self._signed(x), c_out
        if self.s > 1:
            k, p = self.k, self.p
            if self.ceil_mode:
                x = _append_zeros(x, 2, -int(x.shape[-2]) % self.s)
                x = _append_zeros(x, 3, -int(x.shape[-1]) % self.s)
                p = 0
            x = F.avg_pool2d(x, k, self.s, p, count_include_pad=True) * float(k * k)
        if c_in < c_out:
            return self._signed(x) if self.shrink == "signed" else _append_zeros(x, 1, c_out - c_in)
        if c_in > c_out:
            groups = -(-c_in // c_out)
            x = _append_zeros(x, 1, groups * c_out - c_in)
            return x.unflatten(1, (groups, c_out)).sum(dim=1)
        return x

    def extra_repr(self) -> str:
        return f"{self.c_in}->{self.c_out}, sum_pool=({self.k}, s={self.s}, p={self.p})" if self.s > 1 \
            else f"{self.c_in}->{self.c_out}"


def conv_of_normalized_input(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(bn(x))`` for a BatchNorm in training mode, with the normalization folded into the conv's weights.

    The same values and the same gradients for every parameter, but backward computes no gradient for the
    conv's input. For a unit whose input needs none (the stem, reading the image), that gradient is the whole
    cost of its pre-norm: on a CPU a 3-channel data gradient at full resolution costs more than the original
    network's entire stem. ``bn``'s running statistics are updated as BatchNorm updates them. The conv zero-pads
    ``bn(x)``, so the shift's contribution is a convolution of a ones mask (one channel, batch 1), which gives the
    border taps their exact, smaller sum.
    """
    with torch.no_grad():
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        if bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            n = x.numel() // x.shape[1]
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var * (n / max(n - 1, 1)), momentum)  # the running average keeps Bessel's factor
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale + bn.bias if bn.bias is not None else -mean * scale
    w = conv.weight
    c_out, cg = w.shape[:2]
    groups = conv.groups

    def per_weight(v: torch.Tensor) -> torch.Tensor:  # input channel read by w[o, j]: group(o) * cg + j
        return v.view(groups, 1, cg).expand(groups, c_out // groups, cg).reshape(c_out, cg, 1, 1)

    y = F.conv2d(x, w * per_weight(scale), conv.bias, conv.stride, conv.padding, conv.dilation, groups)
    taps = (w * per_weight(shift)).sum(1, keepdim=True)  # (c_out, 1, kh, kw): the shift's part of each tap
    if any(conv.padding):
        ones = x.new_ones(1, 1, *x.shape[-2:])
        return y + F.conv2d(ones, taps, None, conv.stride, conv.padding, conv.dilation)
    return y + taps.sum((1, 2, 3)).view(1, -1, 1, 1)


class DeroUnit(nn.Module):
    """One operator with a residual around it alone: ``y = drop_path(act(conv(bn_in(x)))) + bn_sc(S(x))``,
    or ``y = act(drop_path(conv(bn_in(pad(x)))) + bn_sc(S(x)))`` with ``act_after_add``.

    Args:
        c_in, c_out: input and output channels.
        k, s, p, groups: the convolution's kernel, stride, padding (default ``k // 2``) and groups.
        act: activation after the conv (``"relu"``, ``"relu6"``, ``"silu"``, a module, or None for
            a linear layer).
        shortcut: False builds the plain twin (no shortcut, no shortcut parameters).
        shortcut_bn: whether the shortcut has its own BatchNorm: True/``"all"``, False/``"none"``,
            ``"changes"`` (only where ``S`` sum-pools or folds) or ``"strided"`` (see :class:`DeroStyle`).
        drop_path: stochastic-depth probability on the conv branch.
        norm: ``"pre"`` (``bn_in`` before the conv, conv with bias) or ``"post"`` (``bn`` after a bias-free conv);
            see :class:`DeroStyle`.
        act_after_add: apply ``act`` after the add; a pre-norm unit then zero-pads ``x`` *before* ``bn_in`` (the
            conv itself has no padding), so the trained unit folds exactly into one convolution: the conv's zero
            padding and the sum-pool's both pad ``x``, and everything inside ``act`` is affine.
        branch_1x1: add RepVGG's parallel ``bn_1x1(conv_1x1(x))`` branch (stride ``s``, same groups); needs
            ``norm="post"``, ``act_after_add`` and padding ``k // 2``.
        identity_shortcuts_only: keep the shortcut only where ``S`` is the identity (RepVGG's identity branch).
        shortcut_shrink: ``S``'s channel map where channels change: ``"fold"``, ``"slice"`` or ``"signed"`` (see
            :class:`Shortcut`).
        depthwise_bias: False drops a pre-norm grouped conv's bias (see :class:`DeroStyle`).

    Shapes: ``(N, c_in, H, W) -> (N, c_out, H_out, W_out)`` with the conv's usual output size.
    At inference an engine computes ``S(x)`` while reading ``x`` for the conv and accumulates it into
    the output buffer, so the unit needs only ``|x| + |y|`` bytes, exactly like a plain layer.
    """

    is_dero_operator = True  # memory analysis treats the unit as one operator
    #: weight ``t`` of the identity in the unit's activation, ``(1 - t) * act(z) + t * z``: a training-time anneal
    #: from a linear unit to the built one (:func:`set_activation_linearity`). Only ``t = 0``, the unit as built,
    #: folds or fuses; a class attribute, so state dicts and checkpoints are unchanged.
    act_linearity: float = 0.0

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, p: Optional[int] = None,
                 groups: int = 1, act: ActivationSpec = "relu", shortcut: bool = True,
                 shortcut_bn: ShortcutNorm = True, drop_path: float = 0.0, norm: str = "pre",
                 act_after_add: bool = False, branch_1x1: bool = False, identity_shortcuts_only: bool = False,
                 shortcut_shrink: str = "fold", depthwise_bias: bool = True):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        p = k // 2 if p is None else p
        if branch_1x1 and (norm != "post" or not act_after_add or p != k // 2):
            raise ValueError("branch_1x1 needs norm='post', act_after_add=True and padding k // 2 (RepVGG's unit)")
        if identity_shortcuts_only and (c_in != c_out or s != 1):
            shortcut = False
        self.c_in, self.c_out, self.k, self.s = c_in, c_out, k, s
        self.act_after_add = act_after_add
        # the re-parameterizable pre-norm unit pads x itself, before bn_in (see act_after_add above)
        self.pad = p if act_after_add and norm == "pre" else 0
        self.bn_in = nn.BatchNorm2d(c_in) if norm == "pre" else nn.Identity()
        bias = norm == "pre" and (groups == 1 or depthwise_bias)
        self.conv = nn.Conv2d(c_in, c_out, k, s, p - self.pad, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(c_out) if norm == "post" else nn.Identity()
        self.act = make_activation(act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcut = Shortcut(c_in, c_out, k, s, p, bn=shortcut_bn, shrink=shortcut_shrink) if shortcut else None
        self.branch_1x1 = nn.Sequential(nn.Conv2d(c_in, c_out, 1, s, 0, groups=groups, bias=False),
                                        nn.BatchNorm2d(c_out)) if branch_1x1 else None
        self.same_pad: Optional[SamePad] = None

    def use_same_padding(self) -> None:
        """Pad like TFLite's ``SAME`` (see :mod:`yolo_dero.nn.padding`): a strided unit pads ``x`` once, before
        everything, and its conv and shortcut sum-pool read that padded input without padding of their own."""
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        if s == 1 or k == 1 or self.same_pad is not None:
            return  # stride 1 with an odd kernel is SAME already; a strided 1x1 reads no padding
        if self.branch_1x1 is not None:
            raise ValueError("same padding is not supported with RepVGG's 1x1 branch (its window would shift)")
        self.same_pad = SamePad(k, s)
        self.conv.padding, self.pad = (0, 0), 0
        if self.shortcut is not None:
            self.shortcut.p = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad is not None:
            x = self.same_pad(x)
        z = F.pad(x, (self.pad,) * 4) if self.pad else x
        if self.act_after_add:
            z = self.bn(self._normalized_conv(z))
            if self.branch_1x1 is not None:
                z = z + self.branch_1x1(x)
            z = self.drop_path(z)
        else:
            z = self.drop_path(self._activate(self.bn(self._normalized_conv(z))))
        if self.shortcut is not None:
            z = z + self.shortcut(x)
        return self._activate(z) if self.act_after_add else z

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        t = self.act_linearity
        if t == 0:
            return self.act(z)
        a = self.act(z.clone() if getattr(self.act, "inplace", False) else z)
        return torch.lerp(a, z, t)

    def _normalized_conv(self, z: torch.Tensor) -> torch.Tensor:
        """``conv(bn_in(z))``; in training, on an input without gradient (the image), with ``bn_in`` folded into
        the conv (:func:`conv_of_normalized_input`: same result, no gradient computed for the image)."""
        bn = self.bn_in
        if (bn.training and not z.requires_grad and torch.is_grad_enabled() and type(bn) is nn.BatchNorm2d
                and self.conv.padding_mode == "zeros" and isinstance(self.conv.padding, tuple)):
            return conv_of_normalized_input(self.conv, bn, z)
        return self.conv(bn(z))


def set_activation_linearity(model: nn.Module, t: float) -> int:
    """Blend every :class:`DeroUnit`'s activation with the identity, ``(1 - t) * act(z) + t * z``; returns how many
    units have a non-linear activation to blend.

    Annealing ``t`` from 1 to 0 in training (``classification/train.py --act-anneal-epochs``) starts the network
    linear, so gradients reach every layer through the chain of shortcuts unmasked, and ends it as built: with the
    activation after the add, a ReLU6 masks the identity path at every unit (VanillaNet's "deep training"
    anneals a plain network's activations the same way). Only ``t = 0`` folds or fuses.
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"activation linearity must be in [0, 1], got {t}")
    n = 0
    for m in model.modules():
        if isinstance(m, DeroUnit) and not isinstance(m.act, nn.Identity):
            m.act_linearity = float(t)
            n += 1
    return n


def activation_linearity_at(progress: float, anneal_epochs: float) -> float:
    """The anneal's ``t`` after ``progress`` epochs of training (fractional: ``epoch + batch / batches``): falls
    linearly from 1 to 0 over the first ``anneal_epochs``, then stays 0; always 0 when ``anneal_epochs <= 0``.
    A function of the step alone, so a resumed run continues the same schedule."""
    if anneal_epochs <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - progress / anneal_epochs))


def activation_anneal_problem(model: nn.Module, anneal_epochs: float, epochs: int) -> Optional[str]:
    """Why an activation anneal over the first ``anneal_epochs`` of an ``epochs``-epoch run cannot train ``model``
    (None when it can): the last epoch must train at ``t = 0`` (the form that folds and deploys), and the model needs
    DERO units with an activation to blend. Leaves every unit at ``t = 0``."""
    if not 0 < anneal_epochs <= epochs - 1:
        return (f"must be in (0, {epochs - 1}] (the run's epochs minus one), so the last epoch trains the model as "
                f"built, the form that folds and deploys")
    if set_activation_linearity(model, 0.0) == 0:
        return "the model has no DERO unit with an activation to anneal"
    return None


class DeroPool(nn.Module):
    """A pooling operator as a DERO unit: ``y = pool(x) + bn_sc(S(x))`` (e.g. the ResNet stem max-pool).

    ``S`` is the sum-pool with the pool's own window; channels are unchanged.
    Shapes: ``(N, C, H, W) -> (N, C, H_out, W_out)``.
    """

    is_dero_operator = True

    def __init__(self, channels: int, k: int = 3, s: int = 2, p: Optional[int] = None,
                 mode: str = "max", shortcut: bool = True, shortcut_bn: ShortcutNorm = True):
        super().__init__()
        p = k // 2 if p is None else p
        if mode == "max":
            self.pool = nn.MaxPool2d(k, s, p)
        elif mode == "avg":
            self.pool = nn.AvgPool2d(k, s, p)
        else:
            raise ValueError(f"pool mode must be 'max' or 'avg', got {mode!r}")
        self.shortcut = Shortcut(channels, channels, k, s, p, bn=shortcut_bn) if shortcut else None
        self.same_pad: Optional[SamePad] = None

    def use_same_padding(self) -> None:
        """Pad like TFLite's ``SAME``: the max-pool reads ``x`` padded with ``-inf``, the shortcut with zeros."""
        k, s = _first(self.pool.kernel_size), _first(self.pool.stride)
        if s == 1 or k == 1 or self.same_pad is not None:
            return
        self.same_pad = SamePad(k, s, float("-inf") if isinstance(self.pool, nn.MaxPool2d) else 0.0)
        self.same_pad_shortcut = SamePad(k, s)  # the sum-pool reads zeros there
        self.pool.padding = 0
        if self.shortcut is not None:
            self.shortcut.p = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.same_pad(x) if self.same_pad is not None else x)
        if self.shortcut is not None:
            y = y + self.shortcut(self.same_pad_shortcut(x) if self.same_pad is not None else x)
        return y


def _first(v) -> int:
    return v if isinstance(v, int) else v[0]


@contextmanager
def exportable_shortcuts() -> Iterator[None]:
    """Within the block every :class:`Shortcut` computes ``S`` with exactly-exportable ops (ONNX and co.).

    The results equal the default formulation up to float rounding (the sum-pool becomes average * k^2).
    """
    previous = Shortcut.exportable
    Shortcut.exportable = True
    try:
        yield
    finally:
        Shortcut.exportable = previous
