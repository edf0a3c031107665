"""label_bias in constrained decoding, the decision trace, and the offline bias replay/search."""
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tokner.lora.bias import coordinate_search, fold_slices, replay, type_decisions  # noqa: E402
from tokner.decoding.constrained import check_label_bias, constrained_decode  # noqa: E402
from tokner.lora.prompt import PromptCodec  # noqa: E402
from tokner.scoring.scorer import ALL_LABELS  # noqa: E402
from tokner.answers.tags import spans_from_tags  # noqa: E402
from test_lora_decoding import tiny_llama  # noqa: E402
from test_lora_decoding import tokenizer  # noqa: E402,F401  (module fixture)

TORCH_THREADS = 1

SENTS = [["Alport", "syndrome", "causes", "hearing", "loss", "."], ["Pain", "."],
         ["Epidermolysis", "bullosa", "(", "EB", ")", "affects", "the", "skin", "of", "infants", "."], ["x"]]


def _types(tags):
    return {t[2:] for t in tags if t != "O"}


def test_zero_bias_changes_nothing_and_large_bias_forces_labels(tokenizer):  # noqa: F811
    codec = PromptCodec(tokenizer, ALL_LABELS)
    model = tiny_llama(len(tokenizer), seed=3, scale=4.0, layers=2, hidden=32)
    base, _ = constrained_decode(model, codec, SENTS, batch_size=4)
    assert any(t != "O" for tags, _ in base for t in tags)  # the weights make entities, so bias has work to do
    for bias in ({}, {"SIGN": 0.0}, {"O": 0.0, "SYMPTOM": 0}):
        got, _ = constrained_decode(model, codec, SENTS, batch_size=4, label_bias=bias)
        assert got == base
    # no O at all, and every new entity's type is SIGN
    got, _ = constrained_decode(model, codec, SENTS, batch_size=4, label_bias={"O": -1e4, "SIGN": 1e4})
    for tags, probs in got:
        assert tags[0] == "B-SIGN" and set(tags) <= {"B-SIGN", "I-SIGN"}
        assert all(0.0 <= p <= 1.0 for p in probs)  # the model's own probability, not the biased one
    # a type offset alone keeps O decisions to the model but types every entity
    got, _ = constrained_decode(model, codec, SENTS, batch_size=4, label_bias={"SYMPTOM": 1e4})
    assert set().union(*(_types(t) for t, _ in got)) <= {"SYMPTOM"}
    # a large O offset removes every entity
    got, _ = constrained_decode(model, codec, SENTS, batch_size=4, label_bias={"O": 1e4})
    assert all(set(t) == {"O"} for t, _ in got)


def test_trace_replay_relabels_entities_and_keeps_boundaries(tokenizer):  # noqa: F811
    codec = PromptCodec(tokenizer, ALL_LABELS)
    model = tiny_llama(len(tokenizer), seed=3, scale=4.0, layers=2, hidden=32)
    trace = []
    out, stats = constrained_decode(model, codec, SENTS, batch_size=3, trace=trace)
    assert len(trace) == stats.decisions
    assert {row for row, *_ in trace} == set(range(len(SENTS)))
    for row, word, choices, logp, k in trace:
        assert 0 <= word < len(SENTS[row]) and len(choices) == len(logp) > 1 and 0 <= k < len(choices)
        assert math.fsum(math.exp(x) for x in logp) == pytest.approx(1.0, abs=1e-4)
    base = [t for t, _ in out]
    decisions = type_decisions(trace)
    # with this tokenizer each entity's type is one decision: one per B- tag
    assert len(decisions) == sum(t.startswith("B-") for tags in base for t in tags) > 0
    assert replay(base, decisions, {}) == base
    for label in ("RAREDISEASE", "SKINRAREDISEASE"):
        forced = replay(base, decisions, {label: 1e4})
        for old, new in zip(base, forced):
            assert [t[:2] for t in new] == [t[:2] for t in old]  # same B/I/O pattern
            assert _types(new) <= {label}
            assert [(s, e) for s, e, _ in spans_from_tags(new)] == [(s, e) for s, e, _ in spans_from_tags(old)]


def test_check_label_bias_names_the_problem():
    assert check_label_bias(None, ALL_LABELS) == {}
    assert check_label_bias({"O": -1, "SIGN": 0.5}, ALL_LABELS) == {"O": -1.0, "SIGN": 0.5}
    with pytest.raises(ValueError, match="'FEVER'"):
        check_label_bias({"FEVER": 1.0}, ALL_LABELS)
    with pytest.raises(ValueError, match="finite"):
        check_label_bias({"SIGN": float("nan")}, ALL_LABELS)
    with pytest.raises(ValueError, match="finite"):
        check_label_bias({"SIGN": "high"}, ALL_LABELS)
    with pytest.raises(ValueError, match="finite"):
        check_label_bias({"SIGN": True}, ALL_LABELS)


def test_coordinate_search_finds_the_grid_optimum():
    def score(b):
        return -(b.get("A", 0.0) - 1.0) ** 2 - (b.get("B", 0.0) + 0.5) ** 2 - abs(b.get("C", 0.0))

    bias, best = coordinate_search(score, ["A", "B", "C"], grid=(-1.0, -0.5, 0.0, 0.5, 1.0, 2.0))
    assert bias == {"A": 1.0, "B": -0.5}  # C stays at 0 and is left out
    assert best == pytest.approx(0.0)


def test_fold_slices_cover_the_documents_once():
    assert fold_slices(5, 2) == [slice(0, 2), slice(2, 5)] or fold_slices(5, 2) == [slice(0, 3), slice(3, 5)]
    for n, k in ((104, 2), (104, 5), (7, 7)):
        covered = [i for f in fold_slices(n, k) for i in range(n)[f]]
        assert covered == list(range(n))
    with pytest.raises(ValueError, match="folds"):
        fold_slices(3, 4)
    with pytest.raises(ValueError, match="folds"):
        fold_slices(3, 1)
