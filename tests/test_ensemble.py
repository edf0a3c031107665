"""Span voting, document consistency, cross-fitted weights, and the two components."""
import json
import subprocess
import sys

import pytest
import spacy
from spacy.tokens import Doc, DocBin, Span

from tokner.ensemble import consistent_labels, copy_doc, cross_fit, fold_assignment, set_ents, vote
from tokner.scoring.scorer import PAPER_LABELS


def test_vote_keeps_spans_that_reach_the_threshold_without_overlaps():
    a = [(0, 2, "DISEASE"), (5, 6, "SIGN")]
    b = [(0, 2, "DISEASE"), (4, 6, "SIGN")]
    c = [(0, 2, "RAREDISEASE"), (4, 6, "SIGN"), (8, 9, "SYMPTOM")]
    w = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert vote({"a": a, "b": b, "c": c}, w, 2.0) == [(0, 2, "DISEASE"), (4, 6, "SIGN")]
    # threshold 1: every span is a candidate; the higher vote wins an overlap, then the longer
    assert vote({"a": a, "b": b, "c": c}, w, 1.0) == [(0, 2, "DISEASE"), (4, 6, "SIGN"), (8, 9, "SYMPTOM")]
    # a heavy member alone carries its spans
    assert vote({"a": a, "b": b, "c": c}, {"a": 1.0, "b": 1.0, "c": 2.5}, 2.5) == [
        (0, 2, "RAREDISEASE"), (4, 6, "SIGN"), (8, 9, "SYMPTOM")]
    assert vote({"a": a}, {"a": 1.0}, 1.5) == []
    # by boundary: (0, 2) has three votes whatever the label, and DISEASE the most weight
    assert vote({"a": a, "b": b, "c": c}, w, 3.0, by_boundary=True) == [(0, 2, "DISEASE")]
    assert vote({"a": a, "b": b, "c": c}, {"a": 0.5, "b": 0.5, "c": 2.0}, 3.0, by_boundary=True) == [(0, 2, "RAREDISEASE")]


def test_copy_doc_is_independent_of_the_original():
    nlp = spacy.blank("en")
    doc = nlp("Patients with ichthyosis have dry skin.")
    doc.ents = [Span(doc, 2, 3, "SKINRAREDISEASE"), Span(doc, 4, 6, "SIGN")]
    doc.user_data["note"] = 1
    twin = copy_doc(doc)
    assert twin is not doc and twin.vocab is doc.vocab
    assert [t.text for t in twin] == [t.text for t in doc]
    assert [(e.start_char, e.end_char, e.label_) for e in twin.ents] == [(14, 24, "SKINRAREDISEASE"), (30, 38, "SIGN")]
    assert twin.user_data == {}
    set_ents(twin, [(14, 24, "RAREDISEASE")])
    assert [e.label_ for e in twin.ents] == ["RAREDISEASE"]
    assert [e.label_ for e in doc.ents] == ["SKINRAREDISEASE", "SIGN"]


def test_consistency_unifies_same_text_mentions_within_a_group():
    spans = [(0, 1, "SKINRAREDISEASE"), (5, 6, "RAREDISEASE"), (9, 10, "SKINRAREDISEASE"), (12, 13, "SIGN"),
             (15, 16, "SYMPTOM")]
    texts = ["Ichthyosis", "ichthyosis", "Ichthyosis", "itching", "itching"]
    # the majority (2 of 3) decides; SIGN/SYMPTOM are outside the default group and left alone
    assert consistent_labels(spans, texts) == [
        (0, 1, "SKINRAREDISEASE"), (5, 6, "SKINRAREDISEASE"), (9, 10, "SKINRAREDISEASE"), (12, 13, "SIGN"),
        (15, 16, "SYMPTOM")]
    # every label together: a tie goes to the first mention
    assert consistent_labels(spans, texts, groups=None)[3:] == [(12, 13, "SIGN"), (15, 16, "SIGN")]


def _docs(vocab, n):
    words = "Patients with Alpha syndrome have rash and Beta fever .".split()
    return [Doc(vocab, words=words) for _ in range(n)]


def _with(docs, spans_per_doc):
    out = []
    for d, spans in zip(docs, spans_per_doc):
        d = d.copy()
        d.ents = [Span(d, a, b, label=lab) for a, b, lab in spans]
        out.append(d)
    return out


def test_cross_fit_chooses_on_the_other_fold():
    nlp = spacy.blank("en")
    gold_spans = [(2, 4, "RAREDISEASE"), (5, 6, "SIGN"), (7, 9, "SYMPTOM")]
    gold = _with(_docs(nlp.vocab, 6), [gold_spans] * 6)
    # member "good" is right on everything, "noisy" adds a wrong span, "half" misses one
    good = _with(gold, [gold_spans] * 6)
    noisy = _with(gold, [gold_spans[:2] + [(0, 1, "DISEASE")]] * 6)
    half = _with(gold, [gold_spans[:1]] * 6)
    result = cross_fit(gold, {"good": good, "noisy": noisy, "half": half}, PAPER_LABELS, folds=2)
    assert result["cross_fit"]["micro"] == pytest.approx(1.0)
    for setting in result["fold_settings"] + [result["setting_all"]]:
        w, t = setting["weights"], setting["threshold"]
        # whatever was chosen reproduces gold exactly: "good" alone reaches the threshold, "noisy" alone does not
        assert w["good"] >= t and w["noisy"] < t
    assert len(result["held_out"]) == 6
    # the search's fast counter agrees with the paper's scorer
    from spacy.training import Example

    from tokner.ensemble import _counts, _triples, f_scores
    from tokner.scoring.scorer import score_paper_ner

    for member in (noisy, half):
        fast = f_scores(_counts(gold, [_triples(d) for d in member], PAPER_LABELS))
        ref = score_paper_ner([Example(p, g) for p, g in zip(member, gold)])
        assert fast["micro"] == pytest.approx(ref["paper_micro5_f"]) and fast["avg"] == pytest.approx(ref["paper_avg_f"])


def test_fold_assignment_contiguous_or_shuffled():
    assert fold_assignment(5, 2) == [0, 0, 0, 1, 1]
    shuffled = fold_assignment(10, 2, seed=3)
    assert sorted(shuffled) == [0] * 5 + [1] * 5  # same sizes as the contiguous folds
    assert shuffled == fold_assignment(10, 2, seed=3)  # deterministic per seed
    assert len({tuple(fold_assignment(10, 2, seed=s)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(3, 4)
    # stratified: 3 documents of class 1 among 10 go 2 / 1 over the folds, whatever the seed
    strata = [0, 1, 0, 0, 1, 0, 0, 1, 0, 0]
    for seed in range(5):
        folds = fold_assignment(10, 2, seed=seed, strata=strata)
        assert sorted(folds.count(f) for f in (0, 1)) == [5, 5]
        assert sorted(sum(folds[i] == f for i in (1, 4, 7)) for f in (0, 1)) == [1, 2]
    assert fold_assignment(10, 2, seed=1, strata=strata) == fold_assignment(10, 2, seed=1, strata=strata)


def test_cross_fit_with_a_seed_predicts_every_document_once_from_the_other_fold():
    nlp = spacy.blank("en")
    gold_spans = [(2, 4, "RAREDISEASE"), (5, 6, "SIGN")]
    gold = _with(_docs(nlp.vocab, 6), [gold_spans] * 6)
    wrong = [(0, 1, "DISEASE")]
    # "early" is right on documents 0-2 and wrong on 3-5, "late" the other way round
    early = _with(gold, [gold_spans] * 3 + [wrong] * 3)
    late = _with(gold, [wrong] * 3 + [gold_spans] * 3)
    members = {"early": early, "late": late}
    contiguous = cross_fit(gold, members, PAPER_LABELS, folds=2, consistency=(False,), by_boundary=(False,))
    # contiguous folds (0-2 | 3-5): each half trusts the member that was right on the other half
    assert contiguous["cross_fit"]["micro"] == pytest.approx(0.0)
    assert fold_assignment(6, 2, seed=0) == [1, 0, 0, 1, 0, 1]
    shuffled = cross_fit(gold, members, PAPER_LABELS, folds=2, consistency=(False,), by_boundary=(False,),
                         seed=0, choose_all=False)
    assert shuffled["setting_all"] is None and all(h is not None for h in shuffled["held_out"])
    # each half of the shuffled split holds documents of both kinds: the union of both members
    # wins there (P 2/3, R 1) and every gold span is found on the held-out documents too
    assert shuffled["cross_fit"]["micro"] == pytest.approx(0.8)



def test_cross_fit_runs_scores_each_split_and_spread_summarises_them():
    from tokner.ensemble import cross_fit_runs, spread

    nlp = spacy.blank("en")
    gold_spans = [(2, 4, "RAREDISEASE"), (5, 6, "SIGN")]
    gold = _with(_docs(nlp.vocab, 6), [gold_spans] * 6)
    wrong = [(0, 1, "DISEASE")]
    members = {"early": _with(gold, [gold_spans] * 3 + [wrong] * 3),
               "late": _with(gold, [wrong] * 3 + [gold_spans] * 3)}
    # no skin documents: one stratum, seed 0 deals documents 1, 4, 5 to one fold, both kinds in each
    assert fold_assignment(6, 2, seed=0, strata=[0] * 6) == [1, 0, 1, 1, 0, 0]
    seen = []
    runs = cross_fit_runs(gold, members, PAPER_LABELS, [None, 0], consistency=(False,), by_boundary=(False,),
                          on_run=seen.append)
    assert [r["seed"] for r in runs] == [None, 0] and seen == runs
    # as in the test above: the contiguous split trusts the wrong member on each half, the mixed one the union
    assert [r["micro5"] for r in runs] == pytest.approx([0.0, 0.8])
    assert [r["SIGN"] for r in runs] == pytest.approx([0.0, 1.0])
    assert all(len(r["fold_settings"]) == 2 for r in runs)
    summary = spread(runs, ["micro5", "SIGN"])
    assert summary["micro5"] == pytest.approx({"mean": 0.4, "sd": 0.4, "min": 0.0, "max": 0.8})
    assert summary["SIGN"] == pytest.approx({"mean": 0.5, "sd": 0.5, "min": 0.0, "max": 1.0})

def _member(path, patterns):
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(patterns)
    nlp.to_disk(path)
    return str(path)


def test_ensemble_component_votes_and_round_trips(tmp_path):
    a = _member(tmp_path / "a", [{"label": "RAREDISEASE", "pattern": "Alpha syndrome"}, {"label": "SIGN", "pattern": "rash"}])
    b = _member(tmp_path / "b", [{"label": "RAREDISEASE", "pattern": "Alpha syndrome"}, {"label": "SYMPTOM", "pattern": "fever"}])
    c = _member(tmp_path / "c", [{"label": "SKINRAREDISEASE", "pattern": "Alpha syndrome"}, {"label": "SIGN", "pattern": "rash"}])
    nlp = spacy.blank("en")
    nlp.add_pipe("tokner_ensemble", config={"members": {"a": a, "b": b, "c": c}, "weights": {"a": 1, "b": 1, "c": 1},
                                             "threshold": 2})
    nlp.initialize()
    text = "Patients with Alpha syndrome have rash and Beta fever ."
    ents = [(e.text, e.label_, e.start_char) for e in nlp(text).ents]
    assert ents == [("Alpha syndrome", "RAREDISEASE", 14), ("rash", "SIGN", 34)]
    nlp.to_disk(tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens" / "tokner_ensemble" / "members").iterdir()) == ["a", "b", "c"]
    for p in (a, b, c):  # the saved ensemble holds its members: the originals can go
        import shutil

        shutil.rmtree(p)
    loaded = spacy.load(tmp_path / "ens")
    assert [(e.text, e.label_, e.start_char) for e in loaded(text).ents] == ents
    docs = list(loaded.pipe([text, "fever", "rash"], batch_size=2))
    # "fever": one vote of 3; "rash": two (a and c)
    assert [[e.text for e in d.ents] for d in docs] == [["Alpha syndrome", "rash"], [], ["rash"]]


def test_doc_consistency_component(tmp_path):
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "SKINRAREDISEASE", "pattern": "Ichthyosis"},
                        {"label": "RAREDISEASE", "pattern": "ichthyosis"}])
    nlp.add_pipe("tokner_doc_consistency")
    doc = nlp("Ichthyosis is rare . Ichthyosis starts early ; ichthyosis is inherited .")
    assert [e.label_ for e in doc.ents] == ["SKINRAREDISEASE"] * 3
    nlp.to_disk(tmp_path / "p")
    again = spacy.load(tmp_path / "p")
    assert [e.label_ for e in again(doc.text).ents] == ["SKINRAREDISEASE"] * 3
    only = spacy.blank("en")
    only.add_pipe("tokner_doc_consistency", config={"groups": None})
    fresh = spacy.blank("en")
    fresh.add_pipe("tokner_doc_consistency", config={"groups": None})
    fresh.from_bytes(only.to_bytes())
    marked = fresh.make_doc("itching and itching")
    marked.ents = [Span(marked, 0, 1, label="SIGN"), Span(marked, 2, 3, label="SYMPTOM")]
    assert [e.label_ for e in fresh(marked).ents] == ["SIGN", "SIGN"]  # groups=None: every label unified


def test_ensemble_search_cli(tmp_path):
    nlp = spacy.blank("en")
    gold_spans = [(2, 4, "RAREDISEASE"), (5, 6, "SIGN"), (7, 9, "SYMPTOM")]
    gold = _with(_docs(nlp.vocab, 4), [gold_spans] * 4)
    DocBin(docs=gold).to_disk(tmp_path / "gold.spacy")
    DocBin(docs=_with(gold, [gold_spans[:2]] * 4)).to_disk(tmp_path / "m1.spacy")
    DocBin(docs=_with(gold, [gold_spans[1:]] * 4)).to_disk(tmp_path / "m2.spacy")
    DocBin(docs=_with(gold, [gold_spans[::2]] * 4)).to_disk(tmp_path / "m3.spacy")
    out = subprocess.run([sys.executable, "-m", "tokner", "ensemble-search", str(tmp_path / "gold.spacy"), "--members",
                          f"m1={tmp_path / 'm1.spacy'}", f"m2={tmp_path / 'm2.spacy'}", f"m3={tmp_path / 'm3.spacy'}",
                          "--output", str(tmp_path / "e.json"), "--save-docs", str(tmp_path / "e.spacy"),
                          "--metrics-output", str(tmp_path / "m.json"), "--repeats", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    rows = result["rows"]
    # every document is alike: each shuffled split gives the same perfect vote
    spread = result["spread"]
    assert spread["row"] == "vote(m1+m2+m3), cross-fit 2 folds" and [r["seed"] for r in spread["runs"]] == [0, 1]
    assert spread["micro5"]["mean"] == pytest.approx(1.0) and spread["micro5"]["sd"] == pytest.approx(0.0)
    assert all(len(r["fold_settings"]) == 2 for r in spread["runs"])
    assert "over 2 shuffled fold assignments stratified by document type" in out.stdout
    # each member has 2 of the 3 spans; every span has 2 of 3 votes: majority voting recovers all
    assert rows["m1"]["micro5"] == pytest.approx(0.8)
    assert rows["vote(m1+m2+m3), cross-fit 2 folds"]["micro5"] == pytest.approx(1.0)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["paper_micro5_f"] == pytest.approx(1.0) and metrics["docs"] == 4
    assert metrics["spans_paper_per_type"]["SYMPTOM"]["f"] == pytest.approx(1.0)
    saved = list(DocBin().from_disk(tmp_path / "e.spacy").get_docs(nlp.vocab))
    assert [(e.start, e.end, e.label_) for e in saved[0].ents] == gold_spans
    bad = subprocess.run([sys.executable, "-m", "tokner", "ensemble-search", str(tmp_path / "gold.spacy"), "--members",
                          f"m1={tmp_path / 'missing.spacy'}"], capture_output=True, text=True)
    assert bad.returncode != 0 and "missing.spacy" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "tokner", "ensemble-search", str(tmp_path / "gold.spacy"), "--members",
                          f"m1={tmp_path / 'm1.spacy'}", "--folds", "5"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--folds must be between 2 and the 4 documents" in bad.stderr


def test_ensemble_search_weight_grid(tmp_path):
    """--weight-grid 1: equal weights, only the threshold (and span mode) chosen."""
    nlp = spacy.blank("en")
    a, b, c = (2, 4, "RAREDISEASE"), (5, 6, "SIGN"), (8, 9, "SYMPTOM")
    wrong = (0, 1, "SIGN")
    gold = _with(_docs(nlp.vocab, 4), [[a, b, c]] * 4)
    DocBin(docs=gold).to_disk(tmp_path / "gold.spacy")
    for name, spans in {"m1": [a, b, c], "m2": [wrong, a], "m3": [b]}.items():
        DocBin(docs=_with(gold, [spans] * 4)).to_disk(tmp_path / f"{name}.spacy")
    base = [sys.executable, "-m", "tokner", "ensemble-search", str(tmp_path / "gold.spacy"), "--members",
            *(f"{m}={tmp_path / m}.spacy" for m in ("m1", "m2", "m3")), "--no-consistency"]

    def search(*extra):
        out = subprocess.run(base + ["--output", str(tmp_path / "e.json"), *extra], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads((tmp_path / "e.json").read_text())

    row = "vote(m1+m2+m3), cross-fit 2 folds"
    # weighted (default grid): m2 and m3 at half m1's weight, threshold 1: m1's three spans, not m2's lone one
    weighted = search()
    assert weighted["weight_grid"] == [0.5, 1.0, 1.5, 2.0]
    assert weighted["setting_all"]["weights"] == {"m1": 1.0, "m2": 0.5, "m3": 0.5}
    assert weighted["rows"][row]["micro5"] == pytest.approx(1.0)
    # equal weights: one vote takes the wrong span too (P 3/4, R 1), two votes lose c (P 1, R 2/3)
    equal = search("--weight-grid", "1")
    assert equal["weight_grid"] == [1.0]
    assert equal["setting_all"]["weights"] == {"m1": 1.0, "m2": 1.0, "m3": 1.0}
    assert equal["setting_all"]["threshold"] == pytest.approx(1.0)
    assert equal["rows"][row]["micro5"] == pytest.approx(6 / 7)
    bad = subprocess.run(base + ["--weight-grid", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--weight-grid: weights must be positive" in bad.stderr


def test_ensemble_build_then_load_and_annotate(tmp_path):
    a = _member(tmp_path / "a", [{"label": "RAREDISEASE", "pattern": "Alpha syndrome"}, {"label": "SIGN", "pattern": "rash"}])
    b = _member(tmp_path / "b", [{"label": "RAREDISEASE", "pattern": "Alpha syndrome"}, {"label": "SYMPTOM", "pattern": "fever"}])
    search = tmp_path / "search.json"
    search.write_text(json.dumps({"setting_all": {"weights": {"a": 1.0, "b": 0.5}, "threshold": 1.0, "consistency": True}}))
    cmd = [sys.executable, "-m", "tokner", "ensemble-build", str(search), str(tmp_path / "ens"), "--members"]
    out = subprocess.run(cmd + [f"a={a}", f"b={b}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    nlp = spacy.load(tmp_path / "ens")
    assert nlp.pipe_names == ["tokner_sentencizer", "tokner_ensemble"]
    text = "Patients with Alpha syndrome have rash and Beta fever ."
    # a alone (1.0) reaches the threshold, b alone (0.5) does not
    assert [(e.text, e.label_) for e in nlp(text).ents] == [("Alpha syndrome", "RAREDISEASE"), ("rash", "SIGN")]
    notes = tmp_path / "notes.jsonl"
    notes.write_text(json.dumps({"id": "n1", "text": text}) + "\n" + json.dumps({"id": "n2", "text": "No findings."}) + "\n")
    ann = subprocess.run([sys.executable, "-m", "tokner", "annotate", str(tmp_path / "ens"), str(notes),
                          str(tmp_path / "out.jsonl")], capture_output=True, text=True)
    assert ann.returncode == 0, ann.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["n1", "n2"]
    assert [(e["start"], e["end"], e["label"]) for e in rows[0]["entities"]] == [(14, 28, "RAREDISEASE"), (34, 38, "SIGN")]
    assert rows[1]["entities"] == []
    missing = subprocess.run(cmd + [f"a={a}"], capture_output=True, text=True)
    assert missing.returncode != 0 and "chose weights for ['b']" in missing.stderr
