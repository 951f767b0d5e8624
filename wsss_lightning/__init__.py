"""wsss-lightning: label-efficient semantic segmentation methods for PyTorch Lightning."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
