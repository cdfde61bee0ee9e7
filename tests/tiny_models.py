"""Tiny random sequence classifiers (RoBERTa, BERT, GPT-2, Llama, MPNet) built from their HF
configs."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MPNetConfig,
    RobertaConfig,
    RobertaForSequenceClassification,
)

ARCHS = ("roberta", "bert", "gpt2", "llama")
# MPNet's blocks return a tuple and share the encoder's relative attention bias: every path
# that edits or hooks blocks should also run on it.
ALL_ARCHS = (*ARCHS, "mpnet")


def tiny(arch: str, layers: int = 4):
    common = dict(vocab_size=99, num_labels=2, pad_token_id=1)
    if arch == "roberta":
        cfg = RobertaConfig(
            hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=37, **common,
        )  # fmt: skip
    elif arch == "bert":
        cfg = BertConfig(
            hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=37, **common,
        )  # fmt: skip
    elif arch == "mpnet":
        cfg = MPNetConfig(
            hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=66,
            **common,
        )  # fmt: skip
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=64, **common)
    else:
        cfg = LlamaConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common,
        )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def tiny_roberta(seed: int = 0, num_layers: int = 4) -> RobertaForSequenceClassification:
    """Tiny RoBERTa classifier without dropout: its training forwards are deterministic."""
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return RobertaForSequenceClassification(config)
