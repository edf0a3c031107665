"""BIO tags <-> token spans, with seqeval's reading of the tags.

seqeval (default, non-strict mode) and the paper read a tag sequence like conlleval:
an ``I-X`` after ``O`` or after another type starts a new entity, and sentences are
scored as separate sequences, so no entity crosses a sentence start. These helpers
do exactly that, so span scores on Docs equal seqeval's scores on the same tags.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

from spacy.tokens import Doc, Span

_TAG = re.compile(r"^(?:O|[BI]-\S+)$")


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG.match(tag))


def spans_from_tags(
    tags: Sequence[str],
    sent_starts: Optional[Sequence[bool]] = None,
    is_space: Optional[Sequence[bool]] = None,
) -> List[Tuple[int, int, str]]:
    """(start, end, label) token spans (end exclusive) from BIO tags.

    Whitespace tokens (``is_space``) are transparent: they neither start nor end an
    entity, so an entity continues across a newline token as it does in the paper's
    whitespace-free token stream, but never begins or ends on one.
    """
    out: List[Tuple[int, int, str]] = []
    cur: Optional[List] = None  # [start, last_token, label]
    for i, tag in enumerate(tags):
        if is_space is not None and is_space[i]:
            continue
        new_sent = bool(sent_starts[i]) if sent_starts is not None and i > 0 else False
        if tag == "O" or not tag:
            if cur:
                out.append((cur[0], cur[1] + 1, cur[2]))
                cur = None
            continue
        prefix, _, label = tag.partition("-")
        if prefix == "I" and cur is not None and cur[2] == label and not new_sent:
            cur[1] = i
            continue
        if cur:
            out.append((cur[0], cur[1] + 1, cur[2]))
        cur = [i, i, label]
    if cur:
        out.append((cur[0], cur[1] + 1, cur[2]))
    return out


def set_ents_from_tags(doc: Doc, tags: Sequence[str]) -> Doc:
    """Overwrite ``doc.ents`` from one tag per token (seqeval reading)."""
    if len(tags) != len(doc):
        raise ValueError(f"{len(tags)} tags for a Doc of {len(doc)} tokens")
    sent_starts = [bool(t.is_sent_start) for t in doc] if doc.has_annotation("SENT_START") else None
    spans = spans_from_tags(tags, sent_starts, [t.is_space for t in doc])
    doc.ents = [Span(doc, s, e, label=l) for s, e, l in spans]
    return doc


def restrict_tags(tags: Sequence[str], labels: Optional[Sequence[str]]) -> List[str]:
    """Tags whose label is not in ``labels`` become ``O`` (``I-`` after a dropped entity becomes ``B-``)."""
    if labels is None:
        return list(tags)
    keep = set(labels)
    out: List[str] = []
    for t in tags:
        if t != "O" and t[2:] not in keep:
            t = "O"
        if t.startswith("I-") and (not out or out[-1] == "O" or out[-1][2:] != t[2:]):
            t = "B-" + t[2:]
        out.append(t)
    return out


def doc_tags(doc: Doc) -> List[str]:
    """One BIO tag per token from ``doc.ents`` (whitespace tokens get "O")."""
    tags = ["O"] * len(doc)
    for ent in doc.ents:
        first = True
        for tok in ent:
            if tok.is_space:
                continue
            tags[tok.i] = ("B-" if first else "I-") + ent.label_
            first = False
    return tags


def sentence_token_lists(doc: Doc) -> List[List[int]]:
    """Indices of the non-whitespace tokens of each sentence (one list per sentence).

    Docs without sentence boundaries count as one sentence.
    """
    if doc.has_annotation("SENT_START"):
        sents: Iterable = doc.sents
    else:
        sents = [doc[:]]
    out = []
    for sent in sents:
        idx = [t.i for t in sent if not t.is_space]
        if idx:
            out.append(idx)
    return out



def sentence_words(docs: Sequence[Doc]) -> Tuple[List[List[List[int]]], List[List[str]]]:
    """(per doc :func:`sentence_token_lists`, the words of every sentence in doc order)."""
    index = [sentence_token_lists(doc) for doc in docs]
    words = [[doc[i].text for i in sent] for doc, sents in zip(docs, index) for sent in sents]
    return index, words

def sentence_tags(doc: Doc) -> List[List[str]]:
    """BIO tags of the non-whitespace tokens, one list per sentence (seqeval's input)."""
    tags = doc_tags(doc)
    return [[tags[i] for i in sent] for sent in sentence_token_lists(doc)]
