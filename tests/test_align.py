"""Canned answers for every case the aligner must survive (tokner.answers.align)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokner.answers.align import AlignStats, align_answer, parse_answer_lines, sum_stats
from tokner.answers.tags import is_valid_tag

LABELS = ["DISEASE", "RAREDISEASE", "SKINRAREDISEASE", "SIGN", "SYMPTOM"]
WORDS = "Patients with Marfan syndrome often have joint pain and high blood pressure .".split()
GOLD = ["O", "O", "B-RAREDISEASE", "I-RAREDISEASE", "O", "O", "B-SYMPTOM", "I-SYMPTOM", "O",
        "B-SIGN", "I-SIGN", "I-SIGN", "O"]


def answer(words=WORDS, tags=GOLD):
    return "\n".join(f"{w} : {t}" for w, t in zip(words, tags))


def lines():
    return answer().split("\n")


def test_exact_answer():
    tags, s = align_answer(WORDS, answer(), LABELS)
    assert tags == GOLD
    assert s.fully_aligned and s.exact == len(WORDS) and s.unaligned == 0 and s.extra_lines == 0


def test_skipped_line_only_loses_that_word():
    ls = lines()
    del ls[7]  # "pain"
    tags, s = align_answer(WORDS, "\n".join(ls), LABELS)
    expected = list(GOLD)
    expected[7] = "O"
    assert tags == expected
    assert s.unaligned == 1 and not s.fully_aligned and not s.truncated


def test_repeated_lines_are_extra():
    ls = lines()
    ls.insert(3, ls[2])
    ls.insert(0, ls[0])
    tags, s = align_answer(WORDS, "\n".join(ls), LABELS)
    assert tags == GOLD
    assert s.extra_lines == 2 and s.fully_aligned


def test_merged_tokens():
    ls = lines()
    ls[2:4] = ["Marfan syndrome : B-RAREDISEASE"]
    ls[8:11] = ["high blood pressure : B-SIGN"]  # indices shifted by one
    tags, s = align_answer(WORDS, "\n".join(ls), LABELS)
    assert tags == GOLD
    assert s.merged_lines == 2 and s.fully_aligned


def test_split_token():
    words = ["Epidermolysis", "bullosa", "simplex"]
    ans = "Epidermo : B-SKINRAREDISEASE\nlysis : I-SKINRAREDISEASE\nbullosa : I-SKINRAREDISEASE\nsimplex : I-SKINRAREDISEASE"
    tags, s = align_answer(words, ans, LABELS)
    assert tags == ["B-SKINRAREDISEASE", "I-SKINRAREDISEASE", "I-SKINRAREDISEASE"]
    assert s.split_words == 1 and s.fully_aligned


def test_case_and_whitespace_changes():
    ans = "\n".join(f"  {w.upper()}   :   {t.lower()} " for w, t in zip(WORDS, GOLD))
    tags, s = align_answer(WORDS, ans, LABELS)
    assert tags == GOLD
    assert s.case_changes > 0 and s.fully_aligned


def test_missing_prefixes_are_restored():
    ans = answer(tags=[t[2:] if t != "O" else "O" for t in GOLD])
    tags, s = align_answer(WORDS, ans, LABELS)
    assert tags == GOLD
    assert s.fixed_prefixes == sum(t != "O" for t in GOLD)


def test_inside_without_begin_becomes_begin():
    t = list(GOLD)
    t[6] = "I-SYMPTOM"
    t[2] = "I-RAREDISEASE"
    tags, s = align_answer(WORDS, answer(tags=t), LABELS)
    assert tags == GOLD
    assert s.orphan_inside == 2


def test_unknown_labels_read_as_outside():
    t = list(GOLD)
    t[9:12] = ["B-FINDING", "I-FINDING", "I-FINDING"]
    tags, s = align_answer(WORDS, answer(tags=t), LABELS)
    assert tags[9:12] == ["O", "O", "O"] and tags[:9] == GOLD[:9]
    assert s.unknown_labels == 3 and not s.fully_aligned


def test_label_spellings():
    ans = ("Patients : [O]\nwith : none\nMarfan : B_RAREDISEASE\nsyndrome : I-Rare Disease\noften : O\n"
           "have : O\njoint : **B-SYMPTOM**\npain : 'I-SYMPTOM'\nand : -\nhigh : S-SIGN\nblood : I-SIGN.\n"
           "pressure : E-SIGN\n. : O")
    tags, s = align_answer(WORDS, ans, LABELS)
    assert tags == GOLD and s.fully_aligned


@pytest.mark.parametrize("ans", ["", None, "   \n\n", "```\n```"])
def test_empty_answer(ans):
    tags, s = align_answer(WORDS, ans, LABELS)
    assert tags == ["O"] * len(WORDS)
    assert s.empty and s.truncated and not s.fully_aligned and s.unaligned == len(WORDS)


def test_truncated_answer():
    tags, s = align_answer(WORDS, "\n".join(lines()[:5]), LABELS)
    assert tags == GOLD[:5] + ["O"] * (len(WORDS) - 5)
    assert s.truncated and s.aligned == 5


def test_chatter_and_echoed_input_are_ignored():
    ans = "Sure! Here is the labelled text:\n" + "\n".join(WORDS) + "\n\n" + answer() + "\nHope this helps."
    tags, s = align_answer(WORDS, ans, LABELS)
    assert tags == GOLD
    assert s.unlabelled_lines == len(WORDS) + 2 and s.fully_aligned


def test_colon_token_and_other_separators():
    words = ["ratio", ":", "1", "to", "2"]
    ans = "ratio\tO\n: : O\n1 -> O\nto | O\n2 => B-SIGN"
    tags, s = align_answer(words, ans, LABELS)
    assert tags == ["O", "O", "O", "O", "B-SIGN"] and s.fully_aligned
    assert parse_answer_lines(": : O") == [(":", " O")]


def test_labels_none_accepts_any_label():
    tags, _ = align_answer(["a", "b"], "a : B-Foo\nb : I-FOO")
    assert tags == ["B-FOO", "I-FOO"]


def test_sum_stats():
    _, a = align_answer(WORDS, answer(), LABELS)
    _, b = align_answer(WORDS, "", LABELS)
    total = sum_stats([a, b])
    assert total["answers"] == 2 and total["fully_aligned"] == 1 and total["empty"] == 1
    assert total["words"] == 2 * len(WORDS)


@settings(max_examples=150, deadline=None)
@given(
    words=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8), max_size=15),
    ans=st.text(max_size=300),
)
def test_never_raises_on_garbage(words, ans):
    tags, s = align_answer(words, ans, LABELS)
    assert len(tags) == len(words)
    assert all(is_valid_tag(t) for t in tags)
    assert all(t == "O" or t[2:] in LABELS for t in tags)
    assert isinstance(s, AlignStats) and s.aligned + s.unaligned == len(words)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-SIGN", "I-SIGN", "B-DISEASE", "I-DISEASE", "SIGN"]), min_size=1, max_size=12))
def test_output_is_valid_bio(raw):
    words = [f"w{i}" for i in range(len(raw))]
    tags, _ = align_answer(words, answer(words, raw), LABELS)
    for prev, cur in zip(["O"] + tags, tags):
        if cur.startswith("I-"):
            assert prev != "O" and prev[2:] == cur[2:]


def test_prose_is_not_aligned_by_chance():
    prose = ("DISEASE: a disease or disorder that is not rare, with specific signs or symptoms\n"
             "- SYMPTOM: a subjective experience of a disease reported by the patient\n"
             "Feature:\nThe patients have the syndrome and it is rare.")
    tags, s = align_answer(WORDS, prose, LABELS)
    assert tags == ["O"] * len(WORDS)
    assert s.unknown_labels == 0 and s.aligned <= 4 and not s.fully_aligned
