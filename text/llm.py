"""A client for any OpenAI-compatible chat-completions endpoint (a hosted API, or a local server:
llama.cpp, vLLM, Ollama), with a response cache that makes a rerun bit-identical and offline.

* ``base_url`` is the API root (``http://127.0.0.1:8080/v1``); the request goes to
  ``<base_url>/chat/completions``. The key, if any, is read from the environment variable named by
  ``api_key_env`` when a request is sent, and is never stored: not in the cache, not in a config.
* Every answer is cached under ``cache_dir`` by the SHA-256 of the request (model, messages,
  sampling settings, answer schema): ``<cache_dir>/<hash[:2]>/<hash>.json`` holds the request and
  the answer. A cached request is answered from the file, without the server; with
  ``offline=True`` a request missing from the cache is an error naming it.
* Timeouts, and retries with a growing pause on connection errors, 429 and 5xx answers.
* ``schema_format`` says how the answer's JSON schema is sent: ``json_schema`` (the OpenAI
  form, also vLLM's and llama.cpp's own server), ``json_object`` (llama-cpp-python's server:
  ``{"type": "json_object", "schema": ...}``) or ``none`` (the prompt alone asks for JSON).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SCHEMA_FORMATS = ("json_schema", "json_object", "none")


class LLMError(RuntimeError):
    """The endpoint cannot give an answer; the message names it and why."""


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_hash: str
    cached: bool


@dataclass(frozen=True)
class LLMClient:
    base_url: str
    model: str
    cache_dir: Path
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 3
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 800
    schema_format: str = "json_schema"
    offline: bool = False

    def __post_init__(self) -> None:
        if self.schema_format not in SCHEMA_FORMATS:
            raise ValueError(f"schema_format must be one of {SCHEMA_FORMATS}, got {self.schema_format!r}")

    def request(self, messages: list[dict], schema: dict | None = None) -> dict:
        """The request body (what the cache key hashes; it never holds the key)."""
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "seed": self.seed,
                "max_tokens": self.max_tokens}
        if schema is not None and self.schema_format == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                                              "strict": True}}
        elif schema is not None and self.schema_format == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def chat(self, messages: list[dict], schema: dict | None = None) -> Answer:
        """The answer's text: from the cache, else from the endpoint (then cached)."""
        body = self.request(messages, schema)
        key = prompt_hash(body)
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.is_file():
            try:
                return Answer(json.loads(path.read_text())["answer"], key, True)
            except (json.JSONDecodeError, KeyError) as exc:
                raise LLMError(f"cached answer {path} is unreadable ({exc}); delete it to ask again") from None
        if self.offline:
            raise LLMError(f"offline and the answer to prompt {key[:12]} is not cached in {self.cache_dir}; run once "
                           f"with the endpoint reachable ({self.base_url})")
        text = self._post(body)
        from experiments.files import write_text_atomic
        from experiments.tracking.output import redact_text

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"request": body, "answer": text, "base_url": redact_text(self.base_url),
                                            "answered_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
        return Answer(text, key, False)

    def _post(self, body: dict) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, 2.0 ** attempt))
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=self.timeout) as r:
                    reply = json.loads(r.read())
                return reply["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
                if exc.code != 429 and exc.code < 500:  # a wrong request or key: asking again will not help
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                raise LLMError(f"{url} did not answer as an OpenAI-compatible chat endpoint ({exc!r})") from None
        raise LLMError(f"no answer from {url} (model {self.model!r}) after {attempt + 1} attempt(s): {last}")


def prompt_hash(body: dict) -> str:
    """SHA-256 of a request body in canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
