"""The one test switch in the production path: `INFODYN_TEST_KILL_AT` SIGKILLs the job at a point.

`<stage>:<epoch>:<batch>` kills a training stage before that batch; `after:<stage>` kills right
after a stage's record is written; `export` kills in the middle of the model export. Unset (the
default), nothing here does anything. The kill/resume tests use it to prove that a killed job
resumes to exactly what an uninterrupted one writes.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "INFODYN_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process if the switch names `name` (`after:<stage>`, `export`)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_callbacks(stage: str) -> list:
    """A Lightning callback killing the job at `<stage>:<epoch>:<batch>`, if the switch says so."""
    parts = os.environ.get(KILL_ENV, "").split(":")
    if len(parts) != 3 or parts[0] != stage:
        return []
    import pytorch_lightning as pl

    epoch, batch = int(parts[1]), int(parts[2])

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, b, batch_idx) -> None:
            if trainer.current_epoch == epoch and batch_idx == batch:
                os.kill(os.getpid(), signal.SIGKILL)

    return [Kill()]
