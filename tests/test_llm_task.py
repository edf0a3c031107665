"""The spacy-llm task: prompts, parsing to exact offsets, replay, serialisation, cache, retrieval."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("spacy_llm")

import spacy  # noqa: E402
from spacy.tokens import Doc, DocBin  # noqa: E402
from spacy.training import Example  # noqa: E402

import tokner.llm  # noqa: E402,F401
from tokner.llm import BM25Index, TokenPrompt, summarise_alignment  # noqa: E402
from tokner.llm.retrieval import FixedExamples, KnowledgePassages, SimilarExamples  # noqa: E402
from tokner.scoring.scorer import ALL_LABELS, score_paper_ner  # noqa: E402
from tokner.answers.tags import doc_tags, sentence_token_lists  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "corpus" / "dev.spacy"
TEXT = "Marfan syndrome causes joint pain.  It is rare.\nFatigue is common."


def make_nlp(model: dict, labels=("DISEASE", "RAREDISEASE", "SKINRAREDISEASE", "SIGN", "SYMPTOM"),
             cache=None, task_extra=None):
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    task = {"@llm_tasks": "tokner.TokenNER.v1", "labels": list(labels)}
    task.update(task_extra or {})
    nlp.add_pipe("llm", config={
        "task": task, "model": model,
        "cache": {"@llm_misc": "spacy.BatchCache.v1", "path": cache, "batch_size": 2, "max_batches_in_mem": 4},
    })
    return nlp


def gold_jsonl(path: Path, docs, perturb=None) -> Path:
    """Gold answers, one record per sentence, keyed by the sentence tokens."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            tags = doc_tags(doc)
            for sent in sentence_token_lists(doc):
                words = [doc[i].text for i in sent]
                lines = [f"{doc[i].text} : {tags[i]}" for i in sent]
                if perturb:
                    lines = perturb(lines, rng)
                f.write(json.dumps({"tokens": words, "response": "\n".join(lines)}) + "\n")
    return path


def toy_gold(nlp):
    doc = nlp.make_doc(TEXT)
    doc = nlp.get_pipe("tokner_sentencizer")(doc)
    ents = [doc.char_span(0, 15, "RAREDISEASE"), doc.char_span(23, 33, "SYMPTOM"), doc.char_span(48, 55, "SYMPTOM")]
    doc.ents = ents
    return doc


def test_prompt_lists_tokens_and_labels():
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None})
    task = nlp.get_pipe("llm").task
    doc = nlp.get_pipe("tokner_sentencizer")(nlp.make_doc(TEXT))
    prompts, shards = next(iter(task.generate_prompts([doc])))
    assert len(prompts) == 3 and len(shards) == 3  # one per sentence
    p = prompts[0]
    assert isinstance(p, TokenPrompt) and p.words == ("Marfan", "syndrome", "causes", "joint", "pain", ".")
    assert "Marfan\nsyndrome\ncauses\njoint\npain\n." in p and "RAREDISEASE" in p and "token : label" in p
    assert "\n\n" not in "".join(p.words)  # whitespace tokens are never sent


@pytest.mark.parametrize("max_unit_words,expected", [(None, [14]), (11, [10, 4]), (8, [6, 8]), (3, [6, 4, 4])])
def test_doc_unit_shards_at_sentence_boundaries(tmp_path, max_unit_words, expected):
    """unit="doc": whole sentences packed up to max_unit_words (a longer sentence is its
    own shard); the answers of every shard land on the right tokens."""
    nlp0 = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None},
                    task_extra={"unit": "doc", "max_unit_words": max_unit_words})
    gold = toy_gold(nlp0)
    task = nlp0.get_pipe("llm").task
    units = task.units(gold)
    assert [len(u) for u in units] == expected
    assert [i for u in units for i in u] == [i for s in sentence_token_lists(gold) for i in s]
    tags = doc_tags(gold)
    path = tmp_path / "r.jsonl"
    with path.open("w") as f:
        for u in units:
            f.write(json.dumps({"tokens": [gold[i].text for i in u],
                                "response": "\n".join(f"{gold[i].text} : {tags[i]}" for i in u)}) + "\n")
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(path)},
                   task_extra={"unit": "doc", "max_unit_words": max_unit_words})
    doc = nlp(TEXT)
    assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == \
           [(e.start_char, e.end_char, e.label_) for e in gold.ents]
    assert doc._.tokner_llm["units"] == len(expected) == doc._.tokner_llm["fully_aligned"]
    with pytest.raises(ValueError, match="max_unit_words"):
        make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None}, task_extra={"max_unit_words": 0})


def test_replay_sets_exact_offsets_and_roundtrips(tmp_path):
    nlp0 = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None})
    gold = toy_gold(nlp0)
    responses = gold_jsonl(tmp_path / "r.jsonl", [gold])
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(responses)})
    doc = nlp(TEXT)
    assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == \
           [(e.start_char, e.end_char, e.label_) for e in gold.ents]
    assert doc._.tokner_llm["units"] == 3 and doc._.tokner_llm["fully_aligned"] == 3
    nlp.to_disk(tmp_path / "pipe")
    responses.unlink()  # responses travel with the pipeline
    nlp2 = spacy.load(tmp_path / "pipe")
    doc2 = nlp2(TEXT)
    assert [(e.start_char, e.end_char, e.label_) for e in doc2.ents] == \
           [(e.start_char, e.end_char, e.label_) for e in gold.ents]
    scores = nlp2.evaluate([Example(nlp2.make_doc(TEXT), gold)])
    assert scores["paper_micro5_f"] == 1.0


def test_replay_matches_by_tokens_not_position(tmp_path):
    nlp0 = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None})
    gold = toy_gold(nlp0)
    blocks = []
    tags = doc_tags(gold)
    for sent in reversed(sentence_token_lists(gold)):  # reversed order, ###### format
        blocks.append("\n".join(f"{gold[i].text} : {tags[i]}" for i in sent))
    path = tmp_path / "answers.txt"
    path.write_text("".join(f"######\n{b}\n" for b in blocks))
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(path)})
    assert [e.text for e in nlp(TEXT).ents] == ["Marfan syndrome", "joint pain", "Fatigue"]


def test_unparseable_and_missing_answers_give_o(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"tokens": ["It", "is", "rare", "."], "response": "!!! garbage : ???"}) + "\n")
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(path)})
    doc = nlp(TEXT)
    assert len(doc.ents) == 0
    stats = doc._.tokner_llm
    assert stats["units"] == 3 and stats["fully_aligned"] == 0 and stats["empty"] == 2
    summary = summarise_alignment([doc])
    assert summary["fully_aligned_fraction"] == 0.0


def test_cache_resumes_without_model(tmp_path):
    nlp0 = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None})
    responses = gold_jsonl(tmp_path / "r.jsonl", [toy_gold(nlp0)])
    texts = [TEXT, "Fatigue is common.", "It is rare."]
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(responses)}, cache=str(tmp_path / "cache"))
    first = [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in nlp.pipe(texts)]
    nlp.get_pipe("llm")._cache._persist()
    nlp2 = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(responses)}, cache=str(tmp_path / "cache"))
    model = nlp2.get_pipe("llm")._model
    second = [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in nlp2.pipe(texts)]
    assert first == second and sum(model.stats.values()) == 0  # all from the cache
    # a cache made with other prompt settings is refused
    with pytest.raises(ValueError, match="Prompt template"):
        make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(responses)}, labels=["SIGN"],
                 cache=str(tmp_path / "cache"))


def _perturb_drop(lines, rng):
    if len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    return lines


def _perturb_case(lines, rng):
    return [l.upper() for l in lines]


def _perturb_prefix(lines, rng):
    return [l.replace(" : B-", " : ").replace(" : I-", " : ") for l in lines]


@pytest.fixture(scope="module")
def dev_docs(brat_dev):
    """The dev split as the corpus command builds it (from the DocBin when it exists)."""
    if DEV.exists():
        return list(DocBin().from_disk(DEV).get_docs(spacy.blank("en").vocab))
    from tokner.corpus.brat import read_brat_docs

    return read_brat_docs(brat_dev, spacy.blank("en").vocab)[0]


def _run_on_gold_tokens(nlp, docs):
    inputs = [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in docs]
    return [Example(p, g) for p, g in zip(nlp.pipe(inputs, batch_size=16), docs)]


def test_gold_stand_in_is_lossless_on_dev(tmp_path, dev_docs):
    responses = gold_jsonl(tmp_path / "gold.jsonl", dev_docs)
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(responses), "strict": True}, labels=ALL_LABELS)
    examples = _run_on_gold_tokens(nlp, dev_docs)
    scores = score_paper_ner(examples)
    # the paper's metric (entities cut at sentence starts, as seqeval reads sentences)
    assert scores["paper_avg_f"] == 1.0 and scores["paper_micro5_f"] == 1.0 and scores["paper_micro_f"] == 1.0
    # spaCy's uncut ents: only gold entities that cross a sentence boundary can differ
    crossing = sum(1 for eg in examples for e in eg.reference.ents
                   if any(t.is_sent_start for t in e[1:] if not t.is_space))
    assert (crossing, scores["ents_f"]) == (0, 1.0)  # dev has none, so spaCy's uncut ents agree too
    summary = summarise_alignment([eg.predicted for eg in examples])
    assert summary["units"] == 897 and summary["fully_aligned_fraction"] == 1.0


@pytest.mark.parametrize("perturb,lossless", [(_perturb_case, True), (_perturb_prefix, None), (_perturb_drop, False)])
def test_perturbed_gold_loses_only_affected_entities(tmp_path, dev_docs, perturb, lossless):
    docs = dev_docs[:25]
    responses = gold_jsonl(tmp_path / "p.jsonl", docs, perturb)
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(responses), "strict": True}, labels=ALL_LABELS)
    examples = _run_on_gold_tokens(nlp, docs)
    f = score_paper_ner(examples)["paper_micro_f"]
    if lossless:
        assert f == 1.0
    elif lossless is None:  # only adjacent same-type entities can merge
        assert f > 0.98
    else:
        # one dropped line per sentence: each costs at most the entity on that token (a
        # split entity counts as lost, plus up to two spurious pieces)
        n_gold = sum(len(eg.reference.ents) for eg in examples)
        n_sents = sum(len(sentence_token_lists(eg.reference)) for eg in examples)
        tp = f * n_gold  # approx. lower bound of correct entities
        assert 0.75 < f < 1.0 and n_gold - tp <= n_sents


def test_fixed_and_similar_examples_and_passages(tmp_path):
    nlp = spacy.blank("en")
    words = [["Marfan", "syndrome", "is", "rare", "."], ["Joint", "pain", "and", "fatigue", "."],
             ["The", "liver", "is", "enlarged", "."]]
    tags = [["B-RAREDISEASE", "I-RAREDISEASE", "O", "O", "O"], ["B-SYMPTOM", "I-SYMPTOM", "O", "B-SYMPTOM", "O"],
            ["O", "B-SIGN", "I-SIGN", "I-SIGN", "O"]]
    db = DocBin()
    for w, t in zip(words, tags):
        d = Doc(nlp.vocab, words=w, ents=t, sent_starts=[True] + [False] * (len(w) - 1))
        db.add(d)
    db.to_disk(tmp_path / "train.spacy")
    labels = ["RAREDISEASE", "SYMPTOM"]  # SIGN is not asked for: its tags become O
    fixed = FixedExamples(None, str(tmp_path / "train.spacy"), 2, 0, True, 40)
    fixed.initialize(nlp, labels)
    assert len(fixed.items) == 2 and all(any(t != "O" for t in it["tags"]) for it in fixed.items)
    sim = SimilarExamples(str(tmp_path / "train.spacy"), 1, BM25Index(), 40)
    sim.initialize(nlp, labels)
    [hit] = sim.select_many([["pain", "in", "the", "joint"]])
    assert hit[0]["tokens"] == words[1]
    [hit] = sim.select_many([["an", "enlarged", "liver"]])
    assert hit[0]["tokens"] == words[2] and hit[0]["tags"] == ["O"] * 5
    # identical sentences are never their own demonstration
    [hit] = sim.select_many([words[0]])
    assert hit[0]["tokens"] != words[0]
    sim.to_disk(tmp_path / "sim")
    sim2 = SimilarExamples("missing.spacy", 1, BM25Index(), 40).from_disk(tmp_path / "sim")
    assert sim2.select_many([["pain", "in", "the", "joint"]])[0][0]["tokens"] == words[1]

    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "a.txt").write_text("Marfan syndrome is a disorder of connective tissue. " * 3)
    (folder / "b.txt").write_text("Liver enlargement is called hepatomegaly. " * 3)
    kb = KnowledgePassages(str(folder), 1, BM25Index(), 8, 4, "*.txt")
    kb.initialize(nlp, labels)
    assert "hepatomegaly" in kb.select_many([["enlarged", "liver"]])[0][0]
    assert "connective" in kb.select_many([["Marfan", "syndrome"]])[0][0]


def test_rag_prompts_share_the_instruction_prefix(tmp_path):
    """Template v2: the fixed instruction first, then the retrieved passages, so every RAG
    prompt starts with the same text (computed once by a local model, cached by a server);
    without passages v1 and v2 render the same prompt."""
    from tokner.decoding.constrained import common_prefix
    from tokner.llm import read_template

    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "a.txt").write_text("Marfan syndrome is a disorder of connective tissue. " * 3)
    (folder / "b.txt").write_text("Joint pain is called arthralgia. " * 3)
    knowledge = {"@llm_misc": "tokner.KnowledgePassages.v1", "folder": str(folder), "k": 1,
                 "index": {"@llm_misc": "tokner.BM25Index.v1"}, "chunk_words": 8, "stride": 4}
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None}, task_extra={"knowledge": knowledge})
    nlp.initialize()
    task = nlp.get_pipe("llm").task
    doc = nlp.get_pipe("tokner_sentencizer")(nlp.make_doc(TEXT))
    prompts = [str(p) for p in next(iter(task.generate_prompts([doc])))[0]]
    assert len(prompts) == 3 and len(set(prompts)) == 3
    instruction = prompts[0].split("Background knowledge")[0]
    assert instruction.startswith("You are a medical expert") and instruction.rstrip().endswith("write nothing else.")
    assert common_prefix([list(p) for p in prompts], keep=0) >= len(instruction)
    assert "arthralgia" in prompts[0]  # "joint pain" retrieves its passage
    for p in prompts:
        assert p.index("write nothing else.") < p.index("Background knowledge") < p.index("---") < p.index("Input:")
    zero = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None},
                    task_extra={"template": read_template("token_ner.v1")}).get_pipe("llm").task
    default = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None}).get_pipe("llm").task
    assert [str(p) for p in next(iter(zero.generate_prompts([doc])))[0]] == \
        [str(p) for p in next(iter(default.generate_prompts([doc])))[0]]


def test_few_shot_task_serialises_examples(tmp_path):
    nlp0 = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": None})
    gold = toy_gold(nlp0)
    DocBin(docs=[gold]).to_disk(tmp_path / "train.spacy")
    responses = gold_jsonl(tmp_path / "r.jsonl", [gold])
    examples = {"@llm_misc": "tokner.FixedExamples.v1", "source": str(tmp_path / "train.spacy"), "k": 2, "seed": 1}
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(responses)}, task_extra={"examples": examples})
    nlp.initialize()
    task = nlp.get_pipe("llm").task
    doc = nlp.get_pipe("tokner_sentencizer")(nlp.make_doc("Fatigue is common."))
    prompt = next(iter(task.generate_prompts([doc])))[0][0]
    assert prompt.count("Output:") == 3  # two demonstrations + the query
    nlp.to_disk(tmp_path / "pipe")
    (tmp_path / "train.spacy").unlink()  # demonstrations travel with the pipeline
    nlp2 = spacy.load(tmp_path / "pipe")
    prompt2 = next(iter(nlp2.get_pipe("llm").task.generate_prompts([doc])))[0][0]
    assert str(prompt2) == str(prompt)
    b = nlp.get_pipe("llm").to_bytes()
    nlp3 = spacy.util.load_model_from_config(nlp.config, auto_fill=True)  # never initialized: no demonstrations
    nlp3.get_pipe("llm").from_bytes(b)
    prompt3 = next(iter(nlp3.get_pipe("llm").task.generate_prompts([doc])))[0][0]
    assert str(prompt3) == str(prompt)


def test_bm25_scores_match_reference_formula():
    import math

    texts = ["rare disease of the skin", "skin rash and itching", "heart disease"]
    index = BM25Index(k1=1.2, b=0.75)
    index.build(texts)
    toks = [t.split() for t in texts]
    avg = sum(map(len, toks)) / 3

    def ref(q, d):
        s = 0.0
        for term in set(q.split()):
            f = d.count(term)
            n_t = sum(term in x for x in toks)
            idf = math.log(1 + (3 - n_t + 0.5) / (n_t + 0.5))
            s += idf * f * 2.2 / (f + 1.2 * (1 - 0.75 + 0.75 * len(d) / avg))
        return s

    got = index.scores("skin disease")
    assert [round(float(x), 5) for x in got] == [round(ref("skin disease", d), 5) for d in toks]
    assert index.search_many(["skin disease", "heart"], 1) == [[0], [2]]


def test_labels_outside_the_config_never_enter_ents_and_are_warned(tmp_path, caplog):
    """An answer with a type the task was not configured with ("DRUG", and "SIGN" for a
    task that only knows RAREDISEASE/SYMPTOM) is read as O, counted and logged."""
    path = tmp_path / "r.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"tokens": ["Marfan", "syndrome", "causes", "joint", "pain", "."],
                            "response": "Marfan : B-RAREDISEASE\nsyndrome : I-RAREDISEASE\ncauses : B-DRUG\n"
                                        "joint : B-SIGN\npain : I-SIGN\n. : O"}) + "\n")
    nlp = make_nlp({"@llm_models": "tokner.ReplayModel.v1", "path": str(path)}, labels=("RAREDISEASE", "SYMPTOM"))
    with caplog.at_level("WARNING", logger="tokner"):
        doc = nlp("Marfan syndrome causes joint pain.")
    assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == [(0, 15, "RAREDISEASE")]
    assert doc._.tokner_llm["unknown_labels"] == 3
    assert any("3 answer line(s)" in r.getMessage() and "outside ['RAREDISEASE', 'SYMPTOM']" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
