"""LoRA training step time and loss, float32 against bf16 autocast, same data and seed.

    OMP_NUM_THREADS=1 python benchmarks/lora_step_time.py --steps 30 --output metrics/lora_step_time.json

Trains configs/lora.cfg's recipe for --steps optimizer steps (no evaluation, no checkpoints)
once per ``[lora] autocast`` setting, one thread each, one after the other, and reports the
mean seconds per step and the mean loss of
the last steps. Equal losses at equal steps say the cheaper arithmetic trains the same.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tokner.utils.textfile import write_json


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/lora.cfg")
    p.add_argument("--train", default="corpus/train.spacy")
    p.add_argument("--base-model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--settings", default="float32,bfloat16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attention", default="auto", help="[lora] attention: auto (eager on a CPU), eager or sdpa")
    p.add_argument("--dropout", type=float, default=None, help="[lora] dropout (default: the config's)")
    p.add_argument("--output")
    args = p.parse_args()

    import torch

    from tokner.utils.hardware import cpu_has_native_bf16
    from tokner.lora.train import train

    torch.set_num_threads(args.threads)
    results = {"steps": args.steps, "threads": args.threads, "attention": args.attention, "dropout": args.dropout,
               "native_bf16": cpu_has_native_bf16(), "runs": {}}
    for setting in args.settings.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            overrides = {"paths.train": args.train, "paths.dev": "", "paths.base_model": args.base_model,
                         "lora.max_steps": args.steps, "lora.max_minutes": 0, "lora.eval_every": 0,
                         "lora.save_every": 0, "lora.autocast": setting, "lora.torch_threads": args.threads,
                         "lora.warmup_steps": 0, "lora.attention": args.attention}
            if args.dropout is not None:
                overrides["lora.dropout"] = args.dropout
            t0 = time.perf_counter()
            summary = train(args.config, Path(tmp) / "out", overrides, progress=False)
            wall = time.perf_counter() - t0
        results["runs"][setting] = {"sec_per_step": summary["sec_per_step_this_run"],
                                    "loss_last_20": summary["loss_last_20_this_run"],
                                    "train_seconds": summary["train_seconds"], "wall_seconds": wall,
                                    "tokens_seen": summary["tokens_seen_this_run"]}
        print(setting, json.dumps(results["runs"][setting]))
    if "float32" in results["runs"] and "bfloat16" in results["runs"]:
        results["speedup_bf16"] = results["runs"]["float32"]["sec_per_step"] / results["runs"]["bfloat16"]["sec_per_step"]
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
