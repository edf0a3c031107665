"""``tokner.TokenNER.v1``: token-level NER as a spacy-llm task, with exact offsets.

The task asks for one label per token, as in Lu et al. (2024): the prompt lists a
sentence (or, with ``unit = "doc"``, the whole Doc, sharded into runs of whole
sentences of at most ``max_unit_words`` words) one token per line, and the
model answers one ``token : label`` line per token. The answer is aligned back
to the Doc's own tokens (:func:`tokner.answers.align.align_answer`), so ``Doc.ents``
always sit on exact token boundaries, whatever the model wrote.

Like spacy-llm's built-in tasks, the pieces are swappable from the config: the
Jinja template (``template``, default ``templates/token_ner.v2.jinja``), the
response parser (``parse_responses``), the scorer (``scorer``, default
``tokner.paper_ner_scorer.v1``), demonstrations (``examples``: fixed or
retrieved) and knowledge passages (``knowledge``). Each sentence is one "shard"
for spacy-llm, so any spacy-llm model (one string prompt in, one string out)
works unchanged.

Per-doc alignment statistics go to ``doc._.tokner_llm`` (a dict, kept by
spacy-llm's cache) and are summed over the run in :attr:`TokenNERTask.alignment_totals`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import jinja2
import jinja2.sandbox
import srsly
from spacy import util
from spacy.language import Language
from spacy.tokens import Doc, SpanGroup
from spacy.training import Example

from spacy_llm.registry import registry

from tokner.answers.align import AlignStats, align_answer, sum_stats
from tokner.answers.paper_format import render_tokens
from tokner.scoring.scorer import PAPER_LABELS, score_paper_ner
from tokner.answers.tags import sentence_token_lists, set_ents_from_tags
from tokner.llm.retrieval import render_demo

logger = logging.getLogger(__name__)
TEMPLATE_DIR = Path(__file__).parent / "templates"
EXTENSION = "tokner_llm"

DEFAULT_LABEL_DEFINITIONS: Dict[str, str] = {
    "DISEASE": "a disease or disorder that is not rare (a condition of abnormal structure or function with "
               "specific signs or symptoms), e.g. 'diabetes', 'cancer', 'infection'.",
    "RAREDISEASE": "a rare disease, i.e. one affecting fewer than 200,000 people in the US (or 1 in 2,000 in "
                   "Europe), e.g. 'Marfan syndrome', 'Fabry disease'.",
    "SKINRAREDISEASE": "a rare disease that mainly affects the skin, e.g. 'epidermolysis bullosa', "
                       "'harlequin ichthyosis'.",
    "SIGN": "an objective finding of a disease that others (e.g. a physician) can observe or measure, such as "
            "physical findings or test results, e.g. 'enlarged liver', 'high blood pressure'.",
    "SYMPTOM": "a subjective experience of a disease reported by the patient, e.g. 'pain', 'fatigue', "
               "'nausea'.",
    "ANAPHOR": "an expression that refers back to a rare disease mentioned earlier, e.g. 'the disorder', "
               "'this syndrome'.",
}


def read_template(name: str = "token_ner.v2") -> str:
    """A template shipped with tokner (``templates/NAME.jinja``)."""
    path = TEMPLATE_DIR / f"{name}.jinja"
    if not path.exists():
        raise FileNotFoundError(f"no tokner template {name!r} in {TEMPLATE_DIR}")
    return path.read_text(encoding="utf-8")


# v2 puts the fixed instruction before the knowledge passages (v1 had them first), so every
# prompt starts with the same ~390 tokens (SmolLM2 chat template) that a local model computes
# once (``share_head``) and a server's prefix cache keeps; without passages the two render
# the same prompt. RAG prompts on the first 55 dev sentences: shared prefix 45 -> ~390 of
# ~995 tokens per prompt (benchmarks/llm_eval.py timings in docs/methods.md).
DEFAULT_TEMPLATE = read_template("token_ner.v2")


class TokenPrompt(str):
    """A prompt string that also carries the words it asks about.

    Any model sees a plain ``str``; models that know the task read the attributes:
    ``tokner.HFCausalLM.v1`` decodes constrained over ``words`` and ``labels`` (or
    scales free generation's ``max_new_tokens`` to ``len(words)``), the replay model
    matches responses by ``words``, ``tokner.OpenAICompatible.v1`` builds its server-side
    grammar from both.
    """

    words: Tuple[str, ...]
    labels: Tuple[str, ...]

    def __new__(cls, text: str, words: Sequence[str], labels: Sequence[str] = ()) -> "TokenPrompt":
        obj = super().__new__(cls, text)
        obj.words = tuple(words)
        obj.labels = tuple(labels)
        return obj

    def __reduce__(self):
        return (TokenPrompt, (str(self), self.words, self.labels))


def _split_labels(labels: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(labels, str):
        labels = [l for l in labels.split(",")]
    out = []
    for l in labels:
        l = l.strip()
        if l and l not in out:
            out.append(l)
    return out


def parse_responses(
    task: "TokenNERTask", shards: Iterable[Iterable[Doc]], responses: Iterable[Iterable[str]]
) -> Iterable[List[Tuple[List[str], AlignStats]]]:
    """Default response parser: per doc, ``(tags, stats)`` for each prompted unit.

    Model output never fails the pipeline: a missing answer is empty (all ``O``), a
    non-string answer is read as its ``str``. An exception while aligning is a bug, not
    model output: it is logged with its traceback, counted (``parse_errors`` in the
    doc's alignment statistics) and the unit is tagged all ``O``."""
    for doc_shards, doc_responses in zip(shards, responses):
        doc = next(iter(doc_shards))
        units = task.units(doc)
        answers = list(doc_responses)
        out = []
        for k, unit in enumerate(units):
            answer = answers[k] if k < len(answers) else ""
            if answer is None:
                answer = ""
            words = [doc[i].text for i in unit]
            try:
                out.append(align_answer(words, answer if isinstance(answer, str) else str(answer), task.labels))
            except Exception:  # a code error: keep the pipeline running, but say so
                logger.exception("tokner.TokenNER.v1: aligning the answer for %r failed; the unit is tagged O",
                                 " ".join(words)[:80])
                tags, stats = align_answer(words, "", task.labels)
                stats.parse_errors = 1
                out.append((tags, stats))
        yield out


class TokenNERTask:
    """Token-level NER task (see module docstring)."""

    def __init__(
        self,
        labels: Sequence[str],
        template: str,
        label_definitions: Dict[str, str],
        examples: Optional[Any],
        knowledge: Optional[Any],
        unit: str,
        parse_responses: Callable,
        scorer: Callable[..., Dict[str, Any]],
        max_unit_words: Optional[int] = None,
        spans_key: Optional[str] = "llm",
    ):
        if unit not in ("sentence", "doc"):
            raise ValueError(f"tokner.TokenNER.v1: unit must be 'sentence' or 'doc', got {unit!r}")
        if max_unit_words is not None and int(max_unit_words) < 1:
            raise ValueError(f"tokner.TokenNER.v1: max_unit_words must be >= 1 or null, got {max_unit_words!r}")
        self._max_unit_words = int(max_unit_words) if max_unit_words else None
        self._spans_key = spans_key
        self._labels = list(labels)
        self._template = template
        self._label_definitions = dict(label_definitions)
        self._examples = examples
        self._knowledge = knowledge
        self._unit = unit
        self._parse_responses = parse_responses
        self._scorer = scorer
        self._jinja = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(template)
        self.alignment_totals: Dict[str, int] = sum_stats([])
        if not Doc.has_extension(EXTENSION):
            Doc.set_extension(EXTENSION, default=None)

    # --- spacy-llm task protocol ---------------------------------------------------

    def units(self, doc: Doc) -> List[List[int]]:
        """Token indices of each prompted unit (whitespace tokens never included)."""
        sents = sentence_token_lists(doc)
        if self._unit == "doc":
            return pack_sentences(sents, self._max_unit_words)
        return sents

    def render(self, words: Sequence[str], examples: Sequence[Dict] = (), passages: Sequence[str] = ()) -> TokenPrompt:
        text = self._jinja.render(
            input=render_tokens(words),
            tokens=list(words),
            labels=self._labels,
            label_definitions=self._label_definitions,
            examples=[render_demo(d) for d in examples],
            passages=list(passages),
        )
        return TokenPrompt(text, words, self._labels)

    def generate_prompts(
        self, docs: Iterable[Doc], context_length: Optional[int] = None
    ) -> Iterable[Tuple[Iterable[str], Iterable[Doc]]]:
        """One prompt per sentence (or per doc), with the Doc as each prompt's "shard"."""
        for doc in docs:
            word_lists = [[doc[i].text for i in u] for u in self.units(doc)]
            demos = self._examples.select_many(word_lists) if self._examples is not None else [[]] * len(word_lists)
            passages = (self._knowledge.select_many(word_lists) if self._knowledge is not None
                        else [[]] * len(word_lists))
            prompts = [self.render(w, e, p) for w, e, p in zip(word_lists, demos, passages)]
            # A Doc without tokens to label still travels, so parse_responses can return it.
            yield prompts, [doc] * max(1, len(prompts))

    def parse_responses(self, shards: Iterable[Iterable[Doc]], responses: Iterable[Iterable[str]]) -> Iterable[Doc]:
        """Align each answer to its unit's tokens and set ``doc.ents`` from the tags.

        Answers that carry label probabilities (constrained decoding) also give each
        entity a score, the product of its tokens' label probabilities, in
        ``doc.spans[spans_key]`` (``attrs["scores"]``), as the LoRA pipe does."""
        shards_list = [list(s) for s in shards]
        responses_list = [list(r) for r in responses]
        parsed_all = self._parse_responses(self, shards_list, responses_list)
        for doc_shards, doc_responses, parsed in zip(shards_list, responses_list, parsed_all):
            doc = doc_shards[0]
            tags = ["O"] * len(doc)
            probs: Optional[List[float]] = [1.0] * len(doc)
            unit_stats: List[AlignStats] = []
            for k, (unit, (unit_tags, stats)) in enumerate(zip(self.units(doc), parsed)):
                for i, t in zip(unit, unit_tags):
                    tags[i] = t
                unit_stats.append(stats)
                unit_probs = getattr(doc_responses[k], "probs", None) if k < len(doc_responses) else None
                if probs is not None and unit_probs is not None and len(unit_probs) == len(unit):
                    for i, pr in zip(unit, unit_probs):
                        probs[i] = pr
                else:
                    probs = None
            set_ents_from_tags(doc, tags)
            if self._spans_key and probs is not None and unit_stats:
                scores = []
                for ent in doc.ents:
                    s = 1.0
                    for tok in ent:
                        s *= probs[tok.i]
                    scores.append(float(s))
                group = SpanGroup(doc, name=self._spans_key, spans=list(doc.ents))
                group.attrs["scores"] = scores
                doc.spans[self._spans_key] = group
            summary = sum_stats(unit_stats)
            summary["units"] = summary.pop("answers")
            doc._.set(EXTENSION, summary)
            for k, v in summary.items():
                self.alignment_totals[k] = self.alignment_totals.get(k, 0) + v
            if summary.get("unknown_labels"):
                # model output, so not an error; but a label the config does not know never
                # enters Doc.ents, and the user should hear about it (counted per doc, too)
                logger.warning("tokner.TokenNER.v1: %d answer line(s) of a doc had a label outside %s "
                               "(read as O; %d so far)", summary["unknown_labels"], self._labels,
                               self.alignment_totals["unknown_labels"])
            yield doc

    def scorer(self, examples: Iterable[Example]) -> Dict[str, Any]:
        return self._scorer(examples)

    def initialize(self, get_examples: Callable[[], Iterable[Example]], nlp: Language,
                   labels: List[str] = [], **kwargs: Any) -> None:
        """Build the demonstration / passage indexes (``nlp.initialize``, ``spacy assemble``)."""
        if labels:
            self._labels = _split_labels(labels)
        for sel in (self._examples, self._knowledge):
            if sel is not None:
                sel.initialize(nlp, self._labels)

    # --- labels (spacy-llm's LabeledTask protocol) ------------------------------------

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self._labels)

    def add_label(self, label: str, label_definition: Optional[str] = None) -> int:
        if label in self._labels:
            return 0
        self._labels.append(label)
        if label_definition:
            self._label_definitions[label] = label_definition
        return 1

    def clear(self) -> None:
        self._labels = []

    @property
    def label_definitions(self) -> Dict[str, str]:
        return dict(self._label_definitions)

    @property
    def prompt_template(self) -> str:
        """The template plus a Jinja comment fingerprinting everything else that
        shapes a prompt, so spacy-llm's cache refuses a folder made with other settings."""
        settings = {
            "labels": self._labels,
            "definitions": self._label_definitions,
            "unit": self._unit,
            "max_unit_words": self._max_unit_words,
            "examples": self._examples.fingerprint() if self._examples is not None else None,
            "knowledge": self._knowledge.fingerprint() if self._knowledge is not None else None,
        }
        return self._template + "\n{# tokner: " + json.dumps(settings, sort_keys=True) + " #}\n"

    # --- serialisation ----------------------------------------------------------------

    def get_cfg(self) -> Dict[str, Any]:
        return {"labels": self._labels, "label_definitions": self._label_definitions, "unit": self._unit,
                "max_unit_words": self._max_unit_words, "spans_key": self._spans_key}

    def set_cfg(self, cfg: Dict[str, Any]) -> None:
        self._labels = list(cfg["labels"])
        self._label_definitions = dict(cfg["label_definitions"])
        self._unit = cfg["unit"]
        self._max_unit_words = cfg.get("max_unit_words")
        self._spans_key = cfg.get("spans_key", self._spans_key)

    def to_disk(self, path: Path, *, exclude: Tuple[str, ...] = tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        serialize = {"cfg": lambda p: srsly.write_json(p, self.get_cfg())}
        if self._examples is not None:
            serialize["examples"] = lambda p: self._examples.to_disk(p)
        if self._knowledge is not None:
            serialize["knowledge"] = lambda p: self._knowledge.to_disk(p)
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path: Path, *, exclude: Tuple[str, ...] = tuple()) -> "TokenNERTask":
        path = Path(path)
        deserialize = {"cfg": lambda p: self.set_cfg(srsly.read_json(p))}
        if self._examples is not None:
            deserialize["examples"] = lambda p: self._examples.from_disk(p)
        if self._knowledge is not None:
            deserialize["knowledge"] = lambda p: self._knowledge.from_disk(p)
        util.from_disk(path, deserialize, exclude)
        return self

    def to_bytes(self, *, exclude: Tuple[str, ...] = tuple()) -> bytes:
        """Bytes of the task's folder (indexes included)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.to_disk(Path(tmp) / "task", exclude=exclude)
            files = {str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
        return srsly.msgpack_dumps(files)

    def from_bytes(self, bytes_data: bytes, *, exclude: Tuple[str, ...] = tuple()) -> "TokenNERTask":
        import tempfile

        files = srsly.msgpack_loads(bytes_data)
        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in files.items():
                p = Path(tmp) / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            self.from_disk(Path(tmp) / "task", exclude=exclude)
        return self


def summarise_alignment(items: Iterable[Any]) -> Dict[str, float]:
    """Sum ``doc._.tokner_llm`` dicts (or Docs) and add ``fully_aligned_fraction``,
    ``aligned_word_fraction`` (the figures the README reports)."""
    total: Dict[str, float] = {}
    for it in items:
        d = it._.get(EXTENSION) if isinstance(it, Doc) else it
        if not d:
            continue
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    units = total.get("units", 0)
    total["fully_aligned_fraction"] = total.get("fully_aligned", 0) / units if units else 0.0
    words = total.get("words", 0)
    total["aligned_word_fraction"] = total.get("aligned", 0) / words if words else 0.0
    return total


@registry.llm_tasks("tokner.TokenNER.v1")
def make_token_ner_task(
    labels: Union[str, List[str]] = list(PAPER_LABELS),
    template: str = DEFAULT_TEMPLATE,
    label_definitions: Optional[Dict[str, str]] = None,
    examples: Optional[Any] = None,
    knowledge: Optional[Any] = None,
    unit: str = "sentence",
    parse_responses: Optional[Callable] = None,
    scorer: Optional[Callable[..., Dict[str, Any]]] = None,
    max_unit_words: Optional[int] = 300,
    spans_key: Optional[str] = "llm",
) -> TokenNERTask:
    """Token-level NER task.

    labels: entity types (list or comma-separated); default the paper's five.
    template: Jinja prompt template (read a file with ``spacy.FileReader.v1``).
    label_definitions: label -> definition; defaults to tokner's RareDis definitions.
    examples: demonstrations (``tokner.FixedExamples.v1`` / ``tokner.SimilarExamples.v1``), None for zero-shot.
    knowledge: passages for the prompt (``tokner.KnowledgePassages.v1``), or None.
    unit: "sentence" (one prompt per sentence, the paper's setting) or "doc".
    max_unit_words: with unit="doc", a Doc longer than this many words is sharded into
        runs of whole sentences of at most this many words (a longer sentence is its own
        shard), so each prompt and its one-line-per-word answer fit the model's context;
        null: one prompt per Doc whatever its length. Ignored for unit="sentence".
    parse_responses: response parser (default: :func:`parse_responses`, alignment-based).
    spans_key: where entity scores go when the model keeps label probabilities
        (``tokner.HFCausalLM.v1`` constrained): ``doc.spans[spans_key]`` holds
        ``doc.ents`` with ``attrs["scores"]``; null: not kept.
    scorer: scorer (default: ``tokner.paper_ner_scorer.v1`` with these labels' paper types).
    """
    labels_list = _split_labels(labels)
    defs = dict(DEFAULT_LABEL_DEFINITIONS)
    defs.update(label_definitions or {})
    defs = {k: v for k, v in defs.items() if k in labels_list}
    return TokenNERTask(
        labels=labels_list,
        template=template,
        label_definitions=defs,
        examples=examples,
        knowledge=knowledge,
        unit=unit,
        parse_responses=parse_responses or parse_responses_default(),
        scorer=scorer or score_paper_ner,
        max_unit_words=max_unit_words,
        spans_key=spans_key,
    )


def pack_sentences(sents: List[List[int]], max_words: Optional[int]) -> List[List[int]]:
    """Greedily join consecutive sentences into units of at most ``max_words`` tokens
    (None: one unit). A sentence longer than ``max_words`` stays whole, as its own unit:
    units never cut a sentence."""
    units: List[List[int]] = []
    for sent in sents:
        if units and (max_words is None or len(units[-1]) + len(sent) <= max_words):
            units[-1].extend(sent)
        else:
            units.append(list(sent))
    return [u for u in units if u]


@registry.llm_misc("tokner.TokenNERParser.v1")
def parse_responses_default() -> Callable:
    """The default, alignment-based response parser (for explicit configs)."""
    return parse_responses
