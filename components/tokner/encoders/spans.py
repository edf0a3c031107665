"""Windows of at most N *wordpieces* for spacy-transformers, instead of N spaCy tokens.

spacy-transformers' ``strided_spans.v1`` cuts each document into windows of ``window``
spaCy tokens, and a batch is padded to its longest window in wordpieces. On RareDis with
MiniLM, 128-token windows hold 120 wordpieces on average but up to 181 (chemical names and
Latin split into many pieces), so the dev split's 201 windows carry 24,228 real wordpieces
padded to about 36,400 positions, and most of the MiniLM pipeline's time is the encoder's
forward pass over that padding (docs/methods.md, "Supervised baselines"). Hugging Face's
token-classification pipeline cuts windows in wordpieces instead. This getter does the
same over spaCy tokens: each span is the longest run of whole tokens whose wordpieces
(plus the tokenizer's special tokens) fit ``window``, and the next span starts at the
first token at least ``stride`` wordpieces later, so consecutive spans overlap by about
``window - stride`` wordpieces. The counts come from one call of the model's own (fast)
tokenizer per batch over the documents' texts, each wordpiece assigned to the spaCy token
its first character falls in.

For WordPiece (BERT-style) tokenizers a span's own tokenisation has exactly these pieces;
a byte-level BPE tokenizer may give a span's first word one piece more, which only adds
one position of padding.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy
from spacy.tokens import Doc, Span
from spacy_transformers.architectures import create_TransformerModel_v3
from spacy_transformers.util import registry as trf_registry
from spacy.util import registry

from tokner.encoders.buckets import GROUP_OVERHEAD, grouped_forward


class WordpieceSpans:
    """A span getter: windows of at most ``window`` wordpieces (special tokens included),
    starting every ``stride`` wordpieces. Needs the transformer's tokenizer, which
    ``tokner.TransformerModel.v1`` hands it (:meth:`bind`)."""

    def __init__(self, window: int = 128, stride: int = 112):
        if window < 3:
            raise ValueError(f"tokner.wordpiece_spans.v1: window must be at least 3 wordpieces, got {window}")
        if not 0 < stride <= window:
            raise ValueError(f"tokner.wordpiece_spans.v1: stride must be in 1..window ({window}), got {stride}")
        self.window = window
        self.stride = stride
        self._model = None

    def bind(self, model) -> None:
        """Use ``model.tokenizer`` (a spacy-transformers ``TransformerModel``) to count wordpieces."""
        self._model = model

    @property
    def tokenizer(self):
        tokenizer = getattr(self._model, "tokenizer", None) if self._model is not None else None
        if tokenizer is None:
            raise ValueError(
                "tokner.wordpiece_spans.v1 counts wordpieces with the transformer's tokenizer: use it under "
                '@architectures = "tokner.TransformerModel.v1" (not spacy-transformers.TransformerModel.v3), '
                "and initialize or load the pipeline before calling it"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("tokner.wordpiece_spans.v1 needs a fast tokenizer (tokenizer_config use_fast = true): "
                             "it reads the wordpieces' character offsets")
        return tokenizer

    def wordpiece_counts(self, docs: Sequence[Doc]) -> List[numpy.ndarray]:
        """Per document, the number of wordpieces of each spaCy token (0 for whitespace)."""
        if not docs:
            return []
        encoded = self.tokenizer([doc.text for doc in docs], add_special_tokens=False,
                                 return_offsets_mapping=True, return_attention_mask=False, verbose=False)
        counts = []
        for doc, offsets in zip(docs, encoded["offset_mapping"]):
            starts = numpy.asarray([t.idx for t in doc], dtype=numpy.int64)
            pieces = numpy.asarray([s for s, e in offsets if e > s], dtype=numpy.int64)
            token_of_piece = numpy.searchsorted(starts, pieces, side="right") - 1
            counts.append(numpy.bincount(token_of_piece[token_of_piece >= 0], minlength=len(doc)))
        return counts

    def budget(self) -> int:
        """Wordpieces per window left for the text: ``window`` less the special tokens."""
        return self.window - self.tokenizer.num_special_tokens_to_add(pair=False)

    def windows(self, counts: numpy.ndarray, budget: int = 0) -> List[tuple]:
        """(start, end) token windows for one document's per-token wordpiece counts
        (``budget``: :meth:`budget`, computed when not given)."""
        n = len(counts)
        budget = budget or self.budget()
        cum = numpy.concatenate([[0], numpy.cumsum(counts)])
        out = []
        start = 0
        while start < n:
            end = int(numpy.searchsorted(cum, cum[start] + budget, side="right")) - 1
            end = min(max(end, start + 1), n)  # a single token longer than the budget stays whole
            out.append((start, end))
            if end >= n:
                break
            nxt = int(numpy.searchsorted(cum, cum[start] + self.stride, side="left"))
            start = min(max(nxt, start + 1), end)
        return out

    def __call__(self, docs: Sequence[Doc]) -> List[List[Span]]:
        docs = list(docs)
        if not docs:
            return []
        budget = self.budget()
        return [[doc[s:e] for s, e in self.windows(c, budget)] for doc, c in zip(docs, self.wordpiece_counts(docs))]


@trf_registry.span_getters("tokner.wordpiece_spans.v1")
def make_wordpiece_spans(window: int = 128, stride: int = 112) -> WordpieceSpans:
    """Windows of at most ``window`` wordpieces (the tokenizer's special tokens included)
    over whole spaCy tokens, one starting every ``stride`` wordpieces. Use it under
    ``tokner.TransformerModel.v1``, which gives it the transformer's tokenizer."""
    return WordpieceSpans(window=window, stride=stride)


CPU_AUTOCAST = ("float32", "bfloat16", "fastest")


def resolve_cpu_autocast(setting: str) -> str:
    """``"float32"`` or ``"bfloat16"``: the dtype ``cpu_autocast = setting`` computes the
    encoder in on this CPU ("fastest": bfloat16 where the CPU has native bf16)."""
    if setting not in CPU_AUTOCAST:
        raise ValueError(f"tokner.TransformerModel.v1: cpu_autocast must be one of {', '.join(CPU_AUTOCAST)}, "
                         f"got {setting!r}")
    if setting == "fastest":
        from tokner.utils.hardware import cpu_has_native_bf16

        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return setting


def _float_outputs(out):
    """The encoder's outputs with every floating tensor in float32 (spacy-transformers hands
    them to numpy, which has no bfloat16); the cast is differentiable."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, tuple):
        return type(out)(_float_outputs(o) for o in out) if not hasattr(out, "_fields") else \
            type(out)(*(_float_outputs(o) for o in out))
    if isinstance(out, dict):  # transformers' ModelOutput
        for key in list(out.keys()):
            out[key] = _float_outputs(out[key])
        return out
    return out


class _CpuAutocast:
    """Forward hooks that run a module under ``torch.autocast("cpu", dtype)`` and cast its
    floating outputs back to float32. Hooks rather than a replaced ``forward``, so a deep
    copy of the module (spacy-transformers copies the encoder when it replaces listeners)
    autocasts its own forward pass; the post hook is ``always_call``, so an exception in the
    forward pass still leaves autocast."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def enter(self, module, args):
        import torch

        ctx = torch.autocast("cpu", dtype=getattr(torch, self.dtype))
        ctx.__enter__()
        module.__dict__.setdefault("_tokner_autocast_contexts", []).append(ctx)

    def exit(self, module, args, output):
        contexts = module.__dict__.get("_tokner_autocast_contexts")
        if contexts:
            contexts.pop().__exit__(None, None, None)
        return _float_outputs(output)


def autocast_module(module, dtype: str) -> bool:
    """Run ``module``'s forward pass under ``torch.autocast("cpu", dtype)`` (its weights stay
    float32, so the optimizer updates float32 weights), returning float32 outputs. Once per
    module; a module on a GPU is left alone (``mixed_precision`` is the GPU setting).
    Returns whether the module runs autocast."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(getattr(hook, "__self__", None), _CpuAutocast):
            return True
    param = next(module.parameters(), None)
    if param is None or param.device.type != "cpu":
        return False
    hooks = _CpuAutocast(dtype)
    module.register_forward_pre_hook(hooks.enter)
    module.register_forward_hook(hooks.exit, always_call=True)
    return True


def _padding_only_mask(module, args, kwargs):
    """Forward pre-hook: replace a 2D padding mask by a 4D boolean one (batch, 1, query, key)
    that hides padding and nothing else, so a decoder-only model's layers attend to both
    sides (transformers uses a 4D mask as it is, and its sdpa attention is causal only when
    no mask is given)."""
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        keys = mask.bool()[:, None, None, :]
        kwargs["attention_mask"] = keys.expand(-1, 1, mask.shape[1], -1)
    return args, kwargs


def bidirectional_module(module) -> bool:
    """Make a Hugging Face decoder (a ``LlamaModel`` and the like) attend to both sides:
    every attention layer's ``is_causal`` set to False and its padding mask passed in 4D.
    Once per module; returns whether anything was changed (False for a model whose
    attention is already bidirectional, such as BERT)."""
    if module.__dict__.get("_tokner_bidirectional"):
        return True
    layers = [m for m in module.modules() if getattr(m, "is_causal", False) is True]
    if not layers:
        return False
    if getattr(module.config, "_attn_implementation", "sdpa") != "sdpa":
        # eager attention adds the mask to the scores, so it would need a float mask
        raise ValueError("tokner.TransformerModel.v1: bidirectional needs the sdpa attention, "
                         f"not {module.config._attn_implementation!r}")
    for layer in layers:
        layer.is_causal = False
    # a key/value cache only serves generation, which a model attending both ways cannot do
    module.config.use_cache = False
    module.register_forward_pre_hook(_padding_only_mask, with_kwargs=True)
    module.__dict__["_tokner_bidirectional"] = True
    return True


def _with_module_setup(model, setups):
    """Wrap the TransformerModel's forward so that each of ``setups`` (functions of the
    Hugging Face module: CPU autocast, bidirectional attention) is applied to the module,
    which ``initialize`` or loading creates, so it is only known at the first call."""
    inner = model._func

    def forward(model, docs, is_train):
        if model.layers:
            for shim in model.layers[0].shims:
                torch_model = getattr(shim, "_model", None)
                if torch_model is not None:
                    for setup in setups:
                        setup(torch_model)
        return inner(model, docs, is_train)

    model._func = forward
    return model


@registry.architectures("tokner.TransformerModel.v1")
def make_transformer_model(name: str, get_spans: Callable, tokenizer_config: Dict = {},
                           transformer_config: Dict = {}, mixed_precision: bool = False,
                           grad_scaler_config: Dict = {}, cpu_autocast: str = "float32",
                           length_groups: bool = True, group_overhead: int = GROUP_OVERHEAD,
                           bidirectional: bool = False):
    """spacy-transformers' ``TransformerModel.v3`` (same arguments, same weights on disk),
    which also hands itself to a span getter that needs its tokenizer (one with a
    ``bind`` method, such as ``tokner.wordpiece_spans.v1``), and can run the encoder in
    bfloat16 on a CPU. A pipeline trained with ``TransformerModel.v3`` loads under this
    architecture unchanged.

    name: the Hugging Face model (hub name or local folder) the encoder starts from.
    get_spans: the span getter (``tokner.wordpiece_spans.v1``, or any spacy-transformers one).
    tokenizer_config: keyword arguments for ``AutoTokenizer.from_pretrained`` (``use_fast = true``).
    transformer_config: keyword arguments for the encoder's config.
    mixed_precision: autocast the encoder to half precision (spacy-transformers: CUDA only).
    grad_scaler_config: the gradient scaler's settings under mixed_precision.
    cpu_autocast: on a CPU, the encoder's forward pass (training and prediction) under
        ``torch.autocast``: "float32" (off), "bfloat16", or "fastest" (bfloat16 where the CPU
        has native bf16 instructions, AMX-BF16 or AVX512-BF16, else off; see
        ``tokner.utils.hardware``). Weights, optimizer and outputs stay float32. On a
        2-core AMD EPYC (AVX512-BF16), all-MiniLM-L6-v2 forward + backward over 32 x 128
        wordpieces, one thread: 3.9-4.4 s float32, 2.4 s bfloat16.
    length_groups: when predicting, encode a batch's windows in groups of similar length,
        each padded to its own longest window instead of the batch's (same windows, same
        predictions, less padding; :mod:`tokner.encoders.buckets`). Training is unchanged.
    group_overhead: a group's fixed cost in padded positions, which sets how many groups
        a batch is cut into.
    bidirectional: let a decoder-only model (SmolLM2, Llama, ...) attend to both sides, as
        an encoder does: its causal mask is replaced by a padding-only one (sdpa attention).
        Fine-tuning then teaches it to use the right context. No effect on an encoder.
    """
    cpu_autocast = resolve_cpu_autocast(cpu_autocast)
    if group_overhead < 0:
        raise ValueError(f"tokner.TransformerModel.v1: group_overhead must be >= 0 positions, got {group_overhead}")
    model = create_TransformerModel_v3(name, get_spans, tokenizer_config, transformer_config,
                                       mixed_precision, grad_scaler_config)
    if hasattr(get_spans, "bind"):
        get_spans.bind(model)
    if length_groups:
        encoder = model.layers[0]
        encoder._func = grouped_forward(encoder._func, group_overhead)
    setups = []
    if bidirectional:
        setups.append(bidirectional_module)
    if cpu_autocast != "float32":
        setups.append(lambda module: autocast_module(module, cpu_autocast))
    if setups:
        _with_module_setup(model, setups)
    return model
