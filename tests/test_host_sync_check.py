"""The method contract's host-read detector catches reads wherever a training step makes them."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import HostSyncCheck


class _Reads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        float(grad.sum())  # a host read in the backward pass
        return grad


class Tiny(L.LightningModule):
    def __init__(self, read: str | None = None, manual: bool = False) -> None:
        super().__init__()
        self.read, self.layer = read, nn.Linear(3, 1)
        self.automatic_optimization = not manual

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor | None:
        out = self.layer(batch[0])
        if self.read == "backward":
            out = _Reads.apply(out)
        loss = out.square().mean()
        if self.read == "item":
            loss.item()
        if self.read == "nonzero":
            (batch[0] > 0).nonzero()
        if self.read == "mask":
            batch[0][batch[0] > 0].sum()
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _fit(module: L.LightningModule) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4)
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[HostSyncCheck()], accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, data)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
@pytest.mark.parametrize("read", ["item", "nonzero", "mask", "backward"])
def test_reads_in_the_step_fail_the_fit(read: str, manual: bool) -> None:
    with pytest.raises(AssertionError, match="host synchronisation"):
        _fit(Tiny(read, manual))


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_a_step_without_reads_passes_and_the_optimizer_is_let_through(manual: bool) -> None:
    module = Tiny(None, manual)
    _fit(module)
    assert "optimizer_step" not in vars(module)  # the hook is restored
