"""Real (not replayed) cross-fitted scores of ``label_bias`` chosen by ``tune-bias --folds K``.

    python -m tokner.lora tune-bias training/lora/model-best corpus/dev.spacy --folds 2 \\
        --output metrics/lora_bias.json
    OMP_NUM_THREADS=1 python benchmarks/lora_bias_crossfit.py training/lora/model-best corpus/dev.spacy \\
        metrics/lora_bias.json --jobs 2 --output metrics/lora_bias_crossfit.json

For each fold of the tuning result, a copy of the pipeline with the offsets chosen on
the *other* folds (and the tuned ``O`` offset) decodes that fold's documents with
``tokner evaluate --docs``; the folds' predicted Docs are then scored together with
``tokner score-docs``. So every document is decoded for real, with offsets that were
not chosen on it. ``--jobs`` runs folds in parallel processes (one torch thread each).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokner.utils.textfile import write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("tuning", help="JSON written by `python -m tokner.lora tune-bias --folds K --output ...`")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--output")
    p.add_argument("--keep", help="keep the per-fold pipelines and predictions in this folder")
    args = p.parse_args(argv)

    from tokner.scoring.evaluation import parse_doc_slice
    from tokner.lora.bias import save_with_label_bias

    tuning = json.loads(Path(args.tuning).read_text())
    cross = tuning.get("cross_fitted")
    if not cross:
        raise SystemExit(f"{args.tuning} has no cross_fitted result: run tune-bias with --folds 2 or more")
    # fold ranges are relative to the documents tune-bias was given (its --docs slice)
    tuned = tuning.get("doc_slice", ":")
    offset = parse_doc_slice(tuned).start or 0
    if offset < 0:
        raise SystemExit(f"{args.tuning}: tuned on --docs {tuned}; use a non-negative start")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bias-crossfit-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    procs, preds, folds = [], [], []
    start = time.perf_counter()
    for k, fold in enumerate(cross["folds"]):
        bias = dict(fold["chosen_on_other_folds"])
        if cross.get("O"):
            bias["O"] = cross["O"]
        model_k = work / f"fold{k}-model"
        save_with_label_bias(args.model, bias, model_k)
        pred, metrics = work / f"fold{k}.spacy", work / f"fold{k}.json"
        a, b = (int(x) for x in fold["docs"].split(":"))
        docs = f"{offset + a}:{offset + b}"
        cmd = [sys.executable, "-m", "tokner", "evaluate", str(model_k), args.data, "--docs", docs,
               "--save-docs", str(pred), "--output", str(metrics)]
        preds.append(str(pred))
        folds.append({"doc_slice": docs, "label_bias": bias, "metrics": str(metrics)})
        while len([q for q in procs if q.poll() is None]) >= max(1, args.jobs):
            time.sleep(2)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    for q, f in zip(procs, folds):
        if q.wait() != 0:
            raise SystemExit(f"evaluate of fold {f['doc_slice']} failed (exit {q.returncode})")
    joined = work / "joined.json"
    subprocess.run([sys.executable, "-m", "tokner", "score-docs", args.data, *preds, "--docs", tuned, "--output",
                    str(joined)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    scores = json.loads(joined.read_text())
    for f in folds:
        m = json.loads(Path(f["metrics"]).read_text())
        f.update({k: m[k] for k in ("paper_avg_f", "paper_micro5_f", "paper_micro_f", "docs")})
    out = {
        "model": args.model, "data": args.data, "tuning": args.tuning, "folds": folds,
        "paper_avg_f": scores["paper_avg_f"], "paper_micro5_f": scores["paper_micro5_f"],
        "paper_micro_f": scores["paper_micro_f"], "docs": scores["docs"],
        "per_type_f": {k: round(v["f"], 4) for k, v in scores["spans_paper_per_type"].items()},
        "replayed_estimate": cross["replayed"], "wall_seconds": round(time.perf_counter() - start, 1),
        "jobs": args.jobs,
    }
    print(json.dumps(out, indent=2))
    if args.output:
        write_json(args.output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
