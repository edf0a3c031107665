"""``tokner.ReplayModel.v1``: answers from a file of responses (the paper's ``######``
blocks, which echo each sentence's tokens, or JSONL keyed by ``tokens``, ``text`` or
``prompt``), matched by the sentence's tokens, not by position. The responses are saved
with the pipeline.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import srsly

from spacy_llm.registry import registry

from tokner.answers.align import normalise_token, parse_answer_lines
from tokner.utils.textfile import NotUTF8, read_utf8
from tokner.answers.paper_format import split_blocks
from tokner.text.tokenizer import paper_token_spans

logger = logging.getLogger(__name__)


def _key(tokens: Sequence[str]) -> Tuple[str, ...]:
    return tuple(normalise_token(t).casefold() for t in tokens if t.strip())


class ResponsesError(ValueError):
    """A responses file that cannot be replayed (names the file and, where known, the line)."""


def _read_text(path: Path) -> str:
    try:
        return read_utf8(path)
    except NotUTF8 as e:
        raise ResponsesError(f"{e}; re-save the responses file as UTF-8") from None


def read_responses(path: Path) -> List[Dict[str, Any]]:
    """Records ``{"tokens": [...] | None, "prompt": str | None, "response": str}`` from a
    ``######`` file or JSONL/JSON (``tokens``, ``text`` or ``prompt`` + ``response``/``answer``/``output``).

    A file with no response at all, one that is not UTF-8, a JSONL line that is not a JSON
    object or lacks a response raise :class:`ResponsesError` naming the file and line:
    replaying nothing would answer every sentence all-``O`` and look like a result.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"responses file not found: {path}")
    text = _read_text(path)
    records: List[Dict[str, Any]] = []
    if path.suffix in (".jsonl", ".json"):
        if path.suffix == ".json":
            try:
                data = srsly.json_loads(text)
            except ValueError as e:
                raise ResponsesError(f"{path}: not valid JSON: {e}") from None
            if not isinstance(data, list):
                raise ResponsesError(f"{path}: expected a JSON list of response objects")
            raw = [(i + 1, rec) for i, rec in enumerate(data)]
            where = "record"
        else:
            raw = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    raw.append((n, srsly.json_loads(line)))
                except ValueError as e:
                    raise ResponsesError(f"{path}:{n}: not valid JSON: {e}") from None
            where = "line"
        for n, rec in raw:
            if not isinstance(rec, dict):
                raise ResponsesError(f"{path}: {where} {n} is not a JSON object: {str(rec)[:60]!r}")
            resp = next((rec[k] for k in ("response", "answer", "output") if k in rec), None)
            if resp is None:
                raise ResponsesError(f"{path}: {where} {n} has no 'response' (or 'answer'/'output')")
            if "tokens" in rec:
                tokens = list(rec["tokens"])
            elif "text" in rec:
                t = rec["text"]
                tokens = [t[s:e] for s, e in paper_token_spans(t)]
            else:
                tokens = None
            records.append({"tokens": tokens, "prompt": rec.get("prompt"), "response": str(resp)})
    else:
        for block in split_blocks(text):
            if not block.strip():
                continue
            tokens = [t for t, _ in parse_answer_lines(block)]
            records.append({"tokens": tokens, "prompt": None, "response": block})
    if not records:
        raise ResponsesError(f"{path}: no responses in the file (empty, or no '######' blocks / JSON records)")
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

    def fingerprint(self) -> Dict[str, Any]:
        """Everything that changes the answers (for ``tokner.BatchCache.v1``): the responses'
        content (not their file's path, so a pipeline loaded elsewhere keeps its cache) and
        how prompts are matched to them."""
        self._ensure_loaded()
        content = srsly.json_dumps(self.records, sort_keys=True).encode("utf-8")
        return {"model": "tokner.ReplayModel.v1", "responses_sha256": hashlib.sha256(content).hexdigest(),
                "min_similarity": self.min_similarity, "strict": self.strict}


@registry.llm_models("tokner.ReplayModel.v1")
def make_replay_model(path: Optional[str] = None, min_similarity: float = 0.8, strict: bool = False) -> ReplayModel:
    """Replay recorded responses. `path`: ``######`` file or JSONL; a prompt's
    sentence is matched by its tokens (exactly, else the most similar token
    sequence with ratio >= min_similarity); no match answers "" (all ``O``) or
    raises if `strict`. The file is read when the model is built (so a bad file fails
    ``spacy assemble`` before anything is written) and saved with the pipeline; a
    pipeline loaded from disk uses its saved copy, so the file may be gone by then."""
    model = ReplayModel(path, min_similarity, strict)
    if path and Path(path).exists():
        model._set_records(read_responses(Path(path)))
    return model
