"""Helpers shared by the tracking tests: tiny runs (in process and through the real command
line), skip conditions for the installed tools, and database look-ups."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import pytest

from chromedriver_client import free_port  # noqa: F401  (re-exported for the tracking tests)
from experiments.files import PROJECT_ROOT
from experiments.tracking import dbserver
from experiments.tracking import omniboard as board

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=2, hidden_channels=4, out_channels=32, batch_size=64,
            warmup_epochs=1)
ARTIFACTS = {"best.pt", "unseen_confusion.png", "unseen_per_class.csv", "embedding_2d.png", "curves.png",
             "unseen_scores.npz"}
PER_EPOCH = ("train_loss", "lr", "temperature", "val_top1", "unseen_top1_monitor", "unseen_top1_aligned_monitor",
             "epoch_seconds")

SERVER_MISSING = None if dbserver.server_installed() else \
    "SecantusDB is not installed in .tools/secantusdb; run `make tracking-tools` (CI's .ci/run does)"
OMNIBOARD_MISSING = None if board.installed() and shutil.which("node") else \
    "Omniboard is not installed in .tools/omniboard; run `make tracking-tools` (CI's .ci/run does)"
BROWSER_MISSING = None if shutil.which("chromedriver") and (shutil.which("chromium") or shutil.which("chromium-browser")) \
    else "headless Chromium is missing; apt-get install chromium chromium-driver (CI's .ci/run does)"
if os.environ.get("PGFA_REQUIRE_TRACKING_TOOLS") == "1" and (SERVER_MISSING or OMNIBOARD_MISSING or BROWSER_MISSING):
    # CI installs them: a skip there would hide that the tracking tests never ran
    raise RuntimeError(f"PGFA_REQUIRE_TRACKING_TOOLS=1 but: {SERVER_MISSING or OMNIBOARD_MISSING or BROWSER_MISSING}")

needs_server = pytest.mark.skipif(SERVER_MISSING is not None, reason=str(SERVER_MISSING))
needs_omniboard = pytest.mark.skipif(OMNIBOARD_MISSING is not None, reason=str(OMNIBOARD_MISSING))
needs_browser = pytest.mark.skipif(BROWSER_MISSING is not None, reason=str(BROWSER_MISSING))


def cli_env(tracking: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment of a ``python main.py`` subprocess recording into ``tracking``."""
    env = {k: v for k, v in os.environ.items() if k != "PGFA_MONGO_URL"}
    env.update(PGFA_TRACKING_DIR=str(tracking), PGFA_DB_PORT=str(port), OMP_NUM_THREADS="1", **extra)
    return env


def cli_args(data_root: Path, out_dir: Path, **updates) -> list[str]:
    cfg = {**TINY, "data_root": str(data_root), "out_dir": str(out_dir), **updates}
    return [sys.executable, "main.py", "with", *[f"{k}={v}" for k, v in cfg.items()]]


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The CLI as a user starts it from a terminal: SIGINT at its default even when the test
    session runs in the background (a non-interactive shell's ``&`` ignores SIGINT in its jobs,
    and Python keeps an inherited "ignore", so Ctrl-C would never arrive)."""
    out = open(log, "wb")
    return subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def database(url: str, name: str = "pgfa") -> pymongo.database.Database:
    return pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)[name]


def server_processes(storage: Path) -> list[int]:
    """Pids of processes serving ``storage`` (read from /proc; a test-only census)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"--storage-path" in argv and str(storage).encode() in argv and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
