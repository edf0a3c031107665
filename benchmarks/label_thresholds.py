"""One vote threshold per entity type instead of one for all, measured against the
library's single threshold, both cross-fitted the same way.

``tokner ensemble-search`` keeps a voted span when its members' weights sum to at least
one threshold. The paper's average weighs the five types equally, and the types differ in
how much the members agree (SYMPTOM: 22 dev mentions, the members rarely agree on them). Here,
after the library's search has chosen its setting on a fold (weights, threshold, boundary
rule, document-type threshold), each type's threshold is refined in turn (two passes over
the types, every threshold that separates the vote sums, a change kept when it raises the
objective on that fold), then the other fold is predicted. A span's threshold is that of
its label as voted, before the document-type relabelling.

    python benchmarks/label_thresholds.py corpus/dev.spacy \
        --members lora=metrics/best/lora-dev.spacy bert=metrics/best/bert-dev.spacy \
                  cnn-vectors=metrics/best/cnn_vectors-dev.spacy cnn=metrics/best/cnn-dev.spacy \
        --doc-type training/best/doc_type --repeats 5 --output metrics/best/label_thresholds.json

Prints, over the contiguous split and ``--repeats`` splits stratified by document type, the
cross-fitted vote with one threshold and with one per type.
"""
from __future__ import annotations

import argparse
import itertools
import time
from typing import Sequence

import spacy

import tokner.ensemble as ens
from tokner.cli import _load_aligned_predictions
from tokner.doctype import find_component
from tokner.ensemble import cross_fit_runs, spread
from tokner.scoring.scorer import PAPER_LABELS
from tokner.utils.textfile import write_json

_library_choose = ens.choose


def choose_per_label(gold, members, labels: Sequence[str], doc_probs=None, passes: int = 2, **kw):
    setting = _library_choose(gold, members, labels, doc_probs=doc_probs, **kw)
    names = list(members)
    w = setting["weights"]
    sums = sorted({round(sum(w[n] for n in combo), 6) for r in range(1, len(names) + 1)
                   for combo in itertools.combinations(names, r)})
    spans = [{n: ens._triples(members[n][i]) for n in names} for i in range(len(gold))]
    texts = [g.text for g in gold]

    def score(thresholds):
        # the library's vote takes a {label: threshold} dict: each span kept at its label's threshold
        pred = [ens.vote(s, w, thresholds, bool(setting["by_boundary"])) for s in spans]
        if setting.get("consistency"):
            pred = [ens._consistent_in(texts[i], v) for i, v in enumerate(pred)]
        pred = [ens._doc_typed(v, doc_probs[i] if doc_probs is not None else None, setting.get("doc_type_threshold"))
                for i, v in enumerate(pred)]
        return ens.objective(ens.f_scores(ens._counts(gold, pred, labels)))

    current = {lab: setting["threshold"] for lab in set(labels) | {"ANAPHOR"}}
    best = score(current)
    for _ in range(passes):
        for lab in labels:
            for t in sums:
                trial = {**current, lab: t}
                sc = score(trial)
                if sc > best + 1e-12:
                    best, current = sc, trial
    return {**setting, "threshold": current}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--doc-type", help="a tokner train-doc-type pipeline")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output")
    args = ap.parse_args()
    gold, members = _load_aligned_predictions(args.gold, args.members, spacy.blank("en"))
    probs = None
    if args.doc_type:
        probs = find_component(spacy.load(args.doc_type), args.doc_type).model.predict([g.text for g in gold])
    out = {"gold": args.gold, "members": args.members, "doc_type": args.doc_type, "rows": {}}
    print("| vote threshold | split | Avg-5 | micro-5 | " + " | ".join(PAPER_LABELS) + " | seconds |")
    print("|---|---|---:|---:|" + "---:|" * len(PAPER_LABELS) + "---:|")
    for name, chooser in (("one", _library_choose), ("one per type", choose_per_label)):
        ens.choose = chooser  # cross_fit chooses each fold's setting with tokner.ensemble.choose
        clock = [time.perf_counter()]

        def progress(row):
            split = "contiguous" if row["seed"] is None else f"stratified, seed {row['seed']}"
            print(f"| {name} | {split} | {row['avg']:.3f} | {row['micro5']:.3f} | "
                  + " | ".join(f"{row[t]:.3f}" for t in PAPER_LABELS) + f" | {time.perf_counter() - clock[0]:.0f} |",
                  flush=True)
            clock[0] = time.perf_counter()

        try:
            runs = cross_fit_runs(gold, members, PAPER_LABELS, [None, *range(args.repeats)], consistency=(False,),
                                  doc_probs=probs, on_run=progress)
        finally:
            ens.choose = _library_choose
        strat = [x for x in runs if x["seed"] is not None]
        agg = spread(strat, ("avg", "micro5", *PAPER_LABELS)) if strat else {}
        if strat:
            print(f"| {name} | mean (sd) of the {len(strat)} stratified | {agg['avg']['mean']:.3f} ({agg['avg']['sd']:.3f}) | "
                  f"{agg['micro5']['mean']:.3f} ({agg['micro5']['sd']:.3f}) | "
                  + " | ".join(f"{agg[t]['mean']:.3f}" for t in PAPER_LABELS) + " | |", flush=True)
        out["rows"][name] = {"runs": runs, **agg}
    if args.output:
        write_json(args.output, out, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
