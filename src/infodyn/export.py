"""Export a (pruned) model as a folder that explains itself: weights, tokenizer, labels, card.

`export_model` writes safetensors + tokenizer with the task's label names in `config.json`
(`id2label`/`label2id`, so `transformers.pipeline` prints them) and, when given, a model card
`README.md` (the Hub's convention: YAML front matter, then prose), built by `model_card`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from infodyn.io import atomic_dir
from infodyn.killpoints import kill_point
from infodyn.models import find_hf_model, merged_copy


class ExportError(ValueError):
    """An export that cannot be written as asked; the message names the input and the fix."""


def export_model(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    labels: Sequence[str] | None = None,
    card: str | None = None,
) -> Path:
    """Save `model` (safetensors), `tokenizer`, label names and a card to `out_dir`, atomically.

    A peft model is merged (on a copy) into plain weights first, so the folder loads with
    `AutoModelForSequenceClassification.from_pretrained(out_dir)`. The model itself is not
    changed.

    Args:
        labels: class names in id order (`labels[i]` is class i); None for regression tasks,
            which keep transformers' defaults.
        card: the text of `README.md` (see `model_card`); None writes no card.

    Raises:
        ExportError: `labels` do not match the model's head (count, duplicates, regression).
    """
    # the outermost peft wrapper, also when it sits inside a LightningModule
    peft = next((m for m in model.modules() if hasattr(m, "merge_and_unload")), None)
    hf = merged_copy(peft) if peft is not None else find_hf_model(model)
    config = copy.deepcopy(hf.config)
    if labels is not None:
        _set_labels(config, [str(x) for x in labels])
    with atomic_dir(out_dir) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        kill_point("export")  # the kill/resume tests: the weights written, the folder not renamed
        config.save_pretrained(tmp)  # the labelled copy replaces the model's own config.json
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(out_dir)


def _set_labels(config: Any, labels: list[str]) -> None:
    if getattr(config, "problem_type", None) == "regression" or config.num_labels == 1:
        raise ExportError(
            f"labels={labels} given for a regression head (one output). Fix: pass labels=None "
            "for regression tasks such as STS-B."
        )
    if len(labels) != config.num_labels:
        raise ExportError(
            f"{len(labels)} labels {labels} for a head with {config.num_labels} classes. Fix: "
            "pass one name per class, in class-id order."
        )
    if len(set(labels)) != len(labels):
        raise ExportError(f"labels {labels} contain duplicates. Fix: name each class once.")
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}


def model_card(
    base_model: str | None,
    task: str,
    criterion: str,
    removed: Sequence[int],
    num_layers_before: int,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    *,
    labels: Sequence[str] | None = None,
    num_parameters_before: int | None = None,
    num_parameters_after: int | None = None,
    finetune: str | None = None,
    seed: int | None = None,
    datasets: Sequence[str] = ("nyu-mll/glue",),
) -> str:
    """The text of a Hub model card (`README.md`) for a model pruned by `criterion`.

    Args:
        base_model: the hub id it was fine-tuned from (None if it has none: a random model).
        removed: 0-based indices of the removed blocks in the unpruned model.
        metrics: `{stage: {metric: value}}` as in results.json (finetune, pruned, recover, ...).
    """
    from huggingface_hub import ModelCardData

    removed = sorted(int(i) for i in removed)
    after = num_layers_before - len(removed)
    data = ModelCardData(
        base_model=base_model or None,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["infodyn", "layer-pruning", f"pruner-{criterion}", task],
        datasets=list(datasets) or None,
    )
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a model"
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {base_model.split('/')[-1] if base_model else 'model'} pruned to {after} blocks "
        f"({task})",
        "",
        f"Fine-tuned from {source} on {task}, then {len(removed)} of its {num_layers_before} "
        f"transformer blocks were removed, chosen by the `{criterion}` criterion (infodyn).",
        "",
        f"- Removed blocks (0-based, in the unpruned model): {removed or 'none'}",
        f"- Blocks kept: {after} of {num_layers_before}",
    ]
    if num_parameters_before is not None and num_parameters_after is not None:
        lines.append(f"- Parameters: {num_parameters_before:,} -> {num_parameters_after:,}")
    if finetune:
        lines.append(f"- Fine-tuning / recovery mode: {finetune}")
    if seed is not None:
        lines.append(f"- Seed: {seed}")
    if labels:
        lines.append(f"- Labels (class id order): {', '.join(map(str, labels))}")
    if metrics:
        names = sorted({m for values in metrics.values() for m in values})
        lines += [
            "",
            "## Metrics (dev set)",
            "",
            "| stage | " + " | ".join(names) + " |",
            "| --- |" + " --- |" * len(names),
        ]
        for stage, values in metrics.items():
            cells = [_fmt(values.get(m)) for m in names]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        'classify = pipeline("text-classification", model="<this folder>")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
