"""Shared fixtures: a prepared demo data root with MiniLM embeddings, built once per session,
and the real recordings in ``../shared/data`` (tests that need them skip when they are absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from data import demo

# Real recordings made by other people (never committed): $PGFA_SHARED_DATA, else ../shared/data
# beside the project folder.
SHARED_DATA = Path(os.environ.get("PGFA_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")


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
