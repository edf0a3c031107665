"""Measure what sizes the LoRA training budget: sequence lengths and step time.

    nice -n 5 python benchmarks/lora_measure.py --steps 4 --batch-size 8 --threads 2

Prints token lengths of the training sequences (per instruction / input format) and
the mean time of LoRA training steps (real training code path: encode_example,
bucketed_batches, collate, peft LoRA, AdamW) on length-bucketed batches.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import spacy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--train", default="corpus/train.spacy")
    p.add_argument("--instruction", default="short")
    p.add_argument("--input-format", default="lines")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--loss-on", default="answer")
    p.add_argument("--output")
    args = p.parse_args()

    import torch

    from tokner.lora.data import bucketed_batches, collate, encode_example, read_docbin, sentences_from_docs
    from tokner.lora.modeling import attach_adapter, load_base_model, load_tokenizer, make_lora_config
    from tokner.lora.prompt import PromptCodec
    from tokner.scoring.scorer import ALL_LABELS

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.base_model)
    codec = PromptCodec(tok, ALL_LABELS, args.instruction, args.input_format)
    sents = sentences_from_docs(read_docbin(args.train, spacy.blank("en").vocab), ALL_LABELS)
    enc = [encode_example(codec, w, t, 512, args.loss_on) for w, t in sents]
    L = np.array([len(e.input_ids) for e in enc])
    out = {"sentences": len(sents), "words_mean": float(np.mean([len(w) for w, _ in sents])),
           "tokens_mean": float(L.mean()), "tokens_p95": float(np.percentile(L, 95)), "tokens_max": int(L.max()),
           "threads": torch.get_num_threads(), "batch_size": args.batch_size}
    model = attach_adapter(load_base_model(args.base_model, "cpu", "float32"), lora_config=make_lora_config(args.r, 2 * args.r))
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    batches = bucketed_batches(L.tolist(), args.batch_size, seed=0)
    times, pad_tokens, real_tokens = [], 0, 0
    for b in batches[: args.steps + 1]:
        batch = collate([enc[i] for i in b], codec.pad_id)
        t = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
        real_tokens += int(batch["attention_mask"].sum())
        pad_tokens += batch["attention_mask"].numel()
    times = times[1:]  # first step warms up
    out.update({"sec_per_step": statistics.mean(times), "steps_timed": len(times),
                "padding_share": 1 - real_tokens / pad_tokens,
                "steps_per_epoch": int(np.ceil(len(enc) / args.batch_size)),
                "epoch_hours": statistics.mean(times) * np.ceil(len(enc) / args.batch_size) / 3600})
    print(json.dumps(out, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
