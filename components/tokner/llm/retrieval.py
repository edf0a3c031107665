"""Demonstrations and knowledge passages for the prompts, and the indexes behind them.

Registered in spacy-llm's ``llm_misc`` registry:

* indexes: ``tokner.DenseIndex.v1`` (mean-pooled, L2-normalised sentence
  embeddings from any Hugging Face encoder, by default the offline
  all-MiniLM-L6-v2) and ``tokner.BM25Index.v1`` (Okapi BM25, no model);
* demonstration selectors: ``tokner.FixedExamples.v1`` (k examples from a file or
  drawn with a seed from a DocBin: the paper's few-shot setting) and
  ``tokner.SimilarExamples.v1`` (the k training sentences most similar to the
  input: dynamic few-shot / RAG over demonstrations);
* ``tokner.KnowledgePassages.v1``: the top-k chunks of a folder of reference
  documents, placed in the prompt as context.

Everything is built once by ``nlp.initialize()`` (``spacy assemble``), written by
``nlp.to_disk`` next to the pipeline (items as JSONL, dense vectors as ``.npy``)
and read back by ``spacy.load``; the source files are not needed after that.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy
import srsly
from spacy.language import Language
from spacy.tokens import DocBin
from tqdm import tqdm

from spacy_llm.registry import registry

from tokner.answers.paper_format import render_answer, render_tokens, split_blocks
from tokner.answers.tags import doc_tags, restrict_tags, sentence_token_lists
from tokner.corpus.vectors import mean_pool

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+", re.UNICODE)
PathLike = Union[str, Path]


# --- indexes ----------------------------------------------------------------------

class BM25Index:
    """Okapi BM25 (Lucene's variant) over lower-cased word tokens, scored by ``bm25s``.

    Cheap to rebuild, so only the owner's texts are stored; ``from_disk`` rebuilds from
    them. A query term counts once. :meth:`scores` returns the usual Okapi scale,
    ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg))`` (bm25s leaves out the
    constant ``k1 + 1``, which ranks the same); ties go to the earlier text.
    ``benchmarks/bm25_compare.py`` checked bm25s against the formula written out by hand
    over the 6,337 train sentences and 897 dev queries: the same top-5 for every query.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self._vocab: Dict[str, int] = {}
        self._bm25 = None
        self._n = 0

    @staticmethod
    def _terms(text: str) -> List[str]:
        return [t.lower() for t in _WORD.findall(text)]

    def build(self, texts: Sequence[str]) -> None:
        import bm25s

        self._vocab = {}
        ids = [[self._vocab.setdefault(t, len(self._vocab)) for t in self._terms(text)] for text in texts]
        self._n = len(texts)
        self._bm25 = None
        if self._n:
            self._bm25 = bm25s.BM25(method="lucene", k1=self.k1, b=self.b)
            self._bm25.index(bm25s.tokenization.Tokenized(ids=ids, vocab=dict(self._vocab)), show_progress=False)

    def __len__(self) -> int:
        return self._n

    def scores(self, query: str) -> numpy.ndarray:
        terms = list(dict.fromkeys(self._vocab[t] for t in self._terms(query) if t in self._vocab))
        if not terms or self._bm25 is None:
            return numpy.zeros(self._n, dtype="float32")
        return numpy.asarray(self._bm25.get_scores(terms), dtype="float32") * (self.k1 + 1)

    def search_many(self, queries: Sequence[str], k: int) -> List[List[int]]:
        return [_top_k(self.scores(q), k) for q in queries]

    def to_disk(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        srsly.write_json(Path(path) / "cfg.json", {"type": "bm25", "k1": self.k1, "b": self.b})

    def from_disk(self, path: Path, texts: Sequence[str]) -> "BM25Index":
        cfg = srsly.read_json(Path(path) / "cfg.json")
        self.k1, self.b = cfg["k1"], cfg["b"]
        self.build(texts)
        return self


class DenseIndex:
    """Cosine similarity of mean-pooled encoder embeddings (sentence-transformers
    style). ``model`` is a hub name or a local folder (offline default:
    ``assets/models/all-MiniLM-L6-v2``); the model is loaded on first use."""

    def __init__(self, model: str, batch_size: int = 64, max_length: int = 256, device: Optional[str] = None,
                 progress: bool = True):
        self.model_name = str(model)
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.progress = progress
        self._tok = None
        self._model = None
        self.vectors = numpy.zeros((0, 0), dtype="float32")

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(self.model_name)
            self._model = AutoModel.from_pretrained(self.model_name)
        except OSError as e:
            raise OSError(
                f"tokner.DenseIndex: cannot load the encoder {self.model_name!r} (a hub name or a local folder; "
                f"offline: python -m tokner.offline minilm assets/models/all-MiniLM-L6-v2): {e}"
            ) from e
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(device).eval()

    def embed(self, texts: Sequence[str], desc: Optional[str] = None) -> numpy.ndarray:
        import torch

        self._load()
        assert self._model is not None and self._tok is not None
        out = []
        device = next(self._model.parameters()).device
        batches = range(0, len(texts), self.batch_size)
        show = bool(desc) and self.progress and len(texts) > self.batch_size
        for i in tqdm(batches, desc=desc, unit="batch", disable=not show):
            enc = self._tok(list(texts[i: i + self.batch_size]), padding=True, truncation=True,
                            max_length=self.max_length, return_tensors="pt").to(device)
            with torch.inference_mode():
                hidden = self._model(**enc).last_hidden_state
            out.append(mean_pool(hidden, enc["attention_mask"]).float().cpu().numpy())
        if not out:
            return numpy.zeros((0, 0), dtype="float32")
        return numpy.concatenate(out, axis=0)

    def build(self, texts: Sequence[str]) -> None:
        self.vectors = self.embed(texts, desc="embed index")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search_many(self, queries: Sequence[str], k: int) -> List[List[int]]:
        if not len(self) or not queries:
            return [[] for _ in queries]
        q = self.embed(queries)
        sims = q @ self.vectors.T
        return [_top_k(row, k) for row in sims]

    def to_disk(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_json(path / "cfg.json", {"type": "dense", "model": self.model_name, "shape": list(self.vectors.shape)})
        numpy.save(path / "vectors.npy", self.vectors)

    def from_disk(self, path: Path, texts: Sequence[str]) -> "DenseIndex":
        path = Path(path)
        cfg = srsly.read_json(path / "cfg.json") if (path / "cfg.json").exists() else {}
        saved = cfg.get("model")
        if saved and saved != self.model_name:
            # queries must be embedded by the encoder that embedded the index
            if Path(saved).name != Path(self.model_name).name:
                raise ValueError(
                    f"{path}: this index was embedded with {saved!r}, but the pipeline's encoder is "
                    f"{self.model_name!r}; set the index's model to {saved!r} (or a copy of it), or "
                    f"re-assemble the pipeline to re-embed the index")
            logger.warning("%s: index embedded with %r, encoder now %r (same model name, another "
                           "location): using it", path, saved, self.model_name)
        self.vectors = numpy.load(path / "vectors.npy")
        if self.vectors.shape[0] != len(texts):
            raise ValueError(f"{path}: {self.vectors.shape[0]} vectors for {len(texts)} indexed texts")
        return self


Index = Union[BM25Index, DenseIndex]


def _top_k(scores: numpy.ndarray, k: int) -> List[int]:
    if k <= 0 or scores.size == 0:
        return []
    k = min(k, scores.size)
    idx = numpy.argpartition(-scores, k - 1)[:k]
    return [int(i) for i in sorted(idx, key=lambda i: (-float(scores[i]), int(i)))]


@registry.llm_misc("tokner.BM25Index.v1")
def make_bm25_index(k1: float = 1.5, b: float = 0.75) -> BM25Index:
    """Okapi BM25 retrieval (no model needed).

    k1: term-frequency saturation; b: document-length normalisation (the usual Okapi
    parameters; 1.5 and 0.75 are the common defaults).
    """
    return BM25Index(k1=k1, b=b)


@registry.llm_misc("tokner.DenseIndex.v1")
def make_dense_index(
    model: str = "sentence-transformers/all-MiniLM-L6-v2",
    batch_size: int = 64,
    max_length: int = 256,
    device: Optional[str] = None,
) -> DenseIndex:
    """Embedding retrieval with a Hugging Face encoder (hub name or local folder): mean-pooled,
    normalised embeddings, cosine similarity. The index is saved with the pipeline
    together with the encoder's name, which loading checks.

    model: the encoder (offline: ``assets/models/all-MiniLM-L6-v2``, from ``spacy project run models``).
    batch_size: texts encoded together. max_length: tokens kept per text.
    device: "cpu", "cuda"... (None: cuda when available).
    """
    return DenseIndex(model=model, batch_size=batch_size, max_length=max_length, device=device)


# --- demonstrations ---------------------------------------------------------------

Demo = Dict[str, List[str]]  # {"tokens": [...], "tags": [...]}


def render_demo(demo: Demo) -> Dict[str, str]:
    """Template data for one demonstration: ``input`` (one token per line) and ``answer``."""
    return {"input": render_tokens(demo["tokens"]), "answer": render_answer(demo["tokens"], demo["tags"])}


def sentences_from_docbin(path: PathLike, nlp: Language) -> List[Demo]:
    """(tokens, tags) of every sentence of a DocBin's gold entities."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"demonstration source not found: {path} (a .spacy DocBin with gold entities)")
    out: List[Demo] = []
    for doc in DocBin().from_disk(path).get_docs(nlp.vocab):
        tags = doc_tags(doc)
        for sent in sentence_token_lists(doc):
            out.append({"tokens": [doc[i].text for i in sent], "tags": [tags[i] for i in sent]})
    return out


def read_demos(path: PathLike) -> List[Demo]:
    """Demonstrations from a file: JSONL/JSON (``{"tokens": [...], "tags"|"labels": [...]}``
    per example) or the paper's ``######``-separated ``token : label`` blocks."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"few-shot examples file not found: {path}")
    demos: List[Demo] = []
    if path.suffix in (".jsonl", ".json"):
        records = srsly.read_jsonl(path) if path.suffix == ".jsonl" else srsly.read_json(path)
        for i, rec in enumerate(records):
            tags = rec.get("tags", rec.get("labels"))
            if "tokens" not in rec or tags is None or len(rec["tokens"]) != len(tags):
                raise ValueError(f"{path}: example {i} needs 'tokens' and as many 'tags'")
            demos.append({"tokens": list(rec["tokens"]), "tags": list(tags)})
        return demos
    for block in split_blocks(path.read_text(encoding="utf-8")):
        toks, tags = [], []
        for line in block.splitlines():
            if not line.strip():
                continue
            tok, _, tag = line.rpartition(" : ")
            if not _:
                raise ValueError(f"{path}: line {line!r} is not 'token : label'")
            toks.append(tok)
            tags.append(tag.strip())
        if toks:
            demos.append({"tokens": toks, "tags": tags})
    return demos


class _Selector:
    """Shared serialisation: items (JSONL) + an optional index folder."""

    items: List[Any]
    index: Optional[Index] = None
    _FILE = "items.jsonl"

    def _item_text(self, item: Any) -> str:
        raise NotImplementedError

    def to_disk(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_jsonl(path / self._FILE, self.items)
        srsly.write_json(path / "cfg.json", self.get_cfg())
        if self.index is not None:
            self.index.to_disk(path / "index")

    def from_disk(self, path: Path) -> "_Selector":
        path = Path(path)
        self.items = list(srsly.read_jsonl(path / self._FILE))
        if self.index is not None:
            if not (path / "index").exists():
                raise FileNotFoundError(f"{path / 'index'}: the retrieval index is missing (the pipeline "
                                        f"folder is incomplete); without it no demonstration or passage "
                                        f"would be retrieved. Re-assemble the pipeline.")
            self.index.from_disk(path / "index", [self._item_text(it) for it in self.items])
        self._initialized = True
        return self

    def get_cfg(self) -> Dict[str, Any]:
        return {}


class FixedExamples(_Selector):
    """The same k demonstrations in every prompt (the paper's few-shot setting)."""

    def __init__(self, path: Optional[PathLike], source: Optional[PathLike], k: int, seed: int,
                 require_entities: bool, max_words: int):
        if path is None and source is None:
            raise ValueError("tokner.FixedExamples.v1 needs `path` (an examples file) or `source` (a DocBin)")
        self.path, self.source = path, source
        self.k, self.seed = k, seed
        self.require_entities, self.max_words = require_entities, max_words
        self.items: List[Demo] = []
        self._initialized = False

    def fingerprint(self) -> str:
        return f"fixed(path={self.path},source={self.source},k={self.k},seed={self.seed},ent={self.require_entities},max={self.max_words})"

    def initialize(self, nlp: Language, labels: Sequence[str]) -> None:
        if self.path is not None:
            demos = read_demos(self.path)[: self.k or None]
        else:
            pool = sentences_from_docbin(self.source, nlp)  # type: ignore[arg-type]
            pool = [d for d in pool if len(d["tokens"]) <= self.max_words]
            if self.require_entities:
                pool = [d for d in pool if any(t != "O" and t[2:] in labels for t in d["tags"])]
            if len(pool) < self.k:
                raise ValueError(f"{self.source}: only {len(pool)} candidate sentences for k={self.k}")
            demos = random.Random(self.seed).sample(pool, self.k)
        self.items = [{"tokens": d["tokens"], "tags": restrict_tags(d["tags"], labels)} for d in demos]
        self._initialized = True

    def select_many(self, queries: Sequence[Sequence[str]]) -> List[List[Demo]]:
        return [list(self.items) for _ in queries]


class SimilarExamples(_Selector):
    """For each input, the k most similar sentences of a DocBin (most similar last,
    nearest to the input). Identical sentences are skipped."""

    def __init__(self, source: PathLike, k: int, index: Index, max_words: int):
        self.source, self.k, self.index, self.max_words = source, k, index, max_words
        self.items: List[Demo] = []
        self._initialized = False

    def fingerprint(self) -> str:
        return f"similar(source={self.source},k={self.k},index={type(self.index).__name__},max={self.max_words})"

    def _item_text(self, item: Demo) -> str:
        return " ".join(item["tokens"])

    def initialize(self, nlp: Language, labels: Sequence[str]) -> None:
        pool = [d for d in sentences_from_docbin(self.source, nlp) if len(d["tokens"]) <= self.max_words]
        self.items = [{"tokens": d["tokens"], "tags": restrict_tags(d["tags"], labels)} for d in pool]
        assert self.index is not None
        self.index.build([self._item_text(d) for d in self.items])
        self._initialized = True

    def select_many(self, queries: Sequence[Sequence[str]]) -> List[List[Demo]]:
        assert self.index is not None
        hits = self.index.search_many([" ".join(q) for q in queries], self.k + 2)
        out = []
        for q, idx in zip(queries, hits):
            chosen = [self.items[i] for i in idx if self.items[i]["tokens"] != list(q)][: self.k]
            out.append(list(reversed(chosen)))
        return out


class KnowledgePassages(_Selector):
    """Top-k chunks (``chunk_words`` words, overlapping by ``chunk_words - stride``)
    of the ``pattern`` files in a folder, best first."""

    def __init__(self, folder: PathLike, k: int, index: Index, chunk_words: int, stride: int, pattern: str):
        if stride <= 0 or chunk_words <= 0:
            raise ValueError("tokner.KnowledgePassages.v1: chunk_words and stride must be positive")
        self.folder, self.k, self.index = folder, k, index
        self.chunk_words, self.stride, self.pattern = chunk_words, stride, pattern
        self.items: List[str] = []
        self._initialized = False

    def fingerprint(self) -> str:
        return (f"passages(folder={self.folder},k={self.k},index={type(self.index).__name__},"
                f"chunk={self.chunk_words},stride={self.stride},pattern={self.pattern})")

    def _item_text(self, item: str) -> str:
        return item

    def initialize(self, nlp: Language, labels: Sequence[str]) -> None:
        folder = Path(self.folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"knowledge folder not found: {folder}")
        files = sorted(folder.rglob(self.pattern))
        if not files:
            raise FileNotFoundError(f"no {self.pattern} files in knowledge folder {folder}")
        chunks: List[str] = []
        for f in files:
            words = f.read_text(encoding="utf-8", errors="replace").split()
            for start in range(0, max(1, len(words) - self.chunk_words + self.stride), self.stride):
                piece = words[start: start + self.chunk_words]
                if piece:
                    chunks.append(" ".join(piece))
        self.items = chunks
        self.index.build(chunks)
        self._initialized = True

    def select_many(self, queries: Sequence[Sequence[str]]) -> List[List[str]]:
        hits = self.index.search_many([" ".join(q) for q in queries], self.k)
        return [[self.items[i] for i in idx] for idx in hits]


@registry.llm_misc("tokner.FixedExamples.v1")
def make_fixed_examples(
    path: Optional[str] = None,
    source: Optional[str] = None,
    k: int = 5,
    seed: int = 0,
    require_entities: bool = True,
    max_words: int = 60,
) -> FixedExamples:
    """k fixed demonstrations: the first k of an examples file (`path`), or k
    sentences drawn with `seed` from a DocBin (`source`; by default only sentences
    with an entity and at most `max_words` tokens).

    require_entities: draw only sentences with at least one entity (with ``source``).
    The demonstrations are stored with the pipeline, so the source may be gone later.
    """
    return FixedExamples(path, source, k, seed, require_entities, max_words)


@registry.llm_misc("tokner.SimilarExamples.v1")
def make_similar_examples(source: str, index: Index, k: int = 3, max_words: int = 60) -> SimilarExamples:
    """The k sentences of DocBin `source` most similar to the input, by `index`
    (``tokner.DenseIndex.v1`` or ``tokner.BM25Index.v1``); sentences longer than
    `max_words` tokens are not candidates. The index is built at ``nlp.initialize``
    and saved with the pipeline."""
    return SimilarExamples(source, k, index, max_words)


@registry.llm_misc("tokner.KnowledgePassages.v1")
def make_knowledge_passages(
    folder: str,
    index: Index,
    k: int = 2,
    chunk_words: int = 80,
    stride: int = 40,
    pattern: str = "*.txt",
) -> KnowledgePassages:
    """The k chunks of the documents in `folder` most relevant to the input, by `index`
    (background passages for RAG prompts).

    chunk_words / stride: passages of this many words, starting every `stride` words.
    pattern: which files of the folder to read (glob, recursive).
    """
    return KnowledgePassages(folder, k, index, chunk_words, stride, pattern)
