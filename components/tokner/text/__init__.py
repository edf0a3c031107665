"""Text layer: the paper's tokens and sentences as spaCy components.

``tokenizer`` (``tokner.PaperTokenizer.v1``, the RareDis tokenisation), ``sentencizer``
(``tokner_sentencizer``) and ``pipes`` (what stateless components share: no-op
serialisation, ``pipe`` over ``__call__``).
"""
