"""Seeded and explicit zero-shot splits, their registration, and the published seeded splits."""
import json

import pytest

from data.catalog import dataset_splits, default_split, split_spec
from data.split_builder import SplitError, build_splits, check_split, draw_split, register_splits
from main import ex


def test_draw_split_is_seeded_disjoint_and_sized():
    a = draw_split(27, 5, 5, seed=1)
    assert a == draw_split(27, 5, 5, seed=1) and a != draw_split(27, 5, 5, seed=2)
    assert len(a["unseen"]) == 5 and len(a["val"]) == 5 and not set(a["unseen"]) & set(a["val"])
    assert a["unseen"] == sorted(a["unseen"]) and a["seed"] == 1
    # over many seeds every class is drawn sometimes, so no class is systematically kept seen
    drawn = set().union(*(draw_split(27, 5, 5, s)["unseen"] for s in range(40)))
    assert drawn == set(range(27))


@pytest.mark.parametrize("dataset,k,n_unseen,n_val", [("utd_mhad", 27, 5, 5), ("nw_ucla", 10, 3, 2)])
def test_published_seeded_splits_are_the_builders(dataset, k, n_unseen, n_val):
    for key, spec in dataset_splits(dataset).items():
        drawn = draw_split(k, n_unseen, n_val, spec["seed"])
        assert (spec["unseen"], spec["val"]) == (drawn["unseen"], drawn["val"]), key
    assert list(dataset_splits(dataset)) == ["1", "2", "3"]


@pytest.mark.parametrize("unseen,val,match", [
    ([1, 2], [2, 3], r"classes \[2\] are both unseen and validation"),
    ([1, 30], [2], r"unseen class ids \[30\] are not in 0..26"),
    ([1, 1], [2], "listed twice"),
    ([], [2], "at least one unseen"),
    ([1], [], "at least one validation"),
    (list(range(20)), list(range(20, 26)), "leave fewer than 2 classes to train on"),
])
def test_bad_explicit_splits(unseen, val, match):
    with pytest.raises(SplitError, match=match):
        check_split(27, unseen, val)


def test_build_splits_options():
    assert build_splits(10, unseen=[4, 2], val=[1], ids=["x"]) == {"x": {"track": "main", "unseen": [2, 4], "val": [1]}}
    drawn = build_splits(10, num_unseen=3, num_val=2, seeds=[5, 6])
    assert list(drawn) == ["5", "6"] and drawn["5"] == draw_split(10, 3, 2, 5)
    assert list(build_splits(10, num_unseen=2, seeds=[5], ids=["a"])) == ["a"]
    with pytest.raises(SplitError, match="exactly one id"):
        build_splits(10, unseen=[1], val=[2])
    with pytest.raises(SplitError, match="do not name the 2 seeds"):
        build_splits(10, seeds=[1, 2], ids=["a"])
    with pytest.raises(SplitError, match="leave fewer than 2"):
        build_splits(10, num_unseen=5, num_val=4, seeds=[1])


def test_registered_splits_merge_with_published_ones(tmp_path):
    path = register_splits(tmp_path, "ntu60", build_splits(60, unseen=[0, 1], val=[2, 3], ids=["mine"]))
    assert json.loads(path.read_text())["splits"]["mine"]["unseen"] == [0, 1]
    assert list(dataset_splits("ntu60", tmp_path))[-1] == "mine"
    assert split_spec("ntu60", "mine", tmp_path)["val"] == [2, 3]
    assert "mine" not in dataset_splits("ntu60")  # other data roots do not see it
    register_splits(tmp_path, "ntu60", build_splits(60, unseen=[0, 1], val=[2, 3], ids=["mine"]))  # same: no-op
    with pytest.raises(SplitError, match="published split of ntu60"):
        register_splits(tmp_path, "ntu60", build_splits(60, num_unseen=5, seeds=[1]))
    cfg = ex.run("print_config", config_updates={"dataset": "ntu60", "split": "mine", "data_root": str(tmp_path)},
                 options={"--loglevel": "ERROR"}).config
    assert cfg["unseen_classes"] == [0, 1] and cfg["val_classes"] == [2, 3]
    assert default_split("utd_mhad", "main") == 1
