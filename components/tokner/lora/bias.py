"""Choosing the constrained decoder's ``label_bias`` on dev data.

A LoRA adapter trained for a fraction of an epoch under-predicts the rare types
(SYMPTOM, SKINRAREDISEASE): where the decoder picks a new entity's type it prefers
the frequent neighbour (SIGN, RAREDISEASE). ``label_bias`` adds a per-type offset to
those log-probabilities (a prior correction; see
:func:`tokner.decoding.constrained.choice_biases`).

:func:`tune_label_bias` picks the type offsets from one traced decoding pass: the
trace holds the log-probabilities of every type decision, so any bias can be
replayed offline by re-deciding those choices and relabelling the entity (its
``B-`` tag and the ``I-`` tags that continue it). The replay keeps the decoder's
other decisions as recorded, while a real run would see the changed label in the
model's context, so the replayed scores are an estimate: confirm the chosen bias
with a real run (``tokner evaluate MODEL DATA --set
components.tokner_lora_ner.label_bias='{...}'``), on documents the bias was not
chosen on. The ``O`` offset changes where entities start, which a replay cannot
follow, so it is not tuned here (set it by hand if wanted).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

#: Offsets tried for each type (log-probability units).
DEFAULT_GRID = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)

Decision = Tuple[int, int, List[str], List[float]]  # sentence, word, type per choice, log-probabilities


def type_decisions(trace: Sequence[tuple]) -> List[Decision]:
    """The trace's type decisions: every choice leads to tags of one entity type, no ``O``."""
    out = []
    for sent, word, choice_tags, logp, _chosen in trace:
        types = []
        for tags in choice_tags:
            kinds = {t if t == "O" else t[2:] for t in tags}
            if len(kinds) != 1 or "O" in kinds:
                break
            types.append(kinds.pop())
        else:
            if len(set(types)) > 1:
                out.append((sent, word, types, list(logp)))
    return out


def replay(sentence_tags: Sequence[Sequence[str]], decisions: Sequence[Decision], bias: Dict[str, float],
           bio: bool = True) -> List[List[str]]:
    """Tags with every type decision re-made under ``bias`` (the entity relabelled)."""
    out = [list(t) for t in sentence_tags]
    for sent, word, types, logp in decisions:
        k = max(range(len(types)), key=lambda j: logp[j] + bias.get(types[j], 0.0))
        tags = out[sent]
        old = tags[word]
        if old == "O" or old[2:] == types[k]:
            continue
        new_type = types[k]
        tags[word] = old[:2] + new_type
        if bio:
            j = word + 1
            while j < len(tags) and tags[j] == "I-" + old[2:]:
                tags[j] = "I-" + new_type
                j += 1
    return out


def coordinate_search(score: Callable[[Dict[str, float]], float], labels: Sequence[str],
                      grid: Sequence[float] = DEFAULT_GRID, rounds: int = 2) -> Tuple[Dict[str, float], float]:
    """Best ``{label: offset}`` by coordinate ascent over ``grid`` (ties: the smaller offset)."""
    bias = {label: 0.0 for label in labels}
    best = score(bias)
    for _ in range(rounds):
        changed = False
        for label in labels:
            for value in sorted(grid, key=abs):
                if value == bias[label]:
                    continue
                trial = dict(bias, **{label: value})
                s = score(trial)
                if s > best + 1e-12:
                    best, bias, changed = s, trial, True
        if not changed:
            break
    return {k: v for k, v in bias.items() if v}, best


def save_with_label_bias(model_path, label_bias: Dict[str, float], output_path, pipe_name: Optional[str] = None):
    """Write a copy of the pipeline at ``model_path`` whose LoRA pipe uses ``label_bias``.

    The bias is written into the copy's ``config.cfg`` (which ``spacy.load`` reads; the
    pipe's ``cfg.json`` only fills settings the config lacks) and its ``cfg.json``; it
    works for pipelines saved before ``label_bias`` existed too. Returns the copy, loaded.
    """
    import spacy
    import srsly
    from thinc.api import Config

    from tokner.decoding.constrained import check_label_bias

    model_path, output_path = Path(model_path), Path(output_path)
    config = Config().from_disk(model_path / "config.cfg", interpolate=False)
    names = [n for n, c in config["components"].items() if c.get("factory") == "tokner_lora_ner"]
    if pipe_name is None:
        if len(names) != 1:
            raise ValueError(f"expected one tokner_lora_ner pipe in {model_path}, found {names or 'none'}")
        pipe_name = names[0]
    elif pipe_name not in names:
        raise ValueError(f"pipe {pipe_name!r} in {model_path} is not a tokner_lora_ner component")
    bias = check_label_bias(dict(label_bias), config["components"][pipe_name].get("labels", ()))
    spacy.load(model_path).to_disk(output_path)
    config["components"][pipe_name]["label_bias"] = bias
    config.to_disk(output_path / "config.cfg")
    cfg_path = output_path / pipe_name / "cfg.json"
    if cfg_path.exists():
        srsly.write_json(cfg_path, dict(srsly.read_json(cfg_path), label_bias=bias))
    nlp = spacy.load(output_path)
    if nlp.get_pipe(pipe_name).cfg.get("label_bias") != bias:
        raise RuntimeError(f"{output_path}: the saved pipeline does not load label_bias {bias}")
    return nlp


def fold_slices(n_docs: int, folds: int) -> List[slice]:
    """``folds`` contiguous document ranges covering ``range(n_docs)``."""
    if folds < 2 or folds > n_docs:
        raise ValueError(f"folds must be between 2 and the number of documents ({n_docs}), got {folds}")
    bounds = [round(k * n_docs / folds) for k in range(folds + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(folds)]


def tune_label_bias(nlp, gold_docs, pipe_name: Optional[str] = None, metric: str = "paper_avg_f",
                    labels: Optional[Sequence[str]] = None, grid: Sequence[float] = DEFAULT_GRID, rounds: int = 2,
                    o_values: Sequence[float] = (0.0,), folds: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Choose ``label_bias`` for ``nlp``'s LoRA pipe on ``gold_docs``.

    For each ``"O"`` offset in ``o_values`` one traced constrained decoding pass runs
    with that offset (a real run: the ``O`` offset moves entity boundaries, which a
    replay cannot follow); on each pass a coordinate search picks the type offsets that
    maximise ``metric`` on the replayed tags. The best pass wins.

    ``labels``: the types whose offsets are searched; by default the pipe's labels
    among the paper's five. Types outside the metric (ANAPHOR for the paper's scores)
    stay at 0: a search over them would only learn to move wrong predictions into a
    type that is not scored.

    ``folds`` (>= 2) adds a cross-fitted estimate for the best pass: the documents are
    cut into that many contiguous folds, each fold's type offsets are searched on the
    other folds and replayed on it, and the replayed tags of all folds are scored
    together, so no document is scored with offsets chosen on it. (Entity types are
    unevenly spread over documents, e.g. SKINRAREDISEASE sits in the few documents
    about skin diseases, so offsets chosen on a few documents can mislead.)

    Returns the chosen ``label_bias``, per pass the decoded scores (``O`` offset only,
    exact) and the replayed scores with the type offsets (estimates), and the number
    of type decisions each search saw.
    """
    from tokner.scoring.scorer import PAPER_LABELS
    from tokner.answers.tags import sentence_words
    from tokner.lora.component import LoraNER
    from tokner.decoding.constrained import check_label_bias, constrained_decode
    from tokner.lora.train import score_sentence_tags

    names = [n for n, p in nlp.pipeline if isinstance(p, LoraNER)] if pipe_name is None else [pipe_name]
    if len(names) != 1:
        raise ValueError(f"expected one tokner_lora_ner pipe, found {names or 'none'}: pass pipe_name")
    pipe = nlp.get_pipe(names[0])
    if not isinstance(pipe, LoraNER):
        raise ValueError(f"pipe {names[0]!r} is not a tokner_lora_ner component")
    if not gold_docs:
        raise ValueError("no gold documents to tune on")
    if labels is None:
        labels = [label for label in pipe.labels if label in PAPER_LABELS]
    unknown = [label for label in labels if label not in pipe.labels]
    if unknown or not labels:
        raise ValueError(f"labels to tune must be some of the pipe's labels {list(pipe.labels)}, got {list(labels)}")
    o_values = list(dict.fromkeys(float(o) for o in o_values))
    if not o_values:
        raise ValueError("o_values needs at least one 'O' offset (0.0: none)")
    check_label_bias({"O": o for o in o_values if o} or None, pipe.labels)
    index, sents = sentence_words(gold_docs)
    bio = pipe.cfg["bio_constraint"]
    keep = ("paper_avg_f", "paper_micro5_f", "paper_micro_f")
    per_type = lambda s: {k: round(v["f"], 4) for k, v in s.get("spans_paper_per_type", {}).items()}  # noqa: E731
    fold_docs = fold_slices(len(gold_docs), folds) if folds else []
    sent_doc = [d for d, ss in enumerate(index) for _ in ss]
    passes, traced = [], []  # traced[i]: (tags, type decisions) of passes[i]
    for o in o_values:
        trace: list = []
        o_bias = {"O": o} if o else {}
        results, stats = constrained_decode(pipe.lm, pipe.codec, sents, pipe.cfg["batch_size"], bio=bio,
                                            progress=progress, call_cost=pipe.cfg["call_cost"], label_bias=o_bias,
                                            trace=trace, prompts=pipe.codec.doc_prompts(index, sents))
        base_tags = [tags for tags, _ in results]
        decisions = type_decisions(trace)
        cache: Dict[Tuple, Dict[str, Any]] = {}

        def scores_for(bias: Dict[str, float]) -> Dict[str, Any]:
            key = tuple(sorted((k, v) for k, v in bias.items() if v))
            if key not in cache:
                cache[key] = score_sentence_tags(gold_docs, index, replay(base_tags, decisions, dict(key), bio))
            return cache[key]

        decoded = scores_for({})
        if metric not in decoded:
            raise ValueError(f"unknown metric {metric!r}; choose one of "
                             f"{sorted(k for k in decoded if k.startswith('paper'))}")
        type_bias, _ = coordinate_search(lambda b: scores_for(b)[metric], labels, grid, rounds)
        after = scores_for(type_bias)
        passes.append({
            "O": o, "type_bias": type_bias, "type_decisions": len(decisions),
            "decoded": {k: decoded[k] for k in keep}, "decoded_per_type": per_type(decoded),
            "replayed_with_type_bias": {k: after[k] for k in keep}, "replayed_per_type": per_type(after),
            "decode": stats.to_dict(),
        })
        traced.append((base_tags, decisions))
        logger.info("O offset %s: decoded %s %.4f, with type offsets %s %.4f (replayed)", o, metric, decoded[metric],
                    type_bias, after[metric])
    best_i = max(range(len(passes)), key=lambda i: passes[i]["replayed_with_type_bias"][metric])
    best = passes[best_i]
    cross = None
    if fold_docs:
        base_tags, decisions = traced[best_i]
        fold_of = [next(k for k, f in enumerate(fold_docs) if f.start <= sent_doc[i] < f.stop)
                   for i in range(len(sents))]

        def subset(keep: Callable[[int], bool]):
            sent_ids = [i for i in range(len(sents)) if keep(fold_of[i])]
            remap = {i: j for j, i in enumerate(sent_ids)}
            doc_ids = sorted({sent_doc[i] for i in sent_ids})
            return ([gold_docs[d] for d in doc_ids], [index[d] for d in doc_ids], [base_tags[i] for i in sent_ids],
                    [(remap[s], w, t, lp) for s, w, t, lp in decisions if s in remap])

        fold_bias, fold_tags = [], [None] * len(sents)
        for k, f in enumerate(fold_docs):
            docs_o, index_o, tags_o, dec_o = subset(lambda fk: fk != k)
            b, _ = coordinate_search(
                lambda bb: score_sentence_tags(docs_o, index_o, replay(tags_o, dec_o, bb, bio))[metric],
                labels, grid, rounds)
            _, _, tags_k, dec_k = subset(lambda fk: fk == k)
            replayed = replay(tags_k, dec_k, b, bio)
            for i, t in zip([i for i in range(len(sents)) if fold_of[i] == k], replayed):
                fold_tags[i] = t
            fold_bias.append({"docs": f"{f.start}:{f.stop}", "chosen_on_other_folds": b})
        crossed = score_sentence_tags(gold_docs, index, fold_tags)
        cross = {"O": best["O"], "folds": fold_bias, "replayed": {k: crossed[k] for k in keep},
                 "replayed_per_type": per_type(crossed)}
    bias = dict(best["type_bias"])
    if best["O"]:
        bias = {"O": best["O"], **bias}
    return {
        "label_bias": bias,
        "pipe": names[0],
        "metric": metric,
        "tuned_labels": list(labels),
        "docs": len(gold_docs),
        "sentences": len(sents),
        "existing_label_bias": pipe.cfg.get("label_bias") or {},
        "estimate": best["replayed_with_type_bias"],
        "cross_fitted": cross,
        "passes": passes,
    }
