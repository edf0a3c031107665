"""Backends: a tiny random causal LM end to end, dense retrieval with a tiny encoder,
the OpenAI-compatible client against a fake server."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("spacy_llm")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import spacy  # noqa: E402

import tokner.llm  # noqa: E402,F401
from tokner.llm import DenseIndex  # noqa: E402
from tokner.llm.models import make_hf_causal_lm, make_openai_compatible  # noqa: E402
from tokner.llm.task import make_token_ner_task  # noqa: E402
from tokner.answers.tags import is_valid_tag  # noqa: E402
from tiny_models import MINILM, copy_tokenizer, make_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), hidden=32)


def test_hf_model_end_to_end(tiny_llama, tmp_path):
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    nlp.add_pipe("llm", config={
        "task": {"@llm_tasks": "tokner.TokenNER.v1"},
        "model": {"@llm_models": "tokner.HFCausalLM.v1", "name": str(tiny_llama), "batch_size": 2,
                  "max_new_tokens_cap": 24, "num_threads": 1},
        "cache": {"@llm_misc": "spacy.BatchCache.v1", "path": str(tmp_path / "cache"), "batch_size": 1,
                  "max_batches_in_mem": 1},
    })
    model = nlp.get_pipe("llm")._model
    assert model.use_chat_template  # SmolLM2's tokenizer has one
    texts = ["Marfan syndrome causes pain.  It is rare.", "Fatigue is common in lupus ."]
    docs = list(nlp.pipe(texts, batch_size=2))
    for doc, text in zip(docs, texts):
        assert doc.text == text
        assert doc._.tokner_llm["units"] == len(list(doc.sents))
        # constrained decoding (the default): every sentence's answer aligns fully
        assert doc._.tokner_llm["fully_aligned"] == doc._.tokner_llm["units"]
        for ent in doc.ents:  # random weights: whatever was predicted sits on token boundaries
            span = doc.char_span(ent.start_char, ent.end_char)
            assert (span.start, span.end) == (ent.start, ent.end)
        scores = doc.spans["llm"].attrs["scores"]
        assert [(s.start, s.end, s.label_) for s in doc.spans["llm"]] == [(e.start, e.end, e.label_) for e in doc.ents]
        assert len(scores) == len(doc.ents) and all(0.0 < s <= 1.0 for s in scores)
    nlp.to_disk(tmp_path / "pipe")
    nlp2 = spacy.load(tmp_path / "pipe")
    assert [d.text for d in nlp2.pipe(texts)] == texts


def test_hf_budget_scales_with_sentence_length(tiny_llama):
    model = make_hf_causal_lm(name=str(tiny_llama), num_threads=1)
    task = make_token_ner_task()
    short = task.render(["Pain", "."])
    long = task.render(["word"] * 100)
    assert model.budget(short) < model.budget(long) <= model.max_new_tokens_cap
    assert model.budget(long) > 128  # the paper's fixed 128 would truncate this sentence
    fixed = make_hf_causal_lm(name=str(tiny_llama), max_new_tokens=7, num_threads=1)
    assert fixed.budget(long) == 7
    out = fixed([[short], [], [long]])
    assert [len(x) for x in out] == [1, 0, 1] and all(isinstance(x, str) for x in out[0] + out[2])


def test_dense_index_neighbours(tmp_path):
    copy_tokenizer(MINILM, tmp_path / "enc")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "enc")
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "enc")
    index = DenseIndex(str(tmp_path / "enc"), batch_size=2)
    texts = ["marfan syndrome is rare", "joint pain and fatigue", "enlarged liver", "the patient coughs"]
    index.build(texts)
    assert index.vectors.shape == (4, 32)
    assert index.search_many(texts, 1) == [[0], [1], [2], [3]]  # each text is its own nearest neighbour
    index.to_disk(tmp_path / "idx")
    again = DenseIndex(str(tmp_path / "enc")).from_disk(tmp_path / "idx", texts)
    assert again.search_many(["enlarged liver"], 2)[0][0] == 2
    # another encoder than the one that embedded the index: refused, naming both
    with pytest.raises(ValueError, match=r"embedded with .*enc.*, but the pipeline's encoder is 'other-encoder'"):
        DenseIndex("other-encoder").from_disk(tmp_path / "idx", texts)
    # the same model in another folder (a pipeline moved to another machine): used
    import shutil

    shutil.copytree(tmp_path / "enc", tmp_path / "moved" / "enc")
    moved = DenseIndex(str(tmp_path / "moved" / "enc")).from_disk(tmp_path / "idx", texts)
    assert moved.search_many(["enlarged liver"], 2)[0][0] == 2


def test_missing_retrieval_index_folder_is_an_error(tmp_path):
    from tokner.llm.retrieval import BM25Index, SimilarExamples

    from spacy.tokens import Doc, DocBin
    import spacy

    vocab = spacy.blank("en").vocab
    db = DocBin(docs=[Doc(vocab, words=["Marfan", "syndrome", "."], ents=["B-RAREDISEASE", "I-RAREDISEASE", "O"],
                          sent_starts=[True, False, False])])
    db.to_disk(tmp_path / "train.spacy")
    sel = SimilarExamples(str(tmp_path / "train.spacy"), 1, BM25Index(), 60)
    sel.initialize(spacy.blank("en"), labels=["RAREDISEASE"])
    sel.to_disk(tmp_path / "sel")
    import shutil

    shutil.rmtree(tmp_path / "sel" / "index")
    with pytest.raises(FileNotFoundError, match=r"sel/index: the retrieval index is missing"):
        SimilarExamples(str(tmp_path / "train.spacy"), 1, BM25Index(), 60).from_disk(tmp_path / "sel")


def test_openai_compatible_base_url(monkeypatch):
    from test_llm_openai import FakeServer, Reply, chat

    monkeypatch.setenv("MY_KEY", "secret")
    with FakeServer(lambda req: chat("Pain : B-SYMPTOM\n. : O")) as srv:
        # a trailing slash is fine; a key named by api_key_env goes to a loopback server over http
        model = make_openai_compatible(name="llama3", base_url=srv.url + "/", api_key_env="MY_KEY")
        task = make_token_ner_task()
        out = model([[task.render(["Pain", "."])]])
        assert out == [["Pain : B-SYMPTOM\n. : O"]]
        req = srv.requests[0]
        assert req.path == "/v1/chat/completions"
        assert req.body["model"] == "llama3" and req.body["temperature"] == 0 and req.body["max_tokens"] == 16 + 12 * 2
        assert req.headers["Authorization"] == "Bearer secret"

    with FakeServer(lambda req: Reply(400, "bad request")) as srv:
        with pytest.raises(ValueError, match=srv.url.replace(".", r"\.")):
            make_openai_compatible(base_url=srv.url, interval=0.01)([["x"]])
        assert len(srv.requests) == 1  # a client error is not retried


def test_tags_from_model_output_are_valid(tiny_llama):
    from tokner.answers.align import align_answer

    model = make_hf_causal_lm(name=str(tiny_llama), max_new_tokens=30, num_threads=1)
    words = ["Marfan", "syndrome", "."]
    [[answer]] = model([[make_token_ner_task().render(words)]])
    tags, stats = align_answer(words, answer, ["RAREDISEASE"])
    assert len(tags) == 3 and all(is_valid_tag(t) for t in tags)


def test_prime_answer(tiny_llama):
    model = make_hf_causal_lm(name=str(tiny_llama), max_new_tokens=3, num_threads=1, prime_answer=True)
    prompt = make_token_ner_task().render(["Marfan", "syndrome"])
    assert model.format_prompt(prompt).endswith("<|im_start|>assistant\nMarfan :")
    [[answer]] = model([[prompt]])
    assert answer.startswith("Marfan :")
