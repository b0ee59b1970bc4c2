"""The supervised track's data: every class under a dataset's protocol, from the prepared samples."""
import numpy as np
import pytest

from conftest import shared
from data.catalog import get_dataset
from data.prepare import prepare_dataset
from data.supervised import load_supervised


@pytest.fixture(scope="module")
def ucla_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucla")
    prepare_dataset("nw_ucla", root, {"path": str(shared("nw_ucla", "all_sqe"))}, log=lambda _: None)
    return root


def test_nw_ucla_cross_view_train_val_test(ucla_root):
    spec = get_dataset("nw_ucla")
    d = load_supervised(ucla_root, spec, "", 52, 0.1, 0)
    assert d.protocol == "xview"
    # 1,484 files, 2 refused (1 frame each); view 3 is the test view
    assert len(d.train) + len(d.val) + len(d.test) == 1482
    assert len(d.test) == 463 and d.train.x.shape[1:] == (3, 52, 20, 1)
    assert sorted(set(d.test.y.tolist())) == list(range(10)) == d.train.classes
    # about a tenth of each class's training samples, drawn per class
    counts = np.bincount(d.val.y.numpy(), minlength=10)
    totals = counts + np.bincount(d.train.y.numpy(), minlength=10)
    assert np.all(np.abs(counts - 0.1 * totals) <= 1)
    again = load_supervised(ucla_root, spec, "", 52, 0.1, 0)
    assert np.array_equal(again.val.x.numpy(), d.val.x.numpy())  # seeded


def test_unknown_protocol_and_missing_samples_are_named(ucla_root, tmp_path):
    with pytest.raises(ValueError, match=r"protocol 'xsub' is not available for nw_ucla.*\['xview'\]"):
        load_supervised(ucla_root, get_dataset("nw_ucla"), "xsub", 52, 0.1, 0)
    with pytest.raises(FileNotFoundError, match="python main.py prepare with dataset=utd_mhad"):
        load_supervised(tmp_path, get_dataset("utd_mhad"), "", 50, 0.1, 0)
