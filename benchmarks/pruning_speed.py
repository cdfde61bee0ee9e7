"""Eval throughput of a RoBERTa-base-sized model before and after removing 4 of its 12 blocks.

Both models (`conf/model/roberta_base_random.yaml`, random weights: speed does not depend on
them) run the same batches, eval mode, no_grad, in alternating rounds so that machine noise hits
both alike; the speedup is the ratio of median examples/s. Removing a third of the blocks leaves
embeddings and head, so the ideal is just under 12/8 = 1.5x (target >= 1.4x).

Run: .venv/bin/python benchmarks/pruning_speed.py [--rounds 5] [--batch 32] [--tokens 128]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from infodyn.layers import num_blocks  # noqa: E402
from infodyn.models import build_model  # noqa: E402
from infodyn.pruners.surgery import remove_layers  # noqa: E402

MODEL_YAML = Path(__file__).resolve().parents[1] / "conf" / "model" / "roberta_base_random.yaml"


@torch.no_grad()
def examples_per_s(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Examples per wall second and per process-CPU second of one eval forward."""
    wall, cpu = time.perf_counter(), time.process_time()
    model(**batch)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = batch["input_ids"].shape[0]
    return n / wall, n / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--drop",
        type=int,
        nargs="+",
        default=[4, 5, 6, 7],
        help="0-based blocks to remove (speed does not depend on which)",
    )
    args = parser.parse_args()

    cfg = OmegaConf.load(MODEL_YAML)
    full = build_model(cfg, num_labels=2).eval()
    pruned = remove_layers(copy.deepcopy(full), args.drop).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.config.vocab_size, (args.batch, args.tokens), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    params = {m: sum(p.numel() for p in m.parameters()) for m in (full, pruned)}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg.name}: "
        f"batch {args.batch} x {args.tokens} tokens, eval, no_grad; removed blocks {args.drop}"
    )

    for model in (full, pruned):  # warm-up: first-call allocations, kernel selection
        examples_per_s(model, batch)
    before, after = [], []
    for r in range(args.rounds):
        # alternate which model goes first so a drift in machine load favours neither
        order = [(full, before), (pruned, after)][:: 1 if r % 2 == 0 else -1]
        for model, out in order:
            out.append(examples_per_s(model, batch))
        print(
            f"round {r + 1}: before {before[-1][0]:7.2f}  after {after[-1][0]:7.2f} examples/s "
            f"(per CPU-second: {before[-1][1]:6.2f} / {after[-1][1]:6.2f})"
        )

    wall_b, wall_a = (statistics.median(x[0] for x in runs) for runs in (before, after))
    cpu_b, cpu_a = (statistics.median(x[1] for x in runs) for runs in (before, after))
    print(
        f"\n{'':>20} {'blocks':>6} {'params (M)':>10} {'examples/s':>10} {'per CPU-s':>9}"
        "   (medians)"
    )
    for label, model, wall, cpu in (
        ("before", full, wall_b, cpu_b),
        ("after remove_layers", pruned, wall_a, cpu_a),
    ):
        print(
            f"{label:>20} {num_blocks(model):>6} {params[model] / 1e6:10.1f} {wall:10.2f} "
            f"{cpu:9.2f}"
        )
    ideal = num_blocks(full) / num_blocks(pruned)
    print(
        f"speedup {wall_a / wall_b:.3f}x wall, {cpu_a / cpu_b:.3f}x CPU time  (target >= 1.4x; "
        f"block-count bound {ideal:.2f}x, minus embeddings and head)"
    )


if __name__ == "__main__":
    main()
