"""The allocator setting the entry points apply (experiments/runtime.py): which allocator a
process really runs with, what its child processes inherit, and the errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import runtime

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import os, json; from experiments.runtime import applied_allocator; "
         "maps = open('/proc/self/maps').read(); "
         "print(json.dumps({'mimalloc': 'libmimalloc' in maps, 'applied': applied_allocator(), "
         "'env': {k: v for k, v in os.environ.items() if 'MALLOC' in k or k == 'LD_PRELOAD' or k.startswith('PGFA_ALLOC')}}))")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is Linux-only")


def _probe(allocator: str | None, extra_env: dict | None = None) -> dict:
    import json

    env = runtime.without_allocator(dict(os.environ))
    if allocator is not None:
        env["PGFA_ALLOCATOR"] = allocator
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-m", "experiments.runtime", "-c", PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux_only
@pytest.mark.skipif(runtime.mimalloc_library() is None, reason="cmeel-mimalloc is not installed")
def test_default_is_mimalloc_loaded_in_the_process_and_not_passed_to_children():
    got = _probe(None)
    assert got["mimalloc"] and got["applied"] == "mimalloc"
    # the user's environment is restored for child processes (they choose for themselves)
    assert got["env"] == {}


@linux_only
def test_user_preload_is_kept_for_children():
    if runtime.mimalloc_library() is None:
        pytest.skip("cmeel-mimalloc is not installed")
    got = _probe("mimalloc", {"LD_PRELOAD": ""})
    assert got["mimalloc"] and got["env"] == {"PGFA_ALLOCATOR": "mimalloc", "LD_PRELOAD": ""}


@linux_only
@pytest.mark.parametrize("name", ["system", "glibc-keep"])
def test_other_allocators_do_not_load_mimalloc(name):
    got = _probe(name)
    assert not got["mimalloc"] and got["applied"] == name
    assert got["env"] == {"PGFA_ALLOCATOR": name}


def test_unknown_allocator_is_refused_with_its_name():
    env = dict(os.environ, PGFA_ALLOCATOR="tcmalloc")
    env.pop("PGFA_ALLOCATOR_ACTIVE", None)
    out = subprocess.run([sys.executable, "-m", "experiments.runtime", "-c", "print('ran')"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    if not sys.platform.startswith("linux"):
        pytest.skip("the allocator setting is Linux-only")
    assert out.returncode != 0 and "ran" not in out.stdout
    assert "PGFA_ALLOCATOR='tcmalloc'" in out.stderr and "mimalloc" in out.stderr
    assert "Traceback" not in out.stderr


def test_mimalloc_requested_but_missing_names_the_package(monkeypatch):
    monkeypatch.setattr(runtime, "mimalloc_library", lambda: None)
    assert runtime.default_allocator() == "glibc-keep"
    with pytest.raises(RuntimeError, match="cmeel-mimalloc"):
        runtime.allocator_env("mimalloc")
    assert runtime.allocator_env("glibc-keep") == runtime.GLIBC_KEEP_ENV
    assert runtime.allocator_env("system") == {}


@linux_only
def test_a_refused_preload_is_reported_not_recorded_as_mimalloc():
    """The re-executed process checks that mimalloc is really mapped before saying so
    (simulated: the marker of a mimalloc re-exec without the preload)."""
    got = _probe("mimalloc", {"PGFA_ALLOCATOR_ACTIVE": "mimalloc", "PGFA_ALLOCATOR_SAVED_ENV": "{}"})
    assert not got["mimalloc"] and got["applied"] == "system (mimalloc preload failed)"


def test_without_allocator_drops_every_setting_but_keeps_other_preloads():
    env = {"HOME": "/h", "PGFA_ALLOCATOR": "mimalloc", "PGFA_ALLOCATOR_ACTIVE": "mimalloc",
           "LD_PRELOAD": "/x/libmimalloc.so /y/libother.so", **runtime.GLIBC_KEEP_ENV, **runtime.MIMALLOC_OPTIONS}
    assert runtime.without_allocator(env) == {"HOME": "/h", "LD_PRELOAD": "/y/libother.so"}
