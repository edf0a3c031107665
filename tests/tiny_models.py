"""Tiny random models and corpus slices, built inside the tests (nothing is downloaded).

The builders live in :mod:`tokner.testing`; here they skip the test when the offline
tokenizer files are missing. ``conftest.pytest_sessionstart`` materialises them under
``assets/models`` (SmolLM2's tokenizer, MiniLM's WordPiece vocab).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tokner import testing
from tokner.testing import make_tiny_bert  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
SMOL = ROOT / "assets" / "models" / "SmolLM2-135M-Instruct"
MINILM = ROOT / "assets" / "models" / "all-MiniLM-L6-v2"


def _require_tokenizer(src: Path) -> None:
    """Skip the test when ``src`` has no materialised tokenizer files."""
    if not (src / "tokenizer.json").exists():
        pytest.skip(f"tokenizer files not found in {src} (python -m tokner.offline ...)")


def copy_tokenizer(src: Path, dest: Path) -> Path:
    """Copy a materialised model's tokenizer files to dest (skip the test when src is missing)."""
    _require_tokenizer(src)
    return testing.copy_tokenizer_files(src, dest)


def make_tiny_llama(dest: Path, **kwargs) -> Path:
    """A random llama with SmolLM2's tokenizer (see :func:`tokner.testing.make_tiny_llama`)."""
    _require_tokenizer(SMOL)
    return testing.make_tiny_llama(dest, SMOL, **kwargs)


def pick_brat(brat_dir: Path, start: int, n: int, dest: Path) -> Path:
    """Copy n BRAT documents to dest (deterministic: by text size, then name)."""
    dest.mkdir(parents=True, exist_ok=True)
    txts = sorted(brat_dir.glob("*.txt"), key=lambda p: (p.stat().st_size, p.name))
    for txt in txts[start : start + n]:
        shutil.copy(txt, dest / txt.name)
        shutil.copy(txt.with_suffix(".ann"), dest / txt.with_suffix(".ann").name)
    return dest
