import json
import random
import shutil

import pytest
import spacy
from seqeval.metrics import f1_score
from spacy.tokens import DocBin

from tokner.cli import main
from tokner.corpus.iob import read_iob_docs, write_iob_csv
from tokner.answers.paper_format import render_answer, render_blocks, split_blocks


@pytest.fixture()
def tiny_raredis(tmp_path, brat_train, brat_dev, dev_csv, nlp):
    """train/ and dev/ as BRAT (3 and 2 docs), test only as the authors' CSV (from 3 dev docs)."""
    root = tmp_path / "raredis"
    for split, src, n in (("train", brat_train, 3), ("dev", brat_dev, 2)):
        (root / split).mkdir(parents=True)
        for txt in sorted(src.glob("*.txt"))[:n]:
            shutil.copy(txt, root / split)
            shutil.copy(txt.with_suffix(".ann"), root / split)
    docs, _ = read_iob_docs(dev_csv, nlp.vocab)
    write_iob_csv(docs[-3:], root / "test_combined_IOB_data.csv")
    return root


def test_convert_writes_all_splits(tiny_raredis, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["convert", str(tiny_raredis), str(out), "--stats", str(out / "stats.json")]) == 0
    nlp = spacy.blank("en")
    sizes = {s: len(list(DocBin().from_disk(out / f"{s}.spacy").get_docs(nlp.vocab))) for s in ("train", "dev", "test")}
    assert sizes == {"train": 3, "dev": 2, "test": 3}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["format"] == "brat" and stats["test"]["format"] == "iob"
    test_docs = list(DocBin().from_disk(out / "test.spacy").get_docs(nlp.vocab))
    assert all(d.has_annotation("SENT_START") and len(d.ents) for d in test_docs)
    assert main(["stats", str(out / "train.spacy")]) == 0
    assert "RAREDISEASE" in capsys.readouterr().out


def test_convert_requires_train_and_dev(tmp_path):
    (tmp_path / "only" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="must hold train and dev"):
        main(["convert", str(tmp_path / "only"), str(tmp_path / "c")])


def test_brat_wins_over_csv(tiny_raredis, dev_csv, tmp_path):
    shutil.copy(dev_csv, tiny_raredis / "dev_combined_IOB_data.csv")  # 104 docs as CSV, 2 as BRAT
    main(["convert", str(tiny_raredis), str(tmp_path / "c")])
    assert len(DocBin().from_disk(tmp_path / "c" / "dev.spacy")) == 2


def test_score_outputs_round_trip_on_dev(dev_csv, tmp_path, capsys, nlp):
    """Answers generated from the dev gold score 1.0; perturbed answers score what seqeval says."""
    # the authors' block order: sentences grouped by Sentence_Num_Global
    from tokner.scoring.evaluation import gold_sentence_groups

    groups = gold_sentence_groups(dev_csv, "paper")
    assert len(groups) == 894
    gold_file = tmp_path / "gold.txt"
    gold_file.write_text(render_blocks(render_answer([t for t, _ in g], [l for _, l in g]) for g in groups))
    assert main(["score-outputs", str(gold_file), str(dev_csv), "--output", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["grouping"] == "paper" and s["paper_micro_f"] == pytest.approx(1.0)

    rng = random.Random(3)
    y_true, y_pred, blocks = [], [], []
    for g in groups:
        tags = [l if rng.random() > 0.1 else "O" for _, l in g]
        y_true.append([l for _, l in g])
        y_pred.append(tags)
        blocks.append(render_answer([t for t, _ in g], tags))
    pert = tmp_path / "pert.txt"
    pert.write_text(render_blocks(blocks))
    main(["score-outputs", str(pert), str(dev_csv), "--output", str(tmp_path / "p.json")])
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["paper_micro_f"] == pytest.approx(f1_score(y_true, y_pred), abs=1e-9)
    assert p["paper_micro_f"] < 0.95


def test_write_outputs_then_score_per_file_sentence(dev_csv, tmp_path):
    out = tmp_path / "gold_answers.txt"
    assert main(["write-outputs", str(dev_csv), str(out)]) == 0
    assert len(split_blocks(out.read_text())) == 897
    main(["score-outputs", str(out), str(dev_csv), "--output", str(tmp_path / "s.json")])
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["grouping"] == "file" and s["paper_avg_f"] == pytest.approx(1.0)


def test_score_outputs_block_count_mismatch(dev_csv, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("######\nx : O\n")
    with pytest.raises(ValueError, match="1 answer blocks"):
        main(["score-outputs", str(f), str(dev_csv)])


def test_unpack_assets_verifies_content(brat_dev, brat_train, tmp_path):
    import zipfile

    dl = tmp_path / "dl"
    dl.mkdir()
    for split, src in (("train", brat_train), ("dev", brat_dev)):
        with zipfile.ZipFile(dl / f"{split}.zip", "w") as zf:
            for p in sorted(src.iterdir()):
                zf.write(p, f"{split}/{p.name}")
    assert main(["unpack-assets", str(dl), str(tmp_path / "raredis")]) == 0
    assert len(list((tmp_path / "raredis" / "dev").glob("*.ann"))) == 104
    # a changed document no longer matches the published fingerprint
    with zipfile.ZipFile(dl / "dev.zip", "a") as zf:
        zf.writestr("dev/Extra.txt", "x")
        zf.writestr("dev/Extra.ann", "")
    with pytest.raises(ValueError, match="fingerprint"):
        main(["unpack-assets", str(dl), str(tmp_path / "raredis2")])


def test_evaluate_refuses_what_would_look_like_a_zero_score(tmp_path):
    """An empty DocBin, a --docs slice past the end and a pipeline without NER stop with a
    message instead of writing all-zero metrics and exiting 0."""
    from spacy.tokens import Doc

    ruler_nlp = spacy.blank("en")
    ruler_nlp.add_pipe("entity_ruler").add_patterns([{"label": "SIGN", "pattern": "fever"}])
    ruler_nlp.to_disk(tmp_path / "ruler")
    blank = spacy.blank("en")
    blank.add_pipe("sentencizer")
    blank.to_disk(tmp_path / "no_ner")
    vocab = ruler_nlp.vocab
    DocBin(docs=[Doc(vocab, words=["fever", "."], ents=["B-SIGN", "O"])]).to_disk(tmp_path / "one.spacy")
    DocBin().to_disk(tmp_path / "empty.spacy")
    out = tmp_path / "m.json"

    assert main(["evaluate", str(tmp_path / "ruler"), str(tmp_path / "one.spacy"), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["paper_micro5_f"] == 1.0  # the control: a real pipeline on a real doc
    out.unlink()
    with pytest.raises(SystemExit, match=r"empty.spacy: no documents to evaluate"):
        main(["evaluate", str(tmp_path / "ruler"), str(tmp_path / "empty.spacy"), "--output", str(out)])
    with pytest.raises(SystemExit, match=r"--docs 5:: selects none of the 1 documents"):
        main(["evaluate", str(tmp_path / "ruler"), str(tmp_path / "one.spacy"), "--docs", "5:", "--output", str(out)])
    with pytest.raises(SystemExit, match=r"no_ner: no component writes Doc.ents \(pipeline: sentencizer\)"):
        main(["evaluate", str(tmp_path / "no_ner"), str(tmp_path / "one.spacy"), "--output", str(out)])
    assert not out.exists()


def test_override_parsers():
    from tokner.cli import parse_dotted_overrides, parse_set_overrides

    assert parse_set_overrides(["a.b=3", "c.d=free", "e.f=null", "g.h=[1, 2]", "i.j="]) == {
        "a.b": 3, "c.d": "free", "e.f": None, "g.h": [1, 2], "i.j": ""}
    with pytest.raises(SystemExit, match="--set expects KEY=VALUE"):
        parse_set_overrides(["nokey"])
    args = ["--lora.max_minutes", "25", "--paths.train=corpus/train.spacy", "--training.flag", "--x.y", "[1,2]"]
    expected = {"lora.max_minutes": 25, "paths.train": "corpus/train.spacy", "training.flag": True, "x.y": [1, 2]}
    assert parse_dotted_overrides(args) == expected
    from spacy.cli._util import parse_config_overrides  # what `spacy train` reads (reference)

    assert parse_config_overrides(args) == expected
    with pytest.raises(SystemExit, match="unrecognized argument 'stray'"):
        parse_dotted_overrides(["stray"])
