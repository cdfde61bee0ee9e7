"""The whole run on a tiny random MPNet (model=mpnet_tiny): the mpnet_base path without weights."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForSequenceClassification

from infodyn import pipeline


def test_score_prune_recover_export_on_mpnet(tiny_cfg):
    cfg = tiny_cfg(
        "model=mpnet_tiny",
        "task=mrpc",
        "pruner=redundancy",
        "pruner.k=2",
        "stages.finetune_epochs=1",
    )
    pipeline.run(cfg)
    run = Path(cfg.run_dir)
    result = json.loads((run / "results.json").read_text())
    assert result["status"] == "complete"
    assert result["num_layers_before"] == 4 and result["num_layers_after"] == 2
    assert len(result["pruned_layers"]) == 2
    exported = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert type(exported).__name__ == "MPNetForSequenceClassification"
    assert exported.config.num_hidden_layers == 2 == len(exported.mpnet.encoder.layer)
