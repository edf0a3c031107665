"""A token-level vote against the library's span vote, each at its best setting on the same docs.

The span vote (`tokner.ensemble.vote`) can only output spans some member proposed exactly.
A token-level vote can combine boundaries: each member's entity gives its weight to the
label of every token it covers, a token is inside an entity when the weight covering it
reaches the threshold, and a run of inside tokens is split where more weight starts an
entity at a token than continues one into it; a span's label is the one with the most
weight over its tokens. Both are searched over the same settings, the ensemble search's
(`tokner.ensemble.candidate_settings`: the first member's weight fixed at 1, the others on
0.5/1/1.5/2, every threshold that separates the weight sums), and each is scored at its
best setting on all the docs given: an in-sample upper bound for both, enough to tell whether
the token vote is worth cross-fitting. No document type here: it acts after either vote.

    python benchmarks/token_vote.py corpus/dev.spacy --members lora=metrics/best/lora-dev.spacy \\
        bert=metrics/best/bert-dev.spacy cnn-vectors=metrics/best/cnn_vectors-dev.spacy \\
        --output metrics/best/token_vote.json
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Dict, List

import spacy
from spacy.tokens import Doc

from tokner.cli import _load_aligned_predictions
from tokner.ensemble import Triple, _counts, _triples, candidate_settings, f_scores, vote
from tokner.scoring.scorer import PAPER_LABELS
from tokner.utils.textfile import write_json


def token_vote(docs: Dict[str, Doc], weights: Dict[str, float], threshold: float) -> List[Triple]:
    """The token-level vote over one document's member predictions (same tokenization)."""
    ref = next(iter(docs.values()))
    n = len(ref)
    inside = [defaultdict(float) for _ in range(n)]
    starts, continues = [0.0] * n, [0.0] * n
    for name, doc in docs.items():
        w = weights[name]
        for e in doc.ents:
            for k in range(e.start, e.end):
                inside[k][e.label_] += w
                if k == e.start:
                    starts[k] += w
                else:
                    continues[k] += w
    runs: List[List[int]] = []
    for k in range(n):
        if sum(inside[k].values()) < threshold - 1e-9:
            continue
        if runs and runs[-1][1] == k and starts[k] <= continues[k]:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1])
    out = []
    for s, e in runs:
        totals: Dict[str, float] = defaultdict(float)
        for k in range(s, e):
            for label, v in inside[k].items():
                totals[label] += v
        out.append((ref[s].idx, ref[e - 1].idx + len(ref[e - 1]), max(totals, key=totals.get)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dev")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=DOCBIN")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    nlp = spacy.blank("en")
    gold, members = _load_aligned_predictions(args.dev, args.members, nlp)
    names = list(members)
    for name in names[1:]:
        if any(len(a) != len(b) for a, b in zip(members[names[0]], members[name])):
            raise SystemExit(f"{name}: not the tokenization of {names[0]} (save both with tokner evaluate --save-docs)")
    labels = list(PAPER_LABELS)
    spans = [{n: _triples(members[n][i]) for n in names} for i in range(len(gold))]
    best: Dict[str, tuple] = {}
    for w, t in candidate_settings(names):
        rows = {"token": [token_vote({n: members[n][i] for n in names}, w, t) for i in range(len(gold))]}
        for bb in (False, True):
            rows[f"span (by_boundary={bb})"] = [vote(s, w, t, bb) for s in spans]
        for kind, pred in rows.items():
            sc = f_scores(_counts(gold, pred, labels))
            if kind not in best or sc["micro"] > best[kind][0]["micro"] + 1e-12:
                best[kind] = (sc, {"weights": w, "threshold": t})
    result = {kind: {"micro5": sc["micro"], "avg": sc["avg"], **{lab: sc[lab] for lab in labels}, "setting": st}
              for kind, (sc, st) in best.items()}
    for kind, r in result.items():
        print(f"{kind}: micro-5 {r['micro5']:.3f}, Avg-5 {r['avg']:.3f}, SIGN {r['SIGN']:.3f} at {r['setting']}")
    if args.output:
        write_json(args.output, {"members": args.members, "best_in_sample": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
