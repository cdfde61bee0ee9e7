"""How a model is judged: the task's dev metrics, a (metric, loss) judge for criteria and the
oracle, and eval throughput timed side by side on fixed-shape batches."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from infodyn.forward import model_inputs


def evaluate(cfg: DictConfig, module: Any, dm: Any, loggers: Any = None, stage: str = "") -> dict:
    """Dev metrics as {metric: value}; a further split adds `<metric>_<split>` (MNLI's
    `accuracy_mismatched`).

    An evaluation trainer: under DDP every process sees the whole dev set (the fit trainer
    would shard it and pad with repeats).
    """
    from infodyn.builders import build_trainer

    staged = loggers.stage(stage) if loggers and stage else []
    trainer = build_trainer(cfg, 1, [], staged, None, evaluation=True)
    results = trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    merged: dict[str, float] = {}
    for res in results:
        for key, value in res.items():
            split, _, metric = key.partition("/")
            suffix = "" if split == "val" else "_" + split.removeprefix("validation_")
            merged[f"{metric}{suffix}"] = float(value)
    return merged


def batch_judge(task: Mapping[str, Any]) -> Callable[[torch.nn.Module, list[dict]], dict]:
    """`(model, batches) -> {"metric": task main metric, "loss": mean loss}` (no Trainer)."""
    from infodyn.metrics import build_metrics

    regression = bool(task.get("is_regression", False))
    main = str(task["main_metric"])

    @torch.no_grad()
    def judge(model: torch.nn.Module, batches: list[dict]) -> dict[str, float]:
        metrics = build_metrics(task)
        was_training = model.training
        device = next(model.parameters()).device
        model.eval()
        loss_sum, n = 0.0, 0
        try:
            for batch in batches:
                out = model(**model_inputs(batch, device, labels=True))
                logits = out.logits.squeeze(-1) if regression else out.logits
                size = int(batch["labels"].shape[0])
                metrics.update(logits.float().cpu(), batch["labels"].cpu())
                loss_sum += float(out.loss) * size
                n += size
        finally:
            model.train(was_training)
        return {"metric": float(metrics.compute()[main]), "loss": loss_sum / max(n, 1)}

    return judge


def fixed_shape_batch(dm: Any, batch_size: int, length: int) -> dict[str, torch.Tensor]:
    """One dev batch of `batch_size` examples padded to `length` tokens: the same shape for
    every model timed, so the speed-up measures the blocks, not the padding."""
    rows, loader = [], dm.val_dataloader()[0]
    for batch in loader:
        for i in range(batch["input_ids"].shape[0]):
            rows.append({k: v[i] for k, v in batch.items() if k != "labels"})
            if len(rows) == batch_size:
                break
        if len(rows) == batch_size:
            break
    rows = (rows * batch_size)[:batch_size]  # a dev set smaller than a batch repeats
    pad = int(getattr(dm.tokenizer, "pad_token_id", 0) or 0)
    out = {}
    for key in rows[0]:
        fill = pad if key == "input_ids" else 0
        t = torch.full((batch_size, length), fill, dtype=rows[0][key].dtype)
        for i, r in enumerate(rows):
            m = min(length, r[key].shape[0])
            t[i, :m] = r[key][:m]
        out[key] = t
    return out


@torch.no_grad()
def measure_throughput(
    models: Mapping[str, torch.nn.Module],
    batch: dict[str, torch.Tensor],
    min_seconds: float = 1.0,
    min_batches: int = 3,
    rounds: int = 3,
) -> dict[str, dict[str, float]]:
    """Eval examples/s of each model on `batch`, timed side by side.

    Rounds interleave the models (machine noise hits all alike); a round times one model until
    it has run `min_batches` batches and `min_seconds`; the figure is the median over rounds.
    """
    for model in models.values():
        model.eval()
    n = int(batch["input_ids"].shape[0])
    rates: dict[str, list[float]] = {name: [] for name in models}
    seconds: dict[str, float] = dict.fromkeys(models, 0.0)
    for model in models.values():  # warm-up: allocator, kernels, caches
        model(**_on(batch, model))
    for _ in range(rounds):
        for name, model in models.items():
            inputs = _on(batch, model)
            count, start = 0, time.perf_counter()
            while True:
                model(**inputs)
                count += 1
                elapsed = time.perf_counter() - start
                if count >= min_batches and elapsed >= min_seconds:
                    break
            rates[name].append(count * n / elapsed)
            seconds[name] += elapsed
    return {
        name: {"examples_per_s": statistics.median(r), "seconds": seconds[name], "rounds": rounds}
        for name, r in rates.items()
    }


def _on(batch: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model_inputs(batch, next(model.parameters()).device)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
