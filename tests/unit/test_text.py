"""Offline Sentence-BERT models, class texts and the embedding cache."""
import json

import numpy as np
import pytest

import descriptions
from descriptions import TextError, load_class_texts
from text import embeddings
from text.embeddings import EmbeddingError
from text.models import MODELS, locate

SENTENCES = ["A person waves the right hand above the head.",
             "Someone raises the right arm and shakes the hand in greeting.",
             "The stock market closed lower on Tuesday."]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_offline_model_gives_real_embeddings(model):
    emb = embeddings.encode(SENTENCES, model)
    assert emb.shape == (3, MODELS[model].dim) and emb.dtype == np.float32
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = unit @ unit.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    assert (locate(model) / "modules.json").is_file()


def test_demo_texts_cover_every_class():
    for kind in ("labels", "des", "parts"):
        texts = load_class_texts("demo", kind, num_classes=30)
        assert len(set(texts)) == 30
    assert "left arm" in load_class_texts("demo", "labels")[0]


def test_bad_class_texts(tmp_path, monkeypatch):
    monkeypatch.setattr(descriptions, "DESCRIPTIONS_DIR", tmp_path)
    with pytest.raises(TextError, match="no class texts for dataset 'x'"):
        load_class_texts("x", "labels")
    (tmp_path / "x.json").write_text(json.dumps({"kinds": {"labels": ""}, "classes": [{"id": 0, "labels": "a"}, {"id": 2, "labels": "b"}]}))
    with pytest.raises(TextError, match="entry 1 has id 2"):
        load_class_texts("x", "labels")
    (tmp_path / "x.json").write_text(json.dumps({"kinds": {"labels": ""}, "classes": [{"id": 0, "labels": "a"}, {"id": 1, "labels": " "}]}))
    with pytest.raises(TextError, match="class 1 has no 'labels' text"):
        load_class_texts("x", "labels")
    with pytest.raises(TextError, match="no text kind 'des'"):
        load_class_texts("x", "des")
    with pytest.raises(TextError, match="describes 2 classes, dataset 'x' has 3"):
        load_class_texts("x", "labels", num_classes=3)


def test_cache_is_built_reused_and_stale_detected(tmp_path, monkeypatch):
    emb = embeddings.load(tmp_path, "demo", "labels", "minilm", num_classes=30, dim=384)
    path = embeddings.embedding_path(tmp_path, "demo", "labels", "minilm")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == "minilm" and meta["rows"] == 30 and meta["dim"] == 384
    mtime = path.stat().st_mtime_ns
    np.testing.assert_array_equal(embeddings.load(tmp_path, "demo", "labels", "minilm", num_classes=30, dim=384), emb)
    assert path.stat().st_mtime_ns == mtime  # reused, not rebuilt

    edited = load_class_texts("demo", "labels")
    edited[3] = "juggle with the left arm"
    monkeypatch.setattr(embeddings, "load_class_texts", lambda *a, **k: edited)
    with pytest.raises(EmbeddingError, match=r"stale.*python main.py embed with dataset=demo text_kind=labels"):
        embeddings.load(tmp_path, "demo", "labels", "minilm", num_classes=30, dim=384)


def test_cache_shape_checks(tmp_path):
    embeddings.build(tmp_path, "demo", "labels", "minilm", 30)
    with pytest.raises(EmbeddingError, match="30 rows for 31 classes"):
        embeddings.check(np.zeros((30, 384), np.float32), "f.npy", num_classes=31, dim=384)
    with pytest.raises(EmbeddingError, match="dimension 384 does not match the projection head output 768"):
        embeddings.load(tmp_path, "demo", "labels", "minilm", num_classes=30, dim=768)
    with pytest.raises(EmbeddingError, match="missing text embeddings"):
        embeddings.load(tmp_path, "demo", "des", "minilm", num_classes=30, dim=384, build_missing=False)
    path = embeddings.embedding_path(tmp_path, "demo", "labels", "minilm")
    path.with_suffix(".json").unlink()
    with pytest.raises(EmbeddingError, match="no sidecar"):
        embeddings.load(tmp_path, "demo", "labels", "minilm", num_classes=30, dim=384)


def test_text_ensemble_is_the_mean_of_unit_rows(tmp_path):
    assert embeddings.kinds_of("des") == ["des"]
    assert embeddings.kinds_of("labels + des+parts") == ["labels", "des", "parts"]
    for bad in ("labels+", "des+des", "+"):
        with pytest.raises(EmbeddingError, match="distinct kinds joined by"):
            embeddings.kinds_of(bad)
    rows = {k: embeddings.load(tmp_path, "demo", k, "minilm", num_classes=30, dim=384) for k in ("labels", "parts")}
    both = embeddings.load_text(tmp_path, "demo", "labels+parts", "minilm", num_classes=30, dim=384)
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in rows.items()}
    np.testing.assert_allclose(both, (unit["labels"] + unit["parts"]) / 2, rtol=1e-6, atol=1e-7)
    # a single kind is that kind's cache, unchanged (not normalised)
    np.testing.assert_array_equal(embeddings.load_text(tmp_path, "demo", "labels", "minilm", num_classes=30,
                                                       dim=384), rows["labels"])
    with pytest.raises(TextError, match="no text kind 'nope'"):
        embeddings.load_text(tmp_path, "demo", "labels+nope", "minilm", num_classes=30, dim=384)
