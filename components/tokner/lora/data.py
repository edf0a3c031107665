"""Training sequences for the LoRA component: one per sentence, length-bucketed batches."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from spacy.tokens import Doc, DocBin
from spacy.vocab import Vocab

from tokner.answers.tags import doc_tags, sentence_token_lists, spans_from_tags
from tokner.lora.prompt import PromptCodec, clean_tags

IGNORE = -100
LOSS_ON = ("answer", "labels")


def sentences_from_docs(docs: Iterable[Doc], labels: Sequence[str]) -> List[Tuple[List[str], List[str]]]:
    """(words, tags) per sentence; whitespace tokens skipped, other types -> ``O``."""
    out = []
    for doc in docs:
        tags = doc_tags(doc)
        for sent in sentence_token_lists(doc):
            out.append(([doc[i].text for i in sent], clean_tags([tags[i] for i in sent], labels)))
    return out


def contexts_from_docs(docs: Iterable[Doc], n: int) -> List[List[str]]:
    """For each sentence of :func:`sentences_from_docs` (same order), the words of up to
    ``n`` sentences before it in its document (:func:`tokner.lora.prompt.sentence_contexts`)."""
    from tokner.answers.tags import sentence_words
    from tokner.lora.prompt import sentence_contexts

    return sentence_contexts(*sentence_words(list(docs)), n)


def read_docbin(path, vocab: Vocab, limit: int = 0) -> List[Doc]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DocBin not found: {path} (build it with: python -m tokner convert RAREDIS_DIR corpus)")
    docs = list(DocBin().from_disk(path).get_docs(vocab))
    return docs[: limit or None]


def oversample_indices(tag_lists: Sequence[Sequence[str]], factors: Mapping[str, int],
                       labels: Sequence[str] = ()) -> List[int]:
    """Sentence indices for one epoch, a sentence with a label in ``factors`` repeated
    that many times (the largest factor among its labels); the others once."""
    factors = dict(factors or {})
    for label, k in factors.items():
        if labels and label not in labels:
            raise ValueError(f"oversample: unknown label {label!r} (labels: {', '.join(labels)})")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"oversample: factor for {label!r} must be an integer >= 1, got {k!r}")
    out: List[int] = []
    for i, tags in enumerate(tag_lists):
        present = {label for _, _, label in spans_from_tags(tags)}
        out += [i] * max([factors.get(label, 1) for label in present] + [1])
    return out


@dataclass
class Encoded:
    input_ids: List[int]
    labels: List[int]
    truncated: bool


def encode_example(codec: PromptCodec, words: Sequence[str], tags: Sequence[str], max_length: int = 0,
                   loss_on: str = "answer", context: Optional[Sequence[str]] = None) -> Encoded:
    """Prompt + answer ids; loss only on the answer (``"answer"``) or only on its tag tokens and eos (``"labels"``).
    ``context``: the words before the sentence (used when the codec has ``context_sentences``)."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    prompt = codec.prompt_ids(words, context)
    answer, is_tag = codec.answer_ids(words, tags)
    ids = prompt + answer
    if loss_on == "answer":
        labels = [IGNORE] * len(prompt) + answer
    else:
        labels = [IGNORE] * len(prompt) + [a if t else IGNORE for a, t in zip(answer, is_tag)]
    truncated = bool(max_length) and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels, truncated)


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, bucket_factor: int = 50) -> List[List[int]]:
    """Shuffled batches of similar length: shuffle, sort within windows of
    ``batch_size * bucket_factor`` examples, cut into batches, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = max(batch_size * max(bucket_factor, 1), batch_size)
    batches: List[List[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Encoded], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        mask[b, :n] = 1
        labels[b, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
