"""Plain ``nn.Module`` networks shared by the methods (no Lightning import): encoders, heads, whole nets, PAR."""

from wsss_lightning.models.daformer import DAFormerNetwork, regularisation_off
from wsss_lightning.models.daformer_head import DAFormerHead
from wsss_lightning.models.deeplab import DeepLabV3PlusRep
from wsss_lightning.models.mit import MiTEncoder, MiTOutput
from wsss_lightning.models.par import PAR
from wsss_lightning.models.resize import padded_forward, resize
from wsss_lightning.models.segformer_head import SegFormerHead
from wsss_lightning.models.segmentation import ARCHITECTURES, build_segmentation_network
from wsss_lightning.models.vit import ViTBackbone, resize_pos_embed
from wsss_lightning.models.weights import load_weights_file

__all__ = [
    "ARCHITECTURES",
    "PAR",
    "DAFormerHead",
    "DAFormerNetwork",
    "DeepLabV3PlusRep",
    "MiTEncoder",
    "MiTOutput",
    "SegFormerHead",
    "ViTBackbone",
    "build_segmentation_network",
    "load_weights_file",
    "padded_forward",
    "regularisation_off",
    "resize",
    "resize_pos_embed",
]
