"""The one catalogue of the zoo: every architecture, its display title, native input size and the registry names
of its three variants (``original``: the residual network as published; ``plain``: the same network without
shortcuts; ``dero``: DERO units). Tools that compare the variants (``yolo_dero.study``, ``yolo_dero.report``,
``yolo_dero.compare_cls``, ``yolo_dero.mcu`` reports) read it instead of keeping their own table.

Pure data: importing it builds no model and imports no torch (it sits outside ``classification.models`` for that);
``classification.models`` re-exports it.
"""

from __future__ import annotations

from typing import Dict, NamedTuple

#: the three variants of every architecture, in table order
VARIANTS = ("original", "plain", "dero")


class Arch(NamedTuple):
    title: str  # display name (tables, plots)
    imgsz: int  # native input size (ImageNet training resolution)
    names: Dict[str, str]  # variant -> registry name


#: architecture -> :class:`Arch`, in table order
CATALOG: Dict[str, Arch] = {
    "resnet34": Arch("ResNet34", 224, {"original": "resnet34", "plain": "resnet34_plain", "dero": "resnet34_dero"}),
    "resnet50": Arch("ResNet50", 224, {"original": "resnet50", "plain": "resnet50_plain", "dero": "resnet50_dero"}),
    "mcunet_v4": Arch("MCUNet-v4", 176, {"original": "mcunet_v4", "plain": "mcunet_v4_plain",
                                         "dero": "mcunet_v4_dero"}),
    "densenet121": Arch("DenseNet121", 224, {"original": "densenet121", "plain": "densenet121_plain",
                                             "dero": "densenet121_dero"}),
}


def variant_names(arch: str) -> Dict[str, str]:
    """``{variant: registry name}`` of ``arch`` (a copy), e.g. ``variant_names("resnet34")["dero"]``."""
    try:
        return dict(CATALOG[arch].names)
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; catalogue: {', '.join(CATALOG)}") from None


def registry_name(arch: str, variant: str) -> str:
    """The registry name of ``variant`` of ``arch``."""
    names = variant_names(arch)
    if variant not in names:
        raise ValueError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
    return names[variant]
