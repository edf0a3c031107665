"""Scoring pipelines and answer files with the paper's metric."""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example
from tqdm import tqdm

from tokner.corpus.iob import read_iob_rows
from tokner.answers.paper_format import paper_position_tags, split_blocks
from tokner.scoring.scorer import PAPER_LABELS, paper_prf, score_paper_ner
from tokner.answers.tags import is_valid_tag, spans_from_tags


def load_gold_docs(path: Path, nlp: Language) -> List[Doc]:
    """Gold Docs from a DocBin (``.spacy``), a BRAT folder or an IOB CSV."""
    path = Path(path)
    if path.is_dir():
        from tokner.corpus.brat import read_brat_docs

        return read_brat_docs(path, nlp.vocab)[0]
    if path.suffix == ".csv":
        from tokner.corpus.iob import read_iob_docs

        return read_iob_docs(path, nlp.vocab)[0]
    if not path.exists():
        raise FileNotFoundError(f"evaluation data not found: {path}")
    return list(DocBin().from_disk(path).get_docs(nlp.vocab))


def entity_writers(nlp: Language) -> List[str]:
    """Names of the pipeline's components that write ``Doc.ents`` (their factory declares
    ``doc.ents``, or spacy-llm's ``llm``, whose task decides what it writes)."""
    out = []
    for name in nlp.pipe_names:
        meta = nlp.get_pipe_meta(name)
        if "doc.ents" in (meta.assigns or []) or meta.factory == "llm":
            out.append(name)
    return out


def parse_doc_slice(text: str) -> slice:
    """``"START:END"`` (either part may be empty, negatives count from the end) as a slice."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ValueError(f"expected documents as START:END (either may be empty), got {text!r}")
    try:
        return slice(*(int(x) if x.strip() else None for x in parts))
    except ValueError:
        raise ValueError(f"expected integers in START:END, got {text!r}") from None


def evaluate_pipeline(
    nlp: Language,
    gold_docs: Sequence[Doc],
    batch_size: int = 32,
    limit: int = 0,
    progress: bool = True,
) -> Tuple[Dict, List[Example]]:
    """Run ``nlp`` over the gold texts (its own tokenizer) and score with the paper's metric."""
    gold_docs = list(gold_docs)[: limit or None]
    n_words = sum(1 for d in gold_docs for t in d if not t.is_space)
    start = time.perf_counter()
    preds = nlp.pipe((d.text for d in gold_docs), batch_size=batch_size)
    examples = [
        Example(pred, gold)
        for pred, gold in zip(tqdm(preds, total=len(gold_docs), desc="evaluate", unit="doc", disable=not progress), gold_docs)
    ]
    seconds = time.perf_counter() - start
    scores = score_paper_ner(examples)
    scores["speed_words_per_second"] = n_words / seconds if seconds else 0.0
    scores["seconds"] = seconds
    scores["docs"] = len(gold_docs)
    return scores, examples


def format_table(scores: Dict) -> str:
    table = scores["spans_paper_per_type"]
    rows = [f"{'type':<16}{'P':>8}{'R':>8}{'F':>8}"]
    order = [k for k in table if k not in ("AVG-5", "MICRO-5", "MICRO-ALL")] + ["AVG-5", "MICRO-5", "MICRO-ALL"]
    for k in order:
        v = table[k]
        rows.append(f"{k:<16}{v['p']*100:>8.2f}{v['r']*100:>8.2f}{v['f']*100:>8.2f}")
    return "\n".join(rows)


# --- re-scoring answer files in the paper's format ---------------------------------

def gold_sentence_groups(csv_path: Path, grouping: str) -> List[List[Tuple[str, str]]]:
    """(token, tag) lists, one per answer block, from the authors' CSV.

    grouping="file": one group per (File, Sentence_Num) in file order.
    grouping="paper": one group per Sentence_Num_Global in ascending order, merging
    sentences that share a global number, exactly as the authors' ``groupby`` did.
    """
    files = read_iob_rows(csv_path)
    groups: "OrderedDict" = OrderedDict()
    for name, rows in files.items():
        for tok, tag, sent, sent_global, _ in rows:
            key = (name, sent) if grouping == "file" else sent_global
            groups.setdefault(key, []).append((tok, tag))
    if grouping == "paper":
        return [groups[k] for k in sorted(groups)]
    return list(groups.values())


def score_answer_file(
    answers_path: Path,
    gold_csv: Path,
    align: str = "position",
    grouping: str = "auto",
    labels: Sequence[str] = PAPER_LABELS,
) -> Dict:
    """Score ``######``-separated ``token : label`` answers against an IOB CSV."""
    blocks = split_blocks(Path(answers_path).read_text(encoding="utf-8"))
    if grouping == "auto":
        by_file = gold_sentence_groups(gold_csv, "file")
        by_paper = gold_sentence_groups(gold_csv, "paper")
        if len(blocks) == len(by_paper):
            grouping, groups = "paper", by_paper
        elif len(blocks) == len(by_file):
            grouping, groups = "file", by_file
        else:
            raise ValueError(
                f"{answers_path}: {len(blocks)} answer blocks, but {gold_csv} has {len(by_paper)} "
                f"sentences by Sentence_Num_Global and {len(by_file)} by (File, Sentence_Num)"
            )
    else:
        groups = gold_sentence_groups(gold_csv, grouping)
        if len(blocks) != len(groups):
            raise ValueError(f"{answers_path}: {len(blocks)} answer blocks for {len(groups)} gold sentences ({grouping} grouping)")
    vocab = spacy.blank("en").vocab
    examples = []
    n_invalid = n_aligned = 0
    for block, group in zip(blocks, groups):
        words = [t for t, _ in group]
        if align == "position":
            pred_tags = paper_position_tags(block, len(words))
            full = True
        elif align == "tokens":
            from tokner.answers.align import align_answer

            pred_tags, stats = align_answer(words, block)
            full = stats.fully_aligned
        else:
            raise ValueError(f"align must be 'position' or 'tokens', got {align!r}")
        n_aligned += full
        cleaned = []
        for t in pred_tags:
            if not is_valid_tag(t):
                n_invalid += 1
                t = "O"
            cleaned.append(t)
        gold = _doc(vocab, words, [t for _, t in group])
        pred = _doc(vocab, words, cleaned)
        examples.append(Example(pred, gold))
    scores = paper_prf(examples, labels)
    scores.update(
        {"blocks": len(blocks), "grouping": grouping, "align": align, "invalid_tags_as_O": n_invalid,
         "fully_aligned_blocks": n_aligned}
    )
    return scores


def _doc(vocab, words: List[str], tags: List[str]) -> Doc:
    doc = Doc(vocab, words=words, sent_starts=[True] + [False] * (len(words) - 1))
    doc.ents = [Span(doc, s, e, label=l) for s, e, l in spans_from_tags(tags)]
    return doc
