"""Constrained vs free generation with the same LoRA adapter on the same dev sentences.

    OMP_NUM_THREADS=1 python benchmarks/lora_benchmark.py training/lora/model-best corpus/dev.spacy \\
        --n 200 --threads 1 [--torch-dtype bfloat16] --output metrics/lora_benchmark.json

Both modes decode the first N dev sentences (document order, the pipeline's own
sentence/token units from the gold DocBin). Reported per mode: wall seconds,
sentences/s, paper Avg / micro-5 F1 (seqeval-equivalent, sentence-level), model
calls; for free generation the share of answers that aligned fully (well-formed);
the wall-time ratio free/constrained; peak resident memory (RSS) of the process
after loading and after each mode (and peak CUDA memory when on GPU).
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import spacy
from spacy.tokens import Doc, Span
from spacy.training import Example

from tokner.utils.textfile import write_json


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sentence_doc(vocab, words: Sequence[str], tags: Sequence[str]) -> Doc:
    from tokner.answers.tags import spans_from_tags

    doc = Doc(vocab, words=list(words), sent_starts=[True] + [False] * (len(words) - 1))
    doc.ents = [Span(doc, s, e, label=l) for s, e, l in spans_from_tags(tags)]
    return doc


def score(vocab, sents: List[Tuple[List[str], List[str]]], preds: List[List[str]]) -> dict:
    from tokner.scoring.scorer import score_paper_ner

    examples = [Example(sentence_doc(vocab, w, p), sentence_doc(vocab, w, g)) for (w, g), p in zip(sents, preds)]
    s = score_paper_ner(examples)
    return {k: s[k] for k in ("paper_avg_p", "paper_avg_r", "paper_avg_f", "paper_micro5_p", "paper_micro5_r",
                              "paper_micro5_f", "paper_micro_f")}


def run_mode(pipe, mode: str, sents, vocab, batch_size: int) -> dict:
    import torch

    pipe.decoding = mode
    pipe.cfg["batch_size"] = batch_size
    words = [w for w, _ in sents]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = pipe.predict_sentences(words, progress=True)
    seconds = time.perf_counter() - start
    stats = pipe.last_stats
    res = {"seconds": seconds, "sentences_per_second": len(sents) / seconds, "batch_size": batch_size,
           **score(vocab, sents, [t for t, _ in out]), **stats.to_dict(), "peak_rss_mb_after": rss_mb()}
    if torch.cuda.is_available():
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if mode == "free":
        res["well_formed_share"] = stats.well_formed / max(1, stats.sentences)
        res["answers_sample"] = stats.answers[:3]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="pipeline folder with a tokner_lora_ner pipe")
    p.add_argument("data", help="gold DocBin / BRAT folder / IOB CSV")
    p.add_argument("--n", type=int, default=200, help="number of dev sentences")
    p.add_argument("--batch-size", type=int, default=32, help="constrained decoding batch size")
    p.add_argument("--free-batch-size", type=int, default=32, help="free generation batch size (32 was faster than 16 in float32 on this CPU)")
    p.add_argument("--call-cost", default="auto",
                   help="constrained decoding's per-call cost in token slots (tokner.decoding.constrained.chunk_width): "
                        "a number, 'none' (always the longest chunk) or 'auto' (32 on CPU, none on GPU)")
    p.add_argument("--speculate", type=int, default=None,
                   help="constrained decoding: words guessed O ahead and verified in the same call "
                        "(default: the pipeline's speculate setting)")
    p.add_argument("--modes", default="constrained,free")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the pipeline's torch_threads setting, else torch's default)")
    p.add_argument("--torch-dtype", default=None,
                   help="float32 / bfloat16 / float16 for the model (default: the pipeline's torch_dtype setting)")
    p.add_argument("--output")
    args = p.parse_args()

    import torch

    from tokner.scoring.evaluation import load_gold_docs
    from tokner.lora.data import sentences_from_docs

    if args.threads:
        torch.set_num_threads(args.threads)
    call_cost = args.call_cost.lower()
    call_cost = None if call_cost == "none" else call_cost if call_cost == "auto" else float(call_cost)
    t0 = time.perf_counter()
    # the pipe loads its model in from_disk: settings that apply at load time go in as config overrides
    config = spacy.util.load_config(Path(args.model) / "config.cfg")
    name = next(n for n, c in config["components"].items() if c.get("factory") == "tokner_lora_ner")
    overrides = {}
    if args.threads:  # else the pipe's own torch_threads would replace ours when the model loads
        overrides[f"components.{name}.torch_threads"] = args.threads
    if args.torch_dtype:
        overrides[f"components.{name}.torch_dtype"] = args.torch_dtype
    nlp = spacy.load(args.model, config=overrides)
    pipe = nlp.get_pipe(name)
    pipe.cfg["call_cost"] = call_cost
    if args.speculate is not None:
        pipe.cfg["speculate"] = args.speculate
    _ = pipe.lm
    load_s = time.perf_counter() - t0
    sents = sentences_from_docs(load_gold_docs(Path(args.data), nlp), pipe.labels)[: args.n]
    result = {"model": args.model, "data": args.data, "sentences": len(sents), "words": sum(len(w) for w, _ in sents),
              "base_model": pipe.cfg["base_model"], "merged": pipe.cfg["merge_adapter"],
              "torch_dtype": str(next(pipe.lm.parameters()).dtype).replace("torch.", ""), "call_cost": call_cost,
              "speculate": pipe.cfg["speculate"], "threads": torch.get_num_threads(),
              "load_seconds": load_s, "peak_rss_mb_after_load": rss_mb()}
    for mode in args.modes.split(","):
        batch = args.batch_size if mode == "constrained" else args.free_batch_size
        result[mode] = run_mode(pipe, mode, sents, nlp.vocab, batch)
        print(mode, json.dumps({k: v for k, v in result[mode].items() if k != "answers_sample"}, indent=1))
        if args.output:  # after each mode, so a long free-generation run keeps the constrained numbers
            write_json(args.output, result)
    if "constrained" in result and "free" in result:
        result["free_over_constrained_time"] = result["free"]["seconds"] / result["constrained"]["seconds"]
        print(f"constrained is {result['free_over_constrained_time']:.2f}x faster than free generation")
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
