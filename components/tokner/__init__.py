"""tokner: token-level clinical NER (RareDis) as spaCy components.

Importing the package registers its tokenizer, sentencizer, readers and scorer
(they are also exposed through entry points, so ``spacy.load`` finds them after a
plain ``pip install``).

The subpackages, by layer (a layer imports only from the layers listed before it
and ``utils``; ``tests/test_layers.py`` checks it):

* ``text``: the paper's tokens and sentences (``tokenizer``, ``sentencizer``, ``pipes``);
* ``answers``: BIO tags <-> spans, the ``token : label`` answer format, and the alignment
  of model answers back to tokens;
* ``corpus``: BRAT and IOB sources, ``tokner convert``, spaCy ``[corpora]`` readers,
  static vectors for the CNN;
* ``scoring``: the paper's metric, ``tokner evaluate``, ``tokner compare``;
* ``decoding``: constrained decoding and KV caches, shared by the two LLM families;
* methods: ``llm`` (prompted LLMs on spacy-llm), ``lora`` (the LoRA pipe and its
  training), ``ensemble`` (span voting over member pipelines, document consistency,
  ``tokner ensemble-search``), ``doctype`` (the document-type relabelling,
  ``tokner train-doc-type``);
* running: ``annotate`` (``tokner annotate``, local and Ray), ``cli`` (the ``tokner``
  command), ``workflow`` (the project's workflows, timed), ``offline`` (materialises the
  offline models), ``reference`` (writes docs/reference.md);
* ``utils`` (native bf16, UTF-8 files, JSON output) and ``testing`` (public: tiny random
  models for tests).
"""
from tokner.text.tokenizer import PaperTokenizer, create_paper_tokenizer, make_doc  # noqa: F401
from tokner.text.sentencizer import PaperSentencizer  # noqa: F401
from tokner.scoring.scorer import PAPER_LABELS, ALL_LABELS, score_paper_ner  # noqa: F401
from tokner.corpus import readers  # noqa: F401
from tokner import ensemble  # noqa: F401  (registers tokner_ensemble, tokner_doc_consistency)
from tokner import doctype  # noqa: F401  (registers tokner_doc_type; scikit-learn loads only to train or predict)
from tokner import lora  # noqa: F401  (registers tokner_lora_ner; torch/peft load only with a model)

try:  # spacy-llm is the optional `llm` extra
    import spacy_llm as _spacy_llm  # noqa: F401
except ImportError:
    pass
else:
    from tokner import llm  # noqa: F401  (registers tokner.TokenNER.v1 and its models/retrievers)

__version__ = "0.1.0"
