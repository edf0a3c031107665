"""``tokner.OpenAICompatible.v1``: any OpenAI-compatible chat-completions server
(OpenAI, vLLM, TGI, Ollama, llama.cpp server) at a configurable base URL.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Iterable, Optional

from spacy_llm.registry import registry

logger = logging.getLogger(__name__)


class OpenAICompatible:
    """Chat completions from an OpenAI-compatible server, one request per prompt."""

    def __init__(self, name: str, base_url: str, api_key_env: Optional[str], config: Dict[str, Any],
                 system_prompt: Optional[str], max_tries: int, interval: float, timeout: float,
                 context_length: Optional[int]):
        if max_tries < 1:
            raise ValueError("tokner.OpenAICompatible.v1: max_tries must be >= 1")
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.config = dict(config)
        self.system_prompt = system_prompt
        self.max_tries, self.interval, self.timeout = max_tries, interval, timeout
        self._context_length = context_length

    @property
    def context_length(self) -> int:
        return self._context_length or 8192

    def _headers(self) -> Dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.getenv(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, prompt: str) -> str:
        import requests

        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": str(prompt)})
        body = {"model": self.name, "messages": messages, "temperature": 0, **self.config}
        words = getattr(prompt, "words", None)
        if words and "max_tokens" not in self.config:
            body["max_tokens"] = 16 + 12 * len(words)
        last_error = ""
        for attempt in range(self.max_tries):
            try:
                r = requests.post(self.url, json=body, headers=self._headers(), timeout=self.timeout)
                if r.status_code == 200:
                    choices = r.json().get("choices") or [{}]
                    return (choices[0].get("message") or {}).get("content") or choices[0].get("text") or ""
                last_error = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in (408, 409, 429) and r.status_code < 500:
                    break
            except requests.RequestException as e:  # connection errors, timeouts
                last_error = repr(e)
            time.sleep(self.interval * (2 ** attempt))
        raise ValueError(f"tokner.OpenAICompatible.v1: request to {self.url} (model {self.name!r}) failed: {last_error}")

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        return [[self.complete(p) for p in doc_prompts] for doc_prompts in prompts]


@registry.llm_models("tokner.OpenAICompatible.v1")
def make_openai_compatible(
    name: str = "gpt-4o",
    base_url: str = "https://api.openai.com/v1",
    api_key_env: Optional[str] = "OPENAI_API_KEY",
    config: Dict[str, Any] = {},
    system_prompt: Optional[str] = None,
    max_tries: int = 5,
    interval: float = 1.0,
    timeout: float = 120.0,
    context_length: Optional[int] = None,
) -> OpenAICompatible:
    """OpenAI-compatible chat completions at `base_url` (vLLM, TGI, Ollama,
    llama.cpp server, OpenAI). The API key is read from the environment variable
    `api_key_env` (none sent if unset). Temperature 0 unless `config` says otherwise;
    ``max_tokens`` scales with the sentence unless `config` sets it."""
    return OpenAICompatible(name, base_url, api_key_env, dict(config), system_prompt, max_tries, interval,
                            timeout, context_length)

