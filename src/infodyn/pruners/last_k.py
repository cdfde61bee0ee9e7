"""Drop the top k blocks (Sajjad et al., 2023, "On the effect of dropping layers")."""

from __future__ import annotations

import torch
from torch import Tensor

from infodyn.pruners.base import PrunerArgs, check_protect


class LastKPruner(PrunerArgs):
    """Remove the `k` highest (closest to the output) unprotected blocks.

    Measures nothing (raw scores are NaN); prunability is the depth itself (deeper = remove
    first; protected blocks NaN), so `select` is the top k of it.
    """

    def prunability(self, scores: Tensor) -> Tensor:
        num_layers = len(scores)
        out = torch.arange(num_layers, dtype=torch.float64)
        out[sorted(check_protect(self.protect, num_layers))] = float("nan")
        return out
