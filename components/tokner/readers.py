"""spaCy readers for RareDis in either source format (usable in ``[corpora]``).

``tokner.BratCorpus.v1`` reads a BRAT folder, ``tokner.IOBCorpus.v1`` the authors'
IOB CSV. Both yield ``Example(nlp.make_doc(text), gold_doc)``, as spaCy's own
``spacy.Corpus.v1`` does for DocBins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example

from .brat import read_brat_docs
from .iob import read_iob_docs


def _example(nlp: Language, ref: Doc) -> Example:
    pred = nlp.make_doc(ref.text)
    return Example(pred, ref)


def create_brat_reader(path: Path, on_error: str = "raise", limit: int = 0) -> Callable[[Language], Iterator[Example]]:
    def reader(nlp: Language) -> Iterator[Example]:
        docs, _ = read_brat_docs(Path(path), nlp.vocab, on_error=on_error)
        for doc in docs[: limit or None]:
            yield _example(nlp, doc)

    return reader


def create_iob_reader(path: Path, limit: int = 0) -> Callable[[Language], Iterator[Example]]:
    def reader(nlp: Language) -> Iterator[Example]:
        docs, _ = read_iob_docs(Path(path), nlp.vocab)
        for doc in docs[: limit or None]:
            yield _example(nlp, doc)

    return reader
