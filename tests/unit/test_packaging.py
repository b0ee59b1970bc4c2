"""``pip install .`` into a fresh virtual environment gives a working ``pgfa`` command.

The new environment sees the project's installed requirements through a ``.pth`` file (no
download, no torch build), and the project itself is installed from a copy of its tracked
files with ``--no-deps``: what is checked is the packaging (modules, package data, the entry
point, the work folder of an installed copy), not pip's resolver."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

from experiments.files import PROJECT_ROOT


@pytest.mark.slow
def test_pip_install_gives_a_pgfa_command(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (PROJECT_ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / rel, src / rel)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    new_site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (tmp_path / "venv" / new_site.split(str(venv) + "/")[1] / "deps.pth").write_text("\n".join(ours) + "\n")
    # the build takes the project's pinned setuptools, not the old one a new venv may bring
    subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], capture_output=True, timeout=120)
    install = subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "--disable-pip-version-check", "-q", str(src)], capture_output=True, text=True,
                             timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGFA_")}
    out = subprocess.run([venv / "bin" / "pgfa", "print_config", "with", "dataset=utd_mhad", "split=2"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "unseen_classes = [2, 6, 7, 11, 19]" in out.stdout  # splits.json is package data
    locked = subprocess.run([py, "-c", "from experiments.tracking import omniboard as o; "
                             "print((o.LOCKED / 'package-lock.json').is_file())"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert locked.stdout.strip() == "True", locked.stdout + locked.stderr  # the Omniboard lockfile too
    assert f"data_root = '{work / 'data'}'" in out.stdout     # an installed copy works in the current folder


def test_omniboard_is_installed_from_a_lockfile_pinning_the_checked_version():
    """``npm ci`` takes every package from the shipped lockfile, so a registry that gained a release whose
    dependencies it lacks (what broke a plain ``npm install omniboard@2.16.1``) cannot break the install."""
    from experiments.tracking import omniboard
    pkg = json.loads((omniboard.LOCKED / "package.json").read_text())
    lock = json.loads((omniboard.LOCKED / "package-lock.json").read_text())
    assert pkg["dependencies"] == {"omniboard": omniboard.OMNIBOARD_VERSION}
    assert lock["packages"][""]["dependencies"] == pkg["dependencies"]
    assert lock["packages"]["node_modules/omniboard"]["version"] == omniboard.OMNIBOARD_VERSION
    unchecked = [name for name, entry in lock["packages"].items()
                 if name and "integrity" not in entry and not entry.get("inBundle")]
    assert unchecked == []  # every downloaded package is checked against its hash


def test_constraints_pin_every_requirement_within_its_specifier():
    """``constraints.txt`` holds the whole tree; a pin changed in a requirements file without regenerating
    it would make ``make setup`` fail to resolve on a fresh machine."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def lines(name):
        text = (PROJECT_ROOT / name).read_text().splitlines()
        return [Requirement(line.split("#")[0]) for line in text if line.split("#")[0].strip()]

    pins = {}
    for req in lines("constraints.txt"):
        (spec,) = req.specifier
        assert spec.operator == "==", req
        pins[canonicalize_name(req.name)] = spec.version
    for name in ("requirements.txt", "requirements-dev.txt"):
        for req in lines(name):
            key = canonicalize_name(req.name)
            assert key in pins, f"{req.name} ({name}) is not in constraints.txt"
            assert req.specifier.contains(pins[key], prereleases=True), f"{req} ({name}) against {pins[key]}"


def test_omniboard_counts_as_installed_only_from_the_shipped_lockfile(tmp_path, monkeypatch):
    from experiments.tracking import omniboard
    monkeypatch.setenv("PGFA_TOOLS_DIR", str(tmp_path))
    package = omniboard.entry_point().parent.parent
    omniboard.entry_point().parent.mkdir(parents=True)
    omniboard.entry_point().write_text("")
    (package / "package.json").write_text(json.dumps({"version": omniboard.OMNIBOARD_VERSION}))
    assert not omniboard.installed()  # an install from before the lockfile (none beside it)
    lock = omniboard.install_dir() / "package-lock.json"
    lock.write_text("{}")
    assert not omniboard.installed()  # another lockfile
    lock.write_bytes((omniboard.LOCKED / "package-lock.json").read_bytes())
    assert omniboard.installed()
