"""The project's Sacred ``Experiment``: Sacred's, with the checks and the one explicit step
that run before a training-command run is created (and so before anything is recorded).

* Entries of the command ingredients (``raw.*``, ``new_split.*``, ``sweep.*``, ``report.*``)
  are refused on a plain run, naming the command they belong to.
* An unknown entry is refused with the closest known keys ("did you mean ``lr``?").
* ``train_mode="test"``: the checkpoint's model entries (and its dataset and split, where
  the command gives none) become config updates of the run, so the recorded config
  describes the evaluated model (``experiments.train.checkpoints.checkpoint_updates``).
* The run's data files and class texts are checked (``experiments.train.preflight``):
  a missing split or text kind fails here, with the command that fixes it, instead of
  minutes into training and after a database run was created.

Building the configuration stays pure; this is where its I/O happens. Also here: the
command line's one-line errors (``use_short_errors``).
"""
from __future__ import annotations

import difflib
import os
import sys
import traceback
from pathlib import Path

import sacred
import sacred.experiment
from sacred.initialize import create_run
from sacred.utils import ConfigAddedError
from sacred.utils import print_filtered_stacktrace as sacred_print_stacktrace

from experiments.files import PROJECT_ROOT, WORK_ROOT, write_text_atomic

COMMAND_INGREDIENTS = {"raw": "prepare / prepare_generic / make_split", "new_split": "prepare_generic / make_split",
                       "sweep": "sweep", "report": "results", "refine": "refine_texts"}


def _known_keys(cfg: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, dict) and k in COMMAND_INGREDIENTS:
            keys += _known_keys(v, prefix + k + ".")
    return keys


# Names users reach for that are far in spelling from the key they mean.
ALIASES = {"learning_rate": "lr", "epochs": "epoch_num", "num_epochs": "epoch_num", "batch": "batch_size",
           "bs": "batch_size", "model": "backbone", "text_encoder": "text_model", "gpu": "device"}


def did_you_mean(unknown: list[str], known: list[str]) -> str:
    """``'learning_rate' (did you mean 'lr'?)`` for each unknown key."""
    parts = []
    for key in unknown:
        alias = ALIASES.get(key.rpartition(".")[2])
        close = [alias] if alias in known else difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        parts.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    return ", ".join(parts)


class Experiment(sacred.Experiment):
    """Sacred's Experiment with the checks above before a training-command run."""

    def run(self, command_name=None, config_updates=None, named_configs=(), info=None, meta_info=None,
            options=None):
        updates = dict(config_updates or {})
        command = command_name or self.default_command
        cfg = self._resolve(command, updates, named_configs)
        if command == self.default_command:
            stray = sorted(f"{k}.{sub}" if isinstance(updates[k], dict) else k
                           for k in updates if k.split(".")[0] in COMMAND_INGREDIENTS
                           for sub in (updates[k] if isinstance(updates[k], dict) else [k]))
            if stray:
                owner = COMMAND_INGREDIENTS[stray[0].split(".")[0]]
                raise ValueError(f"{', '.join(stray)}: entries of the `{owner}` command, not of a training run; "
                                 f"run it as: python main.py {owner.split(' / ')[0]} with {stray[0]}=...")
            cfg = self._with_checkpoint(cfg, command, updates, named_configs)
            from experiments.train.preflight import preflight

            preflight(cfg)
        return super().run(command_name, updates, named_configs, info, meta_info, options)

    def resolved_config(self, updates: dict) -> dict:
        """The configuration a training run with ``updates`` would get, a test run's model settings taken
        from its checkpoint as ``run`` does (no run is created or recorded)."""
        updates = dict(updates)
        return self._with_checkpoint(self._resolve(self.default_command, updates, ()), self.default_command,
                                     updates, ())

    def _with_checkpoint(self, cfg: dict, command: str, updates: dict, named_configs) -> dict:
        """``cfg`` of a test run re-resolved with its checkpoint's training settings added to ``updates``."""
        if cfg["train_mode"] != "test":
            return cfg
        from experiments.train.checkpoints import checkpoint_updates  # torch: only for this track

        updates.update(checkpoint_updates(cfg["checkpoint"], cfg["mongo_url"], updates, cfg["dataset"]))
        return self._resolve(command, updates, named_configs)

    def _resolve(self, command: str, updates: dict, named_configs) -> dict:
        """The configuration a run of ``command`` would get (no run is created or recorded)."""
        try:
            return create_run(self, command, updates, named_configs=named_configs).config
        except ConfigAddedError as exc:
            bad = sorted(exc.__conflicting_configs__)
            known = _known_keys(create_run(self, command, {k: v for k, v in updates.items() if k not in bad},
                                           named_configs=named_configs).config)
            raise ConfigAddedError(bad, message=f"unknown config entry {did_you_mean(bad, known)}; "
                                                f"`python main.py print_config` lists every entry",
                                   print_conflicting_configs=False, print_suggestions=False) from None


# Exceptions whose message is the whole story: a one-line error on the command line (the project's
# own error classes all derive from these), with the traceback kept in a file and in the run record.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, KeyError)
PROJECT_PACKAGES = ("config", "main", "data", "text", "descriptions", "module", "experiments")


def _raised_by_project(tb) -> bool:
    """Whether the innermost frame that raised is the project's own code (a deliberate message)."""
    frames = traceback.extract_tb(tb)
    project = [f for f in frames if Path(f.filename).resolve().is_relative_to(PROJECT_ROOT)
               and ".venv" not in Path(f.filename).parts]
    return bool(project) and project[-1] == frames[-1]


def print_error(filter_traceback: str = "default") -> None:
    """Sacred's error printer for the command line: the project's own errors as one message (the full
    traceback goes to ``<tracking dir>/last_error.txt``); anything else as Sacred prints it."""
    exc_type, exc, tb = sys.exc_info()
    if not (isinstance(exc, USER_ERRORS) and _raised_by_project(tb)):
        sacred_print_stacktrace(filter_traceback)
        return
    path = Path(os.environ.get("PGFA_TRACKING_DIR") or WORK_ROOT / ".tracking") / "last_error.txt"
    try:
        write_text_atomic(path, "".join(traceback.format_exception(exc_type, exc, tb)))
        where = f" (traceback: {path})"
    except OSError:
        where = ""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    print(f"error: {message}{where}", file=sys.stderr)


def use_short_errors() -> None:
    """Make Sacred's command line print ``print_error``'s messages."""
    sacred.experiment.print_filtered_stacktrace = print_error
