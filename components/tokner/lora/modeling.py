"""Loading the base causal LM, its tokenizer and a LoRA adapter (transformers + peft),
and writing a compact copy of the base model (for pipelines that carry their base)."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
# files of a model folder that are copied verbatim into a bundled base (the weights are
# rewritten, the tokenizer is saved again by its own class)
MODEL_FILES = ("config.json", "generation_config.json")
BUNDLE_DTYPES = ("bfloat16", "float16", "float32")
# a Hugging Face hub id: "name" or "namespace/name" (letters, digits, "-", "_", ".")
_HUB_ID = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?")


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
    if dtype == "fastest":
        from tokner.utils.hardware import fastest_dtype

        dtype = fastest_dtype(device)
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"torch_dtype must be auto, fastest, float32, bfloat16 or float16, got {dtype!r}") from None


def is_local_model(name: Union[str, Path]) -> bool:
    """Whether ``name`` names a local folder rather than a hub id.

    True for an existing path and for anything that cannot be a hub id: an absolute
    path, a path starting with "." or "~", one with more than two parts
    ("assets/models/SmolLM2-135M-Instruct") or with characters a hub id cannot hold.
    A missing "name" or "namespace/name" is a hub id.
    """
    name = str(name)
    if Path(name).expanduser().exists():
        return True
    return (Path(name).is_absolute() or name.startswith((".", "~")) or "\\" in name or ".." in name
            or _HUB_ID.fullmatch(name) is None)


def _check_local(name: str) -> None:
    if is_local_model(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(
            f"base model folder not found: {name!r} (relative to {str(Path.cwd())!r}; a hub id or an existing "
            "local folder; offline default: python -m tokner.offline smollm2 assets/models/SmolLM2-135M-Instruct)"
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
    attn_implementation: Optional[str] = None,
):
    """The base causal LM; ``load_in_4bit`` quantises with bitsandbytes (CUDA only);
    ``attn_implementation`` as transformers' (None: the model's default)."""
    from transformers import AutoModelForCausalLM

    _check_local(base_model)
    device = resolve_device(device)
    dtype = resolve_dtype(torch_dtype, device)
    kwargs: Dict[str, Any] = {"torch_dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
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


# -- a compact copy of the base model ---------------------------------------------------

def _torch_dtype(name: str):
    import torch

    if name not in BUNDLE_DTYPES:
        raise ValueError(f"bundle_dtype must be one of {BUNDLE_DTYPES}, got {name!r}")
    return getattr(torch, name)


def _safetensors_shards(folder: Path) -> Optional[Sequence[str]]:
    """The safetensors weight files of a model folder, or None when it has none."""
    if (folder / SAFE_WEIGHTS_INDEX).exists():
        index = json.loads((folder / SAFE_WEIGHTS_INDEX).read_text(encoding="utf-8"))
        return sorted(set(index["weight_map"].values()))
    if (folder / SAFE_WEIGHTS).exists():
        return [SAFE_WEIGHTS]
    return None


def _compact_shard(src: Path, dest: Path, dtype) -> Tuple[int, bool]:
    """Write ``src`` to ``dest`` with every floating tensor wider than ``dtype`` cast to it
    (narrower ones, and integer tensors, are kept). A shard with nothing to cast is copied
    byte for byte. Returns (bytes of tensor data, whether anything was cast)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    widths = {"F64": 8, "F32": 4}
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata() or {}
        wide = any(widths.get(f.get_slice(k).get_dtype(), 0) > dtype.itemsize for k in f.keys())
    if not wide:
        shutil.copyfile(src, dest)
        with open(src, "rb") as f:  # the data follows an 8-byte header length and the JSON header
            header = int.from_bytes(f.read(8), "little")
        return src.stat().st_size - 8 - header, False
    tensors = load_file(str(src))
    for k, t in tensors.items():
        if t.is_floating_point() and t.element_size() > dtype.itemsize:
            tensors[k] = t.to(dtype)
    save_file(tensors, str(dest), metadata=dict(metadata, format=metadata.get("format", "pt")))
    return sum(t.nbytes for t in tensors.values()), True


def save_base_model(source: Union[str, Path], dest: Union[str, Path], dtype: str = "bfloat16") -> Path:
    """Write a self-contained, compact copy of a base causal LM into the folder ``dest``.

    source: a local model folder or a hub id. A folder with safetensors weights is
        rewritten shard by shard (no model is built): every floating tensor wider than
        ``dtype`` is cast to it, narrower ones are kept, so a float16 or bfloat16 base is
        copied as it is. Other sources (a hub id, ``pytorch_model.bin`` weights) are
        loaded with transformers and saved as safetensors, cast the same way.
    dest: the folder to write (created; files already there are replaced).
    dtype: "bfloat16" (half of float32, float32's range), "float16" or "float32"
        (a float32 base is then copied exactly).

    The copy holds ``config.json`` (its ``torch_dtype`` says what was stored), the
    generation config when there is one, the tokenizer files and the weights: what
    :func:`load_base_model` and :func:`load_tokenizer` need and nothing else.
    Returns ``dest``.
    """
    from transformers import AutoTokenizer

    target = _torch_dtype(dtype)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folder = Path(source).expanduser()
    shards = _safetensors_shards(folder) if folder.is_dir() else None
    if shards is None:
        _check_local(str(source))
        _save_with_transformers(str(source), dest, target)
    else:
        total, cast = 0, False
        for shard in shards:
            size, shard_cast = _compact_shard(folder / shard, dest / shard, target)
            total, cast = total + size, cast or shard_cast
        if (folder / SAFE_WEIGHTS_INDEX).exists():
            index = json.loads((folder / SAFE_WEIGHTS_INDEX).read_text(encoding="utf-8"))
            index.setdefault("metadata", {})["total_size"] = total
            (dest / SAFE_WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        for name in MODEL_FILES:
            if (folder / name).exists():
                shutil.copyfile(folder / name, dest / name)
        if cast and (dest / "config.json").exists():
            config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
            config["torch_dtype"] = dtype
            (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(dest))
    return dest


def _save_with_transformers(source: str, dest: Path, target) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype="auto")
    if model.dtype.is_floating_point and model.dtype.itemsize > target.itemsize:
        model = model.to(target)
    model.save_pretrained(str(dest), safe_serialization=True)
