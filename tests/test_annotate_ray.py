"""``tokner annotate --engine ray`` writes what the local engine writes, entity for entity.

One small local Ray cluster (2 CPUs, 100 MiB object store, no dashboard) serves the
whole module; each run starts its own pool of 2 actors on it.
"""
import json
import os

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from spacy.tokens import DocBin  # noqa: E402

from tokner.annotate import InputError, RayOptions, annotate  # noqa: E402

from test_annotate import DOCS, TEXTS, make_ruler_nlp, write_jsonl  # noqa: E402


def _docs():
    """A few dozen documents: the crafted ones (CRLF, tabs, emoji, empty) and generated ones, int ids too."""
    docs = [(doc_id, TEXTS[doc_id]) for doc_id, _ in DOCS]
    for i in range(32):
        body = " ".join(["Fabry disease with pain." if i % 3 == 0 else "high\r\nfever,", "\tnothing else."][: 1 + i % 2])
        docs.append((i if i % 4 == 0 else f"gen/{i:02d}", body * (1 + i % 3)))
    return docs


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=100 * 1024**2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "ruler"
    make_ruler_nlp().to_disk(path)
    return path


OPTIONS = RayOptions(actors=2, cpus_per_actor=1, block_size=8)


def test_ray_matches_local(ray_cluster, model, tmp_path):
    docs = _docs()
    inp = write_jsonl(tmp_path / "in.jsonl", docs)
    local = annotate(model, inp, tmp_path / "local.jsonl", batch_size=4, progress=False)
    remote = annotate(model, inp, tmp_path / "ray.jsonl", batch_size=4, engine="ray", ray_options=OPTIONS,
                      progress=False)
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (remote.docs, remote.entities) == (local.docs, local.entities) == (len(docs), local.entities)
    assert local.entities > 40
    assert [json.loads(line)["id"] for line in (tmp_path / "ray.jsonl").read_text().splitlines()] == [
        d for d, _ in docs]


def test_ray_docbin_and_resume(ray_cluster, model, tmp_path):
    docs = _docs()
    inp = write_jsonl(tmp_path / "in.jsonl", docs)
    annotate(model, inp, tmp_path / "local.spacy", progress=False)
    annotate(model, inp, tmp_path / "ray.spacy", engine="ray", ray_options=OPTIONS, batch_size=4, progress=False)
    vocab = make_ruler_nlp().vocab
    local = list(DocBin().from_disk(tmp_path / "local.spacy").get_docs(vocab))
    remote = list(DocBin().from_disk(tmp_path / "ray.spacy").get_docs(vocab))
    assert [(d.user_data["id"], d.text, [(e.start_char, e.end_char, e.label_) for e in d.ents]) for d in remote] == [
        (d.user_data["id"], d.text, [(e.start_char, e.end_char, e.label_) for e in d.ents]) for d in local]
    # a bad line stops both engines at the same place; --resume with skip then completes the output
    lines = (tmp_path / "in.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:20] + ['{"id": "oops"}'] + lines[20:]) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:21: no 'text' field"):
        annotate(model, bad, tmp_path / "resumed.jsonl", engine="ray", ray_options=OPTIONS, batch_size=4,
                 progress=False)
    assert len((tmp_path / "resumed.jsonl").read_text().splitlines()) == 20
    summary = annotate(model, bad, tmp_path / "resumed.jsonl", engine="ray", ray_options=OPTIONS, batch_size=4,
                       resume=True, on_error="skip", progress=False)
    assert (summary.resumed, summary.docs, summary.errors) == (20, len(docs) - 20, 1)
    annotate(model, inp, tmp_path / "local.jsonl", progress=False)
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
