"""Shared helpers of the ``llm`` models: spacy-llm hands a model one list of prompts per doc."""
from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple


def _flatten(prompts: Iterable[Iterable[str]]) -> Tuple[List[str], List[int]]:
    flat: List[str] = []
    sizes: List[int] = []
    for doc_prompts in prompts:
        doc_prompts = list(doc_prompts)
        flat.extend(doc_prompts)
        sizes.append(len(doc_prompts))
    return flat, sizes


def _unflatten(flat: Sequence[str], sizes: Sequence[int]) -> List[List[str]]:
    out, k = [], 0
    for n in sizes:
        out.append(list(flat[k: k + n]))
        k += n
    return out

