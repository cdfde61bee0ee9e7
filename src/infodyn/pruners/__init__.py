"""Layer pruners: each chooses blocks (`select`); `surgery.remove_layers` edits the model.

The YAML files in `conf/pruner/` are the registry; see docs/architecture.md.
"""

from infodyn.pruners.base import LayerPruner, PrunerConfigError, resolve_k
from infodyn.pruners.surgery import export_pruned, remove_layers

__all__ = ["LayerPruner", "PrunerConfigError", "export_pruned", "remove_layers", "resolve_k"]
