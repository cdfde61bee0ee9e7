"""Model surgery: the one place that edits a model's layer stack.

`remove_layers` deletes whole transformer blocks in place and fixes the bookkeeping the model
keeps about its depth (config depth, per-block `layer_idx`, `config.layer_types`), so that the
pruned model equals one built directly with fewer layers and loaded with the kept weights.
Rebuild the optimizer afterwards: the removed parameters are gone.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from infodyn.layers import find_layer_list, unwrap


class SurgeryError(ValueError):
    """Blocks that cannot be removed; the message names the input and the fix."""


def _check_indices(layers: Iterable[int], num_layers: int) -> list[int]:
    idx = [int(i) for i in layers]
    dupes = sorted({i for i in idx if idx.count(i) > 1})
    if dupes:
        raise SurgeryError(f"layers to remove contain duplicates {dupes}. Fix: list each once.")
    bad = [i for i in idx if not 0 <= i < num_layers]
    if bad:
        raise SurgeryError(
            f"layers {bad} are outside the model's blocks 0..{num_layers - 1}. "
            "Fix: use 0-based block indices of the current (possibly already pruned) model."
        )
    if len(idx) >= num_layers:
        raise SurgeryError(
            f"removing {len(idx)} of {num_layers} blocks leaves none. Fix: keep at least one."
        )
    return sorted(idx)


def remove_layers(model: nn.Module, layers: Iterable[int]) -> nn.Module:
    """Remove the 0-based blocks `layers` from `model` in place and return it.

    Works for RoBERTa, BERT, MPNet, GPT-2 and Llama-style models, bare, under a classification
    head or wrapped by peft. MPNet's relative attention bias sits in the encoder, shared by all
    blocks, and stays. Updates `config.num_hidden_layers` (GPT-2's `n_layer` is an alias of it),
    `config.layer_types` if present, and every `layer_idx` inside the kept blocks (used by the KV
    cache). GPT-2's `scale_attn_by_inverse_layer_idx` scaling is fixed at construction and is
    kept, so a kept block computes what it computed before.

    Raises:
        SurgeryError: duplicate or out-of-range indices, or nothing would remain.
    """
    _, _, blocks = find_layer_list(model)
    num_layers = len(blocks)
    drop = _check_indices(layers, num_layers)
    for i in reversed(drop):
        del blocks[i]  # ModuleList renumbers its keys: state_dict names stay contiguous
    for new_idx, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    config = unwrap(model).config
    config.num_hidden_layers = len(blocks)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == num_layers:
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(drop)]
    return model


def __getattr__(name: str) -> object:
    # Transitional: export moved to infodyn.export.export_model (surgery only edits models);
    # kept until pruners/__init__.py and stages.py import it from there.
    if name == "export_pruned":
        from infodyn.export import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
