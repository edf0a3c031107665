"""Document-level label propagation: every unlabelled occurrence of a predicted entity's exact
text elsewhere in the same document (at token boundaries, not overlapping any predicted
entity) gets that entity's label. The other half of "the same surface form labelled the same
across a document" (the first half, relabelling RAREDISEASE/SKINRAREDISEASE repeats to their
majority, is ``tokner_doc_consistency``).

It first counts, in the gold documents, the occurrences of each gold entity's text that are
annotated against those that are neither annotated nor inside another entity: the ceiling of
what propagation can add. Then it scores each member's saved predictions as they are and
propagated (``--min-chars``: skip entity texts shorter than this). Nothing is chosen, so
nothing is cross-fitted.

    python benchmarks/doc_propagation.py corpus/dev.spacy \
        --members lora=metrics/lora-dev.spacy bert=metrics/bert-dev.spacy
"""
from __future__ import annotations

import argparse
import re
from typing import List, Set, Tuple

import spacy
from spacy.tokens import Doc

from tokner.cli import _load_aligned_predictions
from tokner.ensemble import copy_doc, paper_row, paper_rows_markdown, set_ents


def occurrences(doc: Doc, text: str) -> List[Tuple[int, int]]:
    """Character spans of ``text`` in ``doc`` whose ends are token boundaries."""
    return [(m.start(), m.end()) for m in re.finditer(re.escape(text), doc.text)
            if doc.char_span(m.start(), m.end()) is not None]


def propagate(doc: Doc, min_chars: int = 1) -> Doc:
    ents = [(e.start_char, e.end_char, e.label_) for e in doc.ents]
    covered: Set[int] = {i for s, e, _ in ents for i in range(s, e)}
    out = list(ents)
    for s0, e0, label in ents:
        if e0 - s0 < min_chars:
            continue
        for s, e in occurrences(doc, doc.text[s0:e0]):
            if covered.isdisjoint(range(s, e)):
                out.append((s, e, label))
                covered.update(range(s, e))
    return set_ents(copy_doc(doc), out)


def gold_repeats(gold: List[Doc]) -> Tuple[int, int]:
    annotated = free = 0
    for doc in gold:
        spans = {(e.start_char, e.end_char) for e in doc.ents}
        covered = {i for e in doc.ents for i in range(e.start_char, e.end_char)}
        for text in {e.text for e in doc.ents}:
            for s, e in occurrences(doc, text):
                if (s, e) in spans:
                    annotated += 1
                elif covered.isdisjoint(range(s, e)):
                    free += 1
    return annotated, free


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--min-chars", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    gold, members = _load_aligned_predictions(args.gold, args.members, spacy.blank("en"))
    annotated, free = gold_repeats(gold)
    print(f"gold: occurrences of gold entity texts annotated {annotated}, "
          f"neither annotated nor inside an entity {free}")
    rows = {}
    for name, docs in members.items():
        rows[name] = paper_row(gold, docs)
        for m in args.min_chars:
            rows[f"{name} propagated (>= {m} chars)"] = paper_row(gold, [propagate(d, m) for d in docs])
    print(paper_rows_markdown(rows))


if __name__ == "__main__":
    main()
