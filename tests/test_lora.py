"""LoRA component: real training code on a tiny random llama, save, spacy.load, predict."""
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import spacy  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402

from tokner.answers.tags import doc_tags  # noqa: E402
from tiny_models import make_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCH_THREADS = 1  # conftest: one torch thread for this module

TEXTS = [
    ("Alport syndrome causes hearing loss. Patients may have fever.", [("Alport syndrome", "RAREDISEASE"), ("hearing loss", "SIGN"), ("fever", "SYMPTOM")]),
    ("Diabetes is common. Pain and fatigue occur in it.", [("Diabetes", "DISEASE"), ("Pain", "SYMPTOM"), ("fatigue", "SYMPTOM"), ("it", "ANAPHOR")]),
    ("Epidermolysis bullosa affects the skin.\n\nBlisters appear early.", [("Epidermolysis bullosa", "SKINRAREDISEASE"), ("Blisters", "SIGN")]),
]


def make_docbin(path: Path, nlp) -> Path:
    db = DocBin(store_user_data=True)
    for text, ents in TEXTS:
        doc = nlp(text)
        spans = []
        for surface, label in ents:
            start = text.index(surface)
            spans.append(doc.char_span(start, start + len(surface), label=label))
        doc.ents = spans
        db.add(doc)
    db.to_disk(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tokner.lora.train import train

    tmp = tmp_path_factory.mktemp("lora")
    base = make_tiny_llama(tmp / "tiny-llama")
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    data = make_docbin(tmp / "train.spacy", nlp)
    overrides = {
        "paths.train": str(data), "paths.dev": str(data), "paths.base_model": str(base),
        "lora.max_steps": 2, "lora.max_minutes": 0, "lora.batch_size": 2, "lora.eval_every": 1,
        "lora.save_every": 1, "lora.eval_docs": 2, "lora.r": 4, "lora.alpha": 8,
        "lora.oversample": {"SYMPTOM": 3, "SKINRAREDISEASE": 2},
        "components.tokner_lora_ner.device": "cpu", "components.tokner_lora_ner.batch_size": 4,
    }
    out = tmp / "out"
    summary = train(ROOT / "configs" / "lora.cfg", out, overrides, progress=False)
    return out, summary, base


def test_training_writes_checkpoints_and_pipelines(trained):
    out, summary, _ = trained
    assert summary["steps"] == 2 and summary["stop_reason"] == "max_steps"
    assert summary["train_sentences"] == 6
    # two sentences with SYMPTOM (x3) and one with SKINRAREDISEASE (x2): 6 + 2*2 + 1
    assert summary["epoch_sentences"] == 11
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for sub in ("checkpoints/last", "checkpoints/best", "model-best/tokner_lora_ner", "model-last/tokner_lora_ner"):
        assert (out / sub / "adapter_config.json").exists(), sub
        assert (out / sub / "adapter_model.safetensors").exists(), sub
    # Trainer's checkpoint: adapter, optimizer, scheduler, every RNG state, the project's own state
    ckpt = out / "checkpoints" / "checkpoint-2"
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                 "tokner_state.json"):
        assert (ckpt / name).exists(), name
    assert not (out / "checkpoints" / "checkpoint-1").exists()  # only the newest is kept
    assert json.loads((ckpt / "tokner_state.json").read_text())["best_step"] in (1, 2)
    # configs/lora.cfg: attention "auto" is eager on a CPU, and the dev evaluations in
    # between restored it (they decode with SDPA)
    assert summary["attention"] == "eager"
    # the adapter folder is peft's own format
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(out / "model-best" / "tokner_lora_ner")).r == 4


def test_load_predict_and_reload_identical(trained, tmp_path):
    out, _, _ = trained
    nlp = spacy.load(out / "model-best")
    assert not hasattr(nlp.get_pipe("tokner_lora_ner"), "model")  # spaCy's hasattr probes must stay cheap
    assert nlp.pipe_names == ["tokner_sentencizer", "tokner_lora_ner"]
    texts = [t for t, _ in TEXTS] + ["Short one."]
    docs = list(nlp.pipe(texts))
    for doc in docs:
        tags = doc_tags(doc)
        assert len(tags) == len(doc)
        assert all(not t.is_space or tag == "O" for t, tag in zip(doc, tags))
        group = doc.spans["lora"]
        assert len(group) == len(doc.ents)
        assert all(0.0 < s <= 1.0 for s in group.attrs["scores"])
        # the scored span group holds exactly the entities (same offsets and labels)
        assert [(s.start_char, s.end_char, s.label_) for s in group] == [
            (e.start_char, e.end_char, e.label_) for e in doc.ents]
    nlp.to_disk(tmp_path / "again")
    nlp2 = spacy.load(tmp_path / "again")
    docs2 = list(nlp2.pipe(texts))
    for a, b in zip(docs, docs2):
        assert [(e.start_char, e.end_char, e.label_) for e in a.ents] == [(e.start_char, e.end_char, e.label_) for e in b.ents]
        assert a.spans["lora"].attrs["scores"] == pytest.approx(b.spans["lora"].attrs["scores"], rel=1e-4)


def test_merged_and_unmerged_agree(trained):
    out, _, _ = trained
    merged = spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"merge_adapter": True}}})
    plain = spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"merge_adapter": False}}})
    assert type(merged.get_pipe("tokner_lora_ner").lm).__name__ == "LlamaForCausalLM"
    assert type(plain.get_pipe("tokner_lora_ner").lm).__name__ != "LlamaForCausalLM"
    text = TEXTS[0][0] + " " + TEXTS[1][0]
    a, b = merged(text), plain(text)
    assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents]


def test_resume_continues_from_last_checkpoint(trained, tmp_path):
    from safetensors.torch import load_file

    from tokner.lora.train import train

    out, _, base = trained
    common = {
        "paths.train": str(out.parent / "train.spacy"), "paths.dev": str(out.parent / "train.spacy"),
        "paths.base_model": str(base), "lora.max_minutes": 0, "lora.batch_size": 2, "lora.grad_accum": 2,
        "lora.lr_scheduler": "constant", "lora.warmup_steps": 0, "lora.dropout": 0.3, "lora.eval_every": 0,
        "lora.save_every": 1, "lora.eval_docs": 2, "lora.r": 4, "lora.alpha": 8, "lora.max_epochs": 0,
        "components.tokner_lora_ner.device": "cpu",
    }
    # one run of 5 steps, and one stopped after 3 steps and resumed to 5 (a constant schedule, so
    # the first leg's shorter budget does not change the learning rates; dropout 0.3 so the
    # restored RNG state matters; 9 sentences in batches of 2, two micro-batches per step: 2
    # steps per epoch, so step 3 is mid-epoch and the data position matters)
    whole = train(ROOT / "configs" / "lora.cfg", tmp_path / "whole", {**common, "lora.max_steps": 5}, progress=False)
    train(ROOT / "configs" / "lora.cfg", tmp_path / "parts", {**common, "lora.max_steps": 3}, progress=False)
    assert (tmp_path / "parts" / "checkpoints" / "checkpoint-3" / "rng_state.pth").exists()
    parts = train(ROOT / "configs" / "lora.cfg", tmp_path / "parts", {**common, "lora.max_steps": 5}, resume=True,
                  progress=False)
    assert whole["steps_per_epoch"] == 2
    assert whole["steps"] == parts["steps"] == 5
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "last" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "checkpoints" / "last" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # and the run did learn something: the adapter's B matrices start at zero
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)


def test_free_generation_path_runs(trained):
    pytest.importorskip("tokner.answers.align")
    out, _, _ = trained
    nlp = spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"decoding": "free",
                                                                                    "max_new_tokens_factor": 0.5}}})
    doc = nlp(TEXTS[0][0])
    assert doc.text == TEXTS[0][0]
    stats = nlp.get_pipe("tokner_lora_ner").last_stats
    assert stats.sentences == 2 and len(stats.answers) == 2


def test_call_cost_is_config_checked_and_keeps_predictions(trained):
    out, _, _ = trained
    with pytest.raises(ValueError, match="call_cost"):
        spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"call_cost": "fast"}}})
    with pytest.raises(ValueError, match="speculate"):
        spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"speculate": -1}}})
    text = TEXTS[0][0] + " " + TEXTS[1][0]
    ents = []
    for cost, speculate in ((None, 0), (0.0, 0), ("auto", 0), ("auto", 8), (None, 3)):
        nlp = spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"call_cost": cost,
                                                                                        "speculate": speculate}}})
        pipe = nlp.get_pipe("tokner_lora_ner")
        assert pipe.cfg["call_cost"] == cost and pipe.cfg["speculate"] == speculate
        ents.append([(e.start, e.end, e.label_) for e in nlp(text).ents])
    assert all(e == ents[0] for e in ents)


def test_oversample_indices_repeat_sentences_by_their_rarest_label():
    from tokner.lora.data import oversample_indices

    tags = [["O", "B-SIGN"], ["B-SYMPTOM", "I-SYMPTOM", "O"], ["B-SKINRAREDISEASE", "B-SYMPTOM"], ["O"]]
    assert oversample_indices(tags, {}) == [0, 1, 2, 3]
    assert oversample_indices(tags, {"SYMPTOM": 3, "SKINRAREDISEASE": 2}) == [0, 1, 1, 1, 2, 2, 2, 3]
    with pytest.raises(ValueError, match="unknown label 'SYMPTOMS'"):
        oversample_indices(tags, {"SYMPTOMS": 2}, labels=["SIGN", "SYMPTOM"])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="integer >= 1"):
            oversample_indices(tags, {"SIGN": bad})


def test_tune_bias_command_writes_a_pipeline_that_uses_the_bias(trained, tmp_path, capsys):
    from tokner.lora.__main__ import main

    out, _, _ = trained
    with pytest.raises(ValueError, match="label_bias"):
        spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"label_bias": {"FEVER": 1}}}})
    result_path, saved = tmp_path / "bias.json", tmp_path / "biased"
    assert main(["tune-bias", str(out / "model-best"), str(out.parent / "train.spacy"), "--docs", "1:3",
                 "--o-values", "0,-1", "--folds", "2", "--output", str(result_path), "--save", str(saved), "--no-progress"]) == 0
    result = json.loads(result_path.read_text())
    assert json.loads(capsys.readouterr().out)["label_bias"] == result["label_bias"]
    assert result["docs"] == 2 and [p["O"] for p in result["passes"]] == [0.0, -1.0]
    best = max(result["passes"], key=lambda p: p["replayed_with_type_bias"]["paper_avg_f"])
    assert result["estimate"] == best["replayed_with_type_bias"]
    assert result["label_bias"].get("O", 0.0) == best["O"]
    for p in result["passes"]:
        assert p["replayed_with_type_bias"]["paper_avg_f"] >= p["decoded"]["paper_avg_f"]
    cross = result["cross_fitted"]
    assert cross["O"] == best["O"] and [f["docs"] for f in cross["folds"]] == ["0:1", "1:2"]  # of the tuned docs
    assert set(cross["replayed"]) == {"paper_avg_f", "paper_micro5_f", "paper_micro_f"}
    # the real cross-fitted run: each fold decoded by a copy with the other fold's offsets
    import importlib.util

    spec = importlib.util.spec_from_file_location("lora_bias_crossfit", ROOT / "benchmarks" / "lora_bias_crossfit.py")
    crossfit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crossfit)
    assert crossfit.main([str(out / "model-best"), str(out.parent / "train.spacy"), str(result_path), "--jobs", "2",
                          "--keep", str(tmp_path / "cf"), "--output", str(tmp_path / "cf.json")]) == 0
    cf = json.loads((tmp_path / "cf.json").read_text())
    assert cf["docs"] == 2 and [f["doc_slice"] for f in cf["folds"]] == ["1:2", "2:3"]
    for k, f in enumerate(cf["folds"]):
        assert f["docs"] == 1 and f["label_bias"] == dict(cross["folds"][k]["chosen_on_other_folds"],
                                                           **({"O": cross["O"]} if cross["O"] else {}))
        cfg = spacy.util.load_config(tmp_path / "cf" / f"fold{k}-model" / "config.cfg")
        assert cfg["components"]["tokner_lora_ner"]["label_bias"] == f["label_bias"]
    capsys.readouterr()
    # ANAPHOR is outside the paper's five types, so it is not tuned
    assert result["tuned_labels"] == ["DISEASE", "RAREDISEASE", "SKINRAREDISEASE", "SIGN", "SYMPTOM"]
    assert set(result["label_bias"]) - {"O"} <= set(result["tuned_labels"])
    with pytest.raises(SystemExit, match="--o-values"):
        main(["tune-bias", str(out / "model-best"), str(out.parent / "train.spacy"), "--o-values", "low"])
    nlp = spacy.load(saved)
    assert nlp.get_pipe("tokner_lora_ner").cfg["label_bias"] == result["label_bias"]
    # a saved bias is in the saved config and is used: the copy predicts what the original
    # does with the same override
    from tokner.lora.bias import save_with_label_bias

    bias = {"O": -1e4, "SYMPTOM": 1e4}
    save_with_label_bias(out / "model-best", bias, tmp_path / "forced")
    assert spacy.util.load_config(tmp_path / "forced" / "config.cfg")["components"]["tokner_lora_ner"]["label_bias"] == bias
    text = TEXTS[0][0] + " " + TEXTS[1][0]
    a = spacy.load(tmp_path / "forced")
    b = spacy.load(out / "model-best", config={"components": {"tokner_lora_ner": {"label_bias": bias}}})
    assert a.get_pipe("tokner_lora_ner").cfg["label_bias"] == bias
    ents = [(e.start, e.end, e.label_) for e in a(text).ents]
    assert ents == [(e.start, e.end, e.label_) for e in b(text).ents]
    assert ents and {label for _, _, label in ents} == {"SYMPTOM"}
    # a pipeline saved before label_bias existed (no such key in its config) gets it too
    from thinc.api import Config

    old = tmp_path / "old"
    shutil.copytree(out / "model-best", old)
    config = Config().from_disk(old / "config.cfg", interpolate=False)
    del config["components"]["tokner_lora_ner"]["label_bias"]
    config.to_disk(old / "config.cfg")
    assert "label_bias" not in (old / "config.cfg").read_text()
    nlp = save_with_label_bias(old, bias, tmp_path / "old-biased")
    assert [(e.start, e.end, e.label_) for e in nlp(text).ents] == ents
    with pytest.raises(SystemExit, match="--docs"):
        main(["tune-bias", str(out / "model-best"), str(out.parent / "train.spacy"), "--docs", "two"])
    with pytest.raises(ValueError, match="FEVER"):
        main(["tune-bias", str(out / "model-best"), str(out.parent / "train.spacy"), "--labels", "SIGN,FEVER",
              "--no-progress"])


def test_bf16_autocast_trains_close_to_float32(tmp_path):
    """[lora] autocast = "bfloat16": same data, seed and steps as float32, losses within bf16's
    precision; the adapter weights stay float32. A bad setting fails before any work."""
    from tokner.lora.train import train

    base = make_tiny_llama(tmp_path / "tiny-llama")
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    data = make_docbin(tmp_path / "train.spacy", nlp)
    common = {"paths.train": str(data), "paths.dev": "", "paths.base_model": str(base), "lora.max_steps": 3,
              "lora.max_minutes": 0, "lora.batch_size": 2, "lora.eval_every": 0, "lora.save_every": 0,
              "lora.r": 4, "lora.alpha": 8, "components.tokner_lora_ner.device": "cpu"}
    runs = {}
    for setting in ("float32", "bfloat16"):
        runs[setting] = train(ROOT / "configs" / "lora.cfg", tmp_path / setting, {**common, "lora.autocast": setting},
                              progress=False)
    a, b = runs["float32"]["loss_last_20_this_run"], runs["bfloat16"]["loss_last_20_this_run"]
    assert a != b and abs(a - b) / a < 0.05, (a, b)  # bf16 arithmetic really ran, and trains the same
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "bfloat16" / "checkpoints" / "best" / "adapter_model.safetensors"))
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    with pytest.raises(ValueError, match=r"autocast must be one of float32, bfloat16, fastest"):
        train(ROOT / "configs" / "lora.cfg", tmp_path / "bad", {**common, "lora.autocast": "bf16"}, progress=False)
    # float32 again after the bf16 run, in the same process, now with a dev evaluation: transformers
    # leaves ACCELERATE_MIXED_PRECISION=bf16 behind after a bf16 run; train() scopes the variable,
    # so this run is the first one again (same loss) and decodes its dev documents in float32
    import os

    before = os.environ.get("ACCELERATE_MIXED_PRECISION")
    again = train(ROOT / "configs" / "lora.cfg", tmp_path / "float32-again",
                  {**common, "lora.autocast": "float32", "paths.dev": str(data), "lora.eval_every": 3,
                   "lora.eval_docs": 2}, progress=False)
    assert again["loss_last_20_this_run"] == pytest.approx(a, rel=1e-6) and again["precision"] == "float32"
    assert os.environ.get("ACCELERATE_MIXED_PRECISION") == before


def test_attention_setting_resolves_per_device_and_rejects_unknown_values():
    from tokner.lora.train import resolve_attention

    assert resolve_attention("auto", "cpu") == "eager"
    assert resolve_attention("auto", "cuda:0") is None
    assert resolve_attention("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("flash", "cpu")


def test_answer_loss_is_the_models_own_loss_and_gradient(tmp_path):
    """answer_loss (LM head only at labelled positions) gives model(**batch).loss and the same
    adapter gradients, on a right-padded batch with the prompt masked out."""
    import torch
    from transformers import AutoModelForCausalLM

    from tokner.lora.data import IGNORE
    from tokner.lora.modeling import attach_adapter, make_lora_config
    from tokner.lora.train import answer_loss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tmp_path / "tiny-llama"))
    model = attach_adapter(base, lora_config=make_lora_config(4, 8, 0.0, ["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # a non-zero B, so the adapter's gradients are not trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(5, 200, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE
    labels[1, 6:] = IGNORE
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    grads = []
    for fn in (lambda: model(**batch).loss, lambda: answer_loss(model, batch)):
        model.zero_grad()
        loss = fn()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (ref, g_ref), (got, g_got) = grads
    assert abs(ref - got) < 1e-6, (ref, got)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_ref, g_got))
    assert any(a.abs().sum() > 0 for a in g_ref)


def test_previous_sentence_context_trains_saves_and_predicts(trained, tmp_path):
    """``context_sentences``: each prompt carries the sentences before it in its document,
    in training, in the training's dev evaluation and in the saved pipeline."""
    from tokner.answers.tags import sentence_words
    from tokner.decoding.constrained import constrained_decode
    from tokner.lora.data import contexts_from_docs, encode_example, read_docbin, sentences_from_docs
    from tokner.lora.prompt import PromptCodec, sentence_contexts
    from tokner.lora.train import train

    # the context of each sentence: up to n sentences before it, never across documents
    index = [[[0, 1], [2]], [[0]], [[0], [1], [2]]]
    sents = [["a", "b"], ["c"], ["d"], ["e"], ["f"], ["g"]]
    assert sentence_contexts(index, sents, 1) == [[], ["a", "b"], [], [], ["e"], ["f"]]
    assert sentence_contexts(index, sents, 2) == [[], ["a", "b"], [], [], ["e"], ["e", "f"]]
    with pytest.raises(ValueError, match="6 sentences for an index of 5"):
        sentence_contexts(index[:2] + [[[0], [1]]], sents, 1)

    out, _, base = trained
    data = out.parent / "train.spacy"
    run = train(ROOT / "configs" / "lora.cfg", tmp_path / "ctx", {
        "paths.train": str(data), "paths.dev": str(data), "paths.base_model": str(base),
        "lora.max_steps": 2, "lora.max_minutes": 0, "lora.batch_size": 2, "lora.eval_every": 2,
        "lora.eval_docs": 3, "lora.r": 4, "lora.alpha": 8, "lora.save_every": 0,
        "components.tokner_lora_ner.device": "cpu", "components.tokner_lora_ner.context_sentences": 1,
    }, progress=False)
    assert run["steps"] == 2
    nlp = spacy.load(tmp_path / "ctx" / "model-best")
    pipe = nlp.get_pipe("tokner_lora_ner")
    assert pipe.cfg["context_sentences"] == 1 and pipe.codec.context_sentences == 1
    tokenizer = pipe.tokenizer

    # what training encoded: the second sentence of the first text with the first as context
    docs = read_docbin(data, nlp.vocab)
    train_sents = sentences_from_docs(docs, pipe.labels)
    contexts = contexts_from_docs(docs, 1)
    assert [w for w, _ in train_sents][1] == ["Patients", "may", "have", "fever", "."]
    assert contexts[:3] == [[], ["Alport", "syndrome", "causes", "hearing", "loss", "."], []]
    enc = encode_example(pipe.codec, *train_sents[1], context=contexts[1])
    prompt_text = tokenizer.decode([i for i, label in zip(enc.input_ids, enc.labels) if label == -100],
                                   clean_up_tokenization_spaces=False)
    assert prompt_text.endswith("### Instruction:\nTag each token with its BIO clinical entity label.\n"
                                "### Context:\nAlport syndrome causes hearing loss .\n### Input:\n"
                                "Patients may have fever .\n### Output:\n")
    # without context the same sentence gets the paper's layout (no context section)
    plain = PromptCodec(tokenizer, pipe.labels, "minimal", "text")
    assert "### Context:" not in tokenizer.decode(plain.prompt_ids(train_sents[1][0]))

    # the pipe predicts documents with the same prompts as a direct decode with contexts
    texts = [t for t, _ in TEXTS]
    got = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]
    gold = list(nlp.pipe(texts, disable=["tokner_lora_ner"]))
    idx, words = sentence_words(gold)
    prompts = [pipe.codec.prompt_ids(w, c) for w, c in zip(words, sentence_contexts(idx, words, 1))]
    assert pipe.codec.doc_prompts(idx, words) == prompts
    results, _ = constrained_decode(pipe.lm, pipe.codec, words, 4, prompts=prompts)
    from tokner.answers.tags import spans_from_tags

    k, expected = 0, []
    for doc, doc_sents in zip(gold, idx):
        tags = ["O"] * len(doc)
        for sent in doc_sents:
            for i, t in zip(sent, results[k][0]):
                tags[i] = t
            k += 1
        expected.append(list(spans_from_tags(tags, [bool(t.is_sent_start) for t in doc], [t.is_space for t in doc])))
    assert got == [[(s, e, label) for s, e, label in spans] for spans in expected]
    # and the free-generation path takes the same prompts
    free = spacy.load(tmp_path / "ctx" / "model-best", config={"components": {"tokner_lora_ner": {
        "decoding": "free", "max_new_tokens_factor": 0.5}}})
    assert free(texts[0]).text == texts[0] and free.get_pipe("tokner_lora_ner").last_stats.sentences == 2
    with pytest.raises(ValueError, match="context_sentences must be an integer >= 0"):
        spacy.load(tmp_path / "ctx" / "model-best", config={"components": {"tokner_lora_ner": {"context_sentences": -1}}})
