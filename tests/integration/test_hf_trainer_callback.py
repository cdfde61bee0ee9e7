"""`LayerDynamicsTrainerCallback` under a real HF `Trainer` (CPU, tiny random RoBERTa).

With lr=0 and no dropout the weights never change, so each epoch's recorded values must equal
the pure functions on the same batches: the mean per-batch `redundancy_score` of a plain
forward, and knowledge entropy from forward hooks on each block's `intermediate` module.
The resume tests train (lr > 0, deterministic) with checkpoints, resume a fresh Trainer and a
fresh callback from one of them, and compare the profiles with the uninterrupted run's.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler
from transformers import (
    RobertaForSequenceClassification,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from conftest import run_rank_script
from infodyn.estimators.callback import INDEXING
from infodyn.estimators.cosine import CosineRedundancy, redundancy_score
from infodyn.estimators.gaussian import GaussianEntropyRate
from infodyn.estimators.hf_trainer import STATE_FILE, LayerDynamicsTrainerCallback
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy
from tiny_models import tiny_roberta

NUM_LAYERS, N_TRAIN, BATCH = 4, 16, 4


def tiny_model(seed: int = 0) -> RobertaForSequenceClassification:
    return tiny_roberta(seed, NUM_LAYERS)


def random_examples(n: int, length: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        real = int(torch.randint(3, length + 1, (1,), generator=gen))
        ids = torch.full((length,), 1, dtype=torch.long)  # 1 = RoBERTa's pad id
        ids[:real] = torch.randint(3, 99, (real,), generator=gen)
        mask = torch.zeros(length, dtype=torch.long)
        mask[:real] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(real % 2)})
    return out


def cpu_args(output_dir, **settings) -> TrainingArguments:
    """TrainingArguments for these tests: CPU, batch BATCH, quiet, no logging; plus `settings`."""
    quiet = dict(
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=BATCH,
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return TrainingArguments(output_dir=str(output_dir), **{**quiet, **settings})


class InOrderTrainer(Trainer):
    """Train batches in dataset order, so the reference can replay the same batches."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def in_order_trainer(args: TrainingArguments, callback) -> InOrderTrainer:
    """A fresh tiny model on the N_TRAIN examples, in order, with `callback`."""
    return InOrderTrainer(
        model=tiny_model(),
        args=args,
        train_dataset=random_examples(N_TRAIN),
        data_collator=default_data_collator,
        callbacks=[callback],
    )


@torch.no_grad()
def reference(model, batches) -> dict[str, list[float]]:
    blocks = model.roberta.encoder.layer
    sums = [torch.zeros(37, dtype=torch.float64) for _ in blocks]
    acts: dict[int, torch.Tensor] = {}
    handles = [
        blk.intermediate.register_forward_hook(
            lambda mod, args, out, i=i: acts.__setitem__(i, out.detach())
        )
        for i, blk in enumerate(blocks)
    ]
    model.train()
    r = []
    try:
        for batch in batches:
            mask = batch["attention_mask"]
            hs = model(
                input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True
            ).hidden_states
            r.append(redundancy_score(hs, mask))
            for i, a in acts.items():
                sums[i] += (a.abs() * mask.bool().unsqueeze(-1)).sum(dim=(0, 1)).double()
    finally:
        for h in handles:
            h.remove()
    ke = [float(-(p * p.log()).sum()) for p in (s / s.sum() for s in sums)]
    return {"redundancy": torch.stack(r).mean(dim=0).tolist(), "knowledge_entropy": ke}


def close(got: list, want: list, tol: float = 1e-6) -> bool:
    return len(got) == len(want) and all(
        g is not None and abs(g - w) <= tol for g, w in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("accumulate", [1, 2])
def test_profiles_equal_pure_functions_over_same_batches(tmp_path, accumulate):
    train = random_examples(N_TRAIN)
    probe = DataLoader(random_examples(8, seed=5), batch_size=4, collate_fn=default_data_collator)
    model = tiny_model()
    callback = LayerDynamicsTrainerCallback(
        {
            "cosine": CosineRedundancy(),
            "knowledge_entropy": KnowledgeEntropy(),
            "gaussian": GaussianEntropyRate(probe_size=8, k=2),
        },
        probe_dataloader=probe,
    )
    args = cpu_args(
        tmp_path,
        num_train_epochs=2,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=accumulate,
        learning_rate=0.0,
        eval_strategy="epoch",  # eval forwards must not reach the estimators
        save_strategy="no",
    )
    trainer = InOrderTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=random_examples(8, seed=9),
        data_collator=default_data_collator,
        callbacks=[callback],
    )
    trainer.train()
    assert sum("eval_loss" in h for h in trainer.state.log_history) == 2  # eval did run

    batches = DataLoader(train, batch_size=BATCH, collate_fn=default_data_collator)
    want = reference(model, batches)
    prof = callback.profiles()
    assert prof["indexing"] == INDEXING
    fin = prof["finetune"]
    assert fin["cosine"]["layers"] == list(range(NUM_LAYERS))
    assert fin["cosine"]["num_batches"] == [N_TRAIN // BATCH] * 2  # every micro-batch, no eval
    assert fin["knowledge_entropy"]["num_batches"] == [N_TRAIN // BATCH] * 2
    for epoch in range(2):
        assert close(fin["cosine"]["redundancy"][epoch], want["redundancy"])
        assert close(
            fin["knowledge_entropy"]["knowledge_entropy"][epoch], want["knowledge_entropy"]
        )
    assert callback.reference_committed["gaussian"]
    assert fin["gaussian"]["num_probe"] == [8, 8]
    assert all(len(v) == NUM_LAYERS for v in fin["gaussian"]["gaussian"])
    assert not model.config.output_hidden_states  # the tap restored the setting


def test_block_ids_and_stage_name_the_profiles(tmp_path):
    callback = LayerDynamicsTrainerCallback(
        {"cosine": CosineRedundancy()}, stage="recover", block_ids=[1, 3, 8, 9]
    )
    trainer = in_order_trainer(
        cpu_args(tmp_path, num_train_epochs=1, save_strategy="no"), callback
    )
    trainer.train()
    prof = callback.profiles()
    assert set(prof) == {"indexing", "recover"}
    assert prof["recover"]["cosine"]["layers"] == [1, 3, 8, 9]
    assert prof["recover"]["cosine"]["num_batches"] == [N_TRAIN // BATCH]


def test_probe_estimator_needs_a_probe_loader():
    with pytest.raises(ValueError, match="probe_dataloader"):
        LayerDynamicsTrainerCallback({"gaussian": GaussianEntropyRate(probe_size=8, k=2)})


# -- checkpoint and resume


def resume_callback(**kwargs) -> LayerDynamicsTrainerCallback:
    probe = DataLoader(random_examples(8, seed=5), batch_size=4, collate_fn=default_data_collator)
    return LayerDynamicsTrainerCallback(
        {
            "cosine": CosineRedundancy(),
            "knowledge_entropy": KnowledgeEntropy(),
            "gaussian": GaussianEntropyRate(probe_size=8, k=2),
        },
        probe_dataloader=probe,
        **kwargs,
    )


def train(
    output_dir: Path, callback, save_strategy: str, resume: Path | None = None, **overrides
) -> None:
    """2 epochs of 4 steps; lr > 0 so the weights (and the probe passes) change every step."""
    args = cpu_args(
        output_dir,
        num_train_epochs=2,
        learning_rate=1e-2,
        save_strategy=save_strategy,
        save_steps=2,
        **overrides,
    )
    trainer = in_order_trainer(args, callback)
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Callable[[str], tuple[Path, dict]]:
    """save_strategy -> (output dir, profiles), each run once, when first asked for: "epoch"
    saves after on_epoch_end (steps 4, 8), "steps" every 2 steps (2 = mid-epoch; 4 = an
    epoch's last step, before on_epoch_end)."""
    runs: dict[str, tuple[Path, dict]] = {}

    def run(strategy: str) -> tuple[Path, dict]:
        if strategy not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted_{strategy}")
            callback = resume_callback()
            train(out, callback, strategy)
            runs[strategy] = (out, callback.profiles())
        return runs[strategy]

    return run


def copy_checkpoint(src_run: Path, step: int, dest: Path) -> Path:
    ckpt = dest / f"checkpoint-{step}"
    shutil.copytree(src_run / f"checkpoint-{step}", ckpt)
    return ckpt


def assert_same_profiles(got: dict, want: dict, tol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    for key, series in want["finetune"].items():
        assert got["finetune"][key].keys() == series.keys(), key
        for name, per_epoch in series.items():
            flat_got = torch.tensor(got["finetune"][key][name], dtype=torch.float64).flatten()
            flat_want = torch.tensor(per_epoch, dtype=torch.float64).flatten()
            assert flat_got.shape == flat_want.shape, (key, name)
            assert torch.allclose(flat_got, flat_want, atol=tol, rtol=0, equal_nan=True), (
                key,
                name,
            )


@pytest.mark.parametrize(
    ("strategy", "step"),
    [("epoch", 4), ("steps", 2), ("steps", 4), ("steps", 6)],
    ids=["epoch-end", "mid-epoch-1", "last-step-of-epoch-1", "mid-epoch-2"],
)
def test_resumed_run_records_the_uninterrupted_profiles(tmp_path, uninterrupted, strategy, step):
    run_dir, want = uninterrupted(strategy)
    ckpt = run_dir / f"checkpoint-{step}"
    assert (ckpt / STATE_FILE).is_file()
    assert not list(ckpt.glob("*.tmp*")) and not list(ckpt.glob(".*.tmp*"))  # renamed whole
    copy_checkpoint(run_dir, step, tmp_path)

    callback = resume_callback()
    train(tmp_path, callback, strategy, resume=tmp_path / f"checkpoint-{step}")

    got = callback.profiles()
    assert got["finetune"]["cosine"]["num_batches"] == [N_TRAIN // BATCH] * 2
    assert got["finetune"]["knowledge_entropy"]["num_batches"] == [N_TRAIN // BATCH] * 2
    assert (
        want["finetune"]["gaussian"]["gaussian"][0] != want["finetune"]["gaussian"]["gaussian"][1]
    )
    assert_same_profiles(got, want)


def test_resume_from_names_a_checkpoint_outside_output_dir(tmp_path, uninterrupted):
    run_dir, want = uninterrupted("steps")
    ckpt = copy_checkpoint(run_dir, 2, tmp_path / "elsewhere")

    callback = resume_callback(resume_from=ckpt)
    train(tmp_path / "out", callback, "steps", resume=ckpt)

    assert_same_profiles(callback.profiles(), want)


def test_ignore_data_skip_drops_the_partial_epoch(tmp_path, uninterrupted):
    run_dir, _ = uninterrupted("steps")
    ckpt = copy_checkpoint(run_dir, 2, tmp_path)

    callback = resume_callback()
    train(tmp_path, callback, "steps", resume=ckpt, ignore_data_skip=True)

    # The Trainer replays epoch 1 from its first batch (its 2 saved batches must not count
    # twice), then stops at max_steps = 8, i.e. 2 batches into epoch 2.
    assert callback.profiles()["finetune"]["cosine"]["num_batches"] == [4, 2]


class Unsafe:
    """Unpickling this calls os.mkdir(marker): what weights_only=True must refuse to do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_layout", "pickle", "missing"])
def test_unreadable_state_warns_and_restarts_the_profiles(tmp_path, uninterrupted, caplog, damage):
    run_dir, want = uninterrupted("epoch")
    ckpt = copy_checkpoint(run_dir, 4, tmp_path)
    path = ckpt / STATE_FILE
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong_layout":
        torch.save({"history": [1, 2]}, path)
    elif damage == "pickle":
        torch.save({"format": 1, "history": Unsafe(tmp_path / "ran")}, path)
    else:
        path.unlink()

    callback = resume_callback()
    with caplog.at_level(logging.WARNING, logger="infodyn"):
        train(tmp_path, callback, "epoch", resume=ckpt)

    warnings = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is None  # one line, no traceback
    assert not (tmp_path / "ran").exists()  # weights_only=True: the pickled call never runs
    got = callback.profiles()["finetune"]
    # epoch 1 is lost; epoch 2 (the same batches on the same weights) is recorded afresh
    assert got["cosine"]["num_batches"] == [N_TRAIN // BATCH]
    assert all(
        math.isclose(g, w, abs_tol=1e-6)
        for g, w in zip(
            got["cosine"]["redundancy"][0],
            want["finetune"]["cosine"]["redundancy"][1],
            strict=True,
        )
    )


# -- DDP under HF's Trainer (accelerate): two CPU processes launched by torchrun. accelerate
# gives each process whole consecutive batches, so with the batches in dataset order the global
# batch of step k is examples 8k..8k+7: what one process with batch 8 sees.
def _ddp_main(out_dir: str) -> None:
    import json

    torch.set_num_threads(1)
    callback = LayerDynamicsTrainerCallback(
        {
            "cosine": CosineRedundancy(num_layers=NUM_LAYERS),
            "knowledge_entropy": KnowledgeEntropy(),
        }
    )
    args = cpu_args(
        out_dir, num_train_epochs=1, learning_rate=0.0, save_strategy="no", ddp_backend="gloo"
    )
    trainer = in_order_trainer(args, callback)
    trainer.train()
    rank = torch.distributed.get_rank()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(callback.profiles()))


@pytest.mark.slow
def test_ddp_scores_the_global_batch_as_one_process(tmp_path):
    import sys

    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
    ]
    ranks = run_rank_script([*torchrun, __file__, "--ddp", str(tmp_path)], tmp_path)
    assert ranks[0]["finetune"]["cosine"] == ranks[1]["finetune"]["cosine"]
    fin = ranks[0]["finetune"]
    assert fin["cosine"]["num_batches"] == [N_TRAIN // (2 * BATCH)]  # 2 global batches of 8
    global_batches = DataLoader(
        random_examples(N_TRAIN), batch_size=2 * BATCH, collate_fn=default_data_collator
    )
    want = reference(tiny_model(), global_batches)
    assert close(fin["cosine"]["redundancy"][0], want["redundancy"])
    assert close(fin["knowledge_entropy"]["knowledge_entropy"][0], want["knowledge_entropy"])


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--ddp":
        _ddp_main(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} --ddp OUT_DIR")
