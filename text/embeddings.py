"""Class-text embeddings and their cache.

``data/language/<dataset>_<kind>_<model>.npy`` holds one float32 row per class in
class-id order; the sidecar ``.json`` beside it records the model, the dimension and
a SHA-256 of the texts. A cache whose sidecar does not match the current texts or
model is *stale* and is refused with the command that rebuilds it.
"""
from __future__ import annotations

import hashlib
import sys
import json
import time
from pathlib import Path

import numpy as np

from descriptions import load_class_texts
from experiments.files import write_atomic, write_text_atomic
from text.models import load_model, model_key


class EmbeddingError(ValueError):
    """Embeddings that cannot be used as they are."""


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def embedding_path(data_root: str | Path, dataset: str, kind: str, model: str) -> Path:
    return Path(data_root) / "language" / f"{dataset}_{kind}_{model_key(model)}.npy"


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def embed_command(dataset: str, kind: str, model: str) -> str:
    return f'python main.py embed with dataset={dataset} text_kind={kind} text_model="{model}"'


def encode(texts: list[str], model: str, batch_size: int = 32) -> np.ndarray:
    """Sentence-BERT embeddings ``(len(texts), dim)`` float32 (offline model)."""
    st = load_model(model)
    out = st.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    out = np.asarray(out, dtype=np.float32)
    if not np.isfinite(out).all():
        raise EmbeddingError(f"text model {model!r} produced non-finite embeddings")
    return out


def build(data_root: str | Path, dataset: str, kind: str, model: str, num_classes: int | None = None) -> Path:
    """Encode the class texts and write the cache file and its sidecar."""
    texts = load_class_texts(dataset, kind, num_classes, data_root=data_root)
    emb = encode(texts, model)
    path = embedding_path(data_root, dataset, kind, model)
    write_atomic(path, lambda f: np.save(f, emb))
    meta = {"dataset": dataset, "kind": kind, "model": model, "rows": int(emb.shape[0]), "dim": int(emb.shape[1]),
            "text_sha256": texts_hash(texts), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text_atomic(sidecar_path(path), json.dumps(meta, indent=1) + "\n")
    return path


def load(data_root: str | Path, dataset: str, kind: str, model: str, *, num_classes: int, dim: int,
         build_missing: bool = True) -> np.ndarray:
    """Cached embeddings ``(num_classes, dim)``, validated against the current texts.

    A missing cache is built (when ``build_missing``); a stale or malformed one raises
    ``EmbeddingError`` naming the file and the command that rebuilds it.
    """
    path = embedding_path(data_root, dataset, kind, model)
    fix = embed_command(dataset, kind, model)
    if not path.is_file():
        if not build_missing:
            raise EmbeddingError(f"missing text embeddings {path}; build them with: {fix}")
        print(f"embedding the {kind!r} class texts of {dataset} with {model} into {path} (once)", file=sys.stderr,
              flush=True)
        build(data_root, dataset, kind, model, num_classes)
    side = sidecar_path(path)
    if not side.is_file():
        raise EmbeddingError(f"{path}: no sidecar {side.name}, cannot tell which texts it encodes; rebuild with: {fix}")
    meta = json.loads(side.read_text())
    texts = load_class_texts(dataset, kind, num_classes, data_root=data_root)
    if meta.get("model") != model or meta.get("text_sha256") != texts_hash(texts):
        raise EmbeddingError(f"{path} is stale: it was built from {meta.get('model')!r} with other texts than "
                             f"descriptions/{dataset}.json now holds; rebuild with: {fix}")
    emb = np.load(path, allow_pickle=False)
    return check(emb, path, num_classes=num_classes, dim=dim)


def kinds_of(kind: str) -> list[str]:
    """The text kinds of ``kind``: one (``"des"``), or a text ensemble joined by ``+``
    (``"labels+des+parts"``)."""
    kinds = [k.strip() for k in str(kind).split("+")]
    if not all(kinds) or len(set(kinds)) != len(kinds):
        raise EmbeddingError(f"text kind {kind!r}: give one kind or distinct kinds joined by '+', "
                             "e.g. 'labels+des+parts'")
    return kinds


def load_text(data_root: str | Path, dataset: str, kind: str, model: str, *, num_classes: int, dim: int,
              build_missing: bool = True) -> np.ndarray:
    """The class-text matrix ``(num_classes, dim)`` of ``kind``: one kind's embeddings (``load``),
    or for a text ensemble (``"labels+des+parts"``) the mean of each kind's unit-length rows, as
    CLIP ensembles its prompts (every consumer compares by cosine, so the mean is not rescaled)."""
    kinds = kinds_of(kind)
    if len(kinds) == 1:
        return load(data_root, dataset, kind, model, num_classes=num_classes, dim=dim, build_missing=build_missing)
    rows = [load(data_root, dataset, k, model, num_classes=num_classes, dim=dim, build_missing=build_missing)
            for k in kinds]
    return np.mean([unit_rows(r) for r in rows], axis=0).astype(np.float32)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (an all-zero row stays zero)."""
    return rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)


def check(emb: np.ndarray, path: str | Path, *, num_classes: int, dim: int) -> np.ndarray:
    """Validate an embedding matrix against the class count and the head's output size."""
    if emb.ndim != 2:
        raise EmbeddingError(f"{path}: expected a 2-D (classes, dim) array, got shape {emb.shape}")
    if emb.shape[0] != num_classes:
        raise EmbeddingError(f"{path}: {emb.shape[0]} rows for {num_classes} classes")
    if emb.shape[1] != dim:
        raise EmbeddingError(f"{path}: embedding dimension {emb.shape[1]} does not match the projection head "
                             f"output {dim} (text_model / text_dim mismatch)")
    if not np.isfinite(emb).all():
        raise EmbeddingError(f"{path}: NaN or Inf in row {int(np.argmin(np.isfinite(emb).all(axis=1)))}")
    return emb.astype(np.float32, copy=False)
