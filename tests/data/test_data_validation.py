"""The array reader refuses bad input with the file, the index and the fix in its message."""
import numpy as np
import pytest

from data.arrays import ArraySpec, DataError, load_pair, save_part
from data.catalog import draw_val_classes, split_spec

SPEC = ArraySpec(num_classes=6, channels=3, joints=25, persons=2)


def write(tmp_path, data, labels, name="part"):
    d, l = tmp_path / f"{name}_data.npy", tmp_path / f"{name}_label.npy"
    np.save(d, data)
    np.save(l, labels)
    return d, l


def good(n=8, t=10):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3, t, 25, 2)).astype(np.float32), np.arange(n, dtype=np.int64) % 6


def test_valid_pair_loads_into_memory(tmp_path):
    x, y = good()
    data, labels = load_pair(*write(tmp_path, x, y), SPEC)
    assert data.shape == x.shape and data.flags.writeable and labels.dtype == np.int64
    np.testing.assert_array_equal(data, x)


def test_missing_file_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_pair(tmp_path / "nope_data.npy", tmp_path / "nope_label.npy", SPEC, hint="python main.py prepare with dataset=ntu60")
    assert "nope_data.npy" in str(e.value) and "python main.py prepare with dataset=ntu60" in str(e.value)


def test_corrupt_file(tmp_path):
    d, l = write(tmp_path, *good())
    d.write_bytes(d.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="part_data.npy"):
        load_pair(d, l, SPEC)


@pytest.mark.parametrize("shape,match", [((8, 3, 10, 25), "expected 5 dims"), ((8, 2, 10, 25, 2), "does not match"),
                                         ((8, 3, 10, 20, 2), "does not match"), ((8, 3, 10, 25, 1), "does not match")])
def test_wrong_shapes(tmp_path, shape, match):
    x = np.zeros(shape, np.float32)
    with pytest.raises(DataError, match=match):
        load_pair(*write(tmp_path, x, np.zeros(8, np.int64)), SPEC)


def test_wrong_dtype(tmp_path):
    x, y = good()
    with pytest.raises(DataError, match="float64, expected float32"):
        load_pair(*write(tmp_path, x.astype(np.float64), y), SPEC)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_names_the_sample(tmp_path, bad):
    x, y = good()
    x[5, 1, 3, 7, 0] = bad
    with pytest.raises(DataError, match="NaN or Inf in sample 5"):
        load_pair(*write(tmp_path, x, y), SPEC)


def test_label_problems(tmp_path):
    x, y = good()
    with pytest.raises(DataError, match="7 labels for 8 samples"):
        load_pair(*write(tmp_path, x, y[:7]), SPEC)
    y2 = y.copy()
    y2[4] = 6
    with pytest.raises(DataError, match="label 6 at index 4 outside 0..5"):
        load_pair(*write(tmp_path, x, y2), SPEC)
    with pytest.raises(DataError, match="1-D integer"):
        load_pair(*write(tmp_path, x, y.astype(np.float32)), SPEC)


def test_unseen_class_in_training_data_is_refused(tmp_path):
    x, y = good()
    with pytest.raises(DataError, match=r"class 2 at index 2 is not allowed"):
        load_pair(*write(tmp_path, x, y), SPEC, allowed={0, 1, 3, 4, 5})


def test_unseen_class_absent_from_test_set(tmp_path):
    x, y = good()
    y[y == 4] = 3
    with pytest.raises(DataError, match=r"classes \[4\] have no samples"):
        load_pair(*write(tmp_path, x, y), SPEC, required={3, 4})


def test_save_part_round_trip(tmp_path):
    x, y = good()
    save_part(tmp_path, "unseen", x, y)
    data, labels = load_pair(tmp_path / "unseen_data.npy", tmp_path / "unseen_label.npy", SPEC)
    np.testing.assert_array_equal(labels, y)
    assert not list(tmp_path.glob("*.tmp"))


def test_published_splits_and_drawn_validation():
    assert split_spec("ntu60", 2)["unseen"] == [12, 29, 32, 44, 59]
    assert split_spec("ntu120", 24)["val"][:3] == [1, 3, 4]
    with pytest.raises(ValueError, match="not defined for dataset 'pku'"):
        split_spec("pku", 1)
    unseen = split_spec("ntu60", 1)["unseen"]
    val = draw_val_classes(60, unseen, 5, seed=0)
    assert val == draw_val_classes(60, unseen, 5, seed=0) and len(val) == 5
    assert not set(val) & set(unseen)


HINT = "python main.py prepare with dataset=ntu60"


@pytest.mark.parametrize("change, match", [
    (lambda x, y: (x[:, :, :1], y), "1 frame per sample"),            # T = 1 would be stretched to 50 frames
    (lambda x, y: (x[:, :2], y), r"does not match \(N, 3, T, 25, 2\)"),
    (lambda x, y: (np.where(np.arange(8)[:, None, None, None, None] == 3, np.nan, x).astype(np.float32), y),
     "NaN or Inf in sample 3"),
    (lambda x, y: (x, y + 6), "outside 0..5"),
])
def test_every_data_error_names_the_file_and_the_command(tmp_path, change, match):
    d, l = write(tmp_path, *change(*good()))
    with pytest.raises(DataError, match=match) as e:
        load_pair(d, l, SPEC, hint=HINT)
    assert "part_" in str(e.value) and str(e.value).endswith(f"re-create it with: {HINT}")


def test_a_full_disk_during_a_checkpoint_write_names_the_file(tmp_path, monkeypatch):
    import torch

    from experiments.train import state

    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("basic_ios::clear: iostream error")

    state.save_torch_atomic({"a": 1}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write .*last\.pt \(RuntimeError: basic_ios::clear.*disk full"):
        state.save_torch_atomic({"a": 2}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the old file, no temporary file
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"a": 1}


def test_an_unreadable_resume_state_is_one_clear_error(tmp_path):
    from experiments.train.state import load_state

    (tmp_path / "last.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"last\.pt is not readable .*damaged") as e:
        load_state(tmp_path, {})
    assert "weights_only" not in str(e.value)


def test_a_corrupt_npz_is_skipped_and_named(tmp_path):
    from data.generic import load_sequence_file
    from data.raw import RawFormatError

    path = tmp_path / "broken.npz"
    np.savez(path, joints=np.ones((5, 20, 3)))
    path.write_bytes(path.read_bytes()[:40])  # a truncated zip
    with pytest.raises(RawFormatError, match=r"broken\.npz: not a readable numpy file \(BadZipFile"):
        load_sequence_file(path)


def test_a_signal_during_a_checkpoint_write_interrupts_after_the_write(tmp_path, monkeypatch):
    """A SIGTERM inside torch.save's writer would surface as a torch RuntimeError (a FAILED run): it is
    held until the file is written, then raised as KeyboardInterrupt (an INTERRUPTED run)."""
    import os
    import signal

    import torch

    from experiments.tracking.output import interrupt_on_sigterm
    from experiments.train import state

    real = torch.save

    def save_with_a_kill(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the write
        real(obj, f)

    previous = signal.getsignal(signal.SIGTERM)
    interrupt_on_sigterm()
    try:
        monkeypatch.setattr(torch, "save", save_with_a_kill)
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            state.save_torch_atomic({"a": 3}, tmp_path / "last.pt")
        monkeypatch.undo()
        assert torch.load(tmp_path / "last.pt", weights_only=True) == {"a": 3}  # written whole first
    finally:
        signal.signal(signal.SIGTERM, previous)
