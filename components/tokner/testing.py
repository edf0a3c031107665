"""Testing utilities (public): tiny random models, nothing downloaded.

Used by this package's tests and ``benchmarks/cuda_smoke.py``, and usable in your own
tests of a pipeline that holds a transformer or LoRA pipe: ``make_tiny_bert`` and
``make_tiny_llama`` write a model folder with random weights in seconds.

The tokenizers come from a materialised offline model folder (SmolLM2's tokenizer
files for the llama; a WordPiece vocab built from the given words for the BERT).
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Union

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.txt")


def copy_tokenizer_files(src: Union[str, Path], dest: Union[str, Path]) -> Path:
    """Copy a model folder's tokenizer files to dest."""
    src, dest = Path(src), Path(dest)
    if not (src / "tokenizer.json").exists():
        raise FileNotFoundError(f"tokenizer files not found in {src} (python -m tokner.offline ...)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    return dest


def make_tiny_llama(dest: Union[str, Path], tokenizer_dir: Union[str, Path], hidden: int = 64, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """A random llama with the tokenizer of ``tokenizer_dir``, saved as a normal HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dest = copy_tokenizer_files(tokenizer_dir, dest)
    tok = AutoTokenizer.from_pretrained(dest)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(dest)
    return dest


def make_tiny_bert(dest: Union[str, Path], words: Iterable[str], hidden: int = 32, layers: int = 2) -> Path:
    """A random BERT with a lower-cased WordPiece vocab: every character (alone and as
    ``##c``) plus the 300 most frequent of ``words``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    counts = Counter(w.lower() for w in words if w.strip())
    chars = sorted({c for w in counts for c in w})
    entries = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    entries += [w for w, _ in counts.most_common(300) if w not in entries]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.txt").write_text("\n".join(entries) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(dest / "vocab.txt"), do_lower_case=True, model_max_length=512).save_pretrained(dest)
    config = BertConfig(vocab_size=len(entries), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512)
    BertModel(config).save_pretrained(dest)
    return dest
