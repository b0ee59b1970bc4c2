"""NTU RGB+D: the .skeleton reader (real files and constructed ones), denoising, protocols, pyskl."""
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from data import ntu
from data.ntu import NTUName, NTUSkeletonSource, PysklSource, denoise, read_skeleton
from data.samples import convert_item
from data.raw import Item, RawFormatError, Skip

TRUNCATED = {"S005C002P013R002A056", "S012C001P008R002A030"}


def write_skeleton(path: Path, frames: list[list[tuple[str, np.ndarray]]]) -> Path:
    """An NTU .skeleton file: per frame a list of (body id, (25, 3) xyz)."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body_id, xyz in bodies:
            lines.append(f"{body_id} 0 1 1 1 1 0 0.1 0.2 2")
            lines.append("25")
            lines += [f"{x:.6f} {y:.6f} {z:.6f} 1 2 3 4 0.1 0.2 0.3 0.4 2" for x, y, z in xyz]
    path.write_text("\n".join(lines) + "\n")
    return path


def person(t: int, shift: float = 0.0, seed: int = 0, wide: bool = False) -> np.ndarray:
    """(t, 25, 3): a standing figure, taller than wide (or wider than tall), moving a little."""
    rng = np.random.default_rng(seed)
    base = np.stack([rng.uniform(-0.2, 0.2, 25), np.linspace(-0.9, 0.8, 25), np.full(25, 3.0)], -1)
    if wide:
        base = base[:, [1, 0, 2]]
    motion = 0.05 * np.sin(np.arange(t) / 3.0)[:, None, None] * rng.normal(size=(1, 25, 3))
    return base[None] + motion + np.array([shift, 0.0, 0.0])


# ----------------------------------------------------------------------------- real files

def _independent_counts(path: Path) -> tuple[int, list[int], str]:
    """Frame count, bodies per frame and the first joint line, found by walking the lines directly."""
    lines = path.read_text().split("\n")
    frames, i, per_frame, first_joint = int(lines[0]), 1, [], None
    for _ in range(frames):
        nb = int(lines[i])
        per_frame.append(nb)
        if nb and first_joint is None:
            first_joint = lines[i + 3]
        i += 1 + nb * 27
    assert all(not ln.strip() for ln in lines[i:]), "counting went wrong"
    return frames, per_frame, first_joint


def test_reader_on_every_real_file():
    files = sorted(shared("ntu_raw").glob("*.skeleton"))
    assert len(files) == 268
    multi = 0
    for path in files:
        if path.stem in TRUNCATED:
            continue
        sf = read_skeleton(path)
        frames, per_frame, first_joint = _independent_counts(path)
        assert sf.num_frames == frames, path.name
        np.testing.assert_array_equal(sf.bodies_per_frame, per_frame)
        assert sum(len(b.frames) for b in sf.bodies) == sum(per_frame), path.name
        assert all(b.joints.shape == (len(b.frames), 25, 3) for b in sf.bodies)
        np.testing.assert_allclose(sf.bodies[0].joints[0, 0], [float(v) for v in first_joint.split()[:3]])
        multi += len(sf.bodies) > 1
    assert multi == 74  # the README: 74 files hold two bodies


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_real_files_are_rejected_by_name(name):
    path = shared("ntu_raw", f"{name}.skeleton")
    with pytest.raises(RawFormatError, match=rf"{name}\.skeleton: line \d+ .*truncated"):
        read_skeleton(path)


def test_real_source_skips_the_truncated_files_with_reasons():
    src = NTUSkeletonSource("ntu120", str(shared("ntu_raw")))
    items = src.items()
    assert len(items) == 268 and not src.excluded
    results = [r for it in items if it.key in TRUNCATED | {"S001C001P001R001A011"} for r in src.read(it)]
    skips = {r.name: r.reason for r in results if isinstance(r, Skip)}
    assert set(skips) == TRUNCATED and all("truncated" in why for why in skips.values())
    src60 = NTUSkeletonSource("ntu60", str(shared("ntu_raw")))
    ntu60 = src60.items()
    assert src60.notes == ["240 files of setups after S017 or actions after A060 are not part of ntu60 and were "
                           "left out"]
    assert len(ntu60) == 28 and all(NTUName.parse(it.key).action <= 60 and NTUName.parse(it.key).setup <= 17
                                    for it in ntu60)


# ----------------------------------------------------------------------------- constructed files

def test_counts_that_do_not_add_up(tmp_path):
    good = write_skeleton(tmp_path / "S001C001P001R001A001.skeleton", [[("7", person(1)[0])]] * 3)
    text = good.read_text()
    sf = read_skeleton(good)
    assert sf.num_frames == 3 and len(sf.bodies) == 1 and sf.bodies[0].joints.shape == (3, 25, 3)

    bad = tmp_path / "bad.skeleton"
    bad.write_text(text.replace("3\n", "2\n", 1))  # announces 2 frames, holds 3
    with pytest.raises(RawFormatError, match=r"bad.skeleton: 28 lines after the last of the 2 frames"):
        read_skeleton(bad)
    bad.write_text(text.replace("\n25\n", "\n24\n", 1))
    with pytest.raises(RawFormatError, match=r"line 4 \(frame 1, body 1\): joint count 24, expected 25"):
        read_skeleton(bad)
    bad.write_text(text.replace("0.3 0.4 2\n", "0.3 0.4\n", 1))  # first joint line loses its last value
    with pytest.raises(RawFormatError, match=r"joint 1 has 11 values, expected 12"):
        read_skeleton(bad)
    bad.write_text(text.replace("7 0 1 1 1 1 0 0.1 0.2 2", "7 0 1 1 1 1 0 0.1", 1))
    with pytest.raises(RawFormatError, match=r"line 3 \(frame 1, body 1\): body header has 8 values"):
        read_skeleton(bad)
    bad.write_text("\n".join(text.split("\n")[:40]))
    with pytest.raises(RawFormatError, match=r"truncated"):
        read_skeleton(bad)
    bad.write_text("x\n")
    with pytest.raises(RawFormatError, match=r"expected the frame count"):
        read_skeleton(bad)


def test_nan_and_missing_skeletons_become_reasoned_skips(tmp_path):
    src = NTUSkeletonSource("ntu60", str(tmp_path))
    xyz = person(4)
    xyz[2, 5, 1] = np.nan
    write_skeleton(tmp_path / "S001C001P001R001A001.skeleton", [[("1", f)] for f in xyz])
    write_skeleton(tmp_path / "S001C001P001R001A002.skeleton", [[], [], []])  # no body in any frame
    write_skeleton(tmp_path / "S001C001P001R001A003.skeleton", [[("1", np.zeros((25, 3)))]] * 3)
    (tmp_path / "notes.skeleton").write_text("1\n0\n")
    write_skeleton(tmp_path / "S001C002P005R002A008.skeleton", [[("1", f)] for f in person(3)])  # official list
    items = src.items()
    assert [it.key for it in items] == ["S001C001P001R001A001", "S001C001P001R001A002", "S001C001P001R001A003"]
    assert {s.name: s.reason for s in src.excluded} == {
        "notes": "'notes' is not an NTU sample name (SsssCcccPpppRrrrAaaa)",
        "S001C002P005R002A008": "on the authors' list of samples with missing skeletons"}
    out = [convert_item(src, it, frames=50, origin=1, num_classes=60, joints=25)[0] for it in items]
    assert all(isinstance(o, Skip) for o in out)
    assert "NaN or Inf coordinate at actor 0, frame 2, joint 5" in out[0].reason
    assert "every joint is zero" in out[1].reason and "every joint is zero" in out[2].reason


def test_denoise_drops_short_and_wide_bodies_and_joins_actors(tmp_path):
    t = 30
    a, b = person(t, 0.0, 1), person(t, 1.0, 2)
    b = b + 0.2 * np.sin(np.arange(t))[:, None, None]  # b moves much more than a
    noise_short = person(5, 2.0, 3)
    wide = person(t, -1.0, 4, wide=True)
    late = person(t, 0.5, 5)
    frames = []
    for f in range(t):
        bodies = [("A", a[f]), ("B", b[f]), ("W", wide[f])]
        if f < 5:
            bodies.append(("S", noise_short[f]))
        frames.append(bodies)
    sf = read_skeleton(write_skeleton(tmp_path / "x.skeleton", frames))
    joints, rep = denoise(sf)
    assert rep.dropped == {"S": "tracked in fewer than 12 frames", "W": "implausible spread (wider than tall)"}
    assert rep.actors == [["B"], ["A"]]  # most active first
    np.testing.assert_allclose(joints[0], b, atol=1e-6)  # the file holds 6 decimals
    np.testing.assert_allclose(joints[1], a, atol=1e-6)

    # a body replacing actor 1 after a tracking loss joins actor 1 (frames do not overlap)
    frames = [[("A", a[f]), ("B", b[f])] if f < 15 else [("A", a[f]), ("C", late[f])] for f in range(t)]
    joints, rep = denoise(read_skeleton(write_skeleton(tmp_path / "y.skeleton", frames)))
    assert rep.actors == [["B", "C"], ["A"]] and not rep.dropped
    np.testing.assert_allclose(joints[0, 20], late[20], atol=1e-6)

    # every body too short: the longest is kept, and the report says so
    frames = [[("P", a[f])] + ([("Q", b[f])] if f < 3 else []) for f in range(8)]
    joints, rep = denoise(read_skeleton(write_skeleton(tmp_path / "z.skeleton", frames)))
    assert rep.kept_despite_filters and rep.actors == [["P"]] and joints.shape == (1, 8, 25, 3)


def test_names_protocols_and_missing_list():
    n = NTUName.parse("S018C002P045R001A061")
    assert (n.setup, n.camera, n.subject, n.replication, n.action) == (18, 2, 45, 1, 61)
    assert ntu.is_train(n, "xsub120") and not ntu.is_train(n, "xsub60") and ntu.is_train(n, "xset")
    assert not ntu.is_train(NTUName.parse("S001C001P003R001A001"), "xsub60")
    assert ntu.is_train(NTUName.parse("S001C002P003R001A001"), "xview")
    assert len(ntu.XSUB_TRAIN_60) == 20 and len(ntu.XSUB_TRAIN_120) == 53
    missing = ntu.missing_skeleton_samples()
    assert len(missing) == 535 and sum(NTUName.parse(m).setup <= 17 for m in missing) == 302
    with pytest.raises(ValueError, match="not an NTU sample name"):
        NTUName.parse("S1C1P1R1A1")


# ----------------------------------------------------------------------------- pyskl

def test_pyskl_pickle_gives_the_same_samples_as_the_raw_files(tmp_path):
    """pyskl's annotations hold the denoised (M, T, 25, 3) joints: the same samples must come out."""
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    names = ["S001C001P001R001A001", "S001C001P003R001A050", "S001C002P002R001A010"]
    for k, name in enumerate(names):
        a, b = person(20, 0.0, k), person(20, 1.0, k + 10)
        bodies = [[("1", a[f])] + ([("2", b[f])] if "A050" in name else []) for f in range(20)]
        write_skeleton(raw_dir / f"{name}.skeleton", bodies)
    raw = NTUSkeletonSource("ntu60", str(raw_dir))
    anns = []
    for it in raw.items():
        seq = raw.read(it)[0]
        anns.append({"frame_dir": it.key, "label": seq.label, "keypoint": seq.joints.astype(np.float32),
                     "total_frames": seq.joints.shape[1]})
    split = {"xsub_train": ["S001C001P001R001A001", "S001C002P002R001A010"], "xsub_val": ["S001C001P003R001A050"]}
    pkl = tmp_path / "ntu60_3danno.pkl"
    pkl.write_bytes(pickle.dumps({"split": split, "annotations": anns}))
    py = PysklSource("ntu60", str(pkl))
    assert [it.key for it in py.items()] == names
    rows = []
    for it_raw, it_py in zip(raw.items(), py.items()):
        (row_r, x_r), = convert_item(raw, it_raw, frames=50, origin=1, num_classes=60, joints=25)
        (row_p, x_p), = convert_item(py, it_py, frames=50, origin=1, num_classes=60, joints=25)
        assert row_r.pop("bodies") == (2 if "A050" in it_raw.key else 1) and row_r.pop("bodies_dropped") == 0
        assert row_r == row_p
        np.testing.assert_allclose(x_r, x_p, atol=1e-5)
        rows.append(row_p)
    assert [r["train:xsub"] for r in rows] == [True, False, True]  # performers 1, 3, 2
    assert [r["label"] for r in rows] == [0, 49, 9]

    # pyskl's split lists must agree with the standard protocol
    split["xsub_train"].append("S001C001P003R001A050")
    pkl.write_bytes(pickle.dumps({"split": split, "annotations": anns}))
    py = PysklSource("ntu60", str(pkl))
    (skip,) = py.read(Item("S001C001P003R001A050", str(pkl)))
    assert isinstance(skip, Skip) and "disagrees with the standard xsub" in skip.reason
    pkl.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(RawFormatError, match="pyskl format"):
        PysklSource("ntu60", str(pkl))


def test_pyskl_on_real_files(tmp_path):
    """Real recordings through both routes give identical samples."""
    files = sorted(shared("ntu_raw").glob("*.skeleton"))
    picked = [p for p in files if p.stem not in TRUNCATED][::40]
    raw = NTUSkeletonSource("ntu120", [str(p) for p in picked])
    anns = [{"frame_dir": it.key, "label": s.label, "keypoint": s.joints}
            for it in raw.items() for s in raw.read(it)]
    pkl = tmp_path / "ntu120_3danno.pkl"
    pkl.write_bytes(pickle.dumps({"split": {}, "annotations": anns}))
    py = PysklSource("ntu120", str(pkl))
    for it_raw, it_py in zip(raw.items(), py.items()):
        (_, x_r), = convert_item(raw, it_raw, frames=50, origin=1, num_classes=120, joints=25)
        (_, x_p), = convert_item(py, it_py, frames=50, origin=1, num_classes=120, joints=25)
        np.testing.assert_array_equal(x_r, x_p)
