"""The project's shape: no import cycle (every import counts, function-local ones too), no
source file over 400 lines, at most 6 modules directly in experiments/, and a pure config:
print_config of a checkpoint evaluation reads no checkpoint, starts no database and loads
no framework or text model."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from experiments.files import PROJECT_ROOT

PACKAGES = ("config", "main", "module", "text", "descriptions", "data", "experiments")


def project_modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PROJECT_ROOT.rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT)
        if rel.parts[0] not in PACKAGES and rel.stem not in PACKAGES:
            continue
        if rel.parts[0] in ("tests",) or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (module, class or function level)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:  # "pkg.mod.func" -> "pkg.mod"
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle():
    mods = project_modules()
    graph = {}
    for name, path in mods.items():
        deps = imports_of(name, path, set(mods))
        # importing a package's submodule runs the package: not an edge back into the package itself
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    assert len(graph) > 40
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_file_sizes_and_experiments_top_level():
    long = {str(p.relative_to(PROJECT_ROOT)): n for p in project_modules().values()
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"source files over 400 lines: {long}"
    top = sorted(p.name for p in (PROJECT_ROOT / "experiments").glob("*.py"))
    assert len(top) <= 6, top


PROBE = """
import json, sys
sys.argv = ["main.py"]
import main
run = main.ex.run("print_config", config_updates={"train_mode": "test", "checkpoint": "4242",
                  "text_model": sys.argv_model}, options={"--loglevel": "ERROR"})
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers", "pymongo") if m in sys.modules)
print("RESULT " + json.dumps({"text_dim": run.config["text_dim"], "heavy": heavy}))
"""


def test_print_config_of_a_checkpoint_run_reads_nothing(tmp_path):
    model = tmp_path / "my-model"  # a local sentence-transformers folder that is not a loadable model
    (model / "1_Pooling").mkdir(parents=True)
    (model / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x.Transformer"},
                                                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.Pooling"}]))
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 123}))
    tracking = tmp_path / "tracking"
    env = {"PGFA_TRACKING_DIR": str(tracking), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = PROBE.replace("sys.argv_model", repr(str(model)))
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result == {"text_dim": 123, "heavy": []}
    assert not (tracking / "server.json").exists() and not (tracking / "db").exists()
