"""LoRA-tuned generation for token-level NER (``tokner_lora_ner``).

Importing this subpackage registers the factory; torch, transformers and peft are
imported only when a model is loaded or trained (``pip install 'spacy-tokner[lora]'``).
"""
from tokner.lora.component import LoraNER, make_lora_ner  # noqa: F401
