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

from tokner.corpus.brat import read_brat_docs
from tokner.corpus.iob import read_iob_docs


def _example(nlp: Language, ref: Doc) -> Example:
    pred = nlp.make_doc(ref.text)
    return Example(pred, ref)


def create_brat_reader(path: Path, on_error: str = "raise", limit: int = 0) -> Callable[[Language], Iterator[Example]]:
    """Examples from a BRAT folder (``.txt`` + ``.ann`` pairs), converted as ``tokner convert`` does.

    path: the folder (read recursively in sorted name order).
    on_error: "raise" (a bad file or line stops with its name and line) or "skip" (logged,
        counted, skipped).
    limit: read only the first this many documents (0: all).
    """
    def reader(nlp: Language) -> Iterator[Example]:
        docs, _ = read_brat_docs(Path(path), nlp.vocab, on_error=on_error)
        for doc in docs[: limit or None]:
            yield _example(nlp, doc)

    return reader


def create_iob_reader(path: Path, limit: int = 0) -> Callable[[Language], Iterator[Example]]:
    """Examples from the paper authors' IOB CSV (``Token,Tag,Sentence_Num,Sentence_Num_Global,File``).

    path: the CSV file; one Doc per ``File``, sentences by ``Sentence_Num``.
    limit: read only the first this many documents (0: all).
    """
    def reader(nlp: Language) -> Iterator[Example]:
        docs, _ = read_iob_docs(Path(path), nlp.vocab)
        for doc in docs[: limit or None]:
            yield _example(nlp, doc)

    return reader
