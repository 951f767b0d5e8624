"""Dot products of queries with rows gathered from a large table, without materialising the gathered rows.

U2PL scores every anchor against ``N`` negatives drawn from the memory bank: ``C * M * N`` = 268,800 rows
of 256 floats for VOC (275 MB). Gathering them all at once and keeping them for backward costs that
memory and, on CPU, a fresh 275 MB allocation per step whose page faults take longer than the gather
itself. :func:`gathered_dot` gathers the rows chunk by chunk into one reused buffer, keeps only the row
indices for backward and gathers again there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["gathered_dot"]


def _chunks(rows: Tensor, chunk_rows: int) -> Iterator[tuple[slice, Tensor]]:
    """Slices of whole queries holding about ``chunk_rows`` gathered rows each, and their row blocks."""
    step = max(1, chunk_rows // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        block = slice(start, start + step)
        yield block, rows[block]


def _gather(table: Tensor, rows: Tensor, normalize: bool, buffer: Tensor | None) -> Tensor:
    """``table[rows]`` as float32 ``(a, N, D)``, unit-norm rows if ``normalize``; reuses ``buffer``."""
    flat = rows.reshape(-1)
    if table.dtype == torch.float32 and buffer is not None:
        keys = torch.index_select(table, 0, flat, out=buffer[: flat.numel()])
    else:
        keys = table.index_select(0, flat).float()
    if normalize:
        keys = keys.div_(keys.norm(dim=1, keepdim=True).clamp_min(1e-8))
    return keys.view(*rows.shape, table.shape[1])


def _buffer(table: Tensor, rows: Tensor, chunk_rows: int) -> Tensor | None:
    if table.dtype != torch.float32:
        return None
    step = max(1, chunk_rows // max(1, rows.shape[1]))
    return table.new_empty(min(step, rows.shape[0]) * rows.shape[1], table.shape[1])


class _GatheredDot(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, queries: Tensor, table: Tensor, rows: Tensor, normalize: bool, chunk_rows: int
    ) -> Tensor:
        out = queries.new_empty(rows.shape)
        buffer = _buffer(table, rows, chunk_rows)
        for block, block_rows in _chunks(rows, chunk_rows):
            keys = _gather(table, block_rows, normalize, buffer)
            out[block] = torch.bmm(keys, queries[block, :, None]).squeeze(-1)
        ctx.save_for_backward(table, rows)
        ctx.normalize, ctx.chunk_rows = normalize, chunk_rows
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        table, rows = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        grad = grad_out.new_empty(rows.shape[0], table.shape[1])
        buffer = _buffer(table, rows, ctx.chunk_rows)
        for block, block_rows in _chunks(rows, ctx.chunk_rows):
            keys = _gather(table, block_rows, ctx.normalize, buffer)
            grad[block] = torch.bmm(grad_out[block, None, :], keys).squeeze(1)
        return grad, None, None, None, None


def gathered_dot(
    queries: Tensor, table: Tensor, rows: Tensor, normalize: bool = False, chunk_rows: int = 16384
) -> Tensor:
    """``out[a, j] = <queries[a], table[rows[a, j]]>``, differentiable in ``queries`` only.

    Equal to ``torch.bmm(table[rows].float(), queries[..., None]).squeeze(-1)`` (with the gathered rows
    scaled to unit norm first when ``normalize``), but the gathered rows never exist in full: they are
    gathered ``chunk_rows`` at a time into one buffer and gathered again in backward, so neither the
    forward nor the saved state grows with ``A * N * D``. ``table`` must not be modified in place between
    forward and backward (autograd checks this).

    Args:
        queries: ``(A, D)`` float32 queries.
        table: ``(R, D)`` rows, any floating dtype (computed in float32).
        rows: ``(A, N)`` int64 row indices into ``table``.
        normalize: scale every gathered row to unit L2 norm (eps 1e-8) before the product.
        chunk_rows: gathered rows held at a time.

    Returns:
        ``(A, N)`` float32.
    """
    if queries.ndim != 2 or table.ndim != 2 or queries.shape[1] != table.shape[1]:
        raise ValueError(
            f"gathered_dot: queries (A, D) and table (R, D) must share D, got {tuple(queries.shape)} and "
            f"{tuple(table.shape)}"
        )
    if rows.ndim != 2 or rows.shape[0] != queries.shape[0]:
        raise ValueError(
            f"gathered_dot: rows must have shape ({queries.shape[0]}, N), got {tuple(rows.shape)}"
        )
    if chunk_rows < 1:
        raise ValueError(f"gathered_dot: chunk_rows must be >= 1, got {chunk_rows}")
    out: Tensor = _GatheredDot.apply(queries.float(), table, rows, normalize, chunk_rows)
    return out
