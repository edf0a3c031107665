"""``tokner.HFCausalLM.v1``: any Hugging Face causal LM by hub name *or local path*
(spacy-llm's own HF models accept fixed names only): batched, left-padded greedy
generation, ``max_new_tokens`` scaled to the number of words asked about (the paper's
fixed 128 truncated long sentences), the tokenizer's chat template when it has one,
and generation stopped once a sequence has written a line per word.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

from tqdm import tqdm

from spacy_llm.registry import registry

from ._common import _flatten, _unflatten

logger = logging.getLogger(__name__)


class HFCausalLM:
    """Local generation with transformers (see module docstring)."""

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
    ):
        import torch

        if num_threads:
            # CPU only: fewer threads than cores is much faster on a busy machine
            torch.set_num_threads(num_threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = str(name)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_new_tokens_cap = max_new_tokens_cap
        self.line_slack = line_slack
        self.entity_share = entity_share
        self.prime_answer = prime_answer
        self.system_prompt = system_prompt
        self.progress = progress
        self.config_run = dict(config_run)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name, **config_init.get("tokenizer", {}))
            torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            model_kwargs = {k: v for k, v in config_init.items() if k != "tokenizer"}
            self.model = AutoModelForCausalLM.from_pretrained(self.name, torch_dtype=torch_dtype, **model_kwargs)
        except OSError as e:
            raise OSError(
                f"tokner.HFCausalLM.v1: cannot load {self.name!r} (a Hugging Face hub name or a local folder; "
                f"offline default: python -m tokner.offline smollm2 assets/models/SmolLM2-135M-Instruct): {e}"
            ) from e
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.use_chat_template = bool(use_chat_template and getattr(self.tokenizer, "chat_template", None))
        # tokens a "word : O" line and a "word : I-LONGESTLABEL" line add beyond the word itself
        self._o_tokens = len(self.tokenizer(" : O\n", add_special_tokens=False).input_ids)
        self._label_tokens = len(self.tokenizer(" : I-SKINRAREDISEASE\n", add_special_tokens=False).input_ids)

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 2048)

    def primer(self, prompt: str) -> str:
        """Start of the answer written for the model (``prime_answer``): the first word and " :"."""
        words = getattr(prompt, "words", None)
        return f"{words[0]} :" if self.prime_answer and words else ""

    def format_prompt(self, prompt: str) -> str:
        if not self.use_chat_template:
            return str(prompt) + self.primer(prompt)
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": str(prompt)})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self.primer(prompt)

    def budget(self, prompt: str) -> int:
        """max_new_tokens for one prompt: fixed if configured, else scaled to its words."""
        if self.max_new_tokens:
            return self.max_new_tokens
        words = getattr(prompt, "words", None)
        if not words:
            return min(self.max_new_tokens_cap, 256)
        n = len(words)
        word_tokens = len(self.tokenizer(" ".join(words), add_special_tokens=False).input_ids)
        need = word_tokens + n * self._o_tokens + math.ceil(self.entity_share * n) * (self._label_tokens - self._o_tokens)
        return int(min(self.max_new_tokens_cap, math.ceil(need * 1.1) + 16))

    def generate(self, prompts: Sequence[str]) -> List[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        texts = [self.format_prompt(p) for p in prompts]
        budgets = [self.budget(p) for p in prompts]
        n_lines = [len(getattr(p, "words", ()) or ()) for p in prompts]
        lengths = [len(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], -budgets[i]))
        out: List[str] = [""] * len(texts)
        tokenizer = self.tokenizer
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
                gen = self.model.generate(**enc, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                                          stopping_criteria=stops, **gen_kwargs)
            for row, i in zip(gen, batch):
                new = row[start: start + budgets[i]]
                out[i] = self.primer(prompts[i]) + tokenizer.decode(new, skip_special_tokens=True)
        return out

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        flat, sizes = _flatten(prompts)
        return _unflatten(self.generate(flat) if flat else [], sizes)


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
) -> HFCausalLM:
    """A Hugging Face causal LM from a hub name or a local folder.

    max_new_tokens: fixed budget; None scales it to the prompt's words: their tokens,
        a " : O" line each, and room for an entity label on `entity_share` of them
        (capped by max_new_tokens_cap). Generation also stops after a line per
        word + line_slack lines.
    use_chat_template: wrap the prompt as a user message when the tokenizer has a template.
    config_init / config_run: extra kwargs for ``from_pretrained`` / ``generate``
        (greedy unless ``config_run`` sets ``do_sample``).
    num_threads: torch CPU threads (None: torch's default).
    prime_answer: start the answer for the model with its first word and " :" (helps
        small models keep the format; the primer is part of the returned answer).
    """
    return HFCausalLM(name, batch_size, max_new_tokens, max_new_tokens_cap, line_slack, use_chat_template,
                      system_prompt, device, dtype, dict(config_init), dict(config_run), progress, num_threads,
                      entity_share, prime_answer)
