"""Label strings as a token trie, for decoders that let a model choose only among labels.

The answer format is the paper's: one ``token : label`` line per token. A decoder
writes each ``"\\n" + word + " :"`` piece itself (:meth:`LabelCodec.word_ids`) and
the model picks the label (``" " + tag``) by walking :attr:`LabelCodec.trie`. The
same codec serves the LoRA pipe (:class:`tokner.lora.prompt.PromptCodec` adds its
instruction prompt) and the prompted ``tokner.HFCausalLM.v1`` (any prompt in front).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tokner.answers.paper_format import SEP


def bio_tags(labels: Sequence[str]) -> List[str]:
    """``O`` followed by ``B-X``, ``I-X`` for each entity type."""
    out = ["O"]
    for label in labels:
        out += [f"B-{label}", f"I-{label}"]
    return out


@dataclass
class TrieNode:
    children: Dict[int, "TrieNode"] = field(default_factory=dict)
    tags: Tuple[str, ...] = ()  # every tag whose token sequence passes through this node
    tag: Optional[str] = None  # set on the node that completes a tag


class LabelCodec:
    """Token ids of answer pieces and tags for one tokenizer (any prompt in front).

    ``tags`` is the closed set of answer labels (``O``, ``B-X``, ``I-X``); their token
    sequences form a trie, so a decoder needs one model call per branching node only.
    """

    def __init__(self, tokenizer, labels: Sequence[str]):
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.tags = bio_tags(self.labels)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no eos token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._piece_cache: Dict[Tuple[str, bool], List[int]] = {}
        self._newlines = None
        self.tag_ids: Dict[str, List[int]] = {t: self.encode(" " + t) for t in self.tags}
        self.trie = self._build_trie()

    def encode(self, text: str) -> List[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def word_ids(self, word: str, first: bool) -> List[int]:
        """``word + " :"`` (preceded by a newline except for the first word)."""
        key = (word, first)
        ids = self._piece_cache.get(key)
        if ids is None:
            ids = self.encode(("" if first else "\n") + word + SEP.rstrip())
            if len(self._piece_cache) < 200_000:
                self._piece_cache[key] = ids
        return ids

    def newline_counts(self):
        """Newlines in each token id's text, a tensor over the vocabulary (computed once)."""
        if self._newlines is None:
            import torch

            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._newlines = torch.tensor([t.count("\n") for t in texts], dtype=torch.long)
        return self._newlines

    def answer_ids(self, words: Sequence[str], tags: Sequence[str]) -> Tuple[List[int], List[bool]]:
        """Ids of the full answer (``eos`` last) and a mask that is True on tag tokens."""
        ids: List[int] = []
        is_tag: List[bool] = []
        for i, (w, t) in enumerate(zip(words, tags)):
            wid = self.word_ids(w, i == 0)
            ids += wid
            is_tag += [False] * len(wid)
            tid = self.tag_ids[t]
            ids += tid
            is_tag += [True] * len(tid)
        ids.append(self.eos_id)
        is_tag.append(True)
        return ids, is_tag

    def _build_trie(self) -> TrieNode:
        root = TrieNode()
        for tag, ids in self.tag_ids.items():
            if not ids:
                raise ValueError(f"label {tag!r} encodes to no tokens")
            node = root
            for tid in ids:
                if node.tag is not None:
                    break
                node.tags = node.tags + (tag,)
                node = node.children.setdefault(tid, TrieNode())
            if node.tag is not None or node.children:
                raise ValueError(
                    f"label {tag!r} and {node.tag or node.tags} share a token prefix that ends one of them: "
                    "the constrained decoder needs prefix-free label strings"
                )
            node.tag = tag
            node.tags = (tag,)
        return root

    def calls_per_tag(self) -> Dict[str, int]:
        """How many branching decisions (model calls) each tag costs."""
        out = {}
        for tag, ids in self.tag_ids.items():
            node, n = self.trie, 0
            for tid in ids:
                n += len(node.children) > 1
                node = node.children[tid]
            out[tag] = n
        return out


def allowed_tags(tags: Sequence[str], previous: str, bio: bool) -> Sequence[str]:
    """Tags allowed after ``previous``: with ``bio``, ``I-X`` only after ``B-X``/``I-X``."""
    if not bio:
        return tags
    prev_type = previous[2:] if previous != "O" else None
    return [t for t in tags if not t.startswith("I-") or t[2:] == prev_type]


