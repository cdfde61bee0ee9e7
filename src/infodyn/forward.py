"""Eval forwards of an HF model over tokenized batches: the one loop that collects hidden states.

Used by calibration-based criteria, re-scoring on calibration data, probe estimators and the
oracle, so that each sees the same inputs (padding marked in `attention_mask`, no labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "labels")


def model_inputs(batch: dict, device: torch.device, labels: bool = False) -> dict[str, Tensor]:
    """The tensors of a tokenized batch the HF model accepts, on `device`."""
    keys = MODEL_INPUTS if labels else MODEL_INPUTS[:-1]
    return {k: v.to(device) for k, v in batch.items() if k in keys and isinstance(v, Tensor)}


@torch.no_grad()
def eval_hidden_states(
    model: torch.nn.Module, batches: Iterable[dict]
) -> Iterator[tuple[tuple[Tensor, ...], Tensor]]:
    """Yield `(hidden_states, attention_mask)` per batch: eval mode, no grad, mode restored.

    `hidden_states` is HF's L+1 tuple; padding is marked 0 in `attention_mask` `[B, T]`.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        for batch in batches:
            inputs = model_inputs(batch, device)
            out = model(**inputs, output_hidden_states=True)
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = torch.ones(inputs["input_ids"].shape, device=device, dtype=torch.long)
            yield out.hidden_states, mask
    finally:
        model.train(was_training)
