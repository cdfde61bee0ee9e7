"""The oracle against a brute-force loop written here (surgery on copies + a plain eval), its
cost estimate and guard, the beam, and the oracle pruner."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from infodyn.layers import find_layer_list
from infodyn.oracle import (
    OracleError,
    SubsetEvaluator,
    check_budget,
    evaluate_subsets,
    oracle_cost,
    ranked,
)
from infodyn.pruners.base import PrunerConfigError
from infodyn.pruners.oracle import OraclePruner, subset_ranks
from infodyn.pruners.surgery import remove_layers
from infodyn.results import Oracle
from scoring_context import context, labelled_batches, plain_evaluate
from tiny_models import ARCHS, tiny


def tiny_mpnet(layers: int = 4):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    cfg = MPNetConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=37, num_labels=2, pad_token_id=1,
    )  # fmt: skip
    return MPNetForSequenceClassification(cfg).eval()


def build(arch: str, layers: int = 4):
    return tiny_mpnet(layers) if arch == "mpnet" else tiny(arch, layers=layers)


def brute_force(model, batches, k):
    """Every k-subset and every single block removed from a fresh copy, evaluated plainly."""
    L = len(find_layer_list(model)[2])

    def ev(layers):
        return plain_evaluate(remove_layers(copy.deepcopy(model), list(layers)), batches)

    subsets = {c: ev(c) for c in itertools.combinations(range(L), k)}
    single = {(b,): ev((b,)) for b in range(L)}
    return plain_evaluate(model, batches), subsets, single


def close(got, want) -> bool:
    return abs(got.metric - want["metric"]) < 1e-9 and abs(got.loss - want["loss"]) < 1e-6


@pytest.mark.parametrize("arch", [*ARCHS, "mpnet"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_oracle_equals_brute_force(arch, k):
    model = build(arch, layers=5)
    bs = labelled_batches(3)
    before = {n: v.clone() for n, v in model.state_dict().items()}
    blocks = find_layer_list(model)[2]
    oracle = evaluate_subsets(model, bs, k, plain_evaluate, metric="accuracy")
    unpruned, subsets, single = brute_force(model, bs, k)
    assert isinstance(oracle, Oracle) and oracle.k == k and oracle.num_examples == 9
    assert oracle.split == "dev" and oracle.metric == "accuracy"
    assert close(oracle.unpruned, unpruned) and oracle.unpruned.layers == []
    assert [tuple(s.layers) for s in oracle.subsets] == list(subsets)
    assert all(close(s, subsets[tuple(s.layers)]) for s in oracle.subsets)
    assert [tuple(s.layers) for s in oracle.single] == list(single)
    assert all(close(s, single[tuple(s.layers)]) for s in oracle.single)
    # the model is as it was: same block list object, same weights
    assert find_layer_list(model)[2] is blocks and len(blocks) == 5
    assert all(torch.equal(v, model.state_dict()[n]) for n, v in before.items())


def count_block_forwards(model):
    """Examples x block forwards, counted by hooks on the model's own blocks."""
    counter = {"n": 0}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        counter["n"] += int(hidden.shape[0])

    handles = [
        b.register_forward_pre_hook(hook, with_kwargs=True) for b in find_layer_list(model)[2]
    ]
    return counter, handles


@pytest.mark.parametrize(("L", "k", "protect"), [(5, 2, ()), (6, 3, ()), (6, 2, (1, 4))])
def test_cost_estimate_counts_the_block_forwards_it_runs(L, k, protect):
    model = tiny("bert", layers=L)
    bs = labelled_batches(2)
    counter, handles = count_block_forwards(model)
    try:
        evaluate_subsets(model, bs, k, plain_evaluate, protect=protect)
    finally:
        for h in handles:
            h.remove()
    assert counter["n"] == oracle_cost(L, k, 6, protect)
    naive = 6 * (L + L * (L - 1) + len(list(itertools.combinations(range(L), k))) * (L - k))
    assert counter["n"] < naive  # blocks before the first removed one are never rerun


@pytest.mark.parametrize(("protect", "beam"), [((), None), ((1,), None), ((), 2)])
def test_a_long_search_says_how_far_it_is(protect, beam, monkeypatch, caplog):
    import infodyn.oracle as oracle_mod

    monkeypatch.setattr(oracle_mod, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level("INFO", logger="infodyn")
    model = tiny("bert", layers=5)
    oracle = evaluate_subsets(
        model, labelled_batches(), 2, plain_evaluate, protect=protect, beam=beam
    )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("oracle: ")]
    evaluated = len(oracle.single) + (len(oracle.subsets) if beam is None else 0)
    if beam is None:  # the total is known up front, so the last line is the whole count
        assert lines[-1].startswith(f"oracle: {evaluated}/{evaluated} removals evaluated in ")
        assert "ETA 0s" in lines[-1]
    else:  # a beam's size depends on what it finds: a count, no ETA
        assert all("ETA" not in line for line in lines)
        assert len(lines) >= evaluated


def test_protect_keeps_blocks_out_of_every_subset():
    model = tiny("roberta", layers=5)
    oracle = evaluate_subsets(model, labelled_batches(), 2, plain_evaluate, protect=[0, 3])
    assert [s.layers for s in oracle.subsets] == [[1, 2], [1, 4], [2, 4]]
    assert len(oracle.single) == 5  # removal damage is recorded for every block


def test_budget_guard_fires_before_any_forward_and_names_the_fixes():
    calls = []

    def counting(model, batches):
        calls.append(1)
        return plain_evaluate(model, batches)

    with pytest.raises(
        PrunerConfigError, match=r"C\(4,2\) = 6 subsets.*smaller k.*data.eval_limit=.*beam"
    ):
        evaluate_subsets(tiny("bert"), labelled_batches(), 2, counting, budget=10)
    assert calls == []
    with pytest.raises(PrunerConfigError, match=r"C\(24,8\) = 735,471.*data.eval_limit=\d+ fits"):
        check_budget(24, 8, 872, 2e7)
    assert check_budget(12, 4, 408, 2e7) == oracle_cost(12, 4, 408)
    with pytest.raises(PrunerConfigError, match="beam=8"):
        check_budget(24, 8, 872, 1e6, beam=8)  # a beam too wide still names the fixes
    assert check_budget(24, 8, 200, 2e7, beam=8) < 2e7


def test_oracle_pruner_check_runs_the_guard_before_training():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.load("conf/pruner/oracle.yaml")
    cfg = OmegaConf.merge({"seed": 0, "data": {"calibration_size": 256}}, {"pruner": conf})
    pruner = instantiate(cfg.pruner)
    pruner.check(12, {})  # C(12, 4) on 256 examples fits the default budget
    cfg.pruner.k = 8
    with pytest.raises(PrunerConfigError, match="data.calibration_size=.*fits"):
        instantiate(cfg.pruner).check(24, {})
    cfg.pruner.beam = 4
    instantiate(cfg.pruner).check(24, {})


def test_beam_wide_enough_finds_the_exhaustive_best():
    model = tiny("gpt2", layers=5)
    bs = labelled_batches(3)
    full = evaluate_subsets(model, bs, 3, plain_evaluate)
    wide = evaluate_subsets(model, bs, 3, plain_evaluate, beam=10)
    narrow = evaluate_subsets(model, bs, 3, plain_evaluate, beam=1, objective="loss")
    assert ranked(wide.subsets)[0].layers == ranked(full.subsets)[0].layers
    assert len(narrow.subsets) <= 3  # one set of 2 extended by each of the 3 other blocks
    exact = {tuple(s.layers): s.loss for s in full.subsets}
    assert all(abs(exact[tuple(s.layers)] - s.loss) < 1e-9 for s in narrow.subsets)


def test_ranked_orders_by_metric_then_loss():
    from infodyn.results import OracleSubset as S

    subs = [S([0], 0.5, 0.3), S([1], 0.7, 0.9), S([2], 0.7, 0.4), S([3], None, 0.1)]
    assert [s.layers[0] for s in ranked(subs)] == [2, 1, 0, 3]
    assert [s.layers[0] for s in ranked(subs, "loss")] == [3, 0, 2, 1]


def test_an_evaluation_on_other_data_is_refused():
    model = tiny("bert")
    bs = labelled_batches(2)
    other = labelled_batches(2, seed=9)
    with SubsetEvaluator(model, bs, plain_evaluate) as ev:
        ev.unpruned()
        ev.evaluate_fn = lambda m, _: plain_evaluate(m, other)
        with pytest.raises(OracleError, match="matches no cached batch"):
            ev([1])
    assert len(find_layer_list(model)[2]) == 4


@pytest.mark.parametrize("objective", ["metric", "loss"])
def test_oracle_pruner_removes_the_best_subset_of_the_selection_split(objective):
    model = tiny("llama", layers=5)
    bs = labelled_batches(3)
    pruner = OraclePruner(k=2, protect=[0], objective=objective)
    raw = pruner.score(context(model, bs, 2))
    assert pruner.result.split == "selection" and pruner.result.k == 2
    best = ranked(pruner.result.subsets, objective)[0]
    assert pruner.select(raw, 2) == best.layers and 0 not in best.layers
    assert raw[best.layers].tolist() == [0.0, 0.0] and raw[0].isnan()
    assert (raw[[b for b in range(1, 5) if b not in best.layers]] > 0).all()
    torch.testing.assert_close(raw, subset_ranks(pruner.result, 5, objective), equal_nan=True)
