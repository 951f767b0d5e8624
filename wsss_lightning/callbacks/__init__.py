"""Callbacks: teachers, schedules, seeding, last.ckpt cadence, prediction writing, W&B media and the progress bar."""

from wsss_lightning.callbacks.checkpointing import LastCheckpoint
from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.callbacks.prediction_writer import PredictionWriter
from wsss_lightning.callbacks.progress import RunProgressBar
from wsss_lightning.callbacks.pw_wave import PWWaveCallback
from wsss_lightning.callbacks.schedule import ScheduleCallback
from wsss_lightning.callbacks.seeding import StepSeed
from wsss_lightning.callbacks.wandb_media import WandbSegmentationMedia

__all__ = [
    "EMATeacherCallback",
    "LastCheckpoint",
    "PWWaveCallback",
    "PredictionWriter",
    "RunProgressBar",
    "ScheduleCallback",
    "StepSeed",
    "WandbSegmentationMedia",
]
