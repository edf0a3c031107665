"""A band of document-type probabilities where the members' own RAREDISEASE /
SKINRAREDISEASE labels are kept, measured against the single threshold of ``tokner
ensemble-search --doc-type``, both cross-fitted the same way.

The single threshold gives every RAREDISEASE/SKINRAREDISEASE mention of a document the
document's label (``p >= t``: SKINRAREDISEASE, else RAREDISEASE). A band ``(low, high)``
relabels only where the document classifier is sure: ``p >= high`` SKINRAREDISEASE,
``p < low`` RAREDISEASE, and in between the label the vote gave. It can only help when a
member finds SKINRAREDISEASE by itself (the long LoRA run does, the `all` budgets do not).

    python benchmarks/doc_type_band.py corpus/dev.spacy \
        --members lora=metrics/best/lora-dev.spacy bert=metrics/best/bert-dev.spacy \
                  cnn-vectors=metrics/best/cnn_vectors-dev.spacy cnn=metrics/best/cnn-dev.spacy \
        --doc-type training/best/doc_type --folds 2

Prints the cross-fitted vote with the single thresholds only and with the bands added to
the grid (each fold's setting chosen on the other fold, as in ``ensemble-search``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import spacy

import tokner.ensemble as ens
from tokner.cli import _load_aligned_predictions
from tokner.doctype import find_component, relabel
from tokner.ensemble import cross_fit, held_out_docs, paper_row, paper_rows_markdown
from tokner.scoring.scorer import PAPER_LABELS

SINGLE = ens.DOC_TYPE_THRESHOLDS
BANDS = tuple((lo, hi) for lo in (0.2, 0.3, 0.4, 0.5) for hi in (0.5, 0.6, 0.7, 0.8, 0.9) if lo < hi)


_single = ens._doc_typed


def banded(triples, p, threshold):
    """``threshold``: a float (the library's rule) or a (low, high) band: outside it the
    library's relabelling at ``high``, inside it the vote's labels."""
    if not isinstance(threshold, tuple):
        return _single(triples, p, threshold)
    low, high = threshold
    return triples if p is None or low <= p < high else relabel(triples, p, high)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--doc-type", required=True, help="a tokner train-doc-type pipeline")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--output")
    args = ap.parse_args()

    gold, members = _load_aligned_predictions(args.gold, args.members, spacy.blank("en"))
    probs = find_component(spacy.load(args.doc_type), args.doc_type).model.predict([g.text for g in gold])
    ens._doc_typed = banded
    rows, settings = {}, {}
    for name, grid in (("single threshold", SINGLE), ("single threshold or band", SINGLE + BANDS)):
        t0 = time.perf_counter()
        res = cross_fit(gold, members, PAPER_LABELS, folds=args.folds, consistency=(False,), doc_probs=probs,
                        doc_thresholds=grid)
        rows[name] = paper_row(gold, held_out_docs(gold, res["held_out"]))
        settings[name] = {"fold_settings": res["fold_settings"], "setting_all": res["setting_all"],
                          "seconds": round(time.perf_counter() - t0, 1)}
    print(paper_rows_markdown(rows, first="doc-type grid"))
    for name, s in settings.items():
        print(name, json.dumps(s))
    if args.output:
        Path(args.output).write_text(json.dumps({"rows": rows, "settings": settings}, indent=2) + "\n")


if __name__ == "__main__":
    main()
