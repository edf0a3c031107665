"""tokner: token-level clinical NER (RareDis) as spaCy components.

Importing the package registers its tokenizer, sentencizer, readers and scorer
(they are also exposed through entry points, so ``spacy.load`` finds them after a
plain ``pip install``).

The modules, by layer:

* text and corpus: ``tokenizer`` (the paper's tokens), ``sentencizer`` (on ``pipes``, what stateless components share), ``brat`` and
  ``iob`` (the two source formats), ``corpus`` (``tokner convert``), ``readers`` (spaCy
  ``[corpora]`` readers), ``vectors`` (static vectors for the CNN);
* tags and answers: ``tags`` (BIO <-> spans), ``paper_format`` (the ``token : label``
  answer format), ``align`` (model answers -> one tag per token);
* scoring: ``scorer`` (the paper's metric), ``evaluation`` (``tokner evaluate``),
  ``report`` (``tokner compare``);
* combining: ``ensemble`` (span voting over member pipelines, document consistency,
  ``tokner ensemble-search``);
* methods: ``llm`` (prompted LLMs on spacy-llm), ``lora`` (the LoRA pipe and its
  training), ``decoding`` (constrained decoding and KV caches, shared by both);
* running: ``annotate`` (``tokner annotate``, local and Ray), ``cli``, ``workflow``
  (the project's workflows, timed), ``offline`` (the offline models), ``hardware``
  (native bf16), ``reference`` (docs/reference.md), ``tiny`` (tiny random models for the
  tests and the CUDA smoke benchmark).
"""
from .tokenizer import PaperTokenizer, create_paper_tokenizer, make_doc  # noqa: F401
from .sentencizer import PaperSentencizer  # noqa: F401
from .scorer import PAPER_LABELS, ALL_LABELS, score_paper_ner  # noqa: F401
from . import readers  # noqa: F401
from . import ensemble  # noqa: F401  (registers tokner_ensemble, tokner_doc_consistency)
from . import lora  # noqa: F401  (registers tokner_lora_ner; torch/peft load only with a model)

try:  # spacy-llm is the optional `llm` extra
    import spacy_llm as _spacy_llm  # noqa: F401
except ImportError:
    pass
else:
    from . import llm  # noqa: F401  (registers tokner.TokenNER.v1 and its models/retrievers)

__version__ = "0.1.0"
