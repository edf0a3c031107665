"""GrowingCache and grouped attention give the same results as transformers' defaults."""
from unittest import mock

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tokner.decoding.kvcache import GROUPED_SDPA, GrowingCache, use_grouped_attention  # noqa: E402

TORCH_THREADS = 1  # conftest: one torch thread for this module


def tiny_llama(seed: int = 0, heads: int = 4, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg).eval()


def left_padded(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # rows of different lengths, left-padded
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def chunked_logits(model, cache, ids, mask, sizes):
    """Feed ids in chunks of the given sizes through one cache; logits of every position."""
    out, start = [], 0
    for size in sizes:
        stop = start + size
        pos = (mask[:, :stop].cumsum(-1) - 1).clamp(min=0)[:, start:stop]
        with torch.no_grad():
            res = model(input_ids=ids[:, start:stop], attention_mask=mask[:, :stop], position_ids=pos,
                        past_key_values=cache, use_cache=True)
        cache = res.past_key_values
        out.append(res.logits)
        start = stop
    return torch.cat(out, dim=1), cache


def test_grouped_attention_matches_sdpa_without_repeating_heads():
    from transformers import DynamicCache

    model = tiny_llama()
    ids, mask = left_padded()
    assert model.config._attn_implementation == "sdpa"
    expected, _ = chunked_logits(model, DynamicCache(), ids, mask, [5, 1, 3])
    assert use_grouped_attention(model) and model.config._attn_implementation == GROUPED_SDPA
    import transformers.integrations.sdpa_attention as sdpa_module

    with mock.patch.object(sdpa_module, "repeat_kv", wraps=sdpa_module.repeat_kv) as spy:
        got, _ = chunked_logits(model, DynamicCache(), ids, mask, [5, 1, 3])
    assert spy.call_count == 0  # every layer call had a padded 4-D mask: no head copies
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-4)
    assert use_grouped_attention(model)  # idempotent


def test_grouped_attention_leaves_non_sdpa_models_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    assert not use_grouped_attention(model)
    assert model.config._attn_implementation == "eager"


def test_growing_cache_matches_dynamic_cache_across_regrowth_and_row_drops():
    from transformers import DynamicCache

    model = tiny_llama(seed=2)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 97, (3, 300), generator=g)  # > 256: the buffers must grow
    mask = torch.ones_like(ids)
    sizes = [200, 1, 40, 59]
    expected, dyn = chunked_logits(model, DynamicCache(), ids, mask, sizes)
    got, grow = chunked_logits(model, GrowingCache(), ids, mask, sizes)
    assert isinstance(grow, GrowingCache) and grow.get_seq_length() == 300 == dyn.get_seq_length()
    assert grow.key_cache[0].shape[-2] >= 300
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # drop row 1, feed more: same as DynamicCache
    keep = torch.tensor([0, 2])
    dyn.batch_select_indices(keep)
    grow.batch_select_indices(keep)
    more = torch.randint(3, 97, (2, 4), generator=g)
    pos = torch.arange(300, 304).expand(2, -1)
    with torch.no_grad():
        a = model(input_ids=more, position_ids=pos, past_key_values=dyn, use_cache=True).logits
        b = model(input_ids=more, position_ids=pos, past_key_values=grow, use_cache=True).logits
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    grow.crop(100)
    assert grow.get_seq_length() == 100


def test_generate_with_growing_cache_and_grouped_attention_is_unchanged():
    model = tiny_llama(seed=4)
    ids, mask = left_padded(seed=5)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                  eos_token_id=1)
    with torch.no_grad():
        expected = model.generate(**kwargs)
        use_grouped_attention(model)
        got = model.generate(**kwargs, past_key_values=GrowingCache())
    assert torch.equal(got, expected)
    with pytest.raises(NotImplementedError, match="greedy"):
        GrowingCache().batch_repeat_interleave(2)
