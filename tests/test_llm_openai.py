"""tokner.OpenAICompatible.v1 against small fake servers on 127.0.0.1 (failure modes,
concurrency, constraints, key policy), and tokner.BatchCache.v1 (answers keyed by model)."""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

pytest.importorskip("spacy_llm")

import spacy  # noqa: E402

import tokner.llm  # noqa: E402,F401
from tokner.llm.cache import (  # noqa: E402
    ModelBatchCache,
    fingerprint_digest,
    make_model_batch_cache,
    model_fingerprint,
)
from tokner.llm.models.openai import (  # noqa: E402
    OpenAICompatibleError,
    answer_grammar,
    answer_json_schema,
    answer_regex,
    json_answer_to_lines,
    make_openai_compatible,
    parse_retry_after,
    redact_url,
)
from tokner.llm.models.replay import make_replay_model  # noqa: E402
from tokner.llm.task import make_token_ner_task  # noqa: E402

TEXT = "Marfan syndrome causes joint pain. It is rare."
SENTENCES = [["Marfan", "syndrome", "causes", "joint", "pain", "."], ["It", "is", "rare", "."]]


# --- a fake OpenAI-compatible server --------------------------------------------------------


@dataclass
class Reply:
    """What the fake server answers: ``body`` (dict/list as JSON, str/bytes as is) after
    ``delay`` seconds; with ``trickle``, the body goes out one byte every ``trickle`` seconds."""

    status: int = 200
    body: Any = None
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: Optional[float] = None


@dataclass
class Request:
    index: int
    path: str
    headers: Dict[str, str]
    body: Dict[str, Any]


def chat(content: str, finish_reason: str = "stop") -> Reply:
    return Reply(body={"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]})


class FakeServer:
    """A threaded HTTP server on 127.0.0.1 calling ``respond(request) -> Reply`` per POST."""

    def __init__(self, respond: Callable[[Request], Reply]):
        self.respond = respond
        self.requests: List[Request] = []
        self.finished: List[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._send(Reply(body={"object": "list", "data": [{"id": "fake"}]}))

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    req = Request(len(server.requests), self.path, dict(self.headers), json.loads(raw))
                    server.requests.append(req)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._send(server.respond(req))
                finally:
                    with server._lock:
                        server.in_flight -= 1
                        server.finished.append(req.index)

            def _send(self, reply: Reply):
                body = reply.body
                if isinstance(body, (dict, list)):
                    body = json.dumps(body)
                body = body.encode("utf-8") if isinstance(body, str) else (body or b"")
                try:
                    time.sleep(reply.delay)
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if reply.trickle is None:
                        self.wfile.write(body)
                        return
                    for i in range(len(body)):
                        self.wfile.write(body[i: i + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (that is what some tests check)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def prompt_words(req: Request) -> List[str]:
    """The sentence's words, read back from the task's prompt (one word per line after 'Input:')."""
    text = req.body["messages"][-1]["content"]
    block = text.rsplit("Input:", 1)[-1].rsplit("Output:", 1)[0]
    return [l for l in block.split("\n") if l.strip()]


def all_o(req: Request) -> Reply:
    return chat("\n".join(f"{w} : O" for w in prompt_words(req)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_prompt(words, labels=None):
    return make_token_ner_task(**({"labels": list(labels)} if labels else {})).render(words)


def make_nlp(model: Dict[str, Any], cache: Optional[Path] = None, cache_factory: str = "tokner.BatchCache.v1"):
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    nlp.add_pipe("llm", config={
        "task": {"@llm_tasks": "tokner.TokenNER.v1"},
        "model": model,
        "cache": {"@llm_misc": cache_factory, "path": str(cache) if cache else None, "batch_size": 1,
                  "max_batches_in_mem": 4},
    })
    return nlp


def test_prompt_words_reads_the_template():
    assert prompt_words(Request(0, "/", {}, {"messages": [{"content": str(task_prompt(SENTENCES[0]))}]})) \
        == SENTENCES[0]


# --- constraints ----------------------------------------------------------------------------


def test_grammar_is_one_line_per_word_with_valid_tags():
    assert answer_grammar(["Pain", "."], ["SIGN"]) == (
        'root ::= w0 w1\n'
        'tag ::= "O" | "B-SIGN" | "I-SIGN"\n'
        'w0 ::= "Pain : " tag "\\n"\n'
        'w1 ::= ". : " tag "\\n"\n'
    )


def test_grammar_escapes_quotes_backslashes_and_control_characters():
    g = answer_grammar(['"tall"', "a\\b", "Sjögren's", "x\x01"], ["SIGN"])
    assert 'w0 ::= "\\"tall\\" : " tag "\\n"' in g
    assert 'w1 ::= "a\\\\b : " tag "\\n"' in g
    assert "w2 ::= \"Sjögren's : \" tag" in g
    assert 'w3 ::= "x\\x01 : " tag' in g


def test_grammar_parses_in_llama_cpp():
    """llama.cpp's own GBNF parser accepts the grammar (a grammar it rejects kills llama-cpp-python's server)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from tokner.offline import smollm2_gguf

    llm = llama_cpp.Llama(model_path=str(smollm2_gguf()), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def parses(grammar: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    words = ['"tall"', "a\\b", "Sjögren's", "[x]", "(y)", "a|b", "x\x01", "::=", "#", "'", "\\\"", "日本"]
    assert parses(answer_grammar(words, ["SIGN", "RARE-DISEASE"]))
    assert not parses('root ::= "a"b"')  # the check can fail


TRICKY = ["a.b", "(x)", "[1]", "$5", "^", "C++", "a|b", "{2}", "\\", "é", "-", "#", "?", "*", "/", "&", "~", "日本"]


def test_regex_matches_exactly_the_constrained_answers():
    regex = answer_regex(TRICKY, ["SIGN"])
    tags = ["O", "B-SIGN", "I-SIGN"] * 6
    answer = "".join(f"{w} : {t}\n" for w, t in zip(TRICKY, tags))
    assert re.fullmatch(regex, answer)
    assert not re.fullmatch(regex, answer.replace("I-SIGN", "I-SYMPTOM", 1))
    assert not re.fullmatch(regex, answer.replace("a.b", "axb", 1))
    assert not re.fullmatch(regex, answer.rstrip("\n"))
    # only regex metacharacters are escaped (no "\ ", "\-", "\#" that some engines reject)
    assert answer_regex(["a-b", "#", "x y"], ["S"]) == "a-b : (O|B-S|I-S)\\n# : (O|B-S|I-S)\\nx y : (O|B-S|I-S)\\n"


def test_json_schema_and_answer_conversion():
    schema = answer_json_schema(["Pain", "."], ["SIGN"])
    item = lambda w: {"type": "object",  # noqa: E731
                      "properties": {"token": {"type": "string", "const": w},
                                     "label": {"type": "string", "enum": ["O", "B-SIGN", "I-SIGN"]}},
                      "required": ["token", "label"], "additionalProperties": False}
    assert schema == {"type": "object", "properties": {"tokens": {
        "type": "array", "prefixItems": [item("Pain"), item(".")], "items": False, "minItems": 2, "maxItems": 2}},
        "required": ["tokens"], "additionalProperties": False}
    answer = json.dumps({"tokens": [{"token": "Pain", "label": "B-SIGN"}, {"token": ".", "label": "O"}]})
    assert json_answer_to_lines(answer) == "Pain : B-SIGN\n. : O\n"
    # truncated at max_tokens: the complete items are kept
    assert json_answer_to_lines(answer[:-25]) == "Pain : B-SIGN\n"
    assert json_answer_to_lines('{"tokens": [{"token": "a\\"b", "label": "O"}') == 'a"b : O\n'
    assert json_answer_to_lines("Pain : O") == "Pain : O"  # a server that ignored the schema


class LabelledPrompt(str):
    """A prompt carrying its task's labels (what tokner.TokenNER.v1's prompts may carry)."""

    def __new__(cls, text, words, labels):
        obj = super().__new__(cls, text)
        obj.words, obj.labels = tuple(words), tuple(labels)
        return obj


def test_constraint_bodies():
    p = task_prompt(["Pain", "."], labels=["SIGN"])  # the task's labels match the model's
    url = "http://127.0.0.1:9/v1"
    grammar = make_openai_compatible(base_url=url, constraint="grammar", labels=["SIGN"]).build_body(p)
    assert grammar["grammar"] == answer_grammar(["Pain", "."], ["SIGN"])
    assert grammar["max_tokens"] == 16 + 12 * 2 and grammar["temperature"] == 0
    regex = make_openai_compatible(base_url=url, constraint="regex", labels=["SIGN"]).build_body(p)
    assert regex["guided_regex"] == answer_regex(["Pain", "."], ["SIGN"])
    nested = make_openai_compatible(base_url=url, constraint="regex", constraint_field="structured_outputs.regex",
                                    labels=["SIGN"], config={"structured_outputs": {"backend": "xgrammar"}})
    assert nested.build_body(p)["structured_outputs"] == {"backend": "xgrammar",
                                                          "regex": answer_regex(["Pain", "."], ["SIGN"])}
    assert nested.config == {"structured_outputs": {"backend": "xgrammar"}}  # not mutated
    js = make_openai_compatible(base_url=url, constraint="json_schema", labels=["SIGN"]).build_body(p)
    assert js["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "token_labels", "schema": answer_json_schema(["Pain", "."], ["SIGN"]), "strict": True}}
    assert js["max_tokens"] == 32 + 24 * 2
    bare = make_openai_compatible(base_url=url, constraint="json_schema", constraint_field="guided_json",
                                  labels=["SIGN"]).build_body(p)
    assert bare["guided_json"] == answer_json_schema(["Pain", "."], ["SIGN"]) and "response_format" not in bare
    # the prompt's own labels win over the model's
    own = make_openai_compatible(base_url=url, constraint="grammar", labels=["SIGN"])
    assert own.build_body(LabelledPrompt(str(p), ["Pain", "."], ["SYMPTOM"]))["grammar"] == \
        answer_grammar(["Pain", "."], ["SYMPTOM"])
    assert "grammar" not in make_openai_compatible(base_url=url).build_body(p)
    with pytest.raises(ValueError, match="needs prompts that carry their words"):
        own.build_body("a plain string prompt")
    with pytest.raises(ValueError, match="constraint must be one of"):
        make_openai_compatible(base_url=url, constraint="gbnf")
    with pytest.raises(ValueError, match="constraint_field is set but constraint is null"):
        make_openai_compatible(base_url=url, constraint_field="grammar")


def test_json_schema_answers_come_back_as_lines():
    answer = json.dumps({"tokens": [{"token": "Pain", "label": "B-SYMPTOM"}, {"token": ".", "label": "O"}]})
    with FakeServer(lambda req: chat(answer)) as srv:
        model = make_openai_compatible(base_url=srv.url, constraint="json_schema")
        assert model([[task_prompt(["Pain", "."])]]) == [["Pain : B-SYMPTOM\n. : O\n"]]


# --- concurrency ------------------------------------------------------------------------------


def test_concurrency_keeps_prompt_order_and_bounds_requests_in_flight():
    def respond(req):
        words = prompt_words(req)
        return Reply(body=chat(f"{words[0]} : O").body, delay=1.0 if words[0] == "w0" else 0.3)

    prompts = [task_prompt([f"w{i}"]) for i in range(8)]
    with FakeServer(respond) as srv:
        model = make_openai_compatible(base_url=srv.url, concurrency=4)
        start = time.monotonic()
        out = model([prompts[:3], [], prompts[3:4], prompts[4:]])
        elapsed = time.monotonic() - start
        assert out == [["w0 : O", "w1 : O", "w2 : O"], [], ["w3 : O"], [f"w{i} : O" for i in range(4, 8)]]
        assert srv.max_in_flight == 4
        assert srv.finished[-1] == [r.index for r in srv.requests if prompt_words(r) == ["w0"]][0]
        # serially 1.0 + 7 * 0.3 = 3.1 s; the slow request holds one slot while the others go on
        assert elapsed < 2.0


def test_concurrency_one_is_sequential():
    with FakeServer(lambda req: Reply(body=all_o(req).body, delay=0.05)) as srv:
        model = make_openai_compatible(base_url=srv.url, concurrency=1)
        assert model([[task_prompt(["a"]), task_prompt(["b"])]]) == [["a : O", "b : O"]]
        assert srv.max_in_flight == 1


# --- failures -------------------------------------------------------------------------------


def test_retry_after_seconds_is_honoured():
    def respond(req):
        return Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}) if req.index == 0 else all_o(req)

    with FakeServer(respond) as srv:
        model = make_openai_compatible(base_url=srv.url, interval=0.01, max_tries=3)
        start = time.monotonic()
        assert model([[task_prompt(["Pain"])]]) == [["Pain : O"]]
        elapsed = time.monotonic() - start
        assert len(srv.requests) == 2
        assert 1.0 <= elapsed < 1.6
        assert model.stats == {"requests": 1, "tries": 2, "retries": 1, "failures": 0, "truncated": 0}


def test_parse_retry_after():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_retry_after_http_date_and_max_retry_after():
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3600), usegmt=True)
    with FakeServer(lambda req: Reply(503, "busy", {"Retry-After": when})) as srv:
        model = make_openai_compatible(base_url=srv.url, interval=0.01, max_tries=5, max_retry_after=10)
        start = time.monotonic()
        with pytest.raises(OpenAICompatibleError, match=r"asked to wait 3[56]\d\d s \(more than max_retry_after = 10 s\)"):
            model([[task_prompt(["Pain"])]])
        assert len(srv.requests) == 1 and time.monotonic() - start < 1.0


def test_no_sleep_after_the_last_try():
    with FakeServer(lambda req: Reply(500, "internal error")) as srv:
        model = make_openai_compatible(base_url=srv.url, interval=0.2, max_tries=3)
        start = time.monotonic()
        with pytest.raises(OpenAICompatibleError, match="failed after 3 tries: HTTP 500: internal error") as e:
            model([[task_prompt(["Pain"])]])
        elapsed = time.monotonic() - start
        assert len(srv.requests) == 3
        assert 0.6 <= elapsed < 0.9  # 0.2 + 0.4 s of backoff, nothing after the third try
        assert e.value.status == 500 and e.value.url == f"{srv.url}/chat/completions"


def test_client_errors_are_not_retried():
    with FakeServer(lambda req: Reply(400, {"error": {"message": "bad request"}})) as srv:
        with pytest.raises(OpenAICompatibleError, match=re.escape(f"{srv.url}/chat/completions") + ".*after 1 try"):
            make_openai_compatible(base_url=srv.url, interval=0.01)([[task_prompt(["x"])]])
        assert len(srv.requests) == 1


@pytest.mark.parametrize("body,message", [
    ({"error": {"message": "model overloaded", "type": "server_error"}}, "HTTP 200 with an error: model overloaded"),
    ([], "HTTP 200 but the body is a JSON list, not an object: []"),
    ({"choices": []}, "HTTP 200 but no choices in the answer"),
    ({"id": "x"}, "HTTP 200 but no choices in the answer"),
    ("<html>gateway</html>", "HTTP 200 but the body is not JSON: <html>gateway</html>"),
    ({"choices": [{"message": {"content": None, "refusal": "I can't"}}]}, "HTTP 200 but the model refused: I can't"),
])
def test_malformed_200_answers_are_errors(body, message):
    with FakeServer(lambda req: Reply(200, body)) as srv:
        model = make_openai_compatible(base_url=srv.url, interval=0.01, max_tries=2)
        with pytest.raises(OpenAICompatibleError) as e:
            model([[task_prompt(["Pain"])]])
        assert f"request to {srv.url}/chat/completions (model 'gpt-4o') failed after 2 tries: {message}" in str(e.value)
        assert len(srv.requests) == 2  # retried, then raised


def test_a_trickling_body_hits_the_deadline():
    body = json.dumps(chat("Pain : O").body)
    with FakeServer(lambda req: Reply(200, body, trickle=0.05)) as srv:  # ~5 s for the whole body
        model = make_openai_compatible(base_url=srv.url, timeout=0.5, max_tries=2, interval=0.05)
        start = time.monotonic()
        with pytest.raises(OpenAICompatibleError, match=r"body did not arrive within timeout = 0\.5 s"):
            model([[task_prompt(["Pain"])]])
        elapsed = time.monotonic() - start
        assert len(srv.requests) == 2
        assert 1.0 <= elapsed < 1.0 + 0.05 + 0.5  # timeout * max_tries + backoff, plus slack


def test_a_silent_server_hits_the_deadline():
    with FakeServer(lambda req: Reply(200, chat("x : O").body, delay=3.0)) as srv:
        model = make_openai_compatible(base_url=srv.url, timeout=0.4, max_tries=2, interval=0.05)
        start = time.monotonic()
        with pytest.raises(OpenAICompatibleError, match=r"no answer within timeout = 0\.4 s"):
            model([[task_prompt(["Pain"])]])
        assert time.monotonic() - start < 0.4 * 2 + 0.05 + 0.5


def test_redirects_are_not_followed():
    with FakeServer(lambda req: Reply(302, "", {"Location": "http://elsewhere.example/v1?k=1"})) as srv:
        with pytest.raises(OpenAICompatibleError, match=r"HTTP 302 redirect to http://elsewhere.example/v1 \(not followed\)"):
            make_openai_compatible(base_url=srv.url, max_tries=3, interval=0.01)([[task_prompt(["x"])]])
        assert len(srv.requests) == 1


def test_first_failure_fails_the_call_and_stops_pending_prompts():
    def respond(req):
        if prompt_words(req) == ["bad"]:
            return Reply(400, "no")
        return Reply(body=all_o(req).body, delay=0.2)

    with FakeServer(respond) as srv:
        model = make_openai_compatible(base_url=srv.url, concurrency=2, max_tries=1)
        prompts = [task_prompt(["bad"])] + [task_prompt([f"w{i}"]) for i in range(10)]
        with pytest.raises(OpenAICompatibleError, match="HTTP 400: no"):
            model([prompts])
        assert len(srv.requests) < 11


# --- keys and secrets ---------------------------------------------------------------------------


def test_key_policy(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("MY_KEY", "sk-mine")
    # OpenAI's own URL: OPENAI_API_KEY by default
    assert make_openai_compatible().api_key_env == "OPENAI_API_KEY"
    assert make_openai_compatible(base_url="https://api.openai.com/v1/").api_key_env == "OPENAI_API_KEY"
    # any other server: no key unless api_key_env names one
    for url in ("https://my-vllm.example/v1", "http://api.openai.com/v1", "https://api.openai.com.evil.example/v1",
                "http://127.0.0.1:8000/v1"):
        assert make_openai_compatible(base_url=url).api_key_env is None, url
    assert make_openai_compatible(base_url="https://my-vllm.example/v1", api_key_env="MY_KEY").api_key_env == "MY_KEY"
    # never over plain http to a non-loopback host...
    for url in ("http://10.0.0.5:8000/v1", "http://my-vllm.example/v1"):
        with pytest.raises(ValueError, match=r"refusing to send the API key from \$MY_KEY over plain http"):
            make_openai_compatible(base_url=url, api_key_env="MY_KEY")
        assert make_openai_compatible(base_url=url, api_key_env="MY_KEY", allow_insecure_key=True).api_key_env
    # ...but loopback is fine
    for url in ("http://localhost:8000/v1", "http://127.0.0.1:8000/v1", "http://127.1.2.3/v1", "http://[::1]:8000/v1"):
        assert make_openai_compatible(base_url=url, api_key_env="MY_KEY").api_key_env == "MY_KEY"
    # credentials in the URL (HTTP Basic auth): the same rule, and not together with a key
    with pytest.raises(ValueError, match="refusing to send base_url's credentials over plain http"):
        make_openai_compatible(base_url="http://u:p@10.0.0.5/v1")
    with pytest.raises(ValueError, match="base_url carries credentials .* and api_key_env names a key"):
        make_openai_compatible(base_url="https://u:p@h.example/v1", api_key_env="MY_KEY")
    assert make_openai_compatible(base_url="https://u:p@h.example/v1").api_key_env is None


def test_url_credentials_go_as_basic_auth_and_stay_out_of_messages():
    with FakeServer(lambda req: Reply(500, f"denied {req.headers.get('Authorization')}")) as srv:
        url = srv.url.replace("127.0.0.1", "tokner:pw-secret-9@127.0.0.1")
        with pytest.raises(OpenAICompatibleError) as e:
            make_openai_compatible(base_url=url, max_tries=1)([[task_prompt(["x"])]])
        assert srv.requests[0].headers["Authorization"] == "Basic dG9rbmVyOnB3LXNlY3JldC05"
        assert str(e.value) == (f"tokner.OpenAICompatible.v1: request to {srv.url}/chat/completions (model 'gpt-4o') "
                                f"failed after 1 try: HTTP 500: denied Basic ***")


def test_no_key_is_sent_to_other_servers(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    with FakeServer(all_o) as srv:
        make_openai_compatible(base_url=srv.url)([[task_prompt(["Pain"])]])
        make_openai_compatible(base_url=srv.url, api_key_env="UNSET_TOKNER_VAR")([[task_prompt(["Pain"])]])
        assert [r.headers.get("Authorization") for r in srv.requests] == [None, None]


def test_redact_url():
    assert redact_url("https://user:pw@host.example:8443/v1/chat?key=s#frag") == "https://host.example:8443/v1/chat"
    assert redact_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


def test_secrets_never_reach_messages_logs_or_cache(monkeypatch, caplog, tmp_path):
    secrets = ("sk-secret-123", "q-secret-7")
    monkeypatch.setenv("TOKNER_TEST_KEY", "sk-secret-123")
    caplog.set_level(logging.DEBUG)
    messages: List[str] = []

    def echo_auth(req):  # a server that repeats the credentials it got in its error
        return Reply(500, {"error": {"message": f"bad key {req.headers.get('Authorization')} for {req.path}"}})

    with FakeServer(echo_auth) as srv:
        url = srv.url + "?token=q-secret-7"
        model = make_openai_compatible(base_url=url, api_key_env="TOKNER_TEST_KEY", max_tries=2, interval=0.01)
        with pytest.raises(OpenAICompatibleError) as e:
            model([[task_prompt(["Pain"])]])
        messages.append(str(e.value))
        assert srv.requests[0].headers["Authorization"] == "Bearer sk-secret-123"  # it was sent...
        assert srv.requests[0].path == "/v1/chat/completions?token=q-secret-7"
        assert "bad key Bearer *** for /v1/chat/completions?***" in str(e.value)  # ...and scrubbed
    # nothing listens there any more: requests' own message names the URL with its query
    closed = make_openai_compatible(base_url=f"http://127.0.0.1:{free_port()}/v1?token=q-secret-7",
                                    api_key_env="TOKNER_TEST_KEY", max_tries=2, interval=0.01)
    with pytest.raises(OpenAICompatibleError) as e:
        closed([[task_prompt(["Pain"])]])
    messages.append(str(e.value))
    assert "ConnectionError" in str(e.value)
    # a pipeline with a cache and a saved config
    with FakeServer(all_o) as srv:
        model_cfg = {"@llm_models": "tokner.OpenAICompatible.v1", "base_url": srv.url + "?token=q-secret-7",
                     "api_key_env": "TOKNER_TEST_KEY"}
        nlp = make_nlp(model_cfg, cache=tmp_path / "cache")
        nlp(TEXT)
        nlp.to_disk(tmp_path / "pipeline")
        fp = nlp.get_pipe("llm")._model.fingerprint()
        (tmp_path / "metrics.json").write_text(json.dumps({"model": fp, "stats": nlp.get_pipe("llm")._model.stats}))
    all_logs = [r.getMessage() for r in caplog.records]
    # urllib3's own DEBUG lines show the request path with its query string; tokner's never do
    tokner_logs = [r.getMessage() for r in caplog.records if r.name.startswith("tokner")]
    assert any("retrying" in line for line in tokner_logs)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "model.json" for p in written)
    for text in messages + all_logs:
        assert "sk-secret-123" not in text
    for p in written:
        assert b"sk-secret-123" not in p.read_bytes(), p
    for secret in secrets:
        for text in messages + tokner_logs:
            assert secret not in text
        for p in written:  # the saved config.cfg keeps base_url as configured, query included
            if "pipeline" not in p.relative_to(tmp_path).parts:
                assert secret.encode() not in p.read_bytes(), p


# --- tokner.BatchCache.v1: answers keyed by the model ---------------------------------------------


def replay_file(path: Path, first_label: str) -> Path:
    lines = [f"{w} : {first_label if i == 0 else 'O'}" for i, w in enumerate(SENTENCES[0])]
    other = [f"{w} : O" for w in SENTENCES[1]]
    path.write_text("######\n" + "\n".join(lines) + "\n######\n" + "\n".join(other) + "\n", encoding="utf-8")
    return path


def test_switching_models_over_one_cache_folder_asks_the_new_model(tmp_path):
    cache = tmp_path / "cache"
    a = replay_file(tmp_path / "a.txt", "B-RAREDISEASE")
    b = replay_file(tmp_path / "b.txt", "B-SIGN")

    def run(path):
        nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(path)}, cache=cache)
        doc = nlp(TEXT)
        return [(e.text, e.label_) for e in doc.ents], nlp.get_pipe("llm")._model.stats["exact"]

    assert run(a) == ([("Marfan", "RAREDISEASE")], 2)
    assert run(b) == ([("Marfan", "SIGN")], 2)  # model b is really called
    assert run(a) == ([("Marfan", "RAREDISEASE")], 0)  # a's answers again, from the cache
    assert len(list(cache.glob("model-*/model.json"))) == 2


def test_spacy_batch_cache_would_serve_the_old_models_answers(tmp_path):
    """Why tokner.BatchCache.v1 exists: spacy-llm's cache never asks the model."""
    cache = tmp_path / "cache"
    for path, expected in ((replay_file(tmp_path / "a.txt", "B-RAREDISEASE"), "RAREDISEASE"),
                           (replay_file(tmp_path / "b.txt", "B-SIGN"), "RAREDISEASE")):
        nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(path)}, cache=cache,
                       cache_factory="spacy.BatchCache.v1")
        assert [e.label_ for e in nlp(TEXT).ents] == [expected]


def test_every_answer_changing_setting_gets_its_own_cache_folder(tmp_path):
    cache = tmp_path / "cache"

    def respond(req):
        words = prompt_words(req)
        label = "B-SIGN" if req.body["model"] == "m2" else "O"
        return chat("\n".join(f"{w} : {label if i == 0 else 'O'}" for i, w in enumerate(words)))

    with FakeServer(respond) as one, FakeServer(respond) as two:
        base = {"@llm_models": "tokner.OpenAICompatible.v1", "name": "m1", "base_url": one.url}
        variants = [
            base,
            {**base, "name": "m2"},
            {**base, "base_url": two.url},
            {**base, "constraint": "grammar"},
            {**base, "config": {"temperature": 0.7}},
            {**base, "system_prompt": "You label clinical text."},
        ]
        seen = []
        for variant in variants:
            before = len(one.requests) + len(two.requests)
            doc = make_nlp(variant, cache=cache)(TEXT)
            seen.append((len(one.requests) + len(two.requests) - before, [e.label_ for e in doc.ents]))
        assert seen == [(2, []), (2, ["SIGN", "SIGN"]), (2, []), (2, []), (2, []), (2, [])]
        # the first model again, and settings that do not change answers: all from the cache
        for variant in (base, {**base, "concurrency": 1, "timeout": 30.0, "max_tries": 2}):
            before = len(one.requests)
            make_nlp(variant, cache=cache)(TEXT)
            assert len(one.requests) == before
    assert len(list(cache.glob("model-*"))) == len(variants)


def test_openai_fingerprint():
    model = make_openai_compatible(name="llama3", base_url="http://127.0.0.1:8000/v1/", constraint="regex",
                                   constraint_field="structured_outputs.regex", labels=["SIGN"],
                                   config={"top_p": 0.5}, system_prompt="sys", concurrency=3)
    assert model.fingerprint() == {
        "model": "tokner.OpenAICompatible.v1", "name": "llama3", "url": "http://127.0.0.1:8000/v1/chat/completions",
        "constraint": "regex", "constraint_field": "structured_outputs.regex", "labels": ["SIGN"],
        "config": {"top_p": 0.5}, "system_prompt": "sys", "max_tokens": "16+12n"}
    with_query = make_openai_compatible(base_url="https://h.example/v1?api-version=2024").fingerprint()
    assert with_query["url"] == "https://h.example/v1/chat/completions"
    assert with_query["query_sha256"] == "cb64075b6d67aef40bf3ae97ba1b2721260682b66235792e6d7a6fe41b1f8073"


def test_cache_outside_the_llm_component_needs_its_model(tmp_path):
    nlp = spacy.blank("en")
    doc = nlp("Pain .")
    cache = make_model_batch_cache(path=tmp_path / "c", batch_size=1)
    cache.initialize(nlp.vocab, make_token_ner_task())
    with pytest.raises(ValueError, match="does not know its model"):
        doc in cache  # noqa: B015
    model = make_replay_model()
    model._set_records([{"tokens": ["Pain", "."], "prompt": None, "response": "Pain : O\n. : O"}])
    cache.bind_model(model)
    assert doc not in cache
    cache.add(doc)
    assert doc in cache and cache[doc].text == "Pain ."
    assert cache.model_path == tmp_path / "c" / f"model-{fingerprint_digest(cache.fingerprint)}"
    assert json.loads((cache.model_path / "model.json").read_text()) == cache.fingerprint
    assert isinstance(cache, ModelBatchCache) and make_model_batch_cache(path=None).model_path is None


def test_models_without_fingerprint_are_keyed_by_class_and_settings():
    class Other:  # e.g. one of spacy-llm's REST models
        _name = "gpt-x"
        _endpoint = "https://e.example/v1"
        _config = {"temperature": 0}
        _model = object()  # not a setting

    with pytest.warns(UserWarning, match="has no fingerprint"):
        fp = model_fingerprint(Other())
    assert fp == {"class": f"{Other.__module__}.{Other.__qualname__}", "_name": "gpt-x",
                  "_endpoint": "https://e.example/v1", "_config": {"temperature": 0}}
    replay = make_replay_model()
    replay._set_records([])
    assert model_fingerprint(replay)["class"] == "tokner.llm.models.replay.ReplayModel"
