"""What a job raises, and what the CLI tells the user about any failure.

`ConfigError` and the other `user_errors()` mean "fix your input" (CLI exit 2);
`TrainingDivergedError` means the loss became NaN/inf (exit 3). `cli_exit(err)` prints the
one-paragraph message `infodyn.explain.explain(err)` gives for a known failure and returns the
exit code; an unknown error is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

log = logging.getLogger("infodyn")

EXIT_USER = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


class ConfigError(ValueError):
    """A bad configuration value; the message names the input and the fix."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the message names the stage, the step and the kept checkpoint."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input" (one paragraph, no traceback on the CLI)."""
    from infodyn.data import DataConfigError
    from infodyn.layers import LayerListNotFound
    from infodyn.models import ModelConfigError
    from infodyn.pruners.base import PrunerConfigError

    return (ConfigError, DataConfigError, ModelConfigError, PrunerConfigError, LayerListNotFound)


# -- the CLI -------------------------------------------------------------------------------------
def cli_exit(
    err: BaseException, log_path: str | os.PathLike | None = None, stream: TextIO | None = None
) -> int | None:
    """Tell the user about `err` on stderr; the exit code, or None to re-raise `err` unchanged.

    A known failure prints one `error: ...` paragraph and returns 2 (input) or 3 (diverged); an
    unknown one prints one line naming the log and returns None, so that its traceback (a bug)
    stays visible. Either way the full traceback goes to the job's log file (`log_path`, by
    default Hydra's `<output dir>/<job>.log`, found from the logging handlers).
    """
    stream = stream or sys.stderr
    if isinstance(err, SystemExit | GeneratorExit):
        return None
    log_path = log_path or job_log_path()
    if isinstance(err, KeyboardInterrupt):
        print(
            "error: interrupted. Rerun the same command: the job resumes from its last "
            "finished epoch or stage.",
            file=stream,
        )
        return EXIT_INTERRUPTED
    from infodyn.explain import explain

    try:
        text = explain(err)
    except Exception:  # noqa: BLE001 - explaining must never hide the error it explains
        text = None
    _traceback_to_log_files(err, text or "unexpected error")
    if text is None:
        where = f"the full log is {log_path}" if log_path else "there is no log file"
        print(
            f"error: unexpected {type(err).__name__} (a bug, or a failure infodyn does not "
            f"know yet; its traceback follows); {where}. Please report it with that log.",
            file=stream,
            flush=True,
        )
        return None
    print(f"error: {text}", file=stream, flush=True)
    return EXIT_DIVERGED if isinstance(err, TrainingDivergedError) else EXIT_USER


def job_log_path() -> Path | None:
    """The file the root logger writes to (Hydra's job log), or None outside Hydra."""
    for lg in (logging.getLogger(), log):
        for handler in lg.handlers:
            if isinstance(handler, logging.FileHandler) and handler.baseFilename != os.devnull:
                return Path(handler.baseFilename)
    return None


def _traceback_to_log_files(err: BaseException, text: str) -> None:
    """The traceback into the log files only: the console shows the paragraph (or Hydra's)."""
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, text, (), (type(err), err, err.__traceback__)
    )
    for lg in (logging.getLogger(), log):
        for handler in lg.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
