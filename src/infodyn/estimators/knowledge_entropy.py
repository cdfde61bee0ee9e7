"""Knowledge entropy per block (Kim et al., ICLR 2025, "Knowledge entropy decay during language
model pretraining hinders new knowledge acquisition").

Input (``input_kind="ffn_activations"``): per block, the input of the FFN output projection
``[B, T, F]`` (the post-nonlinearity memory coefficients a), L tensors in block order, plus the
``[B, T]`` attention mask. For block b,

    p_bj = mean_tokens |a_bj| / sum_j' mean_tokens |a_bj'|,    H_b = -sum_j p_bj ln p_bj  (nats)

with the mean over all non-padding tokens seen this epoch. H_b lies in [0, ln F]: ln F when
every neuron carries equal mass, 0 when one neuron carries it all. Higher = pruned first (the
paper's baseline ranking). State: sum |a| per (block, neuron) ``[L, F]`` in float64 and a token
count; a batch whose real-token activations contain NaN/inf is skipped and counted. Updates run
on the activations' device and never read a tensor on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from infodyn.estimators.base import keep_layer_axis
from infodyn.estimators.distributed import sync_on_backend_device
from infodyn.estimators.pooling import compute_dtype


class KnowledgeEntropy(Metric):
    """Per-block entropy of the normalised mean |FFN coefficient| over neurons.

    Args:
        num_layers: L, to allocate state now (DDP); ``None`` infers ``[L, F]`` on first update.
        ffn_dim: F, allocated together with ``num_layers``.
    """

    name = "knowledge_entropy"
    input_kind = "ffn_activations"
    is_differentiable = False
    higher_is_better = None
    full_state_update = True  # forward() stays correct with lazily sized state

    def __init__(
        self, num_layers: int | None = None, ffn_dim: int | None = None, **kwargs
    ) -> None:
        kwargs.setdefault("dist_sync_fn", sync_on_backend_device)  # any state device, any backend
        super().__init__(**kwargs)
        if (num_layers is None) != (ffn_dim is None):
            raise ValueError("give both num_layers and ffn_dim, or neither")
        shape = (0, 0) if num_layers is None else (num_layers, ffn_dim)
        self._scratch: Tensor | None = None  # CPU |a| buffer, see _abs (not state)
        self.add_state("sum_abs", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_tokens", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_batches", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state(
            "nonfinite_batches", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.persistent(True)

    def _wrap_compute(self, compute):
        return keep_layer_axis(super()._wrap_compute(compute))

    def update(self, states: Sequence[Tensor], attention_mask: Tensor) -> None:
        """Add one batch: ``states`` = L tensors ``[B, T, F]`` (FFN output-projection inputs)."""
        if len(states) < 1:
            raise ValueError("need at least one block's FFN activations")
        shape = (len(states), states[0].shape[-1])
        if self.sum_abs.numel() == 0:
            self.sum_abs = torch.zeros(shape, dtype=torch.float64, device=self.device)
        elif tuple(self.sum_abs.shape) != shape:
            raise ValueError(
                f"KnowledgeEntropy: got [L, F] = {shape} but the running state is "
                f"{tuple(self.sum_abs.shape)}; build a new estimator after changing the model."
            )
        real = attention_mask != 0
        if real.device != states[0].device:
            real = real.to(states[0].device)
        with torch.no_grad():
            rows = []
            for a in states:
                if a.dim() != 3 or tuple(a.shape[:2]) != tuple(attention_mask.shape):
                    raise ValueError(
                        f"activations must be [B, T, F] matching the mask "
                        f"{tuple(attention_mask.shape)}, got {tuple(a.shape)}"
                    )
                a_abs = self._abs(a.detach())  # a fresh buffer: zeroing padding in place is safe
                # masked_fill, not a masked sum: 0 * NaN = NaN must never let padding count
                a_abs.masked_fill_(~real.unsqueeze(-1), 0.0)
                rows.append(a_abs.sum(dim=(0, 1)).double())
            batch_sum = torch.stack(rows)
        # a non-finite batch adds nothing: where(), not an `if` that would read it on the host
        finite = torch.isfinite(batch_sum).all()
        self.sum_abs += torch.where(finite, batch_sum, 0.0)
        self.num_tokens += torch.where(finite, real.sum(), 0)
        self.num_batches += finite.long()
        self.nonfinite_batches += (~finite).long()

    def _abs(self, a: Tensor) -> Tensor:
        """``|a|`` in the compute dtype, in a buffer the caller may overwrite. On the CPU it is
        one scratch buffer that every block and batch reuse (a fresh ``[B, T, F]`` allocation
        per block costs page faults there); GPUs' caching allocators make a fresh one cheap."""
        dtype = compute_dtype(a.dtype)
        if a.device.type != "cpu":
            return a.to(dtype).abs_() if a.dtype != dtype else a.abs()
        scratch = self._scratch
        if scratch is None or scratch.numel() < a.numel() or scratch.dtype != dtype:
            scratch = self._scratch = torch.empty(a.numel(), dtype=dtype)
        out = scratch[: a.numel()].view(a.shape)
        if a.dtype == dtype:
            return torch.abs(a, out=out)
        return out.copy_(a).abs_()  # bf16/fp16: upcast into the buffer first

    def reset(self) -> None:
        """Zero the sums and counters; free the scratch buffer (sizes change between epochs)."""
        super().reset()
        self._scratch = None

    def _series(self) -> Tensor:
        if self.sum_abs.numel() == 0:
            raise RuntimeError("KnowledgeEntropy: no update() yet, so [L, F] is unknown")
        total = self.sum_abs.sum(dim=-1, keepdim=True)
        p = self.sum_abs / total  # the token count cancels: mean |a| normalises to the same p
        entropy = -torch.special.xlogy(p, p).sum(dim=-1)
        return torch.where(total.squeeze(-1) > 0, entropy, math.nan).cpu()

    def compute(self) -> Tensor:
        """``[L]`` float64 knowledge entropy in nats (NaN for a block with no mass)."""
        return self._series()

    def summary(self) -> dict[str, Tensor | float | int]:
        """``knowledge_entropy`` ``[L]`` and the counters, summed over DDP processes (sums over
        tokens need no global batch: ``num_batches`` counts every process's batches)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn):
            return {
                "knowledge_entropy": self._series(),
                "num_tokens": int(self.num_tokens),
                "num_batches": int(self.num_batches),
                "nonfinite_batches": int(self.nonfinite_batches),
            }
