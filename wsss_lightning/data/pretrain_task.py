"""Arguments of the generated classification task that pretrains encoders (torch-free, for ``wsss-data``).

The training itself is :func:`wsss_lightning.models.pretrain.pretrain_encoder`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["NUM_OBJECT_CLASSES", "SEED_OFFSET", "PretrainConfig"]

#: generator seeds of the classification set start here (the benchmark sets use small seeds)
SEED_OFFSET = 10_000
#: the task's labels: the object classes of the VOC layout (background is not a tag)
NUM_OBJECT_CLASSES = 20


@dataclass(frozen=True)
class PretrainConfig:
    """What is pretrained, on what, for how long; every field is part of the cached file's name.

    Attributes:
        encoder: timm model name (a CNN with a ``features_only`` form, e.g. ``resnet18``) or a MiT variant
            (``mit_b0`` … ``mit_b5``, the SegFormer encoder the AFA / U2PL+ / DAFormer configs use).
        architecture: JSON object of architecture overrides, ``""`` for none: MiT's ``model_kwargs`` (e.g.
            ``{"embed_dims": [32, 64, 128, 192], "depths": [1, 2, 2, 2], "num_heads": [1, 2, 4, 4]}``, the
            small MiT of the synthetic configs) or keyword arguments of ``timm.create_model``. The weights
            only load into an encoder built with the same overrides.
        seed: seed of the generated images (offset by :data:`SEED_OFFSET`) and of the training.
        num_images: generated training images (square, ``image_size`` pixels).
        image_size: side of the generated images.
        crop: side of the random training crops.
        steps: optimizer steps (AdamW, linear decay to 0).
        batch_size: images per step.
        lr: peak learning rate.
    """

    encoder: str = "resnet18"
    architecture: str = ""
    seed: int = 0
    num_images: int = 3000
    image_size: int = 96
    crop: int = 64
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3

    def __post_init__(self) -> None:
        for name in ("num_images", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain {name} must be >= 1, got {getattr(self, name)}")
        if not 16 <= self.crop <= self.image_size:
            raise ValueError(f"pretrain crop must be in 16..image_size ({self.image_size}), got {self.crop}")
        if not self.lr > 0:
            raise ValueError(f"pretrain lr must be > 0, got {self.lr}")
        self.overrides()  # fails early on a malformed architecture

    def overrides(self) -> dict[str, Any]:
        """The architecture overrides as keyword arguments.

        Raises:
            ValueError: ``architecture`` is neither empty nor a JSON object.
        """
        if not self.architecture:
            return {}
        try:
            value = json.loads(self.architecture)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"pretrain architecture: not valid JSON ({exc}): {self.architecture!r}"
            ) from None
        if not isinstance(value, dict):
            raise ValueError(  # noqa: TRY004 - a bad option value, reported as the other fields' are
                f"pretrain architecture: expected a JSON object, got {self.architecture!r}"
            )
        return value

    @property
    def name(self) -> str:
        """File stem: every argument (the architecture overrides as a short hash of their canonical JSON)."""
        arch = ""
        if self.overrides():
            canonical = json.dumps(self.overrides(), sort_keys=True, separators=(",", ":"))
            arch = "_arch" + hashlib.sha1(canonical.encode()).hexdigest()[:8]
        return (
            f"{self.encoder}{arch}_seed{self.seed}_n{self.num_images}_px{self.image_size}_crop{self.crop}"
            f"_steps{self.steps}_b{self.batch_size}_lr{self.lr:g}"
        )
