"""Lossless check of the llm task's parser: gold answers (and perturbed gold answers)
replayed through ``tokner.ReplayModel.v1`` + ``tokner.TokenNER.v1`` on all of dev.

    python benchmarks/llm_lossless.py [--dev corpus/dev.spacy] [--output metrics/llm_lossless.json]

Each sentence's answer is its gold ``token : label`` lines; a perturbation is
applied to every sentence (seeded): drop one line, merge two adjacent tokens into
one line, upper-case everything, drop all B-/I- prefixes, repeat a line, split a
token over two lines, cut the answer in half. The pipeline runs on the gold
tokens. "affected" counts the gold entities that touch a perturbed line; only
those may be lost.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Callable, List, Set, Tuple

from tokner.utils.textfile import write_json

Lines = List[str]


def drop_line(lines: Lines, rng) -> Tuple[Lines, Set[int]]:
    if len(lines) < 2:
        return lines, set()
    i = rng.randrange(len(lines))
    return lines[:i] + lines[i + 1:], {i}


def merge_tokens(lines: Lines, rng) -> Tuple[Lines, Set[int]]:
    if len(lines) < 2:
        return lines, set()
    i = rng.randrange(len(lines) - 1)
    (a, _, la), (b, _, _) = lines[i].rpartition(" : "), lines[i + 1].rpartition(" : ")
    return lines[:i] + [f"{a} {b} : {la}"] + lines[i + 2:], {i, i + 1}


def change_case(lines: Lines, rng) -> Tuple[Lines, Set[int]]:
    return [l.upper() if rng.random() < 0.5 else l.lower() for l in lines], set()


def no_prefix(lines: Lines, rng) -> Tuple[Lines, Set[int]]:
    out = [l.replace(" : B-", " : ").replace(" : I-", " : ") for l in lines]
    # adjacent entities of one type become one: those are the affected ones
    hit = {i for i in range(1, len(lines)) if " : B-" in lines[i] and lines[i - 1].rpartition(" : ")[2][2:] ==
           lines[i].rpartition(" : ")[2][2:]}
    return out, hit | {i - 1 for i in hit}


def repeat_line(lines: Lines, rng) -> Tuple[Lines, Set[int]]:
    i = rng.randrange(len(lines))
    return lines[: i + 1] + [lines[i]] + lines[i + 1:], set()


def split_token(lines: Lines, rng) -> Tuple[Lines, Set[int]]:
    cands = [i for i, l in enumerate(lines) if len(l.rpartition(" : ")[0]) >= 4]
    if not cands:
        return lines, set()
    i = rng.choice(cands)
    tok, _, lab = lines[i].rpartition(" : ")
    cont = "I-" + lab[2:] if lab != "O" else "O"
    return lines[:i] + [f"{tok[:2]} : {lab}", f"{tok[2:]} : {cont}"] + lines[i + 1:], set()


def truncate_half(lines: Lines, rng) -> Tuple[Lines, Set[int]]:
    k = len(lines) // 2
    return lines[: max(1, k)], set(range(max(1, k), len(lines)))


PERTURBATIONS: List[Tuple[str, Callable]] = [
    ("gold (no perturbation)", lambda l, r: (l, set())),
    ("dropped line", drop_line),
    ("merged tokens", merge_tokens),
    ("changed case", change_case),
    ("label without prefix", no_prefix),
    ("repeated line", repeat_line),
    ("split token", split_token),
    ("truncated to half", truncate_half),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev", default="corpus/dev.spacy")
    p.add_argument("--output")
    args = p.parse_args()

    import spacy
    from spacy.tokens import Doc, DocBin
    from spacy.training import Example

    import tokner.llm  # noqa: F401
    from tokner.llm import summarise_alignment
    from tokner.scoring.scorer import ALL_LABELS, score_paper_ner
    from tokner.answers.tags import doc_tags, sentence_token_lists

    vocab = spacy.blank("en").vocab
    gold = list(DocBin().from_disk(args.dev).get_docs(vocab))
    results = {}
    print(f"{'perturbation':<26}{'Avg F1':>8}{'micro5':>8}{'microAll':>9}{'aligned':>9}{'affected':>9}{'gold':>7}")
    for name, fn in PERTURBATIONS:
        rng = random.Random(0)
        affected = 0
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "answers.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for doc in gold:
                    tags = doc_tags(doc)
                    for sent in sentence_token_lists(doc):
                        lines = [f"{doc[i].text} : {tags[i]}" for i in sent]
                        new, hit = fn(list(lines), rng)
                        ents_hit = {e.start for e in doc.ents for k in hit if e.start <= sent[k] < e.end}
                        affected += len(ents_hit)
                        f.write(json.dumps({"tokens": [doc[i].text for i in sent], "response": "\n".join(new)}) + "\n")
            nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
            nlp.add_pipe("tokner_sentencizer")
            nlp.add_pipe("llm", config={
                "task": {"@llm_tasks": "tokner.TokenNER.v1", "labels": list(ALL_LABELS)},
                "model": {"@llm_models": "tokner.ReplayModel.v1", "path": str(path), "strict": True},
            })
            inputs = [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in gold]
            preds = list(nlp.pipe(inputs, batch_size=32))
        scores = score_paper_ner([Example(pr, g) for pr, g in zip(preds, gold)])
        align = summarise_alignment(preds)
        n_gold = sum(len(d.ents) for d in gold)
        results[name] = {"paper_avg_f": scores["paper_avg_f"], "paper_micro5_f": scores["paper_micro5_f"],
                         "paper_micro_f": scores["paper_micro_f"], "fully_aligned_fraction": align["fully_aligned_fraction"],
                         "affected_gold_entities": affected, "gold_entities": n_gold, "alignment": align}
        print(f"{name:<26}{scores['paper_avg_f']*100:>8.2f}{scores['paper_micro5_f']*100:>8.2f}"
              f"{scores['paper_micro_f']*100:>9.2f}{align['fully_aligned_fraction']*100:>8.1f}%{affected:>9}{n_gold:>7}")
    if args.output:
        write_json(args.output, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
