"""Static word vectors distilled from a sentence encoder, for spaCy's ``StaticVectors``.

The CNN pipeline has no pretrained word vectors offline (spaCy's ``*_md``/``*_lg``
packages are not on PyPI). This builds them from the encoder that is (all-MiniLM-L6-v2,
or any hub name / local folder): each word is run through the encoder on its own and
its sub-word outputs are mean-pooled, the "distil a static embedding from a
transformer" recipe of Model2Vec (Tulkens & van Dongen, 2024) without its PCA/Zipf
steps. Vectors are unit length; each row is computed for the lower-cased word and keyed
by that word, its capitalised and its upper-case form (three keys, one row: spaCy saves
a ``Vectors.attr`` of ``LOWER`` only for floret vectors, so case-folding is done with
keys, which survive ``to_disk``).

The vocabulary is the lower-cased words of the DocBins given (the *train* split: never
dev or test text) plus, by default, the encoder's own whole-word vocabulary entries, so
frequent words that are absent from train still get a vector.

    python -m tokner static-vectors assets/models/all-MiniLM-L6-v2 assets/vectors/minilm \\
        --words corpus/train.spacy

The output folder is a blank spaCy pipeline holding only the vectors: pass it as
``[initialize] vectors`` (``--paths.vectors``), as ``configs/cnn_vectors.cfg`` does.
``--context-weight W`` also averages each train word's in-context outputs over the
train texts and mixes them in (see :func:`build_static_vectors`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Union

import numpy
import spacy
from spacy.tokens import DocBin
from spacy.vectors import Vectors

_WORDLIKE = re.compile(r"^[a-z][a-z0-9\-']*$")



def mean_pool(hidden, mask):
    """L2-normalised mean of ``hidden`` (batch, tokens, dim) over the positions where
    ``mask`` (batch, tokens) is 1 (sentence-transformers' pooling); all-zero rows stay 0."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

def vocabulary(docbins: Sequence[Union[str, Path]], encoder_vocab: Iterable[str] = (), min_count: int = 1) -> List[str]:
    """Lower-cased words of the DocBins (whitespace tokens skipped) seen at least
    ``min_count`` times, plus the word-like entries of ``encoder_vocab``; sorted, unique."""
    vocab = spacy.blank("en").vocab
    counts: Dict[str, int] = {}
    for path in docbins:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: DocBin not found")
        for doc in DocBin().from_disk(path).get_docs(vocab):
            for tok in doc:
                if not tok.is_space:
                    counts[tok.lower_] = counts.get(tok.lower_, 0) + 1
    words = {w for w, c in counts.items() if c >= min_count}
    words |= {w for w in encoder_vocab if _WORDLIKE.match(w)}
    return sorted(words)


def load_encoder(encoder: Union[str, Path]):
    """(tokenizer, model in eval mode) of a hub name or local folder."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(encoder)), AutoModel.from_pretrained(str(encoder)).eval()


def embed_words(tok, model, words: Sequence[str], batch_size: int = 512, max_length: int = 16,
                progress: bool = True) -> numpy.ndarray:
    """Mean-pooled encoder outputs of each word on its own (special tokens excluded),
    L2-normalised, as float32 [len(words), hidden]."""
    import torch
    from tqdm import tqdm

    out = numpy.zeros((len(words), model.config.hidden_size), dtype="float32")
    with torch.inference_mode():
        for start in tqdm(range(0, len(words), batch_size), desc="static vectors", unit="batch",
                          disable=not progress):
            batch = list(words[start : start + batch_size])
            enc = tok(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                      return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask")
            hidden = model(**enc).last_hidden_state
            pooled = mean_pool(hidden, enc["attention_mask"] * (1 - special))
            out[start : start + len(batch)] = pooled.float().numpy()
    return out


def context_sums(tok, model, docbins: Sequence[Union[str, Path]], index: Dict[str, int], window: int = 96,
                 batch_size: int = 32, progress: bool = True):
    """Sum and count of each word's in-context encoder output (sub-words mean-pooled).

    The DocBins' texts are cut into windows of at most ``window`` non-space words (a
    sentence where the Doc has sentence boundaries, else consecutive words), run through
    the encoder with ``is_split_into_words``, and every word in ``index`` adds its pooled,
    L2-normalised output to its row. Returns (sums float32 [len(index), hidden], counts).
    """
    import torch
    from tqdm import tqdm

    vocab = spacy.blank("en").vocab
    windows: List[List[str]] = []
    for path in docbins:
        for doc in DocBin().from_disk(Path(path)).get_docs(vocab):
            units = list(doc.sents) if doc.has_annotation("SENT_START") else [doc[:]]
            for unit in units:
                words = [t.text for t in unit if not t.is_space]
                windows.extend(words[start : start + window] for start in range(0, len(words), window))
    windows.sort(key=len)
    sums = numpy.zeros((len(index), model.config.hidden_size), dtype="float32")
    counts = numpy.zeros(len(index), dtype="int64")
    with torch.inference_mode():
        for start in tqdm(range(0, len(windows), batch_size), desc="context vectors", unit="batch",
                          disable=not progress):
            batch = windows[start : start + batch_size]
            enc = tok(batch, is_split_into_words=True, padding=True, truncation=True, max_length=512,
                      return_tensors="pt")
            hidden = torch.nn.functional.normalize(model(**enc).last_hidden_state, dim=-1).numpy()
            for b, words in enumerate(batch):
                rows: Dict[int, List[int]] = {}
                for pos, wid in enumerate(enc.word_ids(b)):
                    if wid is not None:
                        rows.setdefault(wid, []).append(pos)
                for wid, positions in rows.items():
                    row = index.get(words[wid].lower())
                    if row is not None:
                        vec = hidden[b, positions].mean(0)
                        sums[row] += vec / max(float(numpy.linalg.norm(vec)), 1e-8)
                        counts[row] += 1
    return sums, counts


def build_static_vectors(encoder: Union[str, Path], output: Union[str, Path], docbins: Sequence[Union[str, Path]],
                         use_encoder_vocab: bool = True, min_count: int = 1, batch_size: int = 512,
                         context_weight: float = 0.0, progress: bool = True) -> Dict[str, object]:
    """Write a blank ``en`` pipeline whose vocab holds the distilled vectors (one row per
    lower-cased word, keyed by its lower, capitalised and upper forms).

    ``context_weight`` > 0 mixes in each word's mean in-context output over the DocBins
    (:func:`context_sums`; the "pooled contextual" static embeddings of Bommasani et al.,
    2020): row = normalise((1 - w) * isolated + w * context mean) for words seen in the
    DocBins, the isolated vector for the others (encoder-vocab words).
    """
    if not 0.0 <= context_weight <= 1.0:
        raise ValueError(f"context_weight must be in [0, 1], got {context_weight}")
    tok, model = load_encoder(encoder)
    words = vocabulary(docbins, tok.get_vocab() if use_encoder_vocab else (), min_count=min_count)
    if not words:
        raise ValueError(f"no words found in {list(map(str, docbins))}")
    data = embed_words(tok, model, words, batch_size=batch_size, progress=progress)
    n_context = 0
    if context_weight > 0:
        sums, counts = context_sums(tok, model, docbins, {w: i for i, w in enumerate(words)}, progress=progress)
        seen = counts > 0
        n_context = int(seen.sum())
        ctx = sums[seen] / counts[seen, None]
        ctx /= numpy.maximum(numpy.linalg.norm(ctx, axis=1, keepdims=True), 1e-8)
        mixed = (1.0 - context_weight) * data[seen] + context_weight * ctx
        data[seen] = mixed / numpy.maximum(numpy.linalg.norm(mixed, axis=1, keepdims=True), 1e-8)
    nlp = spacy.blank("en")
    vectors = Vectors(strings=nlp.vocab.strings, data=data, name="tokner_static_vectors")
    n_keys = 0
    for row, word in enumerate(words):
        for form in dict.fromkeys((word, word.capitalize(), word.upper())):
            key = nlp.vocab.strings.add(form)
            if vectors.find(key=key) < 0:  # a form that is also a word of its own keeps its row
                vectors.add(key, row=row)
                n_keys += 1
    nlp.vocab.vectors = vectors
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(output)
    info = {"encoder": str(encoder), "words": len(words), "keys": n_keys, "dim": int(data.shape[1]),
            "docbins": [str(p) for p in docbins], "encoder_vocab": use_encoder_vocab,
            "context_weight": context_weight, "words_with_context": n_context}
    (output / "static_vectors.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
