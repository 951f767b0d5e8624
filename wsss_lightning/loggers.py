"""Lightning's W&B logger, minus the start-up notes about settings the package never asked for."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from typing_extensions import override


class WandbLogger(LightningWandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` with the same arguments; it starts W&B quietly.

    Lightning always hands ``anonymous=None`` to ``wandb.init``, which W&B answers with a note that the
    setting has no effect; it is passed here only when the run sets it. W&B looks for a git repository from
    the run folder before it creates that folder and notes that the "git root" does not exist; the folder is
    created first here.
    """

    @property
    @override
    def experiment(self) -> Any:
        if self._experiment is None:
            if self._wandb_init.get("anonymous") is None:
                self._wandb_init.pop("anonymous", None)
            if self._save_dir:
                os.makedirs(self._save_dir, exist_ok=True)
        return super().experiment
