"""Omniboard, the web UI over the run database.

Installed from npm (``omniboard@2.16.1``) into ``<tools dir>/omniboard`` once, with ``npm ci`` from the
lockfile in ``experiments/tracking/omniboard-npm/``: every one of its ~800 packages at the version it was
verified with, so a registry (or mirror) that has since gained or lost a release cannot break it. Started
with ``experiments/tracking/omniboard_localhost.js`` preloaded so it binds 127.0.0.1 only (it binds
every interface by itself), pointed at the configured database through ``MONGO_URI`` in
its environment (not its command line, which every user of the machine can read).

The run list's key numbers are plain columns: the observer copies them from ``info.summary``
to top-level fields of each run document (``LIST_FIELDS``), and ``ensure_columns`` registers
Omniboard "custom columns" reading those fields. Omniboard orders its columns as the fields
of a run document, config entries last, so these are in the list's first view. Omniboard's
*metric* columns would instead join the metrics collection once per run (``$lookup``), which
is slow on hundreds of runs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pymongo

from experiments.files import file_lock
from experiments.tracking.database import LIST_FIELDS, Target
from experiments.tracking.dbserver import TrackingError, tools_dir, tracking_dir

OMNIBOARD_VERSION = "2.16.1"
PRELOAD = Path(__file__).with_name("omniboard_localhost.js")
# package.json and package-lock.json pinning Omniboard's whole dependency tree
LOCKED = Path(__file__).with_name("omniboard-npm")
DEFAULT_PORT = 9000
# (column name, path in the run document) of the run list's key numbers: top-level fields, so
# Omniboard lists them before the config columns (experiments/tracking/database.py: LIST_FIELDS)
SUMMARY_COLUMNS = tuple((name, name) for name in LIST_FIELDS)


def install_dir() -> Path:
    return tools_dir() / "omniboard"


def entry_point() -> Path:
    return install_dir() / "node_modules" / "omniboard" / "dist" / "start.js"


def installed() -> bool:
    pkg = install_dir() / "node_modules" / "omniboard" / "package.json"
    lock = install_dir() / "package-lock.json"  # a changed lockfile (or an unlocked older install) reinstalls
    return (entry_point().is_file() and json.loads(pkg.read_text()).get("version") == OMNIBOARD_VERSION
            and lock.is_file() and lock.read_bytes() == (LOCKED / "package-lock.json").read_bytes())


def install() -> Path:
    """``npm ci`` of the pinned Omniboard (``LOCKED``) into the tool folder (once, about a minute)."""
    if installed():
        return entry_point()
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise TrackingError("Omniboard needs Node.js (>= 18) and npm; install them (e.g. apt-get install nodejs npm) "
                            "and run: python main.py omniboard")
    with file_lock(tools_dir() / ".omniboard.lock"):
        if installed():
            return entry_point()
        install_dir().mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(LOCKED / name, install_dir() / name)
        print(f"installing omniboard@{OMNIBOARD_VERSION} from npm into {install_dir()} (once, about a minute) ...",
              file=sys.stderr, flush=True)
        cmd = [npm, "ci", "--prefix", str(install_dir()), "--no-audit", "--no-fund", "--loglevel=error"]
        if subprocess.run(cmd).returncode != 0:
            raise TrackingError(f"npm could not install Omniboard; run it by hand: {' '.join(cmd)}")
    return entry_point()


def ensure_columns(db: pymongo.database.Database) -> None:
    """Register the summary columns; a column of that name that exists already is left as the user set it
    (one still reading this project's former path ``info.summary.<name>`` moves to the new one)."""
    columns = db["omniboard.custom.columns"]
    for name, path in SUMMARY_COLUMNS:
        columns.update_one({"name": name, "config_path": f"info.summary.{name}"}, {"$set": {"config_path": path}})
        columns.update_one({"name": name}, {"$setOnInsert": {"config_path": path}}, upsert=True)


def url_with_database(url: str, db_name: str) -> str:
    """The URL with ``db_name`` as its path (Omniboard reads the database from the URL)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + urllib.parse.quote(db_name), parts.query, ""))


def start(target: Target, port: int | None = None, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """Start Omniboard on 127.0.0.1 for ``target``; returns the process and the URL it serves.

    Omniboard moves to the next port if ``port`` is taken; the URL says where it went.
    Its output goes to ``<tracking dir>/omniboard.log``."""
    entry = install()
    port = port or int(os.environ.get("PGFA_OMNIBOARD_PORT") or DEFAULT_PORT)
    log_path = tracking_dir() / "omniboard.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PORT=str(port), MONGO_URI=url_with_database(target.url, target.db_name),
               NODE_ENV="production")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["node", "--require", str(PRELOAD), str(entry)], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    listening = connected = None
    while not (listening and connected):
        text = log_path.read_text(errors="replace")
        listening = re.search(r"Omniboard is listening on port (\d+)", text)
        connected = "established successfully" in text
        if proc.poll() is not None or "Failed to establish connection" in text or time.monotonic() > deadline:
            proc.terminate()
            raise TrackingError(f"Omniboard did not start for {target.display}; its log {log_path}:\n"
                                + "\n".join(text.splitlines()[-15:]))
        time.sleep(0.2)
    return proc, f"http://127.0.0.1:{listening.group(1)}/"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
