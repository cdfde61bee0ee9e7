"""`LayerDynamicsCallback` under a real `pl.Trainer`, in a LightningModule that is not infodyn's.

Every recorded value is checked against an independent computation on the same batches: the
pure `redundancy_score` on a plain forward, and knowledge entropy from forward hooks on each
block's `intermediate` module (not the tap's pre-hooks). Weights stay fixed (lr=0, no dropout)
wherever the reference must see the same model as training did.

The DDP test runs this file as a script (`python test_callback.py --ddp OUT`): Lightning's DDP
launcher re-executes the script for rank 1.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers import RobertaForSequenceClassification

from conftest import run_rank_script
from infodyn.estimators.callback import INDEXING, LayerDynamicsCallback
from infodyn.estimators.cosine import CosineRedundancy, redundancy_score
from infodyn.estimators.gaussian import GaussianEntropyRate
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy
from tiny_models import tiny_roberta

NUM_LAYERS = 4
TOL = 1e-6


def tiny_model(seed: int = 0) -> RobertaForSequenceClassification:
    return tiny_roberta(seed, NUM_LAYERS)


def random_examples(
    n: int, length: int = 12, seed: int = 1, with_idx: bool = False
) -> list[dict[str, torch.Tensor]]:
    """`n` examples of random tokens, right-padded (pad id 1) to `length` at random lengths."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        real = int(torch.randint(3, length + 1, (1,), generator=gen))
        ids = torch.full((length,), 1, dtype=torch.long)
        ids[:real] = torch.randint(3, 99, (real,), generator=gen)
        mask = torch.zeros(length, dtype=torch.long)
        mask[:real] = 1
        label = torch.randint(0, 2, (), generator=gen)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": label})
        if with_idx:
            out[-1]["idx"] = torch.tensor(len(out) - 1)
    return out


def loader(examples: list, batch_size: int = 4) -> DataLoader:
    return DataLoader(examples, batch_size=batch_size, shuffle=False)


class PlainClassifier(pl.LightningModule):
    """A minimal LightningModule wrapping an HF model: nothing infodyn-specific."""

    def __init__(self, lr: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.lr = lr
        self.net = tiny_model(seed)
        self.val_batches = 0
        self.seen: list[tuple[int, list[int]]] = []  # (epoch, example indices) per batch

    def training_step(self, batch, batch_idx):
        if "idx" in batch:
            batch = dict(batch)
            self.seen.append((self.current_epoch, batch.pop("idx").tolist()))
        return self.net(**batch).loss

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1
        self.log("val/loss", self.net(**batch).loss)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def make_trainer(callbacks: list, max_epochs: int = 2, **kwargs) -> pl.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
    )
    opts.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **opts)


def estimators(**kinds) -> dict:
    out = {"cosine": CosineRedundancy(), "knowledge_entropy": KnowledgeEntropy()}
    out.update(kinds)
    return out


@torch.no_grad()
def reference_scores(model: torch.nn.Module, batches) -> dict[str, list[float]]:
    """Mean per-batch `redundancy_score` and knowledge entropy, from a plain forward per batch."""
    blocks = model.roberta.encoder.layer
    sums = [
        torch.zeros(blk.intermediate.dense.out_features, dtype=torch.float64) for blk in blocks
    ]
    current: dict[int, torch.Tensor] = {}
    handles = [
        blk.intermediate.register_forward_hook(
            lambda mod, args, out, i=i: current.__setitem__(i, out.detach())
        )
        for i, blk in enumerate(blocks)
    ]
    was_training = model.training
    model.train()  # no dropout in these models: the same function as the training forward
    r_batches = []
    try:
        for batch in batches:
            mask = batch["attention_mask"]
            out = model(
                input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True
            )
            r_batches.append(redundancy_score(out.hidden_states, mask))
            real = mask.bool().unsqueeze(-1)
            for i, act in current.items():
                sums[i] += (act.abs() * real).sum(dim=(0, 1)).double()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    entropy = []
    for s in sums:
        p = s / s.sum()
        entropy.append(float(-(p * p.log()).sum()))
    return {
        "redundancy": torch.stack(r_batches).mean(dim=0).tolist(),
        "knowledge_entropy": entropy,
        "num_batches": len(r_batches),
    }


def assert_close(got: list, want: list, tol: float = TOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g is not None and abs(g - w) <= tol, (got, want)


def fit_static(examples, accumulate: int = 1, val: bool = False, **trainer_kwargs):
    module = PlainClassifier(lr=0.0)
    callback = LayerDynamicsCallback(estimators())
    trainer = make_trainer([callback], accumulate_grad_batches=accumulate, **trainer_kwargs)
    val_loader = loader(random_examples(8, seed=7)) if val else None
    trainer.fit(module, loader(examples), val_loader)
    return module, callback, trainer


def test_static_weights_match_independent_forward():
    examples = random_examples(12)
    module, callback, _ = fit_static(examples)
    want = reference_scores(module.net, loader(examples))
    prof = callback.profiles()["finetune"]
    for epoch in range(2):
        assert_close(prof["cosine"]["redundancy"][epoch], want["redundancy"])
        assert_close(
            prof["knowledge_entropy"]["knowledge_entropy"][epoch], want["knowledge_entropy"]
        )
    assert prof["cosine"]["num_batches"] == [3, 3]
    assert prof["knowledge_entropy"]["num_tokens"][0] == sum(
        int(e["attention_mask"].sum()) for e in examples
    )


def test_gradient_accumulation_counts_every_micro_batch():
    examples = random_examples(16)
    _, plain, _ = fit_static(examples, accumulate=1)
    _, accum, _ = fit_static(examples, accumulate=2)
    a, b = plain.profiles()["finetune"], accum.profiles()["finetune"]
    assert b["cosine"]["num_batches"] == [4, 4]
    assert b["knowledge_entropy"]["num_batches"] == [4, 4]
    for epoch in range(2):
        assert_close(b["cosine"]["redundancy"][epoch], a["cosine"]["redundancy"][epoch])
        assert_close(
            b["knowledge_entropy"]["knowledge_entropy"][epoch],
            a["knowledge_entropy"]["knowledge_entropy"][epoch],
        )


def test_profiles_structure_and_logged_keys():
    _, callback, trainer = fit_static(random_examples(8))
    prof = callback.profiles()
    assert prof["indexing"] == INDEXING and "0-based" in prof["indexing"]
    assert set(prof) == {"indexing", "finetune"}
    for key, primary in (("cosine", "redundancy"), ("knowledge_entropy", "knowledge_entropy")):
        entry = prof["finetune"][key]
        assert entry["layers"] == list(range(NUM_LAYERS))
        assert len(entry[primary]) == 2  # one list per epoch
        assert all(len(epoch) == NUM_LAYERS for epoch in entry[primary])
    for name in ("redundancy", "knowledge_entropy"):
        for idx in range(NUM_LAYERS):
            key = f"finetune/{name}/layer_{idx:02d}"  # namespaced by the stage
            assert key in trainer.callback_metrics, sorted(trainer.callback_metrics)
    last = prof["finetune"]["cosine"]["redundancy"][-1]
    got = trainer.callback_metrics["finetune/redundancy/layer_02"]
    assert float(got) == pytest.approx(last[2])
    json.dumps(prof, allow_nan=False)  # results.json-safe


def test_block_ids_name_the_original_blocks_after_pruning():
    # a model pruned from 8 blocks to 4 keeps blocks 0, 2, 5, 7 of the original
    from infodyn.pruners.surgery import remove_layers

    module = PlainClassifier(lr=0.0)
    original = tiny_roberta(0, 8)
    remove_layers(original, [1, 3, 4, 6])
    module.net = original
    kept = [0, 2, 5, 7]
    callback = LayerDynamicsCallback(estimators(), stage="recover", block_ids=kept)
    trainer = make_trainer([callback], max_epochs=1)
    trainer.fit(module, loader(random_examples(8)))
    prof = callback.profiles()["recover"]
    assert prof["cosine"]["layers"] == kept and prof["knowledge_entropy"]["layers"] == kept
    logged = {k for k in trainer.callback_metrics if k.startswith("recover/redundancy/")}
    assert logged == {f"recover/redundancy/layer_{b:02d}" for b in kept}
    r = prof["cosine"]["redundancy"][0]
    assert float(trainer.callback_metrics["recover/redundancy/layer_05"]) == pytest.approx(r[2])
    assert callback.state_dict()["block_ids"] == kept


def test_block_ids_are_checked():
    with pytest.raises(ValueError, match="distinct"):
        LayerDynamicsCallback(estimators(), block_ids=[0, 0, 1])
    with pytest.raises(ValueError, match="non-negative ints"):
        LayerDynamicsCallback(estimators(), block_ids=[0, -1])
    # a count that does not match the model is refused at the first record, naming the fix
    callback = LayerDynamicsCallback(estimators(), block_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="block_ids has 3 entries but estimator 'cosine'"):
        make_trainer([callback], max_epochs=1).fit(
            PlainClassifier(lr=0.0), loader(random_examples(8))
        )


def test_validation_forwards_never_reach_estimators():
    examples = random_examples(16)
    # validation after every 2 training batches, i.e. mid-epoch as well as at its end
    module, callback, _ = fit_static(examples, val=True, val_check_interval=2)
    assert module.val_batches >= 2 * 2 * 2  # it did run: 2 epochs x 2 checks x 2 batches
    prof = callback.profiles()["finetune"]
    assert prof["cosine"]["num_batches"] == [4, 4]
    assert prof["knowledge_entropy"]["num_batches"] == [4, 4]
    want = reference_scores(module.net, loader(examples))
    assert_close(prof["cosine"]["redundancy"][1], want["redundancy"])
    assert not module.net.config.output_hidden_states  # the tap restored the setting


def _fit_moving(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None):
    pl.seed_everything(0)
    module = PlainClassifier(lr=1e-2)
    ests = estimators(gaussian=GaussianEntropyRate(probe_size=8, k=2))
    callback = LayerDynamicsCallback(ests, probe_dataloader=loader(random_examples(8, seed=5)))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = make_trainer([callback, ckpt], max_epochs=max_epochs, enable_checkpointing=True)
    trainer.fit(module, loader(random_examples(12)), ckpt_path=ckpt_path)
    return callback


def test_resume_equals_uninterrupted_run(tmp_path):
    full = _fit_moving(tmp_path / "full", max_epochs=2).profiles()
    _fit_moving(tmp_path / "part", max_epochs=1)
    last = tmp_path / "part" / "last.ckpt"
    assert last.is_file()
    resumed = _fit_moving(tmp_path / "part", max_epochs=2, ckpt_path=str(last)).profiles()
    assert set(resumed["finetune"]) == set(full["finetune"])
    for key, entry in full["finetune"].items():
        for series, values in entry.items():
            got = resumed["finetune"][key][series]
            if series == "layers":
                assert got == values
                continue
            assert len(got) == len(values) == 2, (key, series)
            for g, w in zip(got, values, strict=True):
                g, w = (g, w) if isinstance(w, list) else ([g], [w])
                assert_close(g, w)
    # weights moved, so the epochs differ: the comparison above is not vacuous
    r = full["finetune"]["cosine"]["redundancy"]
    assert max(abs(a - b) for a, b in zip(r[0], r[1], strict=True)) > 1e-6


def test_mid_epoch_state_keeps_the_update_counts():
    # a checkpoint taken mid-epoch: the restored callback must still see that the epoch had
    # batches (record_epoch reads torchmetrics' update count, which state_dict does not carry)
    from infodyn.estimators.callback import record_epoch

    net = tiny_model(0)
    src = LayerDynamicsCallback(estimators())
    for batch in loader(random_examples(8)):
        out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=True)  # fmt: skip
        src.estimators["cosine"].update(out.hidden_states, batch["attention_mask"])
    restored = LayerDynamicsCallback(estimators())
    restored.load_state_dict(copy.deepcopy(src.state_dict()))
    assert restored.estimators["cosine"]._update_count == 2
    hist: dict = {}
    record_epoch(hist, {"cosine": restored.estimators["cosine"]})
    assert hist["cosine"]["num_batches"] == [2]
    assert None not in hist["cosine"]["redundancy"][0]


def test_an_epoch_whose_every_batch_had_a_layerdrop_hole_says_so(caplog):
    from infodyn.estimators.callback import record_epoch
    from infodyn.estimators.knowledge_entropy import KnowledgeEntropy

    hist: dict = {}
    with caplog.at_level("WARNING", logger="infodyn"):
        record_epoch(hist, {"knowledge_entropy": KnowledgeEntropy()}, 8, "finetune epoch 2")
    (msg,) = [r.getMessage() for r in caplog.records if "saw no batch" in r.getMessage()]
    assert "finetune epoch 2 (LayerDrop skipped a block in all 8 of its batches" in msg
    assert hist["knowledge_entropy"]["incomplete_batches"] == [8]  # a gap, not a crash


def test_probe_estimator_reference_and_epochs():
    probe = loader(random_examples(8, seed=5))
    module = PlainClassifier(lr=1e-2)
    initial = copy.deepcopy(module.net)
    gauss = GaussianEntropyRate(probe_size=8, k=2)
    callback = LayerDynamicsCallback({"gaussian": gauss}, probe_dataloader=probe)
    assert not callback.reference_committed["gaussian"]
    make_trainer([callback], max_epochs=1).fit(module, loader(random_examples(12)))
    assert callback.reference_committed["gaussian"]
    entry = callback.profiles()["finetune"]["gaussian"]
    assert entry["layers"] == list(range(NUM_LAYERS))
    assert entry["num_probe"] == [8]

    # independent: reference pass from the initial weights, current pass from the trained ones
    check = GaussianEntropyRate(probe_size=8, k=2)
    for net in (initial, module.net):
        net.eval()
        with torch.no_grad():
            for batch in probe:
                mask = batch["attention_mask"]
                hs = net(
                    input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True
                ).hidden_states
                check.update(hs, mask)
        if net is initial:
            check.commit()
    want = check.summary()
    assert_close(entry["gaussian"][0], want["gaussian"].tolist())
    assert_close(entry["trace_A"][0], want["trace_A"].tolist())


# -- DDP: two CPU processes (gloo). For training Lightning always inserts a *shuffling*
# DistributedSampler (seed PL_GLOBAL_SEED, set_epoch per epoch), so each rank's batches are known
# from torch's DistributedSampler with the same arguments; the script also records them.
DDP_N, DDP_BATCH, DDP_SEED = 16, 4, 0


def expected_rank_batches(epoch: int, world: int = 2) -> list[list[list[int]]]:
    """Per rank, the example indices of each batch in `epoch` (what Lightning's sampler gives)."""
    out = []
    for rank in range(world):
        sampler = DistributedSampler(
            range(DDP_N), num_replicas=world, rank=rank, shuffle=True, seed=DDP_SEED
        )
        sampler.set_epoch(epoch)
        idx = list(sampler)
        out.append([idx[i : i + DDP_BATCH] for i in range(0, len(idx), DDP_BATCH)])
    return out


def _ddp_main(out_dir: str) -> None:
    pl.seed_everything(DDP_SEED)
    module = PlainClassifier(lr=0.0)
    ests = {
        "cosine": CosineRedundancy(num_layers=NUM_LAYERS),  # batch_scope="global"
        "cosine_local": CosineRedundancy(num_layers=NUM_LAYERS, batch_scope="local"),
        "knowledge_entropy": KnowledgeEntropy(num_layers=NUM_LAYERS, ffn_dim=37),
    }
    callback = LayerDynamicsCallback(ests)
    trainer = make_trainer(
        [callback], strategy="ddp", devices=2, use_distributed_sampler=True, deterministic=False
    )
    trainer.fit(module, loader(random_examples(DDP_N, with_idx=True), batch_size=DDP_BATCH))
    path = Path(out_dir) / f"rank{trainer.global_rank}.json"
    path.write_text(json.dumps({"profiles": callback.profiles(), "seen": module.seen}))


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    ranks = run_rank_script([sys.executable, __file__, "--ddp", str(tmp_path)], tmp_path)
    assert ranks[0]["profiles"] == ranks[1]["profiles"]  # every rank reports the same values
    prof = ranks[0]["profiles"]["finetune"]
    assert prof["cosine"]["num_batches"] == [2, 2]  # 2 global batches of 2 x 4 per epoch
    assert prof["cosine_local"]["num_batches"] == [4, 4]  # 2 ranks x 2 local batches
    assert prof["knowledge_entropy"]["num_batches"] == [4, 4]

    examples = random_examples(DDP_N)
    for epoch in range(2):
        per_rank = expected_rank_batches(epoch)
        for rank in range(2):
            seen = [idx for e, idx in ranks[rank]["seen"] if e == epoch]
            assert seen == per_rank[rank]
        # global: one process over the global batches, samples in DistributedSampler order
        # (sample q of rank r at position 2q + r)
        global_batches = [
            [i for pair in zip(*step, strict=True) for i in pair]
            for step in zip(*per_rank, strict=True)
        ]
        # local: one process over every rank's own batches
        local_batches = [idx for batches in per_rank for idx in batches]
        for key, batches in (("cosine", global_batches), ("cosine_local", local_batches)):
            single_loader = DataLoader(
                [[examples[i] for i in idx] for idx in batches], batch_size=None, collate_fn=_stack
            )
            _, single, _ = fit_static_loader(single_loader, max_epochs=1)
            want = single.profiles()["finetune"]
            assert want["cosine"]["num_batches"] == [len(batches)]
            assert_close(prof[key]["redundancy"][epoch], want["cosine"]["redundancy"][0])
            # knowledge entropy sums over tokens: the grouping into batches does not matter
            assert_close(
                prof["knowledge_entropy"]["knowledge_entropy"][epoch],
                want["knowledge_entropy"]["knowledge_entropy"][0],
            )
            independent = reference_scores(tiny_model(0), single_loader)
            assert_close(prof[key]["redundancy"][epoch], independent["redundancy"])
            assert_close(
                prof["knowledge_entropy"]["knowledge_entropy"][epoch],
                independent["knowledge_entropy"],
            )
        # the pairs that straddle ranks make the two scopes differ
        assert prof["cosine"]["redundancy"][epoch] != prof["cosine_local"]["redundancy"][epoch]


def _stack(batch: list[dict]) -> dict:
    return {k: torch.stack([ex[k] for ex in batch]) for k in batch[0]}


def fit_static_loader(train_loader, max_epochs: int = 2):
    module = PlainClassifier(lr=0.0)
    callback = LayerDynamicsCallback(estimators())
    trainer = make_trainer([callback], max_epochs=max_epochs)
    trainer.fit(module, train_loader)
    return module, callback, trainer


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ddp":
        torch.set_num_threads(1)
        _ddp_main(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} --ddp OUT_DIR")
