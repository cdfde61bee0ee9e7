"""Per-sample pooling of token-level hidden states.

`pool(hidden [B, T, D], mask [B, T], how) -> [B, D]` turns one layer's token states into one
vector per sample. Padding (mask == 0) never enters the result, whatever values it holds (NaN
included). The result is float32, or float64 when the input is float64: bf16/fp16 inputs are
summed in float32. No branch reads a tensor on the host (this runs every training step).

- ``mean``: mean over the non-padding tokens (default). A row with no real token pools to 0.
- ``cls``: the first non-padding token (index 0 under right padding; the first real token under
  left padding).
- ``last``: the last non-padding token (works for left and right padding).
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLINGS = ("mean", "cls", "last")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float64 stays float64, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pool(hidden: Tensor, mask: Tensor | None, how: str = "mean") -> Tensor:
    """Pool token states into one vector per sample.

    Args:
        hidden: ``[B, T, D]`` token states of one layer.
        mask: ``[B, T]`` attention mask, nonzero = real token; ``None`` = no padding.
        how: ``"mean"``, ``"cls"`` or ``"last"``.

    Returns:
        ``[B, D]`` pooled states in float32 (float64 if ``hidden`` is float64).
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, D], got shape {tuple(hidden.shape)}")
    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    batch, length, _ = hidden.shape
    if mask is None:
        real = torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
    else:
        if tuple(mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask must be [B, T] = {(batch, length)}, got {tuple(mask.shape)}"
            )
        real = mask != 0
        if real.device != hidden.device:
            real = real.to(hidden.device)
    dtype = compute_dtype(hidden.dtype)
    if how == "mean":
        # where(), not a masked matmul: 0 * NaN = NaN, so padding holding NaN/inf would leak
        # in, and testing for that first would read the result on the host every step.
        summed = torch.where(real.unsqueeze(-1), hidden, 0.0).sum(dim=1, dtype=dtype)
        return summed / real.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
    positions = torch.arange(length, device=hidden.device)
    if how == "cls":
        # First real token: the smallest position with mask 1.
        index = torch.where(real, positions, length).amin(dim=1).clamp(max=length - 1)
    else:
        # Last real token: the largest position with mask 1.
        index = torch.where(real, positions, -1).amax(dim=1).clamp(min=0)
    return hidden[torch.arange(batch, device=hidden.device), index].to(dtype)
