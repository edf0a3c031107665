"""`pip install spacy-tokner` without extras: the core (tokenizer, sentencizer, readers,
scorer, CLI, annotate with a CNN pipeline) imports and runs with none of torch,
transformers, spacy-llm, peft, spacy-transformers, ray, matplotlib, pyarrow or seqeval."""
import subprocess
import sys
import textwrap

EXTRAS = ("torch", "transformers", "spacy_llm", "peft", "spacy_transformers", "ray", "matplotlib", "pyarrow",
          "seqeval", "bm25s", "sentence_transformers", "sklearn")

SCRIPT = textwrap.dedent(f"""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {EXTRAS!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not installed)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    # nor their entry points (spaCy loads every package's factories through catalogue)
    import importlib.metadata as md
    import catalogue
    catalogue.AVAILABLE_ENTRY_POINTS = md.EntryPoints(
        e for d in md.distributions() for e in d.entry_points
        if e.value.split(":")[0].split(".")[0] not in {EXTRAS!r})
    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example
    import tokner, tokner.cli, tokner.corpus.brat, tokner.corpus.iob, tokner.corpus.readers, tokner.scoring.evaluation, tokner.annotate
    from tokner.scoring.scorer import score_paper_ner

    nlp = spacy.blank("en", config={{"nlp": {{"tokenizer": {{"@tokenizers": "tokner.PaperTokenizer.v1"}}}}}})
    nlp.add_pipe("tokner_sentencizer")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{{"label": "SIGN", "pattern": "fever"}}])
    doc = nlp("High fever. It lasts.")
    assert [(e.text, e.start_char, e.label_) for e in doc.ents] == [("fever", 5, "SIGN")], doc.ents
    assert len(list(doc.sents)) == 2
    gold = Doc(nlp.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc],
               ents=["O", "B-SIGN", "O", "O", "O", "O"])
    scores = score_paper_ner([Example(doc, gold)])
    assert scores["paper_micro5_f"] == 1.0, scores
    assert not [m for m in sys.modules if m.split(".")[0] in {EXTRAS!r}]
    print("ok")
""")


def test_core_runs_without_any_extra():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
