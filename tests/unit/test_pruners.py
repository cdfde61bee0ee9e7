"""select() tables for every criterion, argument validation, and calibration on known answers."""

from __future__ import annotations

import math

import pytest
import torch

from infodyn.layers import find_layer_list
from infodyn.pruners.angular import AngularPruner, last_token_index
from infodyn.pruners.base import LayerPruner, PrunerConfigError, nan_scores, resolve_k
from infodyn.pruners.greedy import GreedyPruner
from infodyn.pruners.knowledge_entropy import KnowledgeEntropyPruner
from infodyn.pruners.last_k import LastKPruner
from infodyn.pruners.layerdrop import LayerDropPruner
from infodyn.pruners.none import NoPruner
from infodyn.pruners.random import RandomPruner
from infodyn.pruners.redundancy import RedundancyPruner
from infodyn.pruners.slimllm import SlimLLMPruner
from tiny_models import ARCHS, tiny

NAN = float("nan")
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


def batches(n: int = 2, labels=None):
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 99, (3, 8), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        ids[1, 6:] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "idx": torch.arange(3)})
    return out


SCORES = T([0.1, 0.9, NAN, 0.5, 0.8, 0.2])


# ---------- select() tables ----------


@pytest.mark.parametrize("cls", [RedundancyPruner, KnowledgeEntropyPruner, SlimLLMPruner])
@pytest.mark.parametrize(
    ("k", "protect", "want"),
    [(0, [], []), (1, [], [1]), (2, [], [1, 4]), (3, [], [1, 3, 4]), (2, [1], [3, 4])],
)
def test_highest_scores_win(cls, k, protect, want):
    pruner = cls(k=k, protect=protect)
    assert isinstance(pruner, LayerPruner)
    assert pruner.select(SCORES, k) == want


def test_nan_never_chosen_even_if_needed():
    with pytest.raises(PrunerConfigError, match="only 4 of 6 blocks can be removed"):
        RedundancyPruner(k=5, protect=[0]).select(SCORES, 5)
    assert 2 not in RedundancyPruner().select(T([NAN, 1.0, NAN, 2.0, 3.0, 0.0]), 3)


def test_ties_break_to_lower_index():
    assert RedundancyPruner().select(T([1.0, 1.0, 1.0, 0.0]), 2) == [0, 1]


def test_reduce_profile():
    prof = T([[1.0, 4.0, NAN], [3.0, 0.0, NAN], [NAN, NAN, NAN]])
    assert RedundancyPruner(reduce="last").reduce_profile(prof[:2]).tolist()[:2] == [3.0, 0.0]
    mean = RedundancyPruner(reduce="mean").reduce_profile(prof)
    assert mean.tolist()[:2] == [2.0, 2.0] and math.isnan(mean[2])
    with pytest.raises(PrunerConfigError, match="reduce='median'.*last, mean, calibration"):
        RedundancyPruner(reduce="median")
    assert KnowledgeEntropyPruner(reduce="calibration").reduce == "calibration"
    with pytest.raises(PrunerConfigError, match="does not reduce a profile"):
        RedundancyPruner(reduce="calibration").reduce_profile(prof)


def test_sources():
    assert RedundancyPruner().source == "estimator" and RedundancyPruner().estimator == "cosine"
    assert KnowledgeEntropyPruner().estimator == "knowledge_entropy"
    assert SlimLLMPruner().source == AngularPruner().source == GreedyPruner().source
    assert GreedyPruner().source == "calibration"
    for cls in (LayerDropPruner, LastKPruner, RandomPruner, NoPruner):
        assert cls().source == "none"


def test_none_selects_nothing():
    assert NoPruner(k=3).select(SCORES, 3) == [] and NoPruner().num_to_remove(12) == 0


@pytest.mark.parametrize(
    ("L", "k", "protect", "want"),
    [(6, 2, [], [4, 5]), (6, 2, [5], [3, 4]), (6, 3, [4], [2, 3, 5]), (6, 0, [], [])],
)
def test_last_k(L, k, protect, want):
    assert LastKPruner(protect=protect).select(nan_scores(L), k) == want


@pytest.mark.parametrize(
    ("L", "k", "want"),
    [(12, 4, [1, 4, 7, 10]), (6, 2, [1, 4]), (6, 3, [1, 3, 5]), (12, 6, [1, 3, 5, 7, 9, 11])],
)
def test_layerdrop_every_other_is_even(L, k, want):
    got = LayerDropPruner().select(nan_scores(L), k)
    assert got == want
    gaps = [b - a for a, b in zip(got, got[1:], strict=False)]
    assert max(gaps) - min(gaps) <= 1


def test_layerdrop_every_other_moves_off_protected():
    assert LayerDropPruner(protect=[3]).select(nan_scores(6), 3) == [1, 2, 5]


@pytest.mark.parametrize(
    "cls", [RandomPruner, lambda **kw: LayerDropPruner(selection="random", **kw)]
)
def test_random_reproducible_per_seed(cls):
    picks = {s: cls(seed=s, protect=[0]).select(nan_scores(12), 4) for s in range(6)}
    assert picks[0] == cls(seed=0, protect=[0]).select(nan_scores(12), 4)
    assert len({tuple(p) for p in picks.values()}) > 1  # the seed matters
    for p in picks.values():
        assert p == sorted(p) and len(set(p)) == 4 and 0 not in p


@pytest.mark.parametrize(
    ("scores", "k", "protect", "want"),
    [
        (T([0.3, 0.1, 0.2, 0.4, NAN, NAN]), 3, [], [1, 2, 3]),
        (T([0.3, 0.1, 0.2, 0.4, NAN, NAN]), 3, [2], [3, 4, 5]),
        (T([0.3, 0.1, 0.2, NAN, NAN, NAN]), 3, [2], []),  # every scored run hits 2: error
        (T([0.3, 0.1, 0.2, 0.05, 0.6, NAN]), 2, [3], [1, 2]),
        (T([0.5, 0.2, NAN, 0.1, 0.3, NAN]), 2, [], [3, 4]),
    ],
)
def test_angular_selects_contiguous_run(scores, k, protect, want):
    pruner = AngularPruner(protect=protect)
    if not want:
        with pytest.raises(PrunerConfigError, match="no run of k=3 contiguous blocks"):
            pruner.select(scores, k)
    else:
        assert pruner.select(scores, k) == want


# ---------- validation ----------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 4, "fraction": 0.25}, "exactly one of k / fraction"),
        ({"k": None, "fraction": None}, "exactly one of k / fraction"),
        ({"k": -1}, "pruner.k=-1 is negative"),
        ({"k": None, "fraction": 1.0}, r"fraction=1.0 is outside \(0, 1\)"),
        ({"k": None, "fraction": 0.0}, r"fraction=0.0 is outside \(0, 1\)"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(PrunerConfigError, match=match):
        RedundancyPruner(**kwargs)


def test_resolve_k():
    assert resolve_k(12, None, 0.25) == 3 and resolve_k(12, 4, None) == 4
    assert RedundancyPruner(k=None, fraction=0.5).num_to_remove(6) == 3
    with pytest.raises(PrunerConfigError, match=r"k=12 would remove all 12 blocks.*k <= 11"):
        resolve_k(12, 12, None)
    with pytest.raises(PrunerConfigError, match="protect contains 7"):
        RedundancyPruner(protect=[7]).num_to_remove(6)


@pytest.mark.parametrize(
    "pruner",
    [RedundancyPruner(), LastKPruner(), RandomPruner(), LayerDropPruner(), AngularPruner()],
)
def test_select_rejects_bad_k_and_protect(pruner):
    with pytest.raises(PrunerConfigError, match="would remove all 6"):
        pruner.select(torch.zeros(6), 6)
    with pytest.raises(PrunerConfigError, match="negative"):
        pruner.select(torch.zeros(6), -1)
    pruner.protect = (6,)
    with pytest.raises(PrunerConfigError, match="protect contains 6"):
        pruner.select(torch.zeros(6), 1)


def test_protected_set_leaves_too_few():
    for pruner in (RedundancyPruner(protect=[0, 1, 2]), LastKPruner(protect=[0, 1, 2])):
        with pytest.raises(PrunerConfigError, match="only 1 of 4 blocks can be removed"):
            pruner.select(torch.zeros(4), 2)


def test_other_bad_options():
    with pytest.raises(PrunerConfigError, match="selection='all'"):
        LayerDropPruner(selection="all")
    with pytest.raises(PrunerConfigError, match="p=1.5"):
        LayerDropPruner(p=1.5)
    with pytest.raises(PrunerConfigError, match="token='first'"):
        AngularPruner(token="first")


# ---------- calibration on known answers ----------


@pytest.mark.parametrize("arch", ARCHS)
def test_slimllm_finds_identity_block(arch):
    model = tiny(arch, layers=4)
    make_identity(model, 2)
    model.train()
    scores = SlimLLMPruner().calibrate(model, batches(), 1)
    assert model.training  # mode restored
    assert scores.shape == (4,) and scores.dtype == torch.float64
    assert scores[2] > 1 - 1e-4 and scores[2] == scores.max()
    assert SlimLLMPruner(k=1).select(scores, 1) == [2]


def test_slimllm_ignores_padding():
    model = tiny("gpt2", layers=3)
    bs = batches(1)
    base = SlimLLMPruner().calibrate(model, bs, 1)
    bs[0]["input_ids"][1, 6:] = 50  # change only padded positions
    torch.testing.assert_close(SlimLLMPruner().calibrate(model, bs, 1), base)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("token", ["mean", "last"])
def test_angular_finds_identity_run(arch, token):
    model = tiny(arch, layers=5)
    make_identity(model, 1)
    make_identity(model, 2)
    scores = AngularPruner(token=token).calibrate(model, batches(), 2)
    assert scores.shape == (5,) and math.isnan(scores[4]) and not scores[:4].isnan().any()
    assert scores[1] < 0.01 and scores[1] == scores[:4].min()
    assert AngularPruner(k=2).select(scores, 2) == [1, 2]


def test_last_token_index_handles_both_paddings():
    mask = T([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_removes_identity_block_first(arch):
    model = tiny(arch, layers=4)
    model.config.num_labels = model.num_labels = 1
    torch.manual_seed(0)
    # A regression head whose labels are the model's own outputs: the full model has loss 0,
    # so does it without the identity block; removing any other block costs loss.
    model.score = torch.nn.Linear(32, 1, bias=False)
    with torch.no_grad():
        model.score.weight.normal_(std=3.0)
    model.config.problem_type = "regression"
    make_identity(model, 1)
    bs = batches()
    with torch.no_grad():
        for b in bs:
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            b["labels"] = out.logits.squeeze(-1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def evaluate(m, b):
        from infodyn.pruners.greedy import mean_loss

        calls.append(len(find_layer_list(m)[2]))
        return mean_loss(m, b)

    scores = GreedyPruner(k=2).calibrate(model, bs, 2, evaluate=evaluate)
    assert scores[1] == 2.0 and torch.isfinite(scores).sum() == 2
    assert calls == [3] * 4 + [2] * 3  # O(k * L) evaluations
    chosen = GreedyPruner(k=2).select(scores, 2)
    assert 1 in chosen and len(chosen) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # untouched
    protected = GreedyPruner(k=1, protect=[1]).calibrate(model, bs, 1)
    assert math.isnan(protected[1]) and GreedyPruner(k=1).select(protected, 1) != [1]


def test_greedy_default_metric_needs_labels():
    with pytest.raises(PrunerConfigError, match="needs `labels`"):
        GreedyPruner(k=1).calibrate(tiny("bert", layers=2), batches(1), 1)


# ---------- the YAML registry ----------

CONF = __import__("pathlib").Path(__file__).resolve().parents[2] / "conf" / "pruner"
NAMES = ["none", "redundancy", "knowledge_entropy", "layerdrop", "slimllm", "angular", "last_k",
         "random", "greedy"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_yaml_entry_builds_its_pruner(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = CONF / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("#") and f"python -m infodyn pruner={name}" in text
    cfg = OmegaConf.merge({"seed": 0}, {"pruner": OmegaConf.load(path)})
    pruner = instantiate(cfg.pruner)
    assert type(pruner).__module__ == f"infodyn.pruners.{name}"
    assert isinstance(pruner, LayerPruner) and pruner.source in (
        "estimator",
        "calibration",
        "none",
    )
    if name != "none":
        assert pruner.k == 4 and pruner.fraction is None and pruner.protect == ()
        assert pruner.num_to_remove(12) == 4
