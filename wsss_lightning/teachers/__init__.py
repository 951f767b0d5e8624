"""Teacher networks shared by the methods (mean teachers now; switching teachers build on them)."""

from wsss_lightning.teachers.ema import EMATeacher

__all__ = ["EMATeacher"]

import warnings as _warnings

# Frozen teachers stay in eval mode on purpose; Lightning's generic warning about eval-mode modules at the
# start of fit would fire on every run of a teacher-student method.
_warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
