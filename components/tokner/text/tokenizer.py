"""The paper's tokenizer and sentence rule, as a spaCy tokenizer.

Lu et al. (2024) split the RareDis texts on whitespace and peel every leading and
trailing ASCII punctuation character (``string.punctuation``) off each chunk as a
token of its own ("(asymptomatic)," -> "(", "asymptomatic", ")", ","). Hyphens and
apostrophes inside a word stay ("bluish-black", "one's"). A sentence ends after a
token ".", "?" or "!" that is followed by whitespace or the end of the text.

Converting BRAT with this tokenizer reproduces the tokens, sentence numbers and tags
of the authors' IOB CSV for the dev split exactly (see tests/test_brat.py), so Docs
built from BRAT and from the paper's CSV line up token for token.

Unlike the original script, whitespace is never lost: runs of whitespace other than
a single space become whitespace tokens, so ``doc.text == text`` always holds.
"""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from spacy.tokens import Doc
from spacy.vocab import Vocab

PUNCT = frozenset(string.punctuation)
SENT_END = frozenset({".", "?", "!"})
_CHUNK = re.compile(r"\S+")

CharSpan = Tuple[int, int]


def paper_token_spans(text: str, split_at: Optional[Set[int]] = None) -> List[CharSpan]:
    """Character spans of the paper's (non-whitespace) tokens.

    split_at: extra character offsets at which a token is cut in two. The BRAT
    converter passes entity boundaries that fall inside a token here, so that every
    annotated span starts and ends on a token boundary.
    """
    spans: List[CharSpan] = []
    for m in _CHUNK.finditer(text):
        start, end = m.start(), m.end()
        head: List[CharSpan] = []
        while start < end and text[start] in PUNCT:
            head.append((start, start + 1))
            start += 1
        tail: List[CharSpan] = []
        while end > start and text[end - 1] in PUNCT:
            tail.append((end - 1, end))
            end -= 1
        spans.extend(head)
        if end > start:
            spans.append((start, end))
        spans.extend(reversed(tail))
    if split_at:
        spans = _split_spans(spans, split_at)
    return spans


def _split_spans(spans: Sequence[CharSpan], split_at: Set[int]) -> List[CharSpan]:
    out: List[CharSpan] = []
    cuts = sorted(split_at)
    for start, end in spans:
        inner = [c for c in cuts if start < c < end] if cuts else []
        prev = start
        for c in inner:
            out.append((prev, c))
            prev = c
        out.append((prev, end))
    return out


def spans_to_words(text: str, spans: Sequence[CharSpan]) -> Tuple[List[str], List[bool], List[bool]]:
    """Turn ordered non-whitespace token spans into spaCy words/spaces.

    Returns (words, spaces, is_ws): whitespace between tokens other than one single
    space becomes a whitespace token (as spaCy's own tokenizer does), so that the
    Doc's text equals ``text`` character for character.
    """
    words: List[str] = []
    spaces: List[bool] = []
    is_ws: List[bool] = []
    pos = 0
    for start, end in spans:
        if start < pos:
            raise ValueError(f"Token spans overlap or are unordered at offset {start}")
        _add_gap(text[pos:start], words, spaces, is_ws)
        words.append(text[start:end])
        spaces.append(False)
        is_ws.append(False)
        pos = end
    _add_gap(text[pos:], words, spaces, is_ws)
    return words, spaces, is_ws


def _add_gap(gap: str, words: List[str], spaces: List[bool], is_ws: List[bool]) -> None:
    if not gap:
        return
    if words and not is_ws[-1] and gap[0] == " ":
        spaces[-1] = True
        gap = gap[1:]
        if not gap:
            return
    words.append(gap)
    spaces.append(False)
    is_ws.append(True)


def paper_sent_starts(words: Sequence[str], spaces: Sequence[bool], is_ws: Sequence[bool]) -> List[bool]:
    """Sentence starts by the paper's rule; whitespace tokens never start a sentence
    (they stay with the sentence before them), except at the very start of a text."""
    starts = [False] * len(words)
    if not words:
        return starts
    starts[0] = True
    pending = False
    for i, word in enumerate(words):
        if is_ws[i]:
            continue
        if pending and i > 0:
            starts[i] = True
        pending = False
        if word in SENT_END:
            followed_by_ws = spaces[i] or i + 1 == len(words) or is_ws[i + 1]
            pending = followed_by_ws
    return starts


def make_doc(
    vocab: Vocab,
    text: str,
    split_at: Optional[Set[int]] = None,
    sentences: bool = True,
) -> Doc:
    """Tokenize ``text`` the paper's way and (optionally) set its sentence starts."""
    words, spaces, is_ws = spans_to_words(text, paper_token_spans(text, split_at))
    if not words:
        return Doc(vocab, words=[], spaces=[])
    sent_starts = paper_sent_starts(words, spaces, is_ws) if sentences else None
    return Doc(vocab, words=words, spaces=spaces, sent_starts=sent_starts)


class PaperTokenizer:
    """spaCy tokenizer reproducing Lu et al.'s tokenization. Stateless.

    It does not set sentence boundaries by default (that is the job of the
    ``tokner_sentencizer`` pipe); pass ``sentences=True`` to set them here.
    """

    def __init__(self, vocab: Vocab, sentences: bool = False):
        self.vocab = vocab
        self.sentences = sentences

    def __call__(self, text: str) -> Doc:
        if not isinstance(text, str):
            raise TypeError(f"PaperTokenizer expects a str, got {type(text).__name__}")
        return make_doc(self.vocab, text, sentences=self.sentences)

    def pipe(self, texts: Iterable[str], batch_size: int = 1000) -> Iterator[Doc]:
        for text in texts:
            yield self(text)

    # Serialization: nothing to store, but spaCy calls these on nlp.to_disk/from_disk.
    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        return b""

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "PaperTokenizer":
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "PaperTokenizer":
        return self


def create_paper_tokenizer(sentences: bool = False):
    """The paper's tokenization (``tokner.PaperTokenizer.v1``, spaCy's ``tokenizers`` registry):
    words, punctuation and whitespace runs as tokens, character offsets exact.

    sentences: also set sentence starts (the rule ``tokner_sentencizer`` applies); off by
        default, since the pipelines' first component sets them.
    """

    def tokenizer_factory(nlp) -> PaperTokenizer:
        return PaperTokenizer(nlp.vocab, sentences=sentences)

    return tokenizer_factory
