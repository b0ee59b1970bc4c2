"""Shared fixtures: a prepared demo data root with MiniLM embeddings, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from data import demo

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    demo.prepare(root)
    return root
