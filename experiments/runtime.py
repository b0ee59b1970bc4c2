"""Process-level settings the project's entry points apply before any work: the allocator.

glibc's default malloc hands large freed blocks back to the kernel, so every training
step page-faults its activations in again (millions of faults per ST-GCN step): training
runs at about half speed (docs/speed.md). Two remedies, chosen by ``PGFA_ALLOCATOR``:

* ``mimalloc`` (the default when the ``cmeel-mimalloc`` package is installed, as
  requirements.txt does): mimalloc preloaded, told never to give freed memory back
  (``MIMALLOC_PURGE_DELAY=-1``). As fast as the glibc setting below, and its size
  classes reuse freed blocks well, so training peaks lower (docs/speed.md;
  ``python -m experiments.bench.benchmark``).
* ``glibc-keep`` (the default without that package): glibc settings that keep freed memory
  in the heap (no mmap'd chunks, no trimming). Fast, but the heap fragments.
* ``system``: no change.

Identical numbers either way. The settings must be in place before the interpreter
starts, so the entry point re-executes itself once with them; the re-executed process
then restores the environment its own child processes see (they apply the setting
themselves, and non-Python children such as the database server or a browser never get
the preload).

``python -m experiments.runtime ARGS...`` runs ``python ARGS...`` (``-m module ...``,
``-c code ...`` or ``script ...``) with the same setting (the Makefile runs the tests
this way).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from importlib import metadata

log = logging.getLogger("pgfa.runtime")

ALLOCATORS = ("mimalloc", "glibc-keep", "system")
CHOICE_VAR = "PGFA_ALLOCATOR"          # the user's choice (unset: the default)
ACTIVE_VAR = "PGFA_ALLOCATOR_ACTIVE"   # set for the re-executed process only
_SAVED_VAR = "PGFA_ALLOCATOR_SAVED_ENV"
_active = [""]                         # what ensure_allocator_settings applied to this process

GLIBC_KEEP_ENV = {
    "MALLOC_MMAP_MAX_": "0",                 # serve large blocks from the heap, not fresh mmaps
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),  # never give the heap top back
    "MALLOC_TOP_PAD_": str(256 << 20),       # grow the heap in 256 MiB steps
}
MIMALLOC_OPTIONS = {
    "MIMALLOC_PURGE_DELAY": "-1",            # never return freed memory to the OS
    "MIMALLOC_ARENA_EAGER_COMMIT": "1",      # commit arenas up front (fewer faults)
}


def mimalloc_library() -> str | None:
    """Path of the shared library installed by the ``cmeel-mimalloc`` package, or None."""
    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libmimalloc.so":
            path = str(f.locate())
            return path if os.path.exists(path) else None
    return None


def default_allocator() -> str:
    return "mimalloc" if mimalloc_library() else "glibc-keep"


def allocator_env(name: str) -> dict[str, str]:
    """The environment variables that select allocator ``name`` for a new process."""
    if name == "system":
        return {}
    if name == "glibc-keep":
        return dict(GLIBC_KEEP_ENV)
    if name == "mimalloc":
        lib = mimalloc_library()
        if lib is None:
            raise RuntimeError(f"{CHOICE_VAR}=mimalloc but the mimalloc library is not installed "
                               "(pip install cmeel-mimalloc==3.4.3, or choose glibc-keep / system)")
        preload = " ".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
        return {"LD_PRELOAD": preload, **MIMALLOC_OPTIONS}
    raise ValueError(f"{CHOICE_VAR}={name!r} is not an allocator; choose one of {ALLOCATORS}")


def chosen_allocator() -> str:
    name = os.environ.get(CHOICE_VAR, "").strip() or default_allocator()
    if name not in ALLOCATORS:
        raise ValueError(f"{CHOICE_VAR}={name!r} is not an allocator; choose one of {ALLOCATORS}")
    return name


def _exec_with(name: str, argv: list[str]) -> None:
    settings = allocator_env(name)
    saved = {k: os.environ.get(k) for k in settings}
    env = dict(os.environ, **settings)
    env[ACTIVE_VAR] = name
    env[_SAVED_VAR] = json.dumps(saved)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def without_allocator(env: dict[str, str]) -> dict[str, str]:
    """``env`` without any allocator setting of this module (for a child that chooses its own)."""
    out = {k: v for k, v in env.items()
           if k not in (*GLIBC_KEEP_ENV, *MIMALLOC_OPTIONS, CHOICE_VAR, ACTIVE_VAR, _SAVED_VAR, "LD_PRELOAD")}
    preload = " ".join(p for p in env.get("LD_PRELOAD", "").split() if "libmimalloc" not in p)
    if preload:
        out["LD_PRELOAD"] = preload
    return out


def _restore_environment() -> None:
    """In the re-executed process: give child processes the environment the user had."""
    saved = json.loads(os.environ.pop(_SAVED_VAR, "{}"))
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    name = os.environ.pop(ACTIVE_VAR)  # children choose for themselves
    if name == "mimalloc" and not mimalloc_loaded():
        # the dynamic loader refused the preload (it said so on stderr): say what really runs
        log.warning("mimalloc was requested but is not loaded in this process; running on the system allocator")
        name = "system (mimalloc preload failed)"
    _active[0] = name


def mimalloc_loaded() -> bool:
    """Whether libmimalloc is mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libmimalloc" in line for line in f)
    except OSError:
        return False


def applied_allocator() -> str:
    """The allocator ``ensure_allocator_settings`` applied to this process ('' if none)."""
    return _active[0]


def ensure_allocator_settings() -> None:
    """Re-exec the current command once with the chosen allocator (Linux only; a no-op for
    ``system`` and on other platforms)."""
    if os.environ.get(ACTIVE_VAR):
        _restore_environment()
        return
    if not sys.platform.startswith("linux"):
        return
    name = _chosen_or_exit()
    if name == "system":
        _active[0] = "system"
        return
    _exec_with(name, list(sys.orig_argv))


def _chosen_or_exit() -> str:
    try:
        name = chosen_allocator()
        allocator_env(name)  # refuses mimalloc when it is not installed
        return name
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None


def _run_in_process(args: list[str]) -> None:
    """Run ``python ARGS`` in this process (``-m module ...``, ``-c code ...`` or ``script ...``)."""
    import runpy

    if not args:
        raise SystemExit("usage: python -m experiments.runtime (-m module | -c code | script) [args...]")
    if args[0] == "-m" and len(args) > 1:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c" and len(args) > 1:
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(args)
        sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    # first pass: re-exec this module under the chosen allocator; second pass (ACTIVE_VAR
    # set): restore the user's environment for child processes and run ARGS in-process,
    # so the preloaded allocator serves them
    from experiments import runtime as _rt  # the importable module keeps the state (applied_allocator)

    _args = sys.argv[1:]
    if not os.environ.get(ACTIVE_VAR) and sys.platform.startswith("linux"):
        _name = _chosen_or_exit()
        if _name != "system":
            _exec_with(_name, [sys.executable, "-m", "experiments.runtime", *_args])  # does not return
    _rt.ensure_allocator_settings()  # second pass: restores the environment; "system": records it
    _run_in_process(_args)
