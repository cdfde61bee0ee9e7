"""A non-editable wheel carries conf/ and multirun_sweeps/: the CLI works from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("pyproject.toml", "README.md", "src", "conf", "multirun_sweeps")


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)


def build_and_install(source: Path, tmp: Path) -> tuple[Path, Path]:
    """Build the wheel from a copy of `source` (the checkout stays clean); install it alone."""
    copy = tmp / "checkout"
    copy.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SHIPPED:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, copy / name, symlinks=True, ignore=skip)
        else:
            shutil.copy2(src, copy / name)
    dist, site = tmp / "dist", tmp / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    out = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(copy), "-w", str(dist)])
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = next(dist.glob("infodyn-*.whl"))
    out = _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)])
    assert out.returncode == 0, out.stderr[-3000:]
    return wheel, site


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel, site = build_and_install(REPO, tmp)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),  # the wheel, not the checkout; the deps come from the venv
        "PROJECT_ROOT": str(tmp / "project"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return wheel, site, {"env": env, "cwd": elsewhere}


def test_wheel_carries_every_yaml(installed) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        f"infodyn/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")
    }
    wanted |= {f"infodyn/conf/sweep/{p.name}" for p in (REPO / "multirun_sweeps").glob("*.yaml")}
    assert len(wanted) > 40 and wanted <= names, sorted(wanted - names)


def test_installed_cli_composes_from_another_folder(installed) -> None:
    _, site, where = installed
    out = _run([sys.executable, "-c", "import infodyn; print(infodyn.__file__)"], **where)
    assert out.stdout.strip().startswith(str(site)), "the test must run the wheel's code"
    out = _run(
        [str(site / "bin" / "infodyn"), "--cfg", "job", "task=mrpc", "model=roberta_tiny"],
        **where,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "name: mrpc" in out.stdout and "name: roberta_tiny" in out.stdout


def test_installed_cli_runs_a_sweep_dry(installed) -> None:
    _, site, where = installed
    args = ["-m", "sweep=cpu_table1", "task=mrpc", "pruner=none,redundancy", "seed=0"]
    args += ["model=roberta_tiny", "run.dry_run=true"]
    out = _run([str(site / "bin" / "infodyn"), *args], **where)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("sweep_name: cpu_table1") == 2, "one resolved config per job"
    assert not list(where["cwd"].iterdir()), "nothing written into the working folder"
