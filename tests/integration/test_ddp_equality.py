"""`trainer=ddp` on 2 CPU processes equals one process on the same global batches.

One process with batch 8 and two DDP processes with batch 4 each see the same global batches:
the epoch order comes from (seed, epoch) and Lightning's `DistributedSamplerWrapper` deals it out
round-robin, which the estimators undo when they gather the global batch. DDP averages the two
processes' mean losses, which is the mean over the global batch (24 training examples = 3 full
global batches, so no batch is uneven or padded). Dropout is off: its masks are drawn from each
process's own RNG stream and could not match a single process's draw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import run_cli

TOL = 1e-5

COMMON = [
    "task=mrpc",
    "model=roberta_tiny",
    "+model.config.hidden_dropout_prob=0.0",
    "+model.config.attention_probs_dropout_prob=0.0",
    "trainer.accelerator=cpu",
    "logger=none",
    "estimator=[cosine,knowledge_entropy]",
    "pruner.k=2",
    "optim.lr=1e-3",
    "data.max_seq_length=32",
    "data.eval_batch_size=8",
    "data.calibration_size=8",
    "stages.finetune_epochs=2",
    "stages.recover_epochs=1",
    "run.throughput_batches=1",
    "run.throughput_seconds=0",
]


def _run(tmp_path: Path, glue_dir: Path, name: str, *overrides: str) -> dict:
    run_dir = tmp_path / name
    out = run_cli([*COMMON, *overrides, f"run_dir={run_dir}"], tmp_path, glue_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def _close(got, want, path: str = "") -> None:
    """Nested equality, floats within TOL (absolute)."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            _close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=0, abs_tol=TOL), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["redundancy", "layerdrop"])
def test_ddp_pipeline_equals_single_process_on_the_same_global_batches(tmp_path, glue_dir, pruner):
    # layerdrop: blocks skipped during fine-tuning get no gradient (DDP must be told), and the
    # seeded drop stream is the same on every process, so the global batch skips as one
    single = _run(
        tmp_path, glue_dir, "single", f"pruner={pruner}", "trainer=cpu", "data.batch_size=8"
    )
    ddp = _run(
        tmp_path,
        glue_dir,
        "ddp",
        f"pruner={pruner}",
        "trainer=ddp",
        "trainer.devices=2",
        "data.batch_size=4",
    )
    assert single["status"] == ddp["status"] == "complete"
    assert ddp["pruned_layers"] == single["pruned_layers"]
    assert len(ddp["pruned_layers"]) == 2
    # knowledge entropy sums tokens, so it needs no global batch; its counter counts each
    # process's batches (2 processes x 3 per epoch)
    for stage in ("finetune", "recover"):
        for counter in ("num_batches", "incomplete_batches"):
            got = ddp["profiles"][stage]["knowledge_entropy"].pop(counter)
            want = single["profiles"][stage]["knowledge_entropy"].pop(counter)
            assert got == [2 * n for n in want], counter
    _close(ddp["layer_scores"], single["layer_scores"], "layer_scores")
    _close(ddp["profiles"], single["profiles"], "profiles")
    _close(ddp["metrics"], single["metrics"], "metrics")
    # 3 global batches of 8 per epoch in both runs: the estimator's batch is the global batch
    assert ddp["profiles"]["finetune"]["cosine"]["num_batches"] == [3, 3]
    # one exported pruned model (written by process 0), the same weights as one process's
    exported = [
        AutoModelForSequenceClassification.from_pretrained(tmp_path / name / "model").state_dict()
        for name in ("single", "ddp")
    ]
    assert exported[0].keys() == exported[1].keys()
    for key, value in exported[0].items():
        assert torch.allclose(exported[1][key], value, atol=TOL, rtol=0), key
