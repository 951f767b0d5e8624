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

from wsss_lightning.methods.u2pl.scratch import ScratchBuffers

__all__ = ["gathered_dot"]


def _chunked_gathers(
    table: Tensor, rows: Tensor, normalize: bool, chunk_rows: int, scratch: ScratchBuffers | None
) -> Iterator[tuple[slice, Tensor]]:
    """``(block, table[rows[block]])`` for consecutive blocks of whole queries of about ``chunk_rows`` rows.

    The gathered rows are float32 ``(a, N, D)``, unit-norm if ``normalize``; a float32 table is gathered
    into one buffer reused by every block (and, with ``scratch``, by every call), so each yielded tensor is
    only valid until the next one.
    """
    step = max(1, chunk_rows // max(1, rows.shape[1]))
    buffer = None
    if table.dtype == torch.float32:
        shape = (min(step, rows.shape[0]) * rows.shape[1], table.shape[1])
        if scratch is None:
            buffer = table.new_empty(shape)
        else:
            buffer = scratch.get("gathered_dot", shape, table.dtype, table.device)
    for start in range(0, rows.shape[0], step):
        block = slice(start, start + step)
        flat = rows[block].reshape(-1)
        if buffer is not None:
            keys = torch.index_select(table, 0, flat, out=buffer[: flat.numel()])
        else:
            keys = table.index_select(0, flat).float()
        if normalize:
            keys = keys.div_(keys.norm(dim=1, keepdim=True).clamp_min(1e-8))
        yield block, keys.view(-1, rows.shape[1], table.shape[1])


class _GatheredDot(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        queries: Tensor,
        table: Tensor,
        rows: Tensor,
        normalize: bool,
        chunk_rows: int,
        scratch: ScratchBuffers | None,
    ) -> Tensor:
        out = queries.new_empty(rows.shape)
        for block, keys in _chunked_gathers(table, rows, normalize, chunk_rows, scratch):
            out[block] = torch.bmm(keys, queries[block, :, None]).squeeze(-1)
        ctx.save_for_backward(table, rows)
        ctx.normalize, ctx.chunk_rows, ctx.scratch = normalize, chunk_rows, scratch
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        table, rows = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        grad = grad_out.new_empty(rows.shape[0], table.shape[1])
        for block, keys in _chunked_gathers(table, rows, ctx.normalize, ctx.chunk_rows, ctx.scratch):
            grad[block] = torch.bmm(grad_out[block, None, :], keys).squeeze(1)
        return grad, None, None, None, None, None


def gathered_dot(
    queries: Tensor,
    table: Tensor,
    rows: Tensor,
    normalize: bool = False,
    chunk_rows: int = 16384,
    scratch: ScratchBuffers | None = None,
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
        scratch: keeps the chunk buffer from one call (and pass) to the next; every pass refills it
            before reading, so passes may interleave but must not run concurrently.

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
    out: Tensor = _GatheredDot.apply(queries.float(), table, rows, normalize, chunk_rows, scratch)
    return out
