"""select() tables for every criterion, prunability orientation, argument validation, the YAML
registry. Scoring on models: test_pruners_criteria.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from infodyn.pruners.angular import AngularPruner
from infodyn.pruners.base import LayerPruner, PrunerConfigError, nan_scores, resolve_k, top_k
from infodyn.pruners.entrodrop import EntroDropPruner
from infodyn.pruners.greedy import GreedyPruner
from infodyn.pruners.knowledge_entropy import KnowledgeEntropyPruner
from infodyn.pruners.last_k import LastKPruner
from infodyn.pruners.layerdrop import LayerDropPruner, every_other, spread
from infodyn.pruners.none import NoPruner
from infodyn.pruners.oneshot_loss import OneShotLossPruner
from infodyn.pruners.oracle import OraclePruner
from infodyn.pruners.random import RandomPruner
from infodyn.pruners.redundancy import RedundancyPruner
from infodyn.pruners.scoring import reduce_profile
from infodyn.pruners.slimllm import SlimLLMPruner
from infodyn.pruners.taylor import TaylorPruner

NAN = float("nan")
T = torch.tensor
SCORES = T([0.1, 0.9, NAN, 0.5, 0.8, 0.2], dtype=torch.float64)
ALL = [
    RedundancyPruner, KnowledgeEntropyPruner, SlimLLMPruner, AngularPruner, GreedyPruner,
    LastKPruner, RandomPruner, LayerDropPruner, OneShotLossPruner, TaylorPruner,
    EntroDropPruner, OraclePruner,
]  # fmt: skip


class FakeEstimator:
    def __init__(self, name: str, kind: str) -> None:
        self.name, self.input_kind = name, kind


ESTIMATORS = {
    "cosine": FakeEstimator("redundancy", "hidden_states"),
    "knowledge_entropy": FakeEstimator("knowledge_entropy", "ffn_activations"),
}


# ---------- the protocol ----------


@pytest.mark.parametrize("cls", [*ALL, NoPruner])
def test_every_pruner_has_the_whole_protocol_and_no_source(cls):
    pruner = cls()
    assert isinstance(pruner, LayerPruner)
    assert not hasattr(pruner, "source")
    assert isinstance(pruner.training_signature(), dict)


def test_needs_estimator():
    assert RedundancyPruner().needs_estimator() == "cosine"
    assert KnowledgeEntropyPruner().needs_estimator() == "knowledge_entropy"
    assert RedundancyPruner(estimator="gaussian").needs_estimator() == "gaussian"
    for cls in (SlimLLMPruner, AngularPruner, LastKPruner, LayerDropPruner, NoPruner):
        assert cls().needs_estimator() is None


def test_none_removes_nothing():
    pruner = NoPruner(k=3)
    assert pruner.num_to_remove(12) == 0 and pruner.select(SCORES, 3) == []
    assert pruner.prunability(SCORES).isnan().all()


# ---------- select() tables ----------


@pytest.mark.parametrize("cls", [RedundancyPruner, KnowledgeEntropyPruner, SlimLLMPruner])
@pytest.mark.parametrize(
    ("k", "protect", "want"),
    [(0, [], []), (1, [], [1]), (2, [], [1, 4]), (3, [], [1, 3, 4]), (2, [1], [3, 4])],
)
def test_highest_scores_win(cls, k, protect, want):
    assert cls(k=k, protect=protect).select(SCORES, k) == want


@pytest.mark.parametrize("cls", [GreedyPruner, OneShotLossPruner, TaylorPruner, OraclePruner])
def test_lowest_raw_values_win_where_lower_means_remove_first(cls):
    # greedy/oracle: ranks, oneshot: loss after removal, taylor: importance
    assert cls(k=2).select(SCORES, 2) == [0, 5]
    torch.testing.assert_close(cls().prunability(SCORES), -SCORES, equal_nan=True)


def test_nan_never_chosen_even_if_needed():
    with pytest.raises(PrunerConfigError, match="only 4 of 6 blocks can be removed"):
        RedundancyPruner(k=5, protect=[0]).select(SCORES, 5)
    assert 2 not in RedundancyPruner().select(T([NAN, 1.0, NAN, 2.0, 3.0, 0.0]), 3)


def test_ties_break_to_lower_index():
    assert RedundancyPruner().select(T([1.0, 1.0, 1.0, 0.0]), 2) == [0, 1]


@pytest.mark.parametrize(
    ("L", "k", "protect", "want"),
    [(6, 2, [], [4, 5]), (6, 2, [5], [3, 4]), (6, 3, [4], [2, 3, 5]), (6, 0, [], [])],
)
def test_last_k(L, k, protect, want):
    assert LastKPruner(protect=protect).select(nan_scores(L), k) == want


@pytest.mark.parametrize(
    ("L", "k", "want"),
    [(12, 4, [2, 5, 8, 11]), (6, 2, [2, 5]), (12, 6, [1, 3, 5, 7, 9, 11]), (6, 3, [1, 3, 5]),
     (12, 5, [1, 3, 5, 7, 9]), (12, 3, [3, 7, 11])],
)  # fmt: skip
def test_layerdrop_every_other_is_fan_et_al(L, k, want):
    """Depths d = 1..L with d = 0 mod floor(L/k); 12 -> 5 has six such depths: the first 5."""
    assert every_other(L, k) == want
    assert LayerDropPruner().select(nan_scores(L), k) == want


@pytest.mark.parametrize(
    ("L", "k", "want"), [(12, 4, [1, 4, 7, 10]), (6, 2, [1, 4]), (6, 3, [1, 3, 5])]
)
def test_layerdrop_spread_keeps_the_old_rule(L, k, want):
    assert spread(L, k) == want
    assert LayerDropPruner(selection="spread").select(nan_scores(L), k) == want


def test_layerdrop_moves_a_protected_target_to_the_nearest_untargeted_block():
    # 6 -> 3 targets [1, 3, 5]; 3 protected: 2 and 4 are nearest, the lower wins
    assert LayerDropPruner(protect=[3]).select(nan_scores(6), 3) == [1, 2, 5]
    # 12 -> 4 targets [2, 5, 8, 11]; 11 protected: 10 (12 does not exist)
    assert LayerDropPruner(protect=[11]).select(nan_scores(12), 4) == [2, 5, 8, 10]
    # 6 -> 2 targets [2, 5]; 2 protected: 1 and 3 tie, the lower wins
    assert LayerDropPruner(protect=[2]).select(nan_scores(6), 2) == [1, 5]


@pytest.mark.parametrize(
    "cls", [RandomPruner, lambda **kw: LayerDropPruner(selection="random", **kw)]
)
def test_random_reproducible_per_seed(cls):
    picks = {s: cls(seed=s, protect=[0]).select(nan_scores(12), 4) for s in range(6)}
    assert picks[0] == cls(seed=0, protect=[0]).select(nan_scores(12), 4)
    assert len({tuple(p) for p in picks.values()}) > 1  # the seed matters
    for p in picks.values():
        assert p == sorted(p) and len(set(p)) == 4 and 0 not in p


def test_random_draw_is_unchanged():
    """The draw of the pre-protocol `draw(cands, k, seed)`: randperm over the candidates."""
    cands = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    order = torch.randperm(len(cands), generator=torch.Generator().manual_seed(3)).tolist()
    want = sorted(cands[j] for j in order[:4])
    assert RandomPruner(seed=3, protect=[0]).select(nan_scores(12), 4) == want


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


# ---------- prunability: higher = remove first, consistent with select ----------


def raw_for(pruner, gen: torch.Generator, L: int, k: int) -> torch.Tensor:
    raw = torch.rand(L, generator=gen, dtype=torch.float64)
    if isinstance(pruner, AngularPruner):
        raw[L - k + 1 :] = NAN  # distances exist for run starts only
    if isinstance(pruner, (GreedyPruner, OraclePruner)):  # ranks of the k chosen, NaN elsewhere
        raw = torch.full((L,), NAN, dtype=torch.float64)
        free = [b for b in torch.randperm(L, generator=gen).tolist() if b not in pruner.protect]
        for rank, b in enumerate(free[:k]):
            raw[b] = float(rank)
    return raw


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("protect", [(), (0, 5)])
def test_top_k_of_prunability_is_the_selection(cls, protect):
    gen = torch.Generator().manual_seed(0)
    for L, k in ((8, 1), (8, 2), (8, 3), (12, 4)):
        pruner = cls(k=k, protect=list(protect))
        for _ in range(5):
            raw = raw_for(pruner, gen, L, k)
            chosen = pruner.select(raw, k)
            prun = pruner.prunability(raw)
            assert prun.shape == (L,) and prun.dtype == torch.float64
            assert chosen == top_k(prun, k, protect), (cls, raw, prun)


def test_angular_prunability_is_per_block_not_per_run_start():
    # runs of 2: starts 0..3 have distances; the best run [2, 3] must be the most prunable
    raw = T([0.5, 0.4, 0.1, 0.3, NAN], dtype=torch.float64)
    prun = AngularPruner(k=2).prunability(raw)
    assert prun.tolist() == [-0.5, -0.4, -0.1, -0.1, -0.3]
    assert AngularPruner(k=2).select(raw, 2) == [2, 3]


def test_entrodrop_ranks_the_compression_stage_last():
    # H: 0 -> -1 -> -1.5 (the minimum, after block 1) -> -1.4 -> -1.0 -> -0.9
    dh = T([-1.0, -0.5, 0.1, 0.4, 0.1], dtype=torch.float64)
    prun = EntroDropPruner(k=2).prunability(dh)
    assert EntroDropPruner(k=2).select(dh, 2) == [2, 4]  # smallest increase after the minimum
    assert prun[2] > prun[3] and max(prun[:2]) < min(prun[2:])
    assert EntroDropPruner(k=2, stage="all").select(dh, 2) == [0, 1]


# ---------- validation (issue 13: types and ranges before any work) ----------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 4, "fraction": 0.25}, "exactly one of k / fraction"),
        ({"k": None, "fraction": None}, "exactly one of k / fraction"),
        ({"k": -1}, "pruner.k=-1 is negative"),
        ({"k": 1.7}, r"pruner.k=1.7 is not a whole number.*pruner.k=2"),
        ({"k": True}, "pruner.k=True is not a whole number"),
        ({"k": "4"}, "pruner.k='4' is not a whole number"),
        ({"k": None, "fraction": 1.0}, r"fraction=1.0 is outside \(0, 1\)"),
        ({"k": None, "fraction": 0.0}, r"fraction=0.0 is outside \(0, 1\)"),
        ({"k": None, "fraction": "0.2"}, "fraction='0.2' is not a number"),
        ({"protect": 0}, r"pruner.protect=0 is not a list.*pruner.protect=\[0\]"),
        ({"protect": "0,1"}, "is not a list"),
        ({"protect": [1.5]}, "protect contains 1.5, which is not a 0-based block index"),
        ({"protect": [True]}, "protect contains True"),
        ({"reduce": "median"}, "reduce='median' is unknown.*last, mean, calibration"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(PrunerConfigError, match=match):
        RedundancyPruner(**kwargs)


def test_whole_float_k_and_listconfig_protect_are_accepted():
    from omegaconf import OmegaConf

    pruner = RedundancyPruner(k=2.0, protect=OmegaConf.create([0, 1]))
    assert pruner.k == 2 and isinstance(pruner.k, int) and pruner.protect == (0, 1)


def test_resolve_k_and_ranges():
    assert resolve_k(12, None, 0.25) == 3 and resolve_k(12, 4, None) == 4
    assert RedundancyPruner(k=None, fraction=0.5).num_to_remove(6) == 3
    with pytest.raises(PrunerConfigError, match=r"k=12 would remove all 12 blocks.*k <= 11"):
        resolve_k(12, 12, None)
    with pytest.raises(PrunerConfigError, match="protect contains 7"):
        RedundancyPruner(protect=[7]).num_to_remove(6)


def test_fraction_that_rounds_to_no_block_names_the_fix():
    with pytest.raises(PrunerConfigError, match=r"fraction=0.1 of 4 blocks rounds to 0.*>= 0.25"):
        RedundancyPruner(k=None, fraction=0.1).num_to_remove(4)
    assert RedundancyPruner(k=None, fraction=0.25).num_to_remove(4) == 1


@pytest.mark.parametrize("cls", ALL)
def test_k_beyond_the_removable_blocks_fails_in_num_to_remove(cls):
    pruner = cls(k=3, protect=[0, 1, 2, 3])
    with pytest.raises(PrunerConfigError, match=r"leaves 2 of 6 blocks removable.*2 or less"):
        pruner.num_to_remove(6)
    with pytest.raises(PrunerConfigError, match="leaves 2 of 6"):
        pruner.check(6, ESTIMATORS)


def test_angular_run_that_protect_makes_impossible_fails_before_training():
    # 6 blocks, 2 and 4 protected: free blocks 0, 1, 3, 5 hold no run of 3
    pruner = AngularPruner(k=3, protect=[2, 4])
    with pytest.raises(
        PrunerConfigError, match="no run of k=3 contiguous blocks.*protect=\\[2, 4\\]"
    ):
        pruner.num_to_remove(6)
    with pytest.raises(PrunerConfigError, match="no run of k=3"):
        pruner.check(6, {})
    assert AngularPruner(k=2, protect=[2, 4]).num_to_remove(6) == 2  # [0, 1] still fits


def test_check_refuses_calibration_with_an_estimator_without_hidden_states():
    with pytest.raises(PrunerConfigError, match="input_kind is 'ffn_activations'.*reduce=last"):
        KnowledgeEntropyPruner(reduce="calibration").check(6, ESTIMATORS)
    KnowledgeEntropyPruner(reduce="last").check(6, ESTIMATORS)
    RedundancyPruner(reduce="calibration").check(6, ESTIMATORS)


def test_check_refuses_an_estimator_that_was_not_built():
    with pytest.raises(PrunerConfigError, match="estimator='gaussian' is not among the built"):
        RedundancyPruner(estimator="gaussian").check(6, ESTIMATORS)


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


def test_other_bad_options():
    with pytest.raises(PrunerConfigError, match="selection='all'"):
        LayerDropPruner(selection="all")
    with pytest.raises(PrunerConfigError, match="p=1.5"):
        LayerDropPruner(p=1.5)
    with pytest.raises(PrunerConfigError, match="token='first'"):
        AngularPruner(token="first")
    with pytest.raises(PrunerConfigError, match="entropy='renyi'"):
        EntroDropPruner(entropy="renyi")
    with pytest.raises(PrunerConfigError, match="num_bins=1 must be a whole number >= 2"):
        EntroDropPruner(num_bins=1)
    with pytest.raises(PrunerConfigError, match="objective='median'"):
        OraclePruner(objective="median")
    with pytest.raises(PrunerConfigError, match="beam=0 is not a positive whole number"):
        OraclePruner(beam=0)


# ---------- the one score reduction ----------


def test_reduce_profile():
    prof = [[1.0, 4.0, None], [3.0, 0.0, None], [None, None, None]]
    assert reduce_profile(prof[:2], "last").tolist()[:2] == [3.0, 0.0]
    mean = reduce_profile(prof, "mean")
    assert mean.tolist()[:2] == [2.0, 2.0] and math.isnan(mean[2])
    table = T([[1.0, 4.0, NAN], [3.0, 0.0, NAN]], dtype=torch.float64)
    assert reduce_profile(table, "mean").tolist()[:2] == [2.0, 2.0]
    with pytest.raises(PrunerConfigError, match="does not reduce a profile"):
        reduce_profile(prof, "calibration")
    with pytest.raises(PrunerConfigError, match="holds no epoch"):
        reduce_profile([], "last")


# ---------- LayerDrop's training hook ----------


def test_layerdrop_training_signature():
    assert LayerDropPruner(p=0.2, seed=3).training_signature() == {
        "layerdrop_p": 0.2,
        "layerdrop_seed": 3,
    }
    assert (
        LayerDropPruner(p=0.2, seed=3).training_signature()
        != LayerDropPruner(p=0.1, seed=3).training_signature()
    )
    assert LayerDropPruner(p=0.0).training_signature() == {}  # trains like plain fine-tuning
    for cls in (RedundancyPruner, RandomPruner, OraclePruner, NoPruner):
        assert cls().training_signature() == {}


# ---------- the YAML registry ----------

CONF = Path(__file__).resolve().parents[2] / "conf" / "pruner"
NAMES = sorted(p.stem for p in CONF.glob("*.yaml"))
MODULE = {"layerdrop_random": "layerdrop"}


def test_registry_holds_the_new_criteria():
    for name in ("entrodrop", "oneshot_loss", "taylor", "oracle", "layerdrop_random"):
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_yaml_entry_builds_its_pruner(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = CONF / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("#") and f"python -m infodyn pruner={name}" in text
    cfg = OmegaConf.merge(
        {"seed": 0, "data": {"calibration_size": 256}}, {"pruner": OmegaConf.load(path)}
    )
    entry = OmegaConf.to_container(cfg.pruner, resolve=True)
    entry.pop("name", None)  # a display name, read by build_pruner (not a class argument)
    pruner = instantiate(entry)
    assert type(pruner).__module__ == f"infodyn.pruners.{MODULE.get(name, name)}"
    assert isinstance(pruner, LayerPruner)
    if name != "none":
        assert pruner.k == 4 and pruner.fraction is None and pruner.protect == ()
        assert pruner.num_to_remove(12) == 4
        pruner.check(12, ESTIMATORS)
    if name == "layerdrop_random":
        assert pruner.selection == "random" and pruner.training_signature()
