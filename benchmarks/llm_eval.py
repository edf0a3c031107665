"""Evaluate an llm pipeline (a saved folder, or a config assembled on the fly) on
the first sentences of dev with the paper's metric.

    nice -n 5 python benchmarks/llm_eval.py configs/llm_zero.cfg --max-sentences 60 \
        --output metrics/llm_zero.json [--set paths.llm_model=...]
    python benchmarks/llm_eval.py training/llm_zero --max-sentences 60   # after spacy assemble

Whole documents are taken in corpus order until --max-sentences is reached (the
last one may overshoot); the pipeline runs on the gold tokens (as ``spacy
evaluate`` does). Prints the paper table, micro-5, the fraction of sentences
whose answer aligned fully and sentences/second (generation only).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tokner.utils.textfile import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a .cfg file (assembled here) or a pipeline folder")
    p.add_argument("--dev", default="corpus/dev.spacy")
    p.add_argument("--max-sentences", type=int, default=0, help="0: all of dev")
    p.add_argument("--docs", default=":", help="dev documents to take from, as START:END (default all): "
                   "split one evaluation over several processes, then join with `tokner score-docs`")
    p.add_argument("--output")
    p.add_argument("--save-pipeline", help="also write the assembled pipeline here")
    p.add_argument("--responses", help="write the raw responses as JSONL ({tokens, response} per prompt): "
                                      "replay them with configs/llm_replay.cfg to re-score without generating")
    p.add_argument("--save-docs", help="write the predicted Docs as a DocBin (for `tokner compare`)")
    p.add_argument("--set", action="append", default=[], help="config override key=value (JSON value or string)")
    args = p.parse_args()

    import spacy
    from spacy.tokens import Doc, DocBin
    from spacy.training import Example
    from tqdm import tqdm

    import tokner.llm  # noqa: F401  (registers the task and models)
    from tokner.scoring.evaluation import format_table
    from tokner.llm import summarise_alignment
    from tokner.scoring.scorer import score_paper_ner
    from tokner.answers.tags import sentence_token_lists

    from tokner.cli import parse_set_overrides

    overrides = parse_set_overrides(args.set)
    if args.responses:
        overrides["components.llm.save_io"] = True
    t0 = time.perf_counter()
    if Path(args.config).is_dir():
        nlp = spacy.load(args.config, config=overrides)
    else:
        config = spacy.util.load_config(args.config, overrides=overrides, interpolate=False)
        nlp = spacy.util.load_model_from_config(config, auto_fill=True)
        nlp.initialize()
    build_s = time.perf_counter() - t0
    if args.save_pipeline:
        nlp.to_disk(args.save_pipeline)

    gold = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    from tokner.scoring.evaluation import parse_doc_slice

    gold = gold[parse_doc_slice(args.docs)]
    docs, n_sents = [], 0
    for g in gold:
        if args.max_sentences and n_sents >= args.max_sentences:
            break
        docs.append(g)
        n_sents += len(sentence_token_lists(g))
    inputs = [Doc(nlp.vocab, words=[t.text for t in g], spaces=[bool(t.whitespace_) for t in g]) for g in docs]
    t0 = time.perf_counter()
    preds = []
    with tqdm(total=n_sents, desc=Path(args.config).stem, unit="sent") as bar:
        for doc in nlp.pipe(inputs, batch_size=nlp.batch_size):
            preds.append(doc)
            bar.update(len(sentence_token_lists(doc)))
    seconds = time.perf_counter() - t0
    examples = [Example(p, g) for p, g in zip(preds, docs)]
    if args.responses:
        with Path(args.responses).open("w", encoding="utf-8") as f:
            for doc in preds:
                io = doc.user_data.get("llm_io", {}).get("llm", {})
                for unit, resp in zip(sentence_token_lists(doc), io.get("response", [])):
                    f.write(json.dumps({"tokens": [doc[i].text for i in unit], "response": resp}) + "\n")
    if args.save_docs:
        Path(args.save_docs).parent.mkdir(parents=True, exist_ok=True)
        DocBin(docs=preds).to_disk(args.save_docs)
    scores = score_paper_ner(examples)
    align = summarise_alignment(preds)
    scores.update({
        "config": args.config, "overrides": overrides, "docs": len(docs), "doc_slice": args.docs, "sentences": n_sents,
        "seconds": seconds, "sentences_per_second": n_sents / seconds if seconds else 0.0,
        "speed_words_per_second": sum(1 for d in docs for t in d if not t.is_space) / seconds if seconds else 0.0,
        "setup_seconds": build_s, "alignment": align,
    })
    print(format_table(scores))
    print(f"{len(docs)} docs, {n_sents} sentences: paper Avg F1 {scores['paper_avg_f']*100:.2f}, "
          f"micro-5 F1 {scores['paper_micro5_f']*100:.2f}, fully aligned {align['fully_aligned_fraction']*100:.1f}%, "
          f"{scores['sentences_per_second']:.3f} sentences/s (setup {build_s:.0f} s)")
    if args.output:
        write_json(args.output, scores, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
