"""SlimLLM's layer criterion (Guo et al., ICML 2025): cosine of a block's input and output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infodyn.forward import eval_hidden_states
from infodyn.pruners.base import PrunerArgs, ScoringContext, require_batches


@torch.no_grad()
def input_output_cosine(model: nn.Module, batches: list[dict]) -> Tensor:
    """`[L]` float64: mean over non-padding tokens of cos(hidden_states[b], hidden_states[b+1]).

    For pre-norm decoders (GPT-2, Llama) HF's last hidden state is taken after the final norm,
    so the last block's entry includes that norm.
    """
    sums: Tensor | None = None
    count = torch.zeros((), dtype=torch.float64)
    for hs, mask in eval_hidden_states(model, require_batches(batches)):
        m = mask.to(torch.float64)
        pairs = zip(hs[:-1], hs[1:], strict=True)
        cos = torch.stack([F.cosine_similarity(a.double(), b.double(), dim=-1) for a, b in pairs])
        batch_sum = (cos * m).sum(dim=(1, 2)).cpu()
        sums = batch_sum if sums is None else sums + batch_sum
        count += m.sum().cpu()
    return sums / count


class SlimLLMPruner(PrunerArgs):
    """Remove the `k` blocks whose output is most similar to their input.

    s_b = mean over non-padding `ctx.calibration()` tokens of cos(block input, block output);
    higher = remove first (raw = prunability). The same ranking as ShortGPT's Block Influence
    (Men et al., 2024), which removes the lowest BI = 1 - s_b.
    """

    def score(self, ctx: ScoringContext) -> Tensor:
        return input_output_cosine(ctx.model, ctx.calibration())
