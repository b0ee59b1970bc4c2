"""NTU RGB+D 60/120: the raw ``.skeleton`` reader, multi-body denoising, the standard
evaluation protocols, and pyskl's ``ntu60_3danno.pkl`` / ``ntu120_3danno.pkl``.

File format (per the dataset's README; every count is checked)::

    <frame count>
    per frame:  <body count>
      per body: <10 values: bodyID clippedEdges handLeftConfidence handLeftState
                 handRightConfidence handRightState isRestricted leanX leanY trackingState>
                <joint count = 25>
                25 × <12 values: x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState>

Names ``SsssCcccPpppRrrrAaaa``: setup, camera, performer (subject), replication, action (1-based).
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.raw import Item, RawFormatError, Sequence, Skip, Source, find_files
from data.skeleton import SequenceError, check_joints

JOINTS = 25
BODY_INFO_VALUES = 10
JOINT_VALUES = 12
NAME_RE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")
MISSING_LIST = Path(__file__).resolve().parent / "ntu_missing_skeletons.txt"

# Cross-subject training performers (NTU RGB+D 60 paper; NTU RGB+D 120 paper adds the second row).
XSUB_TRAIN_60 = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
XSUB_TRAIN_120 = XSUB_TRAIN_60 + (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82,
                                  83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
XVIEW_TRAIN_CAMERAS = (2, 3)  # NTU-60 cross-view: cameras 2 and 3 train, camera 1 tests
# NTU-120 cross-setup: even setup ids train, odd ones test.

# Denoising thresholds (the values the community's NTU preprocessing uses).
MIN_BODY_FRAMES = 12        # a body tracked in fewer frames is noise
SPREAD_RATIO = 0.8          # a frame is "spread" if the joints' x extent > 0.8 × their y extent
MAX_SPREAD_SHARE = 0.69754  # a body with a larger share of spread frames is not a person


@dataclass(frozen=True)
class NTUName:
    setup: int
    camera: int
    subject: int
    replication: int
    action: int  # 1-based

    @classmethod
    def parse(cls, name: str) -> "NTUName":
        m = NAME_RE.match(name)
        if not m:
            raise ValueError(f"{name!r} is not an NTU sample name (SsssCcccPpppRrrrAaaa)")
        return cls(*(int(g) for g in m.groups()))


def is_train(n: NTUName, protocol: str) -> bool:
    """Is the sample a training sample under ``protocol`` (xsub60, xsub120, xview, xset)?"""
    if protocol == "xsub60":
        return n.subject in XSUB_TRAIN_60
    if protocol == "xsub120":
        return n.subject in XSUB_TRAIN_120
    if protocol == "xview":
        return n.camera in XVIEW_TRAIN_CAMERAS
    if protocol == "xset":
        return n.setup % 2 == 0
    raise ValueError(f"unknown NTU protocol {protocol!r}")


def missing_skeleton_samples() -> set[str]:
    """The dataset authors' list of samples with missing or incomplete skeletons (535 names)."""
    return {ln.strip() for ln in MISSING_LIST.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


# ----------------------------------------------------------------------------- the reader

@dataclass
class Body:
    body_id: str
    frames: np.ndarray  # (n,) frame indices where the body is tracked
    joints: np.ndarray  # (n, 25, 3) x, y, z in metres


@dataclass
class SkeletonFile:
    path: str
    num_frames: int
    bodies_per_frame: np.ndarray  # (num_frames,)
    bodies: list[Body]            # in order of first appearance


def read_skeleton(path: str | Path) -> SkeletonFile:
    """Parse one ``.skeleton`` file, validating every count.

    Raises ``RawFormatError`` naming the file, the line and what was expected there
    (a truncated file says so).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise RawFormatError(f"{path}: not a text skeleton file ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    pos = 0

    def where(frame: int | None = None, body: int | None = None) -> str:
        at = f"{path.name}: line {pos + 1}"
        if frame is not None:
            at += f" (frame {frame + 1}" + (f", body {body + 1}" if body is not None else "") + ")"
        return at

    def take(what: str, frame: int | None = None, body: int | None = None) -> str:
        nonlocal pos
        if pos >= len(lines):
            raise RawFormatError(f"{where(frame, body)}: file ends where {what} was expected "
                                 f"(truncated: {len(lines)} lines)")
        pos += 1
        return lines[pos - 1]

    def count(text: str, what: str, frame: int | None = None, body: int | None = None) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise RawFormatError(f"{where(frame, body)}: expected {what} (an integer), got {text.strip()[:40]!r}") from None
        if value < 0:
            raise RawFormatError(f"{where(frame, body)}: negative {what} {value}")
        return value

    num_frames = count(take("the frame count"), "the frame count")
    per_frame = np.zeros(num_frames, np.int64)
    ids: list[str] = []
    frames: dict[str, list[int]] = {}
    coords: dict[str, list[np.ndarray]] = {}
    for f in range(num_frames):
        nb = count(take("a body count", f), "a body count", f)
        per_frame[f] = nb
        seen_here: set[str] = set()
        for b in range(nb):
            info = take("a body header", f, b).split()
            if len(info) != BODY_INFO_VALUES:
                pos -= 1
                raise RawFormatError(f"{where(f, b)}: body header has {len(info)} values, expected {BODY_INFO_VALUES}")
            body_id = info[0]
            if body_id in seen_here:
                pos -= 1
                raise RawFormatError(f"{where(f, b)}: body id {body_id} appears twice in one frame")
            seen_here.add(body_id)
            nj = count(take("a joint count", f, b), "a joint count", f, b)
            if nj != JOINTS:
                pos -= 1
                raise RawFormatError(f"{where(f, b)}: joint count {nj}, expected {JOINTS}")
            if pos + JOINTS > len(lines):
                pos = len(lines)
                raise RawFormatError(f"{where(f, b)}: file ends inside the joints of frame {f + 1} body {b + 1} "
                                     f"(truncated: {len(lines)} lines, frame count {num_frames})")
            tokens = [ln.split() for ln in lines[pos:pos + JOINTS]]
            for j, tok in enumerate(tokens):
                if len(tok) != JOINT_VALUES:
                    pos += j
                    raise RawFormatError(f"{where(f, b)}: joint {j + 1} has {len(tok)} values, expected "
                                         f"{JOINT_VALUES}" + (" (truncated line)" if pos + 1 == len(lines) else ""))
            try:  # only x, y, z are used: converting the other 9 columns would triple the parse time
                values = np.array([float(v) for tok in tokens for v in tok[:3]]).reshape(JOINTS, 3)
            except ValueError as exc:
                raise RawFormatError(f"{where(f, b)}: non-numeric joint coordinate ({exc})") from None
            pos += JOINTS
            if body_id not in frames:
                ids.append(body_id)
                frames[body_id], coords[body_id] = [], []
            frames[body_id].append(f)
            coords[body_id].append(values)
    if pos != len(lines):
        raise RawFormatError(f"{path.name}: {len(lines) - pos} lines after the last of the {num_frames} frames the "
                             f"header announces (from line {pos + 1}); the counts do not add up")
    bodies = [Body(i, np.array(frames[i], np.int64), np.stack(coords[i])) for i in ids]
    return SkeletonFile(str(path), num_frames, per_frame, bodies)


# ----------------------------------------------------------------------------- denoising

@dataclass
class DenoiseReport:
    bodies: int                       # body ids in the file
    dropped: dict[str, str]           # body id -> why
    actors: list[list[str]]           # body ids joined into actor 1 and actor 2
    kept_despite_filters: bool = False


def _spread_share(joints: np.ndarray) -> float:
    """Share of frames whose joints spread wider (x) than 0.8 × their height (y): lying or noise."""
    extent = joints.max(axis=1) - joints.min(axis=1)  # (n, 3)
    return float(np.mean(extent[:, 0] > SPREAD_RATIO * extent[:, 1]))


def _activity(joints: np.ndarray) -> float:
    """Total variance of the joint coordinates over time."""
    return float(np.var(joints, axis=0).sum())


def denoise(sf: SkeletonFile) -> tuple[np.ndarray, DenoiseReport]:
    """Pick at most two actors from the bodies of one file.

    With more than one body id: drop bodies tracked in fewer than ``MIN_BODY_FRAMES``
    frames, then bodies whose joints are wider than tall in more than ``MAX_SPREAD_SHARE``
    of their frames (furniture, reflections); a filter never removes the last body
    left (then the report says ``kept_despite_filters``). The rest, most active first,
    are joined into two actors: a body goes to actor 1 if its frames do not overlap
    actor 1's, else to actor 2 under the same rule, else it is dropped.

    Returns:
        joints ``(A, num_frames, 25, 3)`` with A = 1 or 2 actors (zero where absent),
        and a report of what was dropped and why.
    """
    report = DenoiseReport(len(sf.bodies), {}, [])
    bodies = list(sf.bodies)
    if len(bodies) > 1:
        for test, why in ((lambda b: len(b.frames) >= MIN_BODY_FRAMES, f"tracked in fewer than {MIN_BODY_FRAMES} frames"),
                          (lambda b: _spread_share(b.joints) <= MAX_SPREAD_SHARE, "implausible spread (wider than tall)")):
            keep = [b for b in bodies if test(b)]
            if not keep:  # never drop everything: keep the longest-tracked body
                keep = [max(bodies, key=lambda b: len(b.frames))]
                report.kept_despite_filters = True
            for b in bodies:
                if b not in keep:
                    report.dropped[b.body_id] = why
            bodies = keep
    if not bodies:
        return np.zeros((1, sf.num_frames, JOINTS, 3)), report
    bodies.sort(key=lambda b: _activity(b.joints), reverse=True)
    actors: list[list[Body]] = [[bodies[0]]]
    for b in bodies[1:]:
        for actor in actors:
            if not any(np.intersect1d(b.frames, other.frames).size for other in actor):
                actor.append(b)
                break
        else:
            if len(actors) < 2:
                actors.append([b])
            else:
                report.dropped[b.body_id] = "overlaps both kept actors (less active)"
    out = np.zeros((len(actors), sf.num_frames, JOINTS, 3))
    for a, actor in enumerate(actors):
        for b in actor:
            out[a, b.frames] = b.joints
    report.actors = [[b.body_id for b in actor] for actor in actors]
    return out, report


# ----------------------------------------------------------------------------- sources

DATASET_LIMITS = {"ntu60": (17, 60), "ntu120": (32, 120)}  # last setup, last action


def protocols_of(dataset: str) -> tuple[str, ...]:
    return ("xsub", "xview") if dataset == "ntu60" else ("xsub", "xset")


def _train_flags(dataset: str, n: NTUName) -> dict[str, bool]:
    xsub = "xsub60" if dataset == "ntu60" else "xsub120"
    return {p: is_train(n, xsub if p == "xsub" else p) for p in protocols_of(dataset)}


def _meta(n: NTUName) -> dict:
    return {"subject": n.subject, "setup": n.setup, "camera": n.camera, "replication": n.replication}


class NTUSkeletonSource(Source):
    """The official ``.skeleton`` files of NTU RGB+D 60 or 120 (one or more folders, searched recursively)."""

    layout, persons = "ntu25", 2

    def __init__(self, dataset: str, paths: str | list[str]):
        super().__init__()
        if dataset not in DATASET_LIMITS:
            raise ValueError(f"NTU skeleton source: dataset must be ntu60 or ntu120, got {dataset!r}")
        self.dataset, self.paths = dataset, paths
        self.protocols = protocols_of(dataset)

    def items(self) -> list[Item]:
        last_setup, last_action = DATASET_LIMITS[self.dataset]
        missing = missing_skeleton_samples()
        items, seen, other = [], {}, 0
        for path in find_files(self.paths, ".skeleton", f"{self.dataset} skeleton files"):
            name = path.name[: -len(".skeleton")]
            try:
                n = NTUName.parse(name)
            except ValueError as exc:
                self.excluded.append(Skip(name, str(path), str(exc)))
                continue
            if n.setup > last_setup or n.action > last_action:
                other += 1  # NTU-120 samples in a folder given for NTU-60: not part of this dataset
                continue
            if name in missing:
                self.excluded.append(Skip(name, str(path), "on the authors' list of samples with missing skeletons"))
                continue
            if name in seen:
                raise ValueError(f"sample {name} found twice: {seen[name]} and {path}")
            seen[name] = path
            items.append(Item(name, str(path)))
        if other:
            self.notes.append(f"{other} files of setups after S{last_setup:03d} or actions after A{last_action:03d} "
                              f"are not part of {self.dataset} and were left out")
        return items

    def read(self, item: Item) -> list[Sequence | Skip]:
        try:
            joints, report = denoise(read_skeleton(item.path))
            n = NTUName.parse(item.key)
            # what denoising did, kept in the samples' index for inspection
            meta = {**_meta(n), "bodies": report.bodies, "bodies_dropped": len(report.dropped)}
            return [Sequence(item.key, n.action - 1, joints, meta, _train_flags(self.dataset, n))]
        except (RawFormatError, SequenceError) as exc:
            return [Skip(item.key, item.path, str(exc))]

    def options(self) -> dict:
        return {"reader": "ntu-skeleton", "min_body_frames": MIN_BODY_FRAMES, "spread": (SPREAD_RATIO, MAX_SPREAD_SHARE)}


def load_pyskl(path: str | Path) -> dict:
    """Load and check a pyskl annotation pickle: ``{"split": {...}, "annotations": [...]}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pyskl annotation file {path} does not exist")
    with open(path, "rb") as f:
        # pyskl ships these pickles; like any pickle, only load files from a source you trust.
        doc = pickle.load(f)
    if not isinstance(doc, dict) or "annotations" not in doc or "split" not in doc:
        raise RawFormatError(f"{path}: expected a dict with 'split' and 'annotations' (pyskl format), "
                             f"got {type(doc).__name__} with keys {list(doc)[:5] if isinstance(doc, dict) else '-'}")
    return doc


class PysklSource(Source):
    """pyskl's ``ntu60_3danno.pkl`` / ``ntu120_3danno.pkl``: annotations with ``frame_dir``,
    ``label`` and ``keypoint`` (M, T, 25, 3), already denoised. Held in memory (one pickle)."""

    layout, persons, parallel = "ntu25", 2, False

    def __init__(self, dataset: str, path: str):
        super().__init__()
        if dataset not in DATASET_LIMITS:
            raise ValueError(f"pyskl source: dataset must be ntu60 or ntu120, got {dataset!r}")
        self.dataset, self.path = dataset, path
        self.protocols = protocols_of(dataset)
        doc = load_pyskl(path)
        self.split = {k: set(v) for k, v in doc["split"].items()}
        self.annotations = {a.get("frame_dir"): a for a in doc["annotations"]}
        if None in self.annotations:
            raise RawFormatError(f"{path}: an annotation has no 'frame_dir'")

    def items(self) -> list[Item]:
        missing = missing_skeleton_samples()
        items = []
        for name in sorted(self.annotations):
            if name in missing:
                self.excluded.append(Skip(name, self.path, "on the authors' list of samples with missing skeletons"))
            else:
                items.append(Item(name, self.path))
        return items

    def read(self, item: Item) -> list[Sequence | Skip]:
        ann = self.annotations[item.key]
        where = f"{Path(self.path).name}: annotation {item.key}"
        try:
            n = NTUName.parse(item.key)
        except ValueError as exc:
            return [Skip(item.key, self.path, str(exc))]
        if int(ann.get("label", -1)) != n.action - 1:
            return [Skip(item.key, self.path, f"{where}: label {ann.get('label')} does not match the name's action A{n.action:03d}")]
        kp = np.asarray(ann.get("keypoint"))
        if kp.ndim != 4 or kp.shape[2:] != (JOINTS, 3):
            return [Skip(item.key, self.path, f"{where}: keypoint shape {kp.shape}, expected (M, T, 25, 3)")]
        try:
            kp = check_joints(kp, where)
        except SequenceError as exc:
            return [Skip(item.key, self.path, str(exc))]
        if kp.shape[0] > self.persons:
            return [Skip(item.key, self.path, f"{where}: {kp.shape[0]} actors, NTU samples keep at most {self.persons}")]
        flags = _train_flags(self.dataset, n)
        for protocol, key in (("xsub", "xsub_train"), ("xview", "xview_train"), ("xset", "xset_train")):
            if protocol in flags and key in self.split and (item.key in self.split[key]) != flags[protocol]:
                return [Skip(item.key, self.path, f"{where}: pyskl's {key} disagrees with the standard {protocol} lists")]
        return [Sequence(item.key, n.action - 1, kp, _meta(n), flags)]

    def options(self) -> dict:
        return {"reader": "pyskl"}
