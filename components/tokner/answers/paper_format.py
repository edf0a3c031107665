"""The paper's plain-text answer format, shared by every generating component.

A prompt lists the input one token per line; an answer is one ``token : label`` line
per token; files of answers (the authors' published outputs) separate sentences by
lines of ``######``. This module renders and splits that format. Aligning an answer
to the Doc's tokens robustly lives in :mod:`tokner.answers.align`; the paper's own position-
based reading (``rd_ner_eval.py``) is :func:`paper_position_tags`.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Sequence

BLOCK_SEP = "######"
SEP = " : "
_BLOCK_SPLIT = re.compile(r"^\s*#{6}\s*$", re.M)


def render_tokens(tokens: Sequence[str]) -> str:
    """The input part of a prompt: one token per line."""
    return "\n".join(tokens)


def render_answer(tokens: Sequence[str], labels: Sequence[str]) -> str:
    """The gold/expected answer: one ``token : label`` line per token."""
    if len(tokens) != len(labels):
        raise ValueError(f"{len(tokens)} tokens but {len(labels)} labels")
    return "\n".join(f"{t}{SEP}{l}" for t, l in zip(tokens, labels))


def render_blocks(answers: Iterable[str]) -> str:
    """Join answers into the authors' file format (each block preceded by ######)."""
    return "".join(f"{BLOCK_SEP}\n{a.strip()}\n" for a in answers)


def split_blocks(text: str) -> List[str]:
    """Split a file of ``######``-separated answers; text before the first separator
    is dropped (the authors' files start with a separator)."""
    parts = _BLOCK_SPLIT.split(text)
    if len(parts) > 1:
        parts = parts[1:]
    return [p.strip("\n") for p in parts]


def paper_position_tags(block: str, n_tokens: int) -> List[str]:
    """The authors' reading of an answer (``parse_medtuned_outputs`` + ``align_preds``):
    the i-th non-empty line gives the i-th token's tag (text after ``': '``, brackets
    removed; a line without exactly one ``': '`` counts as ``O``); missing lines are
    ``O`` and extra lines are ignored. Kept for re-scoring published files the way
    the paper did; new components use :func:`tokner.answers.align.align_answer`."""
    tags: List[str] = []
    for line in block.strip().split("\n"):
        if not line:
            continue
        parts = line.replace("[", "").replace("]", "").split(": ")
        tags.append(parts[1].strip() if len(parts) == 2 else "O")
    tags = tags[:n_tokens] + ["O"] * max(0, n_tokens - len(tags))
    return tags
