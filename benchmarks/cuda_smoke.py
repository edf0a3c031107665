"""CUDA-path smoke test with tiny random models (no downloads): run it on a GPU machine.

    python benchmarks/cuda_smoke.py --tokenizer assets/models/SmolLM2-135M-Instruct --output cuda_smoke.json

Each check runs the package's real code on the GPU and records pass/fail, seconds and
what it saw; one failing check does not stop the others. Checks:

1. ``tokner.lora`` training (peft LoRA, 3 steps) on a tiny llama with ``device="auto"``:
   the model must land on CUDA; ``spacy.load`` of the trained pipeline, constrained
   decoding on CUDA, identical predictions after a reload, free generation.
2. ``tokner.HFCausalLM.v1`` through spacy-llm on CUDA (batched greedy generation).
3. ``configs/cnn.cfg`` and ``configs/bert.cfg`` (tiny random BERT) trained a few steps
   with ``--gpu-id 0`` (thinc on cupy, spacy-transformers on torch CUDA).

The tokenizer folder needs only SmolLM2's tokenizer files (``tokenizer.json`` etc.).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    ("Alport syndrome causes hearing loss. Patients may have fever.",
     [("Alport syndrome", "RAREDISEASE"), ("hearing loss", "SIGN"), ("fever", "SYMPTOM")]),
    ("Diabetes is common. Pain and fatigue occur in it.",
     [("Diabetes", "DISEASE"), ("Pain", "SYMPTOM"), ("fatigue", "SYMPTOM"), ("it", "ANAPHOR")]),
    ("Epidermolysis bullosa affects the skin.\n\nBlisters appear early.",
     [("Epidermolysis bullosa", "SKINRAREDISEASE"), ("Blisters", "SIGN")]),
    ("Marfan syndrome is a rare disorder. Tall stature and chest pain are signs.",
     [("Marfan syndrome", "RAREDISEASE"), ("Tall stature", "SIGN"), ("chest pain", "SYMPTOM")]),
]


def blank_nlp():
    import spacy

    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    return nlp


def make_docbin(path: Path) -> Path:
    from spacy.tokens import DocBin

    nlp = blank_nlp()
    db = DocBin(store_user_data=True)
    for text, ents in TEXTS * 3:
        doc = nlp(text)
        doc.ents = [doc.char_span(text.index(s), text.index(s) + len(s), label=l) for s, l in ents]
        db.add(doc)
    db.to_disk(path)
    return path


def ents(nlp, texts):
    return [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in nlp.pipe(texts)]


def check_lora(tmp: Path, llama: Path, data: Path) -> dict:
    import spacy
    import torch

    from tokner.lora.train import train

    overrides = {
        "paths.train": str(data), "paths.dev": str(data), "paths.base_model": str(llama),
        "lora.max_steps": 3, "lora.max_minutes": 0, "lora.batch_size": 4, "lora.eval_every": 3, "lora.eval_docs": 4,
        "lora.torch_threads": 0, "components.tokner_lora_ner.torch_threads": 0,
        "components.tokner_lora_ner.device": "auto", "components.tokner_lora_ner.torch_dtype": "auto",
    }
    summary = train(ROOT / "configs" / "lora.cfg", tmp / "lora", overrides, progress=False)
    nlp = spacy.load(tmp / "lora" / "model-best")
    pipe = nlp.get_pipe("tokner_lora_ner")
    texts = [t for t, _ in TEXTS]
    first = ents(nlp, texts)
    again = ents(spacy.load(tmp / "lora" / "model-best"), texts)
    free = spacy.load(tmp / "lora" / "model-best", config={"components": {"tokner_lora_ner": {"decoding": "free"}}})
    free_ents = ents(free, texts[:2])
    model_device = str(next(pipe.lm.parameters()).device)
    if torch.cuda.is_available():
        assert model_device.startswith("cuda"), model_device
    assert first == again, "predictions changed after reload"
    return {"steps": summary["steps"], "peak_gpu_mb": summary["peak_gpu_mb"], "model_device": model_device,
            "dtype": str(next(pipe.lm.parameters()).dtype), "constrained_ents": sum(map(len, first)),
            "free_ents": sum(map(len, free_ents)),
            "cuda_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0}


def check_hf_llm(tmp: Path, llama: Path) -> dict:
    import torch

    import tokner.llm  # noqa: F401

    nlp = blank_nlp()
    nlp.add_pipe("llm", config={
        "task": {"@llm_tasks": "tokner.TokenNER.v1"},
        "model": {"@llm_models": "tokner.HFCausalLM.v1", "name": str(llama), "batch_size": 4,
                  "max_new_tokens_cap": 64},
    })
    model = nlp.get_pipe("llm")._model
    device = str(next(model.model.parameters()).device)
    docs = list(nlp.pipe([t for t, _ in TEXTS]))
    if torch.cuda.is_available():
        assert device.startswith("cuda"), device
    return {"device": device, "docs": len(docs), "ents": sum(len(d.ents) for d in docs),
            "alignment": [d._.tokner_llm for d in docs][:1]}


def check_spacy_train(tmp: Path, cfg: str, data: Path, extra: dict) -> dict:
    import spacy
    from spacy.cli.train import train

    out = tmp / Path(cfg).stem
    overrides = {"paths.train": str(data), "paths.dev": str(data), "training.max_steps": 6,
                 "training.eval_frequency": 3, "training.logger.progress_bar": False}
    overrides.update(extra)
    import torch

    train(ROOT / cfg, out, use_gpu=0 if torch.cuda.is_available() else -1, overrides=overrides)
    nlp = spacy.load(out / "model-best")
    return {"pipeline": nlp.pipe_names, "ents": sum(map(len, ents(nlp, [t for t, _ in TEXTS])))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=str(ROOT / "assets" / "models" / "SmolLM2-135M-Instruct"))
    p.add_argument("--output", default="cuda_smoke.json")
    args = p.parse_args()
    import torch

    import tokner  # noqa: F401
    from tokner.testing import make_tiny_bert, make_tiny_llama

    report = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "checks": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = make_docbin(tmp / "train.spacy")
        llama = make_tiny_llama(tmp / "llama", args.tokenizer)
        bert = make_tiny_bert(tmp / "bert", [w for t, _ in TEXTS for w in t.replace(".", " .").split()])
        checks = {
            "lora_train_load_decode": lambda: check_lora(tmp, llama, data),
            "hf_causal_lm_generate": lambda: check_hf_llm(tmp, llama),
            "cnn_train_gpu": lambda: check_spacy_train(tmp, "configs/cnn.cfg", data, {}),
            "bert_train_gpu": lambda: check_spacy_train(tmp, "configs/bert.cfg", data, {"paths.transformer": str(bert)}),
        }
        for name, fn in checks.items():
            t0 = time.perf_counter()
            try:
                result = {"ok": True, **fn()}
            except Exception as err:  # report every check, whatever fails
                result = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-3000:]}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            report["checks"][name] = result
            print(name, json.dumps({k: v for k, v in result.items() if k != "trace"}), flush=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
