"""Teacher networks shared by the methods: mean teachers and frozen networks."""

from wsss_lightning.teachers.ema import EMATeacher
from wsss_lightning.teachers.frozen import FrozenNetwork

__all__ = ["EMATeacher", "FrozenNetwork"]
