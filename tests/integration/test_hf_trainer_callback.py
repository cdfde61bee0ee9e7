"""`LayerDynamicsTrainerCallback` under a real HF `Trainer` (CPU, tiny random RoBERTa).

With lr=0 and no dropout the weights never change, so each epoch's recorded values must equal
the pure functions on the same batches: the mean per-batch `redundancy_score` of a plain
forward, and knowledge entropy from forward hooks on each block's `intermediate` module.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler
from transformers import (
    RobertaForSequenceClassification,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from infodyn.estimators.callback import INDEXING
from infodyn.estimators.cosine import CosineRedundancy, redundancy_score
from infodyn.estimators.gaussian import GaussianEntropyRate
from infodyn.estimators.hf_trainer import LayerDynamicsTrainerCallback
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


class InOrderTrainer(Trainer):
    """Train batches in dataset order, so the reference can replay the same batches."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


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
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=accumulate,
        learning_rate=0.0,
        eval_strategy="epoch",  # eval forwards must not reach the estimators
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
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


def test_probe_estimator_needs_a_probe_loader():
    with pytest.raises(ValueError, match="probe_dataloader"):
        LayerDynamicsTrainerCallback({"gaussian": GaussianEntropyRate(probe_size=8, k=2)})
