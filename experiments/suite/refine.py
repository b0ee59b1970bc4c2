"""``refine_texts``: a trained run's validation confusion → questions to an LLM → validated cues
→ a new text kind, embedded and ready for ``text_kind=<kind>``; and the agent loop (train →
question → refine → retrain, ``refine.rounds`` times), each round a recorded run.

The pure steps (Questioner, prompt, Selector, writer) are ``descriptions/refine.py``; the endpoint
client and its cache ``text/llm.py``. Only seen classes are looked at: the confusion comes from
the run's validation classes (``data.loading.load_validation`` never opens the unseen test part),
and unseen classes are paired with their nearest class by text alone.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sacred import Ingredient

log = logging.getLogger("pgfa")
refine_ingredient = Ingredient("refine")  # the refine_texts command's entries: refine.base_url=... (config.py)


@refine_ingredient.config
def refine_config():
    run = ""  # the run questioned: a run id, run folder or best.pt ("" with rounds > 0: a first run is trained)
    base_url = ""  # OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1 (a local llama.cpp / vLLM / Ollama)
    model = ""  # the model name the endpoint knows
    api_key_env = "OPENAI_API_KEY"  # the environment variable holding the key; the key itself is never stored
    schema_format = "json_schema"  # json_schema (OpenAI, vLLM, llama.cpp) | json_object (llama-cpp-python) | none
    pairs = 3  # most-confused validation class pairs asked about
    unseen = True  # also each unseen class with its nearest class in text space (texts only)
    base_kind = "des"  # the texts the cues are added to
    kind = "refined"  # the new text kind (the agent loop: <kind>_r1, <kind>_r2, ...)
    cache_dir = ""  # answers cached by prompt hash; "" = <data_root>/language/llm_cache
    offline = False  # answer from the cache only (a rerun without the endpoint)
    timeout = 120.0  # seconds per request
    retries = 3  # on connection errors, 429 and 5xx
    max_tokens = 800  # an answer of 12 cues at their longest stays inside it
    rounds = 0  # > 0: the agent loop (train -> question -> refine -> retrain), each round a recorded run


@dataclass(frozen=True)
class RefineSettings:
    """The ``refine.*`` entries (config.py)."""
    run: str              # the run questioned: a run id, a run folder or a best.pt
    base_url: str         # the OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1
    model: str
    api_key_env: str      # the environment variable holding the key (never stored)
    schema_format: str    # json_schema | json_object | none (text/llm.py)
    pairs: int            # most-confused validation pairs asked about
    unseen: bool          # also each unseen class with its nearest class in text space
    base_kind: str        # the texts the cues are added to
    kind: str             # the new text kind
    cache_dir: str        # "" = <data_root>/language/llm_cache
    offline: bool         # answers from the cache only
    timeout: float
    retries: int
    max_tokens: int
    rounds: int           # the agent loop: train -> refine, this many times

    @classmethod
    def from_config(cls, opts: dict) -> "RefineSettings":
        return cls(str(opts["run"]), str(opts["base_url"]), str(opts["model"]), str(opts["api_key_env"]),
                   str(opts["schema_format"]), int(opts["pairs"]), bool(opts["unseen"]), str(opts["base_kind"]),
                   str(opts["kind"]), str(opts["cache_dir"]), bool(opts["offline"]), float(opts["timeout"]),
                   int(opts["retries"]), int(opts["max_tokens"]), int(opts["rounds"]))


def client(r: RefineSettings, data_root: str):
    from text.llm import LLMClient

    if not r.offline and not r.base_url:
        raise ValueError("refine.base_url is empty: give the OpenAI-compatible endpoint, e.g. "
                         "refine.base_url=http://127.0.0.1:8080/v1 (or refine.offline=True to answer from the cache)")
    cache = Path(r.cache_dir) if r.cache_dir else Path(data_root) / "language" / "llm_cache"
    return LLMClient(r.base_url, r.model, cache, api_key_env=r.api_key_env, timeout=r.timeout, retries=r.retries,
                     max_tokens=r.max_tokens, schema_format=r.schema_format, offline=r.offline)


def validation_confusion(checkpoint: Path, data_root: str, defaults: dict) -> tuple[np.ndarray, list[int], dict]:
    """The confusion matrix of a checkpoint's zero-shot predictions on its split's validation classes
    (rows: true class, columns: predicted), those classes, and the run's config (``defaults``, the
    current config, fill the entries a checkpoint of an older version lacks)."""
    from sklearn.metrics import confusion_matrix

    from data.catalog import get_dataset
    from data.loading import load_validation
    from experiments.train.checkpoints import load_checkpoint
    from experiments.train.evaluate import zero_shot_eval
    from experiments.train.loop import resolve_device
    from experiments.train.prepare import build_model, class_texts
    from experiments.train.settings import Settings
    from experiments.train.steps import embed

    ckpt = load_checkpoint(checkpoint)
    cfg = {**defaults, **ckpt["config"], "data_root": data_root, "fr_head": False}
    if cfg.get("train_mode") not in ("main", "sota", "one_shot") or not cfg.get("val_classes"):
        raise ValueError(f"{checkpoint}: refine_texts questions a zero-shot run with validation classes "
                         f"(train_mode={cfg.get('train_mode')!r}, val_classes={cfg.get('val_classes')!r})")
    if cfg.get("trainval") or cfg.get("selection") == "folds":
        raise ValueError(f"{checkpoint}: its run trained on its validation classes (trainval={cfg.get('trainval')!r}, "
                         f"selection={cfg.get('selection')!r}), so their confusions are not zero-shot ones")
    s = Settings.from_config(cfg)
    spec = get_dataset(s.data.dataset, data_root)
    val = load_validation(data_root, spec, s.data.split, list(s.data.unseen_classes), list(s.data.val_classes),
                          s.data.max_frame)
    model = build_model(s.model, s.aggregation.enabled)
    model.load_state_dict({k: v for k, v in ckpt["model"].items() if not k.startswith("fr_head.")})
    text = class_texts(s, model, spec.num_classes)
    device = resolve_device(s.run.device)
    feats = embed(model.to(device), val.x, batch_size=s.eval.batch_size, device=device, desc="validation")
    pred = zero_shot_eval(feats, val.y, val.classes, text).pred
    return confusion_matrix(val.y.numpy(), pred.numpy(), labels=val.classes), list(val.classes), cfg


def questions(r: RefineSettings, confusion: np.ndarray, classes: list[int], cfg: dict, data_root: str) -> list[dict]:
    """The class pairs to ask about, each with why: confused on validation, or an unseen class's nearest."""
    from descriptions.refine import confused_pairs, nearest_pairs, unique_pairs
    from text.embeddings import load_text

    pairs = [(a, b, s, "validation confusion") for a, b, s in confused_pairs(confusion, classes, r.pairs)]
    if r.unseen:
        from data.catalog import get_dataset

        n = get_dataset(cfg["dataset"], data_root).num_classes
        emb = load_text(data_root, cfg["dataset"], r.base_kind, cfg["text_model"], num_classes=n,
                        dim=int(cfg["text_dim"]))
        pairs += [(a, b, s, "nearest text of an unseen class")
                  for a, b, s in nearest_pairs(emb, list(cfg["unseen_classes"]), list(range(n)))]
    why = {frozenset((a, b)): w for a, b, _, w in reversed(pairs)}
    return [{"pair": [a, b], "score": round(s, 4), "why": why[frozenset((a, b))]}
            for a, b, s in unique_pairs([(a, b, s) for a, b, s, _ in pairs])]


def refine(r: RefineSettings, data_root: str, mongo_url: str, source: str, defaults: dict,
           kind: str | None = None) -> dict:
    """Question run ``source``, ask the LLM, validate every answer, then write and embed the new kind
    (nothing is written when any answer is malformed). ``defaults``: the command's config."""
    from descriptions import load_class_texts
    from descriptions.refine import pair_prompt, select, write_refined
    from experiments.train.checkpoints import resolve_checkpoint
    from experiments.tracking.output import redact_text
    from text import embeddings

    kind = kind or r.kind
    checkpoint = resolve_checkpoint(source, mongo_url)
    confusion, classes, cfg = validation_confusion(checkpoint, data_root, defaults)
    dataset = cfg["dataset"]
    labels = load_class_texts(dataset, "labels", data_root=data_root)
    base = load_class_texts(dataset, r.base_kind, data_root=data_root)
    llm, cues, asked = client(r, data_root), [], []
    for q in questions(r, confusion, classes, cfg, data_root):
        a, b = q["pair"]
        messages, schema = pair_prompt(labels, base, a, b)
        answer = llm.chat(messages, schema)
        cues += select(answer.text, {labels[a]: a, labels[b]: b})
        asked.append({**q, "prompt_hash": answer.prompt_hash, "cached": answer.cached})
        log.info("asked about %s / %s (%s): %s", labels[a], labels[b], q["why"], "cached" if answer.cached else "answered")
    provenance = {"model": r.model, "endpoint": redact_text(r.base_url), "source_run": str(source),
                  "source_checkpoint": str(checkpoint), "questions": asked,
                  "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = write_refined(data_root, dataset, kind, r.base_kind, cues, provenance)
    emb = embeddings.build(data_root, dataset, kind, cfg["text_model"], len(labels))
    return {"dataset": dataset, "kind": kind, "texts": str(path), "embeddings": str(emb), "questions": asked,
            "cues": len(cues), "refined_classes": sorted({c.class_id for c in cues}), "source_run": str(source)}


def train_round(updates: dict, comment: str) -> tuple[str, str]:
    """One recorded training run (``python main.py with ...``); returns its run id and run folder."""
    args = [sys.executable, str(Path(__file__).resolve().parents[2] / "main.py"), "with",
            *[f"{k}={v!r}" for k, v in updates.items()], "--comment", comment]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the training run of {updates.get('tag')!r} failed:\n{out.stderr[-2000:]}")
    lines = out.stdout.splitlines()
    found = [ln.split()[1] for ln in lines if ln.startswith("run ") and " finished:" in ln]
    folders = [ln.split()[1].rstrip("/") for ln in lines if ln.strip().startswith("files:")]
    if not found or not folders:
        raise RuntimeError(f"the training run of {updates.get('tag')!r} printed no run id / folder:\n"
                           f"{out.stdout[-1000:]}")
    log.info("%s: run %s, %s", updates.get("tag"), found[-1], next(ln for ln in lines if " finished:" in ln))
    return found[-1], folders[-1]


def agent_loop(r: RefineSettings, base: dict, data_root: str, mongo_url: str, defaults: dict) -> list[dict]:
    """``rounds`` times: refine from the last run (``refine.run``, or a first run trained with ``base``),
    then train with the new kind ``<kind>_r<i>``; each round is a recorded run whose comment names
    the run it was refined from."""
    updates = {**base, "data_root": data_root, **({"mongo_url": mongo_url} if mongo_url else {})}
    run, source = ("", r.run) if r.run else train_round({**updates, "tag": f"{r.kind}-r0"},
                                                         "refine round 0: the base texts")
    rounds = []
    for i in range(1, r.rounds + 1):
        kind = f"{r.kind}_r{i}"
        done = refine(r, data_root, mongo_url, source, defaults, kind)
        run, source = train_round({**updates, "text_kind": kind, "tag": f"{r.kind}-r{i}"},
                                  f"refine round {i}: text_kind {kind} refined from {done['source_run']}")
        rounds.append({**done, "round": i, "trained_run": run, "trained_folder": source})
    return rounds
