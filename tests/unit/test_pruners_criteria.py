"""Every criterion's score(ctx) on tiny models: known answers, and agreement with loops written
independently here (surgery on copies, plain backward passes)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from scipy.stats import spearmanr

from infodyn.estimators.cosine import CosineRedundancy
from infodyn.layers import find_layer_list
from infodyn.pruners.angular import AngularPruner, last_token_index
from infodyn.pruners.base import PrunerConfigError
from infodyn.pruners.entrodrop import EntroDropPruner, bucket_entropy, knn_entropy
from infodyn.pruners.greedy import GreedyPruner
from infodyn.pruners.oneshot_loss import OneShotLossPruner
from infodyn.pruners.redundancy import RedundancyPruner
from infodyn.pruners.slimllm import SlimLLMPruner
from infodyn.pruners.surgery import remove_layers
from infodyn.pruners.taylor import TaylorPruner
from scoring_context import context, labelled_batches, plain_evaluate
from tiny_models import ARCHS, tiny

T = torch.tensor


def make_identity(model, b: int) -> None:
    """Zero block b's residual-branch output projections: its output equals its input.

    Exact for GPT-2 / Llama; up to the post-LN for BERT / RoBERTa, whose input is normalized.
    """
    block = find_layer_list(model)[2][b]
    names = {
        "roberta": ("attention.output.dense", "output.dense"),
        "bert": ("attention.output.dense", "output.dense"),
        "gpt2": ("attn.c_proj", "mlp.c_proj"),
        "llama": ("self_attn.o_proj", "mlp.down_proj"),
    }[model.config.model_type]
    with torch.no_grad():
        for name in names:
            for p in block.get_submodule(name).parameters():
                p.zero_()


def self_labelled(arch: str, layers: int = 4, identity: int = 1):
    """A regression model whose labels are its own outputs (loss 0), block `identity` a no-op:
    removing it keeps loss 0, removing any other block costs loss."""
    model = tiny(arch, layers=layers)
    model.config.num_labels = model.num_labels = 1
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 1, bias=False)
    with torch.no_grad():
        head.weight.normal_(std=3.0)
    if arch in ("gpt2", "llama"):
        model.score = head
    elif arch == "bert":
        model.classifier = head
    else:
        model.classifier.out_proj = head
    model.config.problem_type = "regression"
    make_identity(model, identity)
    bs = labelled_batches()
    with torch.no_grad():
        for b in bs:
            b["labels"] = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            b["labels"] = b["labels"].logits.squeeze(-1)
    return model, bs


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before) -> bool:
    return all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ---------- hidden-state criteria ----------


@pytest.mark.parametrize("arch", ARCHS)
def test_slimllm_finds_identity_block(arch):
    model = tiny(arch, layers=4)
    make_identity(model, 2)
    model.train()
    scores = SlimLLMPruner(k=1).score(context(model, labelled_batches(), 1))
    assert model.training  # mode restored
    assert scores.shape == (4,) and scores.dtype == torch.float64
    assert scores[2] > 1 - 1e-4 and scores[2] == scores.max()
    assert SlimLLMPruner(k=1).select(scores, 1) == [2]


def test_slimllm_ignores_padding():
    model = tiny("gpt2", layers=3)
    bs = labelled_batches(1)
    base = SlimLLMPruner().score(context(model, bs, 1))
    bs[0]["input_ids"][1, 6:] = 50  # change only padded positions
    torch.testing.assert_close(SlimLLMPruner().score(context(model, bs, 1)), base)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("token", ["mean", "last"])
def test_angular_finds_identity_run(arch, token):
    model = tiny(arch, layers=5)
    make_identity(model, 1)
    make_identity(model, 2)
    scores = AngularPruner(k=2, token=token).score(context(model, labelled_batches(), 2))
    assert scores.shape == (5,) and math.isnan(scores[4]) and not scores[:4].isnan().any()
    assert scores[1] < 0.01 and scores[1] == scores[:4].min()
    assert AngularPruner(k=2).select(scores, 2) == [1, 2]


def test_last_token_index_handles_both_paddings():
    mask = T([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def finite_spearman(a, b) -> float:
    keep = ~(a.isnan() | b.isnan())
    return float(spearmanr(a[keep].numpy(), b[keep].numpy()).statistic)


def test_criteria_that_pick_the_same_block_have_positively_correlated_prunability():
    """Issue 11: angular stores distances (lower = remove first); ranking its raw values
    against slimllm's similarities gave a negative correlation for the same choice."""
    model = tiny("llama", layers=5)
    make_identity(model, 3)
    ctx = context(model, labelled_batches(), 1)
    ang, slim = AngularPruner(k=1), SlimLLMPruner(k=1)
    raw_a, raw_s = ang.score(ctx), slim.score(ctx)
    assert ang.select(raw_a, 1) == slim.select(raw_s, 1) == [3]
    assert finite_spearman(raw_a, raw_s) < 0  # raw values disagree in orientation
    assert finite_spearman(ang.prunability(raw_a), slim.prunability(raw_s)) > 0.5


def test_greedy_and_oneshot_agree_in_prunability_orientation():
    model, bs = self_labelled("llama", layers=5, identity=2)
    ctx = context(model, bs, 3)
    greedy, oneshot = GreedyPruner(k=3), OneShotLossPruner(k=3)
    raw_g, raw_o = greedy.score(ctx), oneshot.score(ctx)
    assert 2 in greedy.select(raw_g, 3) and 2 in oneshot.select(raw_o, 3)
    assert finite_spearman(greedy.prunability(raw_g), oneshot.prunability(raw_o)) > 0


# ---------- loss criteria against loops written here ----------


def brute_force_greedy(model, bs, k, protect=()):
    removed = []
    for _ in range(k):
        best = None
        for b in range(len(find_layer_list(model)[2])):
            if b in removed or b in protect:
                continue
            trial = remove_layers(copy.deepcopy(model), removed + [b])
            loss = plain_evaluate(trial, bs)["loss"]
            if best is None or loss < best[0]:
                best = (loss, b)
        removed.append(best[1])
    return removed


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_greedy_matches_a_brute_force_loop_and_leaves_the_model_alone(arch):
    model, bs = self_labelled(arch)
    before = state(model)
    scores = GreedyPruner(k=2).score(context(model, bs, 2))
    order = brute_force_greedy(model, bs, 2)
    assert [int(b) for b in scores.argsort()[:2]] == order
    assert scores[order[0]] == 0.0 and scores[order[1]] == 1.0 and scores.isnan().sum() == 2
    if arch != "bert":  # post-LN: the zeroed block is identity only up to its norm
        assert order[0] == 1
    assert same_state(model, before) and len(find_layer_list(model)[2]) == 4
    protected = GreedyPruner(k=1, protect=[1]).score(context(model, bs, 1))
    assert math.isnan(protected[1]) and GreedyPruner(k=1).select(protected, 1) != [1]


@pytest.mark.parametrize("arch", ARCHS)
def test_oneshot_loss_matches_removal_on_copies(arch):
    model, bs = self_labelled(arch)
    before = state(model)
    scores = OneShotLossPruner(k=1).score(context(model, bs, 1))
    want = [plain_evaluate(remove_layers(copy.deepcopy(model), [b]), bs)["loss"] for b in range(4)]
    torch.testing.assert_close(scores, T(want, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert same_state(model, before)
    if arch in ("gpt2", "llama"):
        assert scores[1] < 1e-10 and OneShotLossPruner(k=1).select(scores, 1) == [1]


def test_loss_criteria_need_labels():
    model = tiny("bert", layers=2)
    bs = [{k: v for k, v in b.items() if k != "labels"} for b in labelled_batches(1)]
    with pytest.raises(PrunerConfigError, match="taylor needs `labels`"):
        TaylorPruner(k=1).score(context(model, bs, 1))


# ---------- Taylor ----------


def manual_taylor(model, bs) -> list[float]:
    twin = copy.deepcopy(model).eval()
    n = sum(int(b["labels"].shape[0]) for b in bs)
    for b in bs:
        out = twin(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]
        )
        (out.loss * b["labels"].shape[0] / n).backward()
    return [
        sum(float((p.detach().double() * p.grad.double()).abs().sum()) for p in block.parameters())
        for block in find_layer_list(twin)[2]
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_taylor_matches_a_plain_backward_pass(arch):
    model = tiny(arch, layers=4)
    bs = labelled_batches()
    model.train()
    scores = TaylorPruner(k=1).score(context(model, bs, 1))
    torch.testing.assert_close(
        scores, T(manual_taylor(model, bs), dtype=torch.float64), rtol=1e-5, atol=1e-12
    )
    assert model.training and all(p.grad is None for p in model.parameters())


def test_taylor_identity_block_is_unimportant_and_frozen_weights_count():
    model, bs = tiny("llama", layers=4), labelled_batches()
    make_identity(model, 1)
    for p in model.parameters():
        p.requires_grad_(False)  # as under LoRA: the base weights are frozen
    scores = TaylorPruner(k=1).score(context(model, bs, 1))
    assert scores[1] == 0.0  # its branch ends in zeros: no weight moves the loss
    assert not any(p.requires_grad for p in model.parameters())
    assert TaylorPruner(k=1).select(scores, 1) == [1]


# ---------- EntroDrop ----------


def test_bucket_entropy_known_answers():
    # 2 dims, 4 bins, 8 points: dim 0 fills every bin twice (log 4), dim 1 is constant (0)
    x = torch.stack([torch.arange(8.0) / 7.0, torch.full((8,), 3.0)], dim=1)
    torch.testing.assert_close(bucket_entropy(x, 4), T(math.log(4), dtype=torch.float64))


def test_knn_entropy_known_answers():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    truth = math.log(2 * math.pi * math.e)  # 2-d standard normal
    assert abs(float(knn_entropy(x, 5)) - truth) < 0.1
    # scaling every point by c adds exactly D log c
    torch.testing.assert_close(
        knn_entropy(3 * x, 5) - knn_entropy(x, 5), T(2 * math.log(3.0), dtype=torch.float64)
    )
    with pytest.raises(PrunerConfigError, match="more than knn_k=5 points, got 4"):
        knn_entropy(x[:4], 5)


@pytest.mark.parametrize("entropy", ["knn", "bucket"])
@pytest.mark.parametrize("states", ["tokens", "pooled"])
def test_entrodrop_identity_block_adds_no_entropy(entropy, states):
    model = tiny("llama", layers=4)
    make_identity(model, 1)
    pruner = EntroDropPruner(k=1, entropy=entropy, states=states, knn_k=2, stage="all")
    scores = pruner.score(context(model, labelled_batches(3, batch=4), 1))
    assert scores.shape == (4,) and scores[1] == 0.0
    assert not torch.equal(scores, torch.zeros(4, dtype=torch.float64))


def test_entrodrop_dh_is_the_difference_of_the_entropy_curve():
    model = tiny("gpt2", layers=3)
    bs = labelled_batches()
    pruner = EntroDropPruner(k=1, knn_k=3)
    curve = pruner.entropies(model, bs)
    torch.testing.assert_close(pruner.score(context(model, bs, 1)), curve.diff())
    assert curve.shape == (4,)


# ---------- profile and calibration scores ----------


def test_redundancy_reads_the_fine_tuning_profile_of_its_estimator():
    est = {"cosine": CosineRedundancy()}
    profiles = {"cosine": {"layers": [0, 1, 2], "redundancy": [[0.1, 0.3, 0.2], [0.4, None, 0.1]]}}
    ctx = context(tiny("bert", layers=3), [], 1, profiles=profiles, estimators=est)
    assert RedundancyPruner(k=1).score(ctx).tolist()[0] == 0.4
    assert math.isnan(RedundancyPruner(k=1).score(ctx)[1])
    assert RedundancyPruner(k=1, reduce="mean").score(ctx).tolist() == pytest.approx(
        [0.25, 0.3, 0.15]
    )
    empty = context(tiny("bert", layers=3), [], 1, profiles={}, estimators=est)
    with pytest.raises(PrunerConfigError, match="no 'redundancy' values of estimator 'cosine'"):
        RedundancyPruner(k=1).score(empty)


def test_calibration_rescoring_feeds_the_estimator_eval_forwards():
    model = tiny("roberta", layers=3)
    bs = labelled_batches(2, batch=4)
    est = CosineRedundancy()
    est.update([torch.randn(2, 5, 32) for _ in range(4)], torch.ones(2, 5))  # fine-tuning state
    held = {k: v.clone() for k, v in est.metric_state.items() if torch.is_tensor(v)}
    scores = RedundancyPruner(k=1, reduce="calibration").score(
        context(model, bs, 1, estimators={"cosine": est})
    )
    ref = CosineRedundancy()
    with torch.no_grad():
        for b in bs:
            out = model(
                input_ids=b["input_ids"],
                attention_mask=b["attention_mask"],
                output_hidden_states=True,
            )
            ref.update(list(out.hidden_states), b["attention_mask"])
    torch.testing.assert_close(scores, ref.compute().double())
    assert all(torch.equal(v, est.metric_state[k]) for k, v in held.items())  # untouched
