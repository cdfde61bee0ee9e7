"""Fidelity against the oracle, checked on a hand-computed 4-block, k=2 example."""

from __future__ import annotations

from pathlib import Path

import pytest

from infodyn import report
from infodyn.report import fidelity
from report_runs import results, write_job

#               subset: (metric, recovered_metric)
SUBSETS = {
    (0, 1): (0.60, None),
    (0, 2): (0.70, 0.82),
    (0, 3): (0.65, None),
    (1, 2): (0.80, 0.85),  # the best subset, also after recovery
    (1, 3): (0.70, None),  # ties with (0, 2): both rank 2.5
    (2, 3): (0.50, 0.75),
}
UNPRUNED_LOSS = 0.5
SINGLE_LOSS = [0.9, 0.6, 0.55, 1.5]  # damage 0.4, 0.1, 0.05, 1.0: block 2 hurts least
PRUN_A = [0.3, 0.6, 0.9, 0.1]  # ranks blocks exactly as -damage: rho = +1
PRUN_B = [None, 0.2, 0.1, 0.3]  # over blocks 1-3: ranks (2,1,3) vs (2,3,1): rho = -1


def oracle(split: str = "dev") -> dict:
    return {
        "split": split,
        "metric": "accuracy",
        "k": 2,
        "num_examples": 277,
        "unpruned": {"layers": [], "metric": 0.9, "loss": UNPRUNED_LOSS},
        "subsets": [
            {"layers": list(s), "metric": m, "loss": 1.0, "recovered_metric": r}
            for s, (m, r) in SUBSETS.items()
        ],
        "single": [
            {"layers": [b], "metric": 0.8, "loss": loss} for b, loss in enumerate(SINGLE_LOSS)
        ],
    }


def job(root: Path, pruner: str, seed: int, chosen, prunability) -> None:
    data = results("rte", pruner, seed, pruned_layers=list(chosen), oracle=oracle())
    data.update(layer_prunability=prunability, layer_scores=prunability, num_layers_before=4)
    write_job(root, data)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    job(root, "redundancy", 0, [2, 0], PRUN_A)  # unsorted: the order is no part of a subset
    job(root, "redundancy", 1, [1, 2], PRUN_A)
    job(root, "slimllm", 0, [1, 2], PRUN_B)
    job(root, "last_k", 0, [0, 1], None)
    job(root, "knowledge_entropy", 0, [3], PRUN_A)  # k mismatch: skipped with a note
    job(root, "none", 0, [], None)  # removes nothing: nothing to judge
    return root


def test_rank_regret_and_damage_correlation_by_hand(sweep: Path) -> None:
    runs, _ = report.collect([sweep])
    records, notes = fidelity.fidelity_records(runs)
    assert len(notes) == 1 and "k=2" in notes[0]
    rows = {r["criterion"]: r for r in fidelity.fidelity_table(records)}
    assert set(rows) == {"redundancy", "slimllm", "last_k"}
    red = rows["redundancy"]
    assert red["n_rank"] == 2 and red["n_subsets"] == 6
    assert red["rank"] == pytest.approx((2.5 + 1) / 2)  # tie averaged, then mean over seeds
    assert red["regret"] == pytest.approx((0.10 + 0.0) / 2)
    assert red["rank_recovered"] == pytest.approx((2 + 1) / 2)  # among the 3 recovered
    assert red["regret_recovered"] == pytest.approx((0.03 + 0.0) / 2)
    assert red["rho"] == pytest.approx(1.0)
    slim = rows["slimllm"]
    assert (slim["rank"], slim["regret"], slim["rho"]) == (1.0, 0.0, pytest.approx(-1.0))
    last = rows["last_k"]
    assert last["rank"] == 5.0 and last["regret"] == pytest.approx(0.20)
    assert last["n_rank_recovered"] == 0 and last["rank_recovered"] is None  # not recovered
    assert last["rho"] is None  # no prunability


def test_infodyn_report_writes_fidelity_files(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    md = (out / "fidelity.md").read_text()
    assert "| RTE (Acc) | Redundancy (ours) | dev | 2 | 6 | 1.75 (n=2) | 0.0500 (n=2) |" in md
    assert "| 1.50 (n=2) | 0.0150 (n=2) | 1.00 (n=2) |" in md
    assert "k=2" in md  # the skipped k-mismatch run is named
    csv = (out / "fidelity.csv").read_text().splitlines()
    assert csv[0].startswith("task,criterion,label,split,metric,k,n_subsets,seeds,rank,n_rank")
    assert (out / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_oracle_says_how_to_get_one(tmp_path: Path) -> None:
    write_job(tmp_path, results("rte", "redundancy", 0))
    assert report.main([str(tmp_path), "--no-figures"]) == 0
    assert "stages.oracle=true" in (tmp_path / "report" / "fidelity.md").read_text()
