"""Models for the ``llm`` component, registered in spacy-llm's ``llm_models``.

* ``tokner.HFCausalLM.v1``: any Hugging Face causal LM by hub name *or local
  path* (spacy-llm's own HF models accept fixed names only): batched, left-padded
  greedy generation, ``max_new_tokens`` scaled to the number of words asked about
  (the paper's fixed 128 truncated long sentences), the tokenizer's chat template
  when it has one, and generation stopped once a sequence has written a line per word.
* ``tokner.ReplayModel.v1``: answers from a file of responses (the paper's
  ``######`` blocks, which echo each sentence's tokens, or JSONL keyed by
  ``tokens``, ``text`` or ``prompt``), matched by the sentence's tokens, not by
  position. The responses are saved with the pipeline.
* ``tokner.OpenAICompatible.v1``: any OpenAI-compatible chat-completions server
  (OpenAI, vLLM, TGI, Ollama, llama.cpp server) at a configurable base URL.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
import time
import unicodedata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import srsly
from tqdm import tqdm

from spacy_llm.registry import registry

from ..align import parse_answer_lines
from ..paper_format import split_blocks
from ..tokenizer import paper_token_spans

logger = logging.getLogger(__name__)


def _flatten(prompts: Iterable[Iterable[str]]) -> Tuple[List[str], List[int]]:
    flat: List[str] = []
    sizes: List[int] = []
    for doc_prompts in prompts:
        doc_prompts = list(doc_prompts)
        flat.extend(doc_prompts)
        sizes.append(len(doc_prompts))
    return flat, sizes


def _unflatten(flat: Sequence[str], sizes: Sequence[int]) -> List[List[str]]:
    out, k = [], 0
    for n in sizes:
        out.append(list(flat[k: k + n]))
        k += n
    return out


# --- Hugging Face causal LM -------------------------------------------------------

class HFCausalLM:
    """Local generation with transformers (see module docstring)."""

    def __init__(
        self,
        name: str,
        batch_size: int,
        max_new_tokens: Optional[int],
        max_new_tokens_cap: int,
        line_slack: int,
        use_chat_template: bool,
        system_prompt: Optional[str],
        device: Optional[str],
        dtype: str,
        config_init: Dict[str, Any],
        config_run: Dict[str, Any],
        progress: bool,
        num_threads: Optional[int] = None,
        entity_share: float = 0.5,
        prime_answer: bool = False,
    ):
        import torch

        if num_threads:
            # CPU only: fewer threads than cores is much faster on a busy machine
            torch.set_num_threads(num_threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = str(name)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_new_tokens_cap = max_new_tokens_cap
        self.line_slack = line_slack
        self.entity_share = entity_share
        self.prime_answer = prime_answer
        self.system_prompt = system_prompt
        self.progress = progress
        self.config_run = dict(config_run)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name, **config_init.get("tokenizer", {}))
            torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            model_kwargs = {k: v for k, v in config_init.items() if k != "tokenizer"}
            self.model = AutoModelForCausalLM.from_pretrained(self.name, torch_dtype=torch_dtype, **model_kwargs)
        except OSError as e:
            raise OSError(
                f"tokner.HFCausalLM.v1: cannot load {self.name!r} (a Hugging Face hub name or a local folder; "
                f"offline default: python -m tokner.offline smollm2 assets/models/SmolLM2-135M-Instruct): {e}"
            ) from e
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.use_chat_template = bool(use_chat_template and getattr(self.tokenizer, "chat_template", None))
        # tokens a "word : O" line and a "word : I-LONGESTLABEL" line add beyond the word itself
        self._o_tokens = len(self.tokenizer(" : O\n", add_special_tokens=False).input_ids)
        self._label_tokens = len(self.tokenizer(" : I-SKINRAREDISEASE\n", add_special_tokens=False).input_ids)

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 2048)

    def primer(self, prompt: str) -> str:
        """Start of the answer written for the model (``prime_answer``): the first word and " :"."""
        words = getattr(prompt, "words", None)
        return f"{words[0]} :" if self.prime_answer and words else ""

    def format_prompt(self, prompt: str) -> str:
        if not self.use_chat_template:
            return str(prompt) + self.primer(prompt)
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": str(prompt)})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self.primer(prompt)

    def budget(self, prompt: str) -> int:
        """max_new_tokens for one prompt: fixed if configured, else scaled to its words."""
        if self.max_new_tokens:
            return self.max_new_tokens
        words = getattr(prompt, "words", None)
        if not words:
            return min(self.max_new_tokens_cap, 256)
        n = len(words)
        word_tokens = len(self.tokenizer(" ".join(words), add_special_tokens=False).input_ids)
        need = word_tokens + n * self._o_tokens + math.ceil(self.entity_share * n) * (self._label_tokens - self._o_tokens)
        return int(min(self.max_new_tokens_cap, math.ceil(need * 1.1) + 16))

    def generate(self, prompts: Sequence[str]) -> List[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        texts = [self.format_prompt(p) for p in prompts]
        budgets = [self.budget(p) for p in prompts]
        n_lines = [len(getattr(p, "words", ()) or ()) for p in prompts]
        lengths = [len(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], -budgets[i]))
        out: List[str] = [""] * len(texts)
        tokenizer = self.tokenizer
        slack = self.line_slack

        class _EnoughLines(StoppingCriteria):
            """Stop a sequence once it wrote a line per word (+ slack) and ended a line."""

            def __init__(self, start: int, want: List[int]):
                self.start, self.want = start, want

            def __call__(self, input_ids, scores, **kwargs):
                done = []
                for row, want in zip(input_ids, self.want):
                    if not want:
                        done.append(False)
                        continue
                    text = tokenizer.decode(row[self.start:], skip_special_tokens=True)
                    lines = [l for l in text.split("\n") if l.strip()]
                    done.append(text.endswith("\n") and len(lines) >= want + slack)
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not self.progress):
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=not self.use_chat_template).to(self.device)
            start = enc["input_ids"].shape[1]
            max_new = max(budgets[i] for i in batch)
            stops = StoppingCriteriaList([_EnoughLines(start, [n_lines[i] for i in batch])])
            gen_kwargs = {"do_sample": False, "num_beams": 1, **self.config_run}
            if not gen_kwargs.get("do_sample"):
                gen_kwargs.pop("temperature", None)
                gen_kwargs.pop("top_p", None)
                gen_kwargs.pop("top_k", None)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                                          stopping_criteria=stops, **gen_kwargs)
            for row, i in zip(gen, batch):
                new = row[start: start + budgets[i]]
                out[i] = self.primer(prompts[i]) + tokenizer.decode(new, skip_special_tokens=True)
        return out

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        flat, sizes = _flatten(prompts)
        return _unflatten(self.generate(flat) if flat else [], sizes)


@registry.llm_models("tokner.HFCausalLM.v1")
def make_hf_causal_lm(
    name: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
    batch_size: int = 8,
    max_new_tokens: Optional[int] = None,
    max_new_tokens_cap: int = 2048,
    line_slack: int = 2,
    use_chat_template: bool = True,
    system_prompt: Optional[str] = None,
    device: Optional[str] = None,
    dtype: str = "auto",
    config_init: Dict[str, Any] = {},
    config_run: Dict[str, Any] = {},
    progress: bool = False,
    num_threads: Optional[int] = None,
    entity_share: float = 0.5,
    prime_answer: bool = False,
) -> HFCausalLM:
    """A Hugging Face causal LM from a hub name or a local folder.

    max_new_tokens: fixed budget; None scales it to the prompt's words: their tokens,
        a " : O" line each, and room for an entity label on `entity_share` of them
        (capped by max_new_tokens_cap). Generation also stops after a line per
        word + line_slack lines.
    use_chat_template: wrap the prompt as a user message when the tokenizer has a template.
    config_init / config_run: extra kwargs for ``from_pretrained`` / ``generate``
        (greedy unless ``config_run`` sets ``do_sample``).
    num_threads: torch CPU threads (None: torch's default).
    prime_answer: start the answer for the model with its first word and " :" (helps
        small models keep the format; the primer is part of the returned answer).
    """
    return HFCausalLM(name, batch_size, max_new_tokens, max_new_tokens_cap, line_slack, use_chat_template,
                      system_prompt, device, dtype, dict(config_init), dict(config_run), progress, num_threads,
                      entity_share, prime_answer)


# --- replay -----------------------------------------------------------------------

def _key(tokens: Sequence[str]) -> Tuple[str, ...]:
    return tuple("".join(unicodedata.normalize("NFKC", t).split()).casefold() for t in tokens if t.strip())


def read_responses(path: Path) -> List[Dict[str, Any]]:
    """Records ``{"tokens": [...] | None, "prompt": str | None, "response": str}`` from a
    ``######`` file or JSONL/JSON (``tokens``, ``text`` or ``prompt`` + ``response``/``answer``/``output``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"responses file not found: {path}")
    records: List[Dict[str, Any]] = []
    if path.suffix in (".jsonl", ".json"):
        raw = srsly.read_jsonl(path) if path.suffix == ".jsonl" else srsly.read_json(path)
        for i, rec in enumerate(raw):
            resp = next((rec[k] for k in ("response", "answer", "output") if k in rec), None)
            if resp is None:
                raise ValueError(f"{path}: record {i} has no 'response' (or 'answer'/'output')")
            if "tokens" in rec:
                tokens = list(rec["tokens"])
            elif "text" in rec:
                text = rec["text"]
                tokens = [text[s:e] for s, e in paper_token_spans(text)]
            else:
                tokens = None
            records.append({"tokens": tokens, "prompt": rec.get("prompt"), "response": str(resp)})
        return records
    for block in split_blocks(path.read_text(encoding="utf-8")):
        tokens = [t for t, _ in parse_answer_lines(block)]
        records.append({"tokens": tokens, "prompt": None, "response": block})
    return records


class ReplayModel:
    """Answers prompts from recorded responses (see module docstring)."""

    def __init__(self, path: Optional[str], min_similarity: float, strict: bool):
        self.path = path
        self.min_similarity = min_similarity
        self.strict = strict
        self.records: List[Dict[str, Any]] = []
        self._loaded = False
        self.stats = {"exact": 0, "fuzzy": 0, "missing": 0}

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        if not self.path:
            raise ValueError("tokner.ReplayModel.v1: no responses file (set [paths] responses)")
        self._set_records(read_responses(Path(self.path)))

    def _set_records(self, records: List[Dict[str, Any]]) -> None:
        self.records = records
        # a sentence that occurs several times (boilerplate) may have several responses:
        # they are served in file order, the last one repeated
        self._by_tokens: Dict[Tuple[str, ...], List[str]] = {}
        self._by_prompt: Dict[str, List[str]] = {}
        self._served: Dict[Any, int] = {}
        for rec in records:
            if rec.get("tokens"):
                self._by_tokens.setdefault(_key(rec["tokens"]), []).append(rec["response"])
            if rec.get("prompt"):
                self._by_prompt.setdefault(rec["prompt"], []).append(rec["response"])
        self._keys = list(self._by_tokens)
        self._loaded = True

    def _serve(self, table: Dict[Any, List[str]], key: Any) -> str:
        n = self._served.get((id(table), key), 0)
        self._served[(id(table), key)] = n + 1
        options = table[key]
        return options[min(n, len(options) - 1)]

    @property
    def context_length(self) -> int:
        return 1 << 30

    def lookup(self, prompt: str) -> Optional[str]:
        self._ensure_loaded()
        words = getattr(prompt, "words", None)
        if words:
            key = _key(words)
            if key in self._by_tokens:
                self.stats["exact"] += 1
                return self._serve(self._by_tokens, key)
            best, best_ratio = None, self.min_similarity
            for cand in self._keys:
                sm = difflib.SequenceMatcher(None, key, cand, autojunk=False)
                if sm.real_quick_ratio() < best_ratio or sm.quick_ratio() < best_ratio:
                    continue
                r = sm.ratio()
                if r > best_ratio or (best is None and r >= best_ratio):
                    best, best_ratio = cand, r
            if best is not None:
                self.stats["fuzzy"] += 1
                return self._serve(self._by_tokens, best)
        if str(prompt) in self._by_prompt:
            self.stats["exact"] += 1
            return self._serve(self._by_prompt, str(prompt))
        self.stats["missing"] += 1
        return None

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        out: List[List[str]] = []
        for doc_prompts in prompts:
            answers = []
            for p in doc_prompts:
                resp = self.lookup(p)
                if resp is None:
                    words = getattr(p, "words", ())
                    msg = f"tokner.ReplayModel.v1: no response in {self.path} for {' '.join(words)[:80]!r}"
                    if self.strict:
                        raise KeyError(msg)
                    logger.warning(msg)
                    resp = ""
                answers.append(resp)
            out.append(answers)
        return out

    # responses travel with the pipeline, so spacy.load needs no responses file
    def to_bytes(self, *, exclude: Tuple[str, ...] = tuple()) -> bytes:
        self._ensure_loaded()
        return srsly.msgpack_dumps({"records": self.records})

    def from_bytes(self, bytes_data: bytes, *, exclude: Tuple[str, ...] = tuple()) -> "ReplayModel":
        self._set_records(srsly.msgpack_loads(bytes_data)["records"])
        return self

    def to_disk(self, path: Path, *, exclude: Tuple[str, ...] = tuple()) -> None:
        self._ensure_loaded()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_jsonl(path / "responses.jsonl", self.records)

    def from_disk(self, path: Path, *, exclude: Tuple[str, ...] = tuple()) -> "ReplayModel":
        self._set_records(list(srsly.read_jsonl(Path(path) / "responses.jsonl")))
        return self


@registry.llm_models("tokner.ReplayModel.v1")
def make_replay_model(path: Optional[str] = None, min_similarity: float = 0.8, strict: bool = False) -> ReplayModel:
    """Replay recorded responses. `path`: ``######`` file or JSONL; a prompt's
    sentence is matched by its tokens (exactly, else the most similar token
    sequence with ratio >= min_similarity); no match answers "" (all ``O``) or
    raises if `strict`. The file is read on first use and saved with the pipeline."""
    return ReplayModel(path, min_similarity, strict)


# --- OpenAI-compatible REST -------------------------------------------------------

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
