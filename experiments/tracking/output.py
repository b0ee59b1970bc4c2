"""What stored run records must not contain or grow with, and how a run's output is shaped.

* ``plain``: Sacred's read-only config containers as plain dicts and lists;
* ``redact`` / ``redact_text``: credentials in MongoDB URLs removed from anything stored;
* ``clean_output``: the captured output with progress-bar redraws resolved, escapes removed and
  its size capped;
* ``experiment_logger``: the logger the runs write through, to whatever stderr is current;
* ``project_sources``: the project's own Python files, recorded with every run;
* ``interrupt_on_sigterm``: SIGTERM ends a run like Ctrl-C.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
from pathlib import Path

from sacred.utils import apply_backspaces_and_linefeeds

from experiments.files import PROJECT_ROOT

OUTPUT_LIMIT = 100_000  # characters of captured output kept per run (head and tail)


def plain(value):
    """Sacred's read-only config containers → plain dicts/lists (JSON- and ``weights_only``-safe)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- credentials

_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^@/\s\"']+@", re.IGNORECASE)
_URL_SECRET_PARAM = re.compile(r"(mongodb(?:\+srv)?://[^\s\"']*?[?&][^=&\s\"']*(?:password|secret|token|"
                               r"authmechanismproperties)[^=&\s\"']*=)[^&\s\"']+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Remove user names, passwords and secret query values from every MongoDB URL in ``text``."""
    text = _URL_USERINFO.sub(r"\1***@", text)
    previous = None
    while previous != text:  # one secret parameter per pass
        previous, text = text, _URL_SECRET_PARAM.sub(r"\1***", text)
    return text


def redact(value):
    """``redact_text`` applied to every string inside a (nested) config / meta structure."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


# ----------------------------------------------------------------------------- captured output

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CUT = re.compile(r"\[\.\.\. (\d+) characters of output left out \.\.\.\]\n")


def clean_output(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Sacred's captured-output filter: progress-bar redraws resolved like a terminal would
    (only the final state of a line stays), terminal escapes removed, trailing blanks
    stripped, and at most ``limit`` characters kept: the head and the tail, with a marker
    line counting what was left out. Sacred re-applies it to the accumulated output at every
    heartbeat; an earlier marker is reused, so the count stays exact."""
    text = apply_backspaces_and_linefeeds(_ANSI.sub("", text))
    keep_cr = text.endswith("\r")  # Sacred's convention: a pending redraw continues in the next chunk
    text = "\n".join(line.rstrip() for line in text.split("\n")) + ("\r" if keep_cr else "")
    if len(text) <= limit:
        return text
    old = _CUT.search(text)
    if old:
        head, rest, left_out = text[:old.start()], text[old.end():], int(old.group(1))
    else:
        cut = text.rfind("\n", 0, limit // 4) + 1  # the head ends at a line end
        head, rest, left_out = text[:cut], text[cut:], 0
    room = limit - len(head) - 60  # 60: the marker line
    tail_start = rest.find("\n", max(0, len(rest) - room)) + 1 or len(rest)  # the tail starts at a line start
    left_out += tail_start
    return f"{head}[... {left_out} characters of output left out ...]\n{rest[tail_start:]}"


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted. Sacred's "sys" capture
    swaps ``sys.stderr`` during a run; a plain handler keeps the stream it was made with, so
    the run's log lines would be missing from its captured output."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def experiment_logger(name: str = "pgfa") -> logging.Logger:
    """The logger Sacred and the training loop log through (``ex.logger``), writing to the current stderr."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, CurrentStderrHandler) for h in logger.handlers):
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s - %(name)s - %(message)s"))
        logger.addHandler(handler)
    return logger


# ----------------------------------------------------------------------------- sources

def project_sources(root: Path = PROJECT_ROOT) -> list[Path]:
    """The project's own Python code, recorded with every run: the top-level modules and the
    packages (folders with an ``__init__.py``), recursively.

    Sacred's ``dir`` discovery walks everything under the project instead, including a
    ``.venv`` there (thousands of files per run) and the data folders."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d != "tests" and (here / d / "__init__.py").is_file())
        out += [here / f for f in sorted(filenames) if f.endswith(".py")]
    return out


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a scheduler's pre-emption) end a run like Ctrl-C does, so Sacred
    records it as INTERRUPTED instead of leaving it RUNNING forever."""

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    handler.project_handler = True
    signal.signal(signal.SIGTERM, handler)


def finishing() -> None:
    """The run is ending (its result or its error is known): from here on, in a command-line process,
    Ctrl-C and SIGTERM are ignored, so that Sacred writes the run's final status instead of being
    interrupted half-way and leaving the record RUNNING (torchrun, for one, sends SIGTERM to the other
    processes of a launch just as they record a lost peer). The process ends by itself moments later.
    In-process runs (``ex.run`` from tests or scripts) keep their handlers."""
    if getattr(signal.getsignal(signal.SIGTERM), "project_handler", False):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
