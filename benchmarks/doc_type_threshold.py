"""The document-type threshold chosen on train instead of on half of dev.

``tokner ensemble-search --doc-type`` chooses the probability above which a document's
RAREDISEASE/SKINRAREDISEASE mentions become SKINRAREDISEASE together with the vote's
weights, on one half of dev, and scores the other half: each half has four of the eight
skin documents of dev, so the choice moves with the split (0.5 on one half, 0.6 on the
other, docs/methods.md "Two more levers"). Train has 95 skin documents of 729. Here the
threshold is chosen on train alone (:func:`tokner.doctype.choose_threshold`, what ``tokner
train-doc-type`` now saves in the component): the document-type model's out-of-fold
probabilities (5-fold, ``--seeds`` shufflings) relabel train's gold disease mentions, and
the threshold with the best mean objective (0.5 micro-5 + 0.5 Avg-5, what the vote is chosen
on) wins. The vote is then cross-fitted on dev as before, its document-type threshold fixed
to that one (or no relabelling, whichever the fold prefers; ``tokner ensemble-search``'s
default), against the search over 0.4-0.9 on the other half of dev (``--doc-type-threshold
search``, the default before).

    python benchmarks/doc_type_threshold.py corpus/train.spacy corpus/dev.spacy \\
        --doc-type training/best/doc_type \\
        --members lora=metrics/best/lora-dev.spacy bert=metrics/best/bert-dev.spacy \\
        --repeats 5 --output metrics/best/doc_type_threshold.json

Prints the train curve, then for each ``--members`` set (``--members`` may be given more
than once) the contiguous split and ``--repeats`` splits stratified by document type, both ways.
"""
from __future__ import annotations

import argparse

import spacy
from spacy.tokens import DocBin

from tokner.cli import _load_aligned_predictions
from tokner.doctype import choose_threshold, find_component
from tokner.ensemble import cross_fit_runs, spread
from tokner.scoring.scorer import PAPER_LABELS
from tokner.utils.textfile import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train")
    ap.add_argument("dev")
    ap.add_argument("--doc-type", required=True, help="a tokner train-doc-type pipeline (its probabilities on dev)")
    ap.add_argument("--members", nargs="+", action="append", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="5-fold cross-validation runs on train")
    ap.add_argument("--output")
    args = ap.parse_args()
    nlp = spacy.blank("en")
    train = list(DocBin().from_disk(args.train).get_docs(nlp.vocab))
    t_train, curve = choose_threshold(train, seeds=args.seeds)
    print("train: mean objective of the gold mentions relabelled at each threshold "
          f"({args.seeds} x 5-fold cross-validated probabilities)")
    print(" ".join(f"{t}: {v:.4f}" for t, v in curve.items()))
    print(f"chosen on train: {t_train}\n")
    out = {"train": args.train, "dev": args.dev, "doc_type": args.doc_type, "train_curve": curve,
           "train_threshold": t_train, "votes": []}
    probs = None
    print("| members | doc-type threshold | split | Avg-5 | micro-5 | SKINRAREDISEASE | RAREDISEASE | thresholds chosen |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for spec in args.members:
        gold, members = _load_aligned_predictions(args.dev, spec, nlp)
        if probs is None:
            probs = find_component(spacy.load(args.doc_type), args.doc_type).model.predict([g.text for g in gold])
        name = "+".join(members)
        entry = {"members": spec}
        for way, thresholds in (("searched on dev (0.4-0.9)", None), (f"train's {t_train}", (t_train,))):
            kw = {} if thresholds is None else {"doc_thresholds": thresholds}

            def show(row):
                split = "contiguous" if row["seed"] is None else f"stratified, seed {row['seed']}"
                print(f"| {name} | {way} | {split} | {row['avg']:.3f} | {row['micro5']:.3f} | "
                      f"{row['SKINRAREDISEASE']:.3f} | {row['RAREDISEASE']:.3f} | "
                      f"{[s['doc_type_threshold'] for s in row['fold_settings']]} |", flush=True)

            runs = cross_fit_runs(gold, members, PAPER_LABELS, [None, *range(args.repeats)], consistency=(False,),
                                  doc_probs=probs, on_run=show, **kw)
            strat = [r for r in runs if r["seed"] is not None]
            agg = spread(strat, ("avg", "micro5", *PAPER_LABELS)) if strat else {}
            if strat:
                print(f"| {name} | {way} | mean (sd) of {len(strat)} stratified | {agg['avg']['mean']:.3f} "
                      f"({agg['avg']['sd']:.3f}) | {agg['micro5']['mean']:.3f} ({agg['micro5']['sd']:.3f}) | "
                      f"{agg['SKINRAREDISEASE']['mean']:.3f} ({agg['SKINRAREDISEASE']['sd']:.3f}) | "
                      f"{agg['RAREDISEASE']['mean']:.3f} | |", flush=True)
            entry[way] = {"runs": runs, **agg}
        out["votes"].append(entry)
    if args.output:
        write_json(args.output, out, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
