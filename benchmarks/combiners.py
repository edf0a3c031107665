"""Three ways to combine the members' predictions, cross-fitted on the same fold assignments.

* ``vote``: the library's combination (``tokner ensemble-search --doc-type``): weighted
  exact-span vote, then RAREDISEASE/SKINRAREDISEASE relabelled by the document-type
  probability; weights, vote threshold and document threshold chosen on the other fold.
* ``vote, train threshold``: the same vote, but the document threshold fixed beforehand on
  the training corpus: 5-fold out-of-fold probabilities of the document-type model over the
  train documents, and the threshold (0.30-0.75 by 0.025) that gives the gold
  RAREDISEASE/SKINRAREDISEASE mentions of train the best SKINRAREDISEASE F1 when every
  mention takes its document's label. Nothing about the document decision is chosen on dev.
* ``stack``: a span classifier instead of the vote. Every span any member predicts (with
  the other label of the pair as a second candidate for RAREDISEASE/SKINRAREDISEASE) gets
  features: its label; per member, whether it predicted the span exactly, with the same
  boundaries but another label, or an overlapping span of the same label; how many members
  agree; the LoRA member's probability for it (its ``doc.spans["lora"]`` scores, when
  present); its length in words; capitalisation; the document-type probability by label.
  A logistic regression (scikit-learn, ``C=1``) is fitted on the other fold's candidates
  (positive: the span is in gold), its decision threshold and the document threshold chosen
  there on out-of-fold probabilities (2 groups of documents), then the held-out fold is
  decoded greedily (most probable span first, no overlaps) and relabelled by document type.

Each combiner runs on the contiguous split of ``ensemble-search`` and on ``--repeats``
shuffled splits stratified by the gold document type (``tokner.ensemble.fold_assignment``,
seeds 0..N-1, the splits of ``ensemble-search --repeats``); the table gives every
run and the mean and sd over the shuffled ones.

    python benchmarks/combiners.py corpus/dev.spacy \\
        --members lora=metrics/best/lora-dev.spacy bert=metrics/best/bert-dev.spacy \\
                  cnn-vectors=metrics/best/cnn_vectors-dev.spacy cnn=metrics/best/cnn-dev.spacy \\
        --doc-type training/best/doc_type --train corpus/train.spacy --repeats 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import spacy

from tokner.cli import _load_aligned_predictions
from tokner.doctype import cross_validated, doc_label, find_component, relabel
from tokner.ensemble import (_counts, _triples, choose, f_scores, fold_assignment, held_out_docs, objective, paper_row,
                             predict)
from tokner.scoring.evaluation import load_gold_docs
from tokner.scoring.scorer import PAPER_LABELS

LABELS = list(PAPER_LABELS)
ALL_LABELS = LABELS + ["ANAPHOR"]
PAIR = {"RAREDISEASE": "SKINRAREDISEASE", "SKINRAREDISEASE": "RAREDISEASE"}
DOC_GRID = (None, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def train_threshold(train_docs, folds: int = 5, seed: int = 0) -> float:
    """The document threshold chosen on train alone (see the module docstring)."""
    p = cross_validated([d.text for d in train_docs], [doc_label(d) for d in train_docs], folds=folds, seed=seed)
    best = None
    for t in np.arange(0.30, 0.7501, 0.025):
        tp = fp = fn = 0
        for i, d in enumerate(train_docs):
            pair = [e.label_ for e in d.ents if e.label_ in PAIR]
            n_skin = pair.count("SKINRAREDISEASE")
            if p[i] >= t:
                tp, fp = tp + n_skin, fp + len(pair) - n_skin
            else:
                fn += n_skin
        f = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if best is None or f > best[0] + 1e-12:
            best = (f, round(float(t), 3))
    return best[1]


def candidates(doc, member_docs: Dict[str, object], p: float):
    """(features, spans) of one document's candidate spans (see the module docstring)."""
    names = list(member_docs)
    predicted = {m: set(_triples(d)) for m, d in member_docs.items()}
    bounds = {m: {(s, e) for s, e, _ in predicted[m]} for m in names}
    lora_score: Dict[tuple, float] = {}
    for d in member_docs.values():
        if "lora" in d.spans:
            group = d.spans["lora"]
            for span, score in zip(group, group.attrs.get("scores", [])):
                key = (span.start_char, span.end_char, span.label_)
                lora_score[key] = max(lora_score.get(key, 0.0), float(score))
    cands = set().union(*predicted.values()) | set(lora_score)
    cands |= {(s, e, PAIR[lab]) for s, e, lab in cands if lab in PAIR}
    rows, spans = [], []
    for s, e, lab in sorted(cands):
        agree = sum((s, e, lab) in predicted[m] for m in names)
        text = doc.text[s:e]
        f = [float(lab == x) for x in ALL_LABELS]
        for m in names:
            exact = (s, e, lab) in predicted[m]
            f += [float(exact), float((s, e) in bounds[m] and not exact),
                  float(not exact and any(a < e and s < b and l2 == lab for a, b, l2 in predicted[m]))]
        f += [agree, float(agree == len(names)), lora_score.get((s, e, lab), 0.0), min(len(text.split()), 8) / 8,
              float(text[:1].isupper()), float(text.isupper()),
              float(any((s, e, PAIR.get(lab, "")) in predicted[m] for m in names)),
              p * (lab == "SKINRAREDISEASE"), p * (lab == "RAREDISEASE"), p]
        f += [agree * float(lab == x) for x in ALL_LABELS]
        rows.append(f)
        spans.append((s, e, lab))
    return rows, spans


def decode(spans: Sequence[tuple], probs: Sequence[float], threshold: float) -> List[tuple]:
    taken, used = [], set()
    for q, (s, e, lab) in sorted(zip(probs, spans), key=lambda x: (-x[0], -(x[1][1] - x[1][0]), x[1])):
        if q < threshold or any(i in used for i in range(s, e)):
            continue
        used.update(range(s, e))
        taken.append((s, e, lab))
    return sorted(taken)


def stack_fold(gold, feats, doc_probs, train_idx, test_idx) -> Dict[int, List[tuple]]:
    from sklearn.linear_model import LogisticRegression

    def xy(idx):
        x = [r for i in idx for r in feats[i][0]]
        gs = [set(_triples(gold[i])) for i in idx]
        y = [int(sp in g) for g, i in zip(gs, idx) for sp in feats[i][1]]
        return np.asarray(x, dtype=float), np.asarray(y)

    def fitted(idx):
        return LogisticRegression(C=1.0, max_iter=5000).fit(*xy(idx))

    def predicted(model, idx):
        out = {}
        for i in idx:
            out[i] = model.predict_proba(np.asarray(feats[i][0], dtype=float))[:, 1] if feats[i][0] else []
        return out

    # out-of-fold probabilities on the training fold (2 groups of documents) choose the thresholds
    half = [train_idx[0::2], train_idx[1::2]]
    oof = {}
    for a, b in ((half[0], half[1]), (half[1], half[0])):
        oof.update(predicted(fitted(a), b))
    best = None
    for t in np.arange(0.2, 0.7501, 0.05):
        dec = {i: decode(feats[i][1], oof[i], t) for i in train_idx}
        for dt in DOC_GRID:
            pred = [dec[i] if dt is None else relabel(dec[i], doc_probs[i], dt) for i in train_idx]
            sc = objective(f_scores(_counts([gold[i] for i in train_idx], pred, LABELS)))
            if best is None or sc > best[0] + 1e-12:
                best = (sc, float(t), dt)
    model = fitted(train_idx)
    out = {}
    for i, q in predicted(model, test_idx).items():
        d = decode(feats[i][1], q, best[1])
        out[i] = d if best[2] is None else relabel(d, doc_probs[i], best[2])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--doc-type", required=True, help="a tokner train-doc-type pipeline")
    ap.add_argument("--train", required=True, help="the training corpus (for the train-chosen document threshold)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output")
    args = ap.parse_args()

    nlp = spacy.blank("en")
    gold, members = _load_aligned_predictions(args.gold, args.members, nlp)
    doc_probs = find_component(spacy.load(args.doc_type), args.doc_type).model.predict([g.text for g in gold])
    t_train = train_threshold(load_gold_docs(Path(args.train), nlp))
    print(f"document threshold chosen on {args.train}: {t_train}")
    feats = [candidates(g, {m: members[m][i] for m in members}, doc_probs[i]) for i, g in enumerate(gold)]
    n = len(gold)

    def sub(idx):
        return [gold[i] for i in idx], {k: [v[i] for i in idx] for k, v in members.items()}, [doc_probs[i] for i in idx]

    runs: Dict[str, List[dict]] = {"vote": [], "vote, train threshold": [], "stack": []}
    strata = [doc_label(g) for g in gold]  # as tokner ensemble-search --repeats: stratified by document type
    for seed in [None, *range(args.repeats)]:
        fold_of = fold_assignment(n, 2, seed, strata)
        held: Dict[str, List] = {k: [None] * n for k in runs}
        t0 = time.perf_counter()
        for f in range(2):
            tr = [i for i in range(n) if fold_of[i] != f]
            te = [i for i in range(n) if fold_of[i] == f]
            g_tr, m_tr, p_tr = sub(tr)
            g_te, m_te, p_te = sub(te)
            for name, grid in (("vote", DOC_GRID[1:]), ("vote, train threshold", (t_train,))):
                setting = choose(g_tr, m_tr, LABELS, doc_probs=p_tr, doc_thresholds=grid)
                for i, pred in zip(te, predict(g_te, m_te, setting, doc_probs=p_te)):
                    held[name][i] = pred
            for i, pred in stack_fold(gold, feats, doc_probs, tr, te).items():
                held["stack"][i] = pred
        for name, h in held.items():
            row = paper_row(gold, held_out_docs(gold, h))
            runs[name].append({"split": "contiguous" if seed is None else f"seed {seed}", **row})
            print(f"{runs[name][-1]['split']:>10} {name:<22} avg {row['avg']:.3f} micro5 {row['micro5']:.3f} "
                  f"SKIN {row['SKINRAREDISEASE']:.3f}", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    cols = ["avg", "micro5", *LABELS]
    summary = {}
    print("| combiner | split | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for name, rs in runs.items():
        for r in rs:
            print(f"| {name} | {r['split']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    for name, rs in runs.items():
        shuffled = [r for r in rs if r["split"] != "contiguous"]
        if shuffled:
            summary[name] = {c: {"mean": statistics.fmean(r[c] for r in shuffled),
                                 "sd": statistics.pstdev([r[c] for r in shuffled])} for c in cols}
            print(f"| {name} | mean (sd) of {len(shuffled)} shuffled | "
                  + " | ".join(f"{summary[name][c]['mean']:.3f} ({summary[name][c]['sd']:.3f})" for c in cols) + " |")
    if args.output:
        Path(args.output).write_text(json.dumps({"train_threshold": t_train, "runs": runs, "summary": summary},
                                                indent=2) + "\n")


if __name__ == "__main__":
    main()
