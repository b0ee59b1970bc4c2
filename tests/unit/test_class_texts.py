"""Class texts of every real dataset, borrowed texts, and the embedding of every (dataset, kind, model)."""
import json

import pytest

import descriptions
import main
from data.catalog import DATASETS
from descriptions import TextError, load_class_texts, text_kinds
from text import embeddings

REAL = {"ntu60": 60, "ntu120": 120, "pku": 51, "utd_mhad": 27, "nw_ucla": 10}


@pytest.mark.parametrize("dataset", sorted(REAL))
def test_every_class_has_three_distinct_texts(dataset):
    n = REAL[dataset]
    assert DATASETS[dataset].num_classes == n
    assert text_kinds(dataset) == ["labels", "des", "parts"]
    for kind in ("labels", "des", "parts"):
        texts = load_class_texts(dataset, kind, num_classes=n)
        assert len(set(texts)) == n, f"{dataset} {kind}: repeated texts"
        if kind != "labels":  # a sentence or two, not a label
            assert all(t.endswith(".") and 5 <= len(t.split()) <= 60 for t in texts), (dataset, kind)
            assert all(t.count(".") <= 2 for t in texts), (dataset, kind)


def test_borrowed_texts():
    ntu120 = {k: load_class_texts("ntu120", k) for k in ("labels", "des", "parts")}
    for kind, texts in ntu120.items():
        assert load_class_texts("ntu60", kind) == texts[:60]
    assert ntu120["labels"][0] == "drink water" and ntu120["labels"][119].startswith("finger-guessing game")
    pku = {k: load_class_texts("pku", k) for k in ("labels", "des")}
    assert pku["labels"][0] == "bow" and pku["labels"][50] == "writing" and pku["labels"][33] == "standing up"
    assert pku["des"][7] == ntu120["des"][0]  # PKU "drink water" borrows NTU's A001 description
    assert pku["des"][0] != ntu120["des"][34]  # "bow" has its own (NTU's A035 is "nod head/bow")
    # the borrowed actions are the same actions: the PKU label appears in NTU's label
    doc = json.loads((descriptions.DESCRIPTIONS_DIR / "pku.json").read_text())
    for rec in doc["classes"]:
        if "from" in rec:
            assert rec["labels"].split(" (")[0] in ntu120["labels"][rec["from"]], rec


def test_bad_borrowing(tmp_path, monkeypatch):
    monkeypatch.setattr(descriptions, "DESCRIPTIONS_DIR", tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({"based_on": "b", "classes": [{"id": 0, "from": 0}]}))
    (tmp_path / "b.json").write_text(json.dumps({"based_on": "a", "kinds": {"labels": ""},
                                                 "classes": [{"id": 0, "labels": "x"}]}))
    with pytest.raises(TextError, match="cycle: a -> b -> a"):
        load_class_texts("a", "labels")
    (tmp_path / "b.json").write_text(json.dumps({"kinds": {"labels": ""}, "classes": [{"id": 0, "labels": "x"}]}))
    assert load_class_texts("a", "labels") == ["x"]
    (tmp_path / "a.json").write_text(json.dumps({"based_on": "b", "classes": [{"id": 0, "from": 3}]}))
    with pytest.raises(TextError, match="class 0 borrows from b class 3, which does not exist"):
        load_class_texts("a", "labels")
    (tmp_path / "a.json").write_text(json.dumps({"classes": [{"id": 0, "from": 0}]}))
    with pytest.raises(TextError, match="no 'based_on' dataset"):
        load_class_texts("a", "labels")


def test_embed_all_writes_every_dataset_and_kind(tmp_path, monkeypatch):
    """Every (dataset, kind) gets a file per model; MiniLM stands in for both models to keep this quick."""
    monkeypatch.setattr("text.models.MODELS", {"minilm": None})  # embed_all reads it when called
    written = main.ex.run("embed_all", config_updates={"data_root": str(tmp_path)},
                          options={"--loglevel": "ERROR"}).result
    expected = {(ds, k) for ds in list(REAL) + ["demo"] for k in ("labels", "des", "parts")}
    assert {tuple(p.split("/")[-1][: -len("_minilm.npy")].rsplit("_", 1)) for p in written} == expected
    for ds, n in REAL.items():
        emb = embeddings.load(tmp_path, ds, "parts", "minilm", num_classes=n, dim=384, build_missing=False)
        assert emb.shape == (n, 384)
