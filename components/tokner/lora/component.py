"""``tokner_lora_ner``: a LoRA-tuned causal LM as a spaCy NER pipe.

The pipe holds the base model's name (hub id or local folder) and a LoRA adapter.
``to_disk`` writes into the pipe's folder ``cfg.json``, the adapter in peft's own
format (``adapter_config.json``, ``adapter_model.safetensors``) and, when the base
is bundled (``bundle_base``: by default when ``base_model`` is a local folder), a
compact copy of the base model in ``base/`` (safetensors, bfloat16 unless stored
narrower, with its config and tokenizer files). ``from_disk`` (and so
``spacy.load``) loads the base from ``base/`` when it is there, else from
``base_model``, and attaches the adapter again: a pipeline with a bundled base loads
from any working directory and after ``spacy package`` on any machine (see
docs/packaging.md). ``to_bytes``/``from_bytes`` carry the same folder as msgpack.

Prediction is one prompt per sentence (whitespace tokens are never sent), with
constrained decoding by default (always one valid tag per token, entity
probabilities in ``doc.spans[spans_key]`` with ``attrs["scores"]``) or the paper's
free generation.
"""
from __future__ import annotations

import inspect

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import srsly
from spacy.language import Language
from spacy.tokens import Doc, Span, SpanGroup
from spacy.util import minibatch

from tokner.scoring.scorer import ALL_LABELS
from tokner.answers.tags import sentence_words, spans_from_tags
from tokner.decoding.constrained import check_call_cost, check_label_bias, check_speculate

logger = logging.getLogger(__name__)

DECODINGS = ("constrained", "free")
BASE_DIR = "base"  # the bundled base model, inside the pipe's folder


class LoraNER:
    """A LoRA-tuned generator that tags every token of each sentence.

    nlp, name: the pipeline and the pipe's name in it.
    base_model: hub id or local folder of the base causal LM (a relative path is read
        from the working directory). Used when the pipe's folder holds no bundled base.
    adapter: a peft adapter folder to start from (None: ``from_disk`` or training sets it).
    labels: entity labels; instruction, input_format: the prompt (see
        :class:`tokner.lora.prompt.PromptCodec`).
    context_sentences: how many sentences before each one (same document) its prompt
        carries as context (0: none). Set before training: an adapter is trained for one
        prompt layout.
    decoding: "constrained" (only valid tags) or "free" (the paper's free generation).
    bio_constraint: in constrained decoding, forbid an I- tag that continues nothing.
    batch_size: sentences per model call.
    call_cost, speculate, label_bias: constrained decoding's width cap per call, words
        whose tags are guessed ahead and verified in one call, and log-probability
        offsets per label
        (see :mod:`tokner.decoding.constrained`).
    max_new_tokens_factor: free generation's budget, in tokens per input token.
    merge_adapter: merge the adapter into the base weights once loaded (not with 4-bit).
    grouped_attention: attention without repeating grouped key/value heads.
    device, torch_dtype, load_in_4bit, torch_threads: how the model is loaded
        ("auto": CUDA when available; float32 on CPU, bf16/fp16 on CUDA; torch_dtype
        "fastest": bfloat16 where the device computes it natively, as detected by
        :func:`tokner.utils.hardware.fastest_dtype`, else "auto"'s choice).
    bundle_base: "auto" (copy the base into the pipe's folder on ``to_disk`` when it
        is a local folder, not when it is a hub id), True (always, a hub model too) or
        False (never: the saved pipeline refers to ``base_model``, and ``from_disk``
        ignores a bundled copy).
    bundle_dtype: dtype of the bundled weights, "bfloat16" (default), "float16" or
        "float32"; weights stored narrower are kept as they are.
    spans_key: ``doc.spans`` key for the entities with their probabilities (None: none).
    scorer: the scoring function (default: the paper's scorer).
    """

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
        context_sentences: int = 0,
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
        bundle_base: Union[bool, str] = "auto",
        bundle_dtype: str = "bfloat16",
        spans_key: Optional[str] = "lora",
        scorer: Optional[Callable] = None,
    ):
        from tokner.lora.modeling import BUNDLE_DTYPES

        if decoding not in DECODINGS:
            raise ValueError(f"[{name}] decoding must be one of {DECODINGS}, got {decoding!r}")
        if not labels:
            raise ValueError(f"[{name}] needs at least one label")
        if not (isinstance(bundle_base, bool) or bundle_base == "auto"):
            raise ValueError(f"[{name}] bundle_base must be \"auto\", true or false, got {bundle_base!r}")
        if bundle_dtype not in BUNDLE_DTYPES:
            raise ValueError(f"[{name}] bundle_dtype must be one of {BUNDLE_DTYPES}, got {bundle_dtype!r}")
        try:
            from tokner.lora.prompt import check_context_sentences

            check_context_sentences(context_sentences)
            check_call_cost(call_cost)
            check_speculate(speculate)
            label_bias = check_label_bias(label_bias, labels)
        except ValueError as e:
            raise ValueError(f"[{name}] {e}") from None
        self.nlp = nlp
        self.name = name
        self.cfg: Dict[str, Any] = {
            "base_model": base_model, "labels": list(labels), "instruction": instruction,
            "input_format": input_format, "context_sentences": context_sentences, "decoding": decoding, "bio_constraint": bio_constraint,
            "batch_size": batch_size, "call_cost": call_cost, "speculate": speculate,
            "label_bias": label_bias,
            "max_new_tokens_factor": max_new_tokens_factor,
            "merge_adapter": merge_adapter, "grouped_attention": grouped_attention, "device": device, "torch_dtype": torch_dtype,
            "load_in_4bit": load_in_4bit, "torch_threads": torch_threads,
            "bundle_base": bundle_base, "bundle_dtype": bundle_dtype, "spans_key": spans_key,
        }
        self.scorer = scorer
        self.adapter = adapter
        self._model = None
        self._tokenizer = None
        self._codec = None
        self._lora_config = None
        self._adapter_state: Optional[Dict[str, Any]] = None
        self._bundled_base: Optional[Path] = None  # the bundled base this pipe was loaded from
        self._bytes_dir: Optional[tempfile.TemporaryDirectory] = None  # holds it after from_bytes
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
    def base_source(self) -> str:
        """Where the base model and its tokenizer load from: the bundled copy the pipe was
        loaded with, else ``base_model``."""
        return str(self._bundled_base) if self._bundled_base is not None else self.cfg["base_model"]

    def _override_hint(self) -> str:
        return (f"point the pipe to the base model with the config key components.{self.name}.base_model, e.g. "
                f"spacy.load(path, config={{\"components\": {{\"{self.name}\": {{\"base_model\": "
                f"\"/models/SmolLM2-135M-Instruct\"}}}}}})")

    def _checked_base_source(self) -> str:
        """``base_source``, or a FileNotFoundError that says how to point the pipe elsewhere."""
        from tokner.lora.modeling import is_local_model

        source = self.base_source
        if self._bundled_base is None and is_local_model(source) and not Path(source).expanduser().exists():
            raise FileNotFoundError(
                f"[{self.name}] base model folder not found: {source!r} (a relative path is read from the working "
                f"directory, {str(Path.cwd())!r}) and the pipe has no bundled base ({BASE_DIR}/ in its folder): "
                + self._override_hint()
            )
        return source

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokner.lora.modeling import load_tokenizer, require_lora_deps

            require_lora_deps()
            source = self._checked_base_source()
            try:
                self._tokenizer = load_tokenizer(source)
            except OSError as e:
                raise OSError(f"[{self.name}] cannot load the tokenizer of {source!r}: {e}\n{self._override_hint()}") from e
        return self._tokenizer

    @property
    def codec(self):
        if self._codec is None:
            from tokner.lora.prompt import PromptCodec

            self._codec = PromptCodec(self.tokenizer, self.labels, self.cfg["instruction"], self.cfg["input_format"],
                                      self.cfg.get("context_sentences", 0))
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
        from tokner.lora.modeling import adapter_state, attach_adapter, load_base_model, require_lora_deps

        require_lora_deps()
        if self.cfg.get("torch_threads"):
            import torch

            torch.set_num_threads(int(self.cfg["torch_threads"]))  # process-wide, opt-in
        source = self._checked_base_source()
        try:
            base = load_base_model(source, self.cfg["device"], self.cfg["torch_dtype"], self.cfg["load_in_4bit"])
        except OSError as e:
            raise OSError(f"[{self.name}] cannot load the base model {source!r}: {e}\n{self._override_hint()}") from e
        peft_model = attach_adapter(base, adapter_dir)
        self._lora_config, self._adapter_state = adapter_state(peft_model)
        self._set_model(peft_model)

    def _set_model(self, peft_model) -> None:
        model = peft_model
        if self.cfg["merge_adapter"] and not self.cfg["load_in_4bit"]:
            model = peft_model.merge_and_unload()
        model.eval()
        if self.cfg["grouped_attention"]:
            from tokner.decoding.kvcache import use_grouped_attention

            use_grouped_attention(model)
        self._model = model

    def set_adapter_from(self, peft_model) -> None:
        """Use a (trained) PeftModel in place: keep a copy of its adapter for ``to_disk``."""
        from tokner.lora.modeling import adapter_state

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

    def predict_sentences(self, sentences: Sequence[Sequence[str]], progress: bool = False,
                          contexts: Optional[Sequence[Sequence[str]]] = None):
        """[(tags, probabilities)] for word lists; stats of the run in ``self.last_stats``.

        contexts: each sentence's context words (with ``context_sentences`` > 0; None:
        every sentence without context, as a document's first)."""
        from tokner.decoding.constrained import constrained_decode, free_generate

        prompts = None
        if self.codec.context_sentences:
            if contexts is not None and len(contexts) != len(sentences):
                raise ValueError(f"[{self.name}] {len(contexts)} contexts for {len(sentences)} sentences")
            prompts = [self.codec.prompt_ids(w, contexts[k] if contexts is not None else [])
                       for k, w in enumerate(sentences)]
        if self.decoding == "constrained":
            out, stats = constrained_decode(self.lm, self.codec, sentences, self.cfg["batch_size"],
                                            bio=self.cfg["bio_constraint"], progress=progress,
                                            call_cost=self.cfg["call_cost"], label_bias=self.cfg.get("label_bias"),
                                            speculate=self.cfg["speculate"], prompts=prompts)
        else:
            if self.cfg.get("label_bias"):
                logger.warning("[%s] label_bias applies to constrained decoding only; free generation ignores it",
                               self.name)
            out, stats = free_generate(self.lm, self.codec, sentences, self.cfg["batch_size"],
                                       self.cfg["max_new_tokens_factor"], progress=progress, prompts=prompts)
        self.last_stats = stats
        return out

    def predict_docs(self, docs: Sequence[Doc], progress: bool = False) -> List[Doc]:
        docs = list(docs)
        sent_index, sentences = sentence_words(docs)
        contexts = None
        if self.cfg.get("context_sentences"):
            from tokner.lora.prompt import sentence_contexts

            contexts = sentence_contexts(sent_index, sentences, self.cfg["context_sentences"])
        results = iter(self.predict_sentences(sentences, progress=progress, contexts=contexts) if sentences else [])
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
            from tokner.scoring.scorer import score_paper_ner

            return score_paper_ner(examples, **kwargs)
        return self.scorer(examples, **kwargs)

    def _bundle_source(self) -> Optional[str]:
        """The base model ``to_disk`` copies into the pipe's folder, or None (``bundle_base``)."""
        from tokner.lora.modeling import is_local_model

        mode = self.cfg["bundle_base"]
        if mode is False:
            return None
        if self._bundled_base is not None:
            return str(self._bundled_base)
        base = self.cfg["base_model"]
        if is_local_model(base):
            if not Path(base).expanduser().is_dir():
                raise FileNotFoundError(
                    f"[{self.name}] cannot bundle the base model: folder not found: {base!r} (relative to "
                    f"{str(Path.cwd())!r}); set components.{self.name}.base_model to an existing folder or a hub id"
                )
            return base
        return base if mode is True else None

    def _write_adapter(self, path: Path) -> None:
        from tokner.lora.modeling import ADAPTER_CONFIG, ADAPTER_WEIGHTS, save_adapter

        if self._adapter_state is None and self.adapter is not None:
            src = Path(self.adapter)
            for fname in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                (path / fname).write_bytes((src / fname).read_bytes())
            return
        if self._adapter_state is None:
            raise ValueError(f"[{self.name}] has no adapter to save: train one first")
        save_adapter(path, self._lora_config, self._adapter_state)

    def _write_base(self, dest: Path) -> None:
        from tokner.lora.modeling import is_local_model, save_base_model

        source = self._bundle_source()
        if source is None:
            if dest.is_dir():  # a stale copy would be loaded in place of base_model
                shutil.rmtree(dest)
            base = self.cfg["base_model"]
            if is_local_model(base) and not Path(base).expanduser().is_absolute():
                logger.warning("[%s] saved without its base model (bundle_base = false) and with the relative path "
                               "base_model = %r: the pipeline loads only where that path exists; set bundle_base to "
                               "\"auto\", or override components.%s.base_model when loading", self.name, base, self.name)
            return
        if dest.is_dir() and dest.resolve() == Path(source).expanduser().resolve():
            return  # saved into the folder it was loaded from: the copy is already there
        partial = dest.with_name(f".{dest.name}.partial")
        if partial.exists():
            shutil.rmtree(partial)
        save_base_model(source, partial, self.cfg["bundle_dtype"])
        if dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)

    def to_disk(self, path, *, exclude=tuple()) -> None:
        """Write the pipe into the folder ``path``: ``cfg.json``, the adapter (peft's format)
        and, when the base is bundled (see ``bundle_base``), the base model in ``base/``.

        exclude: parts to leave out, of "cfg", "adapter" and "base".
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if "cfg" not in exclude:
            srsly.write_json(path / "cfg.json", dict(self.cfg))
        if "adapter" not in exclude:
            self._write_adapter(path)
        if "base" not in exclude:
            self._write_base(path / BASE_DIR)

    def from_disk(self, path, *, exclude=tuple()) -> "LoraNER":
        """Read a folder written by ``to_disk`` and load the model: the base from the
        bundled copy in ``path/base`` when there is one (and ``bundle_base`` is not false),
        else from ``base_model``; then the adapter.

        exclude: "base" (ignore the bundled base).
        """
        from tokner.lora.modeling import ADAPTER_CONFIG

        path = Path(path)
        # cfg.json (written by to_disk) is for people: the pipeline config, which spaCy
        # passes in full (with spacy.load's overrides), always holds every setting
        if not (path / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(f"[{self.name}] no {ADAPTER_CONFIG} in {path}")
        bundled = path / BASE_DIR
        use_bundle = "base" not in exclude and self.cfg["bundle_base"] is not False and (bundled / "config.json").exists()
        # absolute, so that a later change of working directory does not lose it
        self._bundled_base = bundled.resolve() if use_bundle else None
        previous, self._bytes_dir = self._bytes_dir, None
        self._model = None
        self._codec = None
        self._tokenizer = None
        self.adapter = None
        self._load(path)
        if previous is not None:
            previous.cleanup()
        return self

    def to_bytes(self, *, exclude=tuple()) -> bytes:
        """The folder ``to_disk`` writes (cfg, adapter, bundled base), as msgpack bytes."""
        with tempfile.TemporaryDirectory(prefix="tokner_lora_") as tmp:
            root = Path(tmp)
            self.to_disk(root, exclude=exclude)
            files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return srsly.msgpack_dumps({"files": files})

    def from_bytes(self, bytes_data: bytes, *, exclude=tuple()) -> "LoraNER":
        """Load the pipe from ``to_bytes`` output (see ``from_disk``).

        The files are unpacked into a temporary folder (in the system's temp directory,
        never the working directory); when they hold a bundled base, the folder stays
        while the pipe lives (the tokenizer and a later ``to_disk`` read it), else it is
        removed at once.
        """
        msg = srsly.msgpack_loads(bytes_data)
        files = msg.get("files") if isinstance(msg, dict) else None
        if not isinstance(files, dict):
            raise ValueError(f"[{self.name}] from_bytes expects the bytes of {type(self).__name__}.to_bytes")
        tmp = tempfile.TemporaryDirectory(prefix="tokner_lora_")
        root = Path(tmp.name)
        try:
            for rel, data in files.items():
                parts = Path(rel).parts
                if not parts or Path(rel).is_absolute() or ".." in parts:
                    raise ValueError(f"[{self.name}] from_bytes: unsafe file name {rel!r}")
                target = root.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self.from_disk(root, exclude=exclude)
        except BaseException:
            tmp.cleanup()
            raise
        if self._bundled_base is None:
            tmp.cleanup()
        else:
            self._bytes_dir = tmp
        return self


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
        "context_sentences": 0,
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
        "bundle_base": "auto",
        "bundle_dtype": "bfloat16",
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
    context_sentences: int,
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
    bundle_base: Union[bool, str],
    bundle_dtype: str,
    spans_key: Optional[str],
    scorer: Optional[Callable],
) -> LoraNER:
    return LoraNER(
        nlp, name, base_model=base_model, adapter=adapter, labels=labels, instruction=instruction,
        input_format=input_format, context_sentences=context_sentences, decoding=decoding, bio_constraint=bio_constraint, batch_size=batch_size,
        call_cost=call_cost, speculate=speculate, label_bias=label_bias, max_new_tokens_factor=max_new_tokens_factor, merge_adapter=merge_adapter,
        grouped_attention=grouped_attention, device=device,
        torch_dtype=torch_dtype, load_in_4bit=load_in_4bit, torch_threads=torch_threads, bundle_base=bundle_base,
        bundle_dtype=bundle_dtype, spans_key=spans_key, scorer=scorer,
    )


make_lora_ner.__doc__ = "The ``tokner_lora_ner`` pipe (:class:`LoraNER`).\n\n" + inspect.cleandoc(LoraNER.__doc__ or "")
