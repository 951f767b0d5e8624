"""Loading pretrained weights from a local file (hubs are not always reachable)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

# Prefixes that common checkpoint formats put in front of parameter names.
_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "state_dict.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise TypeError(
            f"{path}: expected a state dict (or a checkpoint holding one), got {type(obj).__name__}"
        )
    return obj


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def load_weights_file(module: nn.Module, path: str | Path, min_fraction: float = 0.5) -> list[str]:
    """Load a local weights file (``.pth``/``.pt``/``.bin``/``.safetensors``) into ``module``.

    Names are matched after stripping wrapper prefixes (``module.``, ``encoder.``, ...); tensors whose shape
    differs (e.g. a classifier for another number of classes) are left out.

    Args:
        module: the network (usually an encoder) to load into.
        path: the weights file.
        min_fraction: fewer matched parameters than this fraction of ``module``'s is an error, because it
            almost always means the file belongs to another architecture.

    Returns:
        The names of ``module``'s parameters that were not found in the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file matches too few of the module's parameters.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    loaded = {_strip(k): v for k, v in _read_state_dict(path).items()}
    own = module.state_dict()
    matched = {k: v for k, v in loaded.items() if k in own and own[k].shape == v.shape}
    if len(matched) < min_fraction * len(own):
        example = ", ".join(list(own)[:3])
        raise ValueError(
            f"{path}: only {len(matched)} of {len(own)} tensors match the network "
            f"(expected names like {example}); is it the weights file of this architecture?"
        )
    module.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """:func:`load_weights_file` into a segmentation encoder, warning about the tensors the file lacks.

    A partial match usually means a different stem (e.g. torchvision weights into a deep-stem ResNet); BN's
    ``num_batches_tracked`` counters are not reported.
    """
    missing = [n for n in load_weights_file(encoder, path) if not n.endswith("num_batches_tracked")]
    if missing:
        warnings.warn(
            f"encoder_weights {path}: {len(missing)} encoder tensors are not in the file and keep their "
            f"initial values: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
            stacklevel=3,
        )
