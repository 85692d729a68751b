"""The classification zoo: original, plain and DERO variants of ResNet34/50, MCUNet-v4 and DenseNet121.

Registry names are ``<arch>`` and ``<arch>_<variant>`` (``resnet34``, ``resnet34_plain``, ``mcunet_v4_dero``); the
names of earlier releases still work as deprecated aliases (:data:`DEPRECATED_NAMES`). The architectures and the
names of their variants are in :data:`CATALOG` (``classification.catalog``).
"""

from ..catalog import CATALOG, VARIANTS, registry_name, variant_names
from ._registry import DEPRECATED_NAMES, get_model, is_model, list_models, register_model, resolve_name
from . import densenet, mcunet, resnet  # noqa: F401  (importing a family registers its builders)

__all__ = ["get_model", "list_models", "register_model", "is_model", "resolve_name", "DEPRECATED_NAMES", "CATALOG",
           "VARIANTS", "registry_name", "variant_names"]
