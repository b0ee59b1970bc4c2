"""UTD-MHAD and NW-UCLA: one-person Kinect v1 skeletons (20 joints, layout ``kinect20``).

* UTD-MHAD: ``aA_sS_tT_skeleton.mat`` with key ``d_skel`` of shape (20, 3, T);
  27 actions, 8 subjects, 4 trials. Cross-subject: odd subjects train, even ones test.
  Its joint order lists the four trunk joints top-down (head, shoulder centre,
  spine, hip centre); they are permuted into the Kinect SDK order of ``kinect20``.
* NW-UCLA: ``aAA_sSS_eEE_vVV.json`` with ``skeletons`` [T][20][3] in the SDK order
  (and ``label``, 1-based class index, checked against the name); 10 actions with
  ids 1–6, 8, 9, 11, 12. Cross-view: views 1 and 2 train, view 3 tests.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import scipy.io

from data.raw import Item, RawFormatError, Sequence, Skip, Source, find_files
from data.skeleton import SequenceError, check_joints

JOINTS = 20
UTD_NAME = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_skeleton\.mat$")
UTD_CLASSES = 27
UTD_TO_KINECT20 = (3, 2, 1, 0) + tuple(range(4, 20))  # UTD joint index per kinect20 joint
NWUCLA_NAME = re.compile(r"^a(\d+)_s(\d+)_e(\d+)_v(\d+)\.json$")
NWUCLA_ACTIONS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)  # class id = position in this tuple
NWUCLA_TRAIN_VIEWS = (1, 2)


def read_utd(path: str | Path) -> np.ndarray:
    """One UTD-MHAD ``.mat`` file → ``(1, T, 20, 3)`` in the kinect20 joint order."""
    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except (scipy.io.matlab.MatReadError, ValueError, OSError, TypeError) as exc:  # damaged or not MATLAB
        raise RawFormatError(f"{path}: not a readable MATLAB file ({exc})") from None
    if "d_skel" not in mat:
        raise RawFormatError(f"{path}: no 'd_skel' array (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    skel = np.asarray(mat["d_skel"])
    if skel.ndim != 3 or skel.shape[:2] != (JOINTS, 3):
        raise RawFormatError(f"{path}: d_skel has shape {skel.shape}, expected (20, 3, T)")
    return skel.astype(np.float64).transpose(2, 0, 1)[None][:, :, list(UTD_TO_KINECT20)]


def read_nwucla(path: str | Path) -> tuple[np.ndarray, int | None]:
    """One NW-UCLA ``.json`` file → ``((1, T, 20, 3), label or None)``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RawFormatError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or "skeletons" not in doc:
        raise RawFormatError(f"{path}: no 'skeletons' list")
    try:
        skel = np.asarray(doc["skeletons"], dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise RawFormatError(f"{path}: 'skeletons' is not a [T][20][3] number array ({exc})") from None
    if skel.size == 0:
        return np.zeros((1, 0, JOINTS, 3)), doc.get("label")
    if skel.ndim != 3 or skel.shape[1:] != (JOINTS, 3):
        raise RawFormatError(f"{path}: 'skeletons' has shape {skel.shape}, expected (T, 20, 3)")
    return skel[None], doc.get("label")


class UTDMHADSource(Source):
    dataset, layout, persons, protocols = "utd_mhad", "kinect20", 1, ("xsub",)

    def __init__(self, path: str | list[str]):
        super().__init__()
        self.path = path

    def items(self) -> list[Item]:
        items = []
        for p in find_files(self.path, ".mat", "UTD-MHAD skeleton files"):
            if UTD_NAME.match(p.name):
                items.append(Item(p.stem, str(p)))
            else:
                self.excluded.append(Skip(p.stem, str(p), "name is not aA_sS_tT_skeleton.mat"))
        return items

    def read(self, item: Item) -> list[Sequence | Skip]:
        action, subject, trial = (int(g) for g in UTD_NAME.match(Path(item.path).name).groups())
        if not 1 <= action <= UTD_CLASSES:
            return [Skip(item.key, item.path, f"action {action} outside 1..{UTD_CLASSES}")]
        try:
            joints = check_joints(read_utd(item.path), item.key, JOINTS)
        except (RawFormatError, SequenceError) as exc:
            return [Skip(item.key, item.path, str(exc))]
        return [Sequence(item.key, action - 1, joints, {"subject": subject, "trial": trial},
                         {"xsub": subject % 2 == 1})]

    def options(self) -> dict:
        return {"reader": "utd-mhad", "joint_order": UTD_TO_KINECT20}


class NWUCLASource(Source):
    dataset, layout, persons, protocols = "nw_ucla", "kinect20", 1, ("xview",)

    def __init__(self, path: str | list[str]):
        super().__init__()
        self.path = path

    def items(self) -> list[Item]:
        items = []
        for p in find_files(self.path, ".json", "NW-UCLA skeleton files"):
            m = NWUCLA_NAME.match(p.name)
            if not m:
                self.excluded.append(Skip(p.stem, str(p), "name is not aAA_sSS_eEE_vVV.json"))
            elif int(m.group(1)) not in NWUCLA_ACTIONS:
                self.excluded.append(Skip(p.stem, str(p), f"action a{m.group(1)} is not one of NW-UCLA's 10"))
            else:
                items.append(Item(p.stem, str(p)))
        return items

    def read(self, item: Item) -> list[Sequence | Skip]:
        action, subject, episode, view = (int(g) for g in NWUCLA_NAME.match(Path(item.path).name).groups())
        label = NWUCLA_ACTIONS.index(action)
        try:
            joints, file_label = read_nwucla(item.path)
            if file_label is not None and file_label != label + 1:
                raise RawFormatError(f"{item.path}: 'label' {file_label} does not match action a{action:02d} "
                                     f"(class {label + 1} of 10)")
            joints = check_joints(joints, item.key, JOINTS)
        except (RawFormatError, SequenceError) as exc:
            return [Skip(item.key, item.path, str(exc))]
        return [Sequence(item.key, label, joints, {"subject": subject, "episode": episode, "view": view},
                         {"xview": view in NWUCLA_TRAIN_VIEWS})]

    def options(self) -> dict:
        return {"reader": "nw-ucla"}
