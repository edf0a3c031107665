"""How far the document-type lever can go: each pipeline's saved dev predictions scored as
they are, relabelled by the trained document-type model, and relabelled by the gold
document type (an oracle, the ceiling of any document classifier for those spans).

A document's gold type is :func:`tokner.doctype.doc_label` (more SKINRAREDISEASE than
RAREDISEASE gold mentions). Relabelling gives every RAREDISEASE/SKINRAREDISEASE prediction
of a document the document's label (:func:`tokner.doctype.relabel`). "skin spans found" counts
the gold SKINRAREDISEASE entities whose exact character span some prediction of either label
has: what no relabelling can raise.

    python benchmarks/doc_type_oracle.py corpus/dev.spacy \
        --members cnn=metrics/cnn-dev.spacy bert=metrics/bert-dev.spacy \
        --doc-type training/doc_type --threshold 0.6

The threshold for the trained model is given, not chosen here: this script reports, it
does not select (the cross-fitted choice is ``tokner ensemble-search --doc-type``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import spacy

from tokner.cli import _load_aligned_predictions
from tokner.doctype import DEFAULT_PAIR, doc_label, find_component, relabel
from tokner.ensemble import copy_doc as copy, paper_row, set_ents
from tokner.scoring.scorer import PAPER_LABELS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--doc-type", help="a tokner train-doc-type pipeline")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--output")
    args = ap.parse_args()

    nlp = spacy.blank("en")
    gold, members = _load_aligned_predictions(args.gold, args.members, nlp)
    oracle = [float(doc_label(g)) for g in gold]
    probs = None
    if args.doc_type:
        probs = find_component(spacy.load(args.doc_type), f"--doc-type {args.doc_type}").model.predict(
            [g.text for g in gold])

    def relabelled(docs, ps, threshold):
        out = []
        for d, p in zip(docs, ps):
            triples = relabel([(e.start_char, e.end_char, e.label_) for e in d.ents], p, threshold)
            out.append(set_ents(copy(d), triples))
        return out

    def paper(docs):
        return paper_row(gold, docs)

    skin = [{(e.start_char, e.end_char) for e in g.ents if e.label_ == DEFAULT_PAIR[1]} for g in gold]
    n_skin = sum(len(s) for s in skin)
    rows = {}
    for name, docs in members.items():
        found = sum(len(s & {(e.start_char, e.end_char) for e in d.ents if e.label_ in DEFAULT_PAIR})
                    for s, d in zip(skin, docs))
        rows[name] = {**paper(docs), "skin_spans_found": found}
        if probs is not None:
            rows[f"{name} + doc type at {args.threshold}"] = paper(relabelled(docs, probs, args.threshold))
        rows[f"{name} + gold doc type (oracle)"] = paper(relabelled(docs, oracle, 0.5))
    cols = ["avg", "micro5", *PAPER_LABELS]
    print("| predictions | " + " | ".join(cols) + " | skin spans found |")
    print("|" + "---|" * (len(cols) + 2))
    for name, r in rows.items():
        found = f"{r['skin_spans_found']} of {n_skin}" if "skin_spans_found" in r else ""
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {found} |")
    print(f"{int(sum(oracle))} of {len(gold)} documents have the skin type (gold)")
    if args.output:
        Path(args.output).write_text(json.dumps({"rows": rows, "skin_entities": n_skin}, indent=2) + "\n")


if __name__ == "__main__":
    main()
