"""Where a LoRA training step's time goes, lever by lever, on the same batches.

    OMP_NUM_THREADS=1 python benchmarks/lora_step_levers.py --steps 8 --output metrics/lora_step_levers.json

configs/lora.cfg's model and adapter (SmolLM2-135M-Instruct, r 16 on every linear layer,
AdamW), the same ``--steps`` batches of ``--batch-size`` train sentences for every variant, one
optimizer step each (forward, backward, AdamW), after one untimed warm-up step:

* ``float32``: float32 weights, full forward (``model(**batch).loss``);
* ``autocast``: ``torch.autocast`` bf16 over float32 weights, full forward;
* ``bf16_base``: the frozen base in bf16 (adapter float32), autocast, full forward;
* ``bf16_base_answer_head``: as ``bf16_base`` with :func:`tokner.lora.train.answer_loss`
  (the LM head only at labelled positions): what ``tokner.lora train`` does in bf16;
* ``bf16_base_answer_head_eager``: as that with eager attention instead of SDPA;
* ``bf16_base_answer_head_nodropout``: as ``bf16_base_answer_head`` with LoRA dropout 0
  (the recipe has 0.05; peft draws a dropout mask for each adapted layer's input).

``--profile`` adds torch.profiler's top operators (self CPU time) for the variant it names.
The hand loop here is not the training code (that is transformers' ``Trainer``,
benchmarks/lora_step_time.py); it isolates the arithmetic.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tokner.utils.textfile import write_json

VARIANTS = ("float32", "autocast", "bf16_base", "bf16_base_answer_head", "bf16_base_answer_head_eager",
            "bf16_base_answer_head_nodropout")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/lora.cfg")
    p.add_argument("--train", default="corpus/train.spacy")
    p.add_argument("--base-model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--profile", default="", help="a variant to profile with torch.profiler")
    p.add_argument("--output")
    args = p.parse_args()

    import torch

    from tokner.lora.data import bucketed_batches, collate, encode_example, read_docbin, sentences_from_docs
    from tokner.lora.modeling import attach_adapter, load_base_model, make_lora_config
    from tokner.lora.train import answer_loss, find_lora_pipe, load_training_config, set_seed
    from tokner.utils.hardware import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    nlp, _, T = load_training_config(args.config, {"paths.base_model": args.base_model})
    _, pipe = find_lora_pipe(nlp)
    codec = pipe.codec
    sents = sentences_from_docs(read_docbin(args.train, nlp.vocab), pipe.labels)
    encoded = [encode_example(codec, w, t, int(T["max_length"]), T["loss_on"]) for w, t in sents]
    order = bucketed_batches([len(e.input_ids) for e in encoded], args.batch_size, int(T["seed"]), int(T["bucket_factor"]))
    batches = [collate([encoded[i] for i in b], codec.pad_id) for b in order[: args.steps + 1]]

    results = {"steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
               "native_bf16": cpu_has_native_bf16(), "tokens_per_step": sum(int(b["attention_mask"].sum()) for b in batches[1:]) / args.steps,
               "runs": {}}
    for variant in args.variants.split(","):
        set_seed(int(T["seed"]))
        bf16_base = variant.startswith("bf16_base")
        base = load_base_model(args.base_model, "cpu", "bfloat16" if bf16_base else "float32", for_training=True)
        if variant.endswith("eager"):
            base.config._attn_implementation = "eager"
        base.config.use_cache = False
        dropout = 0.0 if variant.endswith("nodropout") else float(T["dropout"])
        lcfg = make_lora_config(int(T["r"]), int(T["alpha"]), dropout, T["target_modules"], T["layers_to_transform"])
        model = attach_adapter(base, lora_config=lcfg)
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(T["learning_rate"]))
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant != "float32")
        head_only = "answer_head" in variant

        def step(batch):
            with amp:
                loss = answer_loss(model, batch) if head_only else model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss)

        step(batches[0])  # warm-up
        losses, times = [], []
        prof = None
        if variant == args.profile:
            from torch.profiler import ProfilerActivity, profile

            prof = profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
        for batch in batches[1:]:
            t0 = time.perf_counter()
            losses.append(step(batch))
            times.append(time.perf_counter() - t0)
        run = {"sec_per_step": sum(times) / len(times), "mean_loss": sum(losses) / len(losses)}
        if prof is not None:
            prof.__exit__(None, None, None)
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events) or 1
            run["top_ops_self_cpu_share"] = {e.key: round(e.self_cpu_time_total / total, 3) for e in events[:10]}
        results["runs"][variant] = run
        print(variant, json.dumps(run), flush=True)
        del model, base, opt
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
