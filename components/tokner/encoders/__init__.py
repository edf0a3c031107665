"""Supervised encoders (spacy-transformers): a transformer architecture whose span getter
counts wordpieces, so every window fills the encoder's sequence length without padding.

``tokner.TransformerModel.v1`` is spacy-transformers' ``TransformerModel.v3`` that hands
itself to a span getter which needs the model's tokenizer; ``tokner.wordpiece_spans.v1``
is such a getter (see :mod:`tokner.encoders.spans`).
"""
from tokner.encoders.spans import WordpieceSpans, make_transformer_model, make_wordpiece_spans  # noqa: F401
