"""Inference throughput (words/second) of the trained baselines over a split.

For every spaCy pipeline given (``--cnn``, ``--bert``) it times ``nlp.pipe`` over the
split's texts (the whole pipeline: paper tokenizer, sentencizer, encoder, NER). For
the transformer pipeline it also times the *same* fine-tuned encoder through
``transformers.pipeline("token-classification")`` in the same process, as the
reference a Hugging Face user would run: the encoder's weights under a
``AutoModelForTokenClassification`` head (one output per BIO tag; the head's
weights do not change the cost), the pipeline's own tokenizer, the same
128-wordpiece windows with 16 wordpieces of overlap (``stride=16``), and
``aggregation_strategy="simple"``, and the same CPU precision (the pipeline's
``cpu_autocast``). It reports the ratio spaCy / reference.

Words are the split's non-whitespace tokens (the paper's tokens), as in
``python -m tokner evaluate``. Every timing is preceded by an untimed warm-up batch
and is the best of ``--repeats`` runs. The load average at the start is recorded:
on a shared CPU, compare numbers from the same run only.

    python benchmarks/throughput.py --cnn training/cnn/model-best \
        --bert training/bert/model-best --data corpus/dev.spacy \
        --output metrics/throughput.json

``--set KEY=VALUE`` overrides the transformer pipeline's config at load time, e.g. windows
counted in wordpieces (the reference then uses the same window and overlap)::

    --set components.transformer.model.@architectures=tokner.TransformerModel.v1 \
    --set components.transformer.model.get_spans.@span_getters=tokner.wordpiece_spans.v1
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from tokner.utils.textfile import write_json


def _best_of(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_spacy(nlp, texts: Sequence[str], n_words: int, batch_size: int, repeats: int, desc: str) -> Dict:
    list(nlp.pipe(texts[:batch_size], batch_size=batch_size))  # warm-up

    def run():
        for _ in tqdm(nlp.pipe(texts, batch_size=batch_size), total=len(texts), desc=desc, unit="doc", leave=False):
            pass

    seconds = _best_of(run, repeats)
    return {"seconds": seconds, "words_per_second": n_words / seconds, "batch_size": batch_size}


def hf_reference(nlp, labels: Sequence[str], device: int):
    """A ``transformers`` token-classification pipeline around the spaCy pipeline's encoder."""
    from transformers import AutoModelForTokenClassification, pipeline

    trf = nlp.get_pipe("transformer")
    encoder = trf.model.transformer
    tokenizer = trf.model.tokenizer
    span_getter = nlp.config["components"]["transformer"]["model"]["get_spans"]
    window = int(span_getter.get("window", 128))
    overlap = window - int(span_getter.get("stride", window))
    tags = ["O"] + [f"{p}-{l}" for l in labels for p in ("B", "I")]
    config = encoder.config.__class__.from_dict(
        {**encoder.config.to_dict(), "num_labels": len(tags),
         "id2label": dict(enumerate(tags)), "label2id": {t: i for i, t in enumerate(tags)}}
    )
    model = AutoModelForTokenClassification.from_config(config)
    missing, unexpected = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
    if any(not k.startswith("pooler.") for k in unexpected) or missing:
        raise RuntimeError(f"encoder weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}")
    model.eval()
    precision = encoder_precision(nlp, device)
    if precision != "float32":  # the same CPU autocast as the spaCy pipeline's encoder
        from tokner.encoders.spans import autocast_module

        autocast_module(model, precision)
    tokenizer.model_max_length = window
    pipe = pipeline("token-classification", model=model, tokenizer=tokenizer, device=device,
                    aggregation_strategy="simple", stride=max(overlap, 1))
    return pipe, {"window": window, "overlap": overlap, "num_labels": len(tags), "precision": precision}


def encoder_precision(nlp, device: int) -> str:
    """The dtype the spaCy pipeline's encoder computes in on a CPU (its ``cpu_autocast``,
    "fastest" resolved for this CPU); "float32" on a GPU or without the setting."""
    from tokner.encoders.spans import resolve_cpu_autocast

    setting = nlp.config["components"]["transformer"]["model"].get("cpu_autocast", "float32")
    return "float32" if device >= 0 else resolve_cpu_autocast(setting)


def time_hf(pipe, texts: Sequence[str], n_words: int, batch_size: int, repeats: int) -> Dict:
    import torch

    with torch.inference_mode():
        pipe(list(texts[:batch_size]), batch_size=batch_size)  # warm-up

        def run():
            for _ in tqdm(pipe((t for t in texts), batch_size=batch_size), total=len(texts), desc="hf-pipeline",
                          unit="doc", leave=False):
                pass

        seconds = _best_of(run, repeats)
    return {"seconds": seconds, "words_per_second": n_words / seconds, "batch_size": batch_size}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cnn", help="trained CNN pipeline (e.g. training/cnn/model-best)")
    p.add_argument("--bert", help="trained transformer pipeline (e.g. training/bert/model-best)")
    p.add_argument("--data", default="corpus/dev.spacy", help="DocBin, BRAT folder or IOB CSV (default: dev)")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--limit", type=int, default=0, help="only the first N documents")
    p.add_argument("--gpu-id", type=int, default=-1)
    p.add_argument("--no-reference", action="store_true", help="skip the transformers.pipeline reference")
    p.add_argument("--set", action="append", help="config override for the --bert pipeline (KEY=VALUE, repeatable)")
    args = p.parse_args(argv)
    if not (args.cnn or args.bert):
        p.error("give --cnn and/or --bert")

    import spacy
    import torch

    import tokner  # noqa: F401  (registers the tokenizer, sentencizer and scorer)
    from tokner.cli import parse_set_overrides
    from tokner.scoring.evaluation import load_gold_docs
    from tokner.scoring.scorer import ALL_LABELS

    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
    data = Path(args.data)
    gold = load_gold_docs(data, spacy.blank("en"))[: args.limit or None]
    if not gold:
        raise SystemExit(f"no documents in {data}")
    texts = [d.text for d in gold]
    n_words = sum(1 for d in gold for t in d if not t.is_space)
    results: Dict = {
        "data": str(data), "docs": len(texts), "words": n_words,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_at_start": os.getloadavg(), "platform": platform.platform(),
                    "gpu_id": args.gpu_id},
        "pipelines": {},
    }
    for name, path in (("cnn", args.cnn), ("bert", args.bert)):
        if not path:
            continue
        if not Path(path).exists():
            raise SystemExit(f"{name} pipeline not found: {path}")
        overrides = parse_set_overrides(args.set) if name == "bert" else {}
        nlp = spacy.load(path, config=overrides)
        entry = {"path": str(path), "pipeline": nlp.pipe_names, "overrides": overrides,
                 "spacy": time_spacy(nlp, texts, n_words, args.batch_size, args.repeats, name)}
        print(f"{name:<5} spaCy nlp.pipe          {entry['spacy']['words_per_second']:>10,.0f} words/s "
              f"({entry['spacy']['seconds']:.1f} s)")
        if "transformer" in nlp.pipe_names and not args.no_reference:
            hf_pipe, setup = hf_reference(nlp, ALL_LABELS, args.gpu_id)
            ref = time_hf(hf_pipe, texts, n_words, args.batch_size, args.repeats)
            ref.update(setup)
            entry["hf_token_classification"] = ref
            entry["ratio_spacy_over_hf"] = entry["spacy"]["words_per_second"] / ref["words_per_second"]
            print(f"{name:<5} transformers.pipeline   {ref['words_per_second']:>10,.0f} words/s "
                  f"({ref['seconds']:.1f} s)   ratio spaCy/HF = {entry['ratio_spacy_over_hf']:.2f}")
        results["pipelines"][name] = entry
    if args.output:
        write_json(args.output, results)
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
