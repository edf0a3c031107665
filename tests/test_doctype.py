"""Document type (skin rare disease or not): the model, the component, and its use in the ensemble."""
import json
import subprocess
import sys

import pytest
import spacy
from spacy.tokens import Doc, DocBin, Span

from tokner.doctype import (DocTypeModel, build_pipeline, choose_threshold, doc_label, find_component, fit, relabel,
                            relabel_objective, train)
from tokner.ensemble import choose, cross_fit
from tokner.scoring.scorer import PAPER_LABELS

SKIN = ["{} is a skin disorder with blisters , scaly skin and rash .",
        "In {} the skin shows blisters ; the hair and nails are brittle ."]
OTHER = ["{} is a blood disorder with anemia and fatigue .",
         "In {} the liver enlarges ; anemia and fatigue follow ."]
NAMES = ["Alpha syndrome", "Beta disease", "Gamma syndrome", "Delta disease", "Epsilon syndrome", "Zeta disease"]


def _corpus(vocab):
    """12 documents: 6 about skin diseases (the name labelled SKINRAREDISEASE), 6 not (RAREDISEASE)."""
    docs = []
    for i, name in enumerate(NAMES):
        for templates, label in ((SKIN, "SKINRAREDISEASE"), (OTHER, "RAREDISEASE")):
            words = templates[i % 2].format(name).split()
            doc = Doc(vocab, words=words)
            start = words.index(name.split()[0])
            doc.ents = [Span(doc, start, start + 2, label=label)]
            docs.append(doc)
    return docs


def test_doc_label_counts_the_pair():
    nlp = spacy.blank("en")
    doc = Doc(nlp.vocab, words="A B C D".split())
    doc.ents = [Span(doc, 0, 1, label="SKINRAREDISEASE"), Span(doc, 1, 2, label="SKINRAREDISEASE"),
                Span(doc, 2, 3, label="RAREDISEASE")]
    assert doc_label(doc) == 1
    doc.ents = [Span(doc, 0, 1, label="SKINRAREDISEASE"), Span(doc, 2, 3, label="RAREDISEASE")]
    assert doc_label(doc) == 0  # a tie is not a skin document
    assert relabel([(0, 1, "RAREDISEASE"), (2, 3, "SIGN"), (4, 5, "SKINRAREDISEASE")], 0.7, 0.6) == [
        (0, 1, "SKINRAREDISEASE"), (2, 3, "SIGN"), (4, 5, "SKINRAREDISEASE")]
    assert relabel([(0, 1, "RAREDISEASE"), (4, 5, "SKINRAREDISEASE")], 0.5, 0.6) == [
        (0, 1, "RAREDISEASE"), (4, 5, "RAREDISEASE")]


def test_model_matches_scikit_learn_and_separates_the_kinds():
    nlp = spacy.blank("en")
    docs = _corpus(nlp.vocab)
    texts, labels = [d.text for d in docs], [doc_label(d) for d in docs]
    assert labels == [1, 0] * 6
    model = train(texts, labels, cv_folds=2)
    vec, lr = fit(texts, labels)
    new = ["Omega syndrome is a skin disorder with blisters .", "Omega disease brings anemia and fatigue ."]
    assert model.predict(new) == pytest.approx(lr.predict_proba(vec.transform(new))[:, 1].tolist(), abs=1e-12)
    p_skin, p_other = model.predict(new)
    assert p_skin > 0.5 > p_other
    assert model.info["docs"] == 12 and model.info["positive"] == 6 and model.info["cv_roc_auc"] == pytest.approx(1.0)
    again = DocTypeModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.predict(new) == model.predict(new)
    with pytest.raises(ValueError, match="one class only"):
        train(texts[:1], labels[:1])
    # English stop words are not features ("with" and "and" would be: in at least 2 documents)
    assert model.stop_words == "english" and not {"is", "a", "with", "and", "the"} & set(model.vocabulary)
    assert {"skin", "blisters", "anemia"} <= set(model.vocabulary)


def test_a_model_saved_without_stop_words_keeps_them():
    """A model JSON from before stop words were dropped has no ``stop_words``: it is read with
    none, so it gives what it was fitted to give."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    nlp = spacy.blank("en")
    docs = _corpus(nlp.vocab)
    texts, labels = [d.text for d in docs], [doc_label(d) for d in docs]
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, lowercase=True)
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(vec.fit_transform(texts), labels)
    old = {"vocabulary": {t: int(i) for t, i in vec.vocabulary_.items()}, "idf": vec.idf_.tolist(),
           "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0]), "info": {}}
    assert "with" in old["vocabulary"]
    model = DocTypeModel.from_dict(json.loads(json.dumps(old)))
    assert model.stop_words is None
    new = ["Omega syndrome is a skin disorder with blisters .", "Omega disease with anemia and fatigue ."]
    assert model.predict(new) == pytest.approx(lr.predict_proba(vec.transform(new))[:, 1].tolist(), abs=1e-12)
    with pytest.raises(ValueError, match="stop_words"):
        DocTypeModel.from_dict({**old, "stop_words": "german"})


def test_component_relabels_by_document_and_round_trips(tmp_path):
    nlp = spacy.blank("en")
    docs = _corpus(nlp.vocab)
    model = train([d.text for d in docs], [doc_label(d) for d in docs], cv_folds=0)
    pipe_nlp = build_pipeline(model, threshold=0.5)
    ruler = pipe_nlp.add_pipe("entity_ruler", before="tokner_doc_type")
    # the ruler labels every disease name RAREDISEASE and "itching" SIGN; the doc type decides the disease names
    ruler.add_patterns([{"label": "RAREDISEASE", "pattern": [{"TEXT": "Omega"}, {"TEXT": "syndrome"}]},
                        {"label": "SIGN", "pattern": "itching"}])
    skin = "Omega syndrome is a skin disorder with blisters and itching ."
    other = "Omega syndrome brings anemia , fatigue and itching ."
    want = {skin: [("Omega syndrome", "SKINRAREDISEASE"), ("itching", "SIGN")],
            other: [("Omega syndrome", "RAREDISEASE"), ("itching", "SIGN")]}
    for text, ents in want.items():
        doc = pipe_nlp(text)
        assert [(e.text, e.label_) for e in doc.ents] == ents
        assert (doc.cats["SKIN"] >= 0.5) == (text == skin)
    pipe_nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert loaded.pipe_names == ["entity_ruler", "tokner_doc_type"]
    for text, ents in want.items():
        assert [(e.text, e.label_) for e in loaded(text).ents] == ents
        assert loaded(text).cats == pipe_nlp(text).cats
    # to_bytes / from_bytes, and relabel=False: only doc.cats
    fresh = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    fresh.add_pipe("entity_ruler").add_patterns([{"label": "RAREDISEASE", "pattern": [{"TEXT": "Omega"}, {"TEXT": "syndrome"}]}])
    fresh.add_pipe("tokner_doc_type", config={"relabel": False})
    fresh.get_pipe("tokner_doc_type").from_bytes(pipe_nlp.get_pipe("tokner_doc_type").to_bytes())
    doc = fresh(skin)
    assert [(e.text, e.label_) for e in doc.ents] == [("Omega syndrome", "RAREDISEASE")]
    assert doc.cats["SKIN"] == pytest.approx(pipe_nlp(skin).cats["SKIN"])
    # a component without weights says where they come from
    bare = spacy.blank("en")
    bare.add_pipe("tokner_doc_type")
    with pytest.raises(ValueError, match="tokner train-doc-type"):
        bare("Omega syndrome .")
    with pytest.raises(FileNotFoundError, match="model.json"):
        bare.get_pipe("tokner_doc_type").from_disk(tmp_path / "nowhere")


def test_annotate_writes_the_document_probability(tmp_path):
    """``tokner annotate`` keeps what ``tokner_doc_type`` writes to ``doc.cats`` (JSONL, Parquet)."""
    from tokner.annotate import annotate

    nlp = spacy.blank("en")
    docs = _corpus(nlp.vocab)
    pipe_nlp = build_pipeline(train([d.text for d in docs], [doc_label(d) for d in docs], cv_folds=0), threshold=0.5)
    pipe_nlp.add_pipe("entity_ruler", before="tokner_doc_type").add_patterns(
        [{"label": "RAREDISEASE", "pattern": [{"TEXT": "Omega"}, {"TEXT": "syndrome"}]}])
    pipe_nlp.to_disk(tmp_path / "model")
    texts = {"skin": "Omega syndrome is a skin disorder with blisters .", "other": "Omega syndrome brings anemia ."}
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    annotate(tmp_path / "model", tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    for doc_id, text in texts.items():
        p = pipe_nlp(text).cats["SKIN"]
        assert records[doc_id]["cats"] == {"SKIN": pytest.approx(p)}
        label = "SKINRAREDISEASE" if p >= 0.5 else "RAREDISEASE"
        assert [(e["text"], e["label"]) for e in records[doc_id]["entities"]] == [("Omega syndrome", label)]
    assert records["skin"]["cats"]["SKIN"] >= 0.5 > records["other"]["cats"]["SKIN"]
    pq = pytest.importorskip("pyarrow.parquet")
    annotate(tmp_path / "model", tmp_path / "in.jsonl", tmp_path / "out.parquet", progress=False)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert json.loads(rows["skin"]["cats"]) == records["skin"]["cats"]


def test_search_chooses_the_doc_type_threshold_on_the_other_fold():
    nlp = spacy.blank("en")
    gold = _corpus(nlp.vocab)
    # a member that finds every disease name but always calls it RAREDISEASE
    member = []
    for g in gold:
        d = g.copy()
        d.ents = [Span(d, e.start, e.end, label="RAREDISEASE") for e in g.ents]
        member.append(d)
    probs = [0.9 if doc_label(g) else 0.2 for g in gold]
    plain = choose(gold, {"m": member}, PAPER_LABELS)
    assert plain["doc_type_threshold"] is None
    chosen = choose(gold, {"m": member}, PAPER_LABELS, doc_probs=probs)
    assert chosen["doc_type_threshold"] == 0.4  # the first threshold of the grid that separates 0.2 from 0.9
    result = cross_fit(gold, {"m": member}, PAPER_LABELS, folds=2, doc_probs=probs)
    assert result["cross_fit"]["micro"] == pytest.approx(1.0)
    assert result["cross_fit"]["SKINRAREDISEASE"] == pytest.approx(1.0)
    without = cross_fit(gold, {"m": member}, PAPER_LABELS, folds=2)
    assert without["cross_fit"]["SKINRAREDISEASE"] == 0.0 and without["cross_fit"]["micro"] == pytest.approx(0.5)



def test_threshold_chosen_on_train_by_relabelling_its_gold_mentions():
    nlp = spacy.blank("en")
    docs = _corpus(nlp.vocab)
    probs = [0.9, 0.2] * 6
    # the right spans relabelled right: micro-5 1, Avg-5 2/5 (three types have no mentions): 0.5 + 0.2
    assert relabel_objective(docs, probs, 0.5) == pytest.approx(0.7)
    # every name RAREDISEASE (or every name SKINRAREDISEASE): micro-5 0.5, Avg-5 (2/3) / 5
    assert relabel_objective(docs, probs, 0.95) == relabel_objective(docs, probs, 0.1) == pytest.approx(0.25 + (2 / 3) / 10)
    threshold, curve = choose_threshold(docs, folds=2, seeds=2)
    # out-of-fold probabilities: 0.605-0.672 for the skin documents, 0.328-0.395 for the others, so every
    # threshold from 0.4 to 0.6 separates them; of those ties the one nearest 0.5
    assert threshold == 0.5
    assert [t for t, v in curve.items() if v == pytest.approx(0.7)] == [0.4, 0.425, 0.45, 0.475, 0.5, 0.525, 0.55, 0.575, 0.6]
    assert curve[0.3] == curve[0.9] == pytest.approx(0.25 + (2 / 3) / 10)

def test_train_search_build_evaluate_cli(tmp_path):
    nlp = spacy.blank("en")
    gold = _corpus(nlp.vocab)
    DocBin(docs=gold).to_disk(tmp_path / "gold.spacy")
    out = subprocess.run([sys.executable, "-m", "tokner", "train-doc-type", str(tmp_path / "gold.spacy"),
                          str(tmp_path / "dt"), "--cv-folds", "2", "--dev", str(tmp_path / "gold.spacy"),
                          "--metrics", str(tmp_path / "dt.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads((tmp_path / "dt.json").read_text())
    assert info["docs"] == 12 and info["positive"] == 6 and info["dev_roc_auc"] == pytest.approx(1.0)
    # the relabelling threshold chosen on train (as in the test above, 3 shufflings of 2 folds) is the component's
    assert info["threshold"] == 0.5 and info["threshold_chosen_on"] == "train, 3 x 2-fold cross-validation"
    assert info["threshold_curve"]["0.5"] == pytest.approx(0.7)
    assert find_component(spacy.load(tmp_path / "dt"), "dt").threshold == 0.5
    # one member: an entity ruler calling every disease name RAREDISEASE
    ruler_nlp = spacy.blank("en")
    ruler_nlp.add_pipe("entity_ruler").add_patterns(
        [{"label": "RAREDISEASE", "pattern": [{"TEXT": n.split()[0]}, {"TEXT": n.split()[1]}]} for n in NAMES])
    ruler_nlp.to_disk(tmp_path / "ruler")
    pred = []
    for g in gold:
        d = ruler_nlp(g.text)
        pred.append(d)
    DocBin(docs=pred).to_disk(tmp_path / "ruler.spacy")
    search = subprocess.run([sys.executable, "-m", "tokner", "ensemble-search", str(tmp_path / "gold.spacy"),
                             "--members", f"ruler={tmp_path / 'ruler.spacy'}", "--doc-type", str(tmp_path / "dt"),
                             "--output", str(tmp_path / "search.json")], capture_output=True, text=True)
    assert search.returncode == 0, search.stderr
    res = json.loads((tmp_path / "search.json").read_text())
    assert res["rows"]["ruler"]["SKINRAREDISEASE"] == 0.0
    assert res["rows"]["ruler + doc type, cross-fit 2 folds"]["micro5"] == pytest.approx(1.0)
    assert res["rows"]["vote(ruler) + doc type, cross-fit 2 folds"]["micro5"] == pytest.approx(1.0)
    assert res["setting_all"]["doc_type_threshold"] == 0.5 and res["doc_type"] == str(tmp_path / "dt")
    assert res["doc_type_thresholds_tried"] == [0.5]  # the pipeline's own threshold (default --doc-type-threshold)
    searched = subprocess.run([sys.executable, "-m", "tokner", "ensemble-search", str(tmp_path / "gold.spacy"),
                               "--members", f"ruler={tmp_path / 'ruler.spacy'}", "--doc-type", str(tmp_path / "dt"),
                               "--doc-type-threshold", "search", "--output", str(tmp_path / "searched.json")],
                              capture_output=True, text=True)
    assert searched.returncode == 0, searched.stderr
    searched = json.loads((tmp_path / "searched.json").read_text())
    assert searched["doc_type_thresholds_tried"] == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert searched["rows"]["vote(ruler) + doc type, cross-fit 2 folds"]["micro5"] == pytest.approx(1.0)
    build = subprocess.run([sys.executable, "-m", "tokner", "ensemble-build", str(tmp_path / "search.json"),
                            str(tmp_path / "ens"), "--members", f"ruler={tmp_path / 'ruler'}"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    ens = spacy.load(tmp_path / "ens")
    assert ens.pipe_names == ["tokner_sentencizer", "tokner_ensemble", "tokner_doc_type"]
    ev = subprocess.run([sys.executable, "-m", "tokner", "evaluate", str(tmp_path / "ens"), str(tmp_path / "gold.spacy"),
                         "--output", str(tmp_path / "ens.json")], capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ens.json").read_text())["paper_micro5_f"] == pytest.approx(1.0)
    bad = subprocess.run([sys.executable, "-m", "tokner", "ensemble-search", str(tmp_path / "gold.spacy"),
                          "--members", f"ruler={tmp_path / 'ruler.spacy'}", "--doc-type", str(tmp_path / "ruler")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no tokner_doc_type component" in bad.stderr
    train_cmd = [sys.executable, "-m", "tokner", "train-doc-type", str(tmp_path / "gold.spacy"), str(tmp_path / "dt2")]
    bad = subprocess.run(train_cmd + ["--threshold", "1.5"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--threshold: a probability or 'train', got 1.5" in bad.stderr
    bad = subprocess.run(train_cmd + ["--cv-folds", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--cv-folds must be 2 or more" in bad.stderr
    fixed = subprocess.run(train_cmd + ["--threshold", "0.7", "--cv-folds", "0"], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr
    assert find_component(spacy.load(tmp_path / "dt2"), "dt2").threshold == 0.7
