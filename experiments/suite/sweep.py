"""Sweeps: a grid of datasets × splits × seeds × variants, one Sacred run per point.

Each point runs as its own ``python main.py with ...`` process (a crash or a kill ends one
point, not the sweep) and is recorded like any run. Before starting a point the sweep asks
the database whether a COMPLETED run with exactly that point's settings exists, and skips
it if so: a sweep can be stopped at any moment and started again, and a rerun of a finished
sweep starts nothing.

Several workers share a grid: the threads of one sweep (``workers``), and sweeps started on
other machines against the same database. A worker claims a point in the ``claims`` collection
before running it and renews the claim while the point runs (``experiments/suite/claims.py``);
a point claimed by a live worker is left to it, one whose worker died is taken over once the
claim's lease has run out.

A variant is a name and a dict of config overrides (``{"labels": {"text_kind": "labels"}}``);
the name is stored as the run's ``tag``, which the results table groups by.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pymongo.errors

from experiments.files import PROJECT_ROOT, WORK_ROOT
from experiments.suite.claims import DONE, FAILED, RELEASED, Claims, Clock, point_identity, point_key, server_clock, \
    worker_id
from experiments.tracking.database import MONGO_URL_ENV
from experiments.suite.grid import Point
from experiments.tracking.output import redact_text

DEFAULT_LEASE_S = 120.0  # a claim lapses this long after its worker's last heartbeat
POLL_MAX_S = 30.0  # a waiting worker looks again at least this often
LOG_DIR = WORK_ROOT / "logs" / "sweep"  # the output of each point's run when several run at once


def completed_query(point: Point) -> dict:
    """The MongoDB filter matching a COMPLETED run recorded with exactly this point's settings, its
    dataset's defaults included (as stored: credentials in URLs redacted; ``data_root``, which differs
    between machines, left out)."""
    return {"status": "COMPLETED", **{f"config.{k}": v for k, v in point_identity(point.settings()).items()}}


def is_completed(db, point: Point) -> bool:
    return db.runs.count_documents(completed_query(point), limit=1) > 0


def command(point: Point, python: str = sys.executable) -> list[str]:
    """The ``main.py`` command line of a point (values as Python literals, which Sacred parses)."""
    return [python, str(PROJECT_ROOT / "main.py"), "with", *[f"{k}={v!r}" for k, v in point.updates().items()]]


def poll_interval(lease_s: float) -> float:
    """How often a worker waiting for points held by others looks again."""
    return min(POLL_MAX_S, max(0.5, lease_s / 4))


def _say(message: str) -> None:
    print(message, flush=True)


# What happened to a point, as run_sweep reports it. A worker's own result (completed, failed)
# outranks what another worker saw of the same point (skipped, claimed, failed_elsewhere).
RAN = ("completed", "failed")
KINDS = ("skipped", "completed", "failed", "planned", "claimed", "failed_elsewhere")
KIND_WORDS = {"claimed": "still running in other workers", "failed_elsewhere": "failed in other workers"}


class _Sweep:
    """The points and the shared state of one sweep's local workers (threads)."""

    def __init__(self, points: list[Point], db, log, *, wait: bool, poll_s: float, many: bool):
        self.points, self.db, self.wait, self.poll_s, self.many = points, db, wait, poll_s, many
        self.stop = threading.Event()  # Ctrl-C, an interrupted point, or a worker's error: start nothing more
        self.lock = threading.Lock()
        self.changed = threading.Condition()  # a local worker ended a point (or the sweep stops): look again
        self.generation = 0
        self.kinds: dict[int, str] = {}
        self.children: set[subprocess.Popen] = set()
        self.errors: list[Exception] = []
        self.workers: set[str] = set()  # the ids of this sweep's workers
        self.running_workers = 0
        self._log = log

    def log(self, message: str) -> None:
        with self.lock:
            self._log(message)

    def wake(self, stop: bool = False) -> None:
        if stop:
            self.stop.set()
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def pause(self, generation: int) -> None:
        """Wait ``poll_s``, or less if a local worker has ended a point since ``generation``."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != generation or self.stop.is_set(), self.poll_s)

    def note(self, i: int, kind: str) -> bool:
        """Record what happened to point ``i``; True if no local worker had said anything of it yet."""
        with self.lock:
            first = i not in self.kinds
            if self.kinds.get(i) not in RAN:
                self.kinds[i] = kind
            return first

    def outcome(self) -> dict[str, list[str]]:
        done: dict[str, list[str]] = {k: [] for k in KINDS}
        for i, point in enumerate(self.points):
            if i in self.kinds:
                done[self.kinds[i]].append(point.label())
        return done

    def head(self, i: int, index: int) -> str:
        who = f"w{index} " if self.many else ""
        return f"{who}[{i + 1}/{len(self.points)}] {self.points[i].label()}"

    def work(self, claims: Claims, env: dict[str, str], index: int) -> None:
        """One worker: claim and run points until each is COMPLETED, failed, or (``wait=False``) held
        by another worker; with ``wait``, points held by live others are looked at again every
        ``poll_s`` until they finish or their lease expires (then this worker takes them over)."""
        try:
            self._work(claims, env, index)
        except Exception as exc:  # a database error: stop the other workers too; run_sweep raises it
            with self.lock:
                self.errors.append(exc)
            self.wake(stop=True)
        finally:
            with self.lock:
                self.running_workers -= 1

    def _work(self, claims: Claims, env: dict[str, str], index: int) -> None:
        todo, holders = list(range(len(self.points))), {}  # point -> the other sweep's worker seen holding it
        while todo and not self.stop.is_set():
            held, generation = [], self.generation
            for i in todo:
                if self.stop.is_set():
                    return
                point, head = self.points[i], self.head(i, index)
                if is_completed(self.db, point):
                    if self.note(i, "skipped"):
                        self.log(f"{head}: already COMPLETED, skipped")
                    continue
                key = point_key(point.settings())
                if not claims.claim(key, label=redact_text(point.label()), point=point_identity(point.settings())):
                    doc = claims.holder(key) or {}
                    if doc.get("state") == FAILED:  # failed after this worker started: left to a later sweep
                        if self.note(i, "failed_elsewhere"):
                            self.log(f"{head}: failed in worker {doc.get('worker')} (exit status {doc.get('rc')}); "
                                     "a later sweep retries it")
                        continue
                    held.append(i)
                    if i not in holders and doc.get("worker") not in self.workers:
                        holders[i] = doc.get("worker", "?")
                        self.log(f"{head}: running in worker {holders[i]}")
                    continue
                if is_completed(self.db, point):  # completed elsewhere between the two look-ups
                    self._end(claims, key, DONE, 0, head)
                    if self.note(i, "skipped"):
                        self.log(f"{head}: already COMPLETED, skipped")
                    continue
                if i in holders:
                    self.log(f"{head}: taken over from worker {holders[i]} (its lease ran out or it let go)")
                self._run(i, key, claims, env, head)
            if held and not self.wait:
                for i in held:
                    self.note(i, "claimed")
                return
            todo = held
            if todo:
                self.pause(generation)

    def _run(self, i: int, key: str, claims: Claims, env: dict[str, str], head: str) -> None:
        point = self.points[i]
        out = _output_file(point) if self.many else None  # K workers' output would interleave on the console
        self.log(f"{head}: running" + (f" (output: {out.name})" if out else ""))
        finished, lost = threading.Event(), threading.Event()
        try:
            try:
                proc = subprocess.Popen(command(point), cwd=WORK_ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT if out else None)
            except OSError:
                self._end(claims, key, RELEASED, None, head)
                raise
            with self.lock:
                self.children.add(proc)
            beat = threading.Thread(target=self._heartbeat, args=(claims, key, proc, finished, lost, head),
                                    name=f"heartbeat-{key[:8]}", daemon=True)
            beat.start()
            rc = proc.wait()
            finished.set()
            beat.join()
            with self.lock:
                self.children.discard(proc)
        finally:
            if out:
                out.close()
        interrupted = rc in (-2, 130) or self.stop.is_set()  # Ctrl-C: stop the sweep, not just this point
        if rc == 0:
            self.note(i, "completed")
            self._end(claims, key, DONE, rc, head)
        elif lost.is_set():
            self.note(i, "failed")
            self.log(f"{head}: stopped (exit status {rc}); the worker that took it over runs it")
        elif interrupted:
            self.note(i, "failed")
            self._end(claims, key, RELEASED, rc, head)
            self.log(f"{head}: interrupted (exit status {rc}, recorded as INTERRUPTED); released for the next sweep")
        else:
            self.note(i, "failed")
            self._end(claims, key, FAILED, rc, head)
            self.log(f"{head}: exit status {rc} (recorded as FAILED or INTERRUPTED; a rerun of the sweep retries it)")
        self.wake(stop=interrupted and rc != 0)  # the other local workers look again (or stop)

    def _end(self, claims: Claims, key: str, state: str, rc: int | None, head: str) -> None:
        try:
            claims.finish(key, state, rc)
        except pymongo.errors.PyMongoError as exc:  # the claim expires after its lease anyway
            self.log(f"{head}: could not mark its claim {state} ({type(exc).__name__}); it expires after the lease")

    def _heartbeat(self, claims: Claims, key: str, proc: subprocess.Popen, finished: threading.Event,
                   lost: threading.Event, head: str) -> None:
        """Extend the claim every third of a lease while the point runs; stop the point if another
        worker has taken it over (this worker's heartbeats did not reach the database for a lease)."""
        failing = False
        while not finished.wait(claims.lease_s / 3):
            try:
                mine = claims.beat(key)
            except pymongo.errors.PyMongoError as exc:
                if not failing:
                    self.log(f"{head}: heartbeat failed ({type(exc).__name__}); trying again")
                failing = True
                continue
            failing = False
            if not mine:
                lost.set()
                self.log(f"{head}: lost its claim (no heartbeat for a lease; another worker took it over): "
                         "stopping this run")
                proc.send_signal(signal.SIGINT)
                return

    def finished(self, timeout_s: float | None = None) -> bool:
        """Wait until every worker has returned (True), or ``timeout_s`` (False).

        Polls rather than ``Thread.join``: in Python 3.11 a join interrupted by Ctrl-C marks a
        thread that still runs as stopped, and every later join returns at once."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.running_workers:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def interrupt(self, grace_s: float = 10.0, patience_s: float = 60.0) -> None:
        """Ctrl-C or SIGTERM of the sweep: start nothing more. A terminal's Ctrl-C has reached the
        points' runs too; those still running after ``grace_s`` (the sweep alone was signalled) get
        one SIGINT, and are killed if they have not ended ``patience_s`` later. Their workers
        release their claims."""
        self.wake(stop=True)
        for wait_s, sig in ((grace_s, signal.SIGINT), (patience_s, signal.SIGKILL)):
            if self.finished(wait_s):
                return
            with self.lock:
                running = list(self.children)  # a worker drops its run once it has ended
            for proc in running:
                self.log(f"sweep: sending {sig.name} to run process {proc.pid}")
                proc.send_signal(sig)
        self.finished()


def _output_file(point: Point):
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", f"{point.dataset}-split{point.split}-seed{point.seed}-{point.variant}")
    return open(LOG_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.log", "ab")


def run_sweep(points: list[Point], db, *, dry_run: bool = False, log=_say, mongo_url: str = "", workers: int = 1,
              devices: list | tuple = (), lease_s: float = DEFAULT_LEASE_S, wait: bool = True,
              clock: Clock | None = None) -> dict[str, list[str]]:
    """Run the points not yet COMPLETED in ``db``, one process each, with ``workers`` local workers;
    returns what happened to each point (``KINDS``).

    Every worker claims a point in ``db.claims`` before running it (``experiments/suite/claims.py``),
    so workers of other sweeps on the same grid and database (other machines) share the grid: no
    point runs twice, and a point whose worker died is taken over after its lease.

    Args:
        mongo_url: the database the sweep asked, handed to every point's run through
            ``$PGFA_MONGO_URL`` (not its command line, which any user of the machine can read), so
            the runs are recorded where the sweep looks for them.
        workers: points run at once on this machine (each a worker of its own, with its own claims).
        devices: ``CUDA_VISIBLE_DEVICES`` of the workers' runs, round-robin (``[0, 1]``, ``["0,1", "2,3"]``);
            empty = inherited.
        lease_s: a claim lapses this long after its worker's last heartbeat (every ``lease_s / 3``).
        wait: when the points left are held by live workers elsewhere, wait until they are COMPLETED,
            failed or expired (True), or return at once (False).
        clock: the time claims are stamped with; the database server's unless a test fakes it.
    """
    if dry_run:
        return _plan(points, db, log)
    if int(workers) < 1:
        raise ValueError(f"sweep.workers must be at least 1, not {workers}")
    env = {**os.environ, MONGO_URL_ENV: mongo_url} if mongo_url else dict(os.environ)
    clock = clock or server_clock(db)
    sweep = _Sweep(points, db, log, wait=wait, poll_s=poll_interval(lease_s), many=int(workers) > 1)
    threads = []
    for index in range(int(workers)):
        worker_env = {**env, "CUDA_VISIBLE_DEVICES": str(devices[index % len(devices)])} if devices else env
        claims = Claims(db.claims, worker_id(index), lease_s, clock)
        sweep.workers.add(claims.worker)
        if int(workers) > 1:
            device = f", CUDA_VISIBLE_DEVICES={worker_env['CUDA_VISIBLE_DEVICES']}" if devices else ""
            sweep.log(f"w{index}: worker {claims.worker}{device}")
        threads.append(threading.Thread(target=sweep.work, args=(claims, worker_env, index), name=f"sweep-w{index}",
                                        daemon=True))
    sweep.running_workers = len(threads)
    for t in threads:
        t.start()
    try:
        sweep.finished()
    except KeyboardInterrupt:
        sweep.interrupt()
        _report(sweep.outcome(), log)
        raise
    if sweep.errors:
        raise sweep.errors[0]
    return _report(sweep.outcome(), log)


def _report(done: dict[str, list[str]], log) -> dict[str, list[str]]:
    log("sweep: " + ", ".join(f"{len(v)} {KIND_WORDS.get(k, k)}" for k, v in done.items() if v))
    return done


def _plan(points: list[Point], db, log) -> dict[str, list[str]]:
    """``dry_run``: what a sweep would run; starts and claims nothing."""
    done: dict[str, list[str]] = {k: [] for k in KINDS}
    for i, point in enumerate(points, 1):
        head = f"[{i}/{len(points)}] {point.label()}"
        if is_completed(db, point):
            done["skipped"].append(point.label())
            log(f"{head}: already COMPLETED, skipped")
        else:
            done["planned"].append(point.label())
            log(f"{head}: would run: {redact_text(' '.join(command(point)[1:]))}")
    return _report(done, log)
