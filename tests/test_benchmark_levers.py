"""The helpers of the lever benchmarks (benchmarks/label_thresholds.py, benchmarks/doc_type_hpo.py, ...)
on inputs small enough to check by hand."""
import importlib.util
from pathlib import Path

import spacy

from tokner.ensemble import vote as library_vote

ROOT = Path(__file__).resolve().parents[1]


def _doc_maker(text):
    """doc([(start, end, label), ...]) -> a Doc of ``text``'s words with those token spans as ents."""
    from spacy.tokens import Doc, Span

    vocab, words = spacy.blank("en").vocab, text.split()

    def doc(spans):
        d = Doc(vocab, words=words)
        d.ents = [Span(d, a, b, label=lab) for a, b, lab in spans]
        return d

    return doc


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_per_type_thresholds_keep_a_type_the_single_threshold_drops_and_resolve_overlaps_after():
    members = {"a": [(0, 5, "SIGN"), (10, 15, "SYMPTOM"), (20, 30, "DISEASE")],
               "b": [(0, 5, "SIGN"), (20, 25, "SYMPTOM")],
               "c": [(0, 5, "SIGN"), (20, 30, "DISEASE")]}
    weights = {"a": 1.0, "b": 1.0, "c": 1.0}
    # one threshold: the same as the library's vote
    assert library_vote(members, weights, 2.0) == [(0, 5, "SIGN"), (20, 30, "DISEASE")]
    # SYMPTOM at 1: both SYMPTOM spans pass; the one overlapping the DISEASE span (score 2) loses to it
    per_type = {"SIGN": 2.0, "SYMPTOM": 1.0, "DISEASE": 2.0}
    assert library_vote(members, weights, per_type) == [(0, 5, "SIGN"), (10, 15, "SYMPTOM"), (20, 30, "DISEASE")]
    # DISEASE out of reach: the SYMPTOM span inside it is kept instead
    assert library_vote(members, weights, {**per_type, "DISEASE": 3.0}) == [(0, 5, "SIGN"), (10, 15, "SYMPTOM"), (20, 25, "SYMPTOM")]



def test_choose_per_label_lowers_only_the_threshold_of_the_type_one_member_finds():
    from tokner.ensemble import choose
    from tokner.scoring.scorer import PAPER_LABELS

    lt = _load("label_thresholds")
    doc = _doc_maker("Patients with Alpha syndrome have rash and Beta fever .")

    right = [(2, 4, "RAREDISEASE"), (5, 6, "SIGN"), (7, 9, "SYMPTOM")]
    gold = [doc(right) for _ in range(3)]
    # all three find the disease and the sign; only "a" the symptom; each adds a wrong SIGN of its own
    members = {"a": [doc(right + [(0, 1, "SIGN")])] * 3,
               "b": [doc(right[:2] + [(1, 2, "SIGN")])] * 3,
               "c": [doc(right[:2] + [(9, 10, "SIGN")])] * 3}
    kw = dict(consistency=(False,), by_boundary=(False,), weight_grid=(1.0,))
    # one threshold: 2 keeps the two spans all agree on and loses the symptom (1 would keep the wrong signs)
    assert choose(gold, members, PAPER_LABELS, **kw)["threshold"] == 2.0
    setting = lt.choose_per_label(gold, members, PAPER_LABELS, **kw)
    assert setting["threshold"] == {"DISEASE": 2.0, "RAREDISEASE": 2.0, "SKINRAREDISEASE": 2.0, "SIGN": 2.0,
                                    "SYMPTOM": 1.0, "ANAPHOR": 2.0}
    spans = {n: [(e.start_char, e.end_char, e.label_) for e in m[0].ents] for n, m in members.items()}
    assert library_vote(spans, setting["weights"], setting["threshold"]) == [
        (e.start_char, e.end_char, e.label_) for e in gold[0].ents]

def test_hpo_concept_tokens_mark_skin_and_other_phenotypes(tmp_path):
    hpo = _load("doc_type_hpo")
    (tmp_path / "hp.obo").write_text(
        "format-version: 1.2\n\n"
        "[Term]\nid: HP:0000118\nname: Phenotypic abnormality\n\n"
        "[Term]\nid: HP:0001574\nname: Abnormality of the integument\nis_a: HP:0000118 ! Phenotypic abnormality\n\n"
        "[Term]\nid: HP:0008064\nname: Ichthyosis\nsynonym: \"Scaly skin\" EXACT []\nsynonym: \"Fish skin\" RELATED []\n"
        "is_a: HP:0001574 ! Abnormality of the integument\n\n"
        "[Term]\nid: HP:0001250\nname: Seizure\nis_a: HP:0000118 ! Phenotypic abnormality\n\n"
        "[Term]\nid: HP:0000001\nname: All\n\n"
        "[Term]\nid: HP:0009999\nname: Old skin term\nis_a: HP:0001574\nis_obsolete: true\n\n"
        "[Typedef]\nid: part_of\nname: part of\n")
    terms = hpo.read_obo(tmp_path / "hp.obo")
    assert terms["HP:0008064"]["synonyms"] == ["Scaly skin"] and terms["HP:0008064"]["parents"] == ["HP:0001574"]
    assert "part_of" not in terms and terms["HP:0009999"]["obsolete"]
    assert hpo.descendants(terms, "HP:0001574") == {"HP:0001574", "HP:0008064", "HP:0009999"}
    nlp = spacy.blank("en")
    augment, info = hpo.concept_augmenter(tmp_path / "hp.obo", nlp)
    text = "Scaly skin and a seizure; fish skin is not an exact synonym. Old skin term."
    out = augment(nlp.make_doc(text))
    assert out.startswith(text) and out[len(text):].split() == ["hpoxskin", "hpoxphen"]
    assert info["names"] == {"hpoxskin": 3, "hpoxphen": 2}  # obsolete terms left out


def test_member_ceiling_counts_and_train_lexicon_relabelling():
    """benchmarks/member_ceiling.py: which gold spans some member found, where the vote's errors
    fall, and a train lexicon moving a span between DISEASE and the rare-disease group."""
    mc = _load("member_ceiling")
    doc = _doc_maker("Patients with Alpha syndrome have rash and asthma .")
    gold = [doc([(2, 4, "RAREDISEASE"), (5, 6, "SIGN"), (7, 8, "DISEASE")])]
    members = {"a": [doc([(2, 4, "RAREDISEASE"), (7, 8, "RAREDISEASE")])],
               "b": [doc([(2, 4, "RAREDISEASE"), (4, 6, "SIGN")])]}
    c = mc.ceiling(gold, members)
    assert c["RAREDISEASE"] == {"gold": 1, "any_member_exact": 1.0, "any_member_span_any_label": 1.0,
                                "found_by_k_members": [0, 0, 1]}
    assert c["SIGN"]["any_member_exact"] == 0.0 and c["SIGN"]["found_by_k_members"] == [1, 0, 0]
    # "asthma": right span, wrong label -> counted under "right span" only
    assert c["DISEASE"]["any_member_exact"] == 0.0 and c["DISEASE"]["any_member_span_any_label"] == 1.0
    vote = members["a"]
    errors = mc.vote_errors(gold, vote)
    assert errors == {"RAREDISEASE -> RAREDISEASE": 1, "SIGN -> missed": 1, "DISEASE -> RAREDISEASE": 1}
    # train labels "asthma" DISEASE twice: relabelled at min count 2, not at 3
    train = [doc([(7, 8, "DISEASE"), (2, 4, "RAREDISEASE")]), doc([(7, 8, "DISEASE")])]
    lex = mc.train_lexicon(train)
    assert lex == {"asthma": {"DISEASE": 2}, "alpha syndrome": {"RARE": 1}}
    out, changed = mc.lexicon_relabel(lex, vote, 2, 0.9)
    assert changed == 1 and [(e.text, e.label_) for e in out[0].ents] == [("Alpha syndrome", "RAREDISEASE"), ("asthma", "DISEASE")]
    assert mc.lexicon_relabel(lex, vote, 3, 0.9)[1] == 0
    assert [(e.text, e.label_) for e in vote[0].ents][1] == ("asthma", "RAREDISEASE")  # the input is not changed


def test_token_vote_combines_member_boundaries_and_splits_where_a_new_entity_starts():
    """benchmarks/token_vote.py: a span no member proposed (one member's start, another's
    end), labels by the weight over the span's tokens, a split where more weight starts an
    entity than continues one, and a threshold that drops thin tokens."""
    tv = _load("token_vote")
    doc = _doc_maker("severe pain in the legs and mild fever")
    # words: 0 severe 1 pain 2 in 3 the 4 legs 5 and 6 mild 7 fever
    docs = {"a": doc([(0, 3, "SIGN"), (6, 8, "SYMPTOM")]),
            "b": doc([(1, 5, "SIGN"), (7, 8, "SYMPTOM")]),
            "c": doc([(1, 5, "SYMPTOM")])}
    w = {"a": 1.0, "b": 1.0, "c": 0.5}
    text = docs["a"].text

    def spans(weights, t):
        return [(text[s:e], lab) for s, e, lab in tv.token_vote(docs, weights, t)]

    # threshold 1: "severe" (a only) is in, "in the legs" come from b and c; a starts at
    # "severe" and b, c start at "pain" (1.5 starting against a's 1.0 continuing): a split;
    # "mild" (a only, 1.0) joins "fever"'s run, since at "fever" 1.0 starts and 1.0 continues
    assert spans(w, 1.0) == [("severe", "SIGN"), ("pain in the legs", "SIGN"), ("mild fever", "SYMPTOM")]
    # threshold 1.5: "severe" and "mild" drop out; "pain in" has 2.5, "the legs" 1.5
    assert spans(w, 1.5) == [("pain in the legs", "SIGN"), ("fever", "SYMPTOM")]
    # c weighs most: its SYMPTOM outweighs b's SIGN over "pain in the legs"
    assert spans({"a": 1.0, "b": 1.0, "c": 2.0}, 2.0) == [("pain in the legs", "SYMPTOM"), ("fever", "SYMPTOM")]


def test_vote_config_choice_picks_on_each_half_the_configuration_its_inner_cross_fit_prefers(tmp_path):
    """benchmarks/vote_config_choice.py: of two member sets, the one whose vote is right wins the
    inner cross-fit of every half, so every outer split scores the right vote; a bad --config is refused."""
    import json

    import pytest
    from spacy.tokens import DocBin

    vc = _load("vote_config_choice")
    doc = _doc_maker("Patients with Alpha syndrome have rash and Beta fever .")
    right = [(2, 4, "RAREDISEASE"), (5, 6, "SIGN"), (7, 9, "SYMPTOM")]
    DocBin(docs=[doc(right) for _ in range(8)]).to_disk(tmp_path / "gold.spacy")
    spans = {"a": right[:2], "b": right[1:], "c": right[::2], "x": [(0, 1, "SIGN")], "y": [(0, 1, "SIGN"), (5, 6, "SIGN")]}
    for name, s in spans.items():
        DocBin(docs=[doc(s) for _ in range(8)]).to_disk(tmp_path / f"{name}.spacy")
    preds = [f"{n}={tmp_path / n}.spacy" for n in spans]
    # "good": a, b, c with equal weights (two votes of three recover every span); "bad": x and y
    assert vc.main([str(tmp_path / "gold.spacy"), "--predictions", *preds, "--config", "bad:x,y",
                    "--config", "good:a,b,c:1", "--repeats", "2", "--output", str(tmp_path / "n.json")]) == 0
    out = json.loads((tmp_path / "n.json").read_text())
    assert [r["seed"] for r in out["runs"]] == [None, 0, 1]
    assert all([c["config"] for c in r["chosen"]] == ["good", "good"] for r in out["runs"])
    assert all(r["micro5"] == pytest.approx(1.0) for r in out["runs"])
    assert out["spread"]["micro5"]["mean"] == pytest.approx(1.0)
    assert out["runs"][0]["chosen"][0]["setting"]["weights"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    with pytest.raises(SystemExit, match="members among"):
        vc.main([str(tmp_path / "gold.spacy"), "--predictions", *preds, "--config", "bad:x,z"])
