"""Drop the top k blocks (Sajjad et al., 2023, "On the effect of dropping layers")."""

from __future__ import annotations

from torch import Tensor

from infodyn.pruners.base import PrunerArgs, check_protect, enough


class LastKPruner(PrunerArgs):
    """Remove the `k` highest (closest to the output) blocks, skipping protected ones.

    Scores are ignored (only their length L is read).
    """

    source = "none"

    def select(self, scores: Tensor, k: int) -> list[int]:
        """The `k` deepest unprotected blocks, sorted."""
        num_layers = len(scores)
        keep = check_protect(self.protect, num_layers)
        cands = [i for i in range(num_layers) if i not in keep]
        enough(cands, k, num_layers, self.protect)
        return sorted(cands[len(cands) - k :]) if k else []
