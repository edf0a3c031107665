import spacy

from tokner.text.tokenizer import PaperTokenizer, make_doc, paper_token_spans


def words(text):
    return [text[s:e] for s, e in paper_token_spans(text)]


def test_paper_tokenization_rules():
    assert words("Affected (asymptomatic), bluish-black one’s e.g. 1:4 5-8.") == [
        "Affected", "(", "asymptomatic", ")", ",", "bluish-black", "one’s", "e.g", ".", "1:4", "5-8", ".",
    ]
    assert words('"...quoted!"') == ['"', ".", ".", ".", "quoted", "!", '"']
    assert words("") == []


def test_split_at_cuts_tokens():
    text = "hypoadrenalism-like signs"
    spans = paper_token_spans(text, split_at={14})
    assert [text[s:e] for s, e in spans] == ["hypoadrenalism", "-like", "signs"]


def test_text_is_preserved_with_whitespace_unicode_crlf(nlp):
    for text in ["", " ", "a", "  lead\r\n\r\nCRLF text.\r\nNext  one\tTab ", "Ünïcödé – “quotes” ü.\n", "\n\nx"]:
        doc = make_doc(nlp.vocab, text)
        assert doc.text == text
        assert all(not t.text.isspace() or t.is_space for t in doc)


def test_paper_sentence_rule(nlp):
    doc = make_doc(nlp.vocab, "It is rare. Onset (e.g. in infancy).\n\nSecond para? Yes!End. x")
    sents = [s.text.strip() for s in doc.sents]
    # "e.g." ends a sentence under the paper's rule (a "." token followed by a space);
    # "infancy)." does too; "Yes!End" does not (no space after "!").
    assert sents == ["It is rare.", "Onset (e.g.", "in infancy).", "Second para?", "Yes!End.", "x"]


def test_sentencizer_matches_tokenizer_rule(nlp):
    text = "A b. C d? (E) f.\nG h! i"
    ref = make_doc(nlp.vocab, text, sentences=True)
    pipe_nlp = spacy.blank("en")
    pipe_nlp.tokenizer = PaperTokenizer(pipe_nlp.vocab)
    pipe_nlp.add_pipe("tokner_sentencizer")
    doc = pipe_nlp(text)
    assert [s.text for s in doc.sents] == [s.text for s in ref.sents]


def test_tokenizer_and_sentencizer_config_round_trip(tmp_path):
    config = {"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}}
    nlp = spacy.blank("en", config=config)
    nlp.add_pipe("tokner_sentencizer")
    nlp.to_disk(tmp_path / "p")
    nlp2 = spacy.load(tmp_path / "p")
    assert isinstance(nlp2.tokenizer, PaperTokenizer)
    text = "Fever (pyrexia), rash. Then\n\nmore."
    a, b = nlp(text), nlp2(text)
    assert [t.text for t in a] == [t.text for t in b]
    assert [t.is_sent_start for t in a] == [t.is_sent_start for t in b]


def test_tokenizer_rejects_non_text(nlp):
    import pytest

    with pytest.raises(TypeError):
        PaperTokenizer(nlp.vocab)(b"bytes")
