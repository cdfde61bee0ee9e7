"""How the estimator update path scales: time per batch and memory vs depth L and width D.

Three tables, one run:
1. cosine + knowledge-entropy `update` on synthetic hidden states of the right shapes
   (z_0..z_L `[B, T, D]`; L FFN inputs `[B, T, 4D]`) for every L x D: ms per batch and the bytes
   of estimator state (O(L): 2L floats + 5 counters for cosine, L x F for knowledge entropy);
2. the same estimators fed by the callback's `ActivationTap` during real training-mode forwards
   of random RoBERTa encoders (width 256): forward time with and without the tap, interleaved;
3. added memory after 10 vs 200 batches (tracemalloc for Python objects, process RSS for all),
   on synthetic states and through the tap: the difference is the per-batch leak (target 0).

Synthetic states stand in for full models at the large widths (a 48-block, 4096-wide forward
would dominate the runtime and measure the model, not the estimators). Times are reported as
wall (best of the rounds) and process CPU time (median), since on a shared machine wall time
mostly measures the other jobs.

Run: .venv/bin/python benchmarks/scale.py [--layers 6 12 24 48] [--widths 384 768 1024 2048 4096]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import tracemalloc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, RobertaConfig  # noqa: E402

from infodyn.estimators import CosineRedundancy, KnowledgeEntropy  # noqa: E402
from infodyn.estimators.tap import ActivationTap, feed_estimators  # noqa: E402

DISTINCT = 4  # distinct random tensors per batch, cycled over layers: bounds the input memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def state_bytes(metric) -> int:
    return sum(getattr(metric, name).nbytes for name in metric._defaults)


def kib(n: float) -> str:
    return f"{n / 1024:9.1f}"


def synthetic_inputs(num_layers: int, width: int, batch: int, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden_pool = [torch.randn(batch, tokens, width, generator=g) for _ in range(DISTINCT)]
    ffn_pool = [torch.randn(batch, tokens, 4 * width, generator=g) for _ in range(DISTINCT)]
    hidden = [hidden_pool[i % DISTINCT] for i in range(num_layers + 1)]
    ffn = [ffn_pool[i % DISTINCT] for i in range(num_layers)]
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[: batch // 2, tokens * 3 // 4 :] = 0  # some padding, as in a real batch
    return hidden, ffn, mask


class Clock:
    """Wall (best of rounds) and process CPU time (median): on a shared, oversubscribed machine
    the CPU seconds a step costs stay put while its wall time swings with the other jobs."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn, *args) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn(*args)
        self.cpu.append(time.process_time() - cpu)
        self.wall.append(time.perf_counter() - wall)

    @property
    def best_wall_ms(self) -> float:
        return 1e3 * min(self.wall)

    @property
    def cpu_ms(self) -> float:
        return 1e3 * statistics.median(self.cpu)


def time_update(metric, states, mask, rounds: int) -> Clock:
    metric.update(states, mask)  # warm-up (also allocates the lazy state)
    clock = Clock()
    for _ in range(rounds):
        clock(metric.update, states, mask)
    return clock


def table_grid(args) -> None:
    print(
        f"\n[1] update() on synthetic states, batch {args.batch} x {args.tokens} tokens, F = 4D; "
        f"{args.rounds} batches: wall = best, cpu = median process CPU time"
    )
    print(
        f"{'L':>3} {'D':>5} | {'cos wall':>8} {'KE wall':>8} | {'cos cpu':>8} {'KE cpu':>8} "
        f"{'cpu/layer':>9} | {'cos state B':>11} {'KE state KiB':>12} | {'input MiB':>9}"
    )
    for width in args.widths:
        for num_layers in args.layers:
            hidden, ffn, mask = synthetic_inputs(num_layers, width, args.batch, args.tokens)
            cos, ke = CosineRedundancy(), KnowledgeEntropy()
            t_cos = time_update(cos, hidden, mask, args.rounds)
            t_ke = time_update(ke, ffn, mask, args.rounds)
            input_bytes = hidden[0].nbytes * len(hidden) + ffn[0].nbytes * len(ffn)
            per_layer = (t_cos.cpu_ms + t_ke.cpu_ms) / num_layers
            print(
                f"{num_layers:>3} {width:>5} | {t_cos.best_wall_ms:8.1f} {t_ke.best_wall_ms:8.1f} "
                f"| {t_cos.cpu_ms:8.1f} {t_ke.cpu_ms:8.1f} {per_layer:9.2f} | "
                f"{state_bytes(cos):>11} {state_bytes(ke) / 1024:12.1f} | "
                f"{input_bytes / 2**20:9.1f}"
            )
            del hidden, ffn
    print(
        "times in ms per batch. state: cosine = 8 B x 2L + 5 int64 counters; knowledge entropy "
        "= 8 B x L x F + 3 counters; independent of the batch size and count. 'input MiB' = "
        "what the forward already holds and update() reads."
    )


def encoder(num_layers: int, width: int) -> torch.nn.Module:
    cfg = RobertaConfig(
        vocab_size=99,
        hidden_size=width,
        num_hidden_layers=num_layers,
        num_attention_heads=width // 64,
        intermediate_size=4 * width,
        max_position_embeddings=514,
        pad_token_id=1,
        num_labels=2,
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).train()


def attach(model: torch.nn.Module) -> tuple[ActivationTap, dict]:
    """The callback's tap on `model`, feeding fresh cosine + knowledge-entropy estimators."""
    ests = {"cosine": CosineRedundancy(), "knowledge_entropy": KnowledgeEntropy()}
    return ActivationTap(model, True, True, lambda h, f, m: feed_estimators(ests, h, f, m)), ests


def table_tap(args) -> None:
    width = args.tap_width
    print(
        f"\n[2] ActivationTap on real training-mode forwards (random RoBERTa, D={width}, "
        f"F={4 * width}), batch {args.batch} x {args.tokens}, no_grad, {args.tap_rounds} "
        "interleaved rounds: wall = best, cpu = median process CPU time (ms per forward)"
    )
    print(
        f"{'L':>3} | {'fwd wall':>8} {'+tap wall':>9} | {'fwd cpu':>8} {'+tap cpu':>8} "
        f"{'overhead':>8} {'tap cpu/layer':>13}"
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (args.batch, args.tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[: args.batch // 2, args.tokens * 3 // 4 :] = 0

    def forward(model):
        model(input_ids=ids, attention_mask=mask)

    for num_layers in args.tap_layers:
        model = encoder(num_layers, width)
        tap, ests = attach(model)
        plain, tapped = Clock(), Clock()
        with torch.no_grad():
            forward(model)  # warm-up
            for _ in range(args.tap_rounds):
                plain(forward, model)
                tap.start()
                tapped(forward, model)
                tap.stop()
        tap.remove()
        assert int(ests["cosine"].num_batches) == args.tap_rounds
        p, t = plain.cpu_ms, tapped.cpu_ms
        print(
            f"{num_layers:>3} | {plain.best_wall_ms:8.1f} {tapped.best_wall_ms:9.1f} | "
            f"{p:8.1f} {t:8.1f} {t / p - 1:8.1%} {(t - p) / num_layers:13.2f}"
        )
        gc.collect()


def measure_growth(label: str, step, counts: tuple[int, int]) -> None:
    """Run `step(i)` counts[1] times, twice: RSS first, then tracemalloc in a pass of its own
    (tracemalloc's bookkeeping inflates the RSS it runs beside). Print the memory added after
    counts[0] and counts[1] batches."""

    def growth(read) -> dict[int, int]:
        gc.collect()
        base, seen = read(), {}
        for i in range(1, counts[1] + 1):
            step(i)
            if i in counts:
                gc.collect()
                seen[i] = read() - base
        return seen

    gc.collect()
    step(0)  # warm-up: allocates the lazy state, fills the allocators' caches
    rss = growth(rss_bytes)
    tracemalloc.start()
    py = growth(lambda: tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    a, b = counts
    print(
        f"{label:<40} | {kib(py[a])} {kib(py[b])} {kib(py[b] - py[a])} | "
        f"{kib(rss[a])} {kib(rss[b])} {kib(rss[b] - rss[a])}"
    )


def table_memory(args) -> None:
    a, b = args.mem_batches
    print(
        f"\n[3] memory added after {a} vs {b} batches (KiB, after a warm-up batch; "
        "tracemalloc = Python objects, RSS = whole process, each in a pass of its own)"
    )
    print(
        f"{'path':<40} | {'py@' + str(a):>9} {'py@' + str(b):>9} {'py diff':>9} | "
        f"{'rss@' + str(a):>9} {'rss@' + str(b):>9} {'rss diff':>9}"
    )
    memory_synthetic(args)
    memory_tap(args)
    print(
        f"A diff of a few KiB that does not scale with the batch count is torch's one-off "
        f"caches; a leak would add a fixed amount per batch, x{b - a} here."
    )


def memory_synthetic(args) -> None:
    a, b = args.mem_batches
    num_layers, width = args.mem_layers, args.mem_width
    hidden, ffn, mask = synthetic_inputs(num_layers, width, args.batch, args.tokens)
    ests = {"cosine": CosineRedundancy(), "knowledge_entropy": KnowledgeEntropy()}

    def step(_):
        feed_estimators(ests, hidden, ffn, mask)

    measure_growth(f"synthetic update, L={num_layers} D={width}", step, (a, b))
    print(
        f"{'':<40}   state after {2 * b + 1} batches: cosine {state_bytes(ests['cosine'])} B, "
        f"knowledge entropy {state_bytes(ests['knowledge_entropy'])} B"
    )


def memory_tap(args) -> None:
    a, b = args.mem_batches
    tap_layers, tap_width = args.mem_layers, args.mem_tap_width
    model = encoder(tap_layers, tap_width)
    ids = torch.randint(3, 99, (args.batch, args.tokens), generator=torch.Generator())
    amask = torch.ones_like(ids)

    def plain_forward(_):
        with torch.no_grad():
            model(input_ids=ids, attention_mask=amask)

    # the control: what the same forwards add without any tap (allocator drift)
    measure_growth(f"plain forward (control), L={tap_layers} D={tap_width}", plain_forward, (a, b))
    tap, ests = attach(model)

    def tapped_forward(_):
        tap.start()
        plain_forward(_)
        tap.stop()

    measure_growth(f"ActivationTap forward, L={tap_layers} D={tap_width}", tapped_forward, (a, b))
    tap.remove()
    assert int(ests["cosine"].num_batches) == 2 * b + 1  # warm-up + two passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12, 24, 48])
    parser.add_argument("--widths", type=int, nargs="+", default=[384, 768, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per grid cell")
    parser.add_argument("--tap-layers", type=int, nargs="+", default=[6, 12, 24, 48])
    parser.add_argument("--tap-width", type=int, default=256)
    parser.add_argument("--tap-rounds", type=int, default=3)
    parser.add_argument("--mem-batches", type=int, nargs=2, default=[10, 200])
    parser.add_argument("--mem-layers", type=int, default=12)
    parser.add_argument("--mem-width", type=int, default=768)
    parser.add_argument("--mem-tap-width", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["grid", "tap", "memory"])
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; estimators run on CPU in float64 state"
    )
    start = time.perf_counter()
    if "grid" not in args.skip:
        table_grid(args)
    if "tap" not in args.skip:
        table_tap(args)
    if "memory" not in args.skip:
        table_memory(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
