"""Any other skeleton dataset, in a documented folder format.

::

    <folder>/
        classes.csv     header ``name[,description][,parts]``: one row per class, row i = class id i
        sequences.csv   header ``file,class,subject[,view][,split]``: one row per sequence
        ...             the sequence files

* ``file``: path relative to the folder of a ``.npz`` (array ``joints``) or ``.npy`` file
  holding ``(T, V, 3)`` joints of one actor or ``(M, T, V, 3)`` of M actors (metres,
  an absent actor's frames all zero); V must match the chosen graph layout.
* ``class``: a name from ``classes.csv``; ``subject``: the performer, any name or number.
* ``split`` (optional): ``train`` or ``test`` per sequence; without it the training
  subjects are given as ``raw.train_subjects``.
* ``description`` / ``parts`` (optional, for every class or for none): the texts of
  the ``des`` / ``parts`` kinds; ``name`` is the ``labels`` kind.

``register`` writes ``<data_root>/zeroshot/<name>/dataset.json`` (what the catalog
needs: class count, layout, persons, frames, where the raw files are) and
``descriptions.json`` (the class texts), after which the dataset is used like a
built-in one: ``python main.py with dataset=<name> split=1``.
"""
from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from data.raw import Item, RawFormatError, Sequence, Skip, Source
from data.skeleton import SequenceError, check_joints, origin_index
from experiments.files import write_text_atomic
from module.graph import LAYOUTS, get_layout

CLASSES_FILE = "classes.csv"
SEQUENCES_FILE = "sequences.csv"
PROTOCOL = "given"  # train/test as the CSV's split column or raw.train_subjects say
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _read_csv(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (see the generic format in data/generic.py or the README)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        unknown = [c for c in header if c not in required + optional]
        if missing or unknown:
            raise RawFormatError(f"{path}: header {header}: " + (f"missing columns {missing} " if missing else "")
                                 + (f"unknown columns {unknown} " if unknown else "")
                                 + f"(required {list(required)}, optional {list(optional)})")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise RawFormatError(f"{path}: no rows")
    return rows


def read_classes(folder: str | Path) -> list[dict[str, str]]:
    """``classes.csv`` → one dict per class (``name`` and the optional text columns)."""
    path = Path(folder) / CLASSES_FILE
    rows = _read_csv(path, ("name",), ("description", "parts"))
    names = [r["name"] for r in rows]
    for i, n in enumerate(names):
        if not n:
            raise RawFormatError(f"{path}: class {i} (row {i + 2}) has no name")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RawFormatError(f"{path}: class names listed twice: {dup}")
    for col in ("description", "parts"):
        filled = [bool(r.get(col)) for r in rows]
        if any(filled) and not all(filled):
            raise RawFormatError(f"{path}: column {col!r} is empty for class {filled.index(False)} "
                                 f"({names[filled.index(False)]!r}); fill it for every class or for none")
    return rows


def descriptions_document(name: str, classes: list[dict[str, str]], source: str) -> dict:
    """The ``descriptions/<dataset>.json`` document of a generic dataset."""
    kinds = {"labels": "class names from " + source}
    if classes[0].get("description"):
        kinds["des"] = "descriptions from " + source
    if classes[0].get("parts"):
        kinds["parts"] = "body-part descriptions from " + source
    texts = [{"id": i, "labels": c["name"], **({"des": c["description"]} if "des" in kinds else {}),
              **({"parts": c["parts"]} if "parts" in kinds else {})} for i, c in enumerate(classes)]
    return {"dataset": name, "about": f"class texts of the generic dataset {name!r} ({source})",
            "kinds": kinds, "classes": texts}


def load_sequence_file(path: str | Path) -> np.ndarray:
    """``.npz`` (array ``joints``) or ``.npy`` → ``(M, T, V, 3)``."""
    path = Path(path)
    if not path.is_file():
        raise RawFormatError(f"{path}: file listed in {SEQUENCES_FILE} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "joints" not in z.files:
                    raise RawFormatError(f"{path}: no array 'joints' (arrays: {z.files})")
                x = z["joints"]
        elif path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        else:
            raise RawFormatError(f"{path}: unsupported file type {path.suffix!r}; use .npz (array 'joints') or .npy")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise RawFormatError(f"{path}: not a readable numpy file ({type(exc).__name__}: {exc})") from None
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise RawFormatError(f"{path}: joints of shape {x.shape}; expected (T, V, 3) or (M, T, V, 3)")
    return x


class GenericSource(Source):
    """A folder in the generic format (module docstring)."""

    protocols = (PROTOCOL,)

    def __init__(self, name: str, folder: str, layout: str, persons: int = 1,
                 train_subjects: list[int] | None = None):
        super().__init__()
        self.dataset, self.folder, self.layout, self.persons = name, Path(folder), layout, int(persons)
        self.joints = get_layout(layout).num_joints
        self.train_subjects = set(str(s) for s in (train_subjects or []))  # subjects compare as text
        self.classes = read_classes(folder)
        self.class_ids = {c["name"]: i for i, c in enumerate(self.classes)}
        self.rows: dict[str, dict] = {}

    def items(self) -> list[Item]:
        path = self.folder / SEQUENCES_FILE
        rows = _read_csv(path, ("file", "class", "subject"), ("view", "split"))
        items = []
        for i, row in enumerate(rows, 2):
            where = f"{path}: line {i}"
            if row["class"] not in self.class_ids:
                raise RawFormatError(f"{where}: class {row['class']!r} is not in {CLASSES_FILE}")
            if not row["subject"]:
                raise RawFormatError(f"{where}: no subject (any name or number of the performer)")
            row["subject"] = int(row["subject"]) if row["subject"].isdigit() else row["subject"]
            split = row.get("split", "")
            if "split" in row and split not in ("train", "test"):
                raise RawFormatError(f"{where}: split {split!r}; use 'train' or 'test'")
            if "split" not in row and not self.train_subjects:
                raise ValueError(f"{path} has no 'split' column: name the training subjects with raw.train_subjects")
            key = row["file"]
            if key in self.rows:
                raise RawFormatError(f"{where}: file {key!r} listed twice")
            self.rows[key] = row
            items.append(Item(key, str(self.folder / key)))
        return sorted(items, key=lambda it: it.key)

    def read(self, item: Item) -> list[Sequence | Skip]:
        row = self.rows[item.key]
        try:
            joints = check_joints(load_sequence_file(item.path), item.key, self.joints)
        except (RawFormatError, SequenceError) as exc:
            return [Skip(item.key, item.path, str(exc))]
        if joints.shape[0] > self.persons:
            return [Skip(item.key, item.path, f"{item.key}: {joints.shape[0]} actors, the dataset is registered "
                                              f"with raw.persons={self.persons}")]
        train = row["split"] == "train" if "split" in row else str(row["subject"]) in self.train_subjects
        meta = {"subject": row["subject"], "view": row.get("view", "")}
        return [Sequence(item.key, self.class_ids[row["class"]], joints, meta, {PROTOCOL: train})]

    def options(self) -> dict:
        return {"reader": "generic", "layout": self.layout, "persons": self.persons,
                "train_subjects": sorted(self.train_subjects)}


def register(data_root: str | Path, name: str, folder: str, layout: str, *, persons: int = 1,
             origin_joint: str = "", train_subjects: list[int] | None = None, frames: int = 50) -> Path:
    """Write ``dataset.json`` and ``descriptions.json`` of a generic dataset; returns its folder."""
    from data.catalog import DATASETS, dataset_root  # the catalog reads what this writes

    if not NAME_RE.match(name or ""):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '_' or '-', starting with a letter (raw.name)")
    if name in DATASETS:
        raise ValueError(f"{name!r} is a built-in dataset; choose another raw.name")
    folder = str(Path(folder).expanduser().resolve())
    get_layout(layout)
    origin_index(layout, origin_joint or None)  # fails early on an unknown joint
    if persons < 1:
        raise ValueError(f"raw.persons must be at least 1, got {persons}")
    classes = read_classes(folder)
    root = dataset_root(data_root, name)
    root.mkdir(parents=True, exist_ok=True)
    if layout not in LAYOUTS:  # a layout file: the dataset keeps its own copy
        text = Path(layout).expanduser().read_text()
        layout = str(write_text_atomic(root / "layout.json", text))
    spec = {"name": name, "num_classes": len(classes), "layout": layout, "num_person": persons, "frames": frames,
            "origin_joint": origin_joint or None,
            "prepare": f"python main.py prepare with dataset={name}",
            "source": {"format": "generic", "path": folder, "train_subjects": sorted(map(str, train_subjects or []))}}
    _write_json(root / "dataset.json", spec)
    _write_json(root / "descriptions.json", descriptions_document(name, classes, str(Path(folder) / CLASSES_FILE)))
    return root


def _write_json(path: Path, doc: dict) -> None:
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
