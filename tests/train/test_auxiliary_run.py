"""A zero-shot run with auxiliary training classes from another dataset (aux_dataset), end to end."""
import shutil

import pytest

from main import ex
from text import embeddings
from unit.test_auxiliary import write_samples

OPTS = {"--loglevel": "ERROR"}
TINY = dict(dataset="demo", epoch_num=1, hidden_channels=4, out_channels=16, max_frame=8, batch_size=32,
            warmup_epochs=1, text_model="minilm", text_kind="labels", monitor_unseen=False)


@pytest.mark.slow
def test_a_run_trains_on_the_auxiliary_classes_and_records_them(text_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(text_root, root)
    write_samples(root, "ntu120", [0, 0, 1, 2, 2, 9, 9, 58, 58, 58], shape=(3, 50, 25, 2))
    embeddings.build(root, "ntu120", "labels", "minilm", 120)
    base = {**TINY, "data_root": str(root), "aux_dataset": "ntu120"}
    res = ex.run(config_updates={**base, "out_dir": str(tmp_path / "run")}, options=OPTS).result
    held_out = set(res["unseen_classes"]) | set(res["val_classes"])
    assert res["aux_dataset"] == "ntu120" and res["aux_max_similarity"] == 0.5
    excluded = {int(c): v for c, v in res["aux"]["ntu120"]["excluded"].items()}
    assert all(v["near"] in held_out and v["similarity"] >= 0.5 for v in excluded.values())
    assert res["aux_classes"] + len(excluded) == 5  # the classes the samples hold: 0, 1, 2, 9, 58
    counts = {0: 2, 1: 1, 2: 2, 9: 2, 58: 3}
    assert res["aux_samples"] == sum(n for c, n in counts.items() if c not in excluded)
    # at the loosest threshold only an identical label text would be left out: every class is trained on
    loose = ex.run(config_updates={**base, "aux_max_similarity": 1.0, "out_dir": str(tmp_path / "loose")},
                   options=OPTS).result
    assert loose["aux_samples"] == 10 and loose["aux_classes"] == 5 and loose["aux"]["ntu120"]["excluded"] == {}
    # two auxiliary datasets: each one's classes after the previous one's, each recorded
    write_samples(root, "ntu60", [3, 3, 4], shape=(3, 50, 25, 2), seed=1)
    embeddings.build(root, "ntu60", "labels", "minilm", 60)
    both = ex.run(config_updates={**base, "aux_dataset": "ntu120+ntu60", "aux_max_similarity": 1.0,
                                  "out_dir": str(tmp_path / "both")}, options=OPTS).result
    assert both["aux"]["ntu120"] == loose["aux"]["ntu120"] and both["aux"]["ntu60"]["samples"] == 3
    assert both["aux_samples"] == 13 and both["aux_classes"] == 7
    with pytest.raises(ValueError, match="not train_mode='supervised'"):  # refused before anything is recorded
        ex.run(config_updates={**base, "train_mode": "supervised"}, options=OPTS)
    with pytest.raises(ValueError, match="aux_dataset 'ntu120': no prepared samples.*raw.splits=none"):
        ex.run(config_updates={**base, "aux_dataset": "ntu120+ntu60", "data_root": str(text_root)}, options=OPTS)
    with pytest.raises(ValueError, match="does not combine with aggregation"):
        ex.run(config_updates={**base, "aggregation": True, "out_dir": str(tmp_path / "agg")}, options=OPTS)
