"""Building blocks made of the DERO unit. Imports torch only: classification users never need Ultralytics."""

from .dero import (DERO_STYLES, DeroPool, DeroStyle, DeroUnit, DropPath, Shortcut, activation_anneal_problem,
                   activation_linearity_at, apply_stem_norm, exportable_shortcuts, fold_channels, get_style,
                   init_shortcuts, make_activation, set_activation_linearity)
from .fuse import FusedPool, FusedUnit, fuse_units
from .reparam import FoldedUnit, NotFoldableError, fold_unit, reparameterize

__all__ = ["DeroUnit", "DeroPool", "DeroStyle", "DERO_STYLES", "get_style", "init_shortcuts", "apply_stem_norm",
           "Shortcut", "DropPath", "exportable_shortcuts", "fold_channels", "make_activation",
           "set_activation_linearity", "activation_linearity_at", "activation_anneal_problem", "FoldedUnit",
           "NotFoldableError", "fold_unit", "reparameterize", "FusedUnit", "FusedPool", "fuse_units"]
