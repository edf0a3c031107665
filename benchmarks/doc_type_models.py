"""Which document-type model ranks skin-rare-disease documents best: the comparison behind
``tokner_doc_type`` (docs/methods.md, "Document type").

A document is positive when its gold entities have more SKINRAREDISEASE than RAREDISEASE
mentions (:func:`tokner.doctype.doc_label`). For each model: ROC AUC and average precision
of 5-fold stratified cross-validation on train (the choice is made on these), and of the
model fitted on all of train scored on dev.

* ``tfidf``: what ``tokner train-doc-type`` trains (:func:`tokner.doctype.fit`).
* ``tfidf-char``: the same with character 3-5-grams (``char_wb``) instead of words.
* ``spacy-bow``: spaCy's ``textcat`` with ``spacy.TextCatBOW.v3`` (unigrams), 10 epochs of
  batches of 16.
* ``minilm`` (with ``--minilm FOLDER``): logistic regression (``C=1``, class-weighted) on the
  mean of the document's L2-normalised sentence embeddings (mean-pooled all-MiniLM-L6-v2).
* ``tfidf+mentions`` (with ``--mentions PREDICTIONS.spacy``): the ``tfidf`` words plus a
  second TF-IDF block of character 3-5-grams over the texts of the document's DISEASE,
  RAREDISEASE and SKINRAREDISEASE mentions (the disease names, labels not used): gold
  mentions for train documents, the given saved predictions (e.g. ``metrics/bert-dev.spacy``)
  for dev, matched by text.

    python benchmarks/doc_type_models.py corpus/train.spacy corpus/dev.spacy \
        --minilm assets/models/all-MiniLM-L6-v2 --output metrics/doc_type_models.json
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import spacy
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from spacy.tokens import DocBin
from spacy.training import Example

from tokner.doctype import doc_label, fit


def _tfidf(train_texts, y, test_texts):
    vec, lr = fit(train_texts, list(y))
    return lr.predict_proba(vec.transform(test_texts))[:, 1]


def _tfidf_char(train_texts, y, test_texts):
    m = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2, analyzer="char_wb", ngram_range=(3, 5)),
                      LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    m.fit(train_texts, list(y))
    return m.predict_proba(test_texts)[:, 1]


def _spacy_bow(train_texts, y, test_texts):
    nlp = spacy.blank("en")
    nlp.add_pipe("textcat", config={"model": {"@architectures": "spacy.TextCatBOW.v3", "exclusive_classes": True,
                                              "ngram_size": 1, "no_output_layer": False, "length": 262144}})
    exs = [Example.from_dict(nlp.make_doc(t), {"cats": {"SKIN": float(v), "OTHER": 1.0 - float(v)}})
           for t, v in zip(train_texts, y)]
    nlp.initialize(lambda: exs)
    rnd = random.Random(0)
    for _ in range(10):
        rnd.shuffle(exs)
        for i in range(0, len(exs), 16):
            nlp.update(exs[i:i + 16])
    return np.array([d.cats["SKIN"] for d in nlp.pipe(test_texts)])


def _minilm_embedder(folder):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    cache = {}

    def embed(doc):
        if doc.text not in cache:
            sents = [s.text for s in doc.sents] if doc.has_annotation("SENT_START") else [doc.text]
            with torch.inference_mode():
                b = tok(sents, padding=True, truncation=True, max_length=256, return_tensors="pt")
                h = model(**b).last_hidden_state
                mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
            cache[doc.text] = e.mean(0).numpy()
        return cache[doc.text]

    return embed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("train")
    ap.add_argument("dev")
    ap.add_argument("--minilm", help="all-MiniLM-L6-v2 folder (adds the embedding model)")
    ap.add_argument("--mentions", help="saved dev predictions (DocBin) whose disease mentions feed tfidf+mentions")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--output")
    args = ap.parse_args()
    nlp = spacy.blank("en")
    tr = list(DocBin().from_disk(args.train).get_docs(nlp.vocab))
    dv = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    yt = np.array([doc_label(d) for d in tr])
    yd = np.array([doc_label(d) for d in dv])
    models = {"tfidf": _tfidf, "tfidf-char": _tfidf_char, "spacy-bow": _spacy_bow}
    docs_of = {t.text: t for t in tr + dv}
    if args.minilm:
        embed = _minilm_embedder(args.minilm)

        def _minilm(train_texts, y, test_texts):
            lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)
            lr.fit(np.stack([embed(docs_of[t]) for t in train_texts]), list(y))
            return lr.predict_proba(np.stack([embed(docs_of[t]) for t in test_texts]))[:, 1]

        models["minilm"] = _minilm
    if args.mentions:
        predicted = {d.text: d for d in DocBin().from_disk(args.mentions).get_docs(nlp.vocab)}
        dev_texts = {d.text for d in dv}
        missing = dev_texts - set(predicted)
        if missing:
            raise SystemExit(f"{args.mentions}: no predictions for {len(missing)} of the {len(dv)} dev documents")
        diseases = {"DISEASE", "RAREDISEASE", "SKINRAREDISEASE"}

        def mentions(text):
            doc = predicted[text] if text in dev_texts else docs_of[text]
            return " | ".join(e.text for e in doc.ents if e.label_ in diseases) or "none"

        def _tfidf_mentions(train_texts, y, test_texts):
            from scipy.sparse import hstack

            words = TfidfVectorizer(sublinear_tf=True, min_df=2)
            names = TfidfVectorizer(sublinear_tf=True, min_df=2, analyzer="char_wb", ngram_range=(3, 5))
            x = hstack([words.fit_transform(train_texts), names.fit_transform([mentions(t) for t in train_texts])])
            lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(x.tocsr(), list(y))
            xt = hstack([words.transform(test_texts), names.transform([mentions(t) for t in test_texts])])
            return lr.predict_proba(xt.tocsr())[:, 1]

        models["tfidf+mentions"] = _tfidf_mentions
    texts_tr, texts_dv = [d.text for d in tr], [d.text for d in dv]
    out = {"train": args.train, "dev": args.dev, "train_docs": len(tr), "train_positive": int(yt.sum()),
           "dev_docs": len(dv), "dev_positive": int(yd.sum()), "folds": args.folds, "models": {}}
    print(f"train {len(tr)} docs ({int(yt.sum())} positive), dev {len(dv)} ({int(yd.sum())} positive)")
    print("| model | train CV ROC AUC | train CV AP | dev ROC AUC | dev AP | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in models.items():
        t0 = time.perf_counter()
        p = np.zeros(len(tr))
        for a, b in StratifiedKFold(args.folds, shuffle=True, random_state=0).split(np.zeros(len(yt)), yt):
            p[b] = run([texts_tr[i] for i in a], yt[a], [texts_tr[i] for i in b])
        pd = run(texts_tr, yt, texts_dv)
        r = {"cv_roc_auc": float(roc_auc_score(yt, p)), "cv_average_precision": float(average_precision_score(yt, p)),
             "dev_roc_auc": float(roc_auc_score(yd, pd)), "dev_average_precision": float(average_precision_score(yd, pd)),
             "seconds": time.perf_counter() - t0}
        out["models"][name] = r
        print(f"| {name} | {r['cv_roc_auc']:.3f} | {r['cv_average_precision']:.3f} | {r['dev_roc_auc']:.3f} | "
              f"{r['dev_average_precision']:.3f} | {r['seconds']:.0f} |", flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
