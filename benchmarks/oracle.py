"""Oracle benchmark: `infodyn.oracle.evaluate_subsets` against one surgery + full forward per
subset, side by side, for all C(6, 2) = 15 block pairs of MiniLM-L6 on the MRPC dev set.

The oracle reuses, per batch, the states before a subset's first removed block; the independent
way copies the model, removes the blocks with `pruners/surgery.py` and runs the whole dev set.
The oracle always also judges the unpruned model and the 6 single removals, so the independent
way is timed both for the 15 pairs alone and for the same 22 evaluations; both ways run in
alternating rounds and their results are compared per subset.

The model is not fine-tuned: its classification head is random, which changes the metrics but
not the work, so the timing holds for a fine-tuned model too.

Run: GLUE_DIR=../shared/data/glue .venv/bin/python benchmarks/oracle.py [--rounds 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from itertools import combinations
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from infodyn.builders import build_datamodule  # noqa: E402
from infodyn.evaluation import batch_judge  # noqa: E402
from infodyn.layers import num_blocks  # noqa: E402
from infodyn.models import build_model, build_tokenizer  # noqa: E402
from infodyn.oracle import evaluate_subsets, oracle_cost  # noqa: E402
from infodyn.pruners.surgery import remove_layers  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
K = 2


def independent(model, batches, judge) -> tuple[float, float, dict]:
    """Seconds for the 15 pairs, seconds for all that the oracle returns (the unpruned model,
    every single removal and the pairs), and {subset: result}; one surgery copy + full
    evaluation each."""
    out, seconds = {(): None}, {1: 0.0, K: 0.0}
    start = time.perf_counter()
    out[()] = judge(model, batches)
    unpruned = time.perf_counter() - start
    for size in (1, K):
        for subset in combinations(range(num_blocks(model)), size):
            start = time.perf_counter()
            out[subset] = judge(remove_layers(copy.deepcopy(model), subset), batches)
            seconds[size] += time.perf_counter() - start
    return seconds[K], unpruned + seconds[1] + seconds[K], out


def with_reuse(model, batches, judge, metric: str) -> tuple[float, dict]:
    """Seconds and {pair: result} of the oracle (which also judges the unpruned model and every
    single removal)."""
    start = time.perf_counter()
    oracle = evaluate_subsets(model, batches, K, judge, metric=metric, budget=None)
    seconds = time.perf_counter() - start
    subsets = [oracle.unpruned, *oracle.single, *oracle.subsets]
    return seconds, {tuple(s.layers): {"metric": s.metric, "loss": s.loss} for s in subsets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (median)")
    args = parser.parse_args()
    if not os.environ.get("GLUE_DIR"):
        raise SystemExit("set GLUE_DIR=/path/to/glue_data (e.g. ../shared/data/glue)")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["task=mrpc", "model=minilm_l6", "logger=none"])
    with tempfile.TemporaryDirectory() as tmp, open_dict(cfg):
        cfg.paths.cache_dir = os.path.join(tmp, "cache")
        dm = build_datamodule(cfg, build_tokenizer(cfg.model), None)
        dm.setup("validate")
        batches = list(dm.val_dataloader()[0])
    torch.manual_seed(0)
    model = build_model(cfg.model, num_labels=int(cfg.task.num_labels)).eval()
    judge = batch_judge(cfg.task)
    n = sum(int(b["labels"].shape[0]) for b in batches)
    L = num_blocks(model)
    print(
        f"MiniLM-L6 ({L} blocks), MRPC dev: {n} examples in {len(batches)} batches of "
        f"<= {cfg.data.eval_batch_size}, max {cfg.data.max_seq_length} tokens; "
        f"{torch.get_num_threads()} torch thread(s); classification head random (not "
        "fine-tuned): the metrics are not a model's quality, the work is the same",
        flush=True,
    )
    reuse, pairs, everything = [], [], []
    for _ in range(args.rounds):  # alternating: machine noise hits both alike
        t, reused = with_reuse(model, batches, judge, str(cfg.task.main_metric))
        reuse.append(t)
        t_pairs, t_all, plain = independent(model, batches, judge)
        pairs.append(t_pairs)
        everything.append(t_all)
    assert sorted(reused) == sorted(plain) and len(plain) == 1 + L + 15, sorted(reused)
    d_metric = max(abs(reused[p]["metric"] - plain[p]["metric"]) for p in plain)
    d_loss = max(abs(reused[p]["loss"] - plain[p]["loss"]) for p in plain)
    same = d_metric == 0.0 and d_loss < 1e-5
    a, b, c = (statistics.median(t) for t in (reuse, pairs, everything))
    # example x block forwards (embeddings and head not counted), per example
    blocks_oracle = oracle_cost(L, K, 1)
    blocks_pairs = len(list(combinations(range(L), K))) * (L - K)
    print(
        f"oracle, evaluate_subsets (unpruned + {L} single removals + 15 pairs, reusing prefix "
        f"states; {blocks_oracle} block forwards per example): {a:.1f}s",
        flush=True,
    )
    print(
        f"independent, surgery copy + full forward each: 15 pairs only ({blocks_pairs} block "
        f"forwards per example) {b:.1f}s; the same {1 + L + 15} evaluations as the oracle "
        f"{c:.1f}s",
        flush=True,
    )
    print(
        f"ratio independent / oracle: same output {c / a:.2f}x; 15 pairs only {b / a:.2f}x "
        f"(median of {args.rounds} round(s))"
    )
    print(
        f"same results for all {len(plain)} evaluations: {same} (max |d "
        f"{cfg.task.main_metric}| {d_metric:.2e}, max |d loss| {d_loss:.2e})"
    )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
