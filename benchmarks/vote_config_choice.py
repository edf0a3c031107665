"""How much choosing the vote's configuration on dev adds to its dev score: a nested cross-fit.

``tokner ensemble-search`` cross-fits what it chooses itself (weights, threshold, span mode,
document-type relabelling), but not which members or which weight grid go into the vote:
those are chosen by comparing several such searches on the same dev documents. Here each
outer half of dev chooses among named configurations (a member set and a weight grid) by
an inner cross-fit on that half alone (2 folds stratified by document type, seeds 100 and
101, the project's objective averaged), then chooses the chosen configuration's setting on
the whole half and predicts the other half. The outer splits are the contiguous one and
``--repeats`` splits stratified by document type, as in ``tokner ensemble-search``.

    python benchmarks/vote_config_choice.py corpus/dev.spacy --doc-type training/best/doc_type \
        --predictions lora=metrics/best/lora-dev.spacy bert=metrics/best/bert-dev.spacy \
                      bert1500=OTHER/bert-dev.spacy cnn-vectors=metrics/best/cnn_vectors-dev.spacy \
                      decoder=metrics/best/decoder-dev.spacy \
        --config searched:lora,bert,cnn-vectors,decoder --config equal:lora,bert,cnn-vectors,decoder:1 \
        --config equal-1500:lora,bert1500,cnn-vectors,decoder:1 --repeats 5 --output nested.json

``--config NAME:MEMBER,MEMBER,...[:W W ...]``: the members (names of ``--predictions``) and
the weight grid (default the library's 0.5 1 1.5 2). Prints each outer split's score and the
configurations its two halves chose, then the mean over the stratified splits.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import spacy

from tokner.cli import _load_aligned_predictions
from tokner.doctype import doc_label, find_component
from tokner.ensemble import (WEIGHT_GRID, choose, cross_fit, fold_assignment, held_out_docs, objective, paper_row,
                             predict, spread)
from tokner.scoring.scorer import PAPER_LABELS
from tokner.utils.textfile import write_json

def parse_config(text: str, known) -> Dict:
    name, _, rest = text.partition(":")
    members, _, grid = rest.partition(":")
    names = [m for m in members.split(",") if m]
    if not name or len(names) < 2 or any(m not in known for m in names):
        raise SystemExit(f"--config {text!r}: expected NAME:MEMBER,MEMBER,...[:W W ...] with members among {sorted(known)}")
    return {"name": name, "members": names, "grid": tuple(float(w) for w in grid.split()) if grid else WEIGHT_GRID}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gold")
    ap.add_argument("--predictions", nargs="+", required=True, metavar="NAME=DOCBIN")
    ap.add_argument("--config", action="append", required=True, metavar="NAME:MEMBERS[:GRID]")
    ap.add_argument("--doc-type", help="a tokner train-doc-type pipeline (relabelling at its threshold tried)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output")
    args = ap.parse_args(argv)
    nlp = spacy.blank("en")
    gold, members = _load_aligned_predictions(args.gold, args.predictions, nlp)
    configs = [parse_config(c, members) for c in args.config]
    probs, kw = None, dict(consistency=(False,))
    if args.doc_type:
        doc_type = find_component(spacy.load(args.doc_type), f"--doc-type {args.doc_type}")
        probs = list(doc_type.model.predict([g.text for g in gold]))
        kw["doc_thresholds"] = (doc_type.threshold,)
    strata = [doc_label(g) for g in gold]

    def sub(idx, names):
        return ([gold[i] for i in idx], {k: [members[k][i] for i in idx] for k in names},
                None if probs is None else [probs[i] for i in idx])

    def inner_score(idx, cfg) -> float:  # the configuration's cross-fitted objective on these documents alone
        g, m, p = sub(idx, cfg["members"])
        return sum(objective(cross_fit(g, m, PAPER_LABELS, folds=2, doc_probs=p, seed=s, strata=[strata[i] for i in idx],
                                       choose_all=False, weight_grid=cfg["grid"], **kw)["cross_fit"])
                   for s in (100, 101)) / 2

    runs: List[Dict] = []
    for seed in [None, *range(args.repeats)]:
        t = time.time()
        fold_of = fold_assignment(len(gold), 2, seed, None if seed is None else strata)
        held: List = [None] * len(gold)
        chosen = []
        for f in range(2):
            train = [i for i in range(len(gold)) if fold_of[i] != f]
            test = [i for i in range(len(gold)) if fold_of[i] == f]
            cfg = max(configs, key=lambda c: inner_score(train, c))  # ties: the first listed
            g, m, p = sub(train, cfg["members"])
            setting = choose(g, m, PAPER_LABELS, doc_probs=p, weight_grid=cfg["grid"], **kw)
            g, m, p = sub(test, cfg["members"])
            for i, triples in zip(test, predict(g, m, setting, doc_probs=p)):
                held[i] = triples
            chosen.append({"config": cfg["name"], "setting": setting})
        row = paper_row(gold, held_out_docs(gold, held))
        runs.append({"seed": seed, **row, "chosen": chosen})
        print(f"split {'contiguous' if seed is None else seed}: Avg-5 {row['avg']:.3f} micro-5 {row['micro5']:.3f} "
              f"SKINRAREDISEASE {row['SKINRAREDISEASE']:.3f}; halves chose {[c['config'] for c in chosen]} "
              f"({time.time() - t:.0f} s)", flush=True)
    stratified = [r for r in runs if r["seed"] is not None]
    out = {"configs": [{**c, "grid": list(c["grid"])} for c in configs], "runs": runs}
    if stratified:
        out["spread"] = spread(stratified, ["avg", "micro5", *PAPER_LABELS])
        print("stratified splits: " + ", ".join(f"{c} {out['spread'][c]['mean']:.3f} (sd {out['spread'][c]['sd']:.3f})"
                                               for c in ("avg", "micro5", "SKINRAREDISEASE")))
    if args.output:
        write_json(args.output, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
