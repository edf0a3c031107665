"""The ``all`` workflow end to end on a tiny corpus slice with tiny random models.

Runs ``python -m tokner.workflow all`` (every step through ``spacy project run``) in a
copy of the project with the 100 shortest train and 2 shortest dev documents, a tiny BERT as the transformer and
the retrieval encoder, and a tiny llama as the prompted LLM and the LoRA base model.
Checks that every step exits 0, that ``compare`` writes the table, the chart and the
HTML, and that a second run skips the steps whose inputs did not change.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import srsly

pytest.importorskip("spacy_llm")
pytest.importorskip("spacy_transformers")
pytest.importorskip("peft")

from reference_scores import seqeval_micro5  # noqa: E402
from tiny_models import ROOT, make_tiny_bert, make_tiny_llama, pick_brat  # noqa: E402


def _assert_reproduces_saved(folder, gold, saved, setting, members, doc_probs=None):
    """The voting pipeline in `folder` holds exactly `members` and gives, on the gold texts, what
    `setting` gives on the members' saved predictions (tokner.ensemble.predict)."""
    import spacy

    from tokner.ensemble import predict

    nlp = spacy.load(folder)
    assert sorted(p.name for p in (folder / "tokner_ensemble" / "members").iterdir()) == members
    expected = predict(gold, saved, setting, doc_probs=doc_probs)
    assert [[(e.start_char, e.end_char, e.label_) for e in nlp(g.text).ents] for g in gold] == expected
    return nlp

METHODS = ("cnn", "cnn-vectors", "bert", "zero-shot", "few-shot", "rag", "lora-constrained", "lora-free", "ensemble",
           "bert-doc-type")


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory, brat_train, brat_dev):
    root = tmp_path_factory.mktemp("tiny_all")
    proj = root / "project"
    proj.mkdir()
    shutil.copy(ROOT / "project.yml", proj / "project.yml")
    for folder in ("configs", "benchmarks"):
        shutil.copytree(ROOT / folder, proj / folder, ignore=shutil.ignore_patterns("__pycache__"))
    data = root / "raredis"
    pick_brat(brat_train, 0, 100, data / "train")  # spacy debug data (corpus-stats) wants >= 100 docs
    pick_brat(brat_dev, 0, 2, data / "dev")
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(data.rglob("*.txt"))).split()
    models = root / "models"
    bert = make_tiny_bert(models / "bert", words)
    llama = make_tiny_llama(models / "llama", hidden=32)
    overrides = {
        "raredis_dir": data, "transformer": bert, "minilm": bert, "llm_model": llama, "lora_base_model": llama,
        "cnn_max_steps": 4, "cnn_eval_frequency": 2, "bert_max_steps": 2, "bert_eval_frequency": 2,
        "lora_max_minutes": 0.02, "lora_eval_docs": 1, "lora_free_docs": 0, "lora_eval_dtype": "float32",
        "llm_max_sentences": 2,
    }
    args = [a for k, v in overrides.items() for a in (f"--vars.{k}", str(v))]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "tokner.workflow", "all", "--jobs", "2", *args]
    first = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=1200)
    logs = "".join(p.read_text(encoding="utf-8")[-3000:] for p in sorted((proj / "metrics" / "logs").glob("*.log")))
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-6000:] + logs
    timings = srsly.read_json(proj / "metrics" / "timings-all.json")
    # the parallel runner's lock file is weasel's: one after another (`--jobs 1`, spacy project
    # run) skips the same steps
    second = subprocess.run(cmd[:4] + cmd[6:], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-6000:]
    third = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-6000:] + third.stderr[-6000:]
    return proj, timings, second.stdout, third.stdout


def test_every_step_ran_and_was_timed(tiny_project):
    proj, timings = tiny_project[:2]
    workflow = srsly.read_yaml(proj / "project.yml")["workflows"]["all"]
    assert [t["step"] for t in timings["steps"]] == workflow
    assert all(t["returncode"] == 0 and t["seconds"] > 0 for t in timings["steps"])
    assert timings["total_seconds"] == pytest.approx(sum(t["seconds"] for t in timings["steps"]), abs=0.5)
    assert timings["jobs"] == 2
    # two at a time: the wall time is below the sum, and each step started after those it needs
    assert timings["wall_seconds"] < timings["total_seconds"]
    start = {t["step"]: t["start"] for t in timings["steps"]}
    end = {t["step"]: t["end"] for t in timings["steps"]}
    for step, needs in (("train-lora", "corpus"), ("evaluate-lora", "train-lora"), ("train-cnn-vectors", "static-vectors"),
                        ("compare", "evaluate-bert"), ("compare", "llm-zero")):
        assert start[step] >= end[needs], (step, needs)
    logs = proj / "metrics" / "logs"
    assert "Running command:" in (logs / "train-cnn.log").read_text(encoding="utf-8")


def test_compare_writes_table_chart_and_html(tiny_project):
    proj = tiny_project[0]
    table = (proj / "reports" / "comparison.md").read_text(encoding="utf-8")
    for method in METHODS:
        assert f"| {method} (dev) |" in table, method
    assert "GPT-4" in table  # the paper's published figures, marked as theirs
    assert (proj / "reports" / "f1_by_type.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (proj / "reports" / "errors.html").read_text(encoding="utf-8")
    assert html.count("<h2>") == 2  # one per dev document
    for method in ("cnn", "bert", "zero-shot", "rag", "lora-constrained", "lora-free"):
        assert f">{method}</th>" in html, method
    # the trained pipelines' rows, free generation included, are scored on all of dev (2 docs
    # here; the prompted rows stop at llm_max_sentences)
    rows = {line.split(" (dev) |")[0].lstrip("| "): line for line in table.splitlines() if " (dev) |" in line}
    for method in ("cnn", "cnn-vectors", "bert", "lora-constrained", "lora-free", "ensemble", "bert-doc-type"):
        assert rows[method].rstrip().endswith("| 2 docs |"), rows[method]


def test_every_method_scored_with_the_paper_metric(tiny_project):
    proj = tiny_project[0]
    names = {"cnn": "cnn-dev", "cnn-vectors": "cnn_vectors-dev", "bert": "bert-dev", "zero-shot": "llm_zero-dev", "few-shot": "llm_few-dev",
             "rag": "llm_rag-dev", "lora-constrained": "lora-dev", "lora-free": "lora-free-dev",
             "ensemble": "ensemble-dev", "bert-doc-type": "bert_doc_type-dev"}
    from spacy.tokens import DocBin

    checked = []
    for method, stem in names.items():
        scores = json.loads((proj / "metrics" / f"{stem}.json").read_text())
        table = scores["spans_paper_per_type"]
        assert set(table) >= {"DISEASE", "SIGN", "AVG-5", "MICRO-5"}, method
        five = ("DISEASE", "RAREDISEASE", "SKINRAREDISEASE", "SIGN", "SYMPTOM")
        assert scores["paper_avg_f"] == pytest.approx(sum(table[t]["f"] for t in five) / 5), method
        pred = proj / "metrics" / f"{stem}.spacy"
        ref = seqeval_micro5(proj / "corpus" / "dev.spacy", pred) if pred.exists() else None
        if ref is not None:  # predictions on the gold tokens: seqeval gives the same micro-5
            assert scores["paper_micro5_f"] == pytest.approx(ref[2]), method
            checked.append(method)
    assert {"zero-shot", "few-shot", "rag", "ensemble", "bert-doc-type"} <= set(checked), checked
    # free generation is scored on all of dev, its predictions saved for compare
    free = json.loads((proj / "metrics" / "lora-free-dev.json").read_text())
    assert free["docs"] == 2
    assert len(DocBin().from_disk(proj / "metrics" / "lora-free-dev.spacy")) == 2
    # the voting pipeline, its members inside, gives what the chosen setting gives on the
    # members' saved predictions (the LoRA row decodes in float32 here, as the saved member does)
    import spacy

    from tokner.doctype import find_component

    vocab = spacy.blank("en").vocab
    gold = list(DocBin().from_disk(proj / "corpus" / "dev.spacy").get_docs(vocab))
    saved = {m: list(DocBin().from_disk(proj / "metrics" / f"{names[m]}.spacy").get_docs(vocab))
             for m in ("lora-constrained", "bert", "cnn-vectors", "cnn")}
    saved["lora"] = saved.pop("lora-constrained")
    setting = json.loads((proj / "metrics" / "ensemble-search.json").read_text())["setting_all"]
    _assert_reproduces_saved(proj / "training" / "ensemble", gold, saved, setting, ["bert", "cnn", "cnn-vectors", "lora"])
    # the fast pipeline: MiniLM + NER inside, then the document type at the threshold chosen on dev
    setting = json.loads((proj / "metrics" / "bert_doc_type-search.json").read_text())["setting_all"]
    probs = find_component(spacy.load(proj / "training" / "doc_type"), "doc_type").model.predict([g.text for g in gold])
    fast = _assert_reproduces_saved(proj / "training" / "bert_doc_type", gold, {"bert": saved["bert"]}, setting,
                                    ["bert"], doc_probs=probs)
    # (on 2 dev documents the search may find relabelling no better than none; then it leaves it out)
    with_doc_type = ["tokner_doc_type"] if setting["doc_type_threshold"] is not None else []
    assert fast.pipe_names == ["tokner_sentencizer", "tokner_ensemble", *with_doc_type]


def test_rerun_skips_unchanged_steps(tiny_project):
    for out in tiny_project[2:]:  # one after another, then two at a time
        for step in ("corpus", "train-cnn", "train-bert", "llm-zero", "train-lora", "ensemble", "bert-doc-type",
                     "compare"):
            assert f"Skipping '{step}'" in out, step


def test_ensemble_best_step_votes_over_its_four_members(tiny_project):
    """The `best` workflow's `ensemble-best` step (spacy project run) on the tiny project's
    members, the CNN standing in for the decoder member: the search (equal weights) and the build run, the
    pipeline holds exactly its four members and gives what its setting gives on their saved
    predictions, document type included."""
    import spacy
    from spacy.tokens import DocBin

    from tokner.doctype import find_component
    from tokner.ensemble import paper_row

    proj = tiny_project[0]
    shutil.copytree(proj / "training" / "cnn" / "model-best", proj / "training" / "decoder" / "model-best")
    shutil.copy(proj / "metrics" / "cnn-dev.spacy", proj / "metrics" / "decoder-dev.spacy")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "spacy", "project", "run", "ensemble-best", "."], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    vocab = spacy.blank("en").vocab
    gold = list(DocBin().from_disk(proj / "corpus" / "dev.spacy").get_docs(vocab))
    saved = {m: list(DocBin().from_disk(proj / "metrics" / f"{f}-dev.spacy").get_docs(vocab))
             for m, f in (("lora", "lora"), ("bert", "bert"), ("cnn-vectors", "cnn_vectors"), ("decoder", "decoder"))}
    setting = json.loads((proj / "metrics" / "ensemble_best-search.json").read_text())["setting_all"]
    assert setting["weights"] == {m: 1.0 for m in saved}  # one vote each (--weight-grid 1)
    probs = find_component(spacy.load(proj / "training" / "doc_type"), "doc_type").model.predict([g.text for g in gold])
    nlp = _assert_reproduces_saved(proj / "training" / "ensemble_best", gold, saved, setting,
                                   ["bert", "cnn-vectors", "decoder", "lora"], doc_probs=probs)
    # the step's row is the paper metric of its held-out (cross-fitted) predictions
    row = json.loads((proj / "metrics" / "ensemble_best-dev.json").read_text())
    held_out = list(DocBin().from_disk(proj / "metrics" / "ensemble_best-dev.spacy").get_docs(nlp.vocab))
    scores = paper_row(gold, held_out)
    assert (row["paper_micro5_f"], row["paper_avg_f"]) == pytest.approx((scores["micro5"], scores["avg"]))
