"""Reference scores for tests: seqeval (an independent implementation) over saved Docs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import spacy
from spacy.tokens import DocBin

from tokner.scoring.scorer import PAPER_LABELS
from tokner.answers.tags import doc_tags, sentence_token_lists


def seqeval_micro5(gold_path: Path, pred_path: Path,
                   limit: Optional[int] = None) -> Optional[Tuple[float, float, float]]:
    """seqeval's micro P/R/F over the five paper types, sentence by sentence, on the first
    ``limit`` gold documents (default: as many as there are predicted ones); None when
    the predictions were made on other tokens than the gold ones (seqeval cannot align)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    vocab = spacy.blank("en").vocab
    pred = list(DocBin().from_disk(pred_path).get_docs(vocab))
    gold = list(DocBin().from_disk(gold_path).get_docs(vocab))[: limit or len(pred)]
    assert len(pred) == len(gold), (len(pred), len(gold))
    yt, yp = [], []
    for g, p in zip(gold, pred):  # predictions on the gold tokens, read by the gold sentences
        if [t.text for t in g] != [t.text for t in p]:
            return None
        gt, pt = ([t if t != "O" and t[2:] in PAPER_LABELS else "O" for t in doc_tags(d)] for d in (g, p))
        for sent in sentence_token_lists(g):
            yt.append([gt[i] for i in sent])
            yp.append([pt[i] for i in sent])
    return precision_score(yt, yp), recall_score(yt, yp), f1_score(yt, yp)
