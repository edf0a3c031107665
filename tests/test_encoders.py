"""tokner.wordpiece_spans.v1 under tokner.TransformerModel.v1: windows counted in the
transformer's own wordpieces, in a pipeline that trains, predicts and round-trips."""
from __future__ import annotations

import numpy
import pytest
import spacy
from spacy.tokens import DocBin

pytest.importorskip("spacy_transformers")

from tokner.encoders.spans import WordpieceSpans  # noqa: E402
from tiny_models import make_tiny_bert  # noqa: E402
from test_baselines import BERT_CFG, _ents, _train, tiny_corpus  # noqa: E402,F401


class _Bound:
    """Stands in for a TransformerModel: only its ``tokenizer`` is read."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    # "aa" and "bb" are whole words of the vocab; any other word splits into one piece per character
    folder = make_tiny_bert(tmp_path_factory.mktemp("wp-bert"), ["aa", "bb"] * 5 + list("xyz"))
    return AutoTokenizer.from_pretrained(folder)


def _getter(tokenizer, window, stride):
    getter = WordpieceSpans(window=window, stride=stride)
    getter.bind(_Bound(tokenizer))
    return getter


def test_counts_and_windows_on_known_wordpieces(tokenizer):
    nlp = spacy.blank("en")
    doc = nlp("aa xyz aa bb xyz")
    assert [list(c) for c in _getter(tokenizer, 6, 2).wordpiece_counts([doc])] == [[1, 3, 1, 1, 3]]
    # window 6 = 4 wordpieces + [CLS] and [SEP]; the next window starts >= 2 wordpieces later
    spans = _getter(tokenizer, 6, 2)([doc])[0]
    assert [(s.start, s.end, s.start_char, s.end_char) for s in spans] == [(0, 2, 0, 6), (2, 4, 7, 12), (4, 5, 13, 16)]
    for span in spans:
        assert len(tokenizer(span.text)["input_ids"]) <= 6
    # stride == window: the windows tile the document without overlap
    tiled = _getter(tokenizer, 6, 6)([doc])[0]
    assert [(s.start, s.end) for s in tiled] == [(0, 2), (2, 4), (4, 5)]
    # a wide window holds the whole document
    assert [(s.start, s.end) for s in _getter(tokenizer, 64, 56)([doc])[0]] == [(0, 5)]


def test_a_token_longer_than_the_window_stays_whole_and_empty_docs_get_no_spans(tokenizer):
    nlp = spacy.blank("en")
    doc = nlp("xyzxyzxyz aa")
    assert [(s.start, s.end) for s in _getter(tokenizer, 6, 4)([doc])[0]] == [(0, 1), (1, 2)]
    assert _getter(tokenizer, 6, 4)([nlp("")]) == [[]]
    assert _getter(tokenizer, 6, 4)([]) == []


def test_bad_settings_and_a_missing_tokenizer_are_clear_errors():
    with pytest.raises(ValueError, match="stride must be in 1..window"):
        WordpieceSpans(window=16, stride=20)
    with pytest.raises(ValueError, match="tokner.TransformerModel.v1"):
        WordpieceSpans(window=16, stride=8)([spacy.blank("en")("aa")])


def test_the_pipeline_trains_predicts_and_round_trips_with_wordpiece_windows(tiny_corpus, tmp_path):
    words = [t.text for split in ("train", "dev") for d in DocBin().from_disk(tiny_corpus[split]).get_docs(spacy.blank("en").vocab)
             for t in d]
    encoder = make_tiny_bert(tmp_path / "tiny-bert", words)
    best = _train(BERT_CFG, tmp_path / "bert", tiny_corpus, **{
        "paths.transformer": str(encoder), "training.optimizer.learn_rate.warmup_steps": 2,
        "components.transformer.model.@architectures": "tokner.TransformerModel.v1",
        "components.transformer.model.get_spans.@span_getters": "tokner.wordpiece_spans.v1",
        "components.transformer.model.get_spans.window": 32,
        "components.transformer.model.get_spans.stride": 24,
    })
    nlp = spacy.load(best)
    trf = nlp.get_pipe("transformer")
    getter = trf.model.attrs["get_spans"]
    assert isinstance(getter, WordpieceSpans) and (getter.window, getter.stride) == (32, 24)
    texts = [d.text for d in DocBin().from_disk(tiny_corpus["dev"]).get_docs(nlp.vocab)]
    docs = list(nlp.pipe(texts))
    for doc in docs:
        lengths = doc._.trf_data.wordpieces.lengths
        # every window holds at most 32 wordpieces (the longest nearly fills it), each token is in one
        assert 24 < max(lengths) <= 32
        covered = set()
        for s, e in getter.windows(getter.wordpiece_counts([doc])[0]):
            covered.update(range(s, e))
        assert covered == set(range(len(doc)))
    # to_disk / from_disk and to_bytes / from_bytes keep the getter and the predictions
    nlp.to_disk(tmp_path / "copy")
    again = spacy.load(tmp_path / "copy")
    assert isinstance(again.get_pipe("transformer").model.attrs["get_spans"], WordpieceSpans)
    assert _ents(again, texts) == _ents(nlp, texts)
    from_bytes = spacy.load(tmp_path / "copy")
    from_bytes.from_bytes(nlp.to_bytes())
    assert _ents(from_bytes, texts) == _ents(nlp, texts)


def test_a_pipeline_trained_with_token_windows_loads_with_wordpiece_windows(tiny_corpus, tmp_path):
    """The inference-time switch that benchmarks/throughput.py --set makes: same weights, new windows."""
    words = [t.text for d in DocBin().from_disk(tiny_corpus["train"]).get_docs(spacy.blank("en").vocab) for t in d]
    encoder = make_tiny_bert(tmp_path / "tiny-bert", words)
    best = _train(BERT_CFG, tmp_path / "bert", tiny_corpus, **{"paths.transformer": str(encoder),
                                                              "training.optimizer.learn_rate.warmup_steps": 2})
    texts = [d.text for d in DocBin().from_disk(tiny_corpus["dev"]).get_docs(spacy.blank("en").vocab)]
    token_windows = spacy.load(best)
    assert max(max(d._.trf_data.wordpieces.lengths) for d in token_windows.pipe(texts)) > 40
    nlp = spacy.load(best, config={
        "components.transformer.model.@architectures": "tokner.TransformerModel.v1",
        "components.transformer.model.get_spans.@span_getters": "tokner.wordpiece_spans.v1",
        "components.transformer.model.get_spans.window": 40,
        "components.transformer.model.get_spans.stride": 32,
    })
    assert isinstance(nlp.get_pipe("transformer").model.attrs["get_spans"], WordpieceSpans)
    for doc in nlp.pipe(texts):
        assert 32 < max(doc._.trf_data.wordpieces.lengths) <= 40
        assert all(e.label_ in nlp.get_pipe("ner").labels for e in doc.ents)


def _autocast_hooked(torch_model) -> bool:
    from tokner.encoders.spans import _CpuAutocast

    return any(isinstance(getattr(h, "__self__", None), _CpuAutocast) for h in torch_model._forward_pre_hooks.values())


def test_cpu_autocast_trains_in_bf16_with_float32_weights_and_outputs(tiny_corpus, tmp_path):
    import torch

    words = [t.text for d in DocBin().from_disk(tiny_corpus["train"]).get_docs(spacy.blank("en").vocab) for t in d]
    encoder = make_tiny_bert(tmp_path / "tiny-bert", words)
    best = _train(BERT_CFG, tmp_path / "bert", tiny_corpus, **{
        "paths.transformer": str(encoder), "training.optimizer.learn_rate.warmup_steps": 2,
        "components.transformer.model.cpu_autocast": "bfloat16"})
    nlp = spacy.load(best)
    assert nlp.config["components"]["transformer"]["model"]["cpu_autocast"] == "bfloat16"
    trf = nlp.get_pipe("transformer")
    texts = [d.text for d in DocBin().from_disk(tiny_corpus["dev"]).get_docs(nlp.vocab)]
    seen = []
    docs = list(nlp.pipe(texts[:1]))  # the first call hooks the loaded encoder
    torch_model = trf.model.layers[0].shims[0]._model
    assert _autocast_hooked(torch_model)
    linear = next(m for m in torch_model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    docs = list(nlp.pipe(texts))
    assert seen and set(seen) == {torch.bfloat16}  # the matmuls ran in bf16
    assert all(p.dtype == torch.float32 for p in torch_model.parameters())
    assert all(t.dtype == "float32" for d in docs for t in d._.trf_data.tensors)
    assert not torch.is_autocast_cpu_enabled()  # autocast ends with the forward pass
    # the saved pipeline predicts the same; a copy of the model (as listener replacement makes) autocasts itself
    nlp.to_disk(tmp_path / "copy")
    assert _ents(spacy.load(tmp_path / "copy"), texts) == _ents(nlp, texts)
    twin = trf.model.copy()
    twin_module = twin.layers[0].shims[0]._model
    assert twin_module is not torch_model and _autocast_hooked(twin_module)
    # float32 (the default) leaves the encoder alone; a bad value is a clear error
    plain = spacy.load(best, config={"components.transformer.model.cpu_autocast": "float32"})
    list(plain.pipe(texts[:1]))
    assert not _autocast_hooked(plain.get_pipe("transformer").model.layers[0].shims[0]._model)
    with pytest.raises(ValueError, match="cpu_autocast must be one of"):
        spacy.load(best, config={"components.transformer.model.cpu_autocast": "bf16"})
    with pytest.raises(ValueError, match="group_overhead must be >= 0"):
        spacy.load(best, config={"components.transformer.model.group_overhead": -1})


def test_plan_groups_minimises_padding_plus_a_cost_per_group():
    from tokner.encoders.buckets import plan_groups

    lengths = [10, 100, 12, 98]
    # every group costs rows x longest + overhead: two groups (24 + 200 + 2 x 50) beat one (400 + 50)
    # and four (220 + 4 x 50)
    assert [list(g) for g in plan_groups(lengths, overhead=50)] == [[0, 2], [3, 1]]
    assert [list(g) for g in plan_groups(lengths, overhead=1000)] == [[0, 2, 3, 1]]
    assert [list(g) for g in plan_groups(lengths, overhead=0)] == [[0], [2], [3], [1]]
    assert plan_groups([], overhead=50) == []


def test_length_groups_predict_what_one_padded_batch_predicts_with_less_padding(tiny_corpus, tmp_path):
    import numpy

    words = [t.text for d in DocBin().from_disk(tiny_corpus["train"]).get_docs(spacy.blank("en").vocab) for t in d]
    encoder = make_tiny_bert(tmp_path / "tiny-bert", words)
    best = _train(BERT_CFG, tmp_path / "bert", tiny_corpus, **{
        "paths.transformer": str(encoder), "training.optimizer.learn_rate.warmup_steps": 2,
        "components.transformer.model.cpu_autocast": "float32",
        "components.transformer.model.get_spans.window": 48,
        "components.transformer.model.get_spans.stride": 40})
    texts = [d.text for d in DocBin().from_disk(tiny_corpus["dev"]).get_docs(spacy.blank("en").vocab)]
    runs = {}
    for groups in (False, True):
        nlp = spacy.load(best, config={"components.transformer.model.length_groups": groups,
                                       "components.transformer.model.group_overhead": 0})
        widths = []
        list(nlp.pipe(texts[:1]))  # loads the encoder
        torch_model = nlp.get_pipe("transformer").model.layers[0].shims[0]._model
        torch_model.register_forward_pre_hook(lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)),
                                              with_kwargs=True)
        docs = list(nlp.pipe(texts, batch_size=len(texts)))
        runs[groups] = (docs, widths)
    plain, grouped = runs[False][0], runs[True][0]
    lengths = [n for d in plain for n in d._.trf_data.wordpieces.lengths]
    assert runs[False][1] == [(len(lengths), max(lengths))]  # one call, padded to the longest window
    # one call per distinct length (group_overhead 0), each as wide as its own windows
    assert sorted(runs[True][1]) == sorted((lengths.count(n), n) for n in set(lengths))
    assert sum(r * w for r, w in runs[True][1]) == sum(lengths) < len(lengths) * max(lengths)
    assert [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in grouped] == \
        [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in plain]
    for a, b in zip(plain, grouped):
        ta, tb = a._.trf_data, b._.trf_data
        assert ta.tensors[0].shape == tb.tensors[0].shape  # the batch's padded width is kept
        rows = ta.align.data.ravel()
        width = ta.tensors[0].shape[-1]
        numpy.testing.assert_allclose(ta.tensors[0].reshape(-1, width)[rows], tb.tensors[0].reshape(-1, width)[rows],
                                      atol=1e-5)
        for extra_a, extra_b in zip(ta.tensors[1:], tb.tensors[1:]):  # the pooler output, per window
            numpy.testing.assert_allclose(extra_a, extra_b, atol=1e-5)


def test_bidirectional_lets_a_decoder_see_the_right_context_and_ignores_padding(tmp_path):
    import torch
    from transformers import AutoModel

    from tiny_models import make_tiny_llama
    from tokner.encoders.spans import bidirectional_module

    folder = make_tiny_llama(tmp_path / "tiny-llama")
    causal = AutoModel.from_pretrained(folder).eval()
    both = AutoModel.from_pretrained(folder).eval()
    assert bidirectional_module(both) and bidirectional_module(both)  # once per module
    assert causal.config.use_cache and not both.config.use_cache  # no key/value cache for an encoder
    assert all(not m.is_causal for m in both.modules() if hasattr(m, "is_causal"))
    ids = torch.tensor([[5, 6, 7, 8]])
    changed = torch.tensor([[5, 6, 7, 9]])  # only the last token differs
    with torch.no_grad():
        def hidden(model, x, mask=None):
            return model(input_ids=x, attention_mask=mask if mask is not None else torch.ones_like(x)).last_hidden_state
        # causal: the first token's state does not depend on later tokens; bidirectional: it does
        assert torch.equal(hidden(causal, ids)[0, 0], hidden(causal, changed)[0, 0])
        assert not torch.allclose(hidden(both, ids)[0, 0], hidden(both, changed)[0, 0])
        # the same tokens with two padding positions on the right: their states are unchanged
        padded = torch.tensor([[5, 6, 7, 8, 2, 2]])
        mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
        torch.testing.assert_close(hidden(both, padded, mask)[0, :4], hidden(both, ids)[0], atol=1e-5, rtol=1e-4)
    # an encoder (no causal layers) is left alone
    from tiny_models import make_tiny_bert

    bert = AutoModel.from_pretrained(make_tiny_bert(tmp_path / "tiny-bert", ["aa", "bb"]))
    assert not bidirectional_module(bert)


def test_a_bidirectional_decoder_pipeline_trains_and_round_trips(tiny_corpus, tmp_path):
    """SmolLM2's tokenizer on a tiny random llama, as configs/bert.cfg with the decoder settings
    of docs/methods.md ("A decoder as the encoder")."""
    from tiny_models import make_tiny_llama

    folder = make_tiny_llama(tmp_path / "tiny-llama", layers=2)
    settings = {
        "paths.transformer": str(folder), "training.optimizer.learn_rate.warmup_steps": 2,
        "components.transformer.model.bidirectional": True,
        "components.transformer.model.transformer_config": {"use_cache": False},
        "components.transformer.model.tokenizer_config": {
            "use_fast": True, "tokenizer_type": "gpt2", "pad_token": "<|im_end|>", "padding_side": "right"},
    }
    best = _train(BERT_CFG, tmp_path / "decoder", tiny_corpus, **settings)
    nlp = spacy.load(best)
    texts = [d.text for d in DocBin().from_disk(tiny_corpus["dev"]).get_docs(nlp.vocab)]
    docs = list(nlp.pipe(texts))
    torch_model = nlp.get_pipe("transformer").model.layers[0].shims[0]._model
    assert type(torch_model).__name__ == "LlamaModel"
    assert torch_model.__dict__.get("_tokner_bidirectional")
    assert all(not m.is_causal for m in torch_model.modules() if hasattr(m, "is_causal"))
    for doc in docs:  # every token has a vector: the wordpieces line up with the tokens
        assert doc._.trf_data.align.lengths.min() >= 1 or not len(doc)
    nlp.to_disk(tmp_path / "copy")
    again = spacy.load(tmp_path / "copy")
    assert _ents(again, texts) == _ents(nlp, texts)
    # the loaded copy attends both ways too: the same windows give the same states
    for doc, copy in zip(docs, again.pipe(texts)):
        assert (copy._.trf_data.tensors[0] == doc._.trf_data.tensors[0]).all()


def test_length_groups_merge_keeps_encoder_outputs_and_leaves_out_a_decoders_cache():
    import torch
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    from tokner.encoders.buckets import _merge

    groups = [numpy.array([1]), numpy.array([0, 2])]
    first = torch.ones(1, 2, 3)
    second = torch.full((2, 4, 3), 2.0)
    outputs = [BaseModelOutputWithPast(last_hidden_state=first, past_key_values=DynamicCache(),
                                       hidden_states=(first, first)),
               BaseModelOutputWithPast(last_hidden_state=second, past_key_values=DynamicCache(),
                                       hidden_states=(second, second))]
    merged = _merge(outputs, groups, rows=3, length=4)
    assert list(merged.keys()) == ["last_hidden_state", "hidden_states"]
    state = merged.last_hidden_state
    assert state.shape == (3, 4, 3)
    # row 1 is the short group's: its two positions, then zero padding; rows 0 and 2 the long group's
    assert state[1, :2].eq(1).all() and state[1, 2:].eq(0).all()
    assert state[0].eq(2).all() and state[2].eq(2).all()
    assert all(torch.equal(h, state) for h in merged.hidden_states)
