"""What a job raises, and the exit codes the CLI gives them.

`ConfigError` (and its subclasses of the data, model, layer and pruner homes) means "fix your
input" (CLI exit 2); `TrainingDivergedError` means the loss became NaN/inf (exit 3). What the CLI
prints for any failure is `infodyn.explain.cli_exit`.
"""

from __future__ import annotations

EXIT_USER = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


class ConfigError(ValueError):
    """A bad configuration value; the message names the input and the fix."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the message names the stage, the step and the kept checkpoint."""
