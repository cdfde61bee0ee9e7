"""benchmarks/device_check.py: its arguments, its FSDP section's training path (on the CPU, with
the default strategy: FSDP itself needs a GPU) and the whole `--cpu-smoke` run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


def _load():
    if "device_check" not in sys.modules:  # registered first: its dataclass looks itself up
        spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
        sys.modules["device_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["device_check"])
    return sys.modules["device_check"]


def test_cpu_smoke_plan_is_tiny_and_the_gpu_plan_is_roberta_base() -> None:
    dc = _load()
    smoke, gpu = dc.plan_for(True), dc.plan_for(False)
    assert (smoke.gpu, smoke.model, smoke.trainer) == (False, "roberta_tiny", "cpu")
    assert (gpu.gpu, gpu.model, gpu.trainer) == (True, "roberta_base_random", "gpu")
    assert len(gpu.drop) == 4  # 12 -> 8 blocks
    assert (dc.plan_for(True, rounds=5, steps=7).rounds, dc.plan_for(True, 5, 7).steps) == (5, 7)
    with pytest.raises(SystemExit):
        dc.main(["--no-such-flag"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_the_gpu_run_refuses_a_machine_without_cuda(capsys) -> None:
    assert _load().main([]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err


def test_the_fsdp_sections_fit_stage_path_trains_and_reloads_on_cpu(tmp_path) -> None:
    dc = _load()
    plan = dc.plan_for(True)
    cfg = dc.config(plan, "estimator=[cosine]", f"trainer.limit_train_batches={plan.fsdp_steps}")
    line = dc.fsdp_steps(cfg, plan, str(tmp_path))
    assert line.startswith(f"strategy=auto: {plan.fsdp_steps} steps"), line
    assert f"cosine saw {plan.fsdp_steps} batches" in line, line


def test_cpu_smoke_prints_every_section_and_exits_zero() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("(")]
    assert [ln.split(":")[0] for ln in lines] == [
        "(a) training throughput",
        "(b) estimator overhead",
        "(c) pruned speed-up",
        "(d) FSDP, one device",
    ]
    assert "ratio" in lines[0] and "ratio" in lines[1] and "speed-up" in lines[2]
    assert "skipped: " in lines[3]
