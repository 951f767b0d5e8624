"""Dense CRF post-processing (fully connected CRF with Gaussian edge potentials, via pydensecrf2).

The CRF runs on the CPU, one image at a time; :class:`CRFPostProcessor` spreads a batch over a persistent
process pool. This module imports only NumPy at the top so that pool workers start quickly.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from multiprocessing.shared_memory import SharedMemory
from types import ModuleType
from typing import Any, Literal, cast

import numpy as np
from typing_extensions import Self

__all__ = ["CRFParams", "CRFPostProcessor", "crf_labels", "dense_crf"]


@dataclass(frozen=True)
class CRFParams:
    """Parameters of pydensecrf's ``DenseCRF2D``.

    Defaults are DuPL's official evaluation CRF (``utils/dcrf.py`` as called from ``tools/eval_seg_voc.py``
    and ``tools/eval_seg_coco_ddp.py``; the deeplab-pytorch convention): 10 mean-field iterations, Gaussian
    pairwise sxy 1 / compat 1, bilateral sxy 121 / srgb 5 / compat 4, unary ``-log(clip(p, 1e-5))``.

    Attributes:
        iterations: number of mean-field iterations.
        gaussian_sxy: spatial standard deviation (pixels) of the smoothness kernel.
        gaussian_compat: weight (Potts compatibility) of the smoothness kernel.
        bilateral_sxy: spatial standard deviation (pixels) of the appearance kernel.
        bilateral_srgb: colour standard deviation (0-255 units) of the appearance kernel.
        bilateral_compat: weight of the appearance kernel.
        prob_clip: probabilities are clipped to at least this before ``-log`` (pydensecrf's
            ``unary_from_softmax`` default).
    """

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 1.0
    bilateral_sxy: float = 121.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 4.0
    prob_clip: float = 1e-5

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"CRFParams.iterations must be >= 0, got {self.iterations}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb", "prob_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CRFParams.{name} must be positive, got {getattr(self, name)}")


def _import_densecrf() -> ModuleType:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(
            "Dense CRF needs the `pydensecrf2` package (import name `pydensecrf`). It has no wheel and is "
            "built from source by `pip install pydensecrf2`, which needs gcc (a C++ compiler) and the Python "
            "development headers."
        ) from err
    return cast(ModuleType, dcrf)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF.

    Args:
        image: (H, W, 3) uint8 RGB image (the original, un-normalised pixels).
        probs: (C, H, W) class probabilities (e.g. a softmax), any float dtype.
        params: CRF parameters; ``None`` = :class:`CRFParams` defaults.

    Returns:
        (C, H, W) float32 posterior marginals.
    """
    params = params or CRFParams()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an (H, W, 3) uint8 array, got shape {image.shape} dtype {image.dtype}"
        )
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"probs must be (C, H, W) with (H, W) = image size {image.shape[:2]}, got shape {probs.shape}"
        )
    dcrf = _import_densecrf()
    num_classes, height, width = probs.shape
    unary = -np.log(np.clip(probs.reshape(num_classes, -1), params.prob_clip, None), dtype=np.float32)
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=params.bilateral_compat,
    )
    marginals = crf.inference(params.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(num_classes, height, width)


def crf_labels(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Label map after dense CRF: (H, W) uint8 argmax of :func:`dense_crf` (int32 if C > 256)."""
    refined = dense_crf(image, probs, params)
    dtype = np.uint8 if refined.shape[0] <= 256 else np.int32
    labels: np.ndarray = refined.argmax(axis=0).astype(dtype)
    return labels


def _worker_ready() -> bool:
    _import_densecrf()
    return True


def _keep_freed_memory() -> None:
    """Pool-worker initializer: keep freed CRF buffers in the heap instead of returning them (glibc).

    Each CRF allocates and frees buffers of tens of MB. With glibc's adaptive defaults they go back to
    the OS and every image pays the page faults again, which cost ~30 % of the CRF time on a 2-core VM;
    a worker process can afford to keep up to 256 MiB of freed heap instead. Other C libraries are left
    as they are (this changes speed only).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    mallopt(m_trim_threshold, 256 << 20)


# Worker side: the arena last attached to (one per worker, replaced when the parent grows its arena).
_ATTACHED: dict[str, SharedMemory] = {}


def _crf_labels_shared(
    image: np.ndarray, arena: str, offset: int, shape: tuple[int, ...], params: CRFParams
) -> np.ndarray:
    """:func:`crf_labels` on probabilities read in place from the parent's shared-memory arena."""
    shm = _ATTACHED.get(arena)
    if shm is None:
        for old in _ATTACHED.values():
            old.close()
        _ATTACHED.clear()
        shm = _ATTACHED[arena] = SharedMemory(name=arena)
    probs = np.ndarray(shape, dtype=np.float32, buffer=shm.buf, offset=offset)
    try:
        return crf_labels(image, probs, params)
    finally:
        del probs  # no view may outlive the task: closing the mapping later needs no exported buffers


def _as_list(arrays: Sequence[np.ndarray] | np.ndarray, name: str) -> list[np.ndarray]:
    """A batch given as a list of 3-D arrays or one stacked 4-D array, as a list."""
    if isinstance(arrays, np.ndarray) and arrays.ndim != 4:
        raise ValueError(f"{name} must be a list of 3-D arrays or one 4-D array, got shape {arrays.shape}")
    return [np.asarray(a) for a in arrays]


def _aligned(nbytes: int, alignment: int = 64) -> int:
    return -(-nbytes // alignment) * alignment


def _shm_has_room(nbytes: int) -> bool:
    """Whether POSIX shared memory (/dev/shm) can hold ``nbytes`` (containers often cap it at 64 MiB)."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize > 2 * nbytes


class CRFPostProcessor:
    """Dense CRF over a batch, in a persistent process pool.

    The pool is created on first use and reused until :meth:`close` (also called by the context manager
    and on garbage collection). Workers use the ``forkserver`` (or ``spawn``) start method, so they hold
    no copy of the parent's torch threads or CUDA state. Images (small, uint8) are pickled to the
    workers; float32 probability maps (~16 MB for a VOC image with 21 classes) are copied once into a
    reusable shared-memory arena that the workers read in place, because pickling them through a pipe
    costs several copies and page faults per image in both processes. The arena keeps the size of the
    largest batch until :meth:`close`. Workers send back only the uint8 label maps, and keep freed CRF
    buffers for the next image (see ``_keep_freed_memory``). One call at a time: the arena is shared by
    the calls of one instance. As with any ``spawn``/``forkserver`` pool, a script that uses workers
    needs an ``if __name__ == "__main__":`` guard.

    Args:
        params: CRF parameters; ``None`` = :class:`CRFParams` defaults (DuPL's).
        num_workers: worker processes; 0 runs in the calling process.
        mp_context: start method of the workers; ``None`` = ``forkserver`` where available, else ``spawn``.
        transport: how probability maps reach the workers: ``"shared_memory"``, ``"pickle"``, or
            ``"auto"`` = shared memory when /dev/shm has room for the batch, else pickle.

    Example:
        >>> with CRFPostProcessor(num_workers=4) as crf:
        ...     labels = crf(images, probs)  # lists of (H, W, 3) uint8 and (C, H, W) float32
    """

    def __init__(
        self,
        params: CRFParams | None = None,
        num_workers: int = 0,
        mp_context: Literal["spawn", "forkserver"] | None = None,
        transport: Literal["auto", "shared_memory", "pickle"] = "auto",
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if transport not in ("auto", "shared_memory", "pickle"):
            raise ValueError(f"transport must be 'auto', 'shared_memory' or 'pickle', got {transport!r}")
        if mp_context is None:
            mp_context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self.params = params or CRFParams()
        self.num_workers = num_workers
        self.mp_context = mp_context
        self.transport = transport
        self._executor: Executor | None = None
        self._arena: SharedMemory | None = None

    def start(self) -> None:
        """Create the pool and wait until every worker is up (useful before timing)."""
        if self.num_workers == 0 or self._executor is not None:
            return
        self._executor = ProcessPoolExecutor(
            max_workers=self.num_workers,
            mp_context=multiprocessing.get_context(self.mp_context),
            initializer=_keep_freed_memory,
        )
        # Submitting one task per worker before any finishes makes the executor start all of them.
        futures = [self._executor.submit(_worker_ready) for _ in range(self.num_workers)]
        for future in futures:
            future.result()

    def __call__(
        self, images: Sequence[np.ndarray] | np.ndarray, probs: Sequence[np.ndarray] | np.ndarray
    ) -> list[np.ndarray]:
        """Refine a batch.

        Args:
            images: B (H_i, W_i, 3) uint8 images, as a list or one (B, H, W, 3) array.
            probs: B (C, H_i, W_i) probability maps, as a list or one (B, C, H, W) array.

        Returns:
            B (H_i, W_i) label maps (uint8; int32 if C > 256), argmax of the refined probabilities.
        """
        image_list = _as_list(images, "images")
        prob_list = [np.ascontiguousarray(p, dtype=np.float32) for p in _as_list(probs, "probs")]
        if len(image_list) != len(prob_list):
            raise ValueError(f"got {len(image_list)} images but {len(prob_list)} probability maps")
        if self.num_workers == 0 or len(image_list) <= 1:
            return [crf_labels(img, p, self.params) for img, p in zip(image_list, prob_list, strict=True)]
        self.start()
        assert self._executor is not None
        total = sum(_aligned(p.nbytes) for p in prob_list)
        arena_fits = self._arena is not None and self._arena.size >= total
        if self.transport == "pickle" or (
            self.transport == "auto" and not (arena_fits or _shm_has_room(total))
        ):
            return list(self._executor.map(crf_labels, image_list, prob_list, repeat(self.params)))
        arena = self._stage(prob_list, total)
        offsets = np.cumsum([0] + [_aligned(p.nbytes) for p in prob_list[:-1]]).tolist()
        shapes = [p.shape for p in prob_list]
        # Blocking until every result is back also guarantees no worker still reads the arena when the
        # next call overwrites it.
        return list(
            self._executor.map(
                _crf_labels_shared, image_list, repeat(arena), offsets, shapes, repeat(self.params)
            )
        )

    def marginals(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        probs: Sequence[np.ndarray] | np.ndarray,
        params: CRFParams | None = None,
    ) -> list[np.ndarray]:
        """Posterior marginals of a batch: B (C, H_i, W_i) float32 (:func:`dense_crf` of each image).

        The marginals come back whole (pickled), so this costs more transfer than :meth:`__call__`'s labels; for
        callers that need the CRF's confidence (RRM's reliable labels). ``params`` overrides the instance's.
        """
        params = params or self.params
        image_list = _as_list(images, "images")
        prob_list = [np.ascontiguousarray(p, dtype=np.float32) for p in _as_list(probs, "probs")]
        if len(image_list) != len(prob_list):
            raise ValueError(f"got {len(image_list)} images but {len(prob_list)} probability maps")
        if self.num_workers == 0 or len(image_list) <= 1:
            return [dense_crf(img, p, params) for img, p in zip(image_list, prob_list, strict=True)]
        self.start()
        assert self._executor is not None
        return list(self._executor.map(dense_crf, image_list, prob_list, repeat(params)))

    def _stage(self, prob_list: list[np.ndarray], total: int) -> str:
        """Copy the batch into the arena (grown with head-room, so varying image sizes rarely re-create it)."""
        if self._arena is None or self._arena.size < total:
            self._release_arena()
            self._arena = SharedMemory(create=True, size=max(int(total * 1.25), 1))
        offset = 0
        for p in prob_list:
            view = np.ndarray(p.shape, dtype=np.float32, buffer=self._arena.buf, offset=offset)
            view[...] = p
            offset += _aligned(p.nbytes)
        del view
        return self._arena.name

    def _release_arena(self) -> None:
        arena, self._arena = self._arena, None
        if arena is not None:
            arena.close()
            arena.unlink()

    def close(self, wait: bool = True) -> None:
        """Shut the pool down and free the shared memory (a later call starts afresh)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)
        self._release_arena()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown the executor machinery may already be torn down; nothing to report then.
        with contextlib.suppress(Exception):
            self.close(wait=False)

    def __getstate__(self) -> dict[str, Any]:
        # A pool cannot be pickled (e.g. when hparams or a module holding this are copied); the copy
        # starts its own pool on first use.
        state = self.__dict__.copy()
        state["_executor"] = None
        state["_arena"] = None
        return state
