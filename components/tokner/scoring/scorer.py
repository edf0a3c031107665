"""The paper's metric as a spaCy scorer (``tokner.paper_ner_scorer.v1``).

Strict span match on exact character offsets, entities split at the reference Doc's
sentence starts (the paper scores sentence by sentence with seqeval), giving for
each type P/R/F and:

* ``paper_avg_{p,r,f}``: unweighted mean over DISEASE, RAREDISEASE,
  SKINRAREDISEASE, SIGN, SYMPTOM (the paper's "Avg"; a type with no gold and no
  predicted entity scores 0, as in seqeval);
* ``paper_micro5_{p,r,f}``: micro average over those five types;
* ``paper_micro_{p,r,f}``: micro average over all types (ANAPHOR included);
* ``spans_paper_per_type``: the per-type table plus rows ``AVG-5``, ``MICRO-5``,
  ``MICRO-ALL``, which ``spacy evaluate MODEL DATA --spans-key paper`` prints.

spaCy's own ``ents_p/r/f`` and ``ents_per_type`` are returned next to them. On the
same tag sequences these numbers equal seqeval's entity-level scores (tested in
tests/test_scorer.py on the paper's dev CSV).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

from spacy.scorer import PRFScore, Scorer
from spacy.tokens import Doc
from spacy.training import Example


PAPER_LABELS: Tuple[str, ...] = ("DISEASE", "RAREDISEASE", "SKINRAREDISEASE", "SIGN", "SYMPTOM")
ALL_LABELS: Tuple[str, ...] = PAPER_LABELS + ("ANAPHOR",)

CharSpan = Tuple[int, int, str]


def sentence_split_spans(doc: Doc, sent_start_chars: Set[int]) -> Set[CharSpan]:
    """``doc.ents`` as (start_char, end_char, label), cut at the given sentence starts."""
    out: Set[CharSpan] = set()
    for ent in doc.ents:
        cut_start = None
        for tok in ent:
            if tok.is_space:
                continue
            if cut_start is None:
                cut_start, last = tok, tok
                continue
            if tok.idx in sent_start_chars:
                out.add((cut_start.idx, last.idx + len(last), ent.label_))
                cut_start = tok
            last = tok
        if cut_start is not None:
            out.add((cut_start.idx, last.idx + len(last), ent.label_))
    return out


def _sent_start_chars(doc: Doc) -> Set[int]:
    if not doc.has_annotation("SENT_START"):
        return set()
    return {sent[0].idx for sent in doc.sents}


def paper_prf(examples: Iterable[Example], labels: Sequence[str] = PAPER_LABELS) -> Dict[str, Any]:
    per_type: Dict[str, PRFScore] = defaultdict(PRFScore)
    for eg in examples:
        starts = _sent_start_chars(eg.reference)
        gold = sentence_split_spans(eg.reference, starts)
        pred = sentence_split_spans(eg.predicted, starts)
        for label in {s[2] for s in gold | pred}:
            g = {s for s in gold if s[2] == label}
            p = {s for s in pred if s[2] == label}
            per_type[label].score_set(p, g)
    table = {k: v.to_dict() for k, v in sorted(per_type.items())}
    results: Dict[str, Any] = {}
    five = [per_type[l] if l in per_type else PRFScore() for l in labels]
    avg = {k: sum(s.to_dict()[k] for s in five) / len(five) for k in ("p", "r", "f")}
    micro5, micro_all = PRFScore(), PRFScore()
    for s in five:
        micro5 += s
    for s in per_type.values():
        micro_all += s
    for prefix, vals in (("paper_avg", avg), ("paper_micro5", micro5.to_dict()), ("paper_micro", micro_all.to_dict())):
        for k in ("p", "r", "f"):
            results[f"{prefix}_{k}"] = vals[k]
    for label in labels:
        table.setdefault(label, PRFScore().to_dict())
    table["AVG-5"] = avg
    table["MICRO-5"] = micro5.to_dict()
    table["MICRO-ALL"] = micro_all.to_dict()
    results["spans_paper_per_type"] = table
    return results


def score_paper_ner(examples: Iterable[Example], paper_types: Sequence[str] = PAPER_LABELS, **kwargs) -> Dict[str, Any]:
    """spaCy's ``Scorer.score_spans`` on ``doc.ents`` plus the paper's metric.

    paper_types: the types averaged into ``paper_avg_*`` and ``paper_micro5_*``.
    Other keyword arguments (spaCy passes its scorer settings) go to ``score_spans``.
    """
    examples = list(examples)
    kwargs.pop("labels", None)  # spaCy's pipes pass their label set; the span scorer does not take it
    scores = Scorer.score_spans(examples, "ents", **kwargs)
    scores.update(paper_prf(examples, paper_types))
    return scores


def make_paper_ner_scorer(paper_types: List[str] = list(PAPER_LABELS)):
    """The paper's metric (``tokner.paper_ner_scorer.v1``, spaCy's ``scorers`` registry): strict
    span match with entities cut at sentence starts, as seqeval reads sentences. Adds
    ``paper_avg_{p,r,f}``, ``paper_micro5_{p,r,f}``, ``paper_micro_{p,r,f}`` and
    ``spans_paper_per_type`` to spaCy's ``ents_*`` scores.

    paper_types: the types averaged into "Avg" and "micro-5" (default the paper's five).
    """

    def scorer(examples: Iterable[Example], **kwargs) -> Dict[str, Any]:
        return score_paper_ner(examples, paper_types=paper_types, **kwargs)

    return scorer
