"""Corpus layer: RareDis in its two source formats, converted to spaCy ``DocBin`` files.

``brat`` (standoff ``.txt``/``.ann`` pairs, with the policy statistics), ``iob`` (the paper's
token/tag CSV), ``convert`` (``tokner convert``: either format -> ``.spacy``), ``readers``
(``tokner.BratCorpus.v1`` and ``tokner.IOBCorpus.v1`` for a config's ``[corpora]``) and
``vectors`` (static word vectors distilled from a sentence encoder, for the CNN).
"""
