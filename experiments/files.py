"""Leaf helpers every part of the project may import: the project's paths, crash-safe
writes, an advisory file lock and a process check. Standard library only.

Every write here goes to a temporary file in the target's folder and is renamed over the
target, so a reader (or a crash at any moment) sees the old file or the new one, never
half of one. A failed write (full disk, unwritable folder) removes its temporary file and
raises ``OSError`` naming the target.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the code (a checkout, or site-packages when installed)
# Where runs, prepared data, the run database and the tools go: $PGFA_HOME, else the checkout
# itself, else (an installed copy, `pip install .`) the current folder.
WORK_ROOT = Path(os.environ.get("PGFA_HOME") or (PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file()
                                                 else Path.cwd())).resolve()
DATA_DIR = WORK_ROOT / "data"  # the default data_root
RUNS_DIR = WORK_ROOT / "runs"
BEST_FILE = "best.pt"    # a run folder's selected checkpoint
STREAMS_FILE = "streams.json"  # a stream ensemble run's list of its streams' checkpoints (train/streams.py)
STATE_FILE = "last.pt"   # a run folder's resumable state, written after every epoch


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None], *, durable: bool = False) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    Args:
        path: the target file (its folder is created).
        write: writes the whole content to the open file.
        durable: fsync before the rename (for state that must survive a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no stray temporary file, whatever stopped the write
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, obj, *, indent: int | None = 2, durable: bool = True) -> Path:
    """JSON (sorted keys, ``str`` for anything else) written atomically and, by default, durably."""
    text = json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n"
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")), durable=durable)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing), held for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (reaps it first when it is our own exited child, so it is no zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie still accepts signal 0
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def install_venv(venv: Path, pip_args: list[str], log: Path, env: dict[str, str] | None = None) -> list[str]:
    """Create (afresh) the virtual environment ``venv`` and ``pip install`` ``pip_args`` into it, every
    line of output into ``log``; returns the pip command (for an error message). Raises ``OSError`` or
    ``subprocess.CalledProcessError``. A tool installed this way runs as its own process."""
    import subprocess
    import sys

    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", *pip_args]
    with open(log, "wb") as out:
        for cmd in ([sys.executable, "-m", "venv", "--clear", str(venv)], pip):
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return pip


def venv_current(venv: Path, requirements: Path) -> bool:
    """Whether ``install_venv`` completed into ``venv`` from this version of ``requirements``."""
    import hashlib

    marker = venv / ".installed"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    return marker.is_file() and marker.read_text().strip() == digest


def mark_venv_current(venv: Path, requirements: Path) -> None:
    import hashlib

    (venv / ".installed").write_text(hashlib.sha256(requirements.read_bytes()).hexdigest()[:16] + "\n")
