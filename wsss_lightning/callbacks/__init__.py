"""Callbacks: prediction writing and W&B media (teacher / schedule callbacks arrive with the methods)."""

from wsss_lightning.callbacks.prediction_writer import PredictionWriter
from wsss_lightning.callbacks.seeding import StepSeed
from wsss_lightning.callbacks.wandb_media import WandbSegmentationMedia

__all__ = ["PredictionWriter", "StepSeed", "WandbSegmentationMedia"]
