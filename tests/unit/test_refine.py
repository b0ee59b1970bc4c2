"""Description refinement's pure parts (``descriptions/refine.py``) and the endpoint client's cache,
retries and key handling (``text/llm.py``) against a stand-in HTTP endpoint. The real local LLM is
exercised end to end in ``tests/tracking/test_refine_llm.py``."""
from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from descriptions import TextError, load_class_texts, refined_file
from descriptions.refine import (Cue, SelectorError, answer_schema, confused_pairs, nearest_pairs, pair_prompt,
                                 refined_texts, select, unique_pairs, write_refined)
from text.llm import LLMClient, LLMError


def test_questioner_ranks_pairs_by_mutual_confusion_rate():
    classes = [3, 5, 7, 9]
    c = np.array([[8, 2, 0, 0],    # 3: 20 % taken for 5
                  [4, 6, 0, 0],    # 5: 40 % taken for 3   -> (3, 5): 0.6
                  [0, 0, 5, 5],    # 7: 50 % taken for 9   -> (7, 9): 0.5 + 0.1
                  [0, 1, 1, 8]])   # 9: 10 % for 5, 10 % for 7 -> (5, 9): 0.1
    pairs = confused_pairs(c, classes, k=3)
    assert [(a, b) for a, b, _ in pairs] == [(3, 5), (7, 9), (5, 9)]
    assert pairs[0][2] == pytest.approx(0.6) and pairs[1][2] == pytest.approx(0.6)
    assert confused_pairs(np.eye(4), classes, k=3) == []  # nothing confused: nothing asked
    with pytest.raises(ValueError, match="shape"):
        confused_pairs(np.eye(3), classes, k=1)


def test_unseen_classes_are_paired_with_their_nearest_text():
    text = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.2]], dtype=np.float32)
    pairs = nearest_pairs(text, targets=[0, 3], among=[0, 1, 2, 3])
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (3, 2)]
    assert unique_pairs([(0, 1, 0.9), (1, 0, 0.9), (3, 2, 0.5)]) == [(0, 1, 0.9), (3, 2, 0.5)]


def answer(**cues) -> str:
    return json.dumps({label: {"right_arm": cue, "torso": "stays upright"} for label, cue in cues.items()})


def test_selector_accepts_a_well_formed_answer_even_fenced():
    requested = {"swipe left": 0, "swipe right": 1}
    text = "```json\n" + answer(**{"swipe left": "moves from right to left", "swipe right": "moves outwards"}) + "\n```"
    cues = select(text, requested)
    assert Cue(0, "right_arm", "moves from right to left") in cues and len(cues) == 4


@pytest.mark.parametrize("text, message", [
    ("the right arm moves", "not JSON"),
    ("[1, 2]", "not an object"),
    (answer(**{"swipe left": "moves left"}), "missing \\['swipe right'\\]"),
    (answer(**{"swipe left": "arm sweeps", "swipe right": "arm sweeps", "jump": "legs push"}), "unknown \\['jump'\\]"),
    (json.dumps({"swipe left": {"tail": "wags"}, "swipe right": {"torso": "stays still"}}), "unknown body part 'tail'"),
    (json.dumps({"swipe left": {"torso": ""}, "swipe right": {"torso": "stays still"}}), "one line of 8-120"),
    (json.dumps({"swipe left": {"torso": "x" * 121}, "swipe right": {"torso": "stays still"}}), "one line of 8-120"),
    (json.dumps({"swipe left": {"torso": 3}, "swipe right": {"torso": "stays still"}}), "one line"),
    (json.dumps({"swipe left": {"torso": "........"}, "swipe right": {"torso": "stays still"}}), "two words"),
    (json.dumps({"swipe left": {}, "swipe right": {"torso": "stays still"}}), "expected an object"),
])
def test_selector_refuses_malformed_answers_naming_the_fault(text, message):
    with pytest.raises(SelectorError, match=message):
        select(text, {"swipe left": 0, "swipe right": 1})


def test_the_schema_pattern_admits_only_what_the_selector_accepts():
    import re

    from descriptions.refine import CUE_PATTERN

    for cue in ("arm sweeps left", "right-hand moves out", "knees bend deeply, then straighten"):
        assert re.match(CUE_PATTERN, cue) and select(answer(a=cue), {"a": 0})
    for cue in ("...", "y/n:1000", "a b c d e f", "right", "x" * 130):
        assert not re.match(CUE_PATTERN, cue)


def test_prompt_names_both_actions_and_every_part_and_its_schema_requires_them():
    labels, des = ["wave", "clap", "jump"], ["hand waves", "hands meet", "feet leave the floor"]
    messages, schema = pair_prompt(labels, des, 0, 2)
    user = messages[-1]["content"]
    assert '"wave": hand waves' in user and '"jump": feet leave the floor' in user and "clap" not in user
    assert all(p in user for p in ("torso", "left_arm", "right_leg"))
    assert schema == answer_schema(["wave", "jump"]) and schema["required"] == ["wave", "jump"]


def test_refined_kind_is_written_beside_the_data_and_loads_as_a_kind(tmp_path):
    cues = [Cue(2, "right_arm", "the forearm swings side to side"), Cue(2, "torso", "stays still."),
            Cue(2, "right_arm", "the forearm swings side to side")]
    path = write_refined(tmp_path, "demo", "refined", "des", cues, {"model": "m", "source_run": "7"})
    assert path == refined_file("demo", tmp_path)
    base = load_class_texts("demo", "des", data_root=tmp_path)
    new = load_class_texts("demo", "refined", data_root=tmp_path)
    assert new[2] == f"{base[2].rstrip()} Torso: stays still. Right arm: the forearm swings side to side."
    assert [t for i, t in enumerate(new) if i != 2] == [t for i, t in enumerate(base) if i != 2]
    prov = json.loads(path.read_text())["provenance"]["refined"]
    assert prov["refined_classes"] == [2] and prov["source_run"] == "7" and len(prov["cues"]) == 3
    write_refined(tmp_path, "demo", "refined", "des", [], {})  # a rewrite of the same kind is allowed
    assert load_class_texts("demo", "refined", data_root=tmp_path) == base
    with pytest.raises(TextError, match="one of demo's own"):
        write_refined(tmp_path, "demo", "des", "labels", cues, {})
    assert refined_texts(["a."], []) == ["a."]


def test_validation_samples_are_read_without_the_unseen_part(demo_root, tmp_path):
    """``load_validation`` opens only the seen-class part: with the unseen files garbage it still works."""
    from sacred.initialize import create_run

    from config import ex
    from data.catalog import get_dataset
    from data.loading import load_validation, load_zero_shot

    root = tmp_path / "root"
    shutil.copytree(demo_root, root)
    for f in (root / "zeroshot" / "demo" / "split_1").glob("unseen_*"):
        f.write_bytes(b"not an array")
    spec = get_dataset("demo", root)
    cfg = create_run(ex, "print_config", {"data_root": str(root)}).config
    val = load_validation(root, spec, 1, cfg["unseen_classes"], cfg["val_classes"], 50)
    assert sorted(set(val.y.tolist())) == sorted(cfg["val_classes"]) and len(val) > 0
    with pytest.raises(Exception, match="unseen"):
        load_zero_shot(root, spec, 1, cfg["unseen_classes"], cfg["val_classes"], 50)


class StandIn(BaseHTTPRequestHandler):
    """A stand-in endpoint (not an LLM): records each request and its Authorization header; answers
    from ``replies`` in order (an int is an HTTP error status)."""
    seen: list = []
    replies: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        reply = StandIn.replies.pop(0)
        if isinstance(reply, int):
            self.send_response(reply)
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    server = HTTPServer(("127.0.0.1", 0), StandIn)
    StandIn.seen, StandIn.replies = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_client_caches_by_prompt_sends_the_key_and_never_stores_it(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-123")
    StandIn.replies = [503, '{"a": 1}']  # a busy server, then an answer
    llm = LLMClient(stand_in, "m", tmp_path / "cache", api_key_env="MY_LLM_KEY", retries=2,
                    schema_format="json_object")
    first = llm.chat([{"role": "user", "content": "hi"}], schema={"type": "object"})
    assert (first.text, first.cached) == ('{"a": 1}', False) and len(StandIn.seen) == 2
    assert StandIn.seen[-1]["path"] == "/v1/chat/completions" and StandIn.seen[-1]["auth"] == "Bearer sk-secret-123"
    assert StandIn.seen[-1]["body"]["response_format"] == {"type": "json_object", "schema": {"type": "object"}}
    again = llm.chat([{"role": "user", "content": "hi"}], schema={"type": "object"})
    assert (again.text, again.cached, again.prompt_hash) == (first.text, True, first.prompt_hash)
    assert len(StandIn.seen) == 2  # answered from the cache
    stored = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert "sk-secret-123" not in stored and first.prompt_hash in "".join(str(p) for p in (tmp_path / "cache").rglob("*"))
    offline = LLMClient("", "m", tmp_path / "cache", offline=True, schema_format="json_object")
    assert offline.chat([{"role": "user", "content": "hi"}], schema={"type": "object"}).text == first.text
    with pytest.raises(LLMError, match="not cached"):
        offline.chat([{"role": "user", "content": "other"}])


def test_client_names_the_endpoint_when_it_refuses(stand_in, tmp_path):
    StandIn.replies = [401]
    with pytest.raises(LLMError, match="HTTP 401") as err:
        LLMClient(stand_in, "m", tmp_path, retries=3).chat([{"role": "user", "content": "x"}])
    assert stand_in in str(err.value) and len(StandIn.seen) == 1  # a refused key is not retried
    with pytest.raises(ValueError, match="schema_format"):
        LLMClient(stand_in, "m", tmp_path, schema_format="xml")
