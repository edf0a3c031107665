import csv
import logging
from collections import OrderedDict
from pathlib import Path

import pytest
from spacy.tokens import DocBin

from tokner.corpus.brat import (
    BratFormatError,
    entities_from_spans,
    iter_brat_dir,
    paper_tags,
    read_brat_docs,
)
from tokner.text.tokenizer import make_doc


def test_reproduces_the_papers_dev_csv_exactly(brat_dev, dev_csv, nlp):
    """Paper tokenizer + sentence rule + tag rule == the authors' dev CSV, token for token."""
    by_file = OrderedDict()
    with open(dev_csv, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            by_file.setdefault(row["File"], []).append((row["Token"], row["Tag"], int(row["Sentence_Num"])))
    assert len(by_file) == 104
    docs = {b.txt_path.name: b for b in iter_brat_dir(brat_dev)}
    for name, rows in by_file.items():
        bdoc = docs[name]
        doc = make_doc(nlp.vocab, bdoc.text, sentences=True)  # no boundary splits: the paper's tokens
        tags = paper_tags(doc, bdoc.entities)
        sent_num, mine = 0, []
        for tok, tag in zip(doc, tags):
            if tok.is_sent_start and not tok.is_space:
                sent_num += 1
            if not tok.is_space:
                mine.append((tok.text, tag, sent_num))
        assert mine == rows, name


def _ann_entities(path: Path):
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("T"):
            tid, field, _ = line.split("\t", 2)
            label, offsets = field.split(" ", 1)
            frags = tuple(sorted(tuple(int(x) for x in fr.split()) for fr in offsets.split(";")))
            out[tid] = (label, frags)
    return out


def _first_fragments(path: Path):
    """(label, (start, end)) of each entity's first fragment as listed in the .ann line."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("T"):
            label, offsets = line.split("\t")[1].split(" ", 1)
            start, end = offsets.split(";")[0].split()
            out.append((label, (int(start), int(end))))
    return out


@pytest.mark.parametrize("split", ["dev", "train"])
def test_every_annotation_recoverable_from_spans(split, raredis_dir, nlp, tmp_path):
    folder = raredis_dir / "brat" / split
    docs, stats = read_brat_docs(folder, nlp.vocab)
    # through a DocBin, as the corpus command stores them
    db = DocBin(store_user_data=True, docs=docs)
    db.to_disk(tmp_path / "x.spacy")
    docs = list(DocBin().from_disk(tmp_path / "x.spacy").get_docs(nlp.vocab))
    assert stats["unaligned_fragments"] == 0
    n = 0
    for doc in docs:
        expected = _ann_entities(folder / doc.user_data["source"].replace(".txt", ".ann"))
        assert entities_from_spans(doc) == expected
        n += len(expected)
        # every token of Doc.ents lies inside the first fragment of an annotation of the
        # entity's label (the conversion rule of docs/corpus.md: cut or joined, never moved or relabelled)
        firsts = _first_fragments(folder / doc.user_data["source"].replace(".txt", ".ann"))
        for ent in doc.ents:
            for t in ent:
                assert t.is_space or any(label == ent.label_ and s <= t.idx and t.idx + len(t) <= e
                                         for label, (s, e) in firsts), (doc.user_data["source"], t.idx, ent.text)
            assert not ent[0].is_space and not ent[-1].is_space
    assert n == stats["entities"] == {"dev": 1458, "train": 10426}[split]


def test_policy_counts_dev(brat_dev, nlp):
    docs, st = read_brat_docs(brat_dev, nlp.vocab)
    assert st["docs"] == 104
    assert st["entities"] == 1458 and st["discontinuous"] == 103
    assert st["ents"] == sum(len(d.ents) for d in docs) == 1352
    # every annotation is either kept unchanged, kept as its first fragment, or changed by the overlap rule
    assert st["annotations_in_ents_unchanged"] + st["ents_discontinuous_first_fragment"] + st[
        "annotations_not_in_ents_overlap"
    ] == st["entities"]
    assert st["tokens_split_for_boundaries"] == 26
    assert st["quote_escape_warnings"] == 2
    assert st["unaligned_fragments"] == 0


def test_overlap_rule_is_the_papers(tmp_path, nlp):
    # later type (in order of first appearance) wins per token; first fragment only
    text = "Infectious arthritis causes pain of the lower arms."
    ann = (
        "T1\tRAREDISEASE 0 20\tInfectious arthritis\n"
        "T2\tSIGN 11 20\tarthritis\n"
        "T3\tSYMPTOM 28 32;40 50\tpain lower arms\n"
        "R1\tProduces Arg1:T1 Arg2:T2\t\n"
    )
    doc = _convert(tmp_path, text, ann, nlp)
    assert [(e.text, e.label_) for e in doc.ents] == [("Infectious", "RAREDISEASE"), ("arthritis", "SIGN"), ("pain", "SYMPTOM")]
    assert entities_from_spans(doc)["T3"] == ("SYMPTOM", ((28, 32), (40, 50)))


def _convert(tmp_path, text, ann, nlp, name="doc", newline=None):
    (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8", newline=newline or "")
    (tmp_path / f"{name}.ann").write_text(ann, encoding="utf-8")
    docs, _ = read_brat_docs(tmp_path, nlp.vocab)
    return docs[0]


def test_boundary_inside_token_splits_the_token(tmp_path, nlp):
    text = "Hypoadrenalism-like signs, see anti-TNF."
    doc = _convert(tmp_path, text, "T1\tSIGN 0 14\tHypoadrenalism\nT2\tDISEASE 36 39\tTNF\n", nlp)
    assert [(e.text, e.start_char, e.end_char) for e in doc.ents] == [("Hypoadrenalism", 0, 14), ("TNF", 36, 39)]
    assert doc.text == text


def test_crlf_unicode_and_empty_documents(tmp_path, nlp):
    text = "Ünïcödé – “fever”.\r\nSecond line: rash.\r\n"
    start = text.index("rash")
    doc = _convert(tmp_path, text, f"T1\tSIGN {start} {start + 4}\trash\nT2\tSYMPTOM 11 16\tfever\n", nlp)
    assert doc.text == text
    assert [e.text for e in doc.ents] == ["fever", "rash"]
    assert len(list(doc.sents)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    doc = _convert(empty, "", "", nlp)
    assert len(doc) == 0 and list(doc.ents) == []


@pytest.mark.parametrize(
    "ann,match",
    [
        ("T1\tSIGN 0 4 rash\n", r"doc\.ann:1: malformed entity line"),
        ("T1\tSIGN zero 4\trash\n", r"doc\.ann:1: malformed entity type/offsets"),
        ("\nT1\tSIGN 0 400\trash\n", r"doc\.ann:2: offsets 0-400 of T1 fall outside the text"),
        ("T1\tSIGN 0 4\tfever\n", r"doc\.ann:1: text/annotation mismatch for T1"),
        ("T1\tSIGN 0 4\trash\nT1\tSIGN 5 9\tthen\n", r"doc\.ann:2: duplicate entity id T1"),
        ("X1\tfoo\n", r"doc\.ann:1: unknown annotation line"),
    ],
)
def test_bad_ann_lines_name_file_and_line(tmp_path, nlp, ann, match):
    with pytest.raises(BratFormatError, match=match):
        _convert(tmp_path, "rash then fever.", ann, nlp)


def test_unpaired_files_name_the_file(tmp_path, nlp):
    (tmp_path / "orphan.ann").write_text("T1\tSIGN 0 4\trash\n", encoding="utf-8")
    with pytest.raises(BratFormatError, match=r"orphan\.ann: has no matching \.txt file"):
        read_brat_docs(tmp_path, nlp.vocab)
    (tmp_path / "orphan.ann").rename(tmp_path / "lonely.txt")
    with pytest.raises(BratFormatError, match=r"lonely\.txt: has no matching \.ann file"):
        read_brat_docs(tmp_path, nlp.vocab)


def test_skip_mode_counts_and_logs(tmp_path, nlp, caplog):
    (tmp_path / "a.txt").write_text("rash then fever.", encoding="utf-8")
    (tmp_path / "a.ann").write_text("T1\tSIGN 0 4\trash\nT2\tSIGN 0 99\tx\nT3\tSYMPTOM 10 15\tfever\n", encoding="utf-8")
    (tmp_path / "orphan.ann").write_text("T1\tSIGN 0 4\trash\n", encoding="utf-8")
    with pytest.raises(BratFormatError, match=r"a\.ann:2: offsets 0-99 of T2 fall outside the text"):
        read_brat_docs(tmp_path, nlp.vocab)
    with caplog.at_level(logging.WARNING):
        docs, st = read_brat_docs(tmp_path, nlp.vocab, on_error="skip")
    assert len(docs) == 1 and st["skipped_lines"] == 1 and st["entities"] == 2
    assert "orphan.ann" in caplog.text and "a.ann:2" in caplog.text


def test_quote_escaping_converts_with_warning(tmp_path, nlp, caplog):
    text = 'a "leonine" appearance'
    with caplog.at_level(logging.WARNING):
        doc = _convert(tmp_path, text, 'T1\tSIGN 2 22\t"leonine"""" appearance"\n', nlp)
    assert [e.text for e in doc.ents] == ['"leonine" appearance']
    assert "quote escaping" in caplog.text


def test_missing_folder_and_bad_encoding(tmp_path, nlp):
    with pytest.raises(BratFormatError, match="BRAT folder not found"):
        read_brat_docs(tmp_path / "nope", nlp.vocab)
    (tmp_path / "b.txt").write_bytes(b"fine\r\nstill fine\n\xff\xfe bad")
    (tmp_path / "b.ann").write_text("", encoding="utf-8")
    with pytest.raises(BratFormatError, match=r"b\.txt:3: not valid UTF-8"):  # the line of the first bad byte
        read_brat_docs(tmp_path, nlp.vocab)


def test_relation_event_attribute_and_note_lines_are_counted(tmp_path, nlp):
    (tmp_path / "a.txt").write_text("rash then fever.", encoding="utf-8")
    (tmp_path / "a.ann").write_text(
        "T1\tSIGN 0 4\trash\nT2\tSYMPTOM 10 15\tfever\nR1\tCauses Arg1:T1 Arg2:T2\nE1\tSIGN:T1\n"
        "A1\tNegated T2\n#1\tAnnotatorNotes T1\tcheck\n", encoding="utf-8")
    docs, st = read_brat_docs(tmp_path, nlp.vocab)
    assert [(e.text, e.label_) for e in docs[0].ents] == [("rash", "SIGN"), ("fever", "SYMPTOM")]
    assert st["ignored_non_entity_lines"] == 4
    assert (st["ignored_lines_R"], st["ignored_lines_E"], st["ignored_lines_A"], st["ignored_lines_#"]) == (1, 1, 1, 1)
