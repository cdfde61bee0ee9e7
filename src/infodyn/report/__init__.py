"""infodyn-report: Table 1, fidelity, claims and figures from a sweep's results.json files.

Modules: discovery (find and read runs), checks (failed/missing/mixed, targets), stats (over
seeds), profiles (per-layer series and rankings), fidelity (against the oracle), claims (the
paper's), tables, figures, wandb_run (the report's own run), cli (`main`).
"""

from infodyn.report.cli import main
from infodyn.report.discovery import Failed, NoRunsError, Run, collect
from infodyn.report.stats import paired_comparison, table1

__all__ = ["Failed", "NoRunsError", "Run", "collect", "main", "paired_comparison", "table1"]
