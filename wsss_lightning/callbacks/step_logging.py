"""When a training step's values reach the logger."""

from __future__ import annotations

import lightning as L


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this training step's on-step values to the loggers.

    True every ``log_every_n_steps`` optimizer steps (and when the run stops), as Lightning's logger connector
    decides it; valid from ``on_train_batch_start`` to the end of the step. Logging a Python number makes
    Lightning copy it to the device and a progress-bar value makes it read the tensor back, so per-step
    values that are not tensors, and progress-bar values, are logged on these steps only: the loggers see
    the same values and the other steps stay free of host-device transfers.
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))
