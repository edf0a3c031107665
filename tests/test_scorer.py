import random

import pytest
import spacy
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from spacy.tokens import Span
from spacy.training import Example

from tokner.corpus.iob import read_iob_docs
from tokner.scoring.scorer import PAPER_LABELS, score_paper_ner
from tokner.answers.tags import doc_tags, sentence_tags, set_ents_from_tags

LABELS = ["DISEASE", "RAREDISEASE", "SKINRAREDISEASE", "SIGN", "SYMPTOM", "ANAPHOR"]


def perturb(tags, rng):
    """Random but realistic prediction errors, including invalid-looking I- starts."""
    out = list(tags)
    for i, t in enumerate(out):
        r = rng.random()
        if r < 0.06:
            out[i] = "O"
        elif r < 0.10:
            out[i] = rng.choice(["B-", "I-"]) + rng.choice(LABELS)
        elif r < 0.13 and t != "O":
            out[i] = t[:2] + rng.choice(LABELS)
    return out


def _seqeval(y_true, y_pred, keep):
    mask = lambda seqs: [[t if t != "O" and t[2:] in keep else "O" for t in s] for s in seqs]
    yt, yp = mask(y_true), mask(y_pred)
    return precision_score(yt, yp), recall_score(yt, yp), f1_score(yt, yp)


@pytest.mark.parametrize("seed", [0, 1])
def test_scorer_equals_seqeval_on_dev_csv(dev_csv, nlp, seed):
    gold_docs, _ = read_iob_docs(dev_csv, nlp.vocab)
    rng = random.Random(seed)
    examples, y_true, y_pred = [], [], []
    for gold in gold_docs:
        pred = spacy.tokens.Doc(gold.vocab, words=[t.text for t in gold], sent_starts=[t.is_sent_start for t in gold])
        tags = perturb(doc_tags(gold), rng)
        set_ents_from_tags(pred, tags)
        examples.append(Example(pred, gold))
        y_true.extend(sentence_tags(gold))
        y_pred.extend([[tags[i] for i in range(s.start, s.end)] for s in gold.sents])
    scores = score_paper_ner(examples)
    assert 0.5 < scores["paper_micro_f"] < 0.95  # the perturbation did something
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    for label in LABELS:
        ours = scores["spans_paper_per_type"][label]
        assert ours["p"] == pytest.approx(report[label]["precision"], abs=1e-9)
        assert ours["r"] == pytest.approx(report[label]["recall"], abs=1e-9)
        assert ours["f"] == pytest.approx(report[label]["f1-score"], abs=1e-9)
    for key, keep in (("paper_micro5", PAPER_LABELS), ("paper_micro", LABELS)):
        p, r, f = _seqeval(y_true, y_pred, keep)
        assert (scores[f"{key}_p"], scores[f"{key}_r"], scores[f"{key}_f"]) == pytest.approx((p, r, f), abs=1e-9)
    for k, name in (("p", "precision"), ("r", "recall"), ("f", "f1-score")):
        avg = sum(report[l][name] for l in PAPER_LABELS) / 5
        assert scores[f"paper_avg_{k}"] == pytest.approx(avg, abs=1e-9)


def test_entity_crossing_a_sentence_is_split_like_seqeval(nlp):
    gold = spacy.tokens.Doc(nlp.vocab, words=["a", "b", ".", "c", "d"], sent_starts=[1, 0, 0, 1, 0])
    gold.ents = [Span(gold, 3, 5, "SIGN")]
    pred = spacy.tokens.Doc(nlp.vocab, words=["a", "b", ".", "c", "d"])
    pred.ents = [Span(pred, 2, 5, "SIGN")]  # crosses the sentence start at "c"
    scores = score_paper_ner([Example(pred, gold)])
    assert scores["spans_paper_per_type"]["SIGN"] == pytest.approx({"p": 0.5, "r": 1.0, "f": 2 / 3})


def test_registered_scorer_in_spacy_evaluate(dev_csv, tmp_path):
    """`spacy evaluate --spans-key paper` prints the paper table for a pipeline using the scorer."""
    import subprocess
    import sys

    from spacy.tokens import DocBin

    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"scorer": {"@scorers": "tokner.paper_ner_scorer.v1"}})
    docs, _ = read_iob_docs(dev_csv, nlp.vocab)
    signs = [e.text for d in docs[:20] for e in d.ents if e.label_ == "SIGN"][:10]
    ruler.add_patterns([{"label": "SIGN", "pattern": t} for t in signs])
    nlp.to_disk(tmp_path / "model")
    DocBin(docs=docs[:20]).to_disk(tmp_path / "dev.spacy")
    out = subprocess.run(
        [sys.executable, "-m", "spacy", "evaluate", str(tmp_path / "model"), str(tmp_path / "dev.spacy"),
         "--spans-key", "paper", "--output", str(tmp_path / "m.json")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "AVG-5" in out and "MICRO-5" in out and "SKINRAREDISEASE" in out
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    assert 0 < m["spans_paper_per_type"]["SIGN"]["p"] <= 100
