"""At prediction, encode a batch's windows in groups of similar length.

spacy-transformers pads every window of a batch to the batch's longest window, and the
encoder computes every padded position. With ``strided_spans.v1`` (windows of 128 spaCy
tokens) the RareDis dev windows hold 120 wordpieces on average but up to 207: in batches
of 32 documents, 24,222 real wordpieces become 37,418 padded positions. Sorting the
batch's windows by length and encoding them in groups, each padded only to its own
longest window, brings that to 26,882 (15 groups for the 4 batches, at the default
``group_overhead``). The windows, and so the predictions, are those the pipeline was
trained with; only the padding changes (docs/methods.md, "Length groups", has the words/s).

Training keeps spacy-transformers' single forward pass (its batches come from
``batch_by_padded``, already of similar lengths, and the backward pass stays one call).
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import numpy

# A group's cost in padded positions is rows x longest window, plus this many positions
# for the call itself (a forward pass's fixed cost). On dev, all-MiniLM-L6-v2 in bf16, one
# thread, 2-core AMD EPYC (``benchmarks/throughput.py --repeats 3 --set
# components.transformer.model.group_overhead=N``): N = 0 gives 155 calls over 24,222
# positions, 3,256 words/s; 256, 15 calls over 26,882 positions, 3,269 words/s; 1,024,
# 8 calls over 30,230 positions, 2,777 words/s; no groups 2,628 words/s.
GROUP_OVERHEAD = 256


def plan_groups(lengths: Sequence[int], overhead: int = GROUP_OVERHEAD) -> List[numpy.ndarray]:
    """Split the rows of a batch (their unpadded lengths) into groups of consecutive
    rows in length order, minimising sum over groups of (rows x longest + ``overhead``)
    (an exact dynamic programme over the sorted lengths). Returns the groups' row indices."""
    lengths = numpy.asarray(lengths, dtype=numpy.int64)
    n = len(lengths)
    if n == 0:
        return []
    order = numpy.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    best = numpy.zeros(n + 1, dtype=numpy.float64)
    cut = numpy.zeros(n + 1, dtype=numpy.int64)
    for end in range(1, n + 1):
        starts = numpy.arange(end)
        costs = best[:end] + (end - starts) * sorted_lengths[end - 1] + overhead
        i = int(numpy.argmin(costs))
        best[end] = costs[i]
        cut[end] = i
    groups = []
    end = n
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def _pad_rows(tensor, rows: int, length: int):
    """A zero tensor of ``rows`` rows (and ``length`` positions when the tensor has a
    position axis) with the tensor's dtype and device."""
    import torch

    shape = (rows, length) + tuple(tensor.shape[2:]) if tensor.dim() >= 3 else (rows,) + tuple(tensor.shape[1:])
    return torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)


def _merge(outputs: List, groups: List[numpy.ndarray], rows: int, length: int):
    """One ModelOutput of ``rows`` rows from the groups' outputs: tensors with a position
    axis (``last_hidden_state``, each of ``hidden_states``) padded with zeros to ``length``,
    per-row tensors (``pooler_output``) put back in row order. Anything else, such as a
    decoder's key/value cache (``past_key_values``), is no encoder output that
    spacy-transformers reads, and is left out."""
    import torch

    first = outputs[0]
    merged = type(first)()
    for key in first.keys():
        values = [out[key] for out in outputs]
        if isinstance(values[0], torch.Tensor):
            merged[key] = _scatter(values, groups, rows, length)
        elif isinstance(values[0], tuple) and all(isinstance(v, torch.Tensor) for v in values[0]):
            # a tuple of tensors, e.g. hidden_states
            merged[key] = tuple(_scatter([v[i] for v in values], groups, rows, length) for i in range(len(values[0])))
    return merged


def _scatter(tensors, groups, rows: int, length: int):
    import torch

    full = _pad_rows(tensors[0], rows, length)
    for tensor, group in zip(tensors, groups):
        index = torch.as_tensor(group, device=tensor.device)
        if tensor.dim() >= 3:
            full[index, : tensor.shape[1]] = tensor
        else:
            full[index] = tensor
    return full


def grouped_forward(inner: Callable, overhead: int = GROUP_OVERHEAD) -> Callable:
    """Wrap the forward function of spacy-transformers' ``HFWrapper`` layer (input: a
    ``WordpieceBatch``; output: the encoder's ``ModelOutput``) so that, when predicting,
    the batch's windows are encoded in length groups (:func:`plan_groups`) and the outputs
    are put back in the batch's order and padded width."""
    from spacy_transformers.data_classes import WordpieceBatch
    from thinc.api import get_array_module

    def forward(layer, wordpieces, is_train: bool):
        rows = len(wordpieces)
        if is_train or rows < 2 or getattr(_config(layer), "output_attentions", False):
            return inner(layer, wordpieces, is_train)
        groups = plan_groups(wordpieces.lengths, overhead)
        if len(groups) == 1:
            return inner(layer, wordpieces, is_train)
        xp = get_array_module(wordpieces.input_ids)  # numpy, or cupy on a GPU
        outputs = []
        for group in groups:
            width = max(wordpieces.lengths[i] for i in group)
            rows_of = xp.asarray(group)
            sub = WordpieceBatch(
                strings=[wordpieces.strings[i] for i in group],
                input_ids=wordpieces.input_ids[rows_of, :width],
                attention_mask=wordpieces.attention_mask[rows_of, :width],
                lengths=[wordpieces.lengths[i] for i in group],
                token_type_ids=(wordpieces.token_type_ids[rows_of, :width]
                                if wordpieces.token_type_ids is not None else None),
            )
            out, _ = inner(layer, sub, is_train)
            outputs.append(out)
        merged = _merge(outputs, groups, rows, int(wordpieces.input_ids.shape[1]))

        def backprop(d_output):
            raise ValueError("length-grouped encoding is for prediction; training runs the batch in one pass")

        return merged, backprop

    return forward


def _config(layer):
    """The Hugging Face config of the HFWrapper layer's encoder (None before it is loaded)."""
    for shim in layer.shims:
        model = getattr(shim, "_model", None)
        if model is not None:
            return getattr(model, "config", None)
    return None
