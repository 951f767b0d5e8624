"""Plain ``nn.Module`` networks (no Lightning import): encoders, heads and whole segmentation nets."""

from wsss_lightning.models.deeplab import DeepLabV3PlusRep
from wsss_lightning.models.segmentation import ARCHITECTURES, build_segmentation_network
from wsss_lightning.models.weights import load_weights_file

__all__ = ["ARCHITECTURES", "DeepLabV3PlusRep", "build_segmentation_network", "load_weights_file"]
