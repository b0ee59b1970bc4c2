"""Where a run keeps its files, the selected checkpoint, and the resumable state.

Every epoch ends with an atomic write of ``last.pt`` (model, optimiser, every random
state, the epoch, best-so-far, the metric history); ``resume=<folder>`` continues from
it as if the run had never stopped. Both files load with ``torch.load(...,
weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from experiments.files import BEST_FILE, RUNS_DIR, STATE_FILE, write_atomic

# Entries that may differ between a run and its continuation (where and how it is recorded).
RESUME_FREE_KEYS = {"resume", "out_dir", "mongo_url", "offline", "device", "shift_impl", "eval_batch_size"}


def run_folder(*, resume: str, out_dir: str, dataset: str, split, train_mode: str, seed: int) -> Path:
    """The folder of a run's checkpoints: ``resume``, else ``out_dir``, else a new one under ``runs/``."""
    if resume:
        return Path(resume)
    if out_dir:
        return Path(out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / f"{stamp}-{dataset}-split{split}-{train_mode}-seed{seed}"


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C and SIGTERM arriving inside the block take effect at its end (as ``KeyboardInterrupt``):
    an interrupt raised inside ``torch.save``'s writer would surface as a torch ``RuntimeError`` and
    the run would end FAILED instead of INTERRUPTED. (Only the main thread can handle signals.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if pending:
        raise KeyboardInterrupt(f"stopped by signal {pending[0]}")


def save_torch_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: a kill at any moment leaves the old file or the
    new one (a signal during the write takes effect after it); a failed write (a full disk) raises
    ``OSError`` naming the file and leaves no temporary file."""
    try:
        with interrupts_deferred():
            write_atomic(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError("basic_ios::clear ...")
        raise OSError(f"could not write {path} ({type(exc).__name__}: {exc}); is the disk full? The previous "
                      f"{path.name}, if any, is unchanged") from exc


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: dict, epoch: int, metrics: dict) -> None:
    """Weights plus the run's config, loadable with ``torch.load(path, weights_only=True)``."""
    save_torch_atomic({"model": model.state_dict(), "config": cfg, "epoch": epoch, "metrics": metrics}, path)


def best_path(folder: Path) -> Path:
    return folder / BEST_FILE


def rng_snapshot(generator: torch.Generator) -> dict:
    """Every random state the loop depends on, as tensors and plain values (``weights_only``-safe)."""
    np_state = np.random.get_state()
    return {"batches": generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": list(random.getstate())}


def restore_rng(snap: dict, generator: torch.Generator) -> None:
    generator.set_state(snap["batches"])
    torch.set_rng_state(snap["torch"])
    if snap["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
    name, keys, *rest = snap["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = snap["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(path: Path, *, model, optimizer, generator, cfg: dict, next_epoch: int, best: dict,
               history: list[dict], train_seconds: float, average: dict | None = None,
               evaluator: dict | None = None) -> None:
    """Everything needed to continue after ``next_epoch - 1`` as if never interrupted (``average``: the
    weight average's state, ``averaging.py``, when the run averages; ``evaluator``: the per-epoch
    evaluation's, e.g. a snapshot ensemble's sums, ``epoch_eval.py``)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": rng_snapshot(generator), "next_epoch": next_epoch, "best": best, "history": history,
             "config": cfg, "train_seconds": train_seconds}
    if average is not None:
        state["average"] = average
    if evaluator is not None:
        state["evaluator"] = evaluator
    save_torch_atomic(state, path)


def load_state(folder: str | Path, cfg: dict) -> dict:
    """The state of an interrupted run, checked against the current config."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"resume={str(folder)!r}: no {STATE_FILE} there (a run writes it after each epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        # (torch's own message advises weights_only=False, which would run code from the file: not repeated)
        raise ValueError(f"resume={str(folder)!r}: {path} is not readable ({type(exc).__name__}); it is "
                         f"damaged (a kill while copying it, a full disk); "
                         f"start the run again without resume=, or resume from a copy of the folder") from None
    if not isinstance(state, dict) or not {"config", "next_epoch", "model"} <= set(state):
        raise ValueError(f"resume={str(folder)!r}: {path} is not this project's resumable state")
    differ = sorted(k for k in set(cfg) | set(state["config"])
                    if k not in RESUME_FREE_KEYS and cfg.get(k) != state["config"].get(k))
    if differ:
        detail = ", ".join(f"{k}: {state['config'].get(k)!r} → {cfg.get(k)!r}" for k in differ[:8])
        raise ValueError(f"resume={str(folder)!r}: the config differs from the interrupted run's ({detail}); "
                         "resume with the same settings")
    return state
