"""Reading BRAT standoff (``NAME.txt`` + ``NAME.ann``) into spaCy Docs.

Policy (see README "Corpus policy"):

* ``doc.spans["raredis"]`` keeps every annotated entity, overlaps and all: one Span
  per fragment, ``span.label_`` the type and ``span.id_`` the BRAT id (``T12``), so
  the fragments of a discontinuous entity share an id and the entity is recovered by
  grouping on ``id_`` (see :func:`entities_from_spans`).
* ``doc.ents`` is the non-overlapping set produced by the paper's IOB conversion
  (Lu et al. 2024, ``brat2iob.py``): only the first fragment of a discontinuous
  entity counts; every token gets the tag of the *last* entity type (in order of
  first appearance in the ``.ann``) whose first fragment starts at the token (``B-``)
  or contains it (``I-``); within a type the first such entity (file order) decides.
  Entities then follow from the tags as seqeval reads them, split at sentence starts.
* Entity boundaries inside a token are fixed by splitting the token there (never by
  moving the span). Boundaries that fall inside whitespace cannot be fixed that way:
  they are counted as ``unaligned_fragments`` and logged, never silently dropped.
* Sentences follow the paper's rule (``tokner.text.tokenizer.paper_sent_starts``).
"""
from __future__ import annotations

import logging
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from spacy.tokens import Doc, Span
from spacy.vocab import Vocab

from tokner.utils.textfile import NotUTF8, read_utf8
from tokner.answers.tags import spans_from_tags
from tokner.text.tokenizer import make_doc

logger = logging.getLogger(__name__)

SPANS_KEY = "raredis"
# The per-split counts `convert` reports (README "Corpus policy" explains each).
POLICY_COUNTS = (
    "docs", "entities", "discontinuous", "ents", "annotations_in_ents_unchanged",
    "ents_discontinuous_first_fragment", "annotations_not_in_ents_overlap", "ents_not_an_annotation",
    "tokens_split_for_boundaries", "unaligned_fragments", "quote_escape_warnings", "skipped_lines",
    "ignored_non_entity_lines",
)
_ENTITY_FIELD = re.compile(r"^(?P<label>[^\s;]+) (?P<offsets>\d+ \d+(?:;\d+ \d+)*)$")
# BRAT line kinds that are not text-bound entities: relations, events, attributes,
# modifiers, normalizations, notes, equivalences.
_OTHER_KINDS = ("R", "E", "A", "M", "N", "#", "*")


class BratFormatError(ValueError):
    """Bad BRAT input; the message names the file (and line where there is one)."""

    def __init__(self, path: Path, line: Optional[int], message: str):
        self.path = Path(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class BratEntity:
    id: str
    label: str
    fragments: Tuple[Tuple[int, int], ...]
    text: str
    line: int

    @property
    def start(self) -> int:
        return min(s for s, _ in self.fragments)

    @property
    def end(self) -> int:
        return max(e for _, e in self.fragments)


@dataclass
class BratDocument:
    name: str
    text: str
    entities: List[BratEntity]
    txt_path: Optional[Path] = None
    ann_path: Optional[Path] = None
    warnings: List[str] = field(default_factory=list)
    skipped_lines: int = 0
    # relation, event, attribute, modifier, normalization, note and equivalence lines
    # (R, E, A, M, N, #, *): valid BRAT, not entities, so not converted; counted by kind
    ignored: Counter = field(default_factory=Counter)


def _read_text(path: Path) -> str:
    # "\r\n" stays two characters: BRAT offsets count them.
    try:
        return read_utf8(path, keep_newlines=True)
    except NotUTF8 as e:
        raise BratFormatError(path, e.line, f"not valid UTF-8 ({e.reason})") from None


def _quotes_only_differ(a: str, b: str) -> bool:
    return a.replace('"', "") == b.replace('"', "")


def parse_ann(
    ann_text: str, text: str, ann_path: Path, on_error: str = "raise"
) -> Tuple[List[BratEntity], List[str], int]:
    """Parse the text-bound entities of an ``.ann`` file and check them against the text.

    Returns (entities, warnings, n_skipped_lines). With on_error="skip" a bad line is
    skipped, logged and counted instead of raising.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    entities: List[BratEntity] = []
    warnings: List[str] = []
    skipped = 0
    seen_ids = set()
    for lineno, raw in enumerate(ann_text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        try:
            if line.startswith("T"):
                ent = _parse_entity_line(line, lineno, text, ann_path, warnings)
                if ent.id in seen_ids:
                    raise BratFormatError(ann_path, lineno, f"duplicate entity id {ent.id}")
                seen_ids.add(ent.id)
                entities.append(ent)
            elif line.startswith(_OTHER_KINDS):
                continue
            else:
                raise BratFormatError(ann_path, lineno, f"unknown annotation line {line[:60]!r}")
        except BratFormatError as err:
            if on_error == "raise":
                raise
            skipped += 1
            logger.warning("Skipping %s", err)
            warnings.append(f"skipped: {err}")
    return entities, warnings, skipped


def _parse_entity_line(
    line: str, lineno: int, text: str, ann_path: Path, warnings: List[str]
) -> BratEntity:
    parts = line.split("\t")
    if len(parts) < 3:
        raise BratFormatError(
            ann_path, lineno, f"malformed entity line (expected 'ID<TAB>TYPE START END<TAB>TEXT'): {line[:80]!r}"
        )
    eid, field_, surface = parts[0], parts[1], "\t".join(parts[2:])
    m = _ENTITY_FIELD.match(field_)
    if not m:
        raise BratFormatError(ann_path, lineno, f"malformed entity type/offsets {field_!r}")
    fragments = []
    for frag in m.group("offsets").split(";"):
        s, e = (int(x) for x in frag.split())
        if not 0 <= s < e <= len(text):
            raise BratFormatError(
                ann_path, lineno, f"offsets {s}-{e} of {eid} fall outside the text (length {len(text)})"
            )
        fragments.append((s, e))
    # Fragments are kept in the order the file lists them (a few RareDis entities list
    # a later fragment first; the paper's conversion uses the *listed* first one).
    ordered = sorted(fragments)
    for (s1, e1), (s2, e2) in zip(ordered, ordered[1:]):
        if s2 < e1:
            raise BratFormatError(ann_path, lineno, f"fragments of {eid} overlap")
    expected = " ".join(text[s:e] for s, e in fragments)
    if surface != expected:
        if _quotes_only_differ(surface, expected):
            msg = f"{ann_path}:{lineno}: {eid} text differs from the document only in quote escaping ({surface!r} vs {expected!r}); offsets kept"
            logger.warning(msg)
            warnings.append(msg)
        else:
            raise BratFormatError(
                ann_path, lineno, f"text/annotation mismatch for {eid}: .ann says {surface!r}, text has {expected!r}"
            )
    return BratEntity(eid, m.group("label"), tuple(fragments), expected, lineno)


def read_brat_document(txt_path: Path, ann_path: Path, on_error: str = "raise") -> BratDocument:
    text = _read_text(txt_path)
    ann_text = _read_text(ann_path)
    entities, warnings, skipped = parse_ann(ann_text, text, ann_path, on_error=on_error)
    ignored = Counter(line[0] for line in ann_text.splitlines() if line.startswith(_OTHER_KINDS))
    return BratDocument(txt_path.stem, text, entities, txt_path, ann_path, warnings, skipped, ignored)


def iter_brat_dir(path: Path, on_error: str = "raise") -> Iterator[BratDocument]:
    """Yield the documents of a BRAT folder in sorted name order.

    A ``.ann`` without its ``.txt`` (or the reverse) is an error naming the file;
    with on_error="skip" it is logged and skipped.
    """
    path = Path(path)
    if not path.is_dir():
        raise BratFormatError(path, None, "BRAT folder not found")
    txts = {p.stem: p for p in path.glob("*.txt")}
    anns = {p.stem: p for p in path.glob("*.ann")}
    if not txts and not anns:
        raise BratFormatError(path, None, "no .txt/.ann files in BRAT folder")
    for stem in sorted(set(txts) | set(anns)):
        if stem not in txts or stem not in anns:
            have, missing = (anns[stem], ".txt") if stem not in txts else (txts[stem], ".ann")
            err = BratFormatError(have, None, f"has no matching {missing} file")
            if on_error == "raise":
                raise err
            logger.warning("Skipping %s", err)
            continue
        yield read_brat_document(txts[stem], anns[stem], on_error=on_error)


def paper_tags(doc: Doc, entities: Sequence[BratEntity]) -> List[str]:
    """The tag the paper's ``brat2iob.py`` gives every token (whitespace tokens: "O")."""
    by_type: "OrderedDict[str, List[Tuple[int, int]]]" = OrderedDict()
    for ent in entities:
        by_type.setdefault(ent.label, []).append(ent.fragments[0])
    tags = []
    for tok in doc:
        tag = "O"
        if not tok.is_space:
            start, end = tok.idx, tok.idx + len(tok)
            for label, spans in by_type.items():
                for s, e in spans:
                    if start == s:
                        tag = f"B-{label}"
                        break
                    if start > s and end <= e:
                        tag = f"I-{label}"
                        break
        tags.append(tag)
    return tags


def brat_to_doc(vocab: Vocab, bdoc: BratDocument, spans_key: str = SPANS_KEY) -> Tuple[Doc, Counter]:
    """Convert one BRAT document; returns the Doc and the policy counts for it."""
    stats: Counter = Counter({k: 0 for k in POLICY_COUNTS})
    cuts = {o for ent in bdoc.entities for frag in ent.fragments for o in frag}
    plain = make_doc(vocab, bdoc.text, sentences=False)
    doc = make_doc(vocab, bdoc.text, split_at=cuts, sentences=True)
    stats["docs"] += 1
    stats["tokens_split_for_boundaries"] += len(doc) - len(plain)
    stats["quote_escape_warnings"] += sum("quote escaping" in w for w in bdoc.warnings)
    stats["skipped_lines"] += bdoc.skipped_lines
    stats["ignored_non_entity_lines"] += sum(bdoc.ignored.values())
    for kind, n in bdoc.ignored.items():
        stats[f"ignored_lines_{kind}"] += n
    group = []
    for ent in bdoc.entities:
        stats["entities"] += 1
        stats[f"entities_{ent.label}"] += 1
        if len(ent.fragments) > 1:
            stats["discontinuous"] += 1
        for s, e in ent.fragments:
            span = doc.char_span(s, e, label=ent.label, span_id=ent.id)
            if span is None:
                stats["unaligned_fragments"] += 1
                logger.warning(
                    "%s: %s %s-%s %r does not start/end on a token boundary (whitespace); not in doc.spans",
                    bdoc.ann_path or bdoc.name, ent.id, s, e, bdoc.text[s:e],
                )
                continue
            group.append(span)
    doc.spans[spans_key] = group
    tags = paper_tags(doc, bdoc.entities)
    sent_starts = [bool(t.is_sent_start) for t in doc]
    doc.ents = [Span(doc, s, e, label=l) for s, e, l in spans_from_tags(tags, sent_starts, [t.is_space for t in doc])]
    # Policy counts: how many annotated entities Doc.ents keeps as they are.
    ents = {(e.start_char, e.end_char, e.label_) for e in doc.ents}
    first = {(ent.fragments[0][0], ent.fragments[0][1], ent.label) for ent in bdoc.entities}
    for ent in bdoc.entities:
        key = (ent.fragments[0][0], ent.fragments[0][1], ent.label)
        if len(ent.fragments) > 1:
            stats["ents_discontinuous_first_fragment"] += key in ents
        if key not in ents:
            stats["annotations_not_in_ents_overlap"] += 1
        elif len(ent.fragments) == 1:
            stats["annotations_in_ents_unchanged"] += 1
    stats["ents"] += len(ents)
    stats["ents_not_an_annotation"] += len(ents - first)
    return doc, stats


def entities_from_spans(doc: Doc, spans_key: str = SPANS_KEY) -> Dict[str, Tuple[str, Tuple[Tuple[int, int], ...]]]:
    """Recover {brat_id: (label, ((start, end), ...))} from ``doc.spans[spans_key]``."""
    out: Dict[str, Tuple[str, List[Tuple[int, int]]]] = {}
    for span in doc.spans[spans_key]:
        label, frags = out.setdefault(span.id_, (span.label_, []))
        frags.append((span.start_char, span.end_char))
    return {k: (label, tuple(sorted(frags))) for k, (label, frags) in out.items()}


def read_brat_docs(
    path: Path, vocab: Vocab, on_error: str = "raise", spans_key: str = SPANS_KEY
) -> Tuple[List[Doc], Counter]:
    docs, total = [], Counter()
    for bdoc in iter_brat_dir(path, on_error=on_error):
        doc, stats = brat_to_doc(vocab, bdoc, spans_key=spans_key)
        doc.user_data["source"] = str(bdoc.txt_path.name if bdoc.txt_path else bdoc.name)
        docs.append(doc)
        total.update(stats)
    return docs, total
