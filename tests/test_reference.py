"""Every registered function documents each of its arguments, and docs/reference.md is current."""
from pathlib import Path

import pytest

from tokner.reference import documented_args, entry_points, load, main

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = entry_points(ROOT / "setup.cfg")


def test_entry_points_are_all_listed():
    names = {name for _, name, _ in ENTRIES}
    assert {"tokner_lora_ner", "tokner.TokenNER.v1", "tokner.HFCausalLM.v1", "tokner.OpenAICompatible.v1",
            "tokner.BatchCache.v1", "tokner.paper_ner_scorer.v1", "tokner.BratCorpus.v1",
            "tokner.TransformerModel.v1", "tokner.wordpiece_spans.v1"} <= names
    assert len(names) == 22


@pytest.mark.parametrize("group,name,target", ENTRIES, ids=[n for _, n, _ in ENTRIES])
def test_docstring_names_every_argument(group, name, target):
    pytest.importorskip("spacy_llm") if group.startswith("thinc_llm") else None
    args, missing = documented_args(load(target))
    assert not missing, f"{name} ({target}): the docstring does not mention {missing}"


def test_reference_page_is_up_to_date():
    pytest.importorskip("spacy_llm")
    assert main([str(ROOT / "docs" / "reference.md"), "--check"]) == 0, "run: python -m tokner.reference docs/reference.md"
