"""The classification zoo: original, plain and DERO variants of ResNet34/50, MCUNet-v4 and DenseNet121."""

from ..catalog import CATALOG, VARIANTS, registry_name, variant_names
from ._registry import get_model, list_models, register_model
from . import densenet, mcunet, resnet  # noqa: F401  (importing a family registers its builders)

__all__ = ["get_model", "list_models", "register_model", "CATALOG", "VARIANTS", "registry_name", "variant_names"]
