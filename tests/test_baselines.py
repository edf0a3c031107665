"""Supervised baselines (configs/cnn.cfg, configs/bert.cfg): train a few steps on a
handful of RareDis documents with the same code as ``spacy train``, score them with
the code ``python -m tokner evaluate`` runs, and round-trip the trained pipelines.

The transformer path uses a tiny random BERT (2 layers, hidden 32) and a WordPiece
tokenizer built here from the documents' words, so nothing is downloaded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from tokner.corpus.brat import read_brat_docs
from tokner.cli import main as tokner_main
from tokner.scoring.evaluation import evaluate_pipeline, load_gold_docs
from tokner.scoring.scorer import ALL_LABELS, PAPER_LABELS
from tokner.text.tokenizer import PaperTokenizer
from reference_scores import seqeval_micro5
from tiny_models import make_tiny_bert, pick_brat

ROOT = Path(__file__).resolve().parents[1]
CNN_CFG = ROOT / "configs" / "cnn.cfg"
BERT_CFG = ROOT / "configs" / "bert.cfg"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, brat_train, brat_dev):
    """train.spacy (6 docs) and dev.spacy (3 docs) built from the shared BRAT files."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    vocab = spacy.blank("en").vocab
    out = {}
    for split, src, start, n in (("train", brat_train, 40, 6), ("dev", brat_dev, 10, 3)):
        docs, _ = read_brat_docs(pick_brat(src, start, n, root / "brat" / split), vocab)
        assert len(docs) == n and any(d.ents for d in docs)
        path = root / f"{split}.spacy"
        DocBin(docs=docs, store_user_data=False).to_disk(path)
        out[split] = path
    return out


def _train(cfg: Path, output: Path, corpus, **overrides) -> Path:
    """Train exactly as ``python -m spacy train CFG --output OUTPUT --paths.train ...`` does."""
    from spacy.cli.train import train

    base = {
        "paths.train": str(corpus["train"]),
        "paths.dev": str(corpus["dev"]),
        "training.max_steps": 6,
        "training.eval_frequency": 3,
        "training.logger.progress_bar": False,
    }
    base.update(overrides)
    train(cfg, output, use_gpu=-1, overrides=base)
    best = output / "model-best"
    assert (best / "config.cfg").exists(), f"no model-best written under {output}"
    return best


def _ents(nlp, texts):
    return [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]


def _check_scores(scores, gold_path: Path, pred_path: Path):
    # the written metrics are seqeval's on the saved predictions (an independent implementation)
    p, r, f = seqeval_micro5(gold_path, pred_path) or (None, None, None)
    assert (scores["paper_micro5_p"], scores["paper_micro5_r"], scores["paper_micro5_f"]) == pytest.approx((p, r, f))
    table = scores["spans_paper_per_type"]
    assert set(PAPER_LABELS) <= set(table)
    assert {"AVG-5", "MICRO-5", "MICRO-ALL"} <= set(table)
    avg = sum(table[l]["f"] for l in PAPER_LABELS) / len(PAPER_LABELS)
    assert scores["paper_avg_f"] == pytest.approx(avg)
    assert scores["docs"] == 3 and scores["speed_words_per_second"] > 0


def _check_pipeline(nlp, tok2vec_name: str):
    assert nlp.pipe_names == ["tokner_sentencizer", tok2vec_name, "ner"]
    assert isinstance(nlp.tokenizer, PaperTokenizer)
    labels = set(nlp.get_pipe("ner").labels)
    assert labels and labels <= set(ALL_LABELS) and "RAREDISEASE" in labels
    doc = nlp("Patients may have (asymptomatic), itchy skin.  A second sentence!")
    assert [t.text for t in doc][:5] == ["Patients", "may", "have", "(", "asymptomatic"]
    assert len(list(doc.sents)) == 2


def test_configs_checkpoint_on_the_paper_metric():
    for cfg in (CNN_CFG, BERT_CFG):
        config = spacy.util.load_config(cfg, interpolate=True)
        assert config["nlp"]["tokenizer"]["@tokenizers"] == "tokner.PaperTokenizer.v1"
        assert config["nlp"]["pipeline"][0] == "tokner_sentencizer"
        assert config["training"]["annotating_components"] == ["tokner_sentencizer"]
        assert config["components"]["ner"]["scorer"]["@scorers"] == "tokner.paper_ner_scorer.v1"
        weights = {k: v for k, v in config["training"]["score_weights"].items() if v}
        assert set(weights) == {"paper_micro5_f", "paper_avg_f"}
        assert config["paths"]["train"] == "corpus/train.spacy" and config["paths"]["dev"] == "corpus/dev.spacy"


def test_bert_config_takes_hub_names_and_local_paths():
    config = spacy.util.load_config(BERT_CFG, interpolate=True)
    assert config["components"]["transformer"]["model"]["name"] == "assets/models/all-MiniLM-L6-v2"
    hub = "emilyalsentzer/Bio_ClinicalBERT"
    config = spacy.util.load_config(BERT_CFG, overrides={"paths.transformer": hub}, interpolate=True)
    assert config["components"]["transformer"]["model"]["name"] == hub
    # the learning-rate schedule follows max_steps overrides
    config = spacy.util.load_config(BERT_CFG, overrides={"training.max_steps": 77}, interpolate=True)
    assert config["training"]["optimizer"]["learn_rate"]["total_steps"] == 77


def test_cnn_trains_evaluates_and_round_trips(tiny_corpus, tmp_path):
    best = _train(CNN_CFG, tmp_path / "cnn", tiny_corpus)
    nlp = spacy.load(best)
    _check_pipeline(nlp, "tok2vec")

    # the code behind `python -m tokner evaluate MODEL DATA --output metrics.json`
    metrics = tmp_path / "metrics" / "cnn-dev.json"
    pred = tmp_path / "cnn-dev.spacy"
    assert tokner_main(["evaluate", str(best), str(tiny_corpus["dev"]), "--output", str(metrics),
                        "--save-docs", str(pred)]) == 0
    scores = json.loads(metrics.read_text())
    _check_scores(scores, tiny_corpus["dev"], pred)
    gold = load_gold_docs(tiny_corpus["dev"], nlp)
    again, _ = evaluate_pipeline(nlp, gold, progress=False)
    assert again["paper_micro5_f"] == scores["paper_micro5_f"]

    texts = [d.text for d in gold]
    nlp.to_disk(tmp_path / "cnn-copy")
    assert _ents(spacy.load(tmp_path / "cnn-copy"), texts) == _ents(nlp, texts)


def test_cnn_config_learns_the_training_docs(tiny_corpus, tmp_path):
    """Not a smoke test: 40 updates on 6 docs must fit most of their entities."""
    best = _train(
        CNN_CFG,
        tmp_path / "cnn-fit",
        tiny_corpus,
        **{"paths.dev": str(tiny_corpus["train"]), "training.max_steps": 40, "training.eval_frequency": 20,
           "training.dropout": 0.0, "training.batcher.size.start": 100000},
    )
    nlp = spacy.load(best)
    scores, _ = evaluate_pipeline(nlp, load_gold_docs(tiny_corpus["train"], nlp), progress=False)
    assert scores["paper_micro_f"] > 0.5, scores["spans_paper_per_type"]


def _tiny_bert(dest: Path, corpus) -> Path:
    vocab = spacy.blank("en").vocab
    words = [t.text for split in ("train", "dev") for doc in DocBin().from_disk(corpus[split]).get_docs(vocab) for t in doc]
    return make_tiny_bert(dest, words)


def test_bert_trains_evaluates_and_round_trips_without_its_source(tiny_corpus, tmp_path):
    pytest.importorskip("spacy_transformers")
    encoder = _tiny_bert(tmp_path / "tiny-bert", tiny_corpus)
    best = _train(BERT_CFG, tmp_path / "bert", tiny_corpus, **{"paths.transformer": str(encoder),
                                                              "training.optimizer.learn_rate.warmup_steps": 2})
    # the trained pipeline carries the encoder's weights, config and tokenizer
    shutil.rmtree(encoder)
    nlp = spacy.load(best)
    _check_pipeline(nlp, "transformer")

    metrics = tmp_path / "metrics" / "bert-dev.json"
    pred = tmp_path / "bert-dev.spacy"
    assert tokner_main(["evaluate", str(best), str(tiny_corpus["dev"]), "--output", str(metrics),
                        "--save-docs", str(pred)]) == 0
    _check_scores(json.loads(metrics.read_text()), tiny_corpus["dev"], pred)

    texts = [d.text for d in load_gold_docs(tiny_corpus["dev"], nlp)]
    doc = next(nlp.pipe(texts[:1]))
    assert doc._.trf_data is not None
    nlp.to_disk(tmp_path / "bert-copy")
    assert _ents(spacy.load(tmp_path / "bert-copy"), texts) == _ents(nlp, texts)


def test_static_vectors_from_an_encoder_feed_the_cnn(tiny_corpus, tmp_path):
    """`tokner static-vectors` distils per-word vectors from an encoder (tiny random BERT
    here); configs/cnn_vectors.cfg trains with them and the pipeline round-trips."""
    import numpy

    from tokner.corpus.vectors import vocabulary

    encoder = _tiny_bert(tmp_path / "tiny-bert", tiny_corpus)
    out = tmp_path / "assets" / "vectors"  # parent folders are created
    assert tokner_main(["static-vectors", str(encoder), str(out), "--words", str(tiny_corpus["train"]),
                        "--no-progress"]) == 0
    vec_nlp = spacy.load(out)
    vectors = vec_nlp.vocab.vectors
    train_words = vocabulary([tiny_corpus["train"]])
    assert vectors.shape[1] == 32 and vectors.shape[0] >= len(train_words)
    assert numpy.allclose(numpy.linalg.norm(vectors.data, axis=1), 1.0, atol=1e-5)
    word = next(w for w in train_words if w.isalpha() and len(w) > 3)
    doc = vec_nlp.make_doc(f"{word.upper()} {word}")
    assert doc[0].has_vector and numpy.array_equal(doc[0].vector, doc[1].vector)  # case variants share a row
    assert not vec_nlp.make_doc("qqqzzzxq")[0].has_vector
    with pytest.raises(FileNotFoundError, match="nope.spacy"):
        vocabulary([tmp_path / "nope.spacy"])

    best = _train(ROOT / "configs" / "cnn_vectors.cfg", tmp_path / "cnn", tiny_corpus, **{"paths.vectors": str(out)})
    nlp = spacy.load(best)
    _check_pipeline(nlp, "tok2vec")
    assert nlp.vocab.vectors.shape == vectors.shape
    texts = [d.text for d in load_gold_docs(tiny_corpus["dev"], nlp)]
    nlp.to_disk(tmp_path / "saved")
    assert _ents(spacy.load(tmp_path / "saved"), texts) == _ents(nlp, texts)


def test_static_vectors_mix_in_context_means(tiny_corpus, tmp_path):
    """`--context-weight` averages each train word's in-context encoder outputs and mixes
    them into its row; words only in the encoder's vocab keep their isolated vector."""
    import numpy

    from tokner.corpus.vectors import build_static_vectors, vocabulary

    encoder = _tiny_bert(tmp_path / "tiny-bert", tiny_corpus)
    train = [tiny_corpus["train"]]
    rows = {}
    for w in (0.0, 0.5, 1.0):
        info = build_static_vectors(encoder, tmp_path / f"v{w}", train, context_weight=w, progress=False)
        nlp = spacy.load(tmp_path / f"v{w}")
        rows[w] = nlp.vocab.vectors
        assert info["context_weight"] == w
    train_words = vocabulary(train)
    assert info["words_with_context"] == len(train_words)  # every train word was seen in context
    vec0, vec5, vec1 = (rows[w] for w in (0.0, 0.5, 1.0))
    strings = spacy.blank("en").vocab.strings
    for word in train_words[:50]:
        key = strings.add(word)
        a, b, c = vec0[key], vec5[key], vec1[key]
        mixed = (a + c) / numpy.linalg.norm(a + c)
        assert numpy.allclose(b, mixed, atol=1e-5)
        assert numpy.isclose(numpy.linalg.norm(c), 1.0, atol=1e-5)
    assert any(not numpy.allclose(vec0[strings.add(w)], vec1[strings.add(w)], atol=1e-4) for w in train_words)
    extra = [w for w in vocabulary([], _tiny_bert_vocab(encoder)) if w not in set(train_words)]
    assert extra, "the tiny encoder's vocab should have words that are not in train"
    for word in extra[:20]:
        key = strings.add(word)
        assert numpy.array_equal(vec0[key], vec1[key])
    with pytest.raises(ValueError, match="context_weight"):
        build_static_vectors(encoder, tmp_path / "bad", train, context_weight=1.5, progress=False)


def _tiny_bert_vocab(encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(encoder)).get_vocab()
