"""Plain ``nn.Module`` networks (no Lightning import): encoders, heads and whole segmentation nets."""

from wsss_lightning.models.deeplab import DeepLabV3PlusRep
from wsss_lightning.models.dupl import DuPLSubNet, LargeFOVHead, SubNetOutput
from wsss_lightning.models.padding import padded_forward
from wsss_lightning.models.par import PAR
from wsss_lightning.models.segmentation import ARCHITECTURES, build_segmentation_network
from wsss_lightning.models.vit import ViTBackbone, resize_pos_embed
from wsss_lightning.models.weights import load_weights_file

__all__ = [
    "ARCHITECTURES",
    "PAR",
    "DeepLabV3PlusRep",
    "DuPLSubNet",
    "LargeFOVHead",
    "SubNetOutput",
    "ViTBackbone",
    "build_segmentation_network",
    "load_weights_file",
    "padded_forward",
    "resize_pos_embed",
]
