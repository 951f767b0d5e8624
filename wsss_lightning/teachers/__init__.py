"""Teacher networks shared by the methods (mean teachers now; switching teachers build on them)."""

from wsss_lightning.teachers.ema import EMATeacher

__all__ = ["EMATeacher"]
