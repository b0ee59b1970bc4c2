"""Reader of the SMIE/PGFA zero-shot array layout, with validation.

A prepared split is a folder ``<root>/zeroshot/<dataset>/split_<k>/`` holding
``{seen_train,seen_test,unseen}_{data,label}.npy`` (the original names are
``seen_train_data.npy``, ``seen_train_label.npy``, ``seen_test_data.npy``,
``seen_test_label.npy``, ``unseen_data.npy``, ``unseen_label.npy``): skeletons
float32 ``(N, C, T, V, M)``, labels int class ids of the full dataset.

Every check names the file and, where it applies, the first offending index.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.files import write_atomic

PARTS = ("seen_train", "seen_test", "unseen")


class DataError(ValueError):
    """Prepared data that cannot be used as it is."""


def part_paths(split_dir: str | Path, part: str) -> tuple[Path, Path]:
    d = Path(split_dir)
    return d / f"{part}_data.npy", d / f"{part}_label.npy"


def performer_path(split_dir: str | Path, part: str) -> Path:
    """The optional ``<part>_performer.npy``: an int64 performer (subject) index per sample, in the
    part's order, where the dataset names its performers (SkeletonX's pairing)."""
    return Path(split_dir) / f"{part}_performer.npy"


def load_performers(split_dir: str | Path, part: str, n: int) -> np.ndarray | None:
    """A part's performers (None where the split has none), checked against its ``n`` samples."""
    path = performer_path(split_dir, part)
    if not path.is_file():
        return None
    try:
        arr = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy ({exc})") from None
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: expected {n} integer performer ids (one per sample), got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class ArraySpec:
    """What a dataset's arrays must look like."""

    num_classes: int
    channels: int = 3
    joints: int = 25
    persons: int | None = None  # None: any


def _load_npy(path: Path, hint: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}; prepare it with: {hint}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError for damaged files
        raise DataError(f"{path}: not a readable .npy array ({exc}); re-create it with: {hint}") from exc


def _first_nonfinite(data: np.ndarray, chunk: int = 256) -> int | None:
    """Index of the first sample holding NaN/Inf, checked in chunks to bound memory."""
    for start in range(0, data.shape[0], chunk):
        block = np.asarray(data[start:start + chunk])
        ok = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if not ok.all():
            return start + int(np.argmin(ok))
    return None


def load_pair(data_path: str | Path, label_path: str | Path, spec: ArraySpec, *,
              allowed: set[int] | None = None, required: set[int] | None = None,
              hint: str = "see README") -> tuple[np.ndarray, np.ndarray]:
    """Load and validate one (data, label) pair.

    Args:
        data_path, label_path: the two ``.npy`` files.
        spec: expected channels, joints, persons and the class count.
        allowed: if given, every label must be in it (e.g. no unseen class in training data).
        required: if given, every class in it must occur at least once.
        hint: the command that (re)creates the files, quoted in errors.

    Returns:
        ``(data, labels)``: float32 ``(N, C, T, V, M)`` in memory and int64 ``(N,)``.
    """
    data_path, label_path = Path(data_path), Path(label_path)
    data = _load_npy(data_path, hint)
    labels = _load_npy(label_path, hint)

    if data.ndim != 5:
        raise DataError(f"{data_path}: expected 5 dims (N, C, T, V, M), got shape {data.shape}; "
                        f"re-create it with: {hint}")
    n, c, t, v, m = data.shape
    if c != spec.channels or v != spec.joints or (spec.persons is not None and m != spec.persons):
        want = f"(N, {spec.channels}, T, {spec.joints}, {spec.persons if spec.persons is not None else 'M'})"
        raise DataError(f"{data_path}: shape {data.shape} does not match {want}; re-create it with: {hint}")
    if n == 0 or t == 0:
        raise DataError(f"{data_path}: empty array, shape {data.shape}; re-create it with: {hint}")
    if t < 2:
        raise DataError(f"{data_path}: {t} frame per sample (shape {data.shape}): a sequence needs at least 2 "
                        f"frames to be resampled; re-create it with: {hint}")
    if data.dtype != np.float32:
        raise DataError(f"{data_path}: dtype {data.dtype}, expected float32; re-create it with: {hint}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{label_path}: expected a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}; "
                        f"re-create it with: {hint}")
    if labels.shape[0] != n:
        raise DataError(f"{label_path}: {labels.shape[0]} labels for {n} samples in {data_path}; "
                        f"re-create them with: {hint}")

    labels = np.asarray(labels, dtype=np.int64)
    out_of_range = np.flatnonzero((labels < 0) | (labels >= spec.num_classes))
    if out_of_range.size:
        i = int(out_of_range[0])
        raise DataError(f"{label_path}: label {labels[i]} at index {i} outside 0..{spec.num_classes - 1} "
                        f"({out_of_range.size} such labels); re-create it with: {hint}")
    if allowed is not None:
        bad = np.flatnonzero(~np.isin(labels, sorted(allowed)))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{label_path}: class {labels[i]} at index {i} is not allowed in this file "
                            f"({bad.size} such samples; allowed classes: {sorted(allowed)}); re-create it with: {hint}")
    if required is not None:
        missing = sorted(set(required) - set(np.unique(labels).tolist()))
        if missing:
            raise DataError(f"{label_path}: classes {missing} have no samples (needed: {sorted(required)}); "
                            f"re-create it with: {hint}")

    data = np.array(data)  # headers checked: now read the samples into memory
    bad_sample = _first_nonfinite(data)
    if bad_sample is not None:
        raise DataError(f"{data_path}: NaN or Inf in sample {bad_sample}; re-create it with: {hint}")
    return data, labels


def load_part(split_dir: str | Path, part: str, spec: ArraySpec, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """``load_pair`` for ``seen_train`` / ``seen_test`` / ``unseen`` of a split folder."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; one of {PARTS}")
    return load_pair(*part_paths(split_dir, part), spec, **kwargs)


def save_npy_atomic(path: str | Path, arr: np.ndarray) -> Path:
    """``np.save`` through a temporary file and a rename (``experiments.files.write_atomic``)."""
    return write_atomic(path, lambda f: np.save(f, arr))


def save_part(split_dir: str | Path, part: str, data: np.ndarray, labels: np.ndarray) -> None:
    """Write one part atomically (temporary file, then rename)."""
    d = Path(split_dir)
    d.mkdir(parents=True, exist_ok=True)
    for path, arr in zip(part_paths(d, part), (np.asarray(data, np.float32), np.asarray(labels, np.int64))):
        save_npy_atomic(path, arr)


def write_npy_chunks(path: str | Path, shape: tuple[int, ...], dtype: np.dtype | str, chunks) -> None:
    """Write an ``.npy`` of a known ``shape`` from an iterable of row blocks, atomically.

    Only one block is in memory at a time, so a split of any size is written with bounded memory.
    Raises ``DataError`` if the blocks do not add up to ``shape``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)

    def write(f) -> None:
        rows = 0
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
        for block in chunks:
            block = np.ascontiguousarray(block, dtype=dtype)
            if block.shape[1:] != tuple(shape[1:]):
                raise DataError(f"{path}: block of shape {block.shape} does not fit rows of shape {shape[1:]}")
            f.write(block.tobytes())
            rows += block.shape[0]
        if rows != shape[0]:
            raise DataError(f"{path}: {rows} rows written, {shape[0]} announced")

    write_atomic(path, write)
