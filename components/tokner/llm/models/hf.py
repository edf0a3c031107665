"""``tokner.HFCausalLM.v1``: any Hugging Face causal LM by hub name *or local folder*
(spacy-llm's own HF models accept fixed names only).

Two decodings of the task's prompt:

* ``"constrained"`` (the default): the prompt is the task's prompt (instruction,
  demonstrations, retrieved passages, in the tokenizer's chat template), and the
  answer is written by :func:`tokner.decoding.constrained.constrained_decode`: it
  writes each input word and ``" :"`` itself and the model only chooses among the
  label strings (``O``, ``B-X``, ``I-X``, BIO-valid). Every answer is well-formed,
  every word aligned, and each word's label probability is kept (the task turns them
  into entity scores). The prompt prefix that every sentence shares (instruction and
  fixed demonstrations in zero/few-shot) is computed once and its KV cache reused.
* ``"free"``: the paper's setting, batched left-padded greedy ``generate`` of the
  whole answer, ``max_new_tokens`` scaled to the words asked about (the paper's fixed
  128 truncated long sentences), stopped once a sequence has written a line per word;
  the task's parser aligns whatever comes back.

The weights load on first use, so a saved pipeline can be loaded (and its model
path fixed by a config override) without touching the model. ``to_disk`` records the
model's absolute folder next to the configured name, so a pipeline assembled with a
relative path (``assets/models/...``) still finds its model when loaded from another
working directory on the same machine; elsewhere the error names the path and the
config key to override (``components.llm.model.name``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import srsly
from tqdm import tqdm

from spacy_llm.registry import registry

from tokner.llm.models._common import _flatten, _unflatten

logger = logging.getLogger(__name__)

DECODINGS = ("constrained", "free")
DTYPES = ("auto", "fastest", "float32", "bfloat16", "float16")
MODEL_FILE = "hf_model.json"


class TokenAnswer(str):
    """An answer string that also carries each word's label probability
    (constrained decoding); the task's parser turns them into entity scores."""

    probs: Tuple[float, ...]

    def __new__(cls, text: str, probs: Sequence[float]) -> "TokenAnswer":
        obj = super().__new__(cls, text)
        obj.probs = tuple(float(p) for p in probs)
        return obj

    def __reduce__(self):
        return (TokenAnswer, (str(self), self.probs))


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name``: what the hub accepts (a relative folder path usually is not)."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    return name.count("/") <= 1


class HFCausalLM:
    """Local constrained decoding or free generation with transformers (see module docstring)."""

    def __init__(
        self,
        name: str,
        batch_size: int,
        max_new_tokens: Optional[int],
        max_new_tokens_cap: int,
        line_slack: int,
        use_chat_template: bool,
        system_prompt: Optional[str],
        device: Optional[str],
        dtype: str,
        config_init: Dict[str, Any],
        config_run: Dict[str, Any],
        progress: bool,
        num_threads: Optional[int] = None,
        entity_share: float = 0.5,
        prime_answer: bool = False,
        decoding: str = "constrained",
        bio_constraint: bool = True,
        speculate: int = 16,
        call_cost: Union[float, str, None] = "auto",
        share_head: bool = True,
        grouped_attention: bool = True,
    ):
        from tokner.decoding.constrained import check_call_cost, check_speculate

        if decoding not in DECODINGS:
            raise ValueError(f"tokner.HFCausalLM.v1: decoding must be one of {DECODINGS}, got {decoding!r}")
        if batch_size < 1:
            raise ValueError(f"tokner.HFCausalLM.v1: batch_size must be >= 1, got {batch_size}")
        try:
            check_speculate(speculate)
            check_call_cost(call_cost)
        except ValueError as e:
            raise ValueError(f"tokner.HFCausalLM.v1: {e}") from None
        self.name = str(name)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_new_tokens_cap = max_new_tokens_cap
        self.line_slack = line_slack
        self.entity_share = entity_share
        self.prime_answer = prime_answer
        self.system_prompt = system_prompt
        self.progress = progress
        self.config_init = dict(config_init)
        self.config_run = dict(config_run)
        self.decoding = decoding
        self.bio_constraint = bio_constraint
        self.speculate = speculate
        self.call_cost = call_cost
        self.share_head = share_head
        self.grouped_attention = grouped_attention
        self.num_threads = num_threads
        self._use_chat_template_cfg = use_chat_template
        if dtype not in DTYPES:
            raise ValueError(f"tokner.HFCausalLM.v1: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self._dtype = dtype
        self._device_cfg = device
        self._recorded_path: Optional[str] = None
        self._model = None
        self._tokenizer = None
        self._codecs: Dict[Tuple[str, ...], Any] = {}
        self.last_stats = None

    # --- loading ------------------------------------------------------------------

    def resolve_name(self) -> str:
        """The folder or hub id to load: the configured name when it is a folder here,
        else the absolute folder recorded when the pipeline was saved, else a hub id."""
        configured = Path(self.name).expanduser()
        if configured.is_dir():
            return str(configured)
        if self._recorded_path and Path(self._recorded_path).is_dir():
            return self._recorded_path
        if _looks_like_hub_id(self.name):
            return self.name
        recorded = f" nor at the path recorded when the pipeline was saved ({self._recorded_path})" \
            if self._recorded_path else ""
        raise OSError(
            f"tokner.HFCausalLM.v1: model folder {self.name!r} not found (relative to {Path.cwd()}){recorded}, "
            f"and it is not a hub id. Point the pipeline at the model with the config key "
            f"components.llm.model.name, e.g. spacy.load(PATH, config={{'components.llm.model.name': '/abs/folder'}}) "
            f"(offline default: python -m tokner.offline smollm2 assets/models/SmolLM2-135M-Instruct)"
        )

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.num_threads:
            # CPU only: fewer threads than cores is much faster on a busy machine
            torch.set_num_threads(self.num_threads)
        source = self.resolve_name()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source, **self.config_init.get("tokenizer", {}))
            self.device = self._device_cfg or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = self._resolved_dtype()
            torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            model_kwargs = {k: v for k, v in self.config_init.items() if k != "tokenizer"}
            model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch_dtype, **model_kwargs)
        except OSError as e:
            raise OSError(
                f"tokner.HFCausalLM.v1: cannot load {source!r} (a Hugging Face hub name or a local folder; set "
                f"components.llm.model.name; offline default: python -m tokner.offline smollm2 "
                f"assets/models/SmolLM2-135M-Instruct): {e}"
            ) from e
        model.to(self.device).eval()
        if self.grouped_attention:
            from tokner.decoding.kvcache import use_grouped_attention

            use_grouped_attention(model)
        tok = self._tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.use_chat_template = bool(self._use_chat_template_cfg and getattr(tok, "chat_template", None))
        # tokens a "word : O" line and a "word : I-LONGESTLABEL" line add beyond the word itself
        self._o_tokens = len(tok(" : O\n", add_special_tokens=False).input_ids)
        self._label_tokens = len(tok(" : I-SKINRAREDISEASE\n", add_special_tokens=False).input_ids)
        self._model = model

    @property
    def model(self):
        if self._model is None:
            self._load()
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 2048)

    def fingerprint(self) -> Dict[str, Any]:
        """Everything that changes the answers (for caches keyed by model)."""
        return {"model": "tokner.HFCausalLM.v1", "name": self.name, "decoding": self.decoding,
                "bio_constraint": self.bio_constraint, "dtype": self._resolved_dtype(),
                "use_chat_template": self._use_chat_template_cfg, "system_prompt": self.system_prompt,
                "max_new_tokens": self.max_new_tokens, "max_new_tokens_cap": self.max_new_tokens_cap,
                "line_slack": self.line_slack, "entity_share": self.entity_share,
                "prime_answer": self.prime_answer, "config_run": self.config_run}

    def _resolved_dtype(self) -> str:
        """``dtype`` with "fastest" resolved for the device (without loading the model)."""
        if self._dtype != "fastest":
            return self._dtype
        import torch

        from tokner.utils.hardware import fastest_dtype

        return fastest_dtype(self._device_cfg or ("cuda" if torch.cuda.is_available() else "cpu"))

    # --- prompts ------------------------------------------------------------------

    def primer(self, prompt: str) -> str:
        """Start of the answer written for the model (``prime_answer``): the first word and " :"."""
        words = getattr(prompt, "words", None)
        return f"{words[0]} :" if self.prime_answer and words else ""

    def chat_text(self, prompt: str) -> str:
        """The prompt as the model sees it (the chat template's user turn when it has one)."""
        self.tokenizer  # noqa: B018  (loads, sets use_chat_template)
        if not self.use_chat_template:
            return str(prompt)
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": str(prompt)})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def format_prompt(self, prompt: str) -> str:
        return self.chat_text(prompt) + self.primer(prompt)

    def prompt_ids(self, prompt: str) -> List[int]:
        """Token ids of the formatted prompt (special tokens as the model expects them)."""
        text = self.chat_text(prompt)
        return list(self.tokenizer(text, add_special_tokens=not self.use_chat_template).input_ids)

    def budget(self, prompt: str) -> int:
        """max_new_tokens for one prompt: fixed if configured, else scaled to its words."""
        if self.max_new_tokens:
            return self.max_new_tokens
        self.tokenizer  # noqa: B018
        words = getattr(prompt, "words", None)
        if not words:
            return min(self.max_new_tokens_cap, 256)
        n = len(words)
        word_tokens = len(self.tokenizer(" ".join(words), add_special_tokens=False).input_ids)
        need = word_tokens + n * self._o_tokens + math.ceil(self.entity_share * n) * (self._label_tokens - self._o_tokens)
        return int(min(self.max_new_tokens_cap, math.ceil(need * 1.1) + 16))

    # --- decoding -----------------------------------------------------------------

    def codec(self, labels: Sequence[str]):
        from tokner.decoding.codec import LabelCodec

        key = tuple(labels)
        if key not in self._codecs:
            self._codecs[key] = LabelCodec(self.tokenizer, list(labels))
        return self._codecs[key]

    def constrained(self, prompts: Sequence[str]) -> List[str]:
        """Answers written by the constrained decoder (one line per word, a valid label each)."""
        from tokner.decoding.constrained import constrained_decode
        from tokner.answers.paper_format import render_answer
        from tokner.scoring.scorer import PAPER_LABELS

        out: List[str] = [""] * len(prompts)
        groups: Dict[Tuple[str, ...], List[int]] = {}
        for i, p in enumerate(prompts):
            words = getattr(p, "words", None)
            if words is None:
                raise TypeError("tokner.HFCausalLM.v1: constrained decoding needs the task's prompts "
                                "(tokner.TokenNER.v1), which carry their words; use decoding = \"free\" otherwise")
            if words:
                groups.setdefault(tuple(getattr(p, "labels", None) or PAPER_LABELS), []).append(i)
        for labels, idx in groups.items():
            sentences = [list(prompts[i].words) for i in idx]
            ids = [self.prompt_ids(prompts[i]) for i in idx]
            results, stats = constrained_decode(
                self.model, self.codec(labels), sentences, batch_size=self.batch_size, bio=self.bio_constraint,
                progress=self.progress, share_head=self.share_head, call_cost=self.call_cost,
                speculate=self.speculate, prompts=ids)
            if self.last_stats is None:
                self.last_stats = stats
            else:
                self.last_stats.merge(stats)
            for i, words, (tags, probs) in zip(idx, sentences, results):
                out[i] = TokenAnswer(render_answer(words, tags), probs)
        return out

    def generate(self, prompts: Sequence[str]) -> List[str]:
        """Free generation (the paper's setting): greedy answers, aligned later by the task."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        model, tokenizer = self.model, self.tokenizer
        texts = [self.format_prompt(p) for p in prompts]
        budgets = [self.budget(p) for p in prompts]
        n_lines = [len(getattr(p, "words", ()) or ()) for p in prompts]
        lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], -budgets[i]))
        out: List[str] = [""] * len(texts)
        slack = self.line_slack

        class _EnoughLines(StoppingCriteria):
            """Stop a sequence once it wrote a line per word (+ slack) and ended a line."""

            def __init__(self, start: int, want: List[int]):
                self.start, self.want = start, want

            def __call__(self, input_ids, scores, **kwargs):
                done = []
                for row, want in zip(input_ids, self.want):
                    if not want:
                        done.append(False)
                        continue
                    text = tokenizer.decode(row[self.start:], skip_special_tokens=True)
                    lines = [l for l in text.split("\n") if l.strip()]
                    done.append(text.endswith("\n") and len(lines) >= want + slack)
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not self.progress):
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=not self.use_chat_template).to(self.device)
            start = enc["input_ids"].shape[1]
            max_new = max(budgets[i] for i in batch)
            stops = StoppingCriteriaList([_EnoughLines(start, [n_lines[i] for i in batch])])
            gen_kwargs = {"do_sample": False, "num_beams": 1, **self.config_run}
            if not gen_kwargs.get("do_sample"):
                gen_kwargs.pop("temperature", None)
                gen_kwargs.pop("top_p", None)
                gen_kwargs.pop("top_k", None)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                                     stopping_criteria=stops, **gen_kwargs)
            for row, i in zip(gen, batch):
                new = row[start: start + budgets[i]]
                out[i] = self.primer(prompts[i]) + tokenizer.decode(new, skip_special_tokens=True)
        return out

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        flat, sizes = _flatten(prompts)
        if not flat:
            return _unflatten([], sizes)
        answers = self.constrained(flat) if self.decoding == "constrained" else self.generate(flat)
        return _unflatten(answers, sizes)

    # --- serialisation (spacy-llm calls these when the pipeline is saved/loaded) ----

    def _record(self) -> Dict[str, Any]:
        path = Path(self.name).expanduser()
        resolved = str(path.resolve()) if path.is_dir() else self._recorded_path
        return {"name": self.name, "resolved_path": resolved}

    def _apply_record(self, rec: Dict[str, Any]) -> None:
        self._recorded_path = rec.get("resolved_path")
        self._model = self._tokenizer = None
        self._codecs = {}

    def to_disk(self, path: Path, *, exclude: Tuple[str, ...] = tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_json(path / MODEL_FILE, self._record())

    def from_disk(self, path: Path, *, exclude: Tuple[str, ...] = tuple()) -> "HFCausalLM":
        path = Path(path)
        if (path / MODEL_FILE).exists():
            self._apply_record(srsly.read_json(path / MODEL_FILE))
        return self

    def to_bytes(self, *, exclude: Tuple[str, ...] = tuple()) -> bytes:
        return srsly.msgpack_dumps(self._record())

    def from_bytes(self, bytes_data: bytes, *, exclude: Tuple[str, ...] = tuple()) -> "HFCausalLM":
        self._apply_record(srsly.msgpack_loads(bytes_data))
        return self


@registry.llm_models("tokner.HFCausalLM.v1")
def make_hf_causal_lm(
    name: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
    batch_size: int = 8,
    max_new_tokens: Optional[int] = None,
    max_new_tokens_cap: int = 2048,
    line_slack: int = 2,
    use_chat_template: bool = True,
    system_prompt: Optional[str] = None,
    device: Optional[str] = None,
    dtype: str = "auto",
    config_init: Dict[str, Any] = {},
    config_run: Dict[str, Any] = {},
    progress: bool = False,
    num_threads: Optional[int] = None,
    entity_share: float = 0.5,
    prime_answer: bool = False,
    decoding: str = "constrained",
    bio_constraint: bool = True,
    speculate: int = 16,
    call_cost: Union[float, str, None] = "auto",
    share_head: bool = True,
    grouped_attention: bool = True,
) -> HFCausalLM:
    """A Hugging Face causal LM from a hub name or a local folder (loaded on first use).

    name: hub id or local folder (a saved pipeline also remembers the folder's absolute path).
    batch_size: sentences decoded together.
    decoding: "constrained" (default: the model only chooses among the labels, the decoder
        writes the words; always well-formed, label probabilities kept) or "free" (the
        paper's setting: the model writes the whole answer, which the task aligns).
    bio_constraint: constrained only: ``I-X`` only after ``B-X``/``I-X``.
    speculate: constrained only: guess the tags of up to this many words ahead (each word
        continuing the row's own tag pattern) and verify the guesses in the same model
        call (same tags, fewer calls); 0 turns it off. 16 vs 8 on 32 dev sentences,
        SmolLM2-135M zero-shot, bf16, one thread: 47 calls instead of 65, 13.9 s vs 15.3 s.
    call_cost: constrained only: per-call overhead in token slots that sizes each call's
        width ("auto": 32 on a CPU, unbounded on a GPU; see ``chunk_width``).
    share_head: constrained only: compute the prompt prefix every sentence shares once.
    grouped_attention: attention without repeating key/value heads (faster on a CPU).
    max_new_tokens: free only: fixed budget; None scales it to the prompt's words: their
        tokens, a " : O" line each, and room for an entity label on `entity_share` of
        them (capped by max_new_tokens_cap). Generation also stops after a line per
        word + line_slack lines.
    use_chat_template: wrap the prompt as a user message when the tokenizer has a template.
    system_prompt: a system message before the prompt (chat template only).
    device: "cpu", "cuda", "cuda:1"... (None: cuda when available).
    dtype: "auto" (the checkpoint's dtype), "fastest" (bfloat16 where the device computes
        it natively: a GPU with bf16, a CPU with AMX-BF16 or AVX512-BF16; else float32 on
        a CPU, float16 on a GPU; see ``tokner.utils.hardware``) or a torch dtype name.
    config_init / config_run: extra kwargs for ``from_pretrained`` / ``generate``
        (greedy unless ``config_run`` sets ``do_sample``; free only).
    progress: progress bar per batch.
    num_threads: torch CPU threads (None: torch's default).
    prime_answer: free only: start the answer for the model with its first word and " :".
    """
    return HFCausalLM(name, batch_size, max_new_tokens, max_new_tokens_cap, line_slack, use_chat_template,
                      system_prompt, device, dtype, dict(config_init), dict(config_run), progress, num_threads,
                      entity_share, prime_answer, decoding, bio_constraint, speculate, call_cost, share_head,
                      grouped_attention)
