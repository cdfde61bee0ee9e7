"""One run per run dir: an exclusive lock held for the whole job.

`RunLock(run_dir)` takes `fcntl.flock` on `<run_dir>/.lock`, which records who holds it (pid,
host, start time, command). A second job on the same dir stops at once with `RunDirLockedError`
naming the first. The kernel drops a flock when its holder dies, so a dir whose last job was
killed is simply taken over. Processes that Lightning launches for the other ranks of a DDP job
re-run the command; they share rank 0's lock instead of taking their own.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from pathlib import Path
from types import TracebackType

from infodyn.errors import ConfigError
from infodyn.io import remove_stale_temporaries

log = logging.getLogger("infodyn")

LOCK_NAME = ".lock"
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK")  # set for the processes a launcher starts


class RunDirLockedError(ConfigError):
    """Another live job holds the run dir; the message names it and the fix."""


class RunLock:
    """Context manager: hold `<run_dir>/.lock` exclusively (see module docstring).

    With `clean`, the holder then removes the temporaries a killed writer left in the run dir
    (`io.remove_stale_temporaries`): with the lock held, none of them can be live. Folders it
    had to create are removed again on exit when the job left them empty (a job stopped by a
    bad input leaves nothing behind).
    """

    def __init__(
        self, run_dir: str | os.PathLike, command: str | None = None, clean: bool = True
    ) -> None:
        self.run_dir = Path(run_dir)
        self.clean = clean
        self.path = self.run_dir / LOCK_NAME
        self.command = command if command is not None else shlex.join(sys.argv)
        self._fd: int | None = None
        self._created: list[Path] = []

    # -- public
    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise `RunDirLockedError` at once if a live job holds it."""
        if self._fd is not None or _launched_rank():
            return
        self._created = _missing_dirs(self.run_dir)
        try:
            fd = self._lock()
        except BaseException:
            self._remove_created()  # a refused or failed start leaves no folder behind
            raise
        previous = _read_holder(fd)
        if previous and previous.get("pid") != os.getpid():
            log.info(
                "run dir %s: taking over the lock of pid %s on %s (no longer running)",
                self.run_dir,
                previous.get("pid"),
                previous.get("host"),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        if self.clean:  # only the holder may: another rank's temporaries may be live
            remove_stale_temporaries(self.run_dir)

    def release(self) -> None:
        """Drop the lock and its file; remove the folders `acquire` created if still empty."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: nobody locks a doomed file
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    # -- internals
    def _lock(self) -> int:
        """The descriptor of `.lock`, flocked; `RunDirLockedError` if a live job holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirLockedError(self._busy_message()) from None
            # the holder before us may have unlinked the file between our open and flock: then
            # we locked an orphan, and must lock the file that is there now
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _busy_message(self) -> str:
        holder = holder_of(self.run_dir) or {}
        who = (
            f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, running since "
            f"{holder.get('since', '?')} ({holder.get('command', 'command unknown')})"
        )
        return (
            f"run dir {self.run_dir} is in use by another run: {who}. Two runs on one dir "
            "would overwrite each other's checkpoints. Fix: wait for that run to finish (or "
            f"stop it: kill {holder.get('pid', '<pid>')} on {holder.get('host', 'its host')}), "
            "or give this run its own dir with run_dir=<folder> (or hydra.run.dir=<folder>)."
        )

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:  # not empty (the job wrote there) or already gone
                break
        self._created = []


def holder_of(run_dir: str | os.PathLike) -> dict | None:
    """What `<run_dir>/.lock` says about its holder (pid, host, since, command), if readable."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def unfinished_state(run_dir: str | os.PathLike) -> tuple[bool, str]:
    """`(running, why)` for a job dir without a finished record, without touching its lock.

    Read from `.lock` only (taking even a shared lock could refuse a job starting right then):
    present with a live pid on this host -> running; with a dead pid -> killed (a rerun resumes);
    on another host -> unknown from here; absent -> the job stopped before or after holding it.
    """
    holder = holder_of(run_dir)
    if holder is None:
        return False, "no results.json and no lock: the job crashed or was stopped"
    pid, host, since = (holder.get(k, "?") for k in ("pid", "host", "since"))
    who = f"pid {pid} on {host} since {since}"
    if host != socket.gethostname():
        return False, f"no results.json; its lock names {who}: running or killed, not known here"
    if not isinstance(pid, int) or pid <= 0:
        return False, f"no results.json; its lock names {who}, which is not a process id"
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False, f"no results.json; killed while running ({who}): a rerun resumes it"
    except PermissionError:  # alive, another user's
        pass
    return True, f"running ({who})"


def _read_holder(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _launched_rank() -> bool:
    """True in a process a launcher started for a rank other than 0 (it re-runs the command)."""
    for name in RANK_ENV:
        try:
            if int(os.environ.get(name, "0")) != 0:
                return True
        except ValueError:
            continue
    return False


def _missing_dirs(path: Path) -> list[Path]:
    """The folders `path.mkdir(parents=True)` would create, outermost first."""
    missing = []
    p = path.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing[::-1]
