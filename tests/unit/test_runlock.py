"""`runlock.RunLock`: one live run per run dir, tested with real processes."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from infodyn import runlock
from infodyn.errors import ConfigError
from infodyn.explain import explain
from infodyn.runlock import RunDirLockedError, RunLock

HOLD = (
    "import sys, time\n"
    "from infodyn.runlock import RunLock\n"
    "with RunLock(sys.argv[1], command='python -m infodyn task=mrpc'):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"  # hold until the test closes stdin (or kills us)
)


def _holder(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in runlock.RANK_ENV:
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_stops_at_once_naming_the_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _holder(run_dir)
    try:
        with pytest.raises(RunDirLockedError) as info, RunLock(run_dir):
            pytest.fail("two runs held one run dir")
        text = str(info.value)
        for word in (
            str(run_dir),
            f"pid {first.pid}",
            socket.gethostname(),
            "running since",
            "python -m infodyn task=mrpc",
            "Fix",
            "run_dir=",
        ):
            assert word in text, f"{word!r} not in: {text}"
        assert isinstance(info.value, ConfigError)
        assert explain(info.value) == text  # the CLI prints it as one paragraph, exit 2
    finally:
        first.stdin.close()
        assert first.wait(timeout=30) == 0
    assert not (run_dir / ".lock").exists()  # the first run released and removed it
    with RunLock(run_dir) as lock:  # and now the dir is free
        assert lock.held


def test_a_killed_holder_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    first = _holder(run_dir)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert json.loads((run_dir / ".lock").read_text())["pid"] == first.pid  # left behind
    with caplog.at_level(logging.INFO, logger="infodyn"), RunLock(run_dir) as lock:
        assert lock.held
        assert runlock.holder_of(run_dir)["pid"] == os.getpid()
    assert f"pid {first.pid}" in caplog.text and "taking over" in caplog.text


def _contend(run_dir: str, barrier, results) -> None:
    barrier.wait()
    try:
        with RunLock(run_dir):
            results.put("held")
            barrier.wait()  # everyone has tried while this one holds it
    except RunDirLockedError:
        results.put("refused")
        barrier.wait()


def test_exactly_one_of_several_simultaneous_runs_gets_the_dir(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path / "run"), barrier, results))]
    procs += [ctx.Process(target=_contend, args=(str(tmp_path / "run"), barrier, results))
              for _ in range(n - 1)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in range(n))
    assert outcomes == ["held"] + ["refused"] * (n - 1)


def test_release_removes_the_lock_and_folders_left_empty(tmp_path: Path) -> None:
    empty = tmp_path / "a" / "b" / "run"
    with RunLock(empty):
        assert (empty / ".lock").is_file()
    assert not (tmp_path / "a").exists()  # a bad input stopped the job: nothing left
    used = tmp_path / "c" / "run"
    with RunLock(used):
        (used / "results.json").write_text("{}")
    assert sorted(p.name for p in used.iterdir()) == ["results.json"]


def test_release_after_an_error_inside(tmp_path: Path) -> None:
    with pytest.raises(ValueError), RunLock(tmp_path / "run"):
        raise ValueError("the job failed")
    with RunLock(tmp_path / "run") as lock:
        assert lock.held


def test_other_ranks_share_rank_zeros_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    first = _holder(run_dir)
    try:
        monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's DDP launcher sets
        with RunLock(run_dir) as lock:
            assert not lock.held
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(RunDirLockedError):
            RunLock(run_dir).acquire()
    finally:
        first.stdin.close()
        first.wait(timeout=30)


def test_a_run_dir_that_is_a_file_is_explained(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(FileExistsError) as info:
        RunLock(tmp_path / "run").acquire()
    assert "is a file" in explain(info.value)


def test_the_holder_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "finetune").mkdir(parents=True)
    stale = [
        run_dir / ".model.tmp-1234",  # a kill during export (a folder)
        run_dir / "checkpoints" / "finetune" / ".last.ckpt.tmp-99",  # mid-checkpoint
        run_dir / ".results.json.tmp-7",
    ]
    stale[0].mkdir()
    (stale[0] / "model.safetensors").write_bytes(b"half")
    for p in stale[1:]:
        p.write_bytes(b"half")
    (run_dir / "checkpoints" / "finetune" / "last.ckpt").write_bytes(b"kept")
    with RunLock(run_dir):
        assert not any(p.exists() for p in stale)
        assert (run_dir / "checkpoints" / "finetune" / "last.ckpt").is_file()


def test_a_rank_that_does_not_hold_the_lock_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "run" / ".last.ckpt.tmp-1"  # rank 0 may be writing it right now
    live.parent.mkdir()
    live.write_bytes(b"being written")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with RunLock(tmp_path / "run"):
        assert live.exists()


class _Killed(BaseException):
    """Stands for SIGKILL between a writer's temporary and its rename."""


def _writers(root: Path) -> dict[str, Callable[[], object]]:
    """Every writer of the project that goes through a temporary, writing under `root`."""
    from datasets import Dataset

    from infodyn import io
    from infodyn.checkpoints import slim_checkpoint
    from infodyn.data.cache import save_cached
    from infodyn.export import export_model
    from infodyn.finetune_cache import SharedFinetune
    from tiny_models import tiny

    ckpt = root / "checkpoints" / "finetune" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "optimizer_states": [{"x": torch.ones(2)}]}, ckpt)
    (root / "stages").mkdir()
    (root / "stages" / "finetune.json").write_text("{}")
    (root / "model").mkdir()  # an earlier export: replaced through `.model.old.tmp-<pid>`

    def publish() -> None:
        SharedFinetune(root / "shared", "key").publish(root)

    return {
        "results.json / stage records (atomic_write_json)": lambda: io.atomic_write_json(
            root / "results.json", {"a": 1}
        ),
        "config_resolved.yaml (atomic_write)": lambda: io.atomic_write_text(
            root / "config_resolved.yaml", "a: 1\n"
        ),
        "finetune cache fetch (atomic_copy)": lambda: io.atomic_copy(ckpt, root / "copy.ckpt"),
        "slim last.ckpt (checkpoints)": lambda: slim_checkpoint(ckpt),
        "finetune cache publish (atomic_dir)": publish,
        "export (model folder)": lambda: export_model(tiny("bert"), None, root / "model"),
        "tokenized data cache (atomic_dir)": lambda: save_cached(
            root / "cache" / "abc", Dataset.from_dict({"x": [1, 2]})
        ),
    }


def test_every_writers_temporary_is_one_the_next_start_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each writer is 'killed' at its rename; what it left is recreated; the lock clears it."""
    root = tmp_path / "run"
    root.mkdir()
    writers = _writers(root)
    real_replace = os.replace
    left: dict[str, list[Path]] = {}

    for name, write in writers.items():
        seen: list[Path] = []

        def replace(src, dst, seen=seen):
            if Path(src).name.startswith(".") and ".tmp-" in Path(src).name:
                seen.append(Path(src))
                raise _Killed
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(_Killed):
            write()
        monkeypatch.setattr(os, "replace", real_replace)
        assert seen, f"{name}: wrote without a temporary"
        left[name] = seen
    for paths in left.values():  # what a SIGKILL (no `finally`) leaves behind
        for path in paths:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"half")
    stale = [p for paths in left.values() for p in paths]
    with RunLock(root):
        remaining = [p for p in stale if p.exists()]
        remaining += [p for p in root.rglob("*") if ".tmp-" in p.name]  # `.model.old.tmp-*` too
    assert remaining == [], remaining
    assert (root / "checkpoints" / "finetune" / "last.ckpt").is_file()
    assert (root / "stages" / "finetune.json").is_file()


def test_an_unfinished_job_dir_says_whether_it_is_running_killed_or_stopped(tmp_path) -> None:
    from infodyn.runlock import LOCK_NAME, unfinished_state

    def lock(pid, host=None) -> Path:
        job = tmp_path / f"job-{pid}-{host}"
        job.mkdir()
        record = {"pid": pid, "host": host or socket.gethostname(), "since": "t0"}
        (job / LOCK_NAME).write_text(json.dumps(record))
        return job

    running, why = unfinished_state(lock(os.getpid()))
    assert running and why.startswith("running (pid")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    assert unfinished_state(lock(int(dead))) == (
        False,
        f"no results.json; killed while running (pid {dead} on {socket.gethostname()} since "
        "t0): a rerun resumes it",
    )
    running, why = unfinished_state(lock(os.getpid(), host="elsewhere"))
    assert not running and "not known here" in why
    running, why = unfinished_state(tmp_path)  # no lock at all
    assert not running and "crashed or was stopped" in why
