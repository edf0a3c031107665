"""Loading the base causal LM, its tokenizer and a LoRA adapter (transformers + peft)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def require_lora_deps() -> None:
    missing = []
    for mod in ("torch", "transformers", "peft"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(
            f"the LoRA component needs {', '.join(missing)}: pip install 'spacy-tokner[lora]'"
        )


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"torch_dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


def _check_local(name: str) -> None:
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).parts[0] in ("assets", "training")
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(
            f"base model folder not found: {name!r} (a hub name or an existing local folder; "
            "offline default: python -m tokner.offline smollm2 assets/models/SmolLM2-135M-Instruct)"
        )


def load_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    _check_local(base_model)
    tok = AutoTokenizer.from_pretrained(base_model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(
    base_model: str,
    device: str = "auto",
    torch_dtype: str = "auto",
    load_in_4bit: bool = False,
    for_training: bool = False,
):
    """The base causal LM; ``load_in_4bit`` quantises with bitsandbytes (CUDA only)."""
    from transformers import AutoModelForCausalLM

    _check_local(base_model)
    device = resolve_device(device)
    dtype = resolve_dtype(torch_dtype, device)
    kwargs: Dict[str, Any] = {"torch_dtype": dtype}
    if load_in_4bit:
        if not device.startswith("cuda"):
            raise ValueError("load_in_4bit needs a CUDA device (bitsandbytes); set load_in_4bit = false on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ImportError("load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if not load_in_4bit:
        model.to(device)
    if for_training and load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


def make_lora_config(
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: Union[str, Sequence[str]] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    layers_to_transform: Optional[Sequence[int]] = None,
):
    from peft import LoraConfig

    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [m.strip() for m in target_modules.split(",") if m.strip()]
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        layers_to_transform=list(layers_to_transform) if layers_to_transform else None,
    )


def attach_adapter(model, adapter: Union[str, Path, None] = None, lora_config=None, trainable: bool = False):
    """A PeftModel: the adapter read from a folder in peft's format, or a fresh one."""
    from peft import PeftModel, get_peft_model

    if adapter is not None:
        path = Path(adapter)
        if not (path / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(f"no {ADAPTER_CONFIG} in adapter folder {str(path)!r}")
        return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    if lora_config is None:
        raise ValueError("attach_adapter needs an adapter folder or a LoraConfig")
    return get_peft_model(model, lora_config)


def adapter_state(peft_model) -> Tuple[Any, Dict[str, Any]]:
    """(LoraConfig, state dict) of the active adapter, detached on CPU."""
    from peft import get_peft_model_state_dict

    name = peft_model.active_adapter
    config = peft_model.peft_config[name]
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    return config, state


def save_adapter(path: Union[str, Path], config, state: Dict[str, Any]) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` exactly as peft does."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    save_file(state, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
