"""`GlueClassifier`: the LightningModule that fine-tunes an HF sequence classifier on a GLUE task.

It takes primitives (plain dicts) and builds the HF model itself, so `save_hyperparameters()` and
`load_from_checkpoint` work, including for a model whose blocks were pruned (`pruned_layers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from transformers import get_linear_schedule_with_warmup

from infodyn.layers import find_layer_list
from infodyn.metrics import build_metrics
from infodyn.models import ModelConfigError, build_model


def split_prefix(eval_split_names: Sequence[str], idx: int) -> str:
    """Where eval split `idx` logs: `val/<metric>` for the first, `<split>/<metric>` for others."""
    return "val" if idx == 0 else str(eval_split_names[idx])


def logged_keys(task: Mapping[str, Any], eval_split_names: Sequence[str]) -> list[str]:
    """Every metric key a training stage logs: what a callback may `monitor`."""
    keys = [
        f"{split_prefix(eval_split_names, idx)}/{name}"
        for idx in range(len(eval_split_names))
        for name in [*task["metrics"], "loss"]
    ]
    # `train/loss` is logged on step and on epoch: Lightning adds the two forked names
    return [*keys, "train/loss", "train/loss_step", "train/loss_epoch"]


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python (hyper-parameters must pickle and YAML cleanly)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return obj


class GlueClassifier(pl.LightningModule):
    """Fine-tunes `AutoModelForSequenceClassification` with AdamW and linear warm-up/decay.

    Args:
        model: a `conf/model/*.yaml` entry as a dict.
        task: a `conf/task/*.yaml` entry as a dict (num_labels, metrics, eval split names...).
        optim: `lr`, `weight_decay`, `warmup_ratio`.
        finetune: `name: full|lora|last_blocks`, with LoRA's settings or last_blocks' `n`.
        pruned_layers: 0-based blocks removed from the model (applied right after it is built).
        eval_split_names: names of the validation dataloaders in order; the first logs as
            `val/<metric>`, the others as `<name>/<metric>` (MNLI's `validation_mm`).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        task: Mapping[str, Any],
        optim: Mapping[str, Any],
        finetune: Mapping[str, Any] | None = None,
        pruned_layers: Sequence[int] = (),
        eval_split_names: Sequence[str] = ("validation",),
        hf_model: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        model, task, optim = _plain(model), _plain(task), _plain(optim)
        finetune = _plain(finetune) or {"name": "full"}
        self.save_hyperparameters(
            {
                "model": model,
                "task": task,
                "optim": optim,
                "finetune": finetune,
                "pruned_layers": list(pruned_layers),
                "eval_split_names": list(eval_split_names),
            }
        )
        self.is_regression = bool(task.get("is_regression", False))
        mode = finetune.get("name", "full")
        if hf_model is not None:  # `pruned()`: trained, already pruned and adapted
            self.model = hf_model
        else:
            self.model = build_model(
                _Cfg(model),
                num_labels=int(task["num_labels"]),
                problem_type="regression" if self.is_regression else "single_label_classification",
            )
            if pruned_layers:
                from infodyn.pruners.surgery import remove_layers

                remove_layers(self.model, list(pruned_layers))
            if mode == "lora":
                self.model = apply_lora(self.model, finetune)
        if mode == "last_blocks":  # on a pruned copy too: its own last n blocks train
            train_last_blocks(self.model, finetune.get("n"))
        elif mode not in ("full", "lora"):
            raise ModelConfigError(
                f"finetune={mode!r} is unknown. Fix: finetune=full, finetune=lora or "
                "finetune=last_blocks."
            )
        # from_pretrained returns eval mode and Lightning 2.6 keeps a module's mode at fit
        # start: without this, fine-tuning would silently run without dropout.
        self.model.train()
        self.eval_split_names = list(eval_split_names)
        self.val_metrics = torch.nn.ModuleList(
            [build_metrics(task) for _ in self.eval_split_names]
        )

    def pruned(self, layers: Sequence[int]) -> GlueClassifier:
        """A new module holding a copy of this one's trained model without `layers` (0-based
        blocks): one surgery, and hyper-parameters that let `load_from_checkpoint` rebuild it."""
        import copy

        from infodyn.models import find_hf_model
        from infodyn.pruners.surgery import remove_layers

        model = copy.deepcopy(self.model)
        remove_layers(find_hf_model(model), list(layers))
        hparams = {**self.hparams, "pruned_layers": sorted(int(i) for i in layers)}
        return GlueClassifier(**hparams, hf_model=model)

    # -- forward and steps
    def forward(self, batch: Mapping[str, Tensor]) -> Any:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs, labels=batch.get("labels"))

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch)
        loss = out.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}). The last good checkpoint is "
                "kept; lower optim.lr, enable trainer.gradient_clip_val, or use precision=32-true."
            )
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["input_ids"].shape[0],
        )
        return loss

    def on_fit_start(self) -> None:
        # an earlier `trainer.validate` (inference mode) leaves the metric states as inference
        # tensors; fit's own validation updates them in place outside it, which torch refuses
        for metrics in self.val_metrics:
            metrics.reset()

    def validation_step(
        self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        out = self(batch)
        logits = out.logits.squeeze(-1) if self.is_regression else out.logits
        self.val_metrics[dataloader_idx].update(logits.float(), batch["labels"])
        prefix = self._split_prefix(dataloader_idx)
        self.log(
            f"{prefix}/loss",
            out.loss,
            on_epoch=True,
            add_dataloader_idx=False,
            batch_size=batch["input_ids"].shape[0],
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        for idx, metrics in enumerate(self.val_metrics):
            prefix = self._split_prefix(idx)
            values = metrics.compute()
            for name, value in values.items():
                self.log(
                    f"{prefix}/{name}",
                    value.float(),
                    prog_bar=(idx == 0),
                    add_dataloader_idx=False,
                )
            metrics.reset()

    def _split_prefix(self, idx: int) -> str:
        return split_prefix(self.eval_split_names, idx)

    # -- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.hparams["optim"]
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
        params = decay + no_decay
        # Fused AdamW (as HF Trainer's default adamw_torch_fused): on the CPU torch otherwise
        # steps tensor by tensor, a visible share of a short-sequence step (foreach=True does
        # not recover it). Not under mixed precision: Lightning's AMP plugin refuses to clip the
        # gradients of an optimizer that unscales them itself.
        mixed = "mixed" in str(getattr(self._trainer, "precision", "") or "")
        fused = (
            bool(params)
            and not mixed
            and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        )
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(optim.get("weight_decay", 0.0))},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=float(optim["lr"]),
            fused=fused or None,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(float(optim.get("warmup_ratio", 0.0)) * total)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class _Cfg(dict):
    """A dict with attribute access, so `build_model` takes plain dicts and DictConfigs alike."""

    __getattr__ = dict.__getitem__


def apply_lora(model: torch.nn.Module, finetune: Mapping[str, Any]) -> torch.nn.Module:
    """Wrap `model` with peft LoRA adapters; the classifier head stays fully trainable."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=int(finetune.get("r", 8)),
        lora_alpha=int(finetune.get("alpha", 16)),
        lora_dropout=float(finetune.get("dropout", 0.1)),
        target_modules=finetune.get("target_modules"),
    )
    return get_peft_model(model, config)


def train_last_blocks(model: torch.nn.Module, n: Any) -> torch.nn.Module:
    """Freeze `model` except its last `n` blocks and its head, in place ("Reassessing Layer
    Pruning", ICLR 2026: after pruning this recovers better than LoRA).

    The head is everything after the block list: the classifier (outside the backbone) and the
    backbone's modules registered after the blocks (BERT's pooler, GPT-2's `ln_f`, Llama's
    final `norm`). Embeddings, earlier blocks and what the blocks share (MPNet's relative
    attention bias) stay frozen.

    Raises:
        ModelConfigError: `n` is not an integer in 1..L.
    """
    _, _, blocks = find_layer_list(model)
    num = len(blocks)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= num:
        raise ModelConfigError(
            f"finetune.n={n!r} must be a whole number of blocks in 1..{num} (this model has "
            f"{num}). Fix: finetune.n=2, or finetune=full to train every block."
        )
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    for param in model.parameters():
        param.requires_grad_(False)
    train: list[torch.nn.Module] = list(blocks[num - n :])
    if isinstance(backbone, torch.nn.Module) and backbone is not base:
        in_backbone = {id(p) for p in backbone.parameters()}
        train += [
            m
            for m in base.children()
            if m is not backbone and not any(id(p) in in_backbone for p in m.parameters())
        ]
        train += _after_blocks(backbone, blocks)
    for module in train:
        for param in module.parameters():
            param.requires_grad_(True)
    return model


def _after_blocks(backbone: torch.nn.Module, blocks: torch.nn.ModuleList) -> list[torch.nn.Module]:
    """The backbone's children registered after the one that holds the blocks."""
    children = list(backbone.children())
    for i, child in enumerate(children):
        if child is blocks or any(m is blocks for m in child.modules()):
            return children[i + 1 :]
    return []
