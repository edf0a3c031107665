"""Prompted-LLM token-level NER on top of spacy-llm (``pip install spacy-tokner[llm]``).

Importing this package registers, in spacy-llm's registries:

* ``llm_tasks``: ``tokner.TokenNER.v1`` (:mod:`.task`);
* ``llm_models``: ``tokner.HFCausalLM.v1``, ``tokner.ReplayModel.v1``,
  ``tokner.OpenAICompatible.v1`` (:mod:`.models`);
* ``llm_misc``: ``tokner.TokenNERParser.v1``, ``tokner.FixedExamples.v1``,
  ``tokner.SimilarExamples.v1``, ``tokner.KnowledgePassages.v1``,
  ``tokner.DenseIndex.v1``, ``tokner.BM25Index.v1`` (:mod:`.retrieval`),
  ``tokner.BatchCache.v1`` (:mod:`.cache`: spacy-llm's cache with one subfolder per
  model fingerprint, so one model's answers are never served for another).

The same names are declared as entry points (``spacy_llm_tasks``,
``spacy_llm_models``, ``spacy_llm_misc``), so ``spacy.load`` resolves them after a
plain ``pip install`` without importing tokner first.
"""
from tokner.llm.task import (  # noqa: F401
    DEFAULT_LABEL_DEFINITIONS,
    EXTENSION,
    TokenNERTask,
    TokenPrompt,
    make_token_ner_task,
    parse_responses,
    read_template,
    summarise_alignment,
)
from tokner.llm.cache import ModelBatchCache  # noqa: F401
from tokner.llm.models import HFCausalLM, OpenAICompatible, ReplayModel  # noqa: F401
from tokner.llm.retrieval import (  # noqa: F401
    BM25Index,
    DenseIndex,
    FixedExamples,
    KnowledgePassages,
    SimilarExamples,
)
