"""The default progress bar: Lightning's rich bar, without a meaningless last epoch on step-bounded runs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class RunProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training description names the last epoch only when there is one.

    A run bounded by ``max_steps`` has ``trainer.max_epochs == -1`` (no epoch limit), which Lightning's bar
    shows as ``Epoch 0/-2``; here it reads ``Epoch 0`` and the bar's own step counter shows the progress.
    Takes the same arguments as ``RichProgressBar``.
    """

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        # pad like the parent: the validation bar's longer description otherwise makes the line flicker
        return f"{description:{len(self.validation_description)}}"
