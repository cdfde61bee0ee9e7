"""Reading a raised exception: its chain of causes, its frames, the file it was about.

The helpers `infodyn.explain` and `infodyn.model_folder` use to find, in a traceback, the input an
error is about (a path held by the raising frames, the `from_pretrained` argument).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import FrameType


def chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen and len(seen) < 16:
        seen.add(id(e))
        yield e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def paragraph(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def short(err: BaseException, limit: int = 240) -> str:
    """The first sentence-ish of an exception's message, on one line."""
    text = paragraph(str(err)).rstrip(".") or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def frames(err: BaseException) -> list[FrameType]:
    """The traceback's frames, innermost first."""
    out = []
    tb = err.__traceback__
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out[::-1]


def frame(err: BaseException, func: str, file_part: str = "") -> FrameType | None:
    for f in frames(err):
        if f.f_code.co_name == func and file_part in f.f_code.co_filename.replace(os.sep, "/"):
            return f
    return None


def in_package(err: BaseException, *packages: str) -> bool:
    return any(
        f"/{p}/" in f.f_code.co_filename.replace(os.sep, "/")
        for f in frames(err)
        for p in packages
    )


PATH_LOCALS = (
    "filepath", "checkpoint_path", "path", "f", "fp", "fh", "file", "filename", "dataset_path",
    "dst", "out",
)  # fmt: skip


def path_of(err: BaseException) -> str | None:
    """The file an error is about: its `filename`, else a path held by the raising frames."""
    if getattr(err, "filename", None):
        return str(err.filename)
    for f in frames(err):
        for name in PATH_LOCALS:
            value = f.f_locals.get(name)
            if not isinstance(value, str | os.PathLike) and isinstance(
                getattr(value, "name", None), str
            ):  # an open file
                value = value.name
            if isinstance(value, str | os.PathLike) and os.sep in str(value):
                return str(value)
    return None


def disk_free(path: str | None) -> str:
    probe = Path(path or ".").absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.0f} MiB" if free < 2**30 else f"{free / 2**30:.1f} GiB"


def file_on_path(path: str) -> Path | None:
    """The first component of `path` that exists and is not a folder."""
    p = Path(path).absolute()
    for part in [*reversed(p.parents), p]:
        if part.exists() and not part.is_dir():
            return part
    return None
