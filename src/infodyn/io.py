"""Writing files so that a killed process never leaves half of one: the one home for it.

Every writer goes to a temporary sibling (`.<name>.tmp-<host>-<pid>`) and renames it over the
target; `remove_stale_temporaries` clears what a killed writer left in a folder only one job uses
(a locked run dir), `remove_orphaned_temporaries` what a dead writer left in a shared one (the
tokenized-data cache).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("infodyn")

TMP_MARK = ".tmp-"  # every temporary this module makes has it in its name


def _host() -> str:
    return socket.gethostname().split(".")[0]


def _writer() -> str:
    return f"{_host()}-{os.getpid()}"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{_writer()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename the temporary over `path` (a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """JSON with NaN/inf refused (use `finite` first): strict readers choke on them."""
    text = json.dumps(data, indent=2, allow_nan=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, link: bool = False) -> Path:
    """`src` at `dst`, whole or not at all. `link=True` shares the file (a hard link) where the
    file system allows: only for files that every writer replaces, never edits in place."""

    def place(tmp: Path) -> None:
        if link:
            with contextlib.suppress(OSError):  # another device, or no links: copy instead
                os.link(src, tmp)
                return
        shutil.copy2(src, tmp)

    return atomic_write(dst, place)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces `path` as a whole."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_MARK}{_writer()}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old{TMP_MARK}{_writer()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove every temporary under `folder` (one only this job writes to); returns what went."""
    return _remove_temporaries(Path(folder), recursive=True, dead=lambda p: True)


def remove_orphaned_temporaries(
    folder: str | os.PathLike, max_age_s: float = 86400.0
) -> list[Path]:
    """In a folder several jobs write to, remove the temporaries whose writer is dead.

    A temporary of this host whose pid is gone is removed at once; one of another host (a
    cluster's shared disk, where its pid means nothing here) only when older than `max_age_s`.
    """
    mine = f"{_host()}-"

    def dead(p: Path) -> bool:
        writer = p.name.split(TMP_MARK, 1)[1]
        pid = writer.removeprefix(mine).split("-")[0] if writer.startswith(mine) else ""
        if pid.isdigit():
            return not _alive(int(pid))
        return time.time() - p.lstat().st_mtime > max_age_s

    return _remove_temporaries(Path(folder), recursive=False, dead=dead)


def _remove_temporaries(root: Path, recursive: bool, dead: Callable[[Path], bool]) -> list[Path]:
    if not root.is_dir():
        return []
    found = root.rglob(f".*{TMP_MARK}*") if recursive else root.glob(f".*{TMP_MARK}*")
    gone = []
    for p in sorted(found):
        if not p.exists() or not dead(p):  # `not exists`: inside a folder removed just before
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    if gone:
        log.info("removed %d temporary file(s) that killed writers left in %s", len(gone), root)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _json_default(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object, or None if absent. A corrupt file (or one holding another JSON value) is
    reported by name and treated as absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        log.warning("%s is corrupt or truncated (%s); it is ignored.", path, err)
        return None
    if not isinstance(data, dict):  # every record infodyn writes is an object
        log.warning("%s holds a JSON %s, not a record; it is ignored.", path, type(data).__name__)
        return None
    return data


def finite(value: Any) -> Any:
    """NaN/inf -> None recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
