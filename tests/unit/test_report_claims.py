"""The paper's claims get a verdict from the runs: supported, not supported or undecided."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infodyn import report
from infodyn.report import claims
from report_runs import results, write_job

CAP = [None, 0.2, 0.3, 0.25, 0.1, 0.001]  # ∩ over 6 blocks, peak at layer 3, last R = 1e-3
RISING = [None, 0.1, 0.2, 0.3, 0.4, 0.5]
FALLING = [None, 0.3, 0.25, 0.2, 0.1, 0.05]  # peak at the first scored layer, inside the band


def write_profiles(root: Path, shape, seeds=(0, 1, 2), epochs=3, flip=False, task="rte"):
    for seed in seeds:
        rng = np.random.default_rng(seed)
        prof = []
        for e in range(epochs):
            row = [None if v is None else v * (1 + 0.02 * rng.standard_normal()) for v in shape]
            prof.append(row[:1] + row[1:][::-1] if flip and e % 2 else row)
        cos = {"layers": list(range(len(shape))), "redundancy": prof}
        write_job(root, results(task, "none", seed, profiles={"finetune": {"cosine": cos}}))
    return root


def by_id(root: Path) -> dict[str, dict]:
    runs, _ = report.collect([root])
    return {c["id"]: c for c in claims.evaluate_claims(runs)}


def test_band_scales_the_papers_layers_3_to_8_of_12() -> None:
    assert claims.band(12) == (3, 8)
    assert claims.band(6) == (2, 4)
    assert claims.band(24) == (6, 16)


def test_cap_shaped_stable_profile_with_a_quiet_last_layer(tmp_path: Path) -> None:
    got = by_id(write_profiles(tmp_path, CAP))
    for cid in "abc":
        assert got[cid]["verdict"] == "supported", got[cid]["items"]
    (item,) = got["a"]["items"]
    assert item["n"] == 3 and item["peaks"] == [3, 3, 3] and item["band"] == (2, 4)
    assert item["mean"] == pytest.approx(0.1, abs=0.02) and item["ci"].low > 0  # 0.3 − 0.2
    (item,) = got["c"]["items"]
    assert item["mean"] == pytest.approx(-3, abs=0.05)  # log10 R of the last block
    assert got["d"]["verdict"] == "undecided (no runs)"


def test_a_rising_unstable_profile_is_not_supported(tmp_path: Path) -> None:
    got = by_id(write_profiles(tmp_path, RISING, flip=True))
    assert got["a"]["verdict"] == "not supported"  # the maximum lies at the output end
    assert got["b"]["verdict"] == "not supported"  # every other epoch reversed: rho = -1
    assert got["c"]["verdict"] == "not supported"  # last R = 0.5, far from 1e-3


def test_one_seed_is_undecided_whatever_it_shows(tmp_path: Path) -> None:
    got = by_id(write_profiles(tmp_path, CAP, seeds=(0,)))
    assert got["a"]["verdict"].startswith("undecided (n=1 too small")
    assert got["a"]["items"][0]["peaks"] == [3]  # the numbers are still stated


def _pruned(root: Path, pruner: str, values) -> None:
    for seed, v in enumerate(values):
        data = results("rte", pruner, seed)
        data["metrics"] = {"final": {"accuracy": v}}
        write_job(root, data)


def test_pruning_claim_from_paired_intervals(tmp_path: Path) -> None:
    _pruned(tmp_path, "redundancy", [0.66, 0.67, 0.65])
    _pruned(tmp_path, "knowledge_entropy", [0.55, 0.57, 0.54])
    _pruned(tmp_path, "layerdrop_random", [0.60, 0.615, 0.59])
    _pruned(tmp_path, "slimllm", [0.64, 0.655, 0.628])
    got = by_id(tmp_path)["d"]
    assert [i["verdict"] for i in got["items"]] == ["supported"] * 3
    assert got["verdict"] == "supported"
    _pruned(tmp_path, "slimllm", [0.70, 0.71, 0.69])  # SlimLLM now clearly better
    got = by_id(tmp_path)["d"]
    assert got["verdict"] == "not supported"
    (item,) = [i for i in got["items"] if "SlimLLM" in i["what"]]
    assert item["ci"].high < 0 and item["n"] == 3


def test_infodyn_report_writes_claims_md(tmp_path: Path) -> None:
    root = write_profiles(tmp_path / "sweep", CAP)
    assert report.main([str(root), "--out", str(tmp_path / "out"), "--no-figures"]) == 0
    md = (tmp_path / "out" / "claims.md").read_text()
    assert "## (a) The redundancy profile is ∩-shaped with its peak in the middle layers: " \
        "**supported**" in md  # fmt: skip
    assert "(L=6: layers 2–4)" in md and "peak layers 3, 3, 3; band 2–4" in md
    assert "## (d) Redundancy pruning beats knowledge entropy, LayerDrop and SlimLLM: " \
        "**undecided (no runs)**" in md  # fmt: skip


def test_a_task_left_out_of_table1_is_shown_but_not_counted(tmp_path: Path) -> None:
    _pruned(tmp_path, "redundancy", [0.66, 0.67, 0.65])
    _pruned(tmp_path, "knowledge_entropy", [0.55, 0.57, 0.54])
    for seed, v in enumerate([0.40, 0.42, 0.41]):  # on MRPC redundancy clearly loses to KE
        for pruner, value in (("redundancy", v), ("knowledge_entropy", v + 0.3)):
            data = results("mrpc", pruner, seed)
            data["metrics"] = {"final": {"f1": value}}
            write_job(tmp_path, data)
    runs, _ = report.collect([tmp_path])
    counted = {c["id"]: c for c in claims.evaluate_claims(runs)}["d"]
    assert counted["verdict"] == "not supported"
    why = "unpruned f1 0.70 is below the target 0.85"
    left_out = {c["id"]: c for c in claims.evaluate_claims(runs, excluded={"mrpc": why})}["d"]
    (mrpc,) = [
        i for i in left_out["items"] if i["what"].startswith("MRPC") and "Knowledge" in i["what"]
    ]
    assert mrpc["verdict"] == f"not counted (not supported; {why})" and mrpc["n"] == 3
    assert left_out["verdict"] != "not supported"  # RTE's items alone decide it
    assert "not supported" not in left_out["verdict"]


def test_a_profile_falling_from_the_first_scored_layer_is_no_cap(tmp_path: Path) -> None:
    """At L=6 the band is layers 2-4 and layer 2 is the first scored one: that end is no peak."""
    got = by_id(write_profiles(tmp_path, FALLING))
    (item,) = got["a"]["items"]
    assert item["peaks"] == [2, 2, 2] and item["band"] == (2, 4)
    assert got["a"]["verdict"] == "not supported"
    assert item["mean"] == pytest.approx(0.25 - 0.3, abs=0.02)
