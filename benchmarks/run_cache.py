"""The method table's run cache: what each cached run records about where it came from, and the file locks that
let invocations run side by side.

A run's value depends on more than its command: the code version, the bytes of the data and weights it read, and
the CPU kernels torch picks (oneDNN's convolutions round differently on AVX2 and AVX-512: U2PL's SupOnly row
leaves the AVX-512 trajectory within 10 steps and ends 0.003 mIoU away, and a pretrained encoder becomes other
weights; benchmarks/README.md, "What a cached run depends on"). Each run records them;
``method_table.py`` reuses a cached run only when its inputs and configs are the ones the row reads now.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DERIVED = ".wsss_cache"  # the data module's derived files in a data root (WSSSDataModule's cache_dir)
#: the rare-class statistics the data module derives into a data root when a run samples by them (DAFormer's RCS;
#: ``wsss_lightning.data.rare_classes.default_stats_path``), and their temporary file while it writes them
#: (``wsss_lightning.files.atomic_write``): the first such run writes them, so counting them would make every run
#: that read the set before them stale
DERIVED_FILES = ("class_stats_*.npz", ".class_stats_*.npz.*.tmp")
#: environment variables that change which CPU kernels torch runs (oneDNN's convolutions, ATen's vector code, MKL)
KERNEL_VARIABLES = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
)
#: the libraries a run's numbers pass through besides torch (only torch is pinned, in constraints.txt)
LIBRARIES = ("numpy", "opencv-python-headless", "albumentations", "pillow", "timm", "lightning")
Cache = dict[str, dict[str, Any]]


#: what a run's code is: the package, the configs and the benchmark scripts, not the benchmarks' text, figures and
#: run records (the method table rewrites its .md, .png and runs' JSON as it goes)
CODE_PATHS = (
    "wsss_lightning",
    "configs",
    "benchmarks",
    ":(exclude)benchmarks/*.md",
    ":(exclude)benchmarks/*.png",
    ":(exclude)benchmarks/method_table_runs.json",
)


def code_version() -> str:
    """The checked-out commit, with ``+changes`` when the package, configs or benchmark scripts differ from it
    (tracked files changed, or files git does not know; ``CODE_PATHS``); ``unknown`` outside a git checkout."""
    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True
        )
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", *CODE_PATHS], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def _derived(relative: Path) -> bool:
    """Whether a file of a data root (its path relative to the root) is derived from the set by the data module."""
    return DERIVED in relative.parts or (
        len(relative.parts) == 1 and any(fnmatch.fnmatchcase(relative.name, p) for p in DERIVED_FILES)
    )


#: weights files, digested by their tensors (``weights_digest``)
WEIGHTS_SUFFIXES = (".pth", ".pt")


def digest(path: str | Path) -> str:
    """The first 12 hex digits of the SHA-256 of a file, or of a folder's files (relative names and contents, in
    name order; not what the data module derives from the set: its ``.wsss_cache`` (tags, partitions) and the
    rare-class statistics at the root), or of a weights file's tensors (``weights_digest``); ``missing`` when
    there is nothing at ``path``."""
    root = Path(path)
    if not root.exists():
        return "missing"
    if root.is_file() and root.suffix in WEIGHTS_SUFFIXES:
        return weights_digest(root)
    files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.rglob("*") if p.is_file() and not _derived(p.relative_to(root)))
    )
    h = hashlib.sha256()
    for f in files:
        name, data = f.relative_to(root).as_posix().encode(), f.read_bytes()
        h.update(b"%d:%s%d:" % (len(name), name, len(data)) + data)
    return h.hexdigest()[:12]


def weights_digest(path: Path) -> str:
    """The first 12 hex digits of the SHA-256 of a saved ``state_dict``'s tensors (names, dtypes, shapes and
    values, in name order). Not of the file's bytes: ``torch.save`` writes a random serialization id and names the
    archive's records after the file it writes to (a temporary one, for the pretrained encoders), so the same
    weights saved twice are two different files."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous()
        head = f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        h.update(b"%d:" % len(head) + head + b"%d:" % len(data) + data)
    return h.hexdigest()[:12]


def text_digest(parts: Iterable[str]) -> str:
    """The first 12 hex digits of the SHA-256 of ``parts`` (each length-prefixed)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(b"%d:" % len(data) + data)
    return h.hexdigest()[:12]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string elsewhere (``unknown`` when
    neither says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment() -> dict[str, str]:
    """What a run's floating-point results depend on besides the code and inputs: the torch version, the CPU, the
    vector code torch picks for it, any variable that holds its kernels back, and the versions of the other
    libraries the images and weights pass through (``LIBRARIES``)."""
    import torch

    forced = {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}
    return {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        **({"kernels": " ".join(f"{k}={v}" for k, v in forced.items())} if forced else {}),
        "libraries": " ".join(f"{name}=={library_version(name)}" for name in LIBRARIES),
    }


def library_version(name: str) -> str:
    """The installed version of a distribution, ``absent`` when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created when missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load(cache_file: Path) -> Cache:
    """The cache file's runs (none when there is no file)."""
    return json.loads(cache_file.read_text()) if cache_file.is_file() else {}


def read(cache_file: Path) -> Cache:
    """The cache file's runs, read under its lock."""
    with file_lock(cache_file.with_suffix(".lock")):
        return load(cache_file)


def store(cache_file: Path, key: str, run: dict[str, Any]) -> Cache:
    """Write one run into the cache file, keeping every other run in it (another invocation's too); returns the
    file's runs after the write."""
    with file_lock(cache_file.with_suffix(".lock")):
        cache = load(cache_file)
        cache[key] = run
        partial = cache_file.with_suffix(".json.partial")
        # on disk before it replaces the file: a crash leaves the old file or the new one
        with open(partial, "w") as handle:
            handle.write(json.dumps(cache, indent=1, sort_keys=True))
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(cache_file)
    return cache
