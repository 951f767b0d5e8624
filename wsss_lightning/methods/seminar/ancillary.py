"""Read the ancillary student's weights from a finished Seminar stage's checkpoint (§3.2, Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

#: the option that names the file, as users spell it on the command line
FIELD = "model.init_args.ancillary_checkpoint"


def ancillary_student_state(path: str | Path, method: str, num_classes: int) -> dict[str, Tensor]:
    """The ``student.*`` weights (prefix removed) of a checkpoint written by ``method``.

    Args:
        path: Lightning checkpoint of the previous stage (its ``last.ckpt`` or a best checkpoint).
        method: qualified class name the checkpoint must come from (``wsss_lightning...SeminarModule``).
        num_classes: classes of the current run; the checkpoint's must match.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a checkpoint, written by another method, or for another number of classes; every message
            names ``model.init_args.ancillary_checkpoint`` and the file.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{FIELD}: {file} does not exist (expected the checkpoint of the ancillary stage)"
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoint files
        raise ValueError(f"{FIELD}: {file} is not a readable Lightning checkpoint ({err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{FIELD}: {file} is not a Lightning checkpoint (no 'state_dict')")
    writer = checkpoint.get("method")
    if writer != method:
        raise ValueError(
            f"{FIELD}: {file} was written by {writer or 'an unknown module'}; expected a checkpoint of {method} "
            "(the ancillary stage of Seminar Learning)"
        )
    found = checkpoint.get("hyper_parameters", {}).get("num_classes")
    if found != num_classes:
        raise ValueError(f"{FIELD}: {file} has {found} classes but this run has {num_classes}")
    prefix = "student."
    return {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
