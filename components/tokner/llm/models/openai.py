"""``tokner.OpenAICompatible.v1``: any OpenAI-compatible chat-completions server
(OpenAI, vLLM, TGI, Ollama, llama.cpp's server) at a configurable base URL.

What the client guarantees:

* **Constrained answers** (``constraint``): the server is asked, per prompt, to
  write exactly one ``token : label`` line per word of the prompt's sentence, in
  order, with a valid label (``O``, or ``B-``/``I-`` and one of ``labels``): a GBNF
  grammar (``"grammar"``: llama.cpp's ``grammar`` field; vLLM's ``guided_grammar``
  with ``constraint_field``), a regular expression (``"regex"``: vLLM's
  ``guided_regex``; ``structured_outputs.regex`` on newer vLLM) or a JSON schema
  (``"json_schema"``: OpenAI's ``response_format``), whose JSON answer is turned back
  into ``token : label`` lines, so the task's parser never sees JSON.
* **Bounded concurrency**: up to ``concurrency`` requests in flight; answers come
  back in prompt order whatever order the server finishes them in.
* **Failures are errors**: HTTP 408/409/425/429/5xx, connection errors, deadlines
  and malformed 200 answers (an ``error`` object, no ``choices``, a body that is not
  a JSON object) are retried ``max_tries`` times in all, waiting as ``Retry-After``
  says (seconds or an HTTP date) or ``interval * 2 ** k``, and never after the last
  try; then :class:`OpenAICompatibleError` is raised. Each try has a wall-clock
  deadline of ``timeout`` seconds covering the connection, the wait for the answer
  and the reading of its body (a server trickling its body byte by byte is cut off
  at the deadline), so a prompt fails within ``timeout * max_tries`` plus the waits.
  Messages and log lines name the URL without credentials or query string and
  never contain the API key.
* **Careful key handling**: see :func:`make_openai_compatible`.
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import ipaddress
import json
import logging
import os
import queue
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit, urlunsplit

from spacy_llm.registry import registry

from tokner.scoring.scorer import PAPER_LABELS
from tokner.llm.models._common import _flatten, _unflatten

logger = logging.getLogger(__name__)

MODEL_NAME = "tokner.OpenAICompatible.v1"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
CONSTRAINTS: Tuple[Optional[str], ...] = (None, "grammar", "regex", "json_schema")
DEFAULT_CONSTRAINT_FIELDS: Dict[str, str] = {
    "grammar": "grammar",              # llama.cpp (server and llama-cpp-python)
    "regex": "guided_regex",           # vLLM; newer vLLM: "structured_outputs.regex"
    "json_schema": "response_format",  # OpenAI and compatible servers
}
JSON_SCHEMA_NAME = "token_labels"
RETRY_STATUSES = frozenset({408, 409, 425, 429})
MAX_BODY_BYTES = 16 * 1024 * 1024
_READ_SIZE = 64 * 1024


class OpenAICompatibleError(ValueError):
    """A request to an OpenAI-compatible server failed (after its retries, when retryable).

    ``url`` is the endpoint without credentials or query string; ``status`` the last
    HTTP status (None for connection errors and deadlines).
    """

    def __init__(self, message: str, url: str, status: Optional[int] = None):
        super().__init__(message)
        self.url = url
        self.status = status


class _TryFailed(Exception):
    """One try failed; ``retryable`` says whether another may succeed."""

    def __init__(self, message: str, retryable: bool, status: Optional[int] = None,
                 retry_after: Optional[float] = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


# --- URLs and keys ------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without user name, password, query string or fragment (safe to show)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_loopback_host(host: Optional[str]) -> bool:
    """True for ``localhost`` (and ``*.localhost``) and loopback IP literals (127.0.0.0/8, ::1)."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_default_openai_url(base_url: str) -> bool:
    parts = urlsplit(base_url.strip())
    try:
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme.lower() == "https" and (parts.hostname or "") == "api.openai.com"
            and port in (None, 443) and not parts.username and not parts.password
            and parts.path.rstrip("/") == "/v1" and not parts.query and not parts.fragment)


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delay in seconds or an HTTP date), None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN, inf
        return None
    return max(0.0, seconds)


# --- constraints ------------------------------------------------------------------------


def tag_set(labels: Sequence[str]) -> List[str]:
    """The valid answer labels: ``O``, then ``B-X`` and ``I-X`` for each label X."""
    out = ["O"]
    for label in labels:
        out.extend((f"B-{label}", f"I-{label}"))
    return out


_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(text: str, backslashed: frozenset, hex_format: str) -> str:
    """``text`` with each character of ``backslashed`` preceded by a backslash, newline,
    CR and tab as ``\\n``/``\\r``/``\\t``, other control characters in ``hex_format``;
    everything else, non-ASCII included, unchanged."""
    out = []
    for ch in text:
        if ch in backslashed:
            out.append("\\" + ch)
        elif ch in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(hex_format.format(ord(ch)))
        else:
            out.append(ch)
    return "".join(out)


_GBNF_SPECIAL = frozenset('"\\')


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (llama.cpp grammar syntax): ``"`` and ``\\`` escaped,
    control characters as ``\\xHH``; other characters, non-ASCII ones included, stay as UTF-8."""
    return '"' + _escape(text, _GBNF_SPECIAL, "\\x{:02X}") + '"'


def answer_grammar(words: Sequence[str], labels: Sequence[str]) -> str:
    """A GBNF grammar whose only sentences are ``word : tag`` lines, one per word, in order
    (each line ends with a newline), with ``tag`` one of :func:`tag_set`."""
    if not words:
        raise ValueError("answer_grammar: no words to constrain")
    lines = ["root ::= " + " ".join(f"w{i}" for i in range(len(words)))]
    lines.append("tag ::= " + " | ".join(gbnf_literal(t) for t in tag_set(labels)))
    for i, word in enumerate(words):
        lines.append(f"w{i} ::= {gbnf_literal(word + ' : ')} tag {gbnf_literal(chr(10))}")
    return "\n".join(lines) + "\n"


_REGEX_META = frozenset("\\.^$*+?{}[]()|")


def regex_literal(text: str) -> str:
    """``text`` as a regex matching it literally. Only the metacharacters ``\\.^$*+?{}[]()|``
    are escaped (``re.escape`` also escapes space, ``-``, ``#``, ``&``, ``~``, escapes that
    some guided-decoding regex engines reject); control characters become ``\\xHH``."""
    return _escape(text, _REGEX_META, "\\x{:02x}")


def answer_regex(words: Sequence[str], labels: Sequence[str]) -> str:
    """A regex (matched in full) for ``word : tag`` lines, one per word, in order, each ending with a newline."""
    if not words:
        raise ValueError("answer_regex: no words to constrain")
    tags = "(" + "|".join(regex_literal(t) for t in tag_set(labels)) + ")"  # plain groups: every engine has them
    return "".join(f"{regex_literal(w + ' : ')}{tags}\\n" for w in words)


def answer_json_schema(words: Sequence[str], labels: Sequence[str]) -> Dict[str, Any]:
    """A JSON schema for ``{"tokens": [{"token": WORD_i, "label": TAG}, ...]}``: one item per
    word, in order (``prefixItems``, exactly ``len(words)`` items), each ``token`` fixed to its
    word and each ``label`` one of :func:`tag_set`."""
    if not words:
        raise ValueError("answer_json_schema: no words to constrain")
    tags = tag_set(labels)
    items = [
        {
            "type": "object",
            "properties": {"token": {"type": "string", "const": w}, "label": {"type": "string", "enum": tags}},
            "required": ["token", "label"],
            "additionalProperties": False,
        }
        for w in words
    ]
    return {
        "type": "object",
        "properties": {
            "tokens": {"type": "array", "prefixItems": items, "items": False,
                       "minItems": len(words), "maxItems": len(words)},
        },
        "required": ["tokens"],
        "additionalProperties": False,
    }


_JSON_ITEM = re.compile(r'\{\s*"token"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"label"\s*:\s*("(?:[^"\\]|\\.)*")\s*\}')


def json_answer_to_lines(content: str) -> str:
    """A JSON answer (see :func:`answer_json_schema`) as ``token : label`` lines.

    A truncated answer keeps its complete items; text with no item is returned unchanged
    (a server that ignored the schema may still have written lines the task can read)."""
    pairs: List[Tuple[str, str]] = []
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("tokens"), list):
        for item in data["tokens"]:
            if isinstance(item, dict) and "token" in item and "label" in item:
                pairs.append((str(item["token"]), str(item["label"])))
    else:
        for m in _JSON_ITEM.finditer(content):
            try:
                pairs.append((json.loads(m.group(1)), json.loads(m.group(2))))
            except ValueError:
                continue
    if not pairs:
        return content
    return "".join(f"{t} : {l}\n" for t, l in pairs)


def _set_field(body: Dict[str, Any], field: str, value: Any) -> None:
    """``body[a][b] = value`` for ``field = "a.b"`` (creating the objects on the way)."""
    keys = field.split(".")
    target = body
    for key in keys[:-1]:
        nxt = target.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            target[key] = nxt
        target = nxt
    target[keys[-1]] = value


# --- the model ------------------------------------------------------------------------------


class OpenAICompatible:
    """Chat completions from an OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key_env: Optional[str] = None,
        config: Optional[Dict[str, Any]] = None,
        system_prompt: Optional[str] = None,
        max_tries: int = 5,
        interval: float = 1.0,
        timeout: float = 120.0,
        context_length: Optional[int] = None,
        constraint: Optional[str] = None,
        constraint_field: Optional[str] = None,
        labels: Sequence[str] = PAPER_LABELS,
        concurrency: int = 8,
        allow_insecure_key: bool = False,
        max_retry_after: float = 60.0,
    ):
        if max_tries < 1:
            raise ValueError(f"{MODEL_NAME}: max_tries must be >= 1, got {max_tries!r}")
        if concurrency < 1:
            raise ValueError(f"{MODEL_NAME}: concurrency must be >= 1, got {concurrency!r}")
        if not timeout or timeout <= 0:
            raise ValueError(f"{MODEL_NAME}: timeout must be > 0 seconds, got {timeout!r}")
        if interval < 0 or max_retry_after < 0:
            raise ValueError(f"{MODEL_NAME}: interval and max_retry_after must be >= 0")
        if constraint not in CONSTRAINTS:
            raise ValueError(f"{MODEL_NAME}: constraint must be one of null, 'grammar', 'regex', "
                             f"'json_schema', got {constraint!r}")
        if constraint_field is not None and constraint is None:
            raise ValueError(f"{MODEL_NAME}: constraint_field is set but constraint is null")
        if constraint_field is not None and (not constraint_field or any(not k for k in constraint_field.split("."))):
            raise ValueError(f"{MODEL_NAME}: constraint_field must be a body field such as 'guided_regex' "
                             f"or 'structured_outputs.regex', got {constraint_field!r}")
        labels = [str(l).strip() for l in labels if str(l).strip()]
        if not labels:
            raise ValueError(f"{MODEL_NAME}: labels must name at least one entity type")
        parts = urlsplit(base_url.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{MODEL_NAME}: base_url must be an http(s) URL, got {redact_url(base_url)!r}")

        self.name = name
        self.base_url = base_url.strip()
        path = parts.path.rstrip("/") + "/chat/completions"
        self.url = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        self.safe_url = redact_url(self.url)
        self.config = dict(config or {})
        self.system_prompt = system_prompt
        self.max_tries, self.interval, self.timeout = int(max_tries), float(interval), float(timeout)
        self.max_retry_after = float(max_retry_after)
        self._context_length = context_length
        self.constraint = constraint
        self.constraint_field = constraint_field or (DEFAULT_CONSTRAINT_FIELDS[constraint] if constraint else None)
        self.labels: Tuple[str, ...] = tuple(dict.fromkeys(labels))
        self.concurrency = int(concurrency)
        self.allow_insecure_key = bool(allow_insecure_key)

        # key policy: an explicit variable, else OPENAI_API_KEY for OpenAI's own URL only
        self.api_key_env = api_key_env or (DEFAULT_KEY_ENV if _is_default_openai_url(self.base_url) else None)
        insecure = parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname)
        if self.api_key_env and insecure and not self.allow_insecure_key:
            raise ValueError(
                f"{MODEL_NAME}: refusing to send the API key from ${self.api_key_env} over plain http to "
                f"{parts.hostname}: use https, a loopback address, or allow_insecure_key = true")
        if parts.username or parts.password:
            # requests sends them as HTTP Basic auth, which would replace the Bearer key
            if self.api_key_env:
                raise ValueError(f"{MODEL_NAME}: base_url carries credentials (sent as HTTP Basic auth) and "
                                 f"api_key_env names a key (${self.api_key_env}): use one of them")
            if insecure and not self.allow_insecure_key:
                raise ValueError(f"{MODEL_NAME}: refusing to send base_url's credentials over plain http to "
                                 f"{parts.hostname}: use https, a loopback address, or allow_insecure_key = true")
        # parts of the URL never shown in messages or logs: its query string and password (as
        # written, decoded, and inside the HTTP Basic auth token requests makes of the credentials)
        self._url_query = parts.query
        self._url_secrets = [s for s in (parts.query, parts.password) if s]
        if parts.username or parts.password:
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode("latin-1", errors="replace")).decode("ascii")
            self._url_secrets += [s for s in (password, token) if s]
        self._sessions: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._stats_lock = threading.Lock()
        self.stats: Dict[str, int] = {"requests": 0, "tries": 0, "retries": 0, "failures": 0, "truncated": 0}

    # --- spacy-llm protocol ---------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self._context_length or 8192

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        """One answer per prompt, per doc, in order; all docs' prompts run concurrently."""
        flat, sizes = _flatten(prompts)
        return _unflatten(self.complete_many(flat), sizes)

    def fingerprint(self) -> Dict[str, Any]:
        """Everything that changes this model's answers (for ``tokner.BatchCache.v1``): no
        key or credentials, and the URL without its query string (which may select another
        deployment, e.g. an ``api-version``: its hash stands in)."""
        fp: Dict[str, Any] = {
            "model": MODEL_NAME,
            "name": self.name,
            "url": self.safe_url,
            "constraint": self.constraint,
            "constraint_field": self.constraint_field,
            "labels": list(self.labels),
            "config": self.config,
            "system_prompt": self.system_prompt,
            "max_tokens": "config" if "max_tokens" in self.config else self._max_tokens_rule(),
        }
        if self._url_query:
            fp["query_sha256"] = hashlib.sha256(self._url_query.encode("utf-8")).hexdigest()
        return fp

    # --- requests ---------------------------------------------------------------------------

    def complete_many(self, prompts: Sequence[str]) -> List[str]:
        """Answers to ``prompts``, in order, with at most ``concurrency`` requests in flight."""
        prompts = list(prompts)
        if not prompts:
            return []
        if self.concurrency == 1 or len(prompts) == 1:
            return [self.complete(p) for p in prompts]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)),
                                  thread_name_prefix="tokner-openai")
        try:
            futures = [pool.submit(self.complete, p) for p in prompts]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:  # the first failure in prompt order among those that failed
                if f in done and f.exception() is not None:
                    raise f.exception()
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def build_body(self, prompt: str) -> Dict[str, Any]:
        """The chat-completions request body for one prompt (constraint included)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": str(prompt)})
        body: Dict[str, Any] = {"model": self.name, "messages": messages, "temperature": 0}
        body.update(json.loads(json.dumps(self.config)))  # deep copy: a constraint may be merged into it
        words = getattr(prompt, "words", None)
        if words and "max_tokens" not in self.config:
            body["max_tokens"] = self._max_tokens(len(words))
        if self.constraint:
            if not words:
                raise ValueError(f"{MODEL_NAME}: constraint {self.constraint!r} needs prompts that carry "
                                 f"their words (tokner.TokenNER.v1's prompts); got a prompt without words")
            labels = tuple(getattr(prompt, "labels", None) or self.labels)
            _set_field(body, self.constraint_field, self._constraint_value(list(words), labels))
        return body

    def _constraint_value(self, words: List[str], labels: Sequence[str]) -> Any:
        if self.constraint == "grammar":
            return answer_grammar(words, labels)
        if self.constraint == "regex":
            return answer_regex(words, labels)
        schema = answer_json_schema(words, labels)
        if self.constraint_field == "response_format":
            return {"type": "json_schema", "json_schema": {"name": JSON_SCHEMA_NAME, "schema": schema, "strict": True}}
        return schema  # e.g. vLLM's guided_json / structured_outputs.json take the bare schema

    def _max_tokens_rule(self) -> str:
        return "32+24n" if self.constraint == "json_schema" else "16+12n"

    def _max_tokens(self, n_words: int) -> int:
        # "word : I-LABEL\n" is ~5-12 tokens; the JSON form about twice that
        return 32 + 24 * n_words if self.constraint == "json_schema" else 16 + 12 * n_words

    def _api_key(self) -> Optional[str]:
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def _scrub(self, text: str, key: Optional[str]) -> str:
        """``text`` with the key and the URL's query string and credentials replaced by ``***``."""
        for secret in sorted(set(self._url_secrets + ([key] if key else [])), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def complete(self, prompt: str) -> str:
        """The answer to one prompt (retried as described in the module docstring)."""
        body = self.build_body(prompt)
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        key = self._api_key()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        with self._stats_lock:
            self.stats["requests"] += 1
        failure: Optional[_TryFailed] = None
        for attempt in range(self.max_tries):
            with self._stats_lock:
                self.stats["tries"] += 1
            try:
                content = self._try(payload, headers)
                return json_answer_to_lines(content) if self.constraint == "json_schema" else content
            except _TryFailed as e:
                failure = e
            if not failure.retryable or attempt == self.max_tries - 1:
                break
            if failure.retry_after is not None and failure.retry_after > self.max_retry_after:
                failure = _TryFailed(f"{failure}; the server asked to wait {failure.retry_after:.0f} s (more than "
                                     f"max_retry_after = {self.max_retry_after:g} s)", False, failure.status)
                break
            delay = failure.retry_after if failure.retry_after is not None else self.interval * (2 ** attempt)
            logger.warning("%s: %s (try %d of %d): %s; retrying in %.2f s", MODEL_NAME, self.safe_url,
                           attempt + 1, self.max_tries, self._scrub(str(failure), key), delay)
            with self._stats_lock:
                self.stats["retries"] += 1
            time.sleep(delay)
        assert failure is not None
        with self._stats_lock:
            self.stats["failures"] += 1
        tries = attempt + 1
        raise OpenAICompatibleError(
            f"{MODEL_NAME}: request to {self.safe_url} (model {self.name!r}) failed after {tries} "
            f"{'try' if tries == 1 else 'tries'}: {self._scrub(str(failure), key)}",
            url=self.safe_url, status=failure.status)

    def _session(self):
        import requests

        try:
            return self._sessions.get_nowait()
        except queue.Empty:
            return requests.Session()

    def _try(self, payload: bytes, headers: Dict[str, str]) -> str:
        """One request with a wall-clock deadline of ``timeout`` seconds; the answer's text."""
        import requests
        import urllib3

        deadline = time.monotonic() + self.timeout
        session = self._session()
        try:
            try:
                resp = session.post(self.url, data=payload, headers=headers, stream=True, allow_redirects=False,
                                    timeout=(self.timeout, self.timeout))
            except requests.Timeout as e:
                raise _TryFailed(f"no answer within timeout = {self.timeout:g} s ({type(e).__name__})", True)
            except requests.RequestException as e:
                raise _TryFailed(f"{type(e).__name__}: {e}", True)
            try:
                raw = self._read_body(resp, deadline)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                if time.monotonic() >= deadline or "timed out" in str(e).lower():
                    raise _TryFailed(f"the answer's body did not arrive within timeout = {self.timeout:g} s",
                                     True, resp.status_code)
                raise _TryFailed(f"reading the answer failed: {type(e).__name__}: {e}", True, resp.status_code)
            finally:
                resp.close()
        finally:
            self._sessions.put(session)
        return self._parse(resp.status_code, resp.headers, raw)

    def _read_body(self, resp: Any, deadline: float) -> bytes:
        """The (decoded) body, read as it arrives and cut off at ``deadline``: requests' own
        timeout bounds each socket read only, so a trickling server would never time out."""
        raw = resp.raw
        conn = getattr(raw, "connection", None)
        sock = getattr(conn, "sock", None)
        read1 = getattr(raw, "read1", None)
        chunks: List[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed while reading the body")
            if sock is not None:
                sock.settimeout(remaining)
            chunk = read1(_READ_SIZE, decode_content=True) if read1 is not None else raw.read(1, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TryFailed(f"the answer is larger than {MAX_BODY_BYTES} bytes", False, resp.status_code)

    def _parse(self, status: int, headers: Any, raw: bytes) -> str:
        """The answer text of a response, or :class:`_TryFailed`."""
        text = raw.decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            retryable = status in RETRY_STATUSES or status >= 500
            if 300 <= status < 400:
                where = headers.get("Location")
                msg = f"HTTP {status} redirect{' to ' + redact_url(where) if where else ''} (not followed)"
                raise _TryFailed(msg, False, status)
            raise _TryFailed(f"HTTP {status}: {_snippet(text)}", retryable, status,
                             parse_retry_after(headers.get("Retry-After")))
        try:
            data = json.loads(text)
        except ValueError:
            raise _TryFailed(f"HTTP {status} but the body is not JSON: {_snippet(text)}", True, status)
        if not isinstance(data, dict):
            raise _TryFailed(f"HTTP {status} but the body is a JSON {type(data).__name__}, not an object: "
                             f"{_snippet(text)}", True, status)
        if data.get("error"):
            err = data["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            raise _TryFailed(f"HTTP {status} with an error: {_snippet(str(msg))}", True, status)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _TryFailed(f"HTTP {status} but no choices in the answer: {_snippet(text)}", True, status)
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = message.get("content")
        if content is None:
            content = choice.get("text")
        if content is None:
            refusal = message.get("refusal")
            why = f"the model refused: {_snippet(str(refusal))}" if refusal else "the choice has no content"
            raise _TryFailed(f"HTTP {status} but {why}", True, status)
        if choice.get("finish_reason") == "length":
            with self._stats_lock:
                self.stats["truncated"] += 1
            logger.debug("%s: an answer from %s stopped at max_tokens", MODEL_NAME, self.safe_url)
        return str(content)


def _snippet(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


@registry.llm_models("tokner.OpenAICompatible.v1")
def make_openai_compatible(
    name: str = "gpt-4o",
    base_url: str = DEFAULT_BASE_URL,
    api_key_env: Optional[str] = None,
    config: Dict[str, Any] = {},
    system_prompt: Optional[str] = None,
    max_tries: int = 5,
    interval: float = 1.0,
    timeout: float = 120.0,
    context_length: Optional[int] = None,
    constraint: Optional[str] = None,
    constraint_field: Optional[str] = None,
    labels: List[str] = list(PAPER_LABELS),
    concurrency: int = 8,
    allow_insecure_key: bool = False,
    max_retry_after: float = 60.0,
) -> OpenAICompatible:
    """Chat completions from an OpenAI-compatible server at `base_url` (OpenAI, vLLM, TGI,
    Ollama, llama.cpp's server); one request per prompt (per sentence with tokner.TokenNER.v1).

    name: the model the server should use (the body's ``model``).
    base_url: the API root; requests go to ``{base_url}/chat/completions``.
    api_key_env: environment variable holding the API key, sent as ``Authorization:
        Bearer``. When null (the default), ``OPENAI_API_KEY`` is used only if `base_url`
        is OpenAI's own ``https://api.openai.com/v1``; any other server gets no key
        unless `api_key_env` names one. A key is never sent over plain ``http://`` to a
        host other than a loopback address (``localhost``, 127.0.0.0/8, ::1): such a
        config raises unless `allow_insecure_key` is true.
    config: extra body fields (``temperature`` defaults to 0; ``max_tokens`` defaults to
        16 + 12 per word, 32 + 24 per word with ``json_schema``).
    system_prompt: an optional system message before the prompt.
    max_tries: tries per prompt in all (>= 1); see `interval`, `max_retry_after`.
    interval: wait before the k-th retry, ``interval * 2 ** (k - 1)`` seconds, unless the
        server's ``Retry-After`` says otherwise.
    timeout: wall-clock seconds per try: connecting, waiting and reading the whole body.
    context_length: the model's context window for spacy-llm's sharding (default 8192).
    constraint: null, "grammar" (GBNF), "regex" or "json_schema": the answer is forced
        to one ``word : label`` line per word, in order, with ``O`` or ``B-``/``I-`` and one
        of `labels` (JSON answers are turned back into such lines).
    constraint_field: the body field the constraint goes to, dotted for nested fields;
        default "grammar" (llama.cpp), "guided_regex" (vLLM) or "response_format"
        (OpenAI-style ``json_schema`` wrapper). For newer vLLM use
        "structured_outputs.regex" / "structured_outputs.grammar" /
        "structured_outputs.json", or "guided_grammar" / "guided_json"; any field other
        than "response_format" gets the bare JSON schema.
    labels: entity types the constraint allows; must match the task's labels (a prompt
        carrying its own ``labels`` attribute takes precedence).
    concurrency: requests in flight at once (>= 1); answers keep prompt order.
    allow_insecure_key: allow sending the key over plain http to a non-loopback host.
    max_retry_after: a ``Retry-After`` longer than this many seconds ends the retries.
    """
    return OpenAICompatible(
        name=name, base_url=base_url, api_key_env=api_key_env, config=dict(config),
        system_prompt=system_prompt, max_tries=max_tries, interval=interval, timeout=timeout,
        context_length=context_length, constraint=constraint, constraint_field=constraint_field,
        labels=list(labels), concurrency=concurrency, allow_insecure_key=allow_insecure_key,
        max_retry_after=max_retry_after,
    )
