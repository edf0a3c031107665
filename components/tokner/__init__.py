"""tokner: token-level clinical NER (RareDis) as spaCy components.

Importing the package registers its tokenizer, sentencizer, readers and scorer
(they are also exposed through entry points, so ``spacy.load`` finds them after a
plain ``pip install``).
"""
from .tokenizer import PaperTokenizer, create_paper_tokenizer, make_doc  # noqa: F401
from .sentencizer import PaperSentencizer  # noqa: F401
from .scorer import PAPER_LABELS, ALL_LABELS, score_paper_ner  # noqa: F401
from . import readers  # noqa: F401
from . import lora  # noqa: F401  (registers tokner_lora_ner; torch/peft load only with a model)

try:  # spacy-llm is the optional `llm` extra
    import spacy_llm as _spacy_llm  # noqa: F401
except ImportError:
    pass
else:
    from . import llm  # noqa: F401  (registers tokner.TokenNER.v1 and its models/retrievers)

__version__ = "0.1.0"
