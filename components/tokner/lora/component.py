"""``tokner_lora_ner``: a LoRA-tuned causal LM as a spaCy NER pipe.

The pipe holds the base model's name (hub id or local folder) and a LoRA adapter.
``to_disk`` writes the adapter in peft's own format (``adapter_config.json``,
``adapter_model.safetensors``) into the pipe's folder; ``from_disk`` (and so
``spacy.load``) loads the base model and attaches it again. Prediction is one
prompt per sentence (whitespace tokens are never sent), with constrained decoding
by default (always one valid tag per token, entity probabilities in
``doc.spans[spans_key]`` with ``attrs["scores"]``) or the paper's free generation.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import srsly
from spacy.language import Language
from spacy.tokens import Doc, Span, SpanGroup
from spacy.util import minibatch

from ..scorer import ALL_LABELS
from ..tags import sentence_words, spans_from_tags
from ..decoding.constrained import check_call_cost, check_label_bias, check_speculate

logger = logging.getLogger(__name__)

DECODINGS = ("constrained", "free")


class LoraNER:
    """A LoRA-tuned generator that tags every token of each sentence."""

    def __init__(
        self,
        nlp: Language,
        name: str = "tokner_lora_ner",
        *,
        base_model: str,
        adapter: Optional[str] = None,
        labels: Sequence[str] = ALL_LABELS,
        instruction: str = "short",
        input_format: str = "lines",
        decoding: str = "constrained",
        bio_constraint: bool = True,
        batch_size: int = 16,
        call_cost: Union[float, str, None] = "auto",
        speculate: int = 8,
        label_bias: Optional[Dict[str, float]] = None,
        max_new_tokens_factor: float = 1.25,
        merge_adapter: bool = False,
        grouped_attention: bool = True,
        device: str = "auto",
        torch_dtype: str = "auto",
        load_in_4bit: bool = False,
        torch_threads: int = 0,
        spans_key: Optional[str] = "lora",
        scorer: Optional[Callable] = None,
    ):
        if decoding not in DECODINGS:
            raise ValueError(f"[{name}] decoding must be one of {DECODINGS}, got {decoding!r}")
        if not labels:
            raise ValueError(f"[{name}] needs at least one label")
        try:
            check_call_cost(call_cost)
            check_speculate(speculate)
            label_bias = check_label_bias(label_bias, labels)
        except ValueError as e:
            raise ValueError(f"[{name}] {e}") from None
        self.nlp = nlp
        self.name = name
        self.cfg: Dict[str, Any] = {
            "base_model": base_model, "labels": list(labels), "instruction": instruction,
            "input_format": input_format, "decoding": decoding, "bio_constraint": bio_constraint,
            "batch_size": batch_size, "call_cost": call_cost, "speculate": speculate,
            "label_bias": label_bias,
            "max_new_tokens_factor": max_new_tokens_factor,
            "merge_adapter": merge_adapter, "grouped_attention": grouped_attention, "device": device, "torch_dtype": torch_dtype,
            "load_in_4bit": load_in_4bit, "torch_threads": torch_threads, "spans_key": spans_key,
        }
        self.scorer = scorer
        self.adapter = adapter
        self._model = None
        self._tokenizer = None
        self._codec = None
        self._lora_config = None
        self._adapter_state: Optional[Dict[str, Any]] = None
        self.last_stats = None

    # -- model -----------------------------------------------------------------
    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"])

    @property
    def decoding(self) -> str:
        return self.cfg["decoding"]

    @decoding.setter
    def decoding(self, value: str) -> None:
        if value not in DECODINGS:
            raise ValueError(f"[{self.name}] decoding must be one of {DECODINGS}, got {value!r}")
        self.cfg["decoding"] = value

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .modeling import load_tokenizer, require_lora_deps

            require_lora_deps()
            self._tokenizer = load_tokenizer(self.cfg["base_model"])
        return self._tokenizer

    @property
    def codec(self):
        if self._codec is None:
            from .prompt import PromptCodec

            self._codec = PromptCodec(self.tokenizer, self.labels, self.cfg["instruction"], self.cfg["input_format"])
        return self._codec

    @property
    def lm(self):
        """The base model with the adapter (merged if ``merge_adapter``), loaded on first use.

        (Not called ``model``: spaCy probes ``pipe.model`` with ``hasattr`` while it
        links components, which must not load a multi-GB model.)"""
        if self._model is None:
            if self.adapter is None and self._adapter_state is None:
                raise ValueError(
                    f"[{self.name}] has no adapter: train one (python -m tokner.lora train) or set "
                    f"components.{self.name}.adapter to a peft adapter folder"
                )
            self._load(self.adapter)
        return self._model

    def _load(self, adapter_dir) -> None:
        from .modeling import adapter_state, attach_adapter, load_base_model, require_lora_deps

        require_lora_deps()
        if self.cfg.get("torch_threads"):
            import torch

            torch.set_num_threads(int(self.cfg["torch_threads"]))  # process-wide, opt-in
        base = load_base_model(self.cfg["base_model"], self.cfg["device"], self.cfg["torch_dtype"], self.cfg["load_in_4bit"])
        peft_model = attach_adapter(base, adapter_dir)
        self._lora_config, self._adapter_state = adapter_state(peft_model)
        self._set_model(peft_model)

    def _set_model(self, peft_model) -> None:
        model = peft_model
        if self.cfg["merge_adapter"] and not self.cfg["load_in_4bit"]:
            model = peft_model.merge_and_unload()
        model.eval()
        if self.cfg["grouped_attention"]:
            from ..decoding.kvcache import use_grouped_attention

            use_grouped_attention(model)
        self._model = model

    def set_adapter_from(self, peft_model) -> None:
        """Use a (trained) PeftModel in place: keep a copy of its adapter for ``to_disk``."""
        from .modeling import adapter_state

        self._lora_config, self._adapter_state = adapter_state(peft_model)
        self._model = peft_model
        peft_model.eval()

    # -- prediction ------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        return next(iter(self.pipe([doc])))

    def pipe(self, stream: Iterable[Doc], *, batch_size: Optional[int] = None) -> Iterator[Doc]:
        size = 64 if batch_size is None else max(batch_size, 1)
        for docs in minibatch(stream, size):
            yield from self.predict_docs(docs)

    def predict_sentences(self, sentences: Sequence[Sequence[str]], progress: bool = False):
        """[(tags, probabilities)] for word lists; stats of the run in ``self.last_stats``."""
        from ..decoding.constrained import constrained_decode, free_generate

        if self.decoding == "constrained":
            out, stats = constrained_decode(self.lm, self.codec, sentences, self.cfg["batch_size"],
                                            bio=self.cfg["bio_constraint"], progress=progress,
                                            call_cost=self.cfg["call_cost"], label_bias=self.cfg.get("label_bias"),
                                            speculate=self.cfg["speculate"])
        else:
            if self.cfg.get("label_bias"):
                logger.warning("[%s] label_bias applies to constrained decoding only; free generation ignores it",
                               self.name)
            out, stats = free_generate(self.lm, self.codec, sentences, self.cfg["batch_size"],
                                       self.cfg["max_new_tokens_factor"], progress=progress)
        self.last_stats = stats
        return out

    def predict_docs(self, docs: Sequence[Doc], progress: bool = False) -> List[Doc]:
        docs = list(docs)
        sent_index, sentences = sentence_words(docs)
        results = iter(self.predict_sentences(sentences, progress=progress) if sentences else [])
        for doc, sents in zip(docs, sent_index):
            tags = ["O"] * len(doc)
            probs = [1.0] * len(doc)
            for sent in sents:
                stags, sprobs = next(results)
                for i, t, p in zip(sent, stags, sprobs):
                    tags[i] = t
                    probs[i] = p
            self.set_annotations(doc, tags, probs)
        return docs

    def set_annotations(self, doc: Doc, tags: Sequence[str], probs: Sequence[float]) -> None:
        sent_starts = [bool(t.is_sent_start) for t in doc] if doc.has_annotation("SENT_START") else None
        spans = spans_from_tags(tags, sent_starts, [t.is_space for t in doc])
        ents = [Span(doc, s, e, label=l) for s, e, l in spans]
        doc.ents = ents
        key = self.cfg["spans_key"]
        if key:
            scores = []
            for ent in ents:
                p = 1.0
                for tok in ent:
                    if not tok.is_space:
                        p *= probs[tok.i]
                scores.append(float(p))
            group = SpanGroup(doc, name=key, spans=ents)
            group.attrs["scores"] = scores
            doc.spans[key] = group

    # -- spaCy plumbing -----------------------------------------------------------
    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None,
                   labels: Optional[Sequence[str]] = None) -> None:
        if labels:
            self.cfg["labels"] = list(labels)
            self._codec = None

    def score(self, examples, **kwargs) -> Dict[str, Any]:
        if self.scorer is None:
            from ..scorer import score_paper_ner

            return score_paper_ner(examples, **kwargs)
        return self.scorer(examples, **kwargs)

    def to_disk(self, path, *, exclude=tuple()) -> None:
        from .modeling import save_adapter

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_json(path / "cfg.json", {k: v for k, v in self.cfg.items()})
        if self._adapter_state is None and self.adapter is not None:
            from .modeling import ADAPTER_CONFIG, ADAPTER_WEIGHTS

            src = Path(self.adapter)
            for fname in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                (path / fname).write_bytes((src / fname).read_bytes())
            return
        if self._adapter_state is None:
            raise ValueError(f"[{self.name}] has no adapter to save: train one first")
        save_adapter(path, self._lora_config, self._adapter_state)

    def from_disk(self, path, *, exclude=tuple()) -> "LoraNER":
        from .modeling import ADAPTER_CONFIG

        path = Path(path)
        if (path / "cfg.json").exists():
            saved = srsly.read_json(path / "cfg.json")
            # the pipeline config (which spacy.load overrides) wins; cfg.json fills gaps
            for k, v in saved.items():
                self.cfg.setdefault(k, v)
        if not (path / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(f"[{self.name}] no {ADAPTER_CONFIG} in {path}")
        self._model = None
        self._codec = None
        self.adapter = None
        self._load(path)
        return self

    def to_bytes(self, *, exclude=tuple()) -> bytes:
        raise NotImplementedError(f"[{self.name}] holds a base model reference and an adapter: use to_disk/from_disk")

    def from_bytes(self, data: bytes, *, exclude=tuple()):
        raise NotImplementedError(f"[{self.name}] holds a base model reference and an adapter: use to_disk/from_disk")


@Language.factory(
    "tokner_lora_ner",
    assigns=["doc.ents", "doc.spans"],
    requires=["token.is_sent_start"],
    default_config={
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "adapter": None,
        "labels": list(ALL_LABELS),
        "instruction": "short",
        "input_format": "lines",
        "decoding": "constrained",
        "bio_constraint": True,
        "batch_size": 16,
        "call_cost": "auto",
        "speculate": 8,
        "label_bias": {},
        "max_new_tokens_factor": 1.25,
        "merge_adapter": False,
        "grouped_attention": True,
        "device": "auto",
        "torch_dtype": "auto",
        "load_in_4bit": False,
        "torch_threads": 0,
        "spans_key": "lora",
        "scorer": {"@scorers": "tokner.paper_ner_scorer.v1"},
    },
    default_score_weights={"paper_avg_f": 0.5, "paper_micro5_f": 0.5, "ents_f": 0.0, "ents_p": 0.0, "ents_r": 0.0},
)
def make_lora_ner(
    nlp: Language,
    name: str,
    base_model: str,
    adapter: Optional[str],
    labels: List[str],
    instruction: str,
    input_format: str,
    decoding: str,
    bio_constraint: bool,
    batch_size: int,
    call_cost: Union[float, str, None],
    speculate: int,
    label_bias: Dict[str, float],
    max_new_tokens_factor: float,
    merge_adapter: bool,
    grouped_attention: bool,
    device: str,
    torch_dtype: str,
    load_in_4bit: bool,
    torch_threads: int,
    spans_key: Optional[str],
    scorer: Optional[Callable],
) -> LoraNER:
    return LoraNER(
        nlp, name, base_model=base_model, adapter=adapter, labels=labels, instruction=instruction,
        input_format=input_format, decoding=decoding, bio_constraint=bio_constraint, batch_size=batch_size,
        call_cost=call_cost, speculate=speculate, label_bias=label_bias, max_new_tokens_factor=max_new_tokens_factor, merge_adapter=merge_adapter,
        grouped_attention=grouped_attention, device=device,
        torch_dtype=torch_dtype, load_in_4bit=load_in_4bit, torch_threads=torch_threads, spans_key=spans_key, scorer=scorer,
    )
