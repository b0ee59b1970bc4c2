"""Shared fixtures: a prepared demo data root with MiniLM embeddings, built once per session,
and the real recordings in ``../shared/data`` (tests that need them skip when they are absent).

Tests are grouped by concern in folders (unit, data, train, tracking, browser, gpu, bench);
each test also carries its folder's marker, so ``pytest -m "unit or data"`` selects groups."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from data import demo

# Real recordings made by other people (never committed): $PGFA_SHARED_DATA, else ../shared/data
# beside the project folder.
SHARED_DATA = Path(os.environ.get("PGFA_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")


GROUPS = ("unit", "data", "train", "tracking", "browser", "gpu", "bench")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        group = Path(str(item.fspath)).parent.name
        if group in GROUPS:
            item.add_marker(getattr(pytest.mark, group))


def shared(*parts: str) -> Path:
    """A path inside the shared recordings, or a skip naming where they were looked for."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real recordings not found at {path} (set PGFA_SHARED_DATA to the folder holding "
                    "ntu_raw/, utd_mhad/, nw_ucla/)")
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    demo.prepare(root)
    return root


@pytest.fixture(scope="session")
def text_root(demo_root) -> Path:
    """``demo_root`` with the MiniLM label embeddings built, so concurrent runs do not all build them."""
    from text import embeddings

    embeddings.build(demo_root, "demo", "labels", "minilm", 30)
    return demo_root


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> Path:
    """A private tracking folder (server data, records) and server port; the server is stopped afterwards."""
    from experiments.tracking import dbserver
    from tracking_support import free_port

    base = tmp_path / "tracking"
    monkeypatch.setenv("PGFA_TRACKING_DIR", str(base))
    monkeypatch.setenv("PGFA_DB_PORT", str(free_port()))
    monkeypatch.delenv("PGFA_MONGO_URL", raising=False)
    yield base
    dbserver.stop(base)


@pytest.fixture(scope="session")
def two_cli_runs(text_root, tmp_path_factory):
    """Two tiny ``python main.py with ...`` runs started at once with no server running yet
    (a private tracking folder); shared by the run and the Omniboard tests."""
    from experiments.tracking import dbserver
    from tracking_support import cli_args, cli_env, free_port, start_cli

    tmp = tmp_path_factory.mktemp("cli")
    tracking = tmp / "tracking"
    env = cli_env(tracking, free_port())
    procs = [start_cli(cli_args(text_root, tmp / f"ckpt{i}", seed=i), env, tmp / f"run{i}.log") for i in range(2)]
    codes = [p.wait(timeout=900) for p in procs]
    logs = [(tmp / f"run{i}.log").read_text() for i in range(2)]
    yield {"tracking": tracking, "codes": codes, "logs": logs, "info": dbserver.read_server_state(tracking), "env": env}
    dbserver.stop(tracking)


class Interrupted(Exception):
    """Raised by ``stop_after_first_epoch`` where a kill would have struck."""


@pytest.fixture
def stop_after_first_epoch(monkeypatch):
    """While on (from the start), a run stops (``Interrupted``) right after epoch 1's ``last.pt`` is
    written, as a kill would; ``.off()`` lets runs go on, ``.on()`` arms it again."""
    from experiments.train import loop

    real = loop.save_state

    def save_then_stop(path, **kw):
        real(path, **kw)
        if kw["next_epoch"] == 1:
            raise Interrupted

    class Switch:
        error = Interrupted

        @staticmethod
        def off():
            monkeypatch.setattr(loop, "save_state", real)

        @staticmethod
        def on():
            monkeypatch.setattr(loop, "save_state", save_then_stop)

        @staticmethod
        def reference_and_resumed(run, ref, victim, **opts) -> tuple[dict, dict]:
            """``run(root_out, **opts)``'s result uninterrupted (in ``ref``), and that of a run in
            ``victim`` stopped after epoch 1 and resumed from its folder."""
            Switch.off()
            reference = run(ref, **opts)
            Switch.on()
            with pytest.raises(Interrupted):
                run(victim, **opts)
            Switch.off()
            return reference, run(victim, resume=str(victim), **opts)

    Switch.on()
    return Switch
