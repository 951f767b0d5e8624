"""A frozen network: no gradients, always in eval mode (e.g. Seminar's ancillary student)."""

from __future__ import annotations

from typing import Any

from torch import nn
from typing_extensions import Self, override


class FrozenNetwork(nn.Module):
    """Wrap ``net`` so that it is never trained: ``requires_grad_(False)`` and eval mode for good.

    As a submodule its weights are in the checkpoint and follow ``.to(device)``; without trainable parameters
    no optimizer built from trainable parameters sees it and DDP never registers it. ``train()`` (which
    Lightning calls on the whole LightningModule) leaves it in eval mode: dropout off, BatchNorm on its running
    statistics.

    Args:
        net: the network to freeze (taken as is, not copied).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.module = net
        self.module.requires_grad_(False)
        self.module.eval()
        self.training = False

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the network (call under ``torch.no_grad()``)."""
        return self.module(*args, **kwargs)

    @override
    def train(self, mode: bool = True) -> Self:
        """Stay in eval mode whatever ``mode`` says."""
        self.training = False
        self.module.eval()
        return self
