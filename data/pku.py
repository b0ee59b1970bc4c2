"""PKU-MMD Phase I: long videos cut into action segments.

Input (the official release):

* skeleton files ``<video>.txt`` (e.g. ``0002-L.txt``): one line per frame, 150 values =
  2 persons × 25 Kinect v2 joints × (x, y, z); an absent second person is zeros;
* label files ``<video>.txt`` with the same names: one row ``class,start,end,confidence``
  per action instance (class 1..51, frames 0-based, ``end`` exclusive as in the
  community's segmenters);
* the split file ``cross-subject.txt``: a line ``Training videos:``, a comma-separated
  line of video ids, a line ``Validataion videos:`` (sic), a line of video ids.

Each label row becomes one sequence named ``<video>_<row>`` (row 1-based).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.raw import Item, RawFormatError, Sequence, Skip, Source, find_files
from data.skeleton import SequenceError, check_joints

NUM_CLASSES = 51
VALUES_PER_LINE = 150


def read_split_file(path: str | Path) -> tuple[set[str], set[str]]:
    """``(training videos, test videos)`` from PKU-MMD's ``cross-subject.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PKU-MMD split file {path} does not exist (set raw.split_file)")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) != 4 or not lines[0].lower().startswith("training") or not lines[2].lower().startswith("valid"):
        raise RawFormatError(f"{path}: expected 4 lines: 'Training videos:', ids, 'Validataion videos:', ids "
                             f"(got {len(lines)} non-empty lines)")

    def ids(line: str) -> set[str]:
        return {v.strip() for v in line.split(",") if v.strip()}

    train, test = ids(lines[1]), ids(lines[3])
    both = sorted(train & test)
    if both:
        raise RawFormatError(f"{path}: videos listed as training and test: {both[:5]}")
    return train, test


def read_labels(path: str | Path, num_frames: int | None = None) -> list[tuple[int, int, int, int]]:
    """Rows ``(class 1..51, start, end, confidence)`` of a label file, validated."""
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise RawFormatError(f"{path}: line {i}: {len(parts)} values, expected class,start,end,confidence")
        try:
            c, s, e, conf = (int(float(p)) for p in parts)
        except ValueError:
            raise RawFormatError(f"{path}: line {i}: non-numeric value in {line.strip()!r}") from None
        if not 1 <= c <= NUM_CLASSES:
            raise RawFormatError(f"{path}: line {i}: class {c} outside 1..{NUM_CLASSES}")
        rows.append((c, s, e, conf))
    if not rows:
        raise RawFormatError(f"{path}: no label rows")
    return rows


def read_video(path: str | Path) -> np.ndarray:
    """A skeleton file → ``(2, T, 25, 3)``."""
    path = Path(path)
    try:
        data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise RawFormatError(f"{path}: not a table of numbers ({exc})") from None
    if data.size == 0:
        raise RawFormatError(f"{path}: empty skeleton file")
    if data.shape[1] != VALUES_PER_LINE:
        raise RawFormatError(f"{path}: {data.shape[1]} values per line, expected {VALUES_PER_LINE} "
                             f"(2 persons × 25 joints × 3)")
    return data.reshape(-1, 2, 25, 3).transpose(1, 0, 2, 3)


class PKUSource(Source):
    """PKU-MMD Phase I: skeleton folder, label folder and the cross-subject split file."""

    dataset, layout, persons, protocols = "pku", "ntu25", 2, ("xsub",)

    def __init__(self, skeleton_dir: str, label_dir: str, split_file: str):
        super().__init__()
        if not label_dir:
            raise FileNotFoundError("PKU-MMD: set raw.labels to the label folder (Train_Label_PKU_final)")
        self.skeleton_dir, self.label_dir = skeleton_dir, Path(label_dir)
        self.split_file = split_file
        self.train_videos, self.test_videos = read_split_file(split_file)

    def items(self) -> list[Item]:
        if not self.label_dir.is_dir():
            raise FileNotFoundError(f"PKU-MMD label folder {self.label_dir} does not exist (raw.labels)")
        items = []
        for path in find_files(self.skeleton_dir, ".txt", "PKU-MMD skeleton files"):
            video = path.stem
            if video not in self.train_videos and video not in self.test_videos:
                self.excluded.append(Skip(video, str(path), f"not listed in {Path(self.split_file).name}"))
            elif not (self.label_dir / path.name).is_file():
                self.excluded.append(Skip(video, str(path), f"no label file {self.label_dir / path.name}"))
            else:
                items.append(Item(video, str(path)))
        return items

    def read(self, item: Item) -> list[Sequence | Skip]:
        try:
            video = read_video(item.path)
            rows = read_labels(self.label_dir / Path(item.path).name)
        except RawFormatError as exc:
            return [Skip(item.key, item.path, str(exc))]
        out: list[Sequence | Skip] = []
        train = item.key in self.train_videos
        for k, (c, start, end, conf) in enumerate(rows, 1):
            name = f"{item.key}_{k:02d}"
            if not 0 <= start < end <= video.shape[1]:
                out.append(Skip(name, item.path, f"{name}: segment frames {start}..{end} outside the video's "
                                                 f"{video.shape[1]} frames"))
                continue
            seg = video[:, start:end]
            try:
                check_joints(seg, name)
            except SequenceError as exc:
                out.append(Skip(name, item.path, str(exc)))
                continue
            # The main actor first: the more active slot (a segment may track only slot 2).
            order = np.argsort([-np.var(seg[m], axis=0).sum() if seg[m].any() else np.inf for m in range(2)],
                               kind="stable")
            seg = seg[order]
            meta = {"video": item.key, "view": item.key.rsplit("-", 1)[-1], "start": start, "end": end,
                    "confidence": conf}
            out.append(Sequence(name, c - 1, seg, meta, {"xsub": train}))
        return out

    def options(self) -> dict:
        return {"reader": "pku-mmd", "train_videos": sorted(self.train_videos)}
