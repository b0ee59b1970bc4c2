"""Confusion-driven class-text refinement (SkeletonAgent's Questioner → LLM → Selector), the
pure parts: which classes to ask about, the prompt, parsing the answer, and writing the new kind.

* **Questioner**: ``confused_pairs`` ranks class pairs of a validation confusion matrix (seen
  classes only) by how often each is taken for the other; ``nearest_pairs`` pairs each unseen
  class with its nearest other class in text space (its texts only, never test samples).
* **Prompt** (``pair_prompt``): both actions' names and descriptions; per body part
  (``module.parts.PARTS``) one short movement cue that tells each action from the other, as JSON
  (with a JSON schema the endpoint can enforce).
* **Selector** (``select``): the answer parsed into ``Cue(class_id, part, text)`` records and
  validated (exactly the requested classes, known part names, one-line cues of bounded length, at
  least one cue per class); anything else is a ``SelectorError`` and nothing is written.
* **Writer** (``write_refined``): a new text kind: each refined class's ``base_kind`` text
  followed by its cues ("Right arm: ..."), the other classes' base text unchanged, into
  ``descriptions.refined_file`` with its provenance (model, prompt hashes, source run, the cues).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from descriptions import TextError, load_class_texts, load_document, refined_file
from module.parts import PARTS  # the body parts a cue may name

MIN_CUE, MAX_CUE = 8, 120  # characters of one cue (12 cues stay well inside max_tokens)
# one line that starts with two words (no placeholder such as "...", "<cue>" or "y/n:1"), its length bounded by
# the pattern too (8 to 118 characters): llama.cpp's schema grammar enforces a pattern's repetition bounds but not
# minLength / maxLength beside a pattern
CUE_PATTERN = r"^[A-Za-z]{2,20}[ -][A-Za-z]{2}[A-Za-z0-9 ,;:'()/-]{3,95}$"


class SelectorError(ValueError):
    """An LLM answer that cannot be used; nothing was written."""


@dataclass(frozen=True)
class Cue:
    class_id: int
    part: str
    text: str


# ----------------------------------------------------------------------------- Questioner

def confused_pairs(confusion: np.ndarray, classes: list[int], k: int) -> list[tuple[int, int, float]]:
    """The ``k`` most confused pairs ``(a, b, score)`` of a confusion matrix over ``classes`` (rows: the
    true class, columns: the predicted one): score = rate(a taken for b) + rate(b taken for a), each
    rate over the true class's samples. Pairs never confused are left out; ties go to lower ids."""
    c = np.asarray(confusion, dtype=np.float64)
    if c.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {c.shape} for {len(classes)} classes")
    rate = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    pairs = [(classes[i], classes[j], float(rate[i, j] + rate[j, i]))
             for i in range(len(classes)) for j in range(i + 1, len(classes)) if rate[i, j] + rate[j, i] > 0]
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    return pairs[:k]


def nearest_pairs(text: np.ndarray, targets: list[int], among: list[int]) -> list[tuple[int, int, float]]:
    """Each target class with its nearest other class of ``among`` by the cosine of their text
    embeddings (rows of ``text``, indexed by class id): ``(target, nearest, cosine)``."""
    unit = text / np.linalg.norm(text, axis=1, keepdims=True).clip(min=1e-12)
    out = []
    for t in targets:
        others = [c for c in among if c != t]
        if not others:
            continue
        sims = unit[others] @ unit[t]
        best = int(np.argmax(sims))
        out.append((t, others[best], float(sims[best])))
    return out


def unique_pairs(pairs: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """The pairs without repeats of an unordered pair (the first kept)."""
    seen, out = set(), []
    for a, b, s in pairs:
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b, s))
    return out


# ----------------------------------------------------------------------------- prompt

SYSTEM = ("You are an expert in human movement. You write short, concrete movement cues for "
          "recognising actions from 3D skeleton joints (head, spine, shoulders, elbows, wrists, hands, "
          "hips, knees, ankles, feet). A cue says which joints move, in which direction and how far.")


def answer_schema(labels: list[str]) -> dict:
    """The JSON schema of an answer about ``labels``: one object per action with one cue per part."""
    cue = {"type": "string", "minLength": MIN_CUE, "maxLength": MAX_CUE, "pattern": CUE_PATTERN}
    action = {"type": "object", "properties": {p: cue for p in PARTS}, "required": list(PARTS),
              "additionalProperties": False}
    return {"type": "object", "properties": {lab: action for lab in labels}, "required": list(labels),
            "additionalProperties": False}


def pair_prompt(labels: list[str], descriptions: list[str], a: int, b: int) -> tuple[list[dict], dict]:
    """The chat messages and answer schema asking how actions ``a`` and ``b`` differ, per body part."""
    parts = ", ".join(PARTS)
    user = (f"A recogniser confuses two actions:\n"
            f"1. \"{labels[a]}\": {descriptions[a]}\n"
            f"2. \"{labels[b]}\": {descriptions[b]}\n"
            f"For each action give, for each body part ({parts}), one short movement cue that tells it apart "
            f"from the other action, in a few plain words. Answer with one JSON object only: the two action names "
            f"as keys, each mapping every body part to its cue.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], \
        answer_schema([labels[a], labels[b]])


# ----------------------------------------------------------------------------- Selector

def select(answer: str, requested: dict[str, int]) -> list[Cue]:
    """Parse an answer about the classes ``requested`` (label → class id) into cues; raise
    ``SelectorError`` naming what is wrong."""
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", answer)  # a fenced block, as chat models write
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise SelectorError(f"answer is not JSON ({exc.msg} at character {exc.pos}): {answer[:120]!r}") from None
    if not isinstance(doc, dict):
        raise SelectorError(f"answer is a JSON {type(doc).__name__}, not an object keyed by action")
    missing, extra = sorted(set(requested) - set(doc)), sorted(set(doc) - set(requested))
    if missing or extra:
        raise SelectorError(f"answer must name exactly the actions {sorted(requested)}"
                            + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    cues = []
    for label, parts in doc.items():
        if not isinstance(parts, dict) or not parts:
            raise SelectorError(f"{label!r}: expected an object of body part → cue, got {parts!r:.80}")
        for part, text in parts.items():
            if part not in PARTS:
                raise SelectorError(f"{label!r}: unknown body part {part!r}; known: {list(PARTS)}")
            if not isinstance(text, str) or not MIN_CUE <= len(text.strip()) <= MAX_CUE or "\n" in text.strip() \
                    or len(re.findall(r"[A-Za-z]{2,}", text)) < 2:
                raise SelectorError(f"{label!r} {part}: a cue must be one line of {MIN_CUE}-{MAX_CUE} characters "
                                    f"with at least two words, got {text!r:.80}")
            cues.append(Cue(requested[label], part, text.strip()))
    return cues


# ----------------------------------------------------------------------------- writer

def refined_texts(base: list[str], cues: list[Cue]) -> list[str]:
    """Each class's base text followed by its distinct cues in part order ("Right arm: ...")."""
    by_class: dict[int, dict[str, list[str]]] = {}
    for c in cues:
        texts = by_class.setdefault(c.class_id, {}).setdefault(c.part, [])
        if c.text not in texts:
            texts.append(c.text)
    out = []
    for cid, text in enumerate(base):
        parts = by_class.get(cid, {})
        extra = " ".join(f"{p.replace('_', ' ').capitalize()}: {'; '.join(parts[p]).rstrip('.')}."
                         for p in PARTS if p in parts)
        out.append(f"{text.rstrip()} {extra}" if extra else text)
    return out


def write_refined(data_root: str | Path, dataset: str, kind: str, base_kind: str, cues: list[Cue],
                  provenance: dict) -> Path:
    """Write text kind ``kind`` (``base_kind`` plus the cues) into the dataset's refined file."""
    doc = load_document(dataset, data_root)
    if kind in doc.get("kinds", {}) and kind not in _written_kinds(dataset, data_root):
        raise TextError(f"text kind {kind!r} is one of {dataset}'s own; choose another name for the refined texts")
    base = load_class_texts(dataset, base_kind, data_root=data_root)
    path = refined_file(dataset, data_root)
    extra = json.loads(path.read_text()) if path.is_file() else \
        {"dataset": dataset, "kinds": {}, "provenance": {}, "classes": [{"id": i} for i in range(len(base))]}
    for rec, text in zip(extra["classes"], refined_texts(base, cues)):
        rec[kind] = text
    extra["kinds"][kind] = f"the {base_kind!r} texts with LLM-written movement cues for confused classes (refine_texts)"
    extra["provenance"][kind] = {**provenance, "base_kind": base_kind,
                                 "refined_classes": sorted({c.class_id for c in cues}),
                                 "cues": [asdict(c) for c in cues]}
    from experiments.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(extra, indent=1, ensure_ascii=False) + "\n")
    return path


def _written_kinds(dataset: str, data_root: str | Path) -> set[str]:
    path = refined_file(dataset, data_root)
    return set(json.loads(path.read_text()).get("kinds", {})) if path.is_file() else set()
