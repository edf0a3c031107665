"""Combining methods: span voting over member pipelines, and document-level label consistency.

* :func:`vote`: each member's entities are votes for exact spans (start and end
  character, label: members may tokenize differently, the paper's metric compares
  character offsets too); a
  span's score is the sum of the weights of the members that predicted exactly it, and the
  spans scoring at least ``threshold`` are kept, highest score first (then longer first,
  then earlier), skipping any that overlaps one already kept. Exact spans in, exact spans
  out: the ensemble never invents a boundary no member predicted.
* :func:`consistent_labels`: RareDis documents are each about one disease, so the same
  surface form mentioned twice in a document is, almost always, the same entity type.
  Mentions whose lower-cased text is the same get the label most of them have (ties:
  the first mention's label); with ``groups`` (default: RAREDISEASE with SKINRAREDISEASE)
  only labels inside one group are unified, the others left as predicted.
* Components ``tokner_ensemble`` (members are pipelines, copied into the ensemble's
  folder by ``to_disk``) and ``tokner_doc_consistency`` write ``Doc.ents``.
* Optionally after the vote, the RAREDISEASE/SKINRAREDISEASE choice by document type
  (:mod:`tokner.doctype`, component ``tokner_doc_type`` after ``tokner_ensemble``), its
  probability threshold searched with the weights.
* :func:`cross_fit`: choose member weights and the threshold on half of the documents,
  score on the other half, and the other way round, so a dev score of a combination is
  honest; ``tokner ensemble-search`` runs it on saved predictions
  (``tokner evaluate --save-docs``).
"""
from __future__ import annotations

import itertools
import json
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import filter_spans, minibatch

from tokner.text.pipes import StatelessComponent

Triple = Tuple[int, int, str]

DEFAULT_GROUPS = (("RAREDISEASE", "SKINRAREDISEASE"),)


def vote(member_spans: Dict[str, Iterable[Triple]], weights: Dict[str, float], threshold: Any,
         by_boundary: bool = False) -> List[Triple]:
    """Weighted exact-span voting; returns non-overlapping (start, end, label) in text order.
    ``threshold``: a number, or a {label: threshold} dict (each span kept at its label's).

    by_boundary: a span's score is the weight of the members that predicted its start and
    end with any label, and its label the one with the most weight among them (ties: the
    label of the member listed first); otherwise (start, end, label) must match exactly."""
    score: Dict[Any, float] = defaultdict(float)
    label_weight: Dict[Any, Dict[str, float]] = defaultdict(dict)
    for name, spans in member_spans.items():
        w = float(weights.get(name, 1.0))
        for span in set(spans):
            key = span[:2] if by_boundary else span
            score[key] += w
            if by_boundary:
                lw = label_weight[key]
                lw[span[2]] = lw.get(span[2], 0.0) + w
    if by_boundary:
        labelled = {}
        for key, total in score.items():
            lw = label_weight[key]
            best = max(lw.values())
            labelled[(key[0], key[1], next(lab for lab, v in lw.items() if v == best))] = total
        score = labelled
    per_label = threshold if isinstance(threshold, dict) else None  # {label: threshold}: benchmarks/label_thresholds.py
    ranked = sorted((s for s in score if score[s] >= (per_label[s[2]] if per_label else threshold) - 1e-9),
                    key=lambda s: (-score[s], -(s[1] - s[0]), s[0], s[2]))
    taken: List[Triple] = []
    used = set()
    for start, end, label in ranked:
        if any(i in used for i in range(start, end)):
            continue
        used.update(range(start, end))
        taken.append((start, end, label))
    return sorted(taken)


def consistent_labels(spans: Sequence[Triple], texts: Sequence[str],
                      groups: Optional[Sequence[Sequence[str]]] = DEFAULT_GROUPS) -> List[Triple]:
    """Unify the labels of mentions with the same lower-cased text (``texts[i]`` is the text
    of ``spans[i]``); see the module docstring."""
    group_of: Dict[str, int] = {}
    if groups is not None:
        for gi, g in enumerate(groups):
            for label in g:
                group_of[label] = gi

    def key(i: int):
        label = spans[i][2]
        if groups is None:
            return (texts[i].lower(), None)
        if label not in group_of:
            return None
        return (texts[i].lower(), group_of[label])

    mentions: Dict[Any, List[int]] = defaultdict(list)
    for i in range(len(spans)):
        k = key(i)
        if k is not None:
            mentions[k].append(i)
    out = list(spans)
    for idx in mentions.values():
        if len(idx) < 2:
            continue
        counts = Counter(spans[i][2] for i in idx)
        best = max(counts.values())
        winner = next(spans[i][2] for i in idx if counts[spans[i][2]] == best)  # ties: the first mention's
        for i in idx:
            out[i] = (spans[i][0], spans[i][1], winner)
    return out


def _triples(doc: Doc) -> List[Triple]:
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


def set_ents(doc: Doc, triples: Iterable[Triple]) -> Doc:
    """``Doc.ents`` from character spans; a span whose ends fall inside this doc's tokens
    (a member that tokenized differently) takes the tokens it touches."""
    spans = [doc.char_span(s, e, label=lab, alignment_mode="expand") for s, e, lab in triples]
    doc.ents = filter_spans([sp for sp in spans if sp is not None])
    return doc


def _consistent_in(text: str, spans: Sequence[Triple],
                   groups: Optional[Sequence[Sequence[str]]] = DEFAULT_GROUPS) -> List[Triple]:
    """:func:`consistent_labels` for character spans of ``text``."""
    return consistent_labels(spans, [text[s:e] for s, e, _ in spans], groups)


def apply_consistency(doc: Doc, groups: Optional[Sequence[Sequence[str]]] = DEFAULT_GROUPS) -> Doc:
    return set_ents(doc, _consistent_in(doc.text, _triples(doc), groups))


# ---------------------------------------------------------------------------------------
# choosing weights on dev, honestly


def _counts(gold: Sequence[Doc], pred: Sequence[List[Triple]], labels: Sequence[str]) -> Dict[str, List[int]]:
    """tp/fp/fn per label over exact spans (the paper's strict match).

    A counter beside :func:`tokner.scoring.scorer.score_paper_ner` because :func:`choose` scores
    thousands of settings: on 52 dev documents it takes 0.77 ms against the scorer's 24 ms
    (with Examples built), with the same micro-5 and Avg (tests/test_ensemble.py checks
    that they agree); the rows that get reported are scored by the scorer itself."""
    c = {lab: [0, 0, 0] for lab in labels}
    for g, p in zip(gold, pred):
        gs = {t for t in _triples(g) if t[2] in c}
        ps = {t for t in p if t[2] in c}
        for t in gs & ps:
            c[t[2]][0] += 1
        for t in ps - gs:
            c[t[2]][1] += 1
        for t in gs - ps:
            c[t[2]][2] += 1
    return c


def f_scores(counts: Dict[str, List[int]]) -> Dict[str, float]:
    def f(tp, fp, fn):
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    per = {lab: f(*v) for lab, v in counts.items()}
    tot = [sum(v[i] for v in counts.values()) for i in range(3)]
    return {"avg": sum(per.values()) / len(per), "micro": f(*tot), **per}


def copy_doc(doc: Doc) -> Doc:
    """A copy of ``doc`` (its text, tokens, annotations and entities; not ``user_data``) to
    relabel without touching the original, through a DocBin round trip."""
    from spacy.tokens import DocBin

    return next(DocBin(store_user_data=False, docs=[doc]).get_docs(doc.vocab))


def paper_row(gold: Sequence[Doc], pred: Sequence[Doc]) -> Dict[str, float]:
    """A reported row: Avg-5, micro-5 and per-type F1 of predicted Docs by the paper's scorer."""
    from spacy.training import Example

    from tokner.scoring.scorer import PAPER_LABELS, score_paper_ner

    s = score_paper_ner([Example(p, g) for p, g in zip(pred, gold)])
    return {"avg": s["paper_avg_f"], "micro5": s["paper_micro5_f"],
            **{t: s["spans_paper_per_type"][t]["f"] for t in PAPER_LABELS}}


def paper_rows_markdown(rows: Dict[str, Dict[str, float]], first: str = "predictions") -> str:
    """:func:`paper_row` results as a Markdown table, one line per row name."""
    from tokner.scoring.scorer import PAPER_LABELS

    cols = ["avg", "micro5", *PAPER_LABELS]
    lines = ["| " + " | ".join([first, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for name, r in rows.items()]
    return "\n".join(lines)


def objective(scores: Dict[str, float]) -> float:
    """What the checkpoints of this project are chosen on: 0.5 micro-5 + 0.5 Avg."""
    return 0.5 * scores["micro"] + 0.5 * scores["avg"]


WEIGHT_GRID = (0.5, 1.0, 1.5, 2.0)  # the member weights the search tries by default


def candidate_settings(names: Sequence[str], weight_grid: Sequence[float] = WEIGHT_GRID):
    """Every weight vector on the grid (the first member's weight fixed at 1: only ratios
    matter) with every threshold that can separate the vote sums."""
    for rest in itertools.product(weight_grid, repeat=len(names) - 1):
        w = dict(zip(names, (1.0, *rest)))
        sums = sorted({round(sum(c), 6) for r in range(1, len(names) + 1) for c in itertools.combinations(w.values(), r)})
        for t in sums:
            yield w, t


DOC_TYPE_THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _doc_typed(triples: List[Triple], p: Optional[float], threshold: Optional[float]) -> List[Triple]:
    if threshold is None or p is None:
        return triples
    from tokner.doctype import relabel

    return relabel(triples, p, threshold)


def choose(gold: Sequence[Doc], members: Dict[str, Sequence[Doc]], labels: Sequence[str],
           consistency: Sequence[bool] = (False, True), weight_grid: Sequence[float] = WEIGHT_GRID,
           by_boundary: Sequence[bool] = (False, True), doc_probs: Optional[Sequence[float]] = None,
           doc_thresholds: Sequence[Any] = DOC_TYPE_THRESHOLDS):
    """The setting (weights, threshold, by_boundary, consistency, doc_type_threshold) with the
    best objective on these docs. With ``doc_probs`` (each document's ``tokner_doc_type``
    probability) the search also tries relabelling RAREDISEASE/SKINRAREDISEASE at each of
    ``doc_thresholds`` after the vote (``doc_type_threshold`` None: not relabelled); they are
    passed as given to the relabelling (floats here; benchmarks/doc_type_band.py passes bands)."""
    names = list(members)
    spans = [{n: _triples(members[n][i]) for n in names} for i in range(len(gold))]
    texts = [g.text for g in gold]
    dts: List[Optional[float]] = [None] + (list(doc_thresholds) if doc_probs is not None else [])
    best = None
    for (w, t), bb in itertools.product(candidate_settings(names, weight_grid), by_boundary):
        voted = [vote(s, w, t, bb) for s in spans]
        for cons in consistency:
            pred = [_consistent_in(texts[i], v) for i, v in enumerate(voted)] if cons else voted
            for dt in dts:
                if dt is not None and cons:
                    continue  # relabelling the whole group makes the group's consistency moot
                final = pred if dt is None else [_doc_typed(v, doc_probs[i], dt) for i, v in enumerate(pred)]
                sc = objective(f_scores(_counts(gold, final, labels)))
                if best is None or sc > best[0] + 1e-12:
                    best = (sc, {"weights": w, "threshold": t, "by_boundary": bb, "consistency": cons,
                                 "doc_type_threshold": dt})
    return best[1]


def predict(gold: Sequence[Doc], members: Dict[str, Sequence[Doc]], setting: Dict[str, Any],
            doc_probs: Optional[Sequence[float]] = None) -> List[List[Triple]]:
    out = []
    dt = setting.get("doc_type_threshold")
    if dt is not None and doc_probs is None:
        raise ValueError("the setting relabels by document type (doc_type_threshold) but no document probabilities were given")
    for i, g in enumerate(gold):
        v = vote({n: _triples(members[n][i]) for n in members}, setting["weights"], setting["threshold"],
                 bool(setting.get("by_boundary", False)))
        if setting.get("consistency"):
            v = _consistent_in(g.text, v)
        out.append(_doc_typed(v, doc_probs[i] if doc_probs is not None else None, dt))
    return out


def fold_assignment(n: int, folds: int, seed: Optional[int] = None,
                    strata: Optional[Sequence[Any]] = None) -> List[int]:
    """The fold of each of ``n`` documents: contiguous runs in corpus order (``seed`` None),
    or the same sizes over a shuffled order (``random.Random(seed)``). With ``strata`` (a
    class per document) the shuffled folds are stratified: each class is shuffled and dealt
    out over the folds in turn, so every fold gets its share of each class (within one)."""
    if folds < 2 or folds > n:
        raise ValueError(f"cross-fitting needs 2 <= folds <= documents, got {folds} folds for {n} documents")
    contiguous = [i * folds // n for i in range(n)]
    if seed is None:
        return contiguous
    rng = random.Random(seed)
    fold_of = [0] * n
    if strata is not None:
        if len(strata) != n:
            raise ValueError(f"strata: {len(strata)} classes for {n} documents")
        position = 0
        for cls in sorted(set(strata), key=repr):
            members = [i for i in range(n) if strata[i] == cls]
            rng.shuffle(members)
            for doc in members:
                fold_of[doc] = position % folds
                position += 1
        return fold_of
    order = list(range(n))
    rng.shuffle(order)
    for position, doc in enumerate(order):
        fold_of[doc] = contiguous[position]
    return fold_of


def cross_fit(gold: Sequence[Doc], members: Dict[str, Sequence[Doc]], labels: Sequence[str], folds: int = 2,
              doc_probs: Optional[Sequence[float]] = None, seed: Optional[int] = None,
              strata: Optional[Sequence[Any]] = None, choose_all: bool = True, **kw) -> Dict[str, Any]:
    """Choose on all folds but one, predict the held-out fold; the held-out predictions of
    every fold together are scored once (each document predicted by a setting chosen
    without it). Also returns the setting chosen on all documents (for the pipeline;
    ``choose_all`` false: skipped, None). Folds: see :func:`fold_assignment`."""
    n = len(gold)
    fold_of = fold_assignment(n, folds, seed, strata)
    held: List[Optional[List[Triple]]] = [None] * n
    chosen = []

    def sub(values, idx):
        return None if values is None else [values[i] for i in idx]

    for f in range(folds):
        train = [i for i in range(n) if fold_of[i] != f]
        test = [i for i in range(n) if fold_of[i] == f]
        setting = choose([gold[i] for i in train], {k: [v[i] for i in train] for k, v in members.items()}, labels,
                         doc_probs=sub(doc_probs, train), **kw)
        chosen.append(setting)
        for i, p in zip(test, predict([gold[i] for i in test], {k: [v[i] for i in test] for k, v in members.items()},
                                      setting, doc_probs=sub(doc_probs, test))):
            held[i] = p
    return {"cross_fit": f_scores(_counts(gold, held, labels)), "fold_settings": chosen,
            "setting_all": choose(gold, members, labels, doc_probs=doc_probs, **kw) if choose_all else None,
            "held_out": held}


def held_out_docs(gold: Sequence[Doc], held_out: Sequence[Iterable[Triple]]) -> List[Doc]:
    """Copies of the gold documents with ``held_out`` (one list of triples per document, as
    :func:`cross_fit` returns them) as their entities: the cross-fitted predictions to score."""
    return [set_ents(copy_doc(g), triples) for g, triples in zip(gold, held_out)]


def cross_fit_runs(gold: Sequence[Doc], members: Dict[str, Sequence[Doc]], labels: Sequence[str],
                   seeds: Iterable[Optional[int]], folds: int = 2, doc_probs: Optional[Sequence[float]] = None,
                   on_run=None, **kw) -> List[Dict[str, Any]]:
    """:func:`cross_fit` once per fold assignment, each scored as a reported row
    (:func:`paper_row`): seed None is the contiguous split, an int a shuffled split
    stratified by the gold document type (:func:`tokner.doctype.doc_label`), so that every
    fold gets its share of the few skin documents. How much a cross-fitted figure owes to
    the split. Returns one dict per seed: ``seed``, the row's columns, ``fold_settings``;
    ``on_run(run)`` is called after each (progress lines)."""
    from tokner.doctype import doc_label

    strata = [doc_label(g) for g in gold]
    runs = []
    for seed in seeds:
        r = cross_fit(gold, members, labels, folds=folds, doc_probs=doc_probs, seed=seed,
                      strata=None if seed is None else strata, choose_all=False, **kw)
        runs.append({"seed": seed, **paper_row(gold, held_out_docs(gold, r["held_out"])),
                     "fold_settings": r["fold_settings"]})
        if on_run is not None:
            on_run(runs[-1])
    return runs


def spread(runs: Sequence[Dict[str, Any]], columns: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Mean, population standard deviation, min and max of each column over runs."""
    import statistics

    out = {}
    for c in columns:
        values = [r[c] for r in runs]
        out[c] = {"mean": statistics.fmean(values), "sd": statistics.pstdev(values),
                  "min": min(values), "max": max(values)}
    return out


# ---------------------------------------------------------------------------------------
# components


class DocConsistency(StatelessComponent):
    """``tokner_doc_consistency``: see :func:`consistent_labels`."""

    def __init__(self, name: str = "tokner_doc_consistency",
                 groups: Optional[List[List[str]]] = [list(g) for g in DEFAULT_GROUPS]):
        self.name = name
        self.groups = groups

    def __call__(self, doc: Doc) -> Doc:
        return apply_consistency(doc, self.groups)


@Language.factory("tokner_doc_consistency", assigns=["doc.ents"], default_config={"groups": [list(g) for g in DEFAULT_GROUPS]})
def make_doc_consistency(nlp: Language, name: str, groups: Optional[List[List[str]]]):
    """Unify the labels of same-text mentions within each document.

    groups: lists of labels unified together (default ``[["RAREDISEASE", "SKINRAREDISEASE"]]``:
        a disease named twice in a note is the same kind of disease); null: every label.
    """
    return DocConsistency(name, groups)


class EnsembleNER:
    """``tokner_ensemble``: runs member pipelines on the document's tokens and votes."""

    def __init__(self, nlp: Language, name: str, members: Dict[str, str], weights: Dict[str, float],
                 threshold: float, consistency: bool, by_boundary: bool = False):
        self.nlp = nlp
        self.name = name
        self.member_paths = dict(members)
        self.weights = {k: float(v) for k, v in weights.items()}
        self.threshold = float(threshold)
        self.consistency = bool(consistency)
        self.by_boundary = bool(by_boundary)
        unknown = sorted(set(self.weights) - set(self.member_paths))
        if unknown:
            raise ValueError(f"tokner_ensemble: weights for members that are not in members: {unknown}")
        self._members: Dict[str, Language] = {}

    def _load(self) -> Dict[str, Language]:
        if len(self._members) < len(self.member_paths):
            import spacy

            for k, p in self.member_paths.items():
                if k not in self._members:
                    if not Path(p).exists():
                        raise FileNotFoundError(f"tokner_ensemble: member {k!r}: no pipeline at {p}")
                    self._members[k] = spacy.load(p)
        return self._members

    def initialize(self, get_examples=None, *, nlp=None):
        self._load()

    def _member_docs(self, docs: List[Doc]) -> Dict[str, List[Doc]]:
        out = {}
        for k, member in self._load().items():
            copies = [Doc(member.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in docs]
            for _, proc in member.pipeline:
                copies = list(proc.pipe(copies)) if hasattr(proc, "pipe") else [proc(c) for c in copies]
            out[k] = copies
        return out

    def pipe(self, stream, batch_size: int = 32):
        for batch in minibatch(stream, size=batch_size):
            yield from self._run(list(batch))

    def __call__(self, doc: Doc) -> Doc:
        return self._run([doc])[0]

    def _run(self, docs: List[Doc]) -> List[Doc]:
        members = self._member_docs(docs)
        setting = {"weights": {k: self.weights.get(k, 1.0) for k in members}, "threshold": self.threshold,
                   "by_boundary": self.by_boundary, "consistency": self.consistency}
        for doc, triples in zip(docs, predict(docs, members, setting)):
            set_ents(doc, triples)
        return docs

    def to_disk(self, path, *, exclude=tuple()):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for k, member in self._load().items():
            target = path / "members" / k
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            member.to_disk(target)
        (path / "cfg.json").write_text(json.dumps({"members": sorted(self.member_paths)}) + "\n")

    def from_disk(self, path, *, exclude=tuple()):
        import spacy

        path = Path(path)
        names = json.loads((path / "cfg.json").read_text())["members"]
        self._members = {k: spacy.load(path / "members" / k) for k in names}
        self.member_paths = {k: str(path / "members" / k) for k in names}
        return self


@Language.factory("tokner_ensemble", assigns=["doc.ents"], default_config={"members": {}, "weights": {}, "threshold": 1.0,
                                                     "by_boundary": False, "consistency": False})
def make_ensemble(nlp: Language, name: str, members: Dict[str, str], weights: Dict[str, float], threshold: float,
                  by_boundary: bool, consistency: bool):
    """Exact-span voting over member pipelines (see :func:`vote`).

    members: name -> pipeline folder (copied into this component's folder by ``to_disk``,
        loaded from there by ``from_disk``); each member runs on the document's own tokens.
    weights: name -> vote weight (default 1 each).
    threshold: the vote sum a span needs to be kept.
    by_boundary: vote on start and end only, the label being the heaviest among the members
        that predicted that span (else start, end and label must all match).
    consistency: unify labels of same-text RAREDISEASE/SKINRAREDISEASE mentions after voting.
    ``tokner ensemble-search`` chooses weights and threshold on dev by cross-fitting.
    """
    return EnsembleNER(nlp, name, members, weights, threshold, consistency, by_boundary)


def build_ensemble(members: Dict[str, str], setting: Dict[str, Any], doc_type: Optional[str] = None) -> Language:
    """A pipeline (the paper's tokenizer and sentences, then ``tokner_ensemble``) voting over
    ``members`` (name -> pipeline folder) with ``setting`` (weights, threshold, consistency)
    as chosen by :func:`cross_fit` on all documents; when the setting has a
    ``doc_type_threshold``, then ``tokner_doc_type`` with the model of the pipeline at
    ``doc_type`` (from ``tokner train-doc-type``) and that threshold."""
    import spacy

    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    nlp.add_pipe("tokner_ensemble", config={
        "members": {k: str(v) for k, v in members.items()},
        "weights": {k: float(setting["weights"].get(k, 0.0)) for k in members},
        "threshold": float(setting["threshold"]), "by_boundary": bool(setting.get("by_boundary", False)),
        "consistency": bool(setting.get("consistency", False))})
    dt = setting.get("doc_type_threshold")
    if dt is not None:
        if doc_type is None:
            raise ValueError("the setting relabels by document type (doc_type_threshold "
                             f"{dt}): give the tokner train-doc-type pipeline it was searched with")
        if not Path(doc_type).exists():
            raise FileNotFoundError(f"no document-type pipeline at {doc_type}")
        from tokner.doctype import find_component

        src = find_component(spacy.load(doc_type), str(doc_type))
        pipe = nlp.add_pipe("tokner_doc_type", config={"cat": src.cat, "threshold": float(dt), "relabel": True,
                                                        "pair": list(src.pair)})
        pipe.from_bytes(src.to_bytes())
    nlp.initialize()
    return nlp
