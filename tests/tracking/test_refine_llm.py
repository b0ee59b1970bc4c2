"""``refine_texts`` end to end on the demo through a real local LLM (llama-cpp-python's server with
Gemma 3 270M, ``text/llmserver.py``): the agent loop's rounds, the refined kind and its provenance,
a bit-identical rerun from the cache with the server gone, and the API key stored nowhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from descriptions import load_class_texts, refined_file
from experiments.files import PROJECT_ROOT
from text import llmserver
from tracking_support import TINY, cli_env, free_port

LLM_MISSING = None if llmserver.installed() else \
    "the local LLM server is not installed in .tools/llm; run `make llm-tools` (CI's .ci/run does)"
if os.environ.get("PGFA_REQUIRE_TRACKING_TOOLS") == "1" and LLM_MISSING:
    raise RuntimeError(f"PGFA_REQUIRE_TRACKING_TOOLS=1 but: {LLM_MISSING}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(LLM_MISSING is not None, reason=str(LLM_MISSING))]
SECRET = "sk-test-do-not-store-4242"


def refine_command(root, cache, **refine) -> list[str]:
    cfg = {**TINY, "text_kind": "des", "data_root": str(root), "offline": True}
    opts = {"schema_format": "json_object", "pairs": 2, "cache_dir": str(cache), **refine}
    return [sys.executable, "main.py", "refine_texts", "with", *[f"{k}={v}" for k, v in cfg.items()],
            *[f"refine.{k}={v}" for k, v in opts.items()]]


def test_agent_loop_refines_through_the_local_llm_and_a_rerun_is_identical_offline(demo_root, tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    shutil.copytree(demo_root, root)
    env = cli_env(tmp_path / "tracking", free_port(), OPENAI_API_KEY=SECRET)
    # one thread: llama.cpp's threads wait on each other every layer, so on a busy machine (the training
    # subprocess, a second suite) two threads on two cores slowed this test from 98 s to over 900 s
    server = llmserver.start(free_port(), tmp_path / "llm.log", api_key=SECRET, threads=1)
    try:  # round 0 trains on the 'des' texts, round 1 on 'refined_r1' (the server refuses requests without the key)
        loop = subprocess.run(refine_command(root, cache, rounds=1, base_url=server.base_url, model=server.model),
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    assert loop.returncode == 0, loop.stderr[-3000:]
    doc = json.loads(refined_file("demo", root).read_text())
    prov = doc["provenance"]["refined_r1"]
    assert prov["model"] == server.model and prov["base_kind"] == "des" and prov["refined_classes"]
    assert {q["why"] for q in prov["questions"]} <= {"validation confusion", "nearest text of an unseen class"}
    assert not any(q["cached"] for q in prov["questions"])
    texts = load_class_texts("demo", "refined_r1", data_root=root)
    base = load_class_texts("demo", "des", data_root=root)
    changed = [i for i in range(len(base)) if texts[i] != base[i]]
    assert changed == prov["refined_classes"] and all(texts[i].startswith(base[i].rstrip()) for i in changed)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "tracking" / "records").glob("2*/run.json"))]
    assert [r["status"] for r in records] == ["COMPLETED", "COMPLETED"]
    assert records[1]["meta"]["comment"].startswith("refine round 1: text_kind refined_r1 refined from ")
    rounds = [json.loads(p.read_text()) for p in sorted((tmp_path / "tracking" / "records").glob("2*/config.json"))]
    assert [c["text_kind"] for c in rounds] == ["des", "refined_r1"] and [c["tag"] for c in rounds] == \
        ["refined-r0", "refined-r1"]

    # the same questions again, the server gone: every answer from the cache, the same texts and embeddings
    again = subprocess.run(refine_command(root, cache, run=prov["source_run"], kind="refined_again", offline=True,
                                          base_url=server.base_url, model=server.model),
                           cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    prov2 = json.loads(refined_file("demo", root).read_text())["provenance"]["refined_again"]
    assert all(q["cached"] for q in prov2["questions"])
    assert [q["prompt_hash"] for q in prov2["questions"]] == [q["prompt_hash"] for q in prov["questions"]]
    assert load_class_texts("demo", "refined_again", data_root=root) == texts
    language = root / "language"
    assert np.array_equal(np.load(language / "demo_refined_r1_minilm.npy"), np.load(language / "demo_refined_again_minilm.npy"))

    for path in tmp_path.rglob("*"):  # the key is in no stored file: cache, texts, records, logs
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
