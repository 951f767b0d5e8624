"""Image-level tags in a training batch, for the methods supervised by them (DuPL, AFA, U2PL+ WS)."""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor

from wsss_lightning.pseudo_labels.cam import present_classes


class ImageTagsMixin:
    """Reads a ``TagsView`` batch: the foreground tags and each image's present classes.

    Listed before :class:`~wsss_lightning.methods.base.SegmentationMethod` in a method's bases. The present
    classes size the CAM tensors, so they are read from the tags in ``on_before_batch_transfer``, on the host,
    before the batch moves to the device (``batch["classes"]``): the training step then reads nothing back.
    """

    def _fg_tags(self, batch: dict[str, Any]) -> Tensor:
        """``(B, C - 1)`` float multi-hot tags without the background column."""
        if "tags" not in batch:
            raise KeyError(
                f"{type(self).__name__} needs image-level tags: use the datamodule's TagsView (--data.view "
                "TagsView, or view: {class_path: wsss_lightning.data.TagsView} in a config)"
            )
        tags: Tensor = batch["tags"]
        return tags[:, 1:].float()  # drop the background column

    def _classes(self, batch: dict[str, Any]) -> Tensor:
        """Each image's present foreground classes (``present_classes``), listed before the batch moved."""
        if "classes" in batch:
            return cast(Tensor, batch["classes"])
        return present_classes(self._fg_tags(batch))  # a batch that did not pass the transfer hook

    def _mask_target(self, batch: dict[str, Any], option: str) -> Tensor:
        """The batch's ground-truth masks as the segmentation target.

        A tags method's full-mask ceiling: the same network and schedule trained on masks. ``option`` names the
        setting that asked for them.
        """
        if "mask" not in batch:
            raise KeyError(
                f"{type(self).__name__}: {option} = 'mask' trains on the ground-truth masks, but the training "
                "batches hold none: use TagsView with diagnostic_masks: true"
            )
        return cast(Tensor, batch["mask"]).long()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Add ``batch["classes"]`` (read on the host, before the batch moves to the device)."""
        if isinstance(batch, dict) and "tags" in batch:
            batch["classes"] = present_classes(self._fg_tags(batch))
        return batch
