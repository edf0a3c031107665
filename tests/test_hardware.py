"""dtype = "fastest": bf16 only where the CPU (or GPU) computes it natively."""
import pytest

from tokner.utils.hardware import cpu_has_native_bf16, fastest_dtype


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor : 0\nflags : fpu sse avx512f amx_tile amx_bf16 amx_int8\n\nprocessor : 1\n")
    avx = tmp_path / "avx"
    avx.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    plain = tmp_path / "plain"
    plain.write_text("flags : fpu sse avx2 avx512f avx512bw\n")
    assert cpu_has_native_bf16(str(amx)) is True
    assert cpu_has_native_bf16(str(avx)) is True
    assert cpu_has_native_bf16(str(plain)) is False  # AVX512 alone emulates bf16: float32 is faster
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_fastest_dtype_follows_this_machine():
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert fastest_dtype("cpu") == expected


def test_hf_model_resolves_fastest_without_loading_weights():
    pytest.importorskip("spacy_llm")
    from spacy.util import registry

    import tokner.llm  # noqa: F401

    make = registry.llm_models.get("tokner.HFCausalLM.v1")
    model = make(name="/nonexistent/model", device="cpu", dtype="fastest")
    assert model.fingerprint()["dtype"] == fastest_dtype("cpu")  # the cache key names the real dtype
    assert model._model is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        make(name="x", dtype="bf16")


def test_lora_pipe_resolves_fastest_dtype():
    torch = pytest.importorskip("torch")
    from tokner.lora.modeling import resolve_dtype

    assert resolve_dtype("fastest", "cpu") == getattr(torch, fastest_dtype("cpu"))
    assert resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="auto, fastest, float32"):
        resolve_dtype("bf16", "cpu")
