"""The embedded MongoDB-compatible server every run is recorded in by default.

SecantusDB (a MongoDB wire-protocol server on WiredTiger storage, GPL-2.0) runs as a
separate process, never imported: it lives in its own virtual environment under the
project's tool folder (``.tools/secantusdb``, pinned by ``experiments/tracking/requirements-secantusdb.txt``),
so its licence and its dependencies stay out of this project's environment.

* ``ensure_running()`` starts it on 127.0.0.1 with ``--standalone --sync-on-commit`` and
  the data folder ``<tracking dir>/db``, waits until it answers a ping, and records
  pid and port in ``<tracking dir>/server.json``. A later call reuses the server that
  file names when that pid is alive, is a SecantusDB on that folder, and answers a
  ping. An exclusive lock (``server.lock``) makes concurrent callers (two runs started
  at once) share one server instead of starting two on one folder.
* The server is a new session, so it outlives the run that started it (Omniboard can
  browse afterwards) and a Ctrl-C in the run's terminal does not reach it.
* ``stop()`` sends SIGTERM to the recorded pid's main thread (again every few seconds) and
  waits for a clean exit; one that does not come within a minute ends in SIGKILL (no acknowledged
  write is lost).

``$PGFA_TRACKING_DIR`` (default ``<work folder>/.tracking``, experiments/files.py: ``WORK_ROOT``) holds the data, the state
file, the log and the local run records; ``$PGFA_TOOLS_DIR`` (default
``<work folder>/.tools``) the installed tools; ``$PGFA_DB_PORT`` the preferred port (27117).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.files import (WORK_ROOT, file_lock, install_venv, mark_venv_current, pid_alive, venv_current,
                               write_json_atomic)

SERVER_REQUIREMENTS = Path(__file__).with_name("requirements-secantusdb.txt")
SERVER_HOST = "127.0.0.1"
DEFAULT_PORT = 27117
DEFAULT_DB = "pgfa"


class TrackingError(RuntimeError):
    """The run database cannot be used; the message says why and what to do."""


def tracking_dir() -> Path:
    return Path(os.environ.get("PGFA_TRACKING_DIR") or WORK_ROOT / ".tracking").resolve()


def tools_dir() -> Path:
    return Path(os.environ.get("PGFA_TOOLS_DIR") or WORK_ROOT / ".tools").resolve()






# ----------------------------------------------------------------------------- install

def server_venv() -> Path:
    return tools_dir() / "secantusdb"


def server_executable() -> Path:
    return server_venv() / "bin" / "secantusd-py"


def server_installed() -> bool:
    return server_executable().is_file() and venv_current(server_venv(), SERVER_REQUIREMENTS)


def install_server() -> Path:
    """Create SecantusDB's own virtual environment from the pinned requirements (once)."""
    if server_installed():
        return server_executable()
    venv = server_venv()
    with file_lock(tools_dir() / ".secantusdb.lock"):
        if server_installed():  # another process installed it while we waited
            return server_executable()
        print(f"installing SecantusDB (GPL-2.0, run as its own process) into {venv} (once, ~10 s) ...",
              file=sys.stderr, flush=True)
        log_path = tools_dir() / "secantusdb-install.log"  # pip's output (its warnings) goes here, not to the run
        try:
            install_venv(venv, ["-r", str(SERVER_REQUIREMENTS)], log_path)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise TrackingError(
                f"could not install the embedded run database into {venv} ({exc}); pip's output, {log_path}:\n"
                f"{_log_tail(log_path)}\n"
                f"  Install it by hand: {sys.executable} -m venv {venv} && {venv}/bin/python -m pip install "
                f"-r {SERVER_REQUIREMENTS}\n"
                f"  or use a MongoDB server: PGFA_MONGO_URL=mongodb://host:port/db, or record offline: with offline=True"
            ) from exc
        mark_venv_current(venv, SERVER_REQUIREMENTS)
        print(f"installed SecantusDB (pip's output: {log_path})", file=sys.stderr, flush=True)
    return server_executable()


# ----------------------------------------------------------------------------- state

@dataclass(frozen=True)
class ServerInfo:
    pid: int
    host: str
    port: int
    storage: str
    log: str
    started_at: str
    start_seconds: float  # from launch to the first answered ping

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"


def _paths(base: Path | None = None) -> dict[str, Path]:
    base = base or tracking_dir()
    return {"state": base / "server.json", "lock": base / "server.lock", "log": base / "server.log",
            "storage": base / "db", "config": base / "secantusd.toml"}


def read_server_state(base: Path | None = None) -> ServerInfo | None:
    path = _paths(base)["state"]
    try:
        return ServerInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise TrackingError(f"{path} is not a server state file ({exc}); delete it and run: python main.py server_start") from exc




def _serves_folder(pid: int, storage: str) -> bool:
    """Whether ``pid`` is a server on ``storage`` (guards against a recycled pid); True where /proc is absent."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return b"--storage-path" in argv and storage.encode() in argv


def ping(url: str, timeout: float = 1.0) -> bool:
    import pymongo

    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=int(timeout * 1000),
                                 connectTimeoutMS=int(timeout * 1000), socketTimeoutMS=int(timeout * 1000))
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server will: connections of a killed predecessor in TIME_WAIT do not block the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((SERVER_HOST, port))
            return True
        except OSError:
            return False


def _choose_port() -> int:
    preferred = int(os.environ.get("PGFA_DB_PORT") or DEFAULT_PORT)
    if _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((SERVER_HOST, 0))
        port = s.getsockname()[1]
    print(f"port {preferred} is taken; the embedded run database uses port {port}", file=sys.stderr)
    return port


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def status(base: Path | None = None) -> ServerInfo | None:
    """The recorded server if it runs and answers, else None."""
    info = read_server_state(base)
    if info and pid_alive(info.pid) and _serves_folder(info.pid, info.storage) and ping(info.url):
        return info
    return None


def server_command(exe: Path, config: Path, port: int, storage: Path) -> list[str]:
    """The server's command line: durable commits (a hard kill loses no acknowledged write), a 256 MB cache."""
    return [str(exe), "--config", str(config), "--host", SERVER_HOST, "--port", str(port), "--storage-path",
            str(storage), "--standalone", "--sync-on-commit", "--cache-size", "256M"]


def server_environment(malloc_tuned: bool = True) -> dict[str, str]:
    """The server's environment: this one, with glibc's mmap threshold fixed at 128 KiB. By default glibc
    raises that threshold after freeing large blocks, so later large buffers (documents, GridFS chunks) come
    from the heap, which keeps them when freed: the server's resident size grew to several times the bytes
    written to it, several GB over a sweep (``python -m experiments.bench.db_memory`` measures both)."""
    env = dict(os.environ)
    if malloc_tuned:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    return env


def wait_until_answering(proc: subprocess.Popen, url: str, timeout: float, log: Path | None = None,
                         started: float | None = None) -> None:
    """Wait up to ``timeout`` s from ``started`` (``time.monotonic()``; default now) for a just-started server
    to answer a ping; ``TrackingError`` if it exits first or stays silent (then it is terminated), with
    ``log``'s tail."""
    deadline = (time.monotonic() if started is None else started) + timeout
    while not ping(url, timeout=0.5):
        problem = (f"exited at start (code {proc.returncode})" if proc.poll() is not None
                   else f"did not answer within {timeout:.0f} s" if time.monotonic() > deadline else None)
        if problem:
            if proc.poll() is None:
                proc.terminate()
            where = f"; log {log}:\n{_log_tail(log)}" if log else ""
            raise TrackingError(f"the embedded run database {problem}{where}")
        time.sleep(0.1)


def ensure_running(base: Path | None = None, timeout: float = 60.0) -> ServerInfo:
    """The running embedded server, started (and installed) if needed."""
    p = _paths(base)
    with file_lock(p["lock"]):
        info = read_server_state(base)
        if info and pid_alive(info.pid) and _serves_folder(info.pid, info.storage):
            if ping(info.url, timeout=5.0):
                return info
            raise TrackingError(f"the embedded run database (pid {info.pid}, {info.url}) runs but does not answer; "
                                f"its log: {info.log}\n  restart it: python main.py server_stop && python main.py server_start")
        p["state"].unlink(missing_ok=True)  # stale: the recorded process is gone
        exe = install_server()
        p["storage"].mkdir(parents=True, exist_ok=True)
        # An explicit (empty) config file stops SecantusDB from picking up ./secantusd.toml or ~/.secantus/.
        p["config"].write_text("# SecantusDB settings of this project's run database; command-line flags in "
                               "experiments/tracking/dbserver.py\n")
        port = _choose_port()
        cmd = server_command(exe, p["config"], port, p["storage"])
        t0 = time.monotonic()
        with open(p["log"], "ab") as log:
            log.write(f"\n--- {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, env=server_environment())
        url = f"mongodb://{SERVER_HOST}:{port}/"
        wait_until_answering(proc, url, timeout, p["log"], started=t0)
        info = ServerInfo(pid=proc.pid, host=SERVER_HOST, port=port, storage=str(p["storage"]), log=str(p["log"]),
                          started_at=datetime.datetime.now().isoformat(timespec="seconds"),
                          start_seconds=round(time.monotonic() - t0, 3))
        write_json_atomic(p["state"], asdict(info))
        return info


def _signal_main_thread(pid: int, sig: int) -> None:
    """Send ``sig`` to the main thread of ``pid`` (``tgkill``) rather than to the process (``kill``).

    The server is a Python program: its SIGTERM handler runs in the main thread, which sleeps
    in ``Event.wait()``. A process-wide signal may be taken by any of its threads, and one
    sent right after a SIGSTOP/SIGCONT is often taken and yet leaves the main thread asleep;
    aimed at the main thread it is lost far less often (docs/tracking.md has the counts)."""
    import ctypes

    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)  # glibc >= 2.30
    if tgkill is None or tgkill(pid, pid, sig) != 0:
        os.kill(pid, sig)  # no tgkill here (or it failed): the process-wide signal; raises if the pid is gone


def stop(base: Path | None = None, timeout: float = 60.0, nudge_every: float = 5.0) -> ServerInfo | None:
    """SIGTERM the recorded server and wait until it has exited; None if none was running.

    The SIGTERM goes to the server's main thread and is repeated every ``nudge_every``
    seconds while the server runs: right after a SIGSTOP/SIGCONT a SIGTERM is sometimes
    taken (none left pending) while the server keeps serving, its main thread still asleep
    in ``Event.wait()`` (see ``_signal_main_thread``); the next one stopped it. A
    server still running after ``timeout`` seconds is killed (SIGKILL), which loses no
    acknowledged write (``--sync-on-commit``; tests/tracking/test_tracking_server.py kills one after
    writes and reads them back); the kill is written to the server log and on stderr."""
    p = _paths(base)
    with file_lock(p["lock"]):
        info = read_server_state(base)
        if info is None:
            return None
        if not (pid_alive(info.pid) and _serves_folder(info.pid, info.storage)):
            p["state"].unlink()
            return None
        t0, sent = time.monotonic(), None
        while pid_alive(info.pid):
            now = time.monotonic()
            if now - t0 > timeout:
                _kill_unresponsive(info, timeout)
                break
            if sent is None or now - sent > nudge_every:
                with contextlib.suppress(ProcessLookupError):  # it may have exited since the check
                    _signal_main_thread(info.pid, signal.SIGTERM)
                sent = now
            time.sleep(0.1)
        p["state"].unlink()
        return info


def _kill_unresponsive(info: ServerInfo, waited: float) -> None:
    message = (f"the embedded run database (pid {info.pid}) did not exit within {waited:g} s of SIGTERM; "
               f"killed it (SIGKILL: acknowledged writes are on disk with --sync-on-commit)")
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while pid_alive(info.pid):
        if time.monotonic() > deadline:
            raise TrackingError(f"the embedded run database (pid {info.pid}) survived SIGTERM and SIGKILL; "
                                f"its log: {info.log}")
        time.sleep(0.1)
    with contextlib.suppress(OSError), open(info.log, "a") as log:
        log.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {message}\n")
    print(f"{message}; its log: {info.log}", file=sys.stderr)
