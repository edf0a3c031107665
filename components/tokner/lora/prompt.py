"""The LoRA component's prompt: instruction, input tokens, ``token : label`` answer.

One prompt per sentence, in the paper's fine-tuning layout
(``qiuhaolu/tner/rd_ner_llm_finetune.py``)::

    ### Instruction:
    {instruction}
    ### Input:
    {tokens, one per line (tokner.answers.paper_format.render_tokens)}
    ### Output:
    {token : label, one line per token (tokner.answers.paper_format.render_answer)}<eos>

With ``context_sentences`` > 0, the sentences before it in the same document come
first, as plain text (at most :data:`CONTEXT_MAX_WORDS` words, the nearest kept)::

    ### Instruction:
    {instruction}
    ### Context:
    {the previous sentence(s), words joined with spaces; empty for a document's first}
    ### Input:
    ...

The answer is tokenized *piece by piece* -- ``"\\n" + word + " :"`` for each word and
``" " + label`` for its label -- both in training and in decoding, so the constrained
decoder feeds the model exactly the token ids it was trained on, whatever the
tokenizer's merges would do on the joined string. Decoded, the ids give back the
string ``render_answer(words, tags)``.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence

from tokner.decoding.codec import LabelCodec, TrieNode, allowed_tags, bio_tags  # noqa: F401  (re-exported)
from tokner.answers.paper_format import render_tokens
from tokner.answers.tags import restrict_tags
from tokner.scoring.scorer import PAPER_LABELS

#: A one-line instruction: after tuning, the model no longer needs the definitions,
#: and every prompt token costs training and decoding time on a CPU.
SHORT_INSTRUCTION = (
    "Tag each input token with its BIO clinical entity label ({labels}) or O, "
    "one 'token : label' line per token."
)

#: The instruction of the paper's fine-tuning script, verbatim.
PAPER_INSTRUCTION = (
    "Your role involves identifying clinical Named Entities in the text and "
    "applying the BIO labeling scheme. Utilize the following labels to "
    "classify each entity: DISEASE: If the entity represents a non-rare disease. "
    "RAREDISEASE: If the entity denotes a rare disease that affects a small "
    "percentage of the population. SKINRAREDISEASE: If the entity refers to "
    "a rare skin disease. SIGN: If the entity corresponds to something found "
    "during a physical exam or from a laboratory test that shows that a person "
    "may have a condition or disease. SYMPTOM: If the entity relates to a "
    "physical or mental problem that a person experiences that may indicate "
    "a disease or condition; cannot be seen and do not show up on medical tests. "
    "O: If the entity does not fit into any of the above categories. "
)

#: The shortest: with SmolLM2's tokenizer the prompt head is 20 tokens against 65 for
#: ``"short"`` (a mean training sequence with ``"short"`` and ``"lines"`` is 226 tokens),
#: and the head is fed with every training sentence.
MINIMAL_INSTRUCTION = "Tag each token with its BIO clinical entity label."

#: The most context words a prompt carries (the nearest ones before the sentence): bounds
#: the extra prompt tokens per sentence whatever the document's sentence lengths.
CONTEXT_MAX_WORDS = 64

INSTRUCTIONS = {"minimal": MINIMAL_INSTRUCTION, "short": SHORT_INSTRUCTION, "paper": PAPER_INSTRUCTION}


def resolve_instruction(instruction: str, labels: Sequence[str]) -> str:
    """``"minimal"`` / ``"short"`` / ``"paper"`` or a literal instruction (``{labels}`` is filled in)."""
    text = INSTRUCTIONS.get(instruction, instruction)
    if instruction == "paper" and set(labels) - set(PAPER_LABELS):
        extra = ", ".join(sorted(set(labels) - set(PAPER_LABELS)))
        text = text + f"Also label {extra} entities. "
    return text.replace("{labels}", ", ".join(labels))


def render_head(instruction_text: str, context: bool = False) -> str:
    """The sentence-independent start of every prompt (without ``### Input:`` when a
    context section follows it)."""
    if context:
        return f"### Instruction:\n{instruction_text}\n"
    return f"### Instruction:\n{instruction_text}\n### Input:\n"


def render_context(context: Sequence[str]) -> str:
    """The context section: the words before the sentence, at most ``CONTEXT_MAX_WORDS``."""
    words = list(context)[-CONTEXT_MAX_WORDS:] if CONTEXT_MAX_WORDS else list(context)
    return f"### Context:\n{' '.join(words)}\n### Input:\n"


def render_body(words: Sequence[str], input_format: str = "lines", context: Optional[Sequence[str]] = None) -> str:
    """The sentence part of the prompt, up to and including ``### Output:\\n``; with
    ``context`` (a word list, possibly empty) the context section first."""
    if context is not None:
        return render_context(context) + render_body(words, input_format)
    if input_format == "lines":
        body = render_tokens(words)
    elif input_format == "text":  # the paper's fine-tuning script joined tokens with spaces
        body = " ".join(words)
    else:
        raise ValueError(f"input_format must be 'lines' or 'text', got {input_format!r}")
    return f"{body}\n### Output:\n"


def render_prompt(words: Sequence[str], instruction_text: str, input_format: str = "lines",
                  context: Optional[Sequence[str]] = None) -> str:
    """The whole prompt up to and including ``### Output:\\n``."""
    return render_head(instruction_text, context is not None) + render_body(words, input_format, context)


def check_context_sentences(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"context_sentences must be an integer >= 0, got {n!r}")
    return n


def sentence_contexts(index: Sequence[Sequence[Any]], sentences: Sequence[Sequence[str]], n: int) -> List[List[str]]:
    """For each sentence (``sentences`` in document order, ``index[d]`` the sentences of
    document ``d``), the words of up to ``n`` sentences before it in its document."""
    if sum(len(doc) for doc in index) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences for an index of {sum(len(doc) for doc in index)}")
    out: List[List[str]] = []
    k = 0
    for doc in index:
        for j in range(len(doc)):
            out.append([w for s in sentences[k + max(0, j - n):k + j] for w in s])
        k += len(doc)
    return out


class PromptCodec(LabelCodec):
    """Token ids of the LoRA prompt (instruction head + sentence body), answer pieces and tags.

    ``context_sentences``: how many sentences before each one (same document) its prompt
    carries (0: none, the prompt of the paper's script)."""

    def __init__(self, tokenizer, labels: Sequence[str], instruction: str = "short", input_format: str = "lines",
                 context_sentences: int = 0):
        super().__init__(tokenizer, labels)
        self.instruction_text = resolve_instruction(instruction, self.labels)
        self.input_format = input_format
        self.context_sentences = check_context_sentences(context_sentences)
        self._head: Optional[List[int]] = None

    def head_ids(self) -> List[int]:
        """Ids of the instruction part, the same for every sentence (its KV cache is shared)."""
        if self._head is None:
            ids = self.encode(render_head(self.instruction_text, self.context_sentences > 0))
            bos = self.tokenizer.bos_token_id
            if bos is not None and getattr(self.tokenizer, "add_bos_token", False):
                ids = [bos] + ids
            self._head = ids
        return list(self._head)

    def body_ids(self, words: Sequence[str], context: Optional[Sequence[str]] = None) -> List[int]:
        if self.context_sentences and context is None:
            context = []
        return self.encode(render_body(words, self.input_format, context if self.context_sentences else None))

    def prompt_ids(self, words: Sequence[str], context: Optional[Sequence[str]] = None) -> List[int]:
        """Head and body, encoded separately (so a cached head is exactly the same ids).
        ``context`` (the words before the sentence) is used when ``context_sentences`` > 0."""
        return self.head_ids() + self.body_ids(words, context)

    def doc_prompts(self, index: Sequence[Sequence[Any]], sentences: Sequence[Sequence[str]]) -> Optional[List[List[int]]]:
        """Every sentence's prompt ids with its context (``index`` and ``sentences`` as
        :func:`tokner.answers.tags.sentence_words` returns them), or None without context
        (the decoders then build the prompts, sharing the instruction's cache)."""
        if not self.context_sentences:
            return None
        contexts = sentence_contexts(index, sentences, self.context_sentences)
        return [self.prompt_ids(w, c) for w, c in zip(sentences, contexts)]


def clean_tags(tags: Iterable[str], labels: Sequence[str]) -> List[str]:
    """Gold tags restricted to ``labels`` (:func:`tokner.answers.tags.restrict_tags`)."""
    return restrict_tags(list(tags), labels)
