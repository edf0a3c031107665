"""Turn a RareDis folder into DocBins: BRAT subfolders and/or the authors' IOB CSVs.

``raredis_dir`` holds, per split, a BRAT folder (``train/``, ``dev/``, ``test/``, or
the same under ``brat/``) and/or ``{split}_combined_IOB_data.csv`` (at the top level
or under ``iob/``). BRAT wins when both exist: it keeps overlaps and discontinuous
entities in ``doc.spans["raredis"]``.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Tuple

import spacy
from spacy.tokens import DocBin

from tokner.corpus.brat import SPANS_KEY, read_brat_docs
from tokner.corpus.iob import read_iob_docs

logger = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


def find_split_source(raredis_dir: Path, split: str) -> Optional[Tuple[str, Path]]:
    raredis_dir = Path(raredis_dir)
    for cand in (raredis_dir / split, raredis_dir / "brat" / split):
        if cand.is_dir() and any(cand.glob("*.ann")):
            return "brat", cand
    for cand in (raredis_dir / f"{split}_combined_IOB_data.csv", raredis_dir / "iob" / f"{split}_combined_IOB_data.csv"):
        if cand.is_file():
            return "iob", cand
    return None


def convert_corpus(raredis_dir: Path, output_dir: Path, on_error: str = "raise", lang: str = "en") -> Dict[str, Dict]:
    """Write ``{split}.spacy`` for every split found and return per-split stats."""
    raredis_dir, output_dir = Path(raredis_dir), Path(output_dir)
    if not raredis_dir.is_dir():
        raise FileNotFoundError(f"raredis_dir not found: {raredis_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    nlp = spacy.blank(lang)
    report: Dict[str, Dict] = {}
    for split in SPLITS:
        found = find_split_source(raredis_dir, split)
        if found is None:
            continue
        kind, path = found
        if kind == "brat":
            docs, stats = read_brat_docs(path, nlp.vocab, on_error=on_error)
        else:
            docs, stats = read_iob_docs(path, nlp.vocab)
        db = DocBin(store_user_data=True, docs=docs)
        out = output_dir / f"{split}.spacy"
        db.to_disk(out)
        stats = Counter(stats)
        stats["sentences"] = sum(1 for d in docs for _ in d.sents)
        stats["tokens"] = sum(1 for d in docs for t in d if not t.is_space)
        report[split] = {"source": str(path), "format": kind, "output": str(out), **dict(sorted(stats.items()))}
        logger.info("%s: %d docs from %s (%s) -> %s", split, len(docs), path, kind, out)
    if "train" not in report or "dev" not in report:
        raise FileNotFoundError(
            f"{raredis_dir} must hold train and dev splits (BRAT folders train/ dev/ or "
            f"train_combined_IOB_data.csv / dev_combined_IOB_data.csv); found {sorted(report)}"
        )
    return report


def corpus_stats(path: Path, spans_key: str = SPANS_KEY) -> Dict:
    """Entity counts per type in Doc.ents and in doc.spans[spans_key] of a DocBin."""
    nlp = spacy.blank("en")
    docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    ents, spans, ids = Counter(), Counter(), Counter()
    n_sents = n_tokens = 0
    for doc in docs:
        ents.update(e.label_ for e in doc.ents)
        if spans_key in doc.spans:
            spans.update(s.label_ for s in doc.spans[spans_key])
            seen = {}
            for s in doc.spans[spans_key]:
                seen.setdefault(s.id_, s.label_)
            ids.update(seen.values())
        n_sents += sum(1 for _ in doc.sents) if doc.has_annotation("SENT_START") else 1
        n_tokens += sum(1 for t in doc if not t.is_space)
    return {
        "docs": len(docs),
        "sentences": n_sents,
        "tokens": n_tokens,
        "ents": dict(sorted(ents.items())),
        "annotated_entities": dict(sorted(ids.items())),
        "annotated_fragments": dict(sorted(spans.items())),
    }


# --- assets: unpacking the public downloads -----------------------------------------

# sha256 over the sorted (file name, bytes) of every .txt/.ann file of a split, as
# published (corpus/train.zip and corpus/dev.zip of the RareDis repository). The zips'
# own bytes could not be fetched where this was written, so the check is on content.
BRAT_FINGERPRINTS = {
    "train": "a0c7dc9a7d77abad6755e7148b29d46c214f9e5e9db661e983cb9ac43cc078c0",
    "dev": "cce4119fc35984b62bdc69f64df26de9216702886d8ba41307e82a2dce91d851",
}


def brat_fingerprint(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(folder).iterdir()):
        if p.suffix in (".txt", ".ann"):
            h.update(p.name.encode("utf-8") + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def unpack_assets(download_dir: Path, raredis_dir: Path, verify: bool = True) -> Dict[str, str]:
    """Unzip ``train.zip``/``dev.zip`` (BRAT) and copy ``test_combined_IOB_data.csv`` (if
    downloaded) from ``download_dir`` into the layout ``convert`` reads."""
    import shutil
    import tempfile
    import zipfile

    download_dir, raredis_dir = Path(download_dir), Path(raredis_dir)
    done: Dict[str, str] = {}
    for split in ("train", "dev"):
        zpath = download_dir / f"{split}.zip"
        if not zpath.is_file():
            raise FileNotFoundError(f"{zpath} not found: run `spacy project assets` first")
        target = raredis_dir / split
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp)
            folders = {p.parent for p in Path(tmp).rglob("*.ann") if "__MACOSX" not in p.parts}
            if len(folders) != 1:
                raise ValueError(f"{zpath}: expected one folder of .ann files, found {len(folders)}")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for p in next(iter(folders)).iterdir():
                if p.suffix in (".txt", ".ann"):
                    shutil.copy2(p, target / p.name)
        digest = brat_fingerprint(target)
        if verify and digest != BRAT_FINGERPRINTS[split]:
            raise ValueError(
                f"{zpath}: content fingerprint {digest} differs from the published {split} split "
                f"({BRAT_FINGERPRINTS[split]}); pass --no-verify to use it anyway"
            )
        done[split] = str(target)
    csv = download_dir / "test_combined_IOB_data.csv"
    if csv.is_file():
        shutil.copy2(csv, raredis_dir / csv.name)
        done["test"] = str(raredis_dir / csv.name)
    return done
