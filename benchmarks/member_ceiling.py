"""How far a vote over these members can go, and one more label lever measured against it.

A span vote can only output spans some member proposed. Per type, this prints how many gold
spans at least one member found exactly (span and label), how many with the right span but
any label (so a relabelling could fix them), and how many members found each one; then, for
a vote's held-out predictions (``tokner ensemble-search ... --save-docs``), where its errors
fall (right span wrong label, overlapping span, missed, spurious).

It also measures a train lexicon: a predicted DISEASE/RAREDISEASE/SKINRAREDISEASE span whose
lowercased text train labels with one group (DISEASE vs the rare ones) at least ``k`` times
with purity ``p`` takes that group (SKINRAREDISEASE where the vote's document already has
one). The members are trained on the same train, so this tells whether they have learnt it.

    python benchmarks/member_ceiling.py corpus/train.spacy corpus/dev.spacy \\
        --members bert=metrics/best/bert-dev.spacy cnn=metrics/best/cnn-dev.spacy \\
        --vote metrics/best/ensemble-dev.spacy --output metrics/best/member_ceiling.json
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from typing import Dict, List

import spacy
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example

from tokner.cli import _load_aligned_predictions
from tokner.scoring.scorer import PAPER_LABELS, paper_prf
from tokner.utils.textfile import write_json

DISEASES = ("DISEASE", "RAREDISEASE", "SKINRAREDISEASE")


def _group(label: str) -> str:
    return "DISEASE" if label == "DISEASE" else "RARE"


def _spans(doc: Doc) -> Dict[tuple, str]:
    return {(e.start_char, e.end_char): e.label_ for e in doc.ents if e.label_ in PAPER_LABELS}


def ceiling(gold: List[Doc], members: Dict[str, List[Doc]]) -> Dict[str, Dict[str, float]]:
    n, exact, span = Counter(), Counter(), Counter()
    by_count = {label: Counter() for label in PAPER_LABELS}
    for i, g in enumerate(gold):
        preds = [_spans(m[i]) for m in members.values()]
        for s, lab in _spans(g).items():
            n[lab] += 1
            hits = sum(p.get(s) == lab for p in preds)
            by_count[lab][hits] += 1
            exact[lab] += hits > 0
            span[lab] += any(s in p for p in preds)
    return {label: {"gold": n[label], "any_member_exact": exact[label] / n[label] if n[label] else 0.0,
                    "any_member_span_any_label": span[label] / n[label] if n[label] else 0.0,
                    "found_by_k_members": [by_count[label][k] for k in range(len(members) + 1)]}
            for label in PAPER_LABELS}


def vote_errors(gold: List[Doc], vote: List[Doc]) -> Counter:
    errors = Counter()
    for g, p in zip(gold, vote):
        gs, ps = _spans(g), _spans(p)
        for s, lab in gs.items():
            if s in ps:
                errors[f"{lab} -> {ps[s]}"] += 1
            elif any(t[0] < s[1] and s[0] < t[1] for t in ps):
                errors[f"{lab} -> overlapping span"] += 1
            else:
                errors[f"{lab} -> missed"] += 1
        for s, lab in ps.items():
            if s not in gs and not any(t[0] < s[1] and s[0] < t[1] for t in gs):
                errors[f"spurious {lab}"] += 1
    return errors


def train_lexicon(train: List[Doc]) -> Dict[str, Counter]:
    """Lowercased disease mention -> how often train labels it DISEASE / one of the rare ones."""
    lex = defaultdict(Counter)
    for d in train:
        for e in d.ents:
            if e.label_ in DISEASES:
                lex[e.text.lower()][_group(e.label_)] += 1
    return lex


def lexicon_relabel(lex: Dict[str, Counter], vote: List[Doc], min_count: int, purity: float):
    out, changed = [], 0
    for p in vote:
        d = p.copy()
        skin = any(e.label_ == "SKINRAREDISEASE" for e in p.ents)
        ents = []
        for e in p.ents:
            label, counts = e.label_, lex.get(e.text.lower())
            if label in DISEASES and counts and sum(counts.values()) >= min_count:
                top, c = counts.most_common(1)[0]
                if c / sum(counts.values()) >= purity and top != _group(label):
                    changed += 1
                    label = "DISEASE" if top == "DISEASE" else ("SKINRAREDISEASE" if skin else "RAREDISEASE")
            ents.append(Span(d, e.start, e.end, label=label))
        d.ents = ents
        out.append(d)
    return out, changed


def _score(gold: List[Doc], pred: List[Doc]) -> Dict[str, float]:
    r = paper_prf([Example(p, g) for p, g in zip(pred, gold)])
    return {"avg": r["paper_avg_f"], "micro5": r["paper_micro5_f"],
            **{label: r["spans_paper_per_type"][label]["f"] for label in PAPER_LABELS}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train")
    ap.add_argument("dev")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--vote", help="the vote's held-out predictions (tokner ensemble-search --save-docs)")
    ap.add_argument("--output")
    args = ap.parse_args()
    nlp = spacy.blank("en")
    if args.vote and any(m.partition("=")[0] == "vote" for m in args.members):
        raise SystemExit("--members: 'vote' names the --vote predictions; call the member something else")
    specs = args.members + ([f"vote={args.vote}"] if args.vote else [])
    gold, members = _load_aligned_predictions(args.dev, specs, nlp)  # gold read once for both
    vote = members.pop("vote", None) if args.vote else None
    out = {"members": args.members, "ceiling": ceiling(gold, members)}
    print("| type | gold | some member exact | some member, right span | found by 0..k members |")
    print("|---|---:|---:|---:|---|")
    for label, row in out["ceiling"].items():
        print(f"| {label} | {row['gold']} | {row['any_member_exact']:.3f} | {row['any_member_span_any_label']:.3f} "
              f"| {row['found_by_k_members']} |")
    if vote is not None:
        errors = vote_errors(gold, vote)
        out["vote_errors"] = dict(errors.most_common())
        print("\nvote: gold -> predicted (right span unless stated)")
        for k, v in errors.most_common():
            print(f"  {k}: {v}")
        lex = train_lexicon(list(DocBin().from_disk(args.train).get_docs(nlp.vocab)))
        base = _score(gold, vote)
        out["lexicon"] = [{"min_count": 0, "purity": 0, "changed": 0, **base}]
        print(f"\nvote: Avg-5 {base['avg']:.3f} micro-5 {base['micro5']:.3f}; train-lexicon relabelling:")
        print("| min count | purity | spans changed | Avg-5 | micro-5 | DISEASE | RAREDISEASE | SKINRAREDISEASE |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in (1, 2, 3, 5):
            for p in (0.6, 0.75, 0.9):
                relabelled, changed = lexicon_relabel(lex, vote, k, p)
                s = _score(gold, relabelled)
                out["lexicon"].append({"min_count": k, "purity": p, "changed": changed, **s})
                print(f"| {k} | {p} | {changed} | {s['avg']:.3f} | {s['micro5']:.3f} | {s['DISEASE']:.3f} | "
                      f"{s['RAREDISEASE']:.3f} | {s['SKINRAREDISEASE']:.3f} |")
    if args.output:
        write_json(args.output, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
