"""Where a network's output tokens sit on its input image, and resampling between token maps and pixels.

A bilinear resize with ``align_corners=False`` treats token ``c`` of a stride-``s`` map as the centre of the
input cell ``[s*c, s*c + s)``, i.e. at pixel ``s*c + (s - 1) / 2``. That is where a ViT's patch embedding (a
stride-``s`` convolution with kernel ``s`` and no padding) puts it. A pyramid of *padded* convolutions centres
an untrained token ``c`` on pixel ``s*c`` instead: MiT's overlapping patch embeddings (kernel 7, stride 4,
padding 3, then kernel 3, stride 2 or 1, padding 1; Xie et al., "SegFormer", NeurIPS 2021, Sec. 3.1) and a
ResNet's strided convolutions. Where a *trained* network's maps put their content is learned: measured on CAMs
(``benchmarks/cam_offset.py``) it lies between the two for MiT and at the cell centre for a ResNet-18, so the
methods keep their released resize by default and offer these positions as an option.

:class:`TokenGrid` states where the tokens are; :func:`tokens_to_pixels` and :func:`pixels_to_tokens` resample
by those positions (``grid=None``: the cell-centre resize above). Both are one ``grid_sample`` over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.models.resize import resize

__all__ = ["TokenGrid", "pixels_to_tokens", "sample_grid", "tokens_to_pixels"]


@dataclass(frozen=True)
class TokenGrid:
    """Token ``c`` of a map sits at input pixel ``origin + stride * c`` (pixel centres at integers), per axis.

    Attributes:
        stride: input pixels per token.
        origin: input-pixel position of token 0 (``(stride - 1) / 2``: cell centres; 0: padded convolutions).
    """

    stride: float
    origin: float = 0.0

    def __post_init__(self) -> None:
        if self.stride <= 0:
            raise ValueError(f"TokenGrid: stride must be > 0, got {self.stride}")

    @classmethod
    def cell_centres(cls, stride: float) -> TokenGrid:
        """Tokens at the centres of their ``stride``-pixel cells (a ViT patch embedding)."""
        return cls(stride, (stride - 1) / 2)

    def token_positions(self, pixels: int, input_pixels: int, device: torch.device | None = None) -> Tensor:
        """Token coordinate of each of ``pixels`` image pixels, the network having seen ``input_pixels``."""
        q = (torch.arange(pixels, dtype=torch.float64, device=device) + 0.5) * (input_pixels / pixels) - 0.5
        return (q - self.origin) / self.stride

    def pixel_positions(
        self, tokens: int, pixels: int, input_pixels: int, device: torch.device | None = None
    ) -> Tensor:
        """Image-pixel coordinate of each of ``tokens`` tokens on an image of ``pixels`` pixels."""
        q = self.origin + self.stride * torch.arange(tokens, dtype=torch.float64, device=device)
        return (q + 0.5) * (pixels / input_pixels) - 0.5


def sample_grid(maps: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Bilinear samples of ``maps`` ``(B, C, h, w)`` at every (row, col) pair: ``(B, C, len(rows), len(cols))``.

    ``rows`` / ``cols`` are coordinates in source pixels (centres at integers), on the maps' device; positions
    outside the map take the nearest border value, as ``F.interpolate`` does. Sampled in float32 with autocast
    off (a bf16 grid would round the positions by up to a pixel), returned in the maps' dtype.
    """
    h, w = maps.shape[-2:]
    y = (2 * rows + 1) / h - 1
    x = (2 * cols + 1) / w - 1
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1)
    grid = grid.to(device=maps.device, dtype=torch.float32)[None].expand(maps.shape[0], -1, -1, -1)
    with torch.autocast(maps.device.type, enabled=False):
        out = F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(maps.dtype)


def _pair(name: str, size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise ValueError(f"{name}: expected two positive sides (H, W), got {tuple(size)}")
    return int(size[0]), int(size[1])


def tokens_to_pixels(
    maps: Tensor, size: Sequence[int], input_size: Sequence[int], grid: TokenGrid | None
) -> Tensor:
    """Token maps ``(B, C, h, w)`` of a network run on an image resized to ``input_size``, at ``size`` pixels.

    ``grid=None`` is the cell-centre resize (``F.interpolate``, bilinear, ``align_corners=False``).
    """
    out_h, out_w = _pair("tokens_to_pixels", size)
    if grid is None:
        return resize(maps, (out_h, out_w))
    in_h, in_w = _pair("tokens_to_pixels", input_size)
    rows = grid.token_positions(out_h, in_h, maps.device)
    return sample_grid(maps, rows, grid.token_positions(out_w, in_w, maps.device))


def pixels_to_tokens(
    maps: Tensor, tokens: Sequence[int], input_size: Sequence[int], grid: TokenGrid | None
) -> Tensor:
    """Pixel maps ``(B, C, H, W)`` sampled at the ``tokens`` ``(h, w)`` of a network run at ``input_size``.

    ``grid=None`` is the cell-centre resize (``F.interpolate``, bilinear, ``align_corners=False``).
    """
    th, tw = _pair("pixels_to_tokens", tokens)
    if grid is None:
        return resize(maps, (th, tw))
    in_h, in_w = _pair("pixels_to_tokens", input_size)
    h, w = maps.shape[-2:]
    rows = grid.pixel_positions(th, h, in_h, maps.device)
    return sample_grid(maps, rows, grid.pixel_positions(tw, w, in_w, maps.device))
