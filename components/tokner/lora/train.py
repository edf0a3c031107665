"""LoRA fine-tuning of the ``tokner_lora_ner`` pipe's base model on RareDis sentences.

A plain PyTorch loop (peft LoRA, AdamW), driven by a spaCy-style config
(``configs/lora.cfg``): the ``[nlp]``/``[components]`` sections define the pipeline
that is saved, the ``[lora]`` section the training. Features: loss on the answer
only, length-bucketed batches, seeds, a budget in steps, epochs and/or minutes,
dev evaluation with the constrained decoder every ``eval_every`` steps and selection
of the best adapter, resumable checkpoints (adapter, optimizer, scheduler, RNG and
data position), a progress bar. Output folder::

    OUTPUT/checkpoints/last/   adapter + trainer_state.pt (resume from here)
    OUTPUT/checkpoints/best/   adapter with the best dev score
    OUTPUT/model-best/         spaCy pipeline with the best adapter
    OUTPUT/model-last/         spaCy pipeline with the last adapter
    OUTPUT/training_log.jsonl  one line per evaluation
    OUTPUT/summary.json        budget, timings, peak memory, best scores
"""
from __future__ import annotations

import json
import logging
import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spacy import util
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "layers_to_transform": None,
    "learning_rate": 2e-4,
    "weight_decay": 0.0,
    "lr_scheduler": "constant",
    "warmup_steps": 10,
    "batch_size": 8,
    "grad_accum": 1,
    "max_grad_norm": 1.0,
    "max_length": 512,
    "bucket_factor": 50,
    "loss_on": "answer",
    "max_epochs": 1,
    "max_steps": 0,
    "max_minutes": 0.0,
    "eval_every": 50,
    "eval_docs": 20,
    "eval_batch_size": 32,
    "selection_metric": "paper_micro5_f",
    "save_every": 25,
    "gradient_checkpointing": False,
    "train_limit": 0,
    # label -> integer factor: sentences with that label appear that often per epoch
    "oversample": {},
    "log_every": 10,
    "torch_threads": 0,
    # "float32"; "bfloat16": forward and backward under torch.autocast in bf16 (adapter
    # weights and optimizer state stay float32); "fastest": bfloat16 where the device
    # computes it natively (tokner.utils.hardware), else float32
    "autocast": "float32",
}

AUTOCAST = ("float32", "bfloat16", "fastest")


def resolve_autocast(setting: str, device) -> str:
    """``"float32"`` or ``"bfloat16"`` for ``[lora] autocast`` on ``device``."""
    if setting not in AUTOCAST:
        raise ValueError(f"[lora] autocast must be one of {', '.join(AUTOCAST)}, got {setting!r}")
    if setting == "fastest":
        from tokner.utils.hardware import fastest_dtype

        return "bfloat16" if fastest_dtype(str(device)) == "bfloat16" else "float32"
    return setting


def autocast_context(setting: str, device):
    """The ``torch.autocast`` context for ``[lora] autocast`` on ``device`` (a no-op for float32)."""
    import contextlib

    import torch

    if resolve_autocast(setting, device) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def answer_loss(model, batch) -> "torch.Tensor":
    """The mean next-token cross-entropy over the labelled positions: the value of
    ``model(**batch).loss``, with the LM head and the softmax computed only where a label is.

    The loss is on the answer, about half of each sequence, and the LM head of SmolLM2
    (576 x 49,152) with its log-softmax is the costliest layer per position: with bf16 base
    weights, one thread on the AMX Xeon, this is 2.54 s per step against 2.69 s for the full
    forward (benchmarks/lora_step_time.py, docs/methods.md). Models whose forward changes the
    logits after the head (soft-capping, a logit scale) take the full forward.
    """
    import torch

    from tokner.lora.data import IGNORE

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    cfg = base.config
    if (head is None or decoder is None or decoder is base or getattr(cfg, "final_logit_softcapping", None)
            or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0)):
        return model(**batch).loss
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)


def peak_gpu_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def set_seed(seed: int) -> None:
    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def find_lora_pipe(nlp: Language):
    from tokner.lora.component import LoraNER

    for name, proc in nlp.pipeline:
        if isinstance(proc, LoraNER):
            return name, proc
    raise ValueError(f"the pipeline {nlp.pipe_names} has no tokner_lora_ner component")


def load_training_config(config_path, overrides: Optional[Dict[str, Any]] = None):
    """(nlp, interpolated config, training settings) from a config file + overrides."""
    config_path = Path(config_path)
    if not config_path.exists():
        raise FileNotFoundError(f"config not found: {config_path}")
    config = util.load_config(config_path, overrides=overrides or {}, interpolate=False)
    nlp = util.load_model_from_config(config, auto_fill=True, validate=True)
    resolved = config.interpolate()
    settings = dict(TRAIN_DEFAULTS)
    unknown = set(resolved.get("lora", {})) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"{config_path}: unknown settings in [lora]: {sorted(unknown)}")
    settings.update(resolved.get("lora", {}))
    if settings["autocast"] not in AUTOCAST:
        raise ValueError(f"{config_path}: [lora] autocast must be one of {', '.join(AUTOCAST)}, "
                         f"got {settings['autocast']!r}")
    return nlp, resolved, settings


def score_sentence_tags(gold_docs: Sequence[Doc], index: Sequence[Sequence[Sequence[int]]],
                        sentence_tags: Sequence[Sequence[str]]) -> Dict[str, Any]:
    """Paper scores of per-sentence tags against gold docs.

    ``index[d]`` lists doc ``d``'s sentences as token indices
    (:func:`tokner.answers.tags.sentence_token_lists`); ``sentence_tags`` holds one tag list per
    sentence, in doc then sentence order. Tokens outside those sentences count as ``O``.
    """
    from tokner.scoring.scorer import score_paper_ner
    from tokner.answers.tags import spans_from_tags

    it = iter(sentence_tags)
    examples = []
    for gold, ss in zip(gold_docs, index):
        pred = Doc(gold.vocab, words=[t.text for t in gold], spaces=[bool(t.whitespace_) for t in gold],
                   sent_starts=[bool(t.is_sent_start) for t in gold])
        tags = ["O"] * len(pred)
        for s in ss:
            for i, t in zip(s, next(it)):
                tags[i] = t
        spans = spans_from_tags(tags, [bool(t.is_sent_start) for t in pred], [t.is_space for t in pred])
        pred.ents = [pred.char_span(pred[s].idx, pred[e - 1].idx + len(pred[e - 1]), label=l) for s, e, l in spans]
        examples.append(Example(pred, gold))
    return score_paper_ner(examples)


def evaluate_adapter(model, codec, gold_docs: Sequence[Doc], batch_size: int, bio: bool = True,
                     progress: bool = False) -> Dict[str, Any]:
    """Paper scores of constrained decoding on gold docs (their own tokens and sentences)."""
    from tokner.answers.tags import sentence_words
    from tokner.decoding.constrained import constrained_decode

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    index, sents = sentence_words(gold_docs)
    results, stats = constrained_decode(model, codec, sents, batch_size=batch_size, bio=bio, progress=progress)
    scores = score_sentence_tags(gold_docs, index, [tags for tags, _ in results])
    if was_training:
        model.train()
    out = {k: v for k, v in scores.items() if isinstance(v, float)}
    out.update({"eval_seconds": time.perf_counter() - start, "eval_sentences": len(sents), **stats.to_dict()})
    return out


def _lr_lambda(kind: str, warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant" or not total:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"lr_scheduler must be constant, linear or cosine, got {kind!r}")

    return fn


def train(config_path, output_dir, overrides: Optional[Dict[str, Any]] = None, resume: bool = False,
          progress: bool = True) -> Dict[str, Any]:
    """Train the adapter and write the pipelines; returns the summary dict."""
    import torch
    from peft import set_peft_model_state_dict
    from tqdm import tqdm

    from tokner.scoring.evaluation import load_gold_docs
    from tokner.lora.data import bucketed_batches, collate, encode_example, oversample_indices, read_docbin, sentences_from_docs
    from tokner.lora.modeling import (adapter_state, attach_adapter, load_base_model, make_lora_config, require_lora_deps,
                           save_adapter)

    require_lora_deps()
    wall_start = time.perf_counter()
    output_dir = Path(output_dir)
    nlp, config, T = load_training_config(config_path, overrides)
    pipe_name, pipe = find_lora_pipe(nlp)
    pcfg = pipe.cfg
    set_seed(int(T["seed"]))
    if int(T["torch_threads"]):
        torch.set_num_threads(int(T["torch_threads"]))
    codec = pipe.codec

    # -- data -------------------------------------------------------------------
    paths = config.get("paths", {})
    train_path, dev_path = paths.get("train"), paths.get("dev")
    if not train_path:
        raise ValueError(f"{config_path}: set [paths] train (a DocBin)")
    train_docs = read_docbin(train_path, nlp.vocab)
    train_sents = sentences_from_docs(train_docs, pipe.labels)
    if T["train_limit"]:
        train_sents = train_sents[: int(T["train_limit"])]
    encoded = [encode_example(codec, w, t, int(T["max_length"]), T["loss_on"]) for w, t in
               tqdm(train_sents, desc="encode train", unit="sent", disable=not progress)]
    n_truncated = sum(e.truncated for e in encoded)
    pool = oversample_indices([t for _, t in train_sents], T["oversample"], pipe.labels)
    lengths = [len(encoded[i].input_ids) for i in pool]
    dev_docs = load_gold_docs(Path(dev_path), nlp)[: int(T["eval_docs"]) or None] if dev_path else []
    bs, accum = int(T["batch_size"]), max(1, int(T["grad_accum"]))
    micro_per_epoch = math.ceil(len(pool) / bs)
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    max_steps = int(T["max_steps"]) or steps_per_epoch * int(T["max_epochs"])
    max_steps = min(max_steps, steps_per_epoch * int(T["max_epochs"])) if int(T["max_epochs"]) else max_steps
    budget_s = float(T["max_minutes"]) * 60.0

    # -- model --------------------------------------------------------------------
    from tokner.lora.modeling import resolve_device

    precision = resolve_autocast(T["autocast"], resolve_device(pcfg["device"]))
    # bf16 training keeps the frozen base weights in bf16 (peft keeps the adapter and
    # AdamW's state in float32): autocast would otherwise cast every weight on every
    # forward and backward. 2.69 s per step against 3.04 s for bf16 autocast over float32
    # weights (one thread, AMX Xeon; float32 3.46 s): docs/methods.md
    base_dtype = "bfloat16" if precision == "bfloat16" and not pcfg["load_in_4bit"] else pcfg["torch_dtype"]
    base = load_base_model(pcfg["base_model"], pcfg["device"], base_dtype, pcfg["load_in_4bit"], for_training=True)
    device = next(base.parameters()).device
    if T["gradient_checkpointing"]:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    base.config.use_cache = False
    if pipe.adapter:
        model = attach_adapter(base, pipe.adapter, trainable=True)
    else:
        lcfg = make_lora_config(int(T["r"]), int(T["alpha"]), float(T["dropout"]), T["target_modules"],
                                T["layers_to_transform"])
        model = attach_adapter(base, lora_config=lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=float(T["learning_rate"]), weight_decay=float(T["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(T["lr_scheduler"], int(T["warmup_steps"]), max_steps))

    ckpt_dir = output_dir / "checkpoints"
    last_dir, best_dir = ckpt_dir / "last", ckpt_dir / "best"
    state: Dict[str, Any] = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "best_score": -1.0, "best_step": -1,
                             "train_seconds": 0.0, "tokens_seen": 0, "last_eval_step": -1}
    if resume and (last_dir / "trainer_state.pt").exists():
        saved = torch.load(last_dir / "trainer_state.pt", weights_only=False)
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(last_dir / "adapter_model.safetensors")))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        random.setstate(saved["rng_python"])
        torch.set_rng_state(saved["rng_torch"])
        state.update(saved["state"])
        logger.info("resumed from %s at step %d", last_dir, state["step"])
    elif resume:
        logger.warning("--resume given but %s has no checkpoint: starting fresh", last_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "training_log.jsonl"

    def save_last() -> None:
        cfg_, st = adapter_state(model)
        save_adapter(last_dir, cfg_, st)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng_python": random.getstate(), "rng_torch": torch.get_rng_state(), "state": dict(state)},
                   last_dir / "trainer_state.pt")

    def run_eval() -> Optional[Dict[str, Any]]:
        if not dev_docs:
            return None
        model.config.use_cache = True
        scores = evaluate_adapter(model, codec, dev_docs, int(T["eval_batch_size"]), pcfg["bio_constraint"])
        model.config.use_cache = False
        score = float(scores[T["selection_metric"]])
        record = {"step": state["step"], "epoch": state["epoch"], "train_seconds": round(state["train_seconds"], 1),
                  "score": score, **{k: scores[k] for k in ("paper_avg_f", "paper_micro5_f", "paper_micro_f",
                                                             "eval_seconds", "decisions_per_word")}}
        state["last_eval_step"] = state["step"]
        if score > state["best_score"]:
            state["best_score"], state["best_step"] = score, state["step"]
            cfg_, st = adapter_state(model)
            save_adapter(best_dir, cfg_, st)
            record["best"] = True
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return record

    # -- loop -------------------------------------------------------------------------
    model.train()
    amp = autocast_context(T["autocast"], device)  # resolved once; torch.autocast can be re-entered
    bar = tqdm(total=max_steps, initial=state["step"], desc="train-lora", unit="step", disable=not progress)
    step_times: List[float] = []
    stop_reason = "max_steps" if state["step"] >= max_steps else None
    losses: List[float] = []
    t_mark = time.perf_counter()
    while stop_reason is None:
        batches = bucketed_batches(lengths, bs, int(T["seed"]) + state["epoch"], int(T["bucket_factor"]))
        for mi in range(state["micro_in_epoch"], len(batches)):
            batch = collate([encoded[pool[i]] for i in batches[mi]], codec.pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with amp:
                loss = answer_loss(model, batch)
            (loss / accum).backward()
            losses.append(loss.item())
            state["tokens_seen"] += int(batch["attention_mask"].sum())
            state["micro_in_epoch"] = mi + 1
            if (mi + 1) % accum and mi + 1 < len(batches):
                continue
            if T["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(params, float(T["max_grad_norm"]))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            now = time.perf_counter()
            step_times.append(now - t_mark)
            state["train_seconds"] += now - t_mark
            bar.update(1)
            if state["step"] % max(1, int(T["log_every"])) == 0 or state["step"] == 1:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", best=f"{state['best_score']:.3f}")
            if T["eval_every"] and state["step"] % int(T["eval_every"]) == 0:
                rec = run_eval()
                if rec:
                    bar.write(f"step {rec['step']}: {T['selection_metric']}={rec['score']:.4f} "
                              f"avg_f={rec['paper_avg_f']:.4f} ({rec['eval_seconds']:.0f}s)")
            if T["save_every"] and state["step"] % int(T["save_every"]) == 0:
                save_last()
            if state["step"] >= max_steps:
                stop_reason = "max_steps"
            elif budget_s and state["train_seconds"] >= budget_s:
                stop_reason = "max_minutes"
            t_mark = time.perf_counter()
            if stop_reason:
                break
        else:
            state["epoch"] += 1
            state["micro_in_epoch"] = 0
            if T["max_epochs"] and state["epoch"] >= int(T["max_epochs"]):
                stop_reason = "max_epochs"
    bar.close()
    if state["last_eval_step"] != state["step"]:
        rec = run_eval()
        if rec:
            print(f"final step {rec['step']}: {T['selection_metric']}={rec['score']:.4f} avg_f={rec['paper_avg_f']:.4f}")
    save_last()
    if not best_dir.exists():  # no dev set: the last adapter is the best we know
        cfg_, st = adapter_state(model)
        save_adapter(best_dir, cfg_, st)

    # -- pipelines ----------------------------------------------------------------------
    summary = {
        "config": str(config_path), "base_model": pcfg["base_model"], "stop_reason": stop_reason,
        "steps": state["step"], "epochs_done": state["epoch"] + state["micro_in_epoch"] / max(1, micro_per_epoch),
        "steps_per_epoch": steps_per_epoch, "train_sentences": len(encoded), "epoch_sentences": len(pool),
        "truncated": n_truncated,
        "seq_len_mean": sum(lengths) / max(1, len(lengths)), "tokens_seen": state["tokens_seen"],
        "train_seconds": state["train_seconds"], "sec_per_step_this_run": (sum(step_times) / len(step_times)) if step_times else None,
        "loss_last_20_this_run": (sum(losses[-20:]) / len(losses[-20:])) if losses else None,
        "trainable_params": n_trainable, "best_step": state["best_step"], "best_score": state["best_score"],
        "selection_metric": T["selection_metric"], "eval_docs": len(dev_docs), "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb(), "wall_seconds": time.perf_counter() - wall_start, "settings": T,
    }
    for which, src in (("model-best", best_dir), ("model-last", last_dir)):
        pipe.adapter = str(src)
        pipe._adapter_state = None
        pipe._model = None
        nlp.meta["lora_training"] = {k: summary[k] for k in ("steps", "best_step", "best_score", "selection_metric",
                                                           "train_seconds", "stop_reason")}
        nlp.to_disk(output_dir / which)
    pipe.adapter = None
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
