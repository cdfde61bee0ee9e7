"""GLUE data: the classic `glue_data/` TSV files (`GLUE_DIR`) or the hub (`data.hub_dataset`).

- `formats`: the TSV layouts and their quirks, and the row policy shared with the hub.
- `hub`: loading from the hub (`nyu-mll/glue`, a mirror, or a local copy in the hub's layout).
- `cache`: the tokenized-split cache (key, atomic write, integrity check and rebuild).
- `datamodule`: `GlueDataModule`, which picks the source and serves splits and subsets.
"""

from infodyn.data.datamodule import GlueDataModule, eval_split_names
from infodyn.data.formats import DataConfigError

__all__ = ["DataConfigError", "GlueDataModule", "eval_split_names"]
