"""Constrained decoding: always one valid tag per token and valid spans, whatever the weights;
batched KV-cache decoding equals a cache-free reference decoder."""
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import spacy  # noqa: E402

from tokner.decoding.constrained import chunk_width, constrained_decode, free_generate  # noqa: E402
from tokner.lora.prompt import PromptCodec, allowed_tags, bio_tags  # noqa: E402
from tokner.scoring.scorer import ALL_LABELS  # noqa: E402
from tokner.answers.tags import doc_tags  # noqa: E402
from tiny_models import SMOL, copy_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


TORCH_THREADS = 1  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(copy_tokenizer(SMOL, tmp_path_factory.mktemp("tok")))


def tiny_llama(vocab_size: int, seed: int, scale: float = 1.0, layers: int = 1, hidden: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model.eval()


def reference_decode(model, codec, words, bio=True):
    """One sentence, full recompute at every decision (no cache, no padding)."""
    ids = codec.prompt_ids(words)
    tags = []
    prev = "O"
    for i, w in enumerate(words):
        ids = ids + codec.word_ids(w, i == 0)
        allowed = set(allowed_tags(codec.tags, prev, bio))
        node = codec.trie
        while node.tag is None:
            kids = [(t, c) for t, c in node.children.items() if any(x in allowed for x in c.tags)]
            if len(kids) > 1:
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                k = int(torch.argmax(logits[[t for t, _ in kids]]))
            else:
                k = 0
            ids = ids + [kids[k][0]]
            node = kids[k][1]
        tags.append(node.tag)
        prev = node.tag
    return tags


def test_trie_needs_few_decisions(tokenizer):
    codec = PromptCodec(tokenizer, ALL_LABELS)
    calls = codec.calls_per_tag()
    assert set(calls) == set(bio_tags(ALL_LABELS))
    assert calls["O"] == 1 and max(calls.values()) <= 2


@pytest.mark.parametrize("instruction", ["minimal", "short", "paper", "Label: {labels}."])
@pytest.mark.parametrize("input_format", ["lines", "text"])
def test_prompt_formats_encode_the_rendered_prompt(tokenizer, instruction, input_format):
    from tokner.lora.prompt import INSTRUCTIONS, render_prompt, resolve_instruction
    from tokner.answers.paper_format import render_answer

    words, tags = ["Alport", "syndrome", "causes", "pain", "."], ["B-RAREDISEASE", "I-RAREDISEASE", "O", "B-SYMPTOM", "O"]
    codec = PromptCodec(tokenizer, ALL_LABELS, instruction, input_format)
    text = resolve_instruction(instruction, ALL_LABELS)
    expected = INSTRUCTIONS.get(instruction, instruction).replace("{labels}", ", ".join(ALL_LABELS))
    assert text.startswith(expected) and "{labels}" not in text  # "paper" adds a line for ANAPHOR
    prompt = tokenizer.decode(codec.prompt_ids(words), skip_special_tokens=True,  # a bos, if any
                              clean_up_tokenization_spaces=False)
    assert prompt == render_prompt(words, text, input_format)
    body = prompt.split("### Input:\n", 1)[1]
    assert body.startswith(" ".join(words) if input_format == "text" else "\n".join(words))
    answer, _ = codec.answer_ids(words, tags)
    assert tokenizer.decode(answer[:-1], clean_up_tokenization_spaces=False) == render_answer(words, tags)
    if instruction == "minimal":  # the point of "minimal": a much shorter head than "short"
        assert len(codec.head_ids()) < len(PromptCodec(tokenizer, ALL_LABELS, "short").head_ids()) / 2


def test_batched_cache_decoding_equals_reference(tokenizer):
    codec = PromptCodec(tokenizer, ALL_LABELS)
    model = tiny_llama(len(tokenizer), seed=3, scale=4.0, layers=2, hidden=32)
    sents = [["Alport", "syndrome", "causes", "hearing", "loss", "."], ["Pain", "."],
             ["Epidermolysis", "bullosa", "(", "EB", ")", "affects", "the", "skin", "of", "infants", "."],
             ["x"]]
    expected = [reference_decode(model, codec, s) for s in sents]
    probs = None
    calls = {}
    for batch_size, share_head, call_cost, speculate in (
            (1, False, None, 0), (3, True, None, 0), (4, False, None, 0), (4, True, None, 0), (4, True, 0.0, 0),
            (4, False, 3.0, 0), (4, True, 128.0, 0), (1, True, None, 3), (4, True, None, 1), (4, True, None, 3),
            (4, False, 3.0, 2), (4, True, 0.0, 20), (3, True, 8.0, 5)):
        settings_ = (batch_size, share_head, call_cost, speculate)
        got, stats = constrained_decode(model, codec, sents, batch_size=batch_size, share_head=share_head,
                                        call_cost=call_cost, speculate=speculate)
        assert [t for t, _ in got] == expected, settings_
        assert stats.fed_tokens <= stats.slot_tokens
        assert stats.decisions >= stats.words  # every word's tag was decided (or verified) by the model
        flat = [p for _, ps in got for p in ps]
        if probs is None:
            probs = flat
        assert flat == pytest.approx(probs, abs=1e-4), settings_
        if call_cost == 0.0 and not speculate:  # no call overhead: never a pad slot in a call, so fewer slots
            assert stats.slot_tokens < full_slots
        if call_cost is None and batch_size == 4 and share_head:
            calls[speculate] = stats.model_calls
            if not speculate:
                full_slots = stats.slot_tokens
    # guessing O ahead verifies several words per call: fewer calls, the same tags
    assert calls[3] <= calls[1] < calls[0], calls
    from tokner.decoding.constrained import split_head
    from tokner.decoding.kvcache import use_grouped_attention

    assert split_head(model) is not None  # the label-rows-only head path was the one compared
    assert use_grouped_attention(model)
    got, _ = constrained_decode(model, codec, sents, batch_size=4, call_cost=8.0)
    assert [t for t, _ in got] == expected
    assert [p for _, ps in got for p in ps] == pytest.approx(probs, abs=1e-4)
    # with random scaled weights some non-O labels occur, so the test exercises the 2-decision path
    assert any(t != "O" for tags in expected for t in tags)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([4.0, 30.0]), bio=st.booleans())
@example(seed=9999, scale=4.0, bio=True)  # one B-X B-X pair, never drafted: the rule had not seen it yet
def test_speculation_drafts_whole_tags_and_changes_nothing(tokenizer, seed, scale, bio):
    """Drafts continue the row's own tag pattern, ``B-X`` included (two decisions each):
    tags and probabilities equal those decoded without speculation."""
    import tokner.decoding.constrained as cd

    codec = PromptCodec(tokenizer, ALL_LABELS)
    model = tiny_llama(len(tokenizer), seed, scale)
    sents = [["Alport", "syndrome", "causes", "hearing", "loss", "in", "boys", "."], ["Pain", "and", "fever", "."]]
    plain, _ = constrained_decode(model, codec, sents, batch_size=2, bio=bio, speculate=0)
    later = []
    real_check = cd._Check

    class Counting(real_check):
        __slots__ = ()

        def __init__(self, row, draft, first):
            super().__init__(row, draft, first)
            later.append(not first)

    cd._Check = Counting
    try:
        drafted, stats = constrained_decode(model, codec, sents, batch_size=2, bio=bio, speculate=4)
    finally:
        cd._Check = real_check
    assert [t for t, _ in drafted] == [t for t, _ in plain]
    assert [p for _, ps in drafted for p in ps] == pytest.approx([p for _, ps in plain for p in ps], abs=1e-4)
    if any(_drafts_repeated_b(tags) for tags, _ in plain):
        assert any(later), "a repeated B- tag was never drafted"


def _drafts_repeated_b(tags) -> bool:
    """Whether the draft rule (``_draft_target``: the tag that last followed the previous
    tag in this sentence) guesses ``B-X`` after ``B-X`` at a word whose tag is ``B-X``: only
    then is a repeated ``B-`` tag drafted (a first repetition is not yet known)."""
    follow = {}
    for prev, tag in zip(tags, tags[1:]):
        if prev.startswith("B-") and tag == prev and follow.get(prev) == prev:
            return True
        follow[prev] = tag
    return False


def test_chunk_width_trades_pads_against_calls():
    assert chunk_width([3, 3, 12], None) == 12  # no call cost given: the longest chunk
    assert chunk_width([3, 3, 12], 0.0) == 3  # free calls: no pad slots
    assert chunk_width([3, 3, 12], 1000.0) == 12  # dear calls: one call for everything
    assert chunk_width([5, 5, 5], 0.0) == 5
    # 3 rows, costs per real token: width 3 -> (c + 9) / 9, width 12 -> (c + 36) / 18
    assert chunk_width([3, 3, 12], 17.0) == 3 and chunk_width([3, 3, 12], 19.0) == 12
    for bad in ([], [0, 3]):
        with pytest.raises(ValueError, match="pending chunk lengths"):
            chunk_width(bad, 1.0)
    with pytest.raises(ValueError, match="call_cost"):
        chunk_width([1, 2], -1.0)


WORD = st.text(alphabet=st.sampled_from(list("abcXYZ019().,;:-'/%é’ ")), min_size=1, max_size=6).map(
    lambda s: s.strip() or "w").filter(lambda s: " " not in s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([0.0, 1.0, 30.0, 1e4]),
    sentences=st.lists(st.lists(WORD, min_size=1, max_size=7), min_size=1, max_size=4),
    labels=st.lists(st.sampled_from(ALL_LABELS), min_size=1, max_size=6, unique=True),
    bio=st.booleans(),
    speculate=st.sampled_from([0, 0, 1, 4]),
)
def test_constrained_decoding_always_valid(tokenizer, seed, scale, sentences, labels, bio, speculate):
    codec = PromptCodec(tokenizer, labels)
    model = tiny_llama(len(tokenizer), seed, scale)
    out, stats = constrained_decode(model, codec, sentences, batch_size=3, bio=bio, speculate=speculate)
    assert len(out) == len(sentences)
    for words, (tags, probs) in zip(sentences, out):
        assert len(tags) == len(words) == len(probs)
        assert all(t in codec.tags for t in tags)
        assert all(0.0 < p <= 1.0 + 1e-6 for p in probs)
        if bio:
            for prev, t in zip(["O"] + tags, tags):
                assert not t.startswith("I-") or prev[2:] == t[2:]
    assert stats.words == sum(len(s) for s in sentences)


@pytest.fixture(scope="module")
def lora_nlp(tokenizer, tmp_path_factory):
    """A pipeline whose pipe uses a random tiny model (no adapter files needed)."""
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    pipe = nlp.add_pipe("tokner_lora_ner", config={"base_model": "unused", "batch_size": 3})
    pipe._tokenizer = tokenizer
    return nlp, pipe


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([1.0, 50.0]),
    text=st.lists(st.sampled_from(["Alport", "syndrome", "(", "AS", ")", ".", "\n\n", "pain", "-", "fever", "  ", "é"]),
                  min_size=0, max_size=18).map(" ".join),
)
def test_doc_spans_have_exact_offsets(lora_nlp, tokenizer, seed, scale, text):
    nlp, pipe = lora_nlp
    pipe._model = tiny_llama(len(tokenizer), seed, scale)
    doc = nlp(text)
    tags = doc_tags(doc)
    assert len(tags) == len(doc)
    for ent in doc.ents:
        assert ent.label_ in ALL_LABELS
        assert not ent[0].is_space and not ent[-1].is_space
        sent_ids = {t.sent.start for t in ent if not t.is_space}
        assert len(sent_ids) == 1  # no entity crosses a sentence start
    scores = doc.spans["lora"].attrs["scores"]
    assert len(scores) == len(doc.ents) and all(0.0 < s <= 1.0 + 1e-6 for s in scores)


def newline_looper(tokenizer):
    """A tiny llama whose greedy answer is newlines forever: the residual branches are zero,
    every token embeds to the same vector u, and only the newline's output row is non-zero (u),
    so the newline's logit is |u| > 0 and every other logit is 0 at every position."""
    model = tiny_llama(len(tokenizer), seed=0)
    (nl,) = tokenizer.encode("\n", add_special_tokens=False)
    u = torch.linspace(0.5, 1.5, model.config.hidden_size)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(u.expand_as(model.model.embed_tokens.weight))
        model.lm_head.weight.zero_()
        model.lm_head.weight[nl] = u
    return model


def test_free_generation_stops_a_looping_row_at_one_line_per_word(tokenizer):
    codec = PromptCodec(tokenizer, ALL_LABELS)
    model = newline_looper(tokenizer)
    sents = [["Alport", "syndrome", "causes", "hearing", "loss", "."], ["Pain", "."], ["x"]]
    out, stats = free_generate(model, codec, sents, batch_size=3)
    # each row stops at its n-th newline, not at max_new_tokens (6 words: 48 tokens here)
    assert [a.count("\n") for a in stats.answers] == [6, 2, 1]
    assert set(stats.answers) <= {"\n" * 6, "\n" * 2, "\n"}
    assert stats.line_stops == 3
    assert stats.model_calls == 6  # the batch ends with its longest sentence's sixth line
    assert [len(tags) for tags, _ in out] == [6, 2, 1]
