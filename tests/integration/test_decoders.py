"""Estimators, callback and surgery on tiny random decoders (GPT-2 and Llama sequence classifiers).

Known answers: `pooling: last` on a padded batch (left or right) equals the same formula on each
sequence run alone, unpadded; knowledge entropy through the callback's `ActivationTap` likewise;
after surgery, the scores of the blocks before the first removed one are unchanged.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, GPT2Config, LlamaConfig

from infodyn.estimators import (
    CosineRedundancy,
    GaussianEntropyRate,
    KnowledgeEntropy,
    redundancy_score,
)
from infodyn.estimators.callback import ActivationTap, LayerDynamicsCallback, feed_estimators
from infodyn.layers import num_blocks
from infodyn.models import build_model, build_tokenizer
from infodyn.pruners.redundancy import RedundancyPruner
from infodyn.pruners.surgery import remove_layers

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"
ARCHS = ("gpt2", "llama")
SOURCES = ("config", "yaml")
PAD = 1  # the char tokenizer's <pad>
FFN = 37  # intermediate size of both tiny decoders (odd on purpose: not a multiple of the width)


def tiny(arch: str, layers: int = 4) -> torch.nn.Module:
    """A tiny random decoder classifier from its HF config (no dropout: train == eval forward)."""
    common = dict(vocab_size=99, num_labels=2, pad_token_id=PAD, bos_token_id=0, eos_token_id=2)
    if arch == "gpt2":
        cfg = GPT2Config(
            n_embd=32, n_layer=layers, n_head=4, n_inner=FFN, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )  # fmt: skip
    else:
        cfg = LlamaConfig(
            hidden_size=32, intermediate_size=FFN, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common,
        )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg)


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def from_yaml(arch: str):
    return OmegaConf.load(CONF_MODEL / f"{arch}_tiny.yaml")


def decoder(arch: str, source: str) -> torch.nn.Module:
    """float64, dropout-free: padded and unpadded forwards then agree to ~1e-15."""
    model = tiny(arch) if source == "config" else build_model(from_yaml(arch), num_labels=2)
    return no_dropout(model).double()


def padded_batch(side: str, lengths=(9, 4, 7, 2, 6), seed: int = 1) -> dict[str, torch.Tensor]:
    """Random token ids padded on `side`, with position ids that skip the padding."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = torch.randint(3, 99, (n,), generator=g)
        mask[row, cols] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}


def unpadded(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    real = batch["attention_mask"].bool()
    return [
        {"input_ids": ids[keep][None], "attention_mask": torch.ones(1, int(keep.sum()))}
        for ids, keep in zip(batch["input_ids"], real, strict=True)
    ]


def tap_forward(model, estimators: dict, batch: dict) -> ActivationTap:
    """One training-mode forward through the callback's tap feeding `estimators`."""
    want_hidden = any(e.input_kind == "hidden_states" for e in estimators.values())
    want_ffn = any(e.input_kind == "ffn_activations" for e in estimators.values())
    tap = ActivationTap(
        model, want_hidden, want_ffn, lambda h, f, m: feed_estimators(estimators, h, f, m)
    )
    model.train()
    tap.start()
    try:
        model(**batch)
    finally:
        tap.remove()
    return tap


@pytest.mark.parametrize("arch", ARCHS)
def test_yaml_entry_matches_char_tokenizer(arch):
    cfg = from_yaml(arch)
    model, tok = build_model(cfg, num_labels=3), build_tokenizer(cfg)
    family = "GPT2" if arch == "gpt2" else "Llama"
    assert type(model).__name__ == f"{family}ForSequenceClassification"
    assert model.config.vocab_size == len(tok) == 99
    assert model.config.pad_token_id == tok.pad_token_id == PAD
    assert num_blocks(model) == cfg.config.get("num_hidden_layers", cfg.config.get("n_layer"))
    model.eval()
    enc = tok(["a longer sentence", "hi"], padding=True, return_tensors="pt")
    alone = tok(["hi"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        # pad_token_id set: the head reads the last real token, so padding leaves logits alone
        expected = model(**alone).logits[0]
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cosine_last_pooling_equals_unpadded_last_tokens(arch, side, source):
    model = decoder(arch, source).eval()
    batch = padded_batch(side)
    est = CosineRedundancy(pooling="last")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
        est.update(hidden, batch["attention_mask"])
        # ground truth: each sequence alone, its final token, stacked as a [B, 1, D] "batch"
        alone = [model(**b, output_hidden_states=True).hidden_states for b in unpadded(batch)]
    last = [torch.cat([hs[layer][:, -1:] for hs in alone]) for layer in range(len(hidden))]
    expected = redundancy_score(last, None)
    got = est.compute()
    assert got.shape == (num_blocks(model),) and torch.isfinite(got).all()
    assert ((got >= 0) & (got <= 0.5)).all()
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
    # mean pooling over a side-padded batch must differ: the test can tell which token was read
    mean = CosineRedundancy(pooling="mean")
    mean.update(hidden, batch["attention_mask"])
    assert not torch.allclose(mean.compute(), expected, atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_knowledge_entropy_through_tap_ignores_padding(arch, side):
    model = decoder(arch, "yaml")
    batch = padded_batch(side)
    ests = {"ke": KnowledgeEntropy(), "cos": CosineRedundancy(pooling="last")}
    tap = tap_forward(model, ests, batch)
    assert tap.incomplete_ffn_batches == 0
    assert not model.config.output_hidden_states  # the tap restores the config
    ke = ests["ke"].compute()
    assert ests["ke"].sum_abs.shape == (num_blocks(model), FFN)
    assert int(ests["ke"].num_tokens) == int(batch["attention_mask"].sum())
    assert torch.isfinite(ke).all() and ((ke > 0) & (ke <= math.log(FFN))).all()
    assert torch.isfinite(ests["cos"].compute()).all()

    reference = {"ke": KnowledgeEntropy()}
    for single in unpadded(batch):
        tap_forward(model, reference, single)
    torch.testing.assert_close(ke, reference["ke"].compute(), atol=1e-10, rtol=0)
    torch.testing.assert_close(ests["ke"].sum_abs, reference["ke"].sum_abs, atol=1e-9, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_gaussian_probe_passes_give_finite_scores(arch):
    model = decoder(arch, "config").eval()
    probe = [padded_batch("left", lengths=(5, 9, 3, 8, 6, 7, 4, 9), seed=s) for s in (2, 3)]
    est = GaussianEntropyRate(probe_size=16, k=2, pooling="last")

    def probe_pass():
        with torch.no_grad():
            for batch in probe:
                hidden = model(**batch, output_hidden_states=True).hidden_states
                est.update(hidden, batch["attention_mask"])

    probe_pass()
    est.commit()
    with torch.no_grad():  # a training step's worth of change between the two passes
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    probe_pass()
    out = est.summary()
    assert out["num_probe"] == 16
    for key in ("gaussian", "entropy_rate", "entropy_rate_trace", "mutual_information"):
        assert out[key].shape == (num_blocks(model),) and torch.isfinite(out[key]).all(), key
    assert (out["trace_error"] >= -1e-9).all()
    torch.testing.assert_close(est.compute(), out["gaussian"])


class DecoderClassifier(pl.LightningModule):
    """The minimal host: any LightningModule holding an HF model works with the callback."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def examples(side: str, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 12, (n,), generator=g).tolist()
    batch = padded_batch(side, lengths=lengths, seed=seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(
            batch["input_ids"], batch["attention_mask"], labels, strict=True
        )
    ]


def fit(model, side: str, stage: str, epochs: int = 2, batch_size: int = 4, num_train: int = 12):
    """Train under a real `pl.Trainer` with cosine (last), knowledge entropy and gaussian."""
    estimators = {
        "cosine": CosineRedundancy(pooling="last"),
        "knowledge_entropy": KnowledgeEntropy(),
        "gaussian": GaussianEntropyRate(probe_size=8, k=2, pooling="last"),
    }
    train = examples(side, num_train, seed=10)
    unlabeled = [{k: v for k, v in ex.items() if k != "labels"} for ex in examples(side, 8, 11)]
    probe = DataLoader(unlabeled, batch_size=4)
    callback = LayerDynamicsCallback(estimators, stage=stage, probe_dataloader=probe)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(DecoderClassifier(model), DataLoader(train, batch_size=batch_size))
    real_tokens = sum(int(ex["attention_mask"].sum()) for ex in train)
    return callback, real_tokens


def check_profile(callback, stage: str, num_layers: int, epochs: int, real_tokens: int) -> None:
    profiles = callback.profiles()
    assert "indexing" in profiles
    for key, series in (
        ("cosine", "redundancy"),
        ("knowledge_entropy", "knowledge_entropy"),
        ("gaussian", "gaussian"),
    ):
        entry = profiles[stage][key]
        assert entry["layers"] == list(range(num_layers)), key
        assert len(entry[series]) == epochs, key
        for epoch in entry[series]:
            assert len(epoch) == num_layers and None not in epoch, (key, epoch)
    assert profiles[stage]["cosine"]["num_batches"] == [3] * epochs
    assert profiles[stage]["knowledge_entropy"]["num_tokens"] == [real_tokens] * epochs
    assert profiles[stage]["knowledge_entropy"]["incomplete_batches"] == [0] * epochs


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_callback_under_trainer_records_profiles(arch, side):
    model = build_model(from_yaml(arch), num_labels=2)
    callback, real_tokens = fit(model, side, "finetune")
    check_profile(callback, "finetune", num_blocks(model), epochs=2, real_tokens=real_tokens)
    assert not model.config.output_hidden_states  # teardown removed the tap
    assert not model._forward_hooks


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_after_surgery_have_length_l_minus_k(arch):
    model = no_dropout(tiny(arch, layers=6)).double()
    batch = padded_batch("right")
    before = {"cos": CosineRedundancy(pooling="last"), "ke": KnowledgeEntropy()}
    tap_forward(model, before, batch)
    drop = [2, 4]
    pruned = remove_layers(copy.deepcopy(model), drop)
    assert num_blocks(pruned) == 4 and pruned.config.num_hidden_layers == 4

    with pytest.raises(ValueError, match="new estimator"):  # L changed: the old state refuses
        tap_forward(pruned, {"cos": before["cos"]}, batch)
    after = {"cos": CosineRedundancy(pooling="last"), "ke": KnowledgeEntropy()}
    tap_forward(pruned, after, batch)
    cos, ke = after["cos"].compute(), after["ke"].compute()
    assert cos.shape == ke.shape == (4,)
    assert torch.isfinite(cos).all() and torch.isfinite(ke).all()
    # blocks 0..1 and their inputs are untouched (z_2 is not the final, normed state either way)
    torch.testing.assert_close(cos[:2], before["cos"].compute()[:2], atol=1e-12, rtol=0)
    torch.testing.assert_close(ke[:2], before["ke"].compute()[:2], atol=1e-12, rtol=0)
    assert not torch.allclose(cos[2:], before["cos"].compute()[[3, 5]])
    pruned.eval()
    with torch.no_grad():
        assert torch.isfinite(pruned(**batch).logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_trainer_profile_then_prune_then_recover(arch):
    model = build_model(from_yaml(arch), num_labels=2)
    callback, tokens = fit(model, "left", "finetune", epochs=1)
    scores = torch.tensor(callback.profiles()["finetune"]["cosine"]["redundancy"][-1])
    drop = RedundancyPruner(k=2).select(scores, 2)
    assert drop == sorted(scores.argsort(descending=True)[:2].tolist())
    remove_layers(model, drop)
    recover, tokens = fit(model, "left", "recover", epochs=1)
    check_profile(recover, "recover", num_blocks(model), epochs=1, real_tokens=tokens)
    assert num_blocks(model) == 2
