import json

import pytest
import spacy
from spacy.tokens import DocBin

from tokner.cli import main
from tokner.corpus.iob import read_iob_docs


@pytest.fixture()
def ruler_model(tmp_path, dev_csv):
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    ruler = nlp.add_pipe("entity_ruler")
    docs, _ = read_iob_docs(dev_csv, nlp.vocab)
    docs = docs[:8]
    # half of the gold strings as patterns, plus one wrong-typed pattern
    ruler.add_patterns([{"label": e.label_, "pattern": e.text} for d in docs for e in list(d.ents)[::2]])
    ruler.add_patterns([{"label": "SYMPTOM", "pattern": "disorder"}])
    nlp.to_disk(tmp_path / "model")
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "dev.spacy")
    return tmp_path


def test_evaluate_then_compare(ruler_model, capsys):
    d = ruler_model
    assert main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--output", str(d / "m.json"),
                 "--save-docs", str(d / "pred.spacy")]) == 0
    m = json.loads((d / "m.json").read_text())
    assert 0.2 < m["paper_micro_r"] < 1.0 and m["speed_words_per_second"] > 0
    assert main(["compare", str(d / "reports"), "--metrics", f"ruler={d / 'm.json'}",
                 "--docs", f"ruler={d / 'pred.spacy'}", "--gold", str(d / "dev.spacy"), "--n-docs", "3"]) == 0
    md = (d / "reports" / "comparison.md").read_text()
    assert "| ruler (dev) |" in md and "GPT-4 5-shot (Lu et al. 2024, test)" in md
    assert "scored on" in md and f"| {m['docs']} doc" in md
    assert f"{m['spans_paper_per_type']['AVG-5']['f']:.3f}" in md
    assert (d / "reports" / "f1_by_type.png").read_bytes()[:4] == b"\x89PNG"
    page = (d / "reports" / "errors.html").read_text()
    assert page.count("<h2>") == 3 and "✗ SYMPTOM" in page and "missed (" in page


def test_compare_reports_missing_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics for 'x' not found"):
        main(["compare", str(tmp_path / "r"), "--metrics", f"x={tmp_path / 'nope.json'}"])


def test_evaluate_in_slices_then_score_docs_equals_one_run(ruler_model):
    d = ruler_model
    assert main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--output", str(d / "all.json")]) == 0
    for part, docs in (("a", "0:3"), ("b", "3:")):
        assert main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--docs", docs, "--output",
                     str(d / f"{part}.json"), "--save-docs", str(d / f"{part}.spacy")]) == 0
    parts = [json.loads((d / f"{p}.json").read_text()) for p in "ab"]
    assert [p["docs"] for p in parts] == [3, 5] and parts[1]["doc_slice"] == "3:"
    assert main(["score-docs", str(d / "dev.spacy"), str(d / "a.spacy"), str(d / "b.spacy"),
                 "--output", str(d / "joined.json")]) == 0
    whole, joined = json.loads((d / "all.json").read_text()), json.loads((d / "joined.json").read_text())
    assert joined["docs"] == 8
    assert joined["spans_paper_per_type"] == whole["spans_paper_per_type"]
    with pytest.raises(SystemExit, match="5 predicted docs .* but 8 gold docs"):
        main(["score-docs", str(d / "dev.spacy"), str(d / "b.spacy")])
    with pytest.raises(SystemExit, match="b.spacy: doc 0 does not have the text of gold doc 0"):
        main(["score-docs", str(d / "dev.spacy"), str(d / "b.spacy"), "--docs", "0:5"])
    assert main(["score-docs", str(d / "dev.spacy"), str(d / "b.spacy"), "--docs", "3:8"]) == 0
    # --subset: predictions of all 8 documents, scored on documents 3-7 only, equal the 3: run
    assert main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--save-docs", str(d / "all.spacy")]) == 0
    assert main(["score-docs", str(d / "dev.spacy"), str(d / "all.spacy"), "--docs", "3:", "--subset",
                 "--output", str(d / "sub.json")]) == 0
    sub = json.loads((d / "sub.json").read_text())
    assert sub["docs"] == 5 and sub["spans_paper_per_type"] == parts[1]["spans_paper_per_type"]
    with pytest.raises(SystemExit, match="--docs"):
        main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--docs", "first"])


def test_token_confusion_counts_types_by_character_offsets():
    from spacy.tokens import Doc

    from tokner.scoring.report import confusion_markdown, token_confusion

    vocab = spacy.blank("en").vocab
    words = ["Epidermolysis", "bullosa", "causes", "skin", "blisters", "and", "pain", "."]
    spaces = [True] * 6 + [False, False]
    gold = Doc(vocab, words=words, spaces=spaces,
               ents=["B-SKINRAREDISEASE", "I-SKINRAREDISEASE", "O", "B-SIGN", "I-SIGN", "O", "B-SYMPTOM", "O"])
    # predicted on other tokens ("skin blisters" as one token): read by character offsets
    pwords = ["Epidermolysis", "bullosa", "causes", "skin blisters", "and", "pain", "."]
    pred = Doc(vocab, words=pwords, spaces=[True] * 5 + [False, False],
               ents=["B-RAREDISEASE", "I-RAREDISEASE", "O", "B-SYMPTOM", "B-ANAPHOR", "O", "O"])
    m = token_confusion([gold], [pred])
    assert m["SKINRAREDISEASE"]["RAREDISEASE"] == 2
    assert m["SIGN"]["SYMPTOM"] == 2  # both gold tokens lie inside the predicted "skin blisters"
    assert m["O"]["O"] == 3  # causes, and (ANAPHOR is outside the five types), "."
    assert m["SYMPTOM"]["O"] == 1
    assert sum(sum(row.values()) for row in m.values()) == 8
    table = confusion_markdown("x", m)
    assert "| SKINRAREDISEASE | 0 | 2 | 0 | 0 | 0 | 0 |" in table  # columns DISEASE ... SYMPTOM, O
    with pytest.raises(ValueError, match="predicted and gold documents differ"):
        token_confusion([gold], [Doc(vocab, words=["other"])])


def test_compare_appends_confusion_tables(ruler_model):
    d = ruler_model
    assert main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--output", str(d / "m.json"),
                 "--save-docs", str(d / "pred.spacy")]) == 0
    assert main(["compare", str(d / "reports"), "--metrics", f"ruler={d / 'm.json'}",
                 "--docs", f"ruler={d / 'pred.spacy'}", "--gold", str(d / "dev.spacy")]) == 0
    md = (d / "reports" / "comparison.md").read_text()
    assert "## Token confusion per method" in md and "**ruler (8 docs)**" in md
    # the ruler's wrong-typed pattern: gold "disorder" tokens that are not SYMPTOM but predicted SYMPTOM
    from tokner.scoring.report import token_confusion

    vocab = spacy.blank("en").vocab
    m = token_confusion(list(DocBin().from_disk(d / "dev.spacy").get_docs(vocab)),
                        list(DocBin().from_disk(d / "pred.spacy").get_docs(vocab)))
    assert sum(m[g]["SYMPTOM"] for g in m if g != "SYMPTOM") > 0
    assert f"| SIGN | {m['SIGN']['DISEASE']:,} |" in md


def test_summary_table_goes_between_the_readme_markers(ruler_model):
    d = ruler_model
    assert main(["evaluate", str(d / "model"), str(d / "dev.spacy"), "--output", str(d / "m.json")]) == 0
    assert main(["compare", str(d / "reports"), "--metrics", f"ruler={d / 'm.json'}"]) == 0
    m = json.loads((d / "m.json").read_text())
    summary = (d / "reports" / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| ruler (dev) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    per_type = m["spans_paper_per_type"]
    assert cells[1:6] == [f"{per_type[t]['f']:.3f}" for t in ("DISEASE", "RAREDISEASE", "SKINRAREDISEASE", "SIGN", "SYMPTOM")]
    assert cells[6] == f"**{m['paper_avg_f']:.3f}**" and cells[7] == f"{m['paper_micro5_f']:.3f}"
    assert "*GPT-4 5-shot (Lu et al. 2024, test)*" in summary
    readme = d / "README.md"
    from tokner.scoring.report import RESULTS_BEGIN, RESULTS_END

    readme.write_text(f"# x\n\nbefore\n{RESULTS_BEGIN}\nold table\n{RESULTS_END}\nafter\n")
    (d / "t.json").write_text(json.dumps({"jobs": 2, "steps": [{"step": "a", "seconds": 61.0}, {"step": "b", "seconds": 1200.4}],
                                          "total_seconds": 1261.4, "wall_seconds": 1201.0}))
    assert main(["readme-results", str(d / "reports" / "summary.md"), str(readme), "--run", "make all, commit abc",
                 "--timings", str(d / "t.json")]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{RESULTS_END}\nafter\n")
    assert row in text and "Run: make all, commit abc" in text
    assert "a 61, b 1,200; 1,261 s of steps in 1,201 s wall" in text
    (d / "plain.md").write_text("no markers")
    with pytest.raises(SystemExit, match="no results markers"):
        main(["readme-results", str(d / "reports" / "summary.md"), str(d / "plain.md"), "--run", "x"])
