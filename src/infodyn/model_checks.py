"""Checks of the model entry: before it is built (from its config alone) and right after.

The rules here are part of `validation.RULES`; `preflight` runs once the model and tokenizer are
built, still before anything is written.
"""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infodyn.errors import ConfigError


def random_model_config_valid(cfg: DictConfig) -> None:
    """A random model's `model.arch` and `model.config` make a model transformers can build."""
    from transformers import CONFIG_MAPPING

    model = cfg.model
    if model.get("source") != "random":
        return
    if model.get("arch") not in CONFIG_MAPPING:
        raise ConfigError(
            f"model.arch={model.get('arch')!r} is not a transformers model type. Fix: "
            "model.arch=roberta (or bert, gpt2, llama, mpnet), or pick model=roberta_tiny."
        )
    conf = model.get("config") or {}
    width, heads = conf.get("hidden_size"), conf.get("num_attention_heads")
    if isinstance(width, int) and isinstance(heads, int) and heads > 0 and width % heads:
        raise ConfigError(
            f"model.config.hidden_size={width} is not a multiple of "
            f"model.config.num_attention_heads={heads}: the attention heads split the width "
            f"evenly. Fix: model.config.hidden_size={(width // heads + 1) * heads}, or "
            "another head count."
        )
    for key in ("num_hidden_layers", "num_attention_heads"):
        if key in conf and (not isinstance(conf[key], int) or conf[key] < 1):
            raise ConfigError(
                f"model.config.{key}={conf[key]} leaves the model nothing to build (it needs "
                f"an integer >= 1). Fix: model.config.{key}=4."
            )


def hub_model_named(cfg: DictConfig) -> None:
    """A model loaded from files or the hub names them (`model=local` has no default)."""
    model = cfg.model
    if model.get("source") == "hub" and not model.get("name_or_path"):
        raise ConfigError(
            f"model={model.name} loads a model from a folder or the hub but "
            "model.name_or_path is not set. Fix: model.name_or_path=<folder written by "
            "save_pretrained, or a hub id>, or pick a model that needs none (model=roberta_tiny)."
        )


def seq_length_fits_model(cfg: DictConfig) -> None:
    """`data.max_seq_length` within the model's position embeddings (from its config)."""
    limit = model_hf_config(cfg).get("max_positions")
    if limit is not None:
        check_seq_length(cfg, limit)


def check_seq_length(cfg: DictConfig, limit: int) -> None:
    """Refuse `data.max_seq_length` above `limit` tokens (the model's position embeddings)."""
    if int(cfg.data.max_seq_length) > limit:
        raise ConfigError(
            f"data.max_seq_length={cfg.data.max_seq_length} exceeds the limit of "
            f"model={cfg.model.name}, {limit} tokens (its position embeddings). Fix: "
            f"data.max_seq_length={limit} or less."
        )


def model_hf_config(cfg: DictConfig) -> dict[str, Any]:
    """hidden_size and max_positions from the model's HF config (no weights, no network)."""
    entry = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True)
    return _hf_config_facts(entry)


@functools.lru_cache(maxsize=32)
def _hf_config_facts(entry_json: str) -> dict[str, Any]:
    from transformers import AutoConfig

    from infodyn.models import ModelConfigError, max_positions, resolve_model_path

    entry = OmegaConf.create(json.loads(entry_json))
    try:
        if entry.source == "random":
            config = AutoConfig.for_model(entry.arch, **(entry.get("config") or {}))
        else:
            path = resolve_model_path(entry)
            config = AutoConfig.from_pretrained(
                path, trust_remote_code=False, local_files_only=True
            )
    except (ModelConfigError, OSError, ValueError, KeyError, TypeError):
        return {}  # not on disk yet or not loadable: the model builder says why, later
    return {
        "hidden_size": getattr(config, "hidden_size", None),
        "max_positions": max_positions(SimpleNamespace(config=config)),
    }


def preflight(cfg: DictConfig, module: Any, tokenizer: Any) -> None:
    """Checks that need the built model: vocabulary and positions. (The pruner checks k and
    protect itself: `LayerPruner.check`.)"""
    from infodyn.models import find_hf_model, max_positions

    hf_model = find_hf_model(module.model)
    check_vocab(cfg, hf_model, tokenizer)
    limit = max_positions(hf_model)
    if limit is not None:
        check_seq_length(cfg, limit)


def check_vocab(cfg: DictConfig, hf_model: Any, tokenizer: Any) -> None:
    """Every tokenizer id has a row in the model's embedding table."""
    vocab = int(hf_model.get_input_embeddings().num_embeddings)
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"the tokenizer of model={cfg.model.name} has {len(tokenizer)} ids but the model's "
            f"embedding table has {vocab} rows (model.config.vocab_size), so ids >= {vocab} "
            "would crash the forward. Fix: set the model's vocab_size to at least "
            f"{len(tokenizer)}, or pair the model with its own tokenizer."
        )
