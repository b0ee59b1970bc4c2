"""``torchrun`` launches of the real command line: 2 processes with gloo on this CPU, recorded once
by rank 0; a killed rank stops the launch and ``resume=`` continues it."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.files import PROJECT_ROOT
from experiments.tracking import dbserver
from tracking_support import ARTIFACTS, TINY, cli_args, cli_env, database, free_port, needs_server, wait_until

pytestmark = pytest.mark.slow
LAUNCH = [sys.executable, "-m", "torch.distributed.run"]  # what the `torchrun` script runs


def launch(words: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``words``: a ``torchrun ... main.py with ...`` command line; run from the project folder."""
    assert words[0] == "torchrun"
    args = [*LAUNCH, f"--master_port={free_port()}", *words[1:]]
    return subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def torchrun_words(data_root: Path, out_dir: Path, **updates) -> list[str]:
    return ["torchrun", "--nproc_per_node=2", *cli_args(data_root, out_dir, **updates)[1:]]


def records(tracking: Path) -> list[dict]:
    return [json.loads((d / "run.json").read_text()) | {"dir": d}
            for d in sorted((tracking / "records").glob("2*")) if (d / "run.json").is_file()]


@needs_server
def test_a_two_process_launch_is_one_run_that_trains_like_one_process(text_root, tmp_path):
    """Same global batch (64, 32 per rank): the per-epoch losses agree within 5% (each rank's
    BatchNorm normalises its 32 samples, one process its 64: the only difference), and the launch is
    exactly one run in MongoDB and one local record, with one set of checkpoints and artifacts."""
    tracking = tmp_path / "tracking"
    env = cli_env(tracking, free_port())
    try:
        one = subprocess.run(cli_args(text_root, tmp_path / "one"), cwd=PROJECT_ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert one.returncode == 0, one.stderr[-3000:]
        two = launch(torchrun_words(text_root, tmp_path / "two"), env, tmp_path / "two.log")
        assert two.wait(timeout=600) == 0, (tmp_path / "two.log").read_text()[-3000:]
        db = database(dbserver.read_server_state(tracking).url)
        runs = list(db.runs.find())
        assert len(runs) == 2 and len(records(tracking)) == 2  # rank 1 recorded nothing
        launched = [r for r in runs if r["result"].get("processes") == 2]
        single = [r for r in runs if "processes" not in r["result"]]
        assert len(launched) == 1 and len(single) == 1 and launched[0]["status"] == "COMPLETED"
        loss = {r["_id"]: next(m["values"] for m in db.metrics.find({"run_id": r["_id"]}) if m["name"] == "train_loss")
                for r in runs}
        assert len(loss[launched[0]["_id"]]) == TINY["epoch_num"]
        assert loss[launched[0]["_id"]] == pytest.approx(loss[single[0]["_id"]], rel=0.05)
        assert ARTIFACTS <= {p.name for p in (tmp_path / "two").iterdir()} and (tmp_path / "two" / "last.pt").is_file()
    finally:
        dbserver.stop(tracking)


def test_a_killed_rank_stops_the_launch_and_resume_continues_it(text_root, tmp_path):
    """SIGKILL rank 1 once epoch 1 is saved: rank 0's collective fails at once (no hang; failing that,
    ``dist_timeout``), the launch exits non-zero, and the printed ``torchrun ... resume=`` command completes the run from last.pt."""
    tracking, out = tmp_path / "tracking", tmp_path / "run"
    env = cli_env(tracking, free_port())
    proc = launch(torchrun_words(text_root, out, epoch_num=10, offline=True), env, tmp_path / "first.log")
    try:
        wait_until(lambda: (out / "last.pt").is_file(), 300, "epoch 1's last.pt")
        rank1 = wait_until(lambda: [p for p in workers(proc.pid) if p[1] == "1"], 30, "rank 1's process")
        subprocess.run(["kill", "-9", str(rank1[0][0])], check=True)
        assert proc.wait(timeout=120) != 0
    finally:
        proc.kill()
    log = (tmp_path / "first.log").read_text()
    # rank 0 fails on the lost connection, or torchrun's SIGTERM interrupts it first
    assert records(tracking)[0]["status"] in ("FAILED", "INTERRUPTED")
    command = log.split("continue this run with:\n", 1)[1].splitlines()[0].strip()
    assert command.startswith("torchrun --nproc_per_node=2 main.py with ") and f"resume={out}" in command
    again = launch(shlex.split(command), env, tmp_path / "resumed.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    resumed = (tmp_path / "resumed.log").read_text()
    assert f"resuming {out} at epoch" in resumed and "epoch 10/10" in resumed
    done = records(tracking)[1]
    assert done["status"] == "COMPLETED" and done["result"]["processes"] == 2
    metrics = json.loads((done["dir"] / "metrics.json").read_text())
    assert metrics["train_loss"]["steps"] == list(range(10))  # the whole curve, replayed and continued


def workers(parent: int) -> list[tuple[int, str]]:
    """(pid, RANK) of ``parent``'s child processes (torchrun's workers), read from /proc."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError):
            continue
        out.append((int(proc.name), env.get("RANK", "")))
    return out
