"""The side commands of the run database and its browser (``python main.py <command>``):
install them, start / query / stop the embedded server, serve Omniboard, upload runs recorded
offline. Registered on the project's experiment (``config.ex``) when ``main`` imports this module."""
from __future__ import annotations

import os

from config import ex


def _embedded_only(mongo_url: str) -> None:
    from experiments.tracking.database import MONGO_URL_ENV
    from experiments.tracking.output import redact_text

    url = mongo_url or os.environ.get(MONGO_URL_ENV, "")
    if url:
        print(f"note: runs go to {redact_text(url)} (mongo_url / {MONGO_URL_ENV}), not to the embedded server")


@ex.command(unobserved=True)
def install_tracking():
    """Install the embedded run database (its own venv) and Omniboard (npm) into .tools/, once."""
    from experiments.tracking import dbserver
    from experiments.tracking import omniboard as board

    print(f"SecantusDB: {dbserver.install_server()}")
    print(f"Omniboard:  {board.install()}")


@ex.command(unobserved=True)
def server_start(mongo_url):
    """Start the embedded run database (installed on first use), or report the one already running."""
    from experiments.tracking import dbserver

    _embedded_only(mongo_url)
    known = dbserver.status()
    info = known or dbserver.ensure_running()
    print(f"{'already running' if known else f'started in {info.start_seconds:.1f} s'}: {info.url} "
          f"(pid {info.pid}, data {info.storage}, log {info.log})")


@ex.command(unobserved=True)
def server_status(mongo_url):
    """Whether the embedded run database runs, and where."""
    from experiments.tracking import dbserver

    _embedded_only(mongo_url)
    info = dbserver.status()
    print(f"running: {info.url} (pid {info.pid}, since {info.started_at}, data {info.storage})" if info else
          f"not running (data folder {dbserver.tracking_dir() / 'db'}); start it: python main.py server_start")


@ex.command(unobserved=True)
def server_stop():
    """Stop the embedded run database (SIGTERM to its recorded pid; SIGKILL if it has not exited after 60 s)."""
    from experiments.tracking import dbserver

    info = dbserver.stop()
    print(f"stopped the embedded run database (pid {info.pid})" if info else "the embedded run database was not running")


@ex.command(unobserved=True)
def omniboard(mongo_url):
    """Install Omniboard (once) and serve the run database on http://127.0.0.1:9000/ until Ctrl-C."""
    from experiments.tracking import dbserver
    from experiments.tracking import omniboard as board
    from experiments.tracking.database import connect, resolve_target

    target = resolve_target(mongo_url)
    board.ensure_columns(connect(target))
    proc, url = board.start(target)
    print(f"Omniboard: {url}  (runs in {target.display}; log {dbserver.tracking_dir() / 'omniboard.log'}; "
          f"Ctrl-C stops it)", flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        board.stop(proc)


@ex.command(unobserved=True)
def sync(mongo_url):
    """Upload the runs recorded offline (offline=True) or during a database outage, each exactly once."""
    from experiments.tracking.database import resolve_target
    from experiments.tracking.upload import sync as sync_records

    target = resolve_target(mongo_url)
    done = sync_records(target)
    for record, run_id in done["uploaded"]:
        print(f"uploaded {record.name} as run {run_id}")
    for record, why in done["waiting"]:
        print(f"not yet: {record.name} ({why})")
    print(f"{len(done['uploaded'])} run(s) uploaded to {target.display}; {len(done['waiting'])} still running")
