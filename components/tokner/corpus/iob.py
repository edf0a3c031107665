"""The paper authors' IOB CSV (``Token,Tag,Sentence_Num,Sentence_Num_Global,File``).

One Doc per ``File`` (in order of first appearance), tokens joined by single spaces
(the CSV does not keep the original spacing), a sentence start wherever
``Sentence_Num`` changes within a file, and entities read from the tags the way
seqeval reads them. ``Sentence_Num_Global`` is kept per sentence in
``doc.user_data["sentence_num_global"]`` but never used to group: in the authors'
files it can repeat across files (their ``groupby`` then merges two sentences).
"""
from __future__ import annotations

import csv
import io
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

from spacy.tokens import Doc, Span
from spacy.vocab import Vocab

from tokner.utils.textfile import NotUTF8, read_utf8
from tokner.answers.tags import doc_tags, is_valid_tag, sentence_token_lists, spans_from_tags

COLUMNS = ("Token", "Tag", "Sentence_Num", "Sentence_Num_Global", "File")


class IOBFormatError(ValueError):
    def __init__(self, path: Path, line, message: str):
        self.path, self.line = Path(path), line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def read_iob_rows(path: Path) -> "OrderedDict[str, List[Tuple[str, str, int, int, int]]]":
    """Rows grouped by File: (token, tag, sentence_num, sentence_num_global, line)."""
    path = Path(path)
    if not path.is_file():
        raise IOBFormatError(path, None, "IOB CSV not found")
    files: "OrderedDict[str, List]" = OrderedDict()
    try:
        text = read_utf8(path, keep_newlines=True)
    except NotUTF8 as e:
        raise IOBFormatError(path, e.line, f"not UTF-8 ({e.reason}); re-save the CSV as UTF-8") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise IOBFormatError(path, 1, "empty file (expected a header row)") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise IOBFormatError(path, 1, f"missing column(s) {missing}; expected {list(COLUMNS)}")
        col = {c: header.index(c) for c in COLUMNS}
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise IOBFormatError(path, line, f"expected {len(header)} columns, got {len(row)}: {row!r}")
            token, tag = row[col["Token"]], row[col["Tag"]].strip()
            if token == "" or token.isspace():
                raise IOBFormatError(path, line, "empty token")
            if any(ch.isspace() for ch in token):
                raise IOBFormatError(path, line, f"token {token!r} contains whitespace")
            if not is_valid_tag(tag):
                raise IOBFormatError(path, line, f"invalid tag {tag!r} (expected O, B-TYPE or I-TYPE)")
            try:
                sent, sent_global = int(row[col["Sentence_Num"]]), int(row[col["Sentence_Num_Global"]])
            except ValueError:
                raise IOBFormatError(path, line, "Sentence_Num/Sentence_Num_Global must be integers") from None
            name = row[col["File"]].strip()
            if not name:
                raise IOBFormatError(path, line, "empty File column")
            files.setdefault(name, []).append((token, tag, sent, sent_global, line))
    if not files:
        raise IOBFormatError(path, 2, "no token rows after the header")
    return files


def rows_to_doc(vocab: Vocab, name: str, rows: Sequence[Tuple[str, str, int, int, int]]) -> Doc:
    words = [r[0] for r in rows]
    sent_starts = [i == 0 or rows[i][2] != rows[i - 1][2] for i in range(len(rows))]
    doc = Doc(vocab, words=words, spaces=[True] * (len(words) - 1) + [False], sent_starts=sent_starts)
    spans = spans_from_tags([r[1] for r in rows], sent_starts)
    doc.ents = [Span(doc, s, e, label=l) for s, e, l in spans]
    doc.user_data["source"] = name
    doc.user_data["sentence_num_global"] = [r[3] for i, r in enumerate(rows) if sent_starts[i]]
    return doc


def read_iob_docs(path: Path, vocab: Vocab) -> Tuple[List[Doc], Counter]:
    files = read_iob_rows(path)
    docs = [rows_to_doc(vocab, name, rows) for name, rows in files.items()]
    stats: Counter = Counter(docs=len(docs))
    for doc in docs:
        stats["ents"] += len(doc.ents)
        for ent in doc.ents:
            stats[f"ents_{ent.label_}"] += 1
    return docs, stats


def write_iob_csv(docs: Iterable[Doc], path: Path) -> int:
    """Write Docs in the authors' CSV format (whitespace tokens dropped). Returns rows."""
    n = 0
    sent_global = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for d, doc in enumerate(docs):
            name = doc.user_data.get("source", f"doc{d}")
            tags = doc_tags(doc)
            for s, sent in enumerate(sentence_token_lists(doc), start=1):
                sent_global += 1
                for i in sent:
                    writer.writerow([doc[i].text, tags[i], s, sent_global, name])
                    n += 1
    return n
