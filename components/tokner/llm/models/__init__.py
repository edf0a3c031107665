"""Models for the ``llm`` component, registered in spacy-llm's ``llm_models``, one
module per provider (as spacy-llm does):

* :mod:`.hf`: ``tokner.HFCausalLM.v1``, a local Hugging Face causal LM;
* :mod:`.replay`: ``tokner.ReplayModel.v1``, recorded answers (e.g. the paper's GPT-4 outputs);
* :mod:`.openai`: ``tokner.OpenAICompatible.v1``, any OpenAI-compatible server.
"""
from tokner.llm.models.hf import HFCausalLM, make_hf_causal_lm  # noqa: F401
from tokner.llm.models.openai import OpenAICompatible, make_openai_compatible  # noqa: F401
from tokner.llm.models.replay import ReplayModel, make_replay_model, read_responses  # noqa: F401
