"""ASDT's pulse-width (PW) wave: which teacher the student distils from at each step (Eq. 4).

ASDT (Zhang et al., "Weakly Supervised Semantic Segmentation via Alternate Self-Dual Teaching", IEEE TIP, §3.3)
trains the student from one teacher at a time: ``L_ad = Λ_t(L_d^{ct→s}, L_d^{st→s} | T, τ)``. The controller
``Λ_t`` is a pure function of the optimizer step; it lives with the other schedules in
:mod:`wsss_lightning.schedules` because :class:`~wsss_lightning.callbacks.PWWaveCallback` (a shared callback)
applies it, and is named here for the method's code.
"""

from __future__ import annotations

from typing import Literal

from wsss_lightning.schedules import pw_duty, pw_phase

#: the two teachers of the alternation: the class-teacher (CAM branch) and the seg-teacher (segmentation branch)
Teacher = Literal["class", "seg"]

__all__ = ["Teacher", "pw_duty", "pw_phase"]
