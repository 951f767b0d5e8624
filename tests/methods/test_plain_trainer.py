"""A module trains with a plain Trainer and a user-written LightningDataModule that follows the batch format."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from wsss_lightning.methods import OptimizerConfig, SupervisedModule


class Squares(Dataset):
    """Coloured squares on black; class = colour. Items follow the documented batch format."""

    COLOURS = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def __init__(self, n: int, size: int = 32, eval_mode: bool = False) -> None:
        self.n, self.size, self.eval_mode = n, size, eval_mode

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        cls = 1 + i % 2
        y, x = torch.randint(0, self.size // 2, (2,), generator=g).tolist()
        mask[y : y + self.size // 2, x : x + self.size // 2] = cls
        image = self.COLOURS[mask].permute(2, 0, 1).contiguous()
        item = {"image": image, "mask": mask, "name": f"sq{i}"}
        if self.eval_mode:
            item["size"] = torch.tensor([self.size, self.size])
        return item


class UserDataModule(L.LightningDataModule):
    num_classes = 3

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Squares(32), batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Squares(8, eval_mode=True), batch_size=4)


def test_plain_trainer_with_user_datamodule():
    L.seed_everything(0)
    model = SupervisedModule(arch="unet", encoder="resnet18", num_classes=3, image_mean=(0, 0, 0), image_std=(1, 1, 1),
                             optim=OptimizerConfig(name="adamw", lr=3e-3))  # fmt: skip
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=UserDataModule())
    evaluator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    metrics = evaluator.validate(model, datamodule=UserDataModule(), verbose=False)[0]
    # three trivially separable colours: the module must learn them
    assert metrics["val/miou"] > 0.9
