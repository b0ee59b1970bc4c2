"""Per-dataset class texts.

One JSON file per dataset, ``descriptions/<dataset>.json``::

    {"dataset": "demo",
     "kinds": {"labels": "...", "des": "...", "parts": "..."},   # what each text kind is
     "classes": [{"id": 0, "labels": "raise left arm forward", "des": "...", "parts": "..."}, ...]}

Every class id ``0..num_classes-1`` appears exactly once, and every kind listed
under ``kinds`` is a non-empty string for every class.

A document may build on another dataset's texts instead of repeating them:
``"based_on": "ntu120"`` and, per class, ``"from": <class id there>``; the class
takes that class's texts, and any kind it states itself replaces the borrowed one
(``ntu60.json`` is NTU-120's first 60 classes; ``pku.json`` borrows NTU's
descriptions under PKU-MMD's own label names).

A generic dataset's texts live beside its data, ``<data_root>/zeroshot/<dataset>/descriptions.json``
(written by ``prepare_generic``); the project's own file wins where both exist.
"""
from __future__ import annotations

import json
from pathlib import Path

DESCRIPTIONS_DIR = Path(__file__).resolve().parent
USER_TEXT_FILE = "descriptions.json"


class TextError(ValueError):
    """Class texts that cannot be used."""


def text_file(dataset: str, data_root: str | Path | None = None) -> Path:
    """The project's ``descriptions/<dataset>.json``, else a generic dataset's file under ``data_root``."""
    own = DESCRIPTIONS_DIR / f"{dataset}.json"
    if own.is_file() or data_root is None:
        return own
    user = Path(data_root) / "zeroshot" / dataset / USER_TEXT_FILE
    return user if user.is_file() else own


def available_datasets(data_root: str | Path | None = None) -> list[str]:
    """Datasets with class texts: the project's, and generic ones registered under ``data_root``."""
    names = {p.stem for p in DESCRIPTIONS_DIR.glob("*.json")}
    if data_root is not None:
        names |= {p.parent.name for p in (Path(data_root) / "zeroshot").glob(f"*/{USER_TEXT_FILE}")}
    return sorted(names)


def _read(path: Path, dataset: str) -> dict:
    if not path.is_file():
        raise TextError(f"no class texts for dataset {dataset!r}: {path} does not exist "
                        f"(datasets with texts: {available_datasets()})")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise TextError(f"{path}: invalid JSON ({exc})") from exc


def load_document(dataset: str, data_root: str | Path | None = None) -> dict:
    """The dataset's text document with borrowed texts (``based_on``) resolved, plus the kinds
    ``refine_texts`` wrote under ``data_root`` (``refined_file``)."""
    return _with_refined(_load(dataset, data_root), dataset, data_root)


def refined_file(dataset: str, data_root: str | Path) -> Path:
    """Where ``refine_texts`` writes a dataset's new text kinds (beside the embeddings, never into
    the project's own descriptions): ``<data_root>/language/<dataset>.refined.json``, a document of
    this module's format whose classes hold only the new kinds, plus each kind's ``provenance``."""
    return Path(data_root) / "language" / f"{dataset}.refined.json"


def _with_refined(doc: dict, dataset: str, data_root: str | Path | None) -> dict:
    path = None if data_root is None else refined_file(dataset, data_root)
    if path is None or not path.is_file():
        return doc
    extra = _read(path, dataset)
    kinds, classes = extra.get("kinds", {}), extra.get("classes")
    clash = sorted(set(kinds) & set(doc.get("kinds", {})))
    if clash:
        raise TextError(f"{path}: kinds {clash} are the dataset's own; written kinds need names of their own")
    if not isinstance(classes, list) or len(classes) != len(doc["classes"]):
        raise TextError(f"{path}: must hold one record per class ({len(doc['classes'])})")
    merged = [{**rec, **{k: c.get(k) for k in kinds}} for rec, c in zip(doc["classes"], classes)]
    return {**doc, "kinds": {**doc.get("kinds", {}), **kinds}, "classes": merged}


def _load(dataset: str, data_root: str | Path | None = None, _chain: tuple[str, ...] = ()) -> dict:
    path = text_file(dataset, data_root)
    doc = _read(path, dataset)
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        raise TextError(f"{path}: no 'classes' list")
    ids = [c.get("id") for c in classes]
    if ids != list(range(len(classes))):
        wrong = next(i for i, c in enumerate(ids) if c != i)
        raise TextError(f"{path}: class records must be ids 0..{len(classes) - 1} in order; entry {wrong} has id {ids[wrong]!r}")
    base_name = doc.get("based_on")
    if base_name is None:
        if any("from" in c for c in classes):
            raise TextError(f"{path}: classes name a 'from' class but the document has no 'based_on' dataset")
        return doc
    if base_name in _chain + (dataset,):
        raise TextError(f"{path}: 'based_on' forms a cycle: {' -> '.join(_chain + (dataset, base_name))}")
    base = _load(base_name, data_root, _chain + (dataset,))
    resolved = []
    for rec in classes:
        if "from" in rec:
            src = rec["from"]
            if not isinstance(src, int) or not 0 <= src < len(base["classes"]):
                raise TextError(f"{path}: class {rec['id']} borrows from {base_name} class {src!r}, which does not exist")
            merged = {k: v for k, v in base["classes"][src].items() if k not in ("id", "from")}
            merged.update({k: v for k, v in rec.items() if k != "from"})
            resolved.append(merged)
        else:
            resolved.append(dict(rec))
    return {**doc, "kinds": {**base.get("kinds", {}), **doc.get("kinds", {})}, "classes": resolved}


def text_kinds(dataset: str, data_root: str | Path | None = None) -> list[str]:
    return list(load_document(dataset, data_root).get("kinds", {}))


def load_class_texts(dataset: str, kind: str, num_classes: int | None = None,
                     data_root: str | Path | None = None) -> list[str]:
    """Texts of one kind for all classes, in class-id order.

    Args:
        dataset: dataset name (file ``descriptions/<dataset>.json``).
        kind: ``labels``, ``des``, ``parts``, ... (a key of the file's ``kinds``).
        num_classes: if given, the number of classes the file must describe.
        data_root: where a generic dataset's texts are looked up.
    """
    doc = load_document(dataset, data_root)
    path = text_file(dataset, data_root)
    kinds = doc.get("kinds", {})
    if kind not in kinds:
        raise TextError(f"{path}: no text kind {kind!r}; available: {list(kinds)}")
    classes = doc["classes"]
    if num_classes is not None and len(classes) != num_classes:
        raise TextError(f"{path}: describes {len(classes)} classes, dataset {dataset!r} has {num_classes}")
    texts = []
    for rec in classes:
        value = rec.get(kind)
        if not isinstance(value, str) or not value.strip():
            raise TextError(f"{path}: class {rec['id']} has no {kind!r} text")
        texts.append(value.strip())
    return texts
