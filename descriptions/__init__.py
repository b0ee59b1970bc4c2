"""Per-dataset class texts.

One JSON file per dataset, ``descriptions/<dataset>.json``::

    {"dataset": "demo",
     "kinds": {"labels": "...", "des": "...", "parts": "..."},   # what each text kind is
     "classes": [{"id": 0, "labels": "raise left arm forward", "des": "...", "parts": "..."}, ...]}

Every class id ``0..num_classes-1`` appears exactly once, and every kind listed
under ``kinds`` is a non-empty string for every class.
"""
from __future__ import annotations

import json
from pathlib import Path

DESCRIPTIONS_DIR = Path(__file__).resolve().parent


class TextError(ValueError):
    """Class texts that cannot be used."""


def text_file(dataset: str) -> Path:
    return DESCRIPTIONS_DIR / f"{dataset}.json"


def available_datasets() -> list[str]:
    return sorted(p.stem for p in DESCRIPTIONS_DIR.glob("*.json"))


def load_document(dataset: str) -> dict:
    path = text_file(dataset)
    if not path.is_file():
        raise TextError(f"no class texts for dataset {dataset!r}: {path} does not exist "
                        f"(datasets with texts: {available_datasets()})")
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise TextError(f"{path}: invalid JSON ({exc})") from exc
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        raise TextError(f"{path}: no 'classes' list")
    ids = [c.get("id") for c in classes]
    if ids != list(range(len(classes))):
        wrong = next(i for i, c in enumerate(ids) if c != i)
        raise TextError(f"{path}: class records must be ids 0..{len(classes) - 1} in order; entry {wrong} has id {ids[wrong]!r}")
    return doc


def text_kinds(dataset: str) -> list[str]:
    return list(load_document(dataset).get("kinds", {}))


def load_class_texts(dataset: str, kind: str, num_classes: int | None = None) -> list[str]:
    """Texts of one kind for all classes, in class-id order.

    Args:
        dataset: dataset name (file ``descriptions/<dataset>.json``).
        kind: ``labels``, ``des``, ``parts``, ... (a key of the file's ``kinds``).
        num_classes: if given, the number of classes the file must describe.
    """
    doc = load_document(dataset)
    path = text_file(dataset)
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
