"""Constrained decoding shared by the LoRA pipe (:mod:`tokner.lora`) and the prompted
local models (:mod:`tokner.llm`): the model only chooses among label strings, the
decoder writes everything else, so every answer is well-formed and aligned.

* :mod:`.codec`: label strings as a token trie (:class:`LabelCodec`);
* :mod:`.constrained`: the batched decoder (KV cache, speculation, label-row head,
  shared prompt head) and free generation;
* :mod:`.kvcache`: a cheaper KV cache and grouped-query attention for CPUs.

Needs ``torch`` and ``transformers`` (``pip install spacy-tokner[lora]`` or ``[llm]``).
"""
