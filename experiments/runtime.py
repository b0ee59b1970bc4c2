"""Process-level settings the project's entry points apply before any work.

glibc's malloc hands large freed blocks back to the kernel, so every training step
page-faults its activations in again (1–4 million faults per ST-GCN step, measured on
a 2-core CPU). Keeping freed memory in the process (no mmap'd chunks, no trimming)
makes CPU training markedly faster with identical numbers. The variables must be
set before the interpreter starts, so the entry point re-executes itself once with
them. ``PGFA_ALLOCATOR=system`` opts out.

``python -m experiments.runtime ARGS...`` runs ``python ARGS...`` with the same settings
(the Makefile runs the tests this way).
"""
from __future__ import annotations

import os
import sys

ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",                 # serve large blocks from the heap, not fresh mmaps
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),  # never give the heap top back
    "MALLOC_TOP_PAD_": str(256 << 20),       # grow the heap in 256 MiB steps
}


def _exec_with_settings(argv: list[str]) -> None:
    env = dict(os.environ, PGFA_ALLOCATOR="keep-heap", **ALLOCATOR_ENV)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def ensure_allocator_settings() -> None:
    """Re-exec the current command once with ``ALLOCATOR_ENV`` (Linux/glibc only)."""
    if os.environ.get("PGFA_ALLOCATOR") or not sys.platform.startswith("linux"):
        return
    _exec_with_settings(list(sys.orig_argv))


if __name__ == "__main__":
    if os.environ.get("PGFA_ALLOCATOR") or not sys.platform.startswith("linux"):
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    _exec_with_settings([sys.executable, *sys.argv[1:]])
