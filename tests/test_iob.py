import pytest
from seqeval.metrics.sequence_labeling import get_entities

from tokner.corpus.iob import IOBFormatError, read_iob_docs, read_iob_rows, write_iob_csv
from tokner.answers.tags import sentence_tags


def test_dev_csv_reader(dev_csv, nlp):
    docs, stats = read_iob_docs(dev_csv, nlp.vocab)
    assert len(docs) == 104
    assert sum(len(list(d.sents)) for d in docs) == 897
    rows = read_iob_rows(dev_csv)
    # same tags back, sentence by sentence, and the same entities seqeval finds
    for doc, (name, file_rows) in zip(docs, rows.items()):
        assert doc.user_data["source"] == name
        flat = [t for sent in sentence_tags(doc) for t in sent]
        seqeval_ents = get_entities([[r[1] for r in file_rows if r[2] == s] for s in sorted({r[2] for r in file_rows})])
        assert len(doc.ents) == len(seqeval_ents)
        # the reader may only differ from the CSV where seqeval reads an I- as a B-
        for got, (tok, tag, *_rest) in zip(flat, file_rows):
            assert got == tag or (tag.startswith("I-") and got == "B-" + tag[2:])
    assert stats["ents"] == 1348


def test_sentence_num_global_can_repeat(dev_csv):
    rows = read_iob_rows(dev_csv)
    pairs = {(name, r[3]) for name, rs in rows.items() for r in rs}
    globals_ = {g for _, g in pairs}
    assert len(pairs) == 897 and len(globals_) == 894  # three global ids shared by two files


def test_write_read_round_trip(dev_csv, nlp, tmp_path):
    docs, _ = read_iob_docs(dev_csv, nlp.vocab)
    write_iob_csv(docs[:5], tmp_path / "x.csv")
    again, _ = read_iob_docs(tmp_path / "x.csv", nlp.vocab)
    for a, b in zip(docs[:5], again):
        assert [t.text for t in a] == [t.text for t in b]
        assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents]
        assert [s.start for s in a.sents] == [s.start for s in b.sents]


@pytest.mark.parametrize(
    "content,match",
    [
        ("Token,Tag,File\nA,O,x.txt\n", r"x\.csv:1: missing column"),
        ("Token,Tag,Sentence_Num,Sentence_Num_Global,File\nA,O,1,1,x.txt\nB,B_SIGN,1,1,x.txt\n", r"x\.csv:3: invalid tag 'B_SIGN'"),
        ("Token,Tag,Sentence_Num,Sentence_Num_Global,File\nA,O,one,1,x.txt\n", r"x\.csv:2: Sentence_Num"),
        ("Token,Tag,Sentence_Num,Sentence_Num_Global,File\n,O,1,1,x.txt\n", r"x\.csv:2: empty token"),
        ("Token,Tag,Sentence_Num,Sentence_Num_Global,File\nA,O,1\n", r"x\.csv:2: expected 5 columns"),
        ("", r"x\.csv:1: empty file"),
        ("Token,Tag,Sentence_Num,Sentence_Num_Global,File\n", r"x\.csv:2: no token rows after the header"),
        ("Token,Tag,Sentence_Num,Sentence_Num_Global,File\nA,O,1,1,x.txt\n" * 1 + "caf\udce9,O,1,1,x.txt\n",
         r"x\.csv:3: not UTF-8"),
    ],
)
def test_bad_csv(tmp_path, nlp, content, match):
    # surrogateescape writes the \udce9 above as the lone byte 0xE9 (Latin-1 "é")
    (tmp_path / "x.csv").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(IOBFormatError, match=match):
        read_iob_docs(tmp_path / "x.csv", nlp.vocab)
