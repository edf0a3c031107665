"""How many dev documents a checkpoint choice needs: score saved predictions of several
checkpoints (``tokner evaluate CHECKPOINT corpus/dev.spacy --save-docs X.spacy``) on the first
N dev documents for several N, the way ``tokner.lora train --lora.eval_docs N`` chooses
``model-best``, and on all of them.

    python benchmarks/checkpoint_selection.py corpus/dev.spacy \\
        --members step1200=lora-best-dev.spacy step1600=lora-last-dev.spacy --docs 8 16 26 52
"""
from __future__ import annotations

import argparse

import spacy
from spacy.training import Example

from tokner.cli import _load_aligned_predictions
from tokner.scoring.scorer import paper_prf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dev")
    ap.add_argument("--members", nargs="+", required=True, metavar="NAME=PREDICTIONS.spacy")
    ap.add_argument("--docs", nargs="+", type=int, default=[8, 16, 26, 52])
    args = ap.parse_args()
    gold, members = _load_aligned_predictions(args.dev, args.members, spacy.blank("en"))
    print("| first N docs | " + " | ".join(f"{m}: Avg-5 / micro-5" for m in members) + " | chosen by micro-5 |")
    print("|---:|" + "---|" * (len(members) + 1))
    for n in [*args.docs, len(gold)]:
        scores = {m: paper_prf([Example(p, g) for p, g in zip(docs[:n], gold[:n])]) for m, docs in members.items()}
        best = max(scores, key=lambda m: scores[m]["paper_micro5_f"])
        cells = " | ".join(f"{s['paper_avg_f']:.3f} / {s['paper_micro5_f']:.3f}" for s in scores.values())
        print(f"| {n} | {cells} | {best} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
