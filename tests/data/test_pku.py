"""PKU-MMD Phase I: split file, label rows, segments, and what is refused."""
import numpy as np
import pytest

from data.pku import PKUSource, read_labels, read_split_file
from data.samples import build_samples
from data.raw import RawFormatError, Sequence, Skip


def write_video(path, frames: int, second_person: bool = False, only_second: bool = False):
    rng = np.random.default_rng(frames)
    x = np.zeros((frames, 2, 25, 3))
    if not only_second:
        x[:, 0] = rng.normal(size=(frames, 25, 3)) * 0.1 + [0, 0, 3]
    if second_person or only_second:
        x[:, 1] = rng.normal(size=(frames, 25, 3)) + [1, 0, 3]
    np.savetxt(path, x.reshape(frames, 150), fmt="%.5f")
    return x


@pytest.fixture
def pku_root(tmp_path):
    skel, lab = tmp_path / "PKU_Skeleton_Renew", tmp_path / "Train_Label_PKU_final"
    skel.mkdir()
    lab.mkdir()
    write_video(skel / "0002-L.txt", 300)
    (lab / "0002-L.txt").write_text("8,10,60,1\n13,100,180,2\n51,250,320,1\n")  # the last runs past frame 300
    write_video(skel / "0291-M.txt", 200, only_second=True)
    (lab / "0291-M.txt").write_text("1,0,50,1\n")
    write_video(skel / "0003-R.txt", 100)   # no label file
    write_video(skel / "9999-L.txt", 100)   # not in the split file
    (lab / "9999-L.txt").write_text("1,0,50,1\n")
    split = tmp_path / "cross-subject.txt"
    split.write_text("Training videos: \n0002-L, 0003-R, \nValidataion videos: \n0291-M\n")
    return skel, lab, split


def test_pku_segments(pku_root, tmp_path):
    skel, lab, split = pku_root
    assert read_split_file(split) == ({"0002-L", "0003-R"}, {"0291-M"})
    src = PKUSource(str(skel), str(lab), str(split))
    items = src.items()
    assert [it.key for it in items] == ["0002-L", "0291-M"]
    assert sorted((s.name, s.reason.split(" ")[0]) for s in src.excluded) == [("0003-R", "no"), ("9999-L", "not")]
    out = src.read(items[0])
    seqs = [o for o in out if isinstance(o, Sequence)]
    assert [(s.name, s.label, s.joints.shape[1], s.train["xsub"]) for s in seqs] == [
        ("0002-L_01", 7, 50, True), ("0002-L_02", 12, 80, True)]
    (skip,) = [o for o in out if isinstance(o, Skip)]
    assert skip.name == "0002-L_03" and "segment frames 250..320 outside the video's 300 frames" in skip.reason
    (seg,) = src.read(items[1])
    assert seg.joints[0].any() and not seg.joints[1].any()  # only slot 2 was tracked: it becomes actor 1
    assert seg.train == {"xsub": False} and seg.meta["view"] == "M"
    samples = build_samples(src, tmp_path / "s", num_classes=51, frames=50, origin=1, log=lambda m: None)
    assert [r["name"] for r in samples.rows] == ["0002-L_01", "0002-L_02", "0291-M_01"]


def test_pku_bad_files(tmp_path):
    (tmp_path / "s.txt").write_text("Training videos:\n0002-L\n")
    with pytest.raises(RawFormatError, match="expected 4 lines"):
        read_split_file(tmp_path / "s.txt")
    (tmp_path / "l.txt").write_text("8,10,60\n")
    with pytest.raises(RawFormatError, match=r"l.txt: line 1: 3 values, expected class,start,end,confidence"):
        read_labels(tmp_path / "l.txt")
    (tmp_path / "l.txt").write_text("52,10,60,1\n")
    with pytest.raises(RawFormatError, match=r"class 52 outside 1..51"):
        read_labels(tmp_path / "l.txt")
    skel = tmp_path / "sk"
    skel.mkdir()
    np.savetxt(skel / "0002-L.txt", np.zeros((20, 75)))
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "0002-L.txt").write_text("1,0,10,1\n")
    (tmp_path / "split.txt").write_text("Training videos:\n0002-L\nValidataion videos:\n0003-L\n")
    src = PKUSource(str(skel), str(tmp_path / "lab"), str(tmp_path / "split.txt"))
    (skip,) = src.read(src.items()[0])
    assert "75 values per line, expected 150" in skip.reason
    with pytest.raises(FileNotFoundError, match="raw.labels"):
        PKUSource(str(skel), "", str(tmp_path / "split.txt"))
