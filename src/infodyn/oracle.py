"""The oracle: every k-block subset removed and evaluated, the ground truth criteria are
judged against (`evaluate_subsets` -> `infodyn.results.Oracle`).

Reuse: removing blocks never changes what the blocks *before* the first removed one compute.
One forward of the full model caches the input of every block per batch; a subset whose first
removed block is j then runs only the kept blocks after j, starting from block j's cached input
(the model's block list is swapped, for the evaluation, for [the cached input] + those blocks).
The same holds one level down: the forward of single removal {i} caches the block inputs of the
model without i, so a subset {i, j, ...} starts at block j's input there. Subsets are evaluated
grouped by their first block, so one such extra cache is alive at a time.
The evaluation function itself is the task's own (`ScoringContext.evaluate`), so the metric and
loss are exactly what a model built with those blocks removed would give.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from itertools import combinations
from typing import Any

import torch
from torch import Tensor, nn

from infodyn.layers import find_layer_list
from infodyn.pruners.base import (
    PrunerConfigError,
    as_protect,
    check_k,
    check_protect,
    check_removable,
    require_batches,
)
from infodyn.results import Oracle, OracleSubset

log = logging.getLogger("infodyn")

Evaluate = Callable[[nn.Module, list[dict]], Mapping[str, float]]
DEFAULT_BUDGET = 2.0e7  # example x block forwards
OBJECTIVES = ("metric", "loss")
PROGRESS_EVERY_S = 60.0  # a 12 -> 8 search runs for most of an hour on a CPU: say how far it is


class OracleError(RuntimeError):
    """The evaluation function did not run the model the way the oracle's reuse needs."""


# ---------- cost ----------


def oracle_cost(
    num_layers: int,
    k: int,
    num_examples: int,
    protect: Iterable[int] = (),
    beam: int | None = None,
) -> int:
    """Example x block forwards of `evaluate_subsets` (embeddings and head not counted): one
    full pass, every single removal, then the k-subsets (all, or a beam's estimate)."""
    L = num_layers
    keep = check_protect(protect, L)
    blocks = L + sum(L - j - 1 for j in range(L))  # the cached full pass + the single removals
    if k > 1 and beam is None:
        free_after = [sum(1 for i in range(j + 1, L) if i not in keep) for j in range(L)]
        # {i, j, ...} runs the blocks after its second one, minus the k - 2 others removed there
        blocks += sum(
            math.comb(free_after[j], k - 2) * (L - j - 1 - (k - 2))
            for i in range(L)
            if i not in keep
            for j in range(i + 1, L)
            if j not in keep
        )
    elif k > 1:
        blocks += sum(int(beam) * L * (L - t) for t in range(2, k + 1))
    return int(num_examples) * blocks


def check_budget(
    num_layers: int,
    k: int,
    num_examples: int,
    budget: float | None,
    *,
    protect: Iterable[int] = (),
    beam: int | None = None,
    size_key: str = "data.eval_limit",
) -> int:
    """The estimated cost (`oracle_cost`); `PrunerConfigError` naming the fix when it exceeds
    `budget` (example x block forwards; None = no limit)."""
    check_oracle_args(num_layers, k, protect, beam)
    cost = oracle_cost(num_layers, k, num_examples, protect, beam)
    if budget is None or cost <= float(budget):
        return cost
    n = math.comb(num_layers - len(check_protect(protect, num_layers)), k)
    per_example = max(1, cost // max(1, int(num_examples)))
    fits = int(float(budget) // per_example)
    what = f"a beam of {beam}" if beam else f"all C({num_layers},{k}) = {n:,} subsets"
    raise PrunerConfigError(
        f"the oracle would evaluate {what} of k={k} blocks on {num_examples} examples: about "
        f"{cost:.3g} example x block forwards ({cost / max(1, num_examples * num_layers):.3g} "
        f"full-model passes over the set), over its budget of {float(budget):.3g}. Fix: a "
        f"smaller k, fewer examples ({size_key}={max(1, fits)} fits), a beam search "
        "(beam=8), or a larger budget."
    )


def check_oracle_args(
    num_layers: int, k: int, protect: Iterable[int] = (), beam: int | None = None
) -> None:
    check_k(k, num_layers)
    if k < 1:
        raise PrunerConfigError("the oracle needs k >= 1 blocks to remove. Fix: pruner.k >= 1.")
    check_removable(k, num_layers, protect)
    as_beam(beam)


def as_beam(beam: Any) -> int | None:
    """`beam` as a positive int (None: every subset)."""
    if beam is None:
        return None
    if isinstance(beam, bool) or not isinstance(beam, numbers.Integral) or int(beam) < 1:
        raise PrunerConfigError(
            f"beam={beam!r} is not a positive whole number. Fix: beam=8, or beam=null for all "
            "subsets."
        )
    return int(beam)


# ---------- evaluation with reuse ----------


class _CachedInput(nn.Module):
    """Stands in for the blocks before (and including) the first removed one: returns, for the
    batch being evaluated, the cached input of the block after them."""

    def __init__(
        self, evaluator: SubsetEvaluator, block: int, prefix: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        self._ev = evaluator  # plain attribute: neither a submodule nor state
        self._block = block
        self._prefix = prefix  # the removed blocks of the cached model the state comes from

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        state = self._ev.cached_input(hidden_states, self._block, self._prefix)
        return (state,) if self._ev.tuple_output else state  # MPNet's blocks return tuples


class SubsetEvaluator:
    """`evaluate_fn` of `model` with any set of its blocks removed, reusing cached block inputs.

    Use as a context manager; the model's block list is restored on exit (and after every
    call). `evaluate_fn` must run the model in eval mode over the given batches (any order).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: list[dict],
        evaluate_fn: Evaluate,
        total: int | None = None,
    ) -> None:
        self.model = model
        self.batches = require_batches(batches)
        self.evaluate_fn = evaluate_fn
        self.parent, self.attr, self.blocks = find_layer_list(model)
        self.num_layers = len(self.blocks)
        self.tuple_output = False
        self._inputs: list[list[Tensor]] = []  # per forward: the input of every block
        # removed blocks -> per forward: {block: its input in the model without them}
        self._kept: dict[tuple[int, ...], list[dict[int, Tensor]]] = {}
        self._next = 0
        self._current = 0  # the forward being evaluated (found from its embedding output)
        self._unpruned: dict[str, float] | None = None
        self._was_training = model.training
        self.total = total  # evaluations expected, for the progress line's ETA (None: unknown)
        self.done = 0
        self._t0 = self._last_log = time.monotonic()

    def __enter__(self) -> SubsetEvaluator:
        self.model.eval()  # dropout off: cached states are what each later forward computes
        return self

    def __exit__(self, *exc: Any) -> None:
        setattr(self.parent, self.attr, self.blocks)
        self._inputs, self._kept = [], {}
        self.model.train(self._was_training)

    def unpruned(self) -> dict[str, float]:
        """The full model's evaluation; its forward fills the cache."""
        if self._unpruned is None:
            self._unpruned = self._fill_cache()
        return self._unpruned

    def __call__(self, layers: Iterable[int], keep_states: bool = False) -> dict[str, float]:
        """`evaluate_fn` with blocks `layers` (0-based, of the full model) removed.

        Starts from the longest cached prefix of `layers`; `keep_states=True` caches this
        model's block inputs for the subsets that extend `layers` (`forget` frees them).
        """
        drop = sorted({int(i) for i in layers})
        if not drop or drop[0] < 0 or drop[-1] >= self.num_layers or len(drop) >= self.num_layers:
            raise ValueError(f"cannot remove blocks {drop} of {self.num_layers}")
        self.unpruned()
        cut = max(r for r in range(len(drop)) if r == 0 or tuple(drop[:r]) in self._kept)
        prefix, start, gone = tuple(drop[:cut]), drop[cut], set(drop)
        kept = [self.blocks[i] for i in range(start + 1, self.num_layers) if i not in gone]
        # start 0: its cached input is the embedding output itself; the head finds the forward
        head = [_CachedInput(self, start, prefix)]
        handles = []
        if keep_states:
            states: list[dict[int, Tensor]] = [{} for _ in self._inputs]
            self._kept[tuple(drop)] = states
            for i in range(start + 1, self.num_layers):
                if i not in gone:
                    handles.append(
                        self.blocks[i].register_forward_pre_hook(
                            self._recorder(states, i), with_kwargs=True
                        )
                    )
        setattr(self.parent, self.attr, nn.ModuleList(head + kept))
        try:
            with torch.no_grad():
                result = _as_result(self.evaluate_fn(self.model, self.batches))
        finally:
            for h in handles:
                h.remove()
            setattr(self.parent, self.attr, self.blocks)
        self._progress()
        return result

    def _progress(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self._last_log < PROGRESS_EVERY_S:
            return
        self._last_log, took = now, now - self._t0
        if self.total:
            eta = took / self.done * max(self.total - self.done, 0)
            log.info(
                "oracle: %d/%d removals evaluated in %.0fs, ETA %.0fs",
                self.done, self.total, took, eta,
            )  # fmt: skip
        else:
            log.info("oracle: %d removals evaluated in %.0fs", self.done, took)

    def forget(self, layers: Iterable[int]) -> None:
        """Free the states `keep_states=True` cached for `layers`."""
        self._kept.pop(tuple(sorted({int(i) for i in layers})), None)

    def _recorder(self, states: list[dict[int, Tensor]], block: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            states[self._current][block] = hidden.detach()

        return hook

    def cached_input(self, embedded: Tensor, block: int, prefix: tuple[int, ...] = ()) -> Tensor:
        """Block `block`'s cached input, in the model without blocks `prefix`, for the forward
        whose embedding output is `embedded`."""
        order = [self._next] + list(range(len(self._inputs)))
        for idx in order:
            states = self._inputs[idx % len(self._inputs)]
            ref = states[0]
            if ref.shape == embedded.shape and torch.equal(ref, embedded.to(ref.device)):
                self._current = idx % len(self._inputs)
                self._next = (self._current + 1) % len(self._inputs)
                if prefix:
                    return self._kept[prefix][self._current][block].to(embedded.device)
                return states[block].to(embedded.device)
        raise OracleError(
            "a forward during the oracle's evaluation matches no cached batch. Fix: the "
            "evaluation function must run the model in eval mode on exactly the batches given "
            "to the oracle (no new data, no dropout)."
        )

    def _fill_cache(self) -> dict[str, float]:
        inputs = self._inputs

        def pre_hook(i: int) -> Callable:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                hidden = args[0] if args else kwargs["hidden_states"]
                if i == 0:
                    inputs.append([])
                inputs[-1].append(hidden.detach())

            return hook

        def out_hook(module: nn.Module, args: tuple, output: Any) -> None:
            self.tuple_output = isinstance(output, tuple)

        handles = [
            b.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
            for i, b in enumerate(self.blocks)
        ]
        handles.append(self.blocks[0].register_forward_hook(out_hook))
        try:
            with torch.no_grad():
                result = _as_result(self.evaluate_fn(self.model, self.batches))
        finally:
            for h in handles:
                h.remove()
        if not inputs or any(len(s) != self.num_layers for s in inputs):
            raise OracleError(
                "the evaluation function did not run every block once per forward. Fix: pass "
                "an evaluation that calls the model itself over the batches."
            )
        return result


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _as_result(out: Mapping[str, Any]) -> dict[str, float]:
    if "metric" not in out or "loss" not in out:
        raise OracleError(
            f"the evaluation function returned keys {sorted(out)}; the oracle needs 'metric' "
            "and 'loss'. Fix: return {'metric': <main metric>, 'loss': <mean loss>}."
        )
    return {"metric": _num(out["metric"]), "loss": _num(out["loss"])}


def _subset(layers: Iterable[int], res: Mapping[str, Any]) -> OracleSubset:
    return OracleSubset(
        layers=sorted(int(i) for i in layers), metric=res["metric"], loss=res["loss"]
    )


# ---------- ranking ----------


def rank_key(s: OracleSubset, objective: str = "metric") -> tuple:
    """Sort key, best first: higher metric then lower loss (or the reverse priority)."""
    metric = s.metric if s.metric is not None else -math.inf
    loss = s.loss if s.loss is not None else math.inf
    if objective == "loss":
        return (loss, -metric, s.layers)
    return (-metric, loss, s.layers)


def ranked(subsets: Iterable[OracleSubset], objective: str = "metric") -> list[OracleSubset]:
    """`subsets` best first (ties broken by the other quantity, then by block indices)."""
    if objective not in OBJECTIVES:
        raise PrunerConfigError(
            f"objective='{objective}' is unknown. Fix: use one of {', '.join(OBJECTIVES)}."
        )
    return sorted(subsets, key=lambda s: rank_key(s, objective))


# ---------- the oracle ----------


def evaluate_subsets(
    model: nn.Module,
    batches: list[dict],
    k: int,
    evaluate_fn: Evaluate,
    *,
    metric: str = "accuracy",
    split: str = "dev",
    protect: Iterable[int] = (),
    beam: int | None = None,
    budget: float | None = DEFAULT_BUDGET,
    objective: str = "metric",
    size_key: str = "data.eval_limit",
) -> Oracle:
    """Every k-block subset of `model` removed and evaluated with `evaluate_fn` on `batches`,
    plus each single-block removal and the unpruned model.

    Args:
        model: the HF model (left as it was).
        batches: tokenized batches with labels.
        k: blocks per subset.
        evaluate_fn: `(model, batches) -> {"metric", "loss"}`, the task's evaluation.
        metric: the name of `evaluate_fn`'s metric (recorded).
        split: `dev` (analysis) or `selection` (choosing on training data).
        protect: blocks no subset contains (single removals still cover every block).
        beam: None for all C(L, k) subsets; else a beam search keeping the `beam` best subsets
            per size (by `objective`), starting from the single removals.
        budget: refuse (before any forward) an estimated cost above this many example x block
            forwards; None = no limit.
        objective: what `beam` ranks by: `metric` (ties: lower loss) or `loss`.
        size_key: the config key the budget error names for fewer examples.
    """
    batches = require_batches(batches)
    num_layers = len(find_layer_list(model)[2])
    protect = as_protect(protect)
    ranked([], objective)  # validates objective
    num_examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    check_budget(
        num_layers, k, num_examples, budget, protect=protect, beam=beam, size_key=size_key
    )
    keep = set(protect)
    free = [b for b in range(num_layers) if b not in keep]
    exhaustive = k > 1 and beam is None
    total = num_layers + (math.comb(len(free), k) if exhaustive else 0)
    with SubsetEvaluator(model, batches, evaluate_fn, total if beam is None else None) as ev:
        unpruned = _subset([], ev.unpruned())
        single, subsets = [], []
        for b in range(num_layers):
            extend = exhaustive and b not in keep  # subsets starting at b start from its states
            single.append(_subset([b], ev([b], keep_states=extend)))
            if extend:
                rest = [i for i in free if i > b]
                subsets += [_subset((b, *c), ev((b, *c))) for c in combinations(rest, k - 1)]
                ev.forget([b])
        if k == 1:
            subsets = [s for s in single if s.layers[0] not in keep]
        elif beam is not None:
            subsets = _beam(ev, single, free, k, int(beam), objective)
    return Oracle(
        split=split,
        metric=metric,
        k=int(k),
        num_examples=num_examples,
        unpruned=unpruned,
        subsets=subsets,
        single=single,
    )


def _beam(
    ev: SubsetEvaluator,
    single: list[OracleSubset],
    free: list[int],
    k: int,
    beam: int,
    objective: str,
) -> list[OracleSubset]:
    """The subsets of size k a beam search evaluates: each level extends the `beam` best
    subsets of the previous size by one more free block."""
    frontier = ranked([s for s in single if s.layers[0] in free], objective)[:beam]
    level: list[OracleSubset] = frontier
    for _ in range(2, k + 1):
        seen: dict[tuple[int, ...], OracleSubset] = {}
        for s in frontier:
            for b in free:
                key = tuple(sorted({*s.layers, b}))
                if len(key) == len(s.layers) + 1 and key not in seen:
                    seen[key] = _subset(key, ev(key))
        level = sorted(seen.values(), key=lambda s: s.layers)
        frontier = ranked(level, objective)[:beam]
    return level
