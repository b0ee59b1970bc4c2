"""The prepare pipeline: preprocessing, stages 1 and 2, resuming, bad input, the generic format,
the published splits, and prepared real recordings that pass the array validator."""
import csv
import json
import re

import numpy as np
import pytest

from conftest import shared
from data import prepare as prep
from data.arrays import ArraySpec, DataError, load_part, write_npy_chunks
from data.catalog import get_dataset, split_dir
from data.prepare import prepare_dataset, write_split, write_splits
from data.samples import SampleSet, build_samples
from data.raw import Item, Sequence, Source
from data.skeleton import SequenceError, to_layout
from data.split_builder import SplitError
from descriptions import load_class_texts
from main import ex

OPTS = {"--loglevel": "ERROR"}


# ----------------------------------------------------------------------------- preprocessing

def test_to_layout_translates_resamples_and_pads():
    t = np.arange(11, dtype=float)
    x = np.zeros((1, 11, 25, 3))
    x[0, :, :, 0] = t[:, None]                 # every joint moves along x by 1 per frame
    x[0, :, :, 1] = np.arange(25)[None, :]     # joints stacked in y
    x[0, :, 1] += [5.0, 7.0, 9.0]              # the origin joint (spine_mid) sits elsewhere
    s = to_layout(x, frames=21, persons=2, origin=1, name="s")
    assert s.shape == (3, 21, 25, 2) and s.dtype == np.float32
    np.testing.assert_allclose(s[:, 0, 1, 0], 0.0)                       # first frame's origin joint at 0
    np.testing.assert_allclose(s[0, :, 0, 0], np.linspace(0, 10, 21) - 5.0, atol=1e-6)  # linear in time
    expected_y = np.arange(25) - 8.0  # the origin joint's y at frame 0 was 1 + 7
    expected_y[1] = 0.0
    np.testing.assert_allclose(s[1, 5, :, 0], expected_y, atol=1e-6)
    assert not s[..., 1].any()                                           # second person zero-filled


def test_to_layout_keeps_absent_actors_zero_and_drops_empty_frames():
    x = np.zeros((2, 6, 25, 3))
    x[0, 1:5] = 1.0 + np.arange(4)[:, None, None]   # actor 1 in frames 1..4 (frames 0 and 5: nobody)
    x[1, 3:5] = 10.0                                 # actor 2 only in frames 3..4
    s = to_layout(x, frames=7, persons=2, origin=1, name="s")
    np.testing.assert_allclose(s[0, :, 0, 0], np.linspace(0.0, 3.0, 7), atol=1e-6)  # empty frames dropped
    present2 = np.abs(s[..., 1]).sum(axis=(0, 2)) > 0
    # source frames 1..4 → steps at 0, .5, 1, 1.5, 2, 2.5, 3; actor 2 at source 2..3 (nearest, ties to even)
    assert present2.tolist() == [False, False, False, True, True, True, True]
    # where actor 2 is present, it was translated by actor 1's origin (value 1), never blended with zeros
    np.testing.assert_allclose(s[:, present2, :, 1], 9.0)


@pytest.mark.parametrize("make,match", [
    (lambda: np.zeros((1, 5, 25, 3)), "every joint is zero"),
    (lambda: np.pad(np.ones((1, 1, 25, 3)), ((0, 0), (0, 4), (0, 0), (0, 0))), "1 frame with a skeleton; at least 2"),
    (lambda: np.full((1, 5, 25, 3), np.nan), "NaN or Inf coordinate at actor 0, frame 0, joint 0"),
    (lambda: np.ones((3, 5, 25, 3)), "3 actors, the dataset keeps at most 2"),
    (lambda: np.ones((1, 0, 25, 3)), "no frames"),
    (lambda: np.ones((5, 25, 3)), r"expected joints of shape \(M, T, V, 3\)"),
])
def test_bad_sequences_have_clear_messages(make, match):
    with pytest.raises(SequenceError, match=f"seq7: {match}"):
        to_layout(make(), frames=10, persons=2, origin=1, name="seq7")


def test_streaming_writer(tmp_path):
    blocks = [np.full((n, 2, 3), i, np.float32) for i, n in enumerate((3, 0, 2))]
    write_npy_chunks(tmp_path / "a.npy", (5, 2, 3), np.float32, blocks)
    out = np.load(tmp_path / "a.npy")
    assert out.shape == (5, 2, 3) and out[:3].max() == 0 and out[3:].min() == 2
    with pytest.raises(DataError, match="4 rows written, 5 announced"):
        write_npy_chunks(tmp_path / "b.npy", (5, 2, 3), np.float32, blocks[:1] + [np.ones((1, 2, 3))])
    assert not (tmp_path / "b.npy").exists() and not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- a source with every class

class AllClasses(Source):
    """Two sequences per class: subject 1 (training) and subject 2 (test)."""

    layout, persons, protocols = "ntu25", 2, ("xsub",)

    def __init__(self, dataset: str, num_classes: int):
        super().__init__()
        self.dataset, self.num_classes = dataset, num_classes

    def items(self):
        return [Item(f"c{c:03d}s{s}", "") for c in range(self.num_classes) for s in (1, 2)]

    def read(self, item):
        c, s = int(item.key[1:4]), int(item.key[-1])
        x = np.random.default_rng(c * 10 + s).normal(size=(1, 4, 25, 3))
        return [Sequence(item.key, c, x, {"subject": s}, {"xsub": s == 1})]

    def fingerprint(self, items):
        return f"{self.dataset}-{self.num_classes}"


PAPER = {  # ../shared/docs/SPLITS.md, copied independently of data/splits.json
    "ntu60": {"1": [4, 19, 31, 47, 51], "2": [12, 29, 32, 44, 59], "3": [7, 20, 28, 39, 58],
              "5": [10, 11, 19, 26, 56], "12": [3, 5, 9, 12, 15, 40, 42, 47, 51, 56, 58, 59]},
    "ntu120": {"4": [3, 18, 26, 38, 41, 60, 87, 99, 102, 110], "5": [5, 12, 14, 15, 17, 42, 67, 82, 100, 119],
               "6": [6, 20, 27, 33, 42, 55, 71, 97, 104, 118], "10": [4, 13, 37, 43, 49, 65, 88, 95, 99, 106],
               "24": [5, 9, 11, 16, 18, 20, 22, 29, 35, 39, 45, 49, 59, 68, 70, 81, 84, 87, 93, 94, 104, 113, 114, 119]},
    "pku": {"7": [1, 9, 20, 34, 50], "8": [3, 14, 29, 31, 49], "9": [2, 15, 39, 41, 43]},
}
PAPER_VAL = {"ntu60": {"5": [16, 21, 25, 31, 48], "12": [4, 8, 10, 13, 17, 22, 30, 33, 39, 46, 50, 54]},
             "ntu120": {"10": [5, 10, 32, 61, 72, 74, 76, 77, 83, 96],
                        "24": [1, 3, 4, 10, 17, 19, 27, 47, 48, 53, 58, 63, 66, 79, 83, 86, 89, 92, 97, 98, 100,
                               103, 105, 108]},
             "pku": {}}
ONE_SHOT = {"ntu60": {"one_shot_full_10": list(range(0, 60, 6))},  # SPLITS.md, one-shot track
            "ntu120": {"one_shot_full_20": list(range(0, 120, 6))},
            "pku": {"one_shot_pku_10": sorted([10, 30, 40, 0, 5, 35, 45, 15, 20, 25])}}  # stored sorted


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_published_splits_are_written_with_the_papers_classes(tmp_path, dataset):
    k = get_dataset(dataset).num_classes
    samples = build_samples(AllClasses(dataset, k), prep.samples_dir(tmp_path, dataset, 50), num_classes=k,
                            frames=50, origin=1, shard_size=64, log=lambda m: None)
    published = {**PAPER[dataset], **ONE_SHOT[dataset]}
    assert prep.published_split_ids(dataset, tmp_path) == list(published)
    write_splits(samples, tmp_path, dataset, list(published), "xsub", log=lambda m: None)
    spec = ArraySpec(k, 3, 25, 2)
    for split, unseen in published.items():
        d = split_dir(tmp_path, dataset, split)
        meta = json.loads((d / "meta.json").read_text())
        val = meta["val"]
        seen = set(range(k)) - set(unseen)
        assert meta["unseen"] == unseen and len(val) == len(unseen)
        assert not set(val) & set(unseen) and set(val) <= seen
        if split in PAPER_VAL[dataset]:
            assert val == PAPER_VAL[dataset][split]
        x, y = load_part(d, "seen_train", spec, allowed=seen, required=set(val))
        assert sorted(set(y.tolist())) == sorted(seen) and x.shape == (len(seen), 3, 50, 25, 2)
        _, y = load_part(d, "unseen", spec, allowed=set(unseen), required=set(unseen))
        assert sorted(y.tolist()) == unseen  # one test sample per unseen class
        _, y = load_part(d, "seen_test", spec, allowed=seen)
        assert sorted(y.tolist()) == sorted(seen)


def test_split_errors_name_the_classes(tmp_path):
    src = AllClasses("pku", 51)
    samples = build_samples(src, tmp_path / "s", num_classes=51, frames=50, origin=1, log=lambda m: None)
    keep = ~((samples.label == 9) & ~samples.train_mask("xsub"))  # class 9 loses its test sample
    samples.label = np.where(keep, samples.label, 8)
    with pytest.raises(SplitError, match=r"pku split 7: unseen classes \[9\] have no test samples under protocol xsub"):
        write_split(samples, tmp_path, "pku", "7", [1, 9, 20, 34, 50], [0, 2, 3, 4, 5], "xsub", log=lambda m: None)
    with pytest.raises(ValueError, match=r"protocol 'xview' is not available for pku; choose one of \['xsub'\]"):
        samples.train_mask("xview")


# ----------------------------------------------------------------------------- the generic format

def make_generic(folder, *, bad: bool = False, classes: int = 6):
    """A small dataset in the generic format: ``classes`` classes, subjects 1-4, 3 takes each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(folder / "classes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "description"])
        for c in range(classes):
            w.writerow([f"move {c}", f"The person performs movement number {c}."])
    rows = []
    for c in range(classes):
        for s in range(1, 5):
            for take in range(3):
                name = f"seq/c{c}_s{s}_t{take}.npz"
                (folder / "seq").mkdir(exist_ok=True)
                joints = rng.normal(size=(rng.integers(8, 30), 20, 3)) + np.array([0, 0, 3.0])
                np.savez(folder / name, joints=joints.astype(np.float32))
                rows.append([name, f"move {c}", s])
    if bad:
        np.savez(folder / "seq/nan.npz", joints=np.full((9, 20, 3), np.nan))
        np.savez(folder / "seq/zero.npz", joints=np.zeros((9, 20, 3)))
        np.savez(folder / "seq/one.npz", joints=np.ones((1, 20, 3)))
        np.savez(folder / "seq/v25.npz", joints=np.ones((9, 25, 3)))
        np.savez(folder / "seq/key.npz", other=np.ones((9, 20, 3)))
        rows += [[f"seq/{n}.npz", "move 0", 1] for n in ("nan", "zero", "one", "v25", "key", "gone")]
    with open(folder / "sequences.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "subject"])
        w.writerows(rows)
    return folder


def prepare_generic(root, folder, **new_split):
    updates = {"data_root": str(root), "raw.name": "mini", "raw.path": str(folder), "raw.layout": "kinect20",
               "raw.train_subjects": [1, 2], "raw.shard_size": 16,
               **{f"new_split.{k}": v for k, v in {"num_unseen": 2, "num_val": 1, "seeds": [1, 2], **new_split}.items()}}
    return ex.run("prepare_generic", config_updates=updates, options=OPTS).result


def test_generic_dataset_end_to_end(tmp_path):
    folder = make_generic(tmp_path / "raw", bad=True)
    root = tmp_path / "root"
    res = prepare_generic(root, folder)
    assert res["samples"] == 6 * 4 * 3 and res["skipped"] == 6
    report = (root / "samples/mini/T50/skipped.tsv").read_text()
    for name, why in (("nan", "NaN or Inf coordinate at actor 0, frame 0, joint 0"), ("zero", "every joint is zero"),
                      ("one", "1 frame with a skeleton"), ("v25", "25 joints per skeleton, the layout has 20"),
                      ("key", "no array 'joints'"), ("gone", "does not exist")):
        assert re.search(rf"seq/{name}\.npz\t[^\t]+\t.*{why}", report), name
    spec = get_dataset("mini", root)
    assert (spec.num_classes, spec.layout, spec.num_person) == (6, "kinect20", 1)
    assert load_class_texts("mini", "des", 6, data_root=root)[2] == "The person performs movement number 2."
    arr = ArraySpec(6, 3, 20, 1)
    for split in ("1", "2"):
        meta = json.loads((split_dir(root, "mini", split) / "meta.json").read_text())
        unseen, val = meta["unseen"], meta["val"]
        assert len(unseen) == 2 and len(val) == 1 and not set(unseen) & set(val)
        seen = set(range(6)) - set(unseen)
        x, y = load_part(split_dir(root, "mini", split), "seen_train", arr, allowed=seen, required=set(val))
        assert x.shape == (4 * 2 * 3, 3, 50, 20, 1)  # 4 seen classes x subjects 1, 2 x 3 takes
        _, y = load_part(split_dir(root, "mini", split), "unseen", arr, allowed=set(unseen), required=set(unseen))
        assert len(y) == 2 * 2 * 3
    # the config derives everything from the registered dataset and split
    cfg = ex.run("print_config", config_updates={"dataset": "mini", "data_root": str(root), "split": 2},
                 options=OPTS).config
    assert cfg["graph_layout"] == "kinect20" and cfg["val_classes"] == meta["val"]
    assert cfg["unseen_classes"] == meta["unseen"]


@pytest.mark.slow
def test_tiny_run_on_a_generic_dataset(tmp_path):
    root = tmp_path / "root"
    prepare_generic(root, make_generic(tmp_path / "raw"))
    res = ex.run(config_updates={"dataset": "mini", "data_root": str(root), "split": 1, "epoch_num": 1,
                                 "hidden_channels": 4, "out_channels": 32, "text_model": "minilm",
                                 "text_kind": "des", "batch_size": 8, "warmup_epochs": 1,
                                 "out_dir": str(tmp_path / "ckpt")}, options=OPTS).result
    assert res["num_unseen_samples"] == 2 * 2 * 3 and len(res["unseen_classes"]) == 2


def test_generic_format_errors(tmp_path):
    folder = make_generic(tmp_path / "raw")
    (folder / "classes.csv").write_text("name,colour\na,red\n")
    with pytest.raises(ValueError, match=r"classes.csv: header \['name', 'colour'\]: unknown columns \['colour'\]"):
        prepare_generic(tmp_path / "root", folder)
    (folder / "classes.csv").write_text("name,description\na,x\nb,\n")
    with pytest.raises(ValueError, match=r"column 'description' is empty for class 1 \('b'\)"):
        prepare_generic(tmp_path / "root", folder)
    make_generic(folder)
    with pytest.raises(ValueError, match="'ntu60' is a built-in dataset"):
        ex.run("prepare_generic", config_updates={"data_root": str(tmp_path), "raw.name": "ntu60",
                                                  "raw.path": str(folder)}, options=OPTS)
    with open(folder / "sequences.csv", "a") as f:
        f.write("seq/c0_s1_t0.npz,jump,1\n")
    with pytest.raises(ValueError, match=r"sequences.csv: line 74: class 'jump' is not in classes.csv"):
        prepare_generic(tmp_path / "root", folder)


def test_rerun_reuses_finished_shards_and_splits(tmp_path):
    folder = make_generic(tmp_path / "raw")
    root = tmp_path / "root"
    prepare_generic(root, folder)
    sdir = root / "samples/mini/T50"
    shards = sorted(sdir.glob("shard_*.npy"))
    assert len(shards) == 5  # 72 items in shards of 16
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    (sdir / "shard_00003.json").unlink()  # as if interrupted while writing shard 3
    lines = []
    res = prepare_dataset("mini", root, {"splits": ["1", "2"], "shard_size": 16}, log=lines.append)
    assert res["samples"] == 72
    assert "reusing 4 of 5 finished shards" in lines[0]
    assert [p for p in shards if p.stat().st_mtime_ns != mtimes[p]] == [sdir / "shard_00003.npy"]
    assert sum("up to date" in ln for ln in lines) == 2  # same samples and classes: splits not rewritten

    # a changed input file rebuilds the samples, and the splits after them
    np.savez(folder / "seq/c0_s1_t0.npz", joints=np.ones((12, 20, 3), np.float32) * [1, 2, 3])
    lines.clear()
    prepare_dataset("mini", root, {"splits": ["1"], "shard_size": 16}, log=lines.append)
    assert "changed since these samples were built; rebuilding" in lines[0]
    assert not any("up to date" in ln for ln in lines)


def test_workers_give_the_same_samples(tmp_path):
    folder = make_generic(tmp_path / "raw", classes=3)
    from data.generic import GenericSource

    one = build_samples(GenericSource("g", str(folder), "kinect20", 1, [1, 2]), tmp_path / "a", num_classes=3,
                        frames=50, origin=1, shard_size=10, log=lambda m: None)
    two = build_samples(GenericSource("g", str(folder), "kinect20", 1, [1, 2]), tmp_path / "b", num_classes=3,
                        frames=50, origin=1, shard_size=10, workers=2, log=lambda m: None)
    assert one.rows == two.rows
    everything = np.ones(len(one), bool)
    np.testing.assert_array_equal(np.concatenate(list(one.iter_samples(everything))),
                                  np.concatenate(list(two.iter_samples(everything))))


def test_make_split_registers_and_writes(tmp_path):
    root = tmp_path / "root"
    prepare_generic(root, make_generic(tmp_path / "raw"))
    res = ex.run("make_split", config_updates={"dataset": "mini", "data_root": str(root), "new_split.unseen": [0, 5],
                                               "new_split.val": [1], "new_split.ids": ["mine"]}, options=OPTS).result
    assert res == [str(split_dir(root, "mini", "mine"))]
    _, y = load_part(split_dir(root, "mini", "mine"), "unseen", ArraySpec(6, 3, 20, 1))
    assert sorted(set(y.tolist())) == [0, 5]
    with pytest.raises(SplitError, match="already registered with unseen"):
        ex.run("make_split", config_updates={"dataset": "mini", "data_root": str(root), "new_split.unseen": [1, 2],
                                             "new_split.val": [3], "new_split.ids": ["mine"]}, options=OPTS)
    with pytest.raises(FileNotFoundError, match=r"no prepared samples for utd_mhad .* run first: python main.py "
                                                r"prepare with dataset=utd_mhad"):
        ex.run("make_split", config_updates={"dataset": "utd_mhad", "data_root": str(root), "new_split.seeds": [9]},
               options=OPTS)


# ----------------------------------------------------------------------------- real recordings

def test_utd_mhad_prepared_arrays_pass_the_validator(tmp_path):
    files = sorted(shared("utd_mhad").glob("*.mat"))
    res = prepare_dataset("utd_mhad", tmp_path, {"path": str(shared("utd_mhad"))}, log=lambda m: None)
    assert res["samples"] == 861 and res["skipped"] == 0 and res["protocol"] == "xsub"
    meta = [(int(m[1]) - 1, int(m[2])) for m in (re.match(r"a(\d+)_s(\d+)_", p.name) for p in files)]
    spec = ArraySpec(27, 3, 20, 1)
    for split in ("1", "2", "3"):
        d = split_dir(tmp_path, "utd_mhad", split)
        info = json.loads((d / "meta.json").read_text())
        unseen, val = info["unseen"], info["val"]
        seen = set(range(27)) - set(unseen)
        x, y = load_part(d, "seen_train", spec, allowed=seen, required=set(val))
        assert x.shape[1:] == (3, 50, 20, 1)
        assert len(y) == sum(c in seen and s % 2 == 1 for c, s in meta)
        _, y = load_part(d, "unseen", spec, allowed=set(unseen), required=set(unseen))
        assert len(y) == sum(c in unseen and s % 2 == 0 for c, s in meta)
        _, y = load_part(d, "seen_test", spec, allowed=seen)
        assert len(y) == sum(c in seen and s % 2 == 0 for c, s in meta)
        np.testing.assert_allclose(x[:, :, 0, 1, 0], 0.0)  # first frame's spine joint at the origin


def test_ntu_shared_files_prepare(tmp_path):
    raw = {"path": str(shared("ntu_raw"))}
    with pytest.raises(SplitError, match=r"6 of 6 splits could not be written:\n  ntu120 split 4: unseen classes "
                                         r"\[3, 18, 26, 38, 41\] have no test samples"):
        prepare_dataset("ntu120", tmp_path, raw, log=lambda m: None)  # a subset: the paper's classes are missing
    samples = SampleSet(prep.samples_dir(tmp_path, "ntu120", 50))
    assert len(samples) == 266
    skipped = (samples.dir / "skipped.tsv").read_text().splitlines()[1:]
    assert sorted(s.split("\t")[0] for s in skipped) == ["S005C002P013R002A056", "S012C001P008R002A030"]
    assert all("truncated" in s for s in skipped)
    res = ex.run("make_split", config_updates={"dataset": "ntu120", "data_root": str(tmp_path),
                                               "new_split.unseen": [60, 75, 90, 105, 119],
                                               "new_split.val": [61, 76, 91, 106, 118], "new_split.ids": ["sub"]},
                 options=OPTS).result
    d = split_dir(tmp_path, "ntu120", "sub")
    assert res == [str(d)]
    spec = ArraySpec(120, 3, 25, 2)
    x, y = load_part(d, "seen_train", spec, required={61, 76, 91, 106, 118},
                     allowed=set(range(120)) - {60, 75, 90, 105, 119})
    ux, uy = load_part(d, "unseen", spec, required={60, 75, 90, 105, 119}, allowed={60, 75, 90, 105, 119})
    assert x.shape[1:] == (3, 50, 25, 2) and len(uy) == 10  # P106 performs each NTU-120 class twice
    np.testing.assert_allclose(x[:, :, 0, 1, 0], 0.0)
    two = np.abs(x[..., 1]).reshape(len(x), -1).sum(1) > 0
    assert 0 < two.sum() < len(x)  # one- and two-person samples; the absent second person is zeros
