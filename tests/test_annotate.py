"""``tokner annotate`` with the local engine: every input and output form, bad input,
resuming, offsets into texts with CRLF/tabs/emoji/surrounding whitespace.

The pipeline is a blank English one with the paper's tokenizer, ``tokner_sentencizer``
and an ``entity_ruler``, so its entities are known in advance: each test document is
built from pieces, and the expected offsets are the pieces' cumulative lengths.
"""
import csv
import json
import re
import sys
from pathlib import Path

import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin, SpanGroup

from tokner.annotate import (AnnotateSummary, InputError, InputReader, OutputError, TextChangedError, annotate)
from tokner.annotate.outputs import brat_fragments, brat_name
from tokner.corpus.brat import iter_brat_dir
from tokner.cli import main

PATTERNS = [
    {"label": "RAREDISEASE", "pattern": [{"LOWER": "fabry"}, {"LOWER": "disease"}]},
    {"label": "SYMPTOM", "pattern": [{"LOWER": "pain"}]},
    {"label": "SIGN", "pattern": [{"LOWER": "high"}, {"IS_SPACE": True, "OP": "?"}, {"LOWER": "fever"}]},
]
SCORES = {"RAREDISEASE": 0.875, "SYMPTOM": 0.5, "SIGN": 0.25}

# Each document: pieces of text, an entity piece being (label, text).
DOCS = [
    ("crlf", ["Patient has ", ("RAREDISEASE", "Fabry disease"), ".\r\nReports ", ("SYMPTOM", "pain"), ".\r\n"]),
    ("tabs", ["\t", ("SYMPTOM", "Pain"), "\tand\t", ("SIGN", "high fever"), "\t"]),
    ("emoji", ["😀 ", ("SYMPTOM", "pain"), " 🎉🎉 (", ("RAREDISEASE", "fabry disease"), "). 👩‍⚕️ ", ("SYMPTOM", "PAIN")]),
    ("padded", ["   \n ", ("SIGN", "High\nfever"), " \n\n  "]),
    ("empty", [""]),
    ("blank", ["  \t\r\n "]),
    ("none", ["Nothing to see here."]),
    ("sub/nested", ["A ", ("SYMPTOM", "pain"), " in the\r\n", ("RAREDISEASE", "Fabry disease"), "!"]),
]


def build(pieces):
    """(text, expected entities) with offsets counted from the pieces, not by the pipeline."""
    text, ents = "", []
    for piece in pieces:
        if isinstance(piece, tuple):
            label, surface = piece
            ents.append({"start": len(text), "end": len(text) + len(surface), "label": label, "text": surface,
                         "score": None})
            text += surface
        else:
            text += piece
    return text, ents


TEXTS = {doc_id: build(pieces)[0] for doc_id, pieces in DOCS}
EXPECTED = {doc_id: build(pieces)[1] for doc_id, pieces in DOCS}


@Language.component("test_annotate_lora_scores")
def _lora_scores(doc):
    doc.spans["lora"] = SpanGroup(doc, name="lora", spans=list(doc.ents),
                                  attrs={"scores": [SCORES[e.label_] for e in doc.ents]})
    return doc


@Language.component("test_annotate_llm_alignment")
def _llm_alignment(doc):
    doc.spans["llm"] = SpanGroup(doc, name="llm", spans=list(doc.ents),
                                 attrs={"scores": [SCORES[e.label_] / 2 for e in doc.ents]})
    doc._.tokner_llm = {"units": 1, "aligned": len(doc.ents)} if len(doc.ents) else None
    return doc


def make_ruler_nlp(*extra_pipes):
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    nlp.add_pipe("entity_ruler").add_patterns(PATTERNS)
    for name in extra_pipes:
        nlp.add_pipe(name)
    return nlp


@pytest.fixture(scope="module")
def ruler_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "ruler"
    make_ruler_nlp().to_disk(path)
    return path


def write_jsonl(path: Path, docs, id_field="id", text_field="text") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        for doc_id, text in docs:
            f.write(json.dumps({id_field: doc_id, text_field: text}, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def run(model, inp, out, **kwargs) -> AnnotateSummary:
    kwargs.setdefault("progress", False)
    return annotate(model, inp, out, **kwargs)


def all_docs():
    return [(doc_id, TEXTS[doc_id]) for doc_id, _ in DOCS]


# -- JSONL output: exact records and offsets --------------------------------------------
def test_jsonl_offsets_are_exact(ruler_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    summary = run(ruler_model, inp, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == [{"id": i, "entities": EXPECTED[i]} for i, _ in DOCS]
    assert (summary.docs, summary.entities, summary.errors, summary.resumed) == (8, 10, 0, 0)
    # a few offsets spelled out: CRLF, tab, emoji (one code point each) and ZWJ sequences count as in str
    assert [(e["start"], e["end"]) for e in EXPECTED["crlf"]] == [(12, 25), (36, 40)]
    assert [(e["start"], e["end"]) for e in EXPECTED["tabs"]] == [(1, 5), (10, 20)]
    assert [(e["start"], e["end"]) for e in EXPECTED["emoji"]] == [(2, 6), (11, 24), (32, 36)]
    assert [(e["start"], e["end"]) for e in EXPECTED["padded"]] == [(5, 15)]
    for doc_id, ents in EXPECTED.items():
        assert all(TEXTS[doc_id][e["start"]:e["end"]] == e["text"] for e in ents)


def test_empty_and_whitespace_texts_keep_their_line(ruler_model, tmp_path):
    docs = [("e1", ""), ("w1", " "), ("w2", "\r\n\t \u00a0"), ("x", "pain"), ("e2", "")]
    inp = write_jsonl(tmp_path / "in.jsonl", docs)
    run(ruler_model, inp, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {"id": "e1", "entities": []}, {"id": "w1", "entities": []}, {"id": "w2", "entities": []},
        {"id": "x", "entities": [{"start": 0, "end": 4, "label": "SYMPTOM", "text": "pain", "score": None}]},
        {"id": "e2", "entities": []},
    ]


def test_jsonl_field_names_and_missing_ids(ruler_model, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"doc": "a", "body": "pain"}\n{"body": "Fabry disease"}\n\n{"doc": null, "body": "x"}\n'
                   '{"doc": 7, "body": "high fever"}\n', encoding="utf-8")
    run(ruler_model, inp, tmp_path / "out.jsonl", text_field="body", id_field="doc")
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["a", 2, 4, 7]  # no id: the line number (blank line 3 counted)
    assert [[e["label"] for e in r["entities"]] for r in out] == [["SYMPTOM"], ["RAREDISEASE"], [], ["SIGN"]]


# -- every input form --------------------------------------------------------------------
def _expected_by_text():
    return [(TEXTS[i], EXPECTED[i]) for i, _ in DOCS]


def test_txt_folder_input(ruler_model, tmp_path):
    root = tmp_path / "texts"
    for doc_id, text in all_docs():
        p = root / f"{doc_id}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("utf-8"))
    (root / "notes.md").write_text("not a document")
    run(ruler_model, root, tmp_path / "out.jsonl")
    out = read_jsonl(tmp_path / "out.jsonl")
    ids = sorted(f"{i}.txt" for i, _ in DOCS)  # sorted relative POSIX paths
    assert [r["id"] for r in out] == ids
    assert {r["id"]: r["entities"] for r in out} == {f"{i}.txt": EXPECTED[i] for i, _ in DOCS}


def test_csv_input_keeps_crlf_inside_fields(ruler_model, tmp_path):
    inp = tmp_path / "in.csv"
    with open(inp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note_id", "body", "other"])
        for doc_id, text in all_docs():
            w.writerow([doc_id, text, "x"])
    run(ruler_model, inp, tmp_path / "out.jsonl", text_field="body", id_field="note_id")
    assert read_jsonl(tmp_path / "out.jsonl") == [{"id": i, "entities": EXPECTED[i]} for i, _ in DOCS]


def test_csv_without_id_column_uses_start_lines(ruler_model, tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_bytes(b'text\r\n"pain\r\nand more"\r\nFabry disease\r\n')
    run(ruler_model, inp, tmp_path / "out.jsonl")
    assert [(r["id"], len(r["entities"])) for r in read_jsonl(tmp_path / "out.jsonl")] == [(2, 1), (4, 1)]


def test_parquet_input(ruler_model, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [i for i, _ in all_docs()], "text": [t for _, t in all_docs()]}), inp)
    run(ruler_model, inp, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == [{"id": i, "entities": EXPECTED[i]} for i, _ in DOCS]
    # int ids stay ints; no id column: the row number
    pq.write_table(pa.table({"text": ["pain", "x"]}), tmp_path / "noid.parquet")
    run(ruler_model, tmp_path / "noid.parquet", tmp_path / "noid.jsonl")
    assert [r["id"] for r in read_jsonl(tmp_path / "noid.jsonl")] == [1, 2]


# -- every output form -----------------------------------------------------------------
def test_brat_output_round_trips_through_the_brat_reader(ruler_model, tmp_path):
    docs = all_docs() + [("a b", "pain"), ("a_b", "Fabry disease"), (5, "high\r\nfever")]
    inp = write_jsonl(tmp_path / "in.jsonl", docs)
    out = tmp_path / "brat"
    run(ruler_model, inp, out, output_format="brat")
    jsonl = {r["id"]: r for r in (run(ruler_model, inp, tmp_path / "o.jsonl") and read_jsonl(tmp_path / "o.jsonl"))}
    index = read_jsonl(out / "index.jsonl")
    names = {r["id"]: r["name"] for r in index}
    assert [r["id"] for r in index] == [i for i, _ in docs]
    assert names["sub/nested"] == "sub/nested" and names["a b"] == "a_b" and names["a_b"] == "a_b~2"
    assert names[5] == "5"
    read = {}
    for folder in (out, out / "sub"):
        for bdoc in iter_brat_dir(folder):
            read[str(Path(folder.relative_to(out), bdoc.name).as_posix()).lstrip("./")] = bdoc
    assert sorted(read) == sorted(names.values())
    for doc_id, text in docs:
        bdoc = read[names[doc_id]]
        assert bdoc.text == text
        got = [(e.start, e.end, e.label, text[e.start:e.end]) for e in bdoc.entities]
        assert got == [(e["start"], e["end"], e["label"], e["text"]) for e in jsonl[doc_id]["entities"]]
    # an entity across a line break is two fragments in the .ann (an .ann line cannot hold one)
    assert (out / "padded.ann").read_text(encoding="utf-8") == "T1\tSIGN 5 9;10 15\tHigh fever\n"
    assert (out / "5.ann").read_text(encoding="utf-8") == "T1\tSIGN 0 4;6 11\thigh fever\n"
    assert (out / "crlf.txt").read_bytes() == TEXTS["crlf"].encode("utf-8")


def test_brat_names_and_fragments():
    assert brat_name("sub/case 1.txt") == "sub/case_1"
    assert brat_name("../x") == "_./x"  # no way out of the output folder
    assert brat_name("/abs//p.txt") == "abs/p"
    assert brat_name("dir.txt/a") == "dir.txt_/a"
    assert brat_name(12) == "12"
    assert brat_name(".hidden") == "_hidden"
    assert brat_fragments("ab\r\ncd e", 0, 8) == [(0, 2), (4, 8)]
    assert brat_fragments("a\u2028b", 0, 3) == [(0, 1), (2, 3)]


def test_docbin_output(ruler_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    run(ruler_model, inp, tmp_path / "out.spacy")  # the format follows the suffix
    docs = list(DocBin().from_disk(tmp_path / "out.spacy").get_docs(spacy.blank("en").vocab))
    assert [d.user_data["id"] for d in docs] == [i for i, _ in DOCS]
    for d in docs:
        assert d.text == TEXTS[d.user_data["id"]]
        assert [(e.start_char, e.end_char, e.label_) for e in d.ents] == [
            (e["start"], e["end"], e["label"]) for e in EXPECTED[d.user_data["id"]]]


def test_html_output_renders_the_first_n(ruler_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    summary = run(ruler_model, inp, tmp_path / "out.html", html_limit=2)
    html = (tmp_path / "out.html").read_text(encoding="utf-8")
    assert summary.docs == 2 and summary.output_format == "html"
    assert re.findall(r'<h2 style="margin: 0">([^<]*)</h2>', html) == ["crlf", "tabs"]
    assert re.findall(r"<span [^>]*>([A-Z]+)</span>", html) == ["RAREDISEASE", "SYMPTOM", "SYMPTOM", "SIGN"]


def test_parquet_output(ruler_model, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    run(ruler_model, inp, tmp_path / "out.parquet")
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert rows == [{"id": i, "entities": EXPECTED[i], "cats": None, "alignment": None} for i, _ in DOCS]


def test_scores_and_alignment(tmp_path):
    if not Doc.has_extension("tokner_llm"):
        Doc.set_extension("tokner_llm", default=None)
    docs = [("crlf", TEXTS["crlf"]), ("none", TEXTS["none"])]
    inp = write_jsonl(tmp_path / "in.jsonl", docs)
    for pipe, factor, alignment in (("test_annotate_lora_scores", 1, False), ("test_annotate_llm_alignment", 0.5, True)):
        model = tmp_path / pipe
        make_ruler_nlp(pipe).to_disk(model)
        out = tmp_path / f"{pipe}.jsonl"
        run(model, inp, out)
        first, second = read_jsonl(out)
        assert [(e["label"], e["score"]) for e in first["entities"]] == [
            ("RAREDISEASE", 0.875 * factor), ("SYMPTOM", 0.5 * factor)]
        assert first.get("alignment") == ({"units": 1, "aligned": 2} if alignment else None)
        assert second == {"id": "none", "entities": []}  # extension unset: no "alignment"


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("line,message", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, got an array"),
    (b'{"id": "b"}', "no 'text' field"),
    (b'{"id": "b", "text": 5}', "'text' must be a string, got a number"),
    (b'{"id": "a", "text": "again"}', "duplicate id 'a'"),
    (b'{"id": 1.5, "text": "x"}', "id must be a string or an integer"),
    (b'{"id": "b", "text": "caf\xe9"}', "not valid UTF-8"),
])
def test_bad_jsonl_names_file_and_line(ruler_model, tmp_path, line, message):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"id": "a", "text": "pain"}\n\n' + line + b"\n")
    with pytest.raises(InputError, match=re.escape(f"{inp}:3: ") + ".*" + re.escape(message)):
        run(ruler_model, inp, tmp_path / "out.jsonl")
    # the document before the bad one is written
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["a"]


def test_on_error_skip_counts_and_cli_prints_it(ruler_model, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"id": "a", "text": "pain"}\nnope\n{"id": "a", "text": "x"}\n{"text": 3}\n'
                    b'{"id": "b", "text": "high fever"}\n\xff\n')
    summary = run(ruler_model, inp, tmp_path / "out.jsonl", on_error="skip")
    assert (summary.docs, summary.errors, summary.entities) == (2, 4, 2)
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["a", "b"]
    assert main(["annotate", str(ruler_model), str(inp), str(tmp_path / "cli.jsonl"), "--on-error", "skip",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^2 docs written, 2 entities, 4 docs skipped for errors, [\d.]+ docs/s", printed, re.M)


def test_bad_txt_files(ruler_model, tmp_path):
    root = tmp_path / "texts"
    root.mkdir()
    (root / "a.txt").write_text("pain")
    (root / "b.txt").write_bytes(b"line one\nline two\nbad \xc3( byte\n")
    with pytest.raises(InputError, match=re.escape(f"{root / 'b.txt'}:3: not valid UTF-8")):
        run(ruler_model, root, tmp_path / "out.jsonl")
    (root / "b.txt").unlink()
    (root / "c.txt").symlink_to(root / "missing")
    with pytest.raises(InputError, match=re.escape(f"{root / 'c.txt'}: cannot read the file")):
        run(ruler_model, root, tmp_path / "out.jsonl", overwrite=True)
    summary = run(ruler_model, root, tmp_path / "out.jsonl", overwrite=True, on_error="skip")
    assert (summary.docs, summary.errors) == (1, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'empty'}: no .txt files")):
        run(ruler_model, tmp_path / "empty", tmp_path / "x.jsonl")


def test_bad_csv(ruler_model, tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_bytes(b'id,body\n')
    with pytest.raises(InputError, match=re.escape(f"{inp}:1: no 'text' column")):
        run(ruler_model, inp, tmp_path / "out.jsonl")
    # header line 1, a record over lines 2-3, line 4, then a duplicate id on line 5
    inp.write_bytes(b'id,text\na,"pain\nover two lines"\nb,ok\na,dup\n')
    with pytest.raises(InputError, match=re.escape(f"{inp}:5: duplicate id 'a'")):
        run(ruler_model, inp, tmp_path / "out.jsonl", overwrite=True)
    inp.write_bytes(b'id,text\na,"pain\nover two lines"\nb,caf\xe9\nc,too,many\n')
    with pytest.raises(InputError, match=re.escape(f"{inp}:4: not valid UTF-8")):
        run(ruler_model, inp, tmp_path / "out.jsonl", overwrite=True)
    reader = InputReader(inp, on_error="skip")
    assert [r.id for r in reader] == ["a"] and reader.errors == 2  # bad UTF-8, too many fields


def test_bad_parquet(ruler_model, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["pain", None]}), inp)
    with pytest.raises(InputError, match=re.escape(f"{inp}: row 2: 'text' is null")):
        run(ruler_model, inp, tmp_path / "out.jsonl")


def test_bad_input_paths(ruler_model, tmp_path):
    with pytest.raises(InputError, match="input not found"):
        run(ruler_model, tmp_path / "nothing.jsonl", tmp_path / "out.jsonl")
    (tmp_path / "in.xml").write_text("<x/>")
    with pytest.raises(InputError, match="cannot tell the input form"):
        run(ruler_model, tmp_path / "in.xml", tmp_path / "out.jsonl")


def test_pipeline_that_changes_the_text_is_an_error(tmp_path):
    nlp = spacy.blank("en")
    # a whitespace tokenizer that loses runs of spaces
    nlp.tokenizer = lambda text: Doc(nlp.vocab, words=text.split(), spaces=[True] * (len(text.split()) - 1) + [False])
    inp = write_jsonl(tmp_path / "in.jsonl", [("ok", "a b"), ("bad", "a  b")])
    with pytest.raises(TextChangedError, match=r"document 'bad'.*character 2"):
        run(nlp, inp, tmp_path / "out.jsonl")


# -- existing output and resuming ----------------------------------------------------------
def test_existing_output_needs_resume_or_overwrite(ruler_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    out = tmp_path / "out.jsonl"
    run(ruler_model, inp, out)
    with pytest.raises(OutputError, match="exists and is not empty: pass --resume .* or --overwrite"):
        run(ruler_model, inp, out)
    assert run(ruler_model, inp, out, overwrite=True).docs == 8
    assert len(read_jsonl(out)) == 8
    with pytest.raises(OutputError, match="exclude each other"):
        run(ruler_model, inp, out, overwrite=True, resume=True)
    with pytest.raises(OutputError, match="--resume works for the jsonl and brat formats, not docbin"):
        run(ruler_model, inp, tmp_path / "o.spacy", resume=True)
    with pytest.raises(SystemExit, match="tokner annotate: .*exists and is not empty"):
        main(["annotate", str(ruler_model), str(inp), str(out), "--no-progress"])


def _many_docs(n):
    return [(f"d{i:03d}", f"Case {i}: pain{' and Fabry disease' * (i % 3)}.\r\n") for i in range(n)]


def test_resume_after_a_kill_gives_the_uninterrupted_output(ruler_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", _many_docs(23))
    full = tmp_path / "full.jsonl"
    run(ruler_model, inp, full, batch_size=4)
    lines = full.read_bytes().splitlines(keepends=True)
    assert len(lines) == 23
    # a kill during the write of the 10th line leaves 9 lines and half of one
    killed = tmp_path / "killed.jsonl"
    killed.write_bytes(b"".join(lines[:9]) + lines[9][: len(lines[9]) // 2])
    summary = run(ruler_model, inp, killed, batch_size=4, resume=True)
    assert (summary.resumed, summary.docs) == (9, 14)
    assert killed.read_bytes() == full.read_bytes()
    # resuming a complete output writes nothing
    summary = run(ruler_model, inp, killed, resume=True)
    assert (summary.resumed, summary.docs) == (23, 0)
    assert killed.read_bytes() == full.read_bytes()


def test_resume_after_a_bad_document(ruler_model, tmp_path):
    docs = _many_docs(10)
    inp = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": t}) for i, t in docs]
    inp.write_text("\n".join(lines[:7] + ["{broken"] + lines[7:]) + "\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError, match=":8: not valid JSON"):
        run(ruler_model, inp, out, batch_size=4)
    assert [r["id"] for r in read_jsonl(out)] == [i for i, _ in docs[:7]]  # everything before the bad line
    summary = run(ruler_model, inp, out, batch_size=4, resume=True, on_error="skip")
    assert (summary.resumed, summary.docs, summary.errors) == (7, 3, 1)
    full = tmp_path / "full.jsonl"
    run(ruler_model, write_jsonl(tmp_path / "good.jsonl", docs), full)
    assert out.read_bytes() == full.read_bytes()


def test_resume_rejects_a_foreign_output(ruler_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "entities": []}\n{"no": "id"}\n')
    with pytest.raises(OutputError, match=re.escape(f"{out}:2: not an output line")):
        run(ruler_model, inp, out, resume=True)


def test_brat_resume(ruler_model, tmp_path):
    docs = _many_docs(9)
    inp = write_jsonl(tmp_path / "in.jsonl", docs)
    full = tmp_path / "full"
    run(ruler_model, inp, full, output_format="brat", batch_size=2)
    part = tmp_path / "part"
    run(ruler_model, write_jsonl(tmp_path / "first.jsonl", docs[:4]), part, output_format="brat")
    with open(part / "index.jsonl", "ab") as f:
        f.write(b'{"id": "d004", "na')  # killed while writing the index
    summary = run(ruler_model, inp, part, output_format="brat", resume=True)
    assert (summary.resumed, summary.docs) == (4, 5)
    files = sorted(p.name for p in full.iterdir())
    assert sorted(p.name for p in part.iterdir()) == files
    for name in files:
        assert (part / name).read_bytes() == (full / name).read_bytes(), name
    with pytest.raises(OutputError, match="exists and is not empty"):
        run(ruler_model, inp, part, output_format="brat")
    run(ruler_model, write_jsonl(tmp_path / "one.jsonl", docs[:1]), part, output_format="brat", overwrite=True)
    assert sorted(p.name for p in part.iterdir()) == ["d000.ann", "d000.txt", "index.jsonl"]


# -- engines -------------------------------------------------------------------------------
def test_n_process_gives_the_same_output(ruler_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs() + _many_docs(12))
    run(ruler_model, inp, tmp_path / "one.jsonl", batch_size=3)
    run(ruler_model, inp, tmp_path / "two.jsonl", batch_size=3, n_process=2)
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_ray_engine_without_ray_says_how_to_install(ruler_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    with pytest.raises(ImportError, match=re.escape("pip install spacy-tokner[ray]")):
        run(ruler_model, inp, tmp_path / "out.jsonl", engine="ray")
    with pytest.raises(SystemExit, match=re.escape("pip install spacy-tokner[ray]")):
        main(["annotate", str(ruler_model), str(inp), str(tmp_path / "out.jsonl"), "--engine", "ray"])
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_annotate(ruler_model, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", all_docs())
    out = tmp_path / "brat"
    assert main(["annotate", str(ruler_model), str(inp), str(out), "--format", "brat", "--batch-size", "3",
                 "--no-progress"]) == 0
    assert re.search(r"^8 docs written, 10 entities, 0 docs skipped for errors, [\d.]+ docs/s .*\[brat\]$",
                     capsys.readouterr().out, re.M)
    assert (out / "sub" / "nested.ann").is_file()
