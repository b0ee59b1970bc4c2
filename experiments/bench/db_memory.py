"""Resident memory of the embedded run database under a recorded sweep's writes (not a test).

    python -m experiments.bench.db_memory --runs 16
    python -m experiments.bench.db_memory --runs 16 --artifact-mb 27   # the table in docs/tracking.md

Starts two throwaway SecantusDB servers one after the other, with the flags the project starts its own
with (``dbserver.server_command``): one in the environment the project gives it, glibc's mmap threshold
fixed at 128 KiB (``dbserver.server_environment``), one in this environment as it is. Each gets the same
writes: ``--runs`` simulated recorded runs, two at a time on their own connections as two workers of
a sweep write, each as Sacred's MongoObserver writes one: the run document, a heartbeat per epoch
(captured output growing), the metrics pushed per epoch by (run, name), then its artifacts through
GridFS (a checkpoint of ``--artifact-mb`` MB and three small files) and the final status. Prints the
server's resident size (VmRSS) after each pair of runs, and the bytes written so far. Needs the
server installed (``make tracking-tools``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from experiments.bench.ddp_throughput import free_port
from experiments.bench.workloads import cpu_description
from experiments.tracking import dbserver


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def simulated_run(url: str, run_id: int, epochs: int, artifact_mb: float) -> int:
    """One run's writes, as Sacred's MongoObserver makes them; returns the bytes of its artifacts."""
    import gridfs
    import pymongo

    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    try:
        db = client.bench
        db.runs.insert_one({"_id": run_id, "status": "RUNNING", "config": {f"key{i}": i for i in range(200)},
                            "captured_out": "", "info": {}})
        out = ""
        for epoch in range(epochs):
            out += f"INFO - pgfa - epoch {epoch + 1}/{epochs}  loss 0.5  unseen_top1_monitor 50.0%\n" * 8
            db.runs.update_one({"_id": run_id}, {"$set": {"captured_out": out, "heartbeat": time.time(),
                                                          "info": {"epoch": epoch}}})
            for name in ("loss", "lr", "val_top1", "unseen_top1_monitor", "unseen_top1_aligned_monitor"):
                db.metrics.update_one({"run_id": run_id, "name": name},
                                      {"$push": {"steps": epoch, "values": 0.5, "timestamps": time.time()}},
                                      upsert=True)
        fs = gridfs.GridFS(db)
        blobs = [os.urandom(int(artifact_mb * 2**20))] + [os.urandom(60 * 1024) for _ in range(3)]
        for i, blob in enumerate(blobs):
            fs.put(blob, filename=f"run{run_id}/artifact{i}")
        db.runs.update_one({"_id": run_id}, {"$set": {"status": "COMPLETED"}})
        return sum(len(b) for b in blobs)
    finally:
        client.close()


def measure(malloc_tuned: bool, runs: int, epochs: int, artifact_mb: float) -> tuple[list, float]:
    """(runs done, MB written, resident MB) after each pair of runs, on a fresh server; the seconds the
    writes took."""
    exe = dbserver.server_executable()
    if not exe.is_file():
        raise SystemExit(f"SecantusDB is not installed ({exe}): make tracking-tools")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "secantusd.toml"
        config.write_text("# empty: flags only\n")
        port = free_port()
        cmd = dbserver.server_command(exe, config, port, Path(tmp) / "db")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dbserver.server_environment(malloc_tuned))
        url = f"mongodb://{dbserver.SERVER_HOST}:{port}/"
        try:
            dbserver.wait_until_answering(proc, url, timeout=60)
            rows, written, t0 = [], 0, time.perf_counter()
            for first in range(0, runs, 2):
                sizes = [0, 0]
                threads = [threading.Thread(target=lambda k=k: sizes.__setitem__(
                    k, simulated_run(url, first + k, epochs, artifact_mb))) for k in range(min(2, runs - first))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                written += sum(sizes)
                rows.append((first + len(threads), written / 2**20, resident_mb(proc.pid)))
            return rows, time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--artifact-mb", type=float, default=4.0, help="the checkpoint's size (a zero-shot best.pt: 4)")
    a = ap.parse_args(argv)
    print(f"CPU: {cpu_description()}; {a.runs} runs, 2 at a time, {a.epochs} epochs, a {a.artifact_mb:g} MB "
          f"checkpoint each")
    tuned, tuned_s = measure(True, a.runs, a.epochs, a.artifact_mb)
    plain, plain_s = measure(False, a.runs, a.epochs, a.artifact_mb)
    print("| runs | MB written | resident MB, mmap threshold fixed (the project's) | resident MB, glibc's default |")
    print("|---|---|---|---|")
    for (n, mb, rss_tuned), (_, _, rss_plain) in zip(tuned, plain):
        print(f"| {n} | {mb:.0f} | {rss_tuned:.0f} | {rss_plain:.0f} |")
    print(f"seconds for the writes: {tuned_s:.1f} (the project's) against {plain_s:.1f} (glibc's default)")


if __name__ == "__main__":
    main()
