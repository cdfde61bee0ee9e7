"""A plain task evaluation and a `ScoringContext` for pruner tests (no trainer, no data module)."""

from __future__ import annotations

import torch

from infodyn.forward import model_inputs
from infodyn.pruners.base import ScoringContext


@torch.no_grad()
def plain_evaluate(model, batches) -> dict[str, float]:
    """Accuracy (classification) or minus the MSE (regression), and the mean HF loss."""
    device = next(model.parameters()).device
    loss, hits, n = 0.0, 0.0, 0
    for batch in batches:
        out = model(**model_inputs(batch, device, labels=True))
        size = int(batch["labels"].shape[0])
        loss += float(out.loss) * size
        if out.logits.shape[-1] > 1:
            hits += float((out.logits.argmax(-1) == batch["labels"]).sum())
        else:
            hits -= float(((out.logits.squeeze(-1) - batch["labels"]) ** 2).sum())
        n += size
    return {"metric": hits / n, "loss": loss / n}


def labelled_batches(n: int = 2, batch: int = 3, seq: int = 8, seed: int = 3) -> list[dict]:
    """Random token batches (one row padded) with binary labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 99, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[1, seq - 2 :] = 0
        ids[1, seq - 2 :] = 1
        labels = torch.randint(0, 2, (batch,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def context(model, batches, k, *, profiles=None, estimators=None, seed=0, evaluate=None):
    """A `ScoringContext` over `model` whose calibration set is `batches`."""
    from infodyn.layers import num_blocks

    return ScoringContext(
        model=model,
        num_layers=num_blocks(model),
        k=k,
        seed=seed,
        profiles=profiles or {},
        estimators=estimators or {},
        calibration=lambda: batches,
        evaluate=evaluate or plain_evaluate,
    )
