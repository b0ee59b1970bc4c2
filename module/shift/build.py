"""Just-in-time build of the temporal-shift CUDA extension.

``load_extension()`` compiles ``csrc/shift.cpp`` and ``csrc/shift_kernel.cu`` (with
``csrc/shift_math.h``) using ``torch.utils.cpp_extension.load`` on first use and caches
the result under
``$PGFA_CACHE_DIR/torch_extensions/pgfa_shift_<hash>`` (default ``~/.cache/pgfa``), where
the hash covers the sources, the torch version and its CUDA version: an edited source or
another torch gets a fresh build, an unchanged one is reused. Nothing is built at
import time, and nothing is written inside the repository.

A failed build raises ``ShiftBuildError`` carrying the compiler's output.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "shift.cpp", CSRC / "shift_kernel.cu")
HEADERS = (CSRC / "shift_math.h",)
# No --use_fast_math: it flushes denormals and changes rounding, breaking parity with the reference.
NVCC_FLAGS = ("-O3",)
CXX_FLAGS = ("-O3",)


class ShiftBuildError(RuntimeError):
    """The CUDA extension could not be built or loaded."""


_lock = threading.Lock()
_ext: ModuleType | None = None
_error: ShiftBuildError | None = None


def source_hash() -> str:
    """Hash of the sources, the build flags and the torch/CUDA versions they compile against."""
    h = hashlib.sha256()
    for p in SOURCES + HEADERS:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(repr((NVCC_FLAGS, CXX_FLAGS, torch.__version__, torch.version.cuda)).encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    # Same cache root as the text models (text/models.py); kept local so module/ does not import text/.
    root = Path(os.environ.get("PGFA_CACHE_DIR", Path.home() / ".cache" / "pgfa"))
    return root / "torch_extensions" / f"pgfa_shift_{source_hash()}"


def load_extension(verbose: bool = False) -> ModuleType:
    """Build (once per process, cached on disk) and import the extension.

    Raises:
        ShiftBuildError: no CUDA, no compiler, or the compiler failed (its output included).
    """
    global _ext, _error
    with _lock:
        if _ext is not None:
            return _ext
        if _error is not None:  # do not recompile on every call after a failure
            raise _error
        try:
            _ext = _build(verbose)
        except ShiftBuildError as exc:
            _error = exc
            raise
        return _ext


def _build(verbose: bool) -> ModuleType:
    if not torch.cuda.is_available() or torch.version.cuda is None:
        raise ShiftBuildError(f"the temporal-shift CUDA extension needs a CUDA build of PyTorch and a GPU; "
                              f"this is torch {torch.__version__} (CUDA {torch.version.cuda}), "
                              f"cuda available: {torch.cuda.is_available()}")
    from torch.utils import cpp_extension

    target = build_dir()
    target.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name=target.name, sources=[str(p) for p in SOURCES], build_directory=str(target),
            extra_cflags=list(CXX_FLAGS), extra_cuda_cflags=list(NVCC_FLAGS), verbose=verbose)
    except Exception as exc:  # cpp_extension raises RuntimeError/OSError/subprocess errors with the compiler log
        raise ShiftBuildError(f"building the temporal-shift CUDA extension from {[str(p) for p in SOURCES]} in "
                              f"{target} failed: {exc}") from exc
