"""LoRA fine-tuning of the ``tokner_lora_ner`` pipe's base model on RareDis sentences.

transformers' ``Trainer`` over a peft LoRA model, driven by a spaCy-style config
(``configs/lora.cfg``): the ``[nlp]``/``[components]`` sections define the pipeline
that is saved, the ``[lora]`` section the training. Features: loss on the answer
only, length-bucketed batches, seeds, a budget in steps, epochs and/or minutes, bf16 on
hardware that has it, dev evaluation with the constrained decoder every ``eval_every``
steps and selection of the best adapter, resumable checkpoints (adapter, optimizer,
scheduler, every RNG state and the data position), a progress bar. Output folder::

    OUTPUT/checkpoints/checkpoint-N/  Trainer's newest checkpoint (``--resume`` continues from it)
    OUTPUT/checkpoints/last/          adapter at the end of training
    OUTPUT/checkpoints/best/          adapter with the best dev score
    OUTPUT/model-best/                spaCy pipeline with the best adapter
    OUTPUT/model-last/                spaCy pipeline with the last adapter
    OUTPUT/training_log.jsonl         one line per evaluation
    OUTPUT/summary.json               budget, timings, peak memory, best scores
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
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
    # the base model's attention in training: "auto" (eager on a CPU, the model's default,
    # SDPA, elsewhere), "eager" or "sdpa". On the AMX Xeon, one thread, SmolLM2-135M batches of
    # 4 train sentences (mean 160 tokens): 2.16 s per bf16 step with eager attention against
    # 2.49 s with SDPA, whose CPU flash-attention backward was 17.5% of the step
    # (benchmarks/lora_step_levers.py, docs/methods.md); eager's memory grows with the square
    # of the length, which GPUs and long inputs cannot afford
    "attention": "auto",
}

AUTOCAST = ("float32", "bfloat16", "fastest")
ATTENTION = ("auto", "eager", "sdpa")
_MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


@contextlib.contextmanager
def _mixed_precision_env(precision: str):
    """``ACCELERATE_MIXED_PRECISION`` set to this run's precision, the caller's value back after.

    transformers' ``TrainingArguments`` writes ``bf16`` into the variable for a bf16 run and a
    later run starts from it, and accelerate takes it as its default: a float32 training after
    a bf16 one in the same process ran its forwards under bf16 autocast and failed in attention
    (bf16 values beside float32 queries; seen on a CPU without native bf16, where ``fastest``
    means float32)."""
    before = os.environ.get(_MIXED_PRECISION_ENV)
    os.environ[_MIXED_PRECISION_ENV] = "bf16" if precision == "bfloat16" else "no"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_MIXED_PRECISION_ENV, None)
        else:
            os.environ[_MIXED_PRECISION_ENV] = before


def resolve_attention(setting: str, device) -> Optional[str]:
    """The ``attn_implementation`` to load the base with for ``[lora] attention`` on
    ``device`` (None: the model's default)."""
    if setting not in ATTENTION:
        raise ValueError(f"[lora] attention must be one of {', '.join(ATTENTION)}, got {setting!r}")
    if setting == "auto":
        return "eager" if str(device) == "cpu" else None
    return setting


def resolve_autocast(setting: str, device) -> str:
    """``"float32"`` or ``"bfloat16"`` for ``[lora] autocast`` on ``device``."""
    if setting not in AUTOCAST:
        raise ValueError(f"[lora] autocast must be one of {', '.join(AUTOCAST)}, got {setting!r}")
    if setting == "fastest":
        from tokner.utils.hardware import fastest_dtype

        return "bfloat16" if fastest_dtype(str(device)) == "bfloat16" else "float32"
    return setting


def answer_loss(model, batch, num_items_in_batch=None) -> "torch.Tensor":
    """The mean next-token cross-entropy over the labelled positions: the value of
    ``model(**batch).loss``, with the LM head and the softmax computed only where a label is.

    The loss is on the answer, about half of each sequence, and the LM head of SmolLM2
    (576 x 49,152) with its log-softmax is the costliest layer per position: with bf16 base
    weights, one thread on the AMX Xeon, this is 2.49 s per step against 2.58 s for the full
    forward (benchmarks/lora_step_levers.py, docs/methods.md). Models whose forward changes the
    logits after the head (soft-capping, a logit scale) take the full forward.
    ``num_items_in_batch`` (Trainer's count of labelled tokens over an accumulated step): the
    summed loss divided by it, so accumulated micro-batches weigh each token alike.
    """
    import torch

    from tokner.lora.data import IGNORE

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    cfg = base.config
    if (head is None or decoder is None or decoder is base or getattr(cfg, "final_logit_softcapping", None)
            or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0)):
        if num_items_in_batch is not None:
            return model(**batch, num_items_in_batch=num_items_in_batch).loss
        return model(**batch).loss
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = head(hidden[:, :-1][keep])
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits.float(), labels[keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return loss / num_items_in_batch


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
    results, stats = constrained_decode(model, codec, sents, batch_size=batch_size, bio=bio, progress=progress,
                                        prompts=codec.doc_prompts(index, sents))
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


class BucketedBatchSampler:
    """Length-bucketed batches (:func:`tokner.lora.data.bucketed_batches`), reshuffled per
    epoch with ``seed + epoch``: the same batches in the same order on a resumed run, which
    ``Trainer`` skips ahead through. accelerate's data loader calls :meth:`set_epoch`.

    With ``multiple_of`` (the gradient-accumulation steps) > 1, each epoch ends after a
    multiple of it, dropping the last ``len % multiple_of`` batches of that epoch's shuffle
    (which ones changes per epoch), as ``drop_last`` does for a batch. ``Trainer`` (4.53)
    resumes a checkpoint taken mid-epoch at the wrong data position when an epoch ends in
    a partial accumulation step (it groups batches of two epochs into one step: a resumed
    run then differed from the uninterrupted one, tests/test_lora.py).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucket_factor: int, multiple_of: int = 1):
        from tokner.lora.data import bucketed_batches

        self.lengths, self.batch_size, self.seed, self.bucket_factor = list(lengths), batch_size, seed, bucket_factor
        self.epoch = 0
        # the same count every epoch: the windows have fixed sizes whatever the shuffle
        n = len(bucketed_batches(self.lengths, batch_size, seed, bucket_factor))
        k = max(1, int(multiple_of))
        self._len = n - n % k if n >= k else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        from tokner.lora.data import bucketed_batches

        batches = bucketed_batches(self.lengths, self.batch_size, self.seed + self.epoch, self.bucket_factor)
        return iter(batches[: self._len])

    def __len__(self) -> int:
        return self._len


def _make_trainer_classes():
    """``Trainer`` with the answer-only loss and the bucketed batches, and the callback that
    does what the project needs besides: constrained-decoding dev selection, the minutes
    budget, step times, and its own state in each checkpoint (imported lazily: transformers
    is an optional dependency)."""
    from torch.utils.data import DataLoader
    from transformers import Trainer, TrainerCallback

    from tokner.lora.data import IGNORE

    class LoraTrainer(Trainer):
        def __init__(self, *args, batch_sampler=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.batch_sampler = batch_sampler
            # compute_loss normalises by the number of labelled tokens of the whole
            # accumulated step (Trainer's num_items_in_batch), so Trainer must not divide again
            self.model_accepts_loss_kwargs = True
            self.micro_losses: List[float] = []
            self.tokens_seen = 0

        def get_train_dataloader(self):
            loader = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
                                num_workers=0)
            return self.accelerator.prepare(loader)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = answer_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            n_labels = int((inputs["labels"][:, 1:] != IGNORE).sum())
            self.tokens_seen += int(inputs["attention_mask"].sum())
            loss = super().training_step(model, inputs, num_items_in_batch)
            # the batch's own mean loss, for the progress bar and summary.json
            scale = float(num_items_in_batch) / max(1, n_labels) if num_items_in_batch is not None else 1.0
            self.micro_losses.append(float(loss) * scale)
            return loss

    class LoraCallback(TrainerCallback):
        STATE_FILE = "tokner_state.json"

        def __init__(self, state: Dict[str, Any], run_eval, budget_s: float, eval_every: int):
            self.state, self.run_eval, self.budget_s, self.eval_every = state, run_eval, budget_s, eval_every
            self.step_times: List[float] = []
            self._t = None
            self.stop_reason: Optional[str] = None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self._t
            self.step_times.append(dt)
            self.state["train_seconds"] += dt
            self.state["step"] = state.global_step
            self.state["epoch"] = int(state.epoch or 0)
            if self.eval_every and state.global_step % self.eval_every == 0:
                rec = self.run_eval(kw["model"])
                if rec:
                    from tqdm import tqdm

                    tqdm.write(f"step {rec['step']}: {rec['metric']}={rec['score']:.4f} "
                               f"avg_f={rec['paper_avg_f']:.4f} ({rec['eval_seconds']:.0f}s)")
            if self.budget_s and self.state["train_seconds"] >= self.budget_s and state.global_step < state.max_steps:
                self.stop_reason = "max_minutes"
                control.should_training_stop = True
                control.should_save = args.save_strategy != "no"
            return control

        def on_save(self, args, state, control, **kw):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / self.STATE_FILE).write_text(json.dumps(self.state) + "\n", encoding="utf-8")

    return LoraTrainer, LoraCallback


def train(config_path, output_dir, overrides: Optional[Dict[str, Any]] = None, resume: bool = False,
          progress: bool = True) -> Dict[str, Any]:
    """Train the adapter with transformers' ``Trainer`` and write the pipelines; returns the summary dict.

    ``Trainer`` does the loop: the optimizer and schedule of the config (AdamW, the
    ``[lora]`` warm-up and linear/cosine/constant schedule), gradient accumulation
    normalised by labelled tokens, clipping, bf16 autocast, checkpoints with optimizer,
    scheduler and every RNG state (``OUTPUT/checkpoints/checkpoint-N``, the newest kept),
    resuming with the data position, and the progress bar and logs. The project adds the
    answer-only loss, the bucketed batches and one callback (dev selection by constrained
    decoding, the minutes budget).
    """
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from tokner.scoring.evaluation import load_gold_docs
    from tokner.lora.data import (collate, contexts_from_docs, encode_example, oversample_indices, read_docbin,
                                  sentences_from_docs)
    from tokner.lora.modeling import (adapter_state, attach_adapter, load_base_model, make_lora_config, require_lora_deps,
                                      resolve_device, save_adapter)
    from tqdm import tqdm

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
    contexts = contexts_from_docs(train_docs, codec.context_sentences) if codec.context_sentences else None
    if T["train_limit"]:
        train_sents = train_sents[: int(T["train_limit"])]
    encoded = [encode_example(codec, w, t, int(T["max_length"]), T["loss_on"], contexts[k] if contexts else None)
               for k, (w, t) in enumerate(tqdm(train_sents, desc="encode train", unit="sent", disable=not progress))]
    n_truncated = sum(e.truncated for e in encoded)
    pool = oversample_indices([t for _, t in train_sents], T["oversample"], pipe.labels)
    dataset = [encoded[i] for i in pool]
    lengths = [len(e.input_ids) for e in dataset]
    dev_docs = load_gold_docs(Path(dev_path), nlp)[: int(T["eval_docs"]) or None] if dev_path else []
    bs, accum = int(T["batch_size"]), max(1, int(T["grad_accum"]))
    sampler = BucketedBatchSampler(lengths, bs, int(T["seed"]), int(T["bucket_factor"]), multiple_of=accum)
    micro_per_epoch = len(sampler)
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    max_steps = int(T["max_steps"]) or steps_per_epoch * int(T["max_epochs"])
    max_steps = min(max_steps, steps_per_epoch * int(T["max_epochs"])) if int(T["max_epochs"]) else max_steps
    budget_s = float(T["max_minutes"]) * 60.0

    # -- model --------------------------------------------------------------------
    device = resolve_device(pcfg["device"])
    precision = resolve_autocast(T["autocast"], device)
    # bf16 training keeps the frozen base weights in bf16 (peft keeps the adapter and
    # AdamW's state in float32): autocast would otherwise cast every weight on every
    # forward and backward. 2.58 s per step against 2.74 s for bf16 autocast over float32
    # weights (one thread, AMX Xeon; float32 3.88 s): benchmarks/lora_step_levers.py
    base_dtype = "bfloat16" if precision == "bfloat16" and not pcfg["load_in_4bit"] else pcfg["torch_dtype"]
    base = load_base_model(pcfg["base_model"], pcfg["device"], base_dtype, pcfg["load_in_4bit"], for_training=True,
                           attn_implementation=resolve_attention(T["attention"], device))
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
    state: Dict[str, Any] = {"step": 0, "epoch": 0, "best_score": -1.0, "best_step": -1,
                             "train_seconds": 0.0, "last_eval_step": -1}
    checkpoint = get_last_checkpoint(str(ckpt_dir)) if resume and ckpt_dir.is_dir() else None
    if checkpoint:
        saved = Path(checkpoint) / "tokner_state.json"
        if saved.exists():
            state.update(json.loads(saved.read_text(encoding="utf-8")))
        logger.info("resuming from %s (step %s)", checkpoint, state["step"])
    elif resume:
        logger.warning("--resume given but %s has no checkpoint: starting fresh", ckpt_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "training_log.jsonl"

    def run_eval(model_) -> Optional[Dict[str, Any]]:
        if not dev_docs:
            return None
        model_.config.use_cache = True
        # decode with SDPA as the pipe does (transformers reads the attention implementation
        # from the config at each forward); eager attention is for the training steps
        attn = model_.config._attn_implementation
        model_.config._attn_implementation = "sdpa" if attn == "eager" else attn
        try:
            scores = evaluate_adapter(model_, codec, dev_docs, int(T["eval_batch_size"]), pcfg["bio_constraint"])
        finally:
            model_.config.use_cache = False
            model_.config._attn_implementation = attn
        score = float(scores[T["selection_metric"]])
        record = {"step": state["step"], "epoch": state["epoch"], "train_seconds": round(state["train_seconds"], 1),
                  "score": score, **{k: scores[k] for k in ("paper_avg_f", "paper_micro5_f", "paper_micro_f",
                                                             "eval_seconds", "decisions_per_word")}}
        state["last_eval_step"] = state["step"]
        if score > state["best_score"]:
            state["best_score"], state["best_step"] = score, state["step"]
            cfg_, st = adapter_state(model_)
            save_adapter(best_dir, cfg_, st)
            record["best"] = True
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return {**record, "metric": T["selection_metric"]}

    # -- loop (transformers' Trainer) -----------------------------------------------------
    LoraTrainer, LoraCallback = _make_trainer_classes()
    save_every = int(T["save_every"])
    with _mixed_precision_env(precision):
        args = TrainingArguments(
            output_dir=str(ckpt_dir), max_steps=max_steps, per_device_train_batch_size=bs,
            gradient_accumulation_steps=accum, max_grad_norm=float(T["max_grad_norm"] or 0.0),
            bf16=precision == "bfloat16", use_cpu=device == "cpu", seed=int(T["seed"]),
            save_strategy="steps" if save_every else "no", save_steps=save_every or 500, save_total_limit=1,
            logging_steps=max(1, int(T["log_every"])), logging_first_step=True, report_to="none",
            disable_tqdm=not progress, remove_unused_columns=False, dataloader_pin_memory=False,
            eval_strategy="no", label_names=["labels"],
        )
        callback = LoraCallback(state, run_eval, budget_s, int(T["eval_every"] or 0))
        trainer = LoraTrainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler),
                              data_collator=lambda examples: collate(examples, codec.pad_id), callbacks=[callback],
                              batch_sampler=sampler)
        model.train()
        trainer.train(resume_from_checkpoint=checkpoint)
        state["step"] = trainer.state.global_step
        stop_reason = callback.stop_reason or ("max_steps" if state["step"] >= max_steps else "max_epochs")
        if state["last_eval_step"] != state["step"]:
            rec = run_eval(model)
            if rec:
                print(f"final step {rec['step']}: {T['selection_metric']}={rec['score']:.4f} avg_f={rec['paper_avg_f']:.4f}")
    cfg_, st = adapter_state(model)
    save_adapter(last_dir, cfg_, st)
    if not best_dir.exists():  # no dev set: the last adapter is the best we know
        save_adapter(best_dir, cfg_, st)
    step_times, losses = callback.step_times, trainer.micro_losses

    # -- pipelines ----------------------------------------------------------------------
    summary = {
        "config": str(config_path), "base_model": pcfg["base_model"], "stop_reason": stop_reason,
        "steps": state["step"], "epochs_done": state["step"] / max(1, steps_per_epoch),
        "steps_per_epoch": steps_per_epoch, "train_sentences": len(encoded), "epoch_sentences": len(pool),
        "truncated": n_truncated, "precision": precision, "attention": base.config._attn_implementation,
        "seq_len_mean": sum(lengths) / max(1, len(lengths)), "tokens_seen_this_run": trainer.tokens_seen,
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
