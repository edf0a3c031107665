"""``python -m tokner.lora train CONFIG OUTPUT [--resume] [--lora.max_minutes 25] [--paths.train ...]``
``python -m tokner.lora tune-bias MODEL DATA [--docs 0:52] [--output JSON] [--save DIR]``

Extra ``--section.key value`` arguments override the config, as in ``spacy train``.
``tune-bias`` picks the constrained decoder's per-type ``label_bias`` on gold data
(see :mod:`tokner.lora.bias`) and can write a copy of the pipeline that uses it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    from tokner.cli import parse_dotted_overrides

    p = argparse.ArgumentParser(prog="python -m tokner.lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="LoRA-tune the pipeline's base model; writes OUTPUT/model-best")
    t.add_argument("config")
    t.add_argument("output")
    t.add_argument("--resume", action="store_true", help="continue from the newest OUTPUT/checkpoints/checkpoint-N")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("-v", "--verbose", action="store_true")
    b = sub.add_parser("tune-bias", help="choose the constrained decoder's per-type label_bias on gold data")
    b.add_argument("model", help="a pipeline directory with a tokner_lora_ner pipe")
    b.add_argument("data", help="gold DocBin, BRAT folder or IOB CSV (dev: never tune on test)")
    b.add_argument("--docs", default=":", help="documents to tune on, as a Python slice START:END (default all)")
    b.add_argument("--metric", default="paper_avg_f", help="score to maximise (default paper_avg_f)")
    b.add_argument("--labels", help="comma-separated types to tune (default: the pipe's labels among the paper's five)")
    b.add_argument("--o-values", default="0", help="comma-separated 'O' offsets to try, one decoding pass each "
                   "(default 0: no O offset)")
    b.add_argument("--folds", type=int, default=0, help="also estimate out-of-fold: offsets chosen on the other "
                   "folds, replayed on each fold (0: off)")
    b.add_argument("--output", help="write the result as JSON")
    b.add_argument("--save", help="write a copy of the pipeline with the chosen label_bias here")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("-v", "--verbose", action="store_true")
    args, extra = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "tune-bias":
        if extra:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        return tune_bias_command(args)
    overrides = parse_dotted_overrides(extra)
    from tokner.lora.train import train

    summary = train(args.config, args.output, overrides, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2, default=str))
    return 0


def tune_bias_command(args) -> int:
    from pathlib import Path

    import spacy
    import srsly

    from tokner.scoring.evaluation import load_gold_docs, parse_doc_slice
    from tokner.lora.bias import save_with_label_bias, tune_label_bias

    try:
        docs = parse_doc_slice(args.docs)
    except ValueError as e:
        raise SystemExit(f"--docs: {e}") from None
    nlp = spacy.load(args.model)
    docs = load_gold_docs(Path(args.data), nlp)[docs]
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    try:
        o_values = [float(x) for x in args.o_values.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--o-values expects comma-separated numbers, got {args.o_values!r}") from None
    result = tune_label_bias(nlp, docs, metric=args.metric, labels=labels, o_values=o_values,
                             folds=args.folds, progress=not args.no_progress)
    result.update({"model": args.model, "data": args.data, "doc_slice": args.docs})
    if args.save:
        result["saved"] = args.save
    if args.output:  # before saving: a failed save keeps the (slow) result
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        srsly.write_json(args.output, result)
    if args.save:
        save_with_label_bias(args.model, result["label_bias"], args.save, result["pipe"])
    short = dict(result, passes=[{k: v for k, v in p.items() if k != "decode"} for p in result["passes"]])
    print(json.dumps(short, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
