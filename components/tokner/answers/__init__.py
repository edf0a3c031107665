"""Answer layer: between per-token tags, spans and the models' text answers.

``tags`` (BIO tags <-> ``Doc.ents``), ``paper_format`` (the ``token : label`` answer
format the prompted and LoRA-tuned models write) and ``align`` (a model's answer lines
aligned back to the sentence's tokens, so every entity gets exact character offsets).
"""
