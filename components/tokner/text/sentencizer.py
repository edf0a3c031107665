"""``tokner_sentencizer``: the paper's sentence rule as a pipeline component.

Works on any tokenization: a sentence ends after a token whose text is ".", "?" or
"!" and that is followed by whitespace (or ends the text). Whitespace tokens stay
with the sentence before them. No model download needed.
"""
from __future__ import annotations

from spacy.language import Language
from spacy.tokens import Doc

from tokner.text.pipes import StatelessComponent
from tokner.text.tokenizer import paper_sent_starts


class PaperSentencizer(StatelessComponent):
    def __init__(self, name: str = "tokner_sentencizer", overwrite: bool = True):
        self.name = name
        self.overwrite = overwrite

    def __call__(self, doc: Doc) -> Doc:
        if not len(doc):
            return doc
        if not self.overwrite and doc.has_annotation("SENT_START"):
            return doc
        starts = paper_sent_starts([t.text for t in doc], [bool(t.whitespace_) for t in doc],
                                   [t.is_space for t in doc])
        for token, start in zip(doc, starts):
            token.is_sent_start = start
        return doc



@Language.factory(
    "tokner_sentencizer",
    assigns=["token.is_sent_start", "doc.sents"],
    default_config={"overwrite": True},
)
def make_sentencizer(nlp: Language, name: str, overwrite: bool) -> PaperSentencizer:
    """Sentence starts by the paper's rule (the one ``tokner.PaperTokenizer.v1`` uses with
    ``sentences = true``): every pipeline here starts with it, so prompts, decoding and
    the scorer see the same sentences.

    overwrite: replace sentence starts already set on the Doc (False keeps them).
    """
    return PaperSentencizer(name, overwrite=overwrite)
