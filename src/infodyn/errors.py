"""What a job raises: bad inputs (`user_errors()`, CLI exit 2) and divergence (exit 3)."""

from __future__ import annotations


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
