"""The benchmark command's machinery on tiny widths (its numbers are not checked here:
speed is a benchmark's business, not a test's)."""
import re

from experiments.benchmark import Spec, run_group, table
from experiments.runtime import default_allocator


def test_benchmark_group_prints_every_row_against_the_ceiling():
    default = default_allocator()
    specs = [Spec("ceiling", tiny=True)] + [Spec("train", "stgcn", f, 4, m, tiny=True)
                                           for f, m in (("reference", "system"), ("reference", default),
                                                        ("fast", default))]
    rows = run_group(specs, rounds=1, log=lambda m: None)
    lines = table("tiny", rows)
    assert re.match(r"  conv ceiling \(best layout\) +\d+\.\d GFLOP/s", lines[1]), lines
    assert not any("no reference row" in ln for ln in lines)  # every row has its model count
    body = [ln for ln in lines if " train b4 " in ln]
    assert len(body) == 3, lines
    for ln, spec in zip(body, specs[1:]):
        assert spec.name() in ln
        sps, x_ref, x_before, gfs, pct = ln[len(spec.name()) + 2:].split()[:5]
        assert float(sps) > 0 and float(gfs) > 0 and 0 < float(pct.rstrip("%"))
    # ratios: the reference rows are 1.00 against themselves
    assert body[1].split()[-8] == "1.00" and body[0].split()[-7] == "1.00"
    assert all(r.peak_rss_mib > 0 for r in rows)
    # each worker runs with the allocator its row names
    assert [r.info["mimalloc_loaded"] for r in rows[1:]] == [False, default == "mimalloc", default == "mimalloc"]
