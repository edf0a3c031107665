"""tokner.BM25Index.v1 (hand-written, numpy) against bm25s's Lucene BM25, same tokens.

    OMP_NUM_THREADS=1 python benchmarks/bm25_compare.py --train corpus/train.spacy --dev corpus/dev.spacy

Indexes every train sentence (the SimilarExamples candidates), queries every dev sentence
for its 5 nearest, and reports build and query time of each, and how often the two agree on
the top-5 (as sets, and the top-1). Both score with Lucene's BM25 (idf log(1 + (N - df +
0.5) / (df + 0.5)), k1 = 1.5, b = 0.75) over the same lower-cased word tokens (bm25s's scores are tokner's divided by k1 + 1, which ranks
the same).
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default="corpus/train.spacy")
    p.add_argument("--dev", default="corpus/dev.spacy")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--output")
    args = p.parse_args()

    import bm25s
    import numpy
    import spacy
    from spacy.tokens import DocBin

    from tokner.llm.retrieval import BM25Index, _top_k
    from tokner.answers.tags import sentence_token_lists

    vocab = spacy.blank("en").vocab

    def sentences(path):
        out = []
        for doc in DocBin().from_disk(path).get_docs(vocab):
            out += [" ".join(doc[i].text for i in s) for s in sentence_token_lists(doc)]
        return out

    train, dev = sentences(args.train), sentences(args.dev)
    ours = BM25Index(k1=1.5, b=0.75)
    t = time.perf_counter()
    ours.build(train)
    ours_build = time.perf_counter() - t
    t = time.perf_counter()
    ours_top = ours.search_many(dev, args.k)
    ours_query = time.perf_counter() - t

    terms = BM25Index._terms
    t = time.perf_counter()
    theirs = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    corpus_tokens = [terms(s) for s in train]
    theirs.index(_to_ids(corpus_tokens), show_progress=False)
    theirs_build = time.perf_counter() - t
    t = time.perf_counter()
    vocab_ids = _VOCAB
    # a query term counts once in tokner's BM25 (as in Lucene's query parser for a bag of terms)
    query_ids = [list(dict.fromkeys(vocab_ids[w] for w in terms(q) if w in vocab_ids)) for q in dev]
    theirs_top = []
    for q in query_ids:
        scores = theirs.get_scores(q) if q else numpy.zeros(len(train), dtype="float32")
        theirs_top.append(_top_k(numpy.asarray(scores, dtype="float32"), args.k))
    theirs_query = time.perf_counter() - t

    same_set = sum(set(a) == set(b) for a, b in zip(ours_top, theirs_top)) / len(dev)
    same_first = sum(a[:1] == b[:1] for a, b in zip(ours_top, theirs_top)) / len(dev)
    res = {"train_sentences": len(train), "dev_queries": len(dev), "k": args.k,
           "tokner_build_s": round(ours_build, 3), "tokner_query_s": round(ours_query, 3),
           "bm25s_build_s": round(theirs_build, 3), "bm25s_query_s": round(theirs_query, 3),
           "same_top_k_set": round(same_set, 4), "same_top_1": round(same_first, 4),
           "bm25s_version": bm25s.__version__}
    print(json.dumps(res, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(res, f, indent=2)
    return 0


_VOCAB: dict = {}


def _to_ids(token_lists):
    """bm25s's tokenized-corpus form: (ids per document, vocabulary)."""
    import bm25s

    ids = []
    for toks in token_lists:
        ids.append([_VOCAB.setdefault(w, len(_VOCAB)) for w in toks])
    return bm25s.tokenization.Tokenized(ids=ids, vocab=dict(_VOCAB))


if __name__ == "__main__":
    raise SystemExit(main())
