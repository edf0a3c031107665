"""Command line: ``python -m tokner COMMAND`` (also installed as ``tokner``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from tokner.utils.textfile import write_json


def _json_or_str(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_set_overrides(items: Optional[List[str]]) -> dict:
    """``--set KEY=VALUE`` items as config overrides (VALUE read as JSON, else a string)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = _json_or_str(value)
    return overrides


def parse_dotted_overrides(args: List[str]) -> dict:
    """spaCy-style ``--section.key VALUE`` / ``--section.key=VALUE`` arguments as config
    overrides (VALUE read as JSON, else a string; a flag without a value is true), as
    ``spacy train`` reads them."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise SystemExit(f"unrecognized argument {arg!r} (config overrides look like --section.key value)")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        out[key.replace("-", "_")] = _json_or_str(value)
        i += 1
    return out


def _cmd_convert(args) -> int:
    from tokner.corpus.convert import convert_corpus

    report = convert_corpus(Path(args.raredis_dir), Path(args.output_dir), on_error=args.on_error)
    for split, stats in report.items():
        print(f"{split:<6} {stats['docs']:>4} docs  {stats['sentences']:>5} sentences  "
              f"{stats['entities'] if 'entities' in stats else '-':>6} annotated  {stats['ents']:>6} in Doc.ents  "
              f"({stats['format']}: {stats['source']})")
    if args.stats:
        write_json(args.stats, report)
        print(f"policy counts written to {args.stats}")
    return 0


def _cmd_unpack(args) -> int:
    from tokner.corpus.convert import unpack_assets

    for split, path in unpack_assets(Path(args.download_dir), Path(args.raredis_dir), verify=not args.no_verify).items():
        print(f"{split}: {path}")
    return 0


def _cmd_static_vectors(args) -> int:
    """Distil static word vectors from an encoder (see tokner.corpus.vectors)."""
    from tokner.corpus.vectors import build_static_vectors

    info = build_static_vectors(args.encoder, args.output, args.words, use_encoder_vocab=not args.no_encoder_vocab,
                                min_count=args.min_count, batch_size=args.batch_size,
                                context_weight=args.context_weight, progress=not args.no_progress)
    print(f"{info['words']} vectors of width {info['dim']} ({info['keys']} keys: lower, Capitalised, UPPER) -> {args.output}")
    return 0


def _cmd_export_texts(args) -> int:
    """One .txt per Doc of a DocBin (e.g. the train split as RAG knowledge passages)."""
    import spacy
    from spacy.tokens import DocBin

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, doc in enumerate(DocBin().from_disk(args.docbin).get_docs(spacy.blank("en").vocab)):
        name = Path(str(doc.user_data.get("source", f"doc{i:05d}.txt"))).name
        if not name.endswith(".txt"):
            name += ".txt"
        (out / name).write_text(doc.text, encoding="utf-8")
        n += 1
    print(f"{n} texts written to {out}")
    return 0


def _cmd_stats(args) -> int:
    from tokner.corpus.convert import corpus_stats

    out = {}
    for p in args.docbins:
        s = corpus_stats(Path(p))
        out[p] = s
        print(f"== {p}: {s['docs']} docs, {s['sentences']} sentences, {s['tokens']} tokens")
        labels = sorted(set(s["ents"]) | set(s["annotated_entities"]))
        print(f"{'type':<16}{'Doc.ents':>10}{'annotated':>11}{'fragments':>11}")
        for l in labels:
            print(f"{l:<16}{s['ents'].get(l, 0):>10}{s['annotated_entities'].get(l, 0):>11}{s['annotated_fragments'].get(l, 0):>11}")
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _cmd_evaluate(args) -> int:
    import spacy

    from tokner.scoring.evaluation import evaluate_pipeline, format_table, load_gold_docs, parse_doc_slice

    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
    overrides = parse_set_overrides(args.set)
    try:
        docs = parse_doc_slice(args.docs)
    except ValueError as e:
        raise SystemExit(f"--docs: {e}") from None
    nlp = spacy.load(args.model, config=overrides)
    from tokner.scoring.evaluation import entity_writers

    if not entity_writers(nlp):
        raise SystemExit(f"{args.model}: no component writes Doc.ents (pipeline: {', '.join(nlp.pipe_names) or 'empty'}); "
                         f"nothing to evaluate")
    all_gold = load_gold_docs(Path(args.data), nlp)
    if not all_gold:
        raise SystemExit(f"{args.data}: no documents to evaluate")
    gold = all_gold[docs]
    if not gold or (args.limit and args.limit < 0):
        raise SystemExit(f"--docs {args.docs}: selects none of the {len(all_gold)} documents in {args.data}")
    scores, examples = evaluate_pipeline(nlp, gold, batch_size=args.batch_size, limit=args.limit)
    scores["model"] = str(args.model)
    scores["overrides"] = overrides
    scores["data"] = str(args.data)
    scores["doc_slice"] = args.docs
    print(format_table(scores))
    if args.save_docs:
        from spacy.tokens import DocBin

        Path(args.save_docs).parent.mkdir(parents=True, exist_ok=True)
        DocBin(store_user_data=False, docs=[eg.predicted for eg in examples]).to_disk(args.save_docs)
    print(f"{scores['docs']} docs, {scores['speed_words_per_second']:.0f} words/s")
    if args.output:
        write_json(args.output, scores)
    if args.test:
        if not Path(args.test).exists():
            print(f"no test split at {args.test}: test evaluation skipped")
        else:
            test_scores, _ = evaluate_pipeline(nlp, load_gold_docs(Path(args.test), nlp), batch_size=args.batch_size)
            test_scores.update({"model": str(args.model), "data": str(args.test)})
            print(f"== test split ({args.test})")
            print(format_table(test_scores))
            if args.test_output:
                write_json(args.test_output, test_scores)
    return 0


def _cmd_score_docs(args) -> int:
    import spacy
    from spacy.tokens import DocBin
    from spacy.training import Example

    from tokner.scoring.evaluation import format_table, load_gold_docs, parse_doc_slice
    from tokner.scoring.scorer import score_paper_ner

    try:
        docs = parse_doc_slice(args.docs)
    except ValueError as e:
        raise SystemExit(f"--docs: {e}") from None
    nlp = spacy.blank("en")
    gold = load_gold_docs(Path(args.gold), nlp)[docs]
    predicted = []
    for path in args.predicted:
        if not Path(path).exists():
            raise SystemExit(f"predicted DocBin not found: {path}")
        predicted += [(path, i, d) for i, d in enumerate(DocBin().from_disk(path).get_docs(nlp.vocab))]
    if args.subset:
        # the predictions cover more documents than are scored: keep those of the --docs slice
        predicted = predicted[docs]
    if len(predicted) != len(gold):
        raise SystemExit(f"{len(predicted)} predicted docs in {', '.join(args.predicted)} but {len(gold)} gold docs "
                         f"in {args.gold} [{args.docs}]")
    examples = []
    for (path, i, pred), g in zip(predicted, gold):
        if pred.text != g.text:
            raise SystemExit(f"{path}: doc {i} does not have the text of gold doc {len(examples)} of {args.gold} "
                             f"[{args.docs}] ({pred.text[:40]!r} vs {g.text[:40]!r})")
        examples.append(Example(pred, g))
    scores = score_paper_ner(examples)
    scores.update({"docs": len(examples), "data": args.gold, "doc_slice": args.docs, "predicted": args.predicted})
    print(format_table(scores))
    if args.output:
        write_json(args.output, scores)
    return 0


def _load_aligned_predictions(gold_path: str, specs: List[str], nlp):
    """NAME=DOCBIN specs -> (gold docs, {name: predicted docs of the same texts})."""
    from spacy.tokens import DocBin

    from tokner.scoring.evaluation import load_gold_docs

    gold = load_gold_docs(Path(gold_path), nlp)
    members = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--members expects NAME=DOCBIN, got {spec!r}")
        if not Path(path).exists():
            raise SystemExit(f"predicted DocBin not found: {path}")
        docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
        if len(docs) != len(gold):
            raise SystemExit(f"{path}: {len(docs)} docs, {gold_path}: {len(gold)}")
        for i, (d, g) in enumerate(zip(docs, gold)):
            if d.text != g.text:
                raise SystemExit(f"{path}: doc {i} does not have the text of gold doc {i} of {gold_path} "
                                 f"({d.text[:40]!r} vs {g.text[:40]!r}; save predictions with tokner evaluate --save-docs)")
        members[name] = docs
    return gold, members


def _cmd_ensemble_search(args) -> int:
    import spacy
    from spacy.tokens import DocBin
    from spacy.training import Example

    from tokner.ensemble import (DOC_TYPE_THRESHOLDS, WEIGHT_GRID, apply_consistency, copy_doc as copy, cross_fit,
                                 held_out_docs, paper_row, paper_rows_markdown)
    from tokner.scoring.scorer import PAPER_LABELS, score_paper_ner

    if args.repeats < 0:
        raise SystemExit(f"--repeats must be 0 or more, got {args.repeats}")
    weight_grid = tuple(args.weight_grid or WEIGHT_GRID)  # the member weights the vote's search tries
    if any(w <= 0 for w in weight_grid):
        raise SystemExit(f"--weight-grid: weights must be positive, got {list(weight_grid)}")
    grid = {"weight_grid": weight_grid}
    nlp = spacy.blank("en")
    gold, members = _load_aligned_predictions(args.gold, args.members, nlp)
    if not 2 <= args.folds <= len(gold):
        raise SystemExit(f"--folds must be between 2 and the {len(gold)} documents of {args.gold}, got {args.folds}")

    def paper(pred_docs):
        return paper_row(gold, pred_docs)

    doc_probs = None
    doc_kw = {}  # the document-type thresholds the search tries (default: tokner.ensemble.DOC_TYPE_THRESHOLDS)
    if args.doc_type:
        if not Path(args.doc_type).exists():
            raise SystemExit(f"--doc-type: no pipeline at {args.doc_type} (tokner train-doc-type writes one)")
        from tokner.doctype import find_component

        try:
            doc_type = find_component(spacy.load(args.doc_type), f"--doc-type {args.doc_type}")
        except ValueError as e:
            raise SystemExit(str(e)) from None
        doc_probs = doc_type.model.predict([g.text for g in gold])
        if args.doc_type_threshold == "pipeline":  # each fold chooses between it and no relabelling
            doc_kw = {"doc_thresholds": (doc_type.threshold,)}

    def held_docs(result):
        return held_out_docs(gold, result["held_out"])

    rows = {}
    for name, docs in members.items():
        rows[name] = paper(docs)
        rows[f"{name} + consistency"] = paper([apply_consistency(copy(d)) for d in docs])
        if doc_probs is not None:  # the member alone, relabelled by document type at a cross-fitted threshold
            alone = cross_fit(gold, {name: docs}, PAPER_LABELS, folds=args.folds, consistency=(False,),
                              by_boundary=(False,), doc_probs=doc_probs, **doc_kw)
            rows[f"{name} + doc type, cross-fit {args.folds} folds"] = paper(held_docs(alone))
    consistency = (False,) if args.no_consistency else (False, True)
    result = cross_fit(gold, members, PAPER_LABELS, folds=args.folds, consistency=consistency, **grid)
    if doc_probs is not None:
        rows[f"vote({'+'.join(members)}), cross-fit {args.folds} folds"] = paper(held_docs(result))
        result = cross_fit(gold, members, PAPER_LABELS, folds=args.folds, consistency=consistency, doc_probs=doc_probs,
                           **doc_kw, **grid)
    held = held_docs(result)
    key = f"vote({'+'.join(members)}){' + doc type' if doc_probs is not None else ''}, cross-fit {args.folds} folds"
    rows[key] = paper(held)
    print(paper_rows_markdown(rows))
    print(f"setting chosen on each fold's other documents: {result['fold_settings']}")
    print(f"setting chosen on all documents (for a pipeline): {result['setting_all']}")
    spread = None
    if args.repeats:  # the same search over shuffled fold assignments: how much the figure owes to the split
        from tokner.ensemble import cross_fit_runs, spread as spread_of

        runs = cross_fit_runs(gold, members, PAPER_LABELS, range(args.repeats), folds=args.folds,
                              consistency=consistency, doc_probs=doc_probs, **doc_kw, **grid)
        spread = {"row": key, "runs": runs, **spread_of(runs, ["avg", "micro5", *PAPER_LABELS])}
        print(f"{key}, over {args.repeats} shuffled fold assignments stratified by document type (seeds 0-{args.repeats - 1}): "
              + ", ".join(f"{c} {spread[c]['mean']:.3f} (sd {spread[c]['sd']:.3f}, {spread[c]['min']:.3f}-{spread[c]['max']:.3f})"
                          for c in ("avg", "micro5", "SKINRAREDISEASE")))
    if args.output:
        out = {"gold": args.gold, "members": dict(s.partition("=")[::2] for s in args.members), "folds": args.folds,
               "weight_grid": list(weight_grid),
               "rows": rows, "fold_settings": result["fold_settings"], "setting_all": result["setting_all"],
               "doc_type": args.doc_type,
               "doc_type_thresholds_tried": None if doc_probs is None else list(doc_kw.get("doc_thresholds", DOC_TYPE_THRESHOLDS))}
        if spread is not None:
            out["spread"] = spread
        write_json(args.output, out)
    if args.save_docs:
        Path(args.save_docs).parent.mkdir(parents=True, exist_ok=True)
        DocBin(docs=held).to_disk(args.save_docs)
    if args.metrics_output:  # the cross-fitted vote in tokner evaluate's format (a row of tokner compare)
        scores = score_paper_ner([Example(p, g) for p, g in zip(held, gold)])
        scores.update({"docs": len(gold), "data": args.gold, "method": key, "setting_all": result["setting_all"]})
        write_json(args.metrics_output, scores)
    return 0


def _cmd_score_outputs(args) -> int:
    from tokner.scoring.evaluation import format_table, score_answer_file

    scores = score_answer_file(Path(args.answers), Path(args.gold_csv), align=args.align, grouping=args.grouping)
    print(format_table(scores))
    print(f"{scores['blocks']} blocks ({scores['grouping']} grouping, {scores['align']} alignment), "
          f"{scores['invalid_tags_as_O']} invalid tags read as O")
    if args.output:
        Path(args.output).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


def _cmd_write_outputs(args) -> int:
    """Write Docs' entities (a DocBin's gold, or a pipeline's predictions) as answers."""
    import spacy

    from tokner.scoring.evaluation import load_gold_docs
    from tokner.answers.paper_format import render_answer, render_blocks
    from tokner.answers.tags import doc_tags, sentence_token_lists

    nlp = spacy.load(args.model) if args.model else spacy.blank("en")
    docs = load_gold_docs(Path(args.data), nlp)
    if args.model:
        docs = list(nlp.pipe(d.text for d in docs))
    answers = []
    for doc in docs:
        tags = doc_tags(doc)
        for sent in sentence_token_lists(doc):
            answers.append(render_answer([doc[i].text for i in sent], [tags[i] for i in sent]))
    Path(args.output).write_text(render_blocks(answers), encoding="utf-8")
    print(f"{len(answers)} answer blocks written to {args.output}")
    return 0


def _pairs(items: List[str]):
    out = []
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"expected NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        out.append((name, Path(path)))
    return out


def _cmd_compare(args) -> int:
    from tokner.scoring.report import compare

    res = compare(_pairs(args.metrics), Path(args.output_dir), gold=Path(args.gold) if args.gold else None,
                  docs_pairs=_pairs(args.docs), n_docs=args.n_docs, split=args.split)
    print((Path(res["markdown"])).read_text())
    for k, v in res.items():
        print(f"{k}: {v}")
    return 0


def _cmd_ensemble_build(args) -> int:
    from tokner.ensemble import build_ensemble

    search = json.loads(Path(args.search).read_text())
    setting = search["setting_all"]
    doc_type = args.doc_type or search.get("doc_type")
    members = {}
    for spec in args.members:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--members expects NAME=PIPELINE, got {spec!r}")
        members[name] = path
    missing = sorted(set(setting["weights"]) - set(members))
    if missing:
        raise SystemExit(f"{args.search} chose weights for {missing}: give their pipelines with --members")
    try:
        nlp = build_ensemble(members, setting, doc_type=doc_type)
    except (OSError, ValueError) as e:
        raise SystemExit(str(e)) from None
    nlp.to_disk(args.output)
    print(f"wrote {args.output}: members {sorted(members)}, weights {setting['weights']}, "
          f"threshold {setting['threshold']}, consistency {setting['consistency']}, "
          f"doc-type threshold {setting.get('doc_type_threshold')}")
    return 0


def _cmd_train_doc_type(args) -> int:
    import spacy

    from tokner.doctype import build_pipeline, choose_threshold, doc_label, train
    from tokner.scoring.evaluation import load_gold_docs

    nlp = spacy.blank("en")
    try:
        docs = load_gold_docs(Path(args.train), nlp)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{args.train}: {e}") from None
    labels = [doc_label(d) for d in docs]
    if args.threshold == "train":
        if args.cv_folds < 2:
            raise SystemExit("--threshold train chooses the threshold by cross-validation on train: --cv-folds must be 2 or more")
        threshold = None
    else:
        try:
            threshold = float(args.threshold)
        except ValueError:
            raise SystemExit(f"--threshold: a probability or 'train', got {args.threshold!r}") from None
        if not 0.0 <= threshold <= 1.0:
            raise SystemExit(f"--threshold: a probability or 'train', got {threshold}")
    try:
        model = train([d.text for d in docs], labels, C=args.C, cv_folds=args.cv_folds)
    except ValueError as e:
        raise SystemExit(f"{args.train}: {e}") from None
    info = dict(model.info, train=args.train)
    if threshold is None:  # chosen on train: out-of-fold probabilities relabel train's own gold mentions
        threshold, curve = choose_threshold(docs, C=args.C, folds=args.cv_folds, seeds=args.threshold_seeds)
        info.update({"threshold_chosen_on": f"train, {args.threshold_seeds} x {args.cv_folds}-fold cross-validation",
                     "threshold_curve": {str(t): v for t, v in curve.items()}})
    info["threshold"] = threshold
    if args.dev:
        from sklearn.metrics import average_precision_score, roc_auc_score

        dev = load_gold_docs(Path(args.dev), nlp)
        y = [doc_label(d) for d in dev]
        p = model.predict([d.text for d in dev])
        info.update({"dev": args.dev, "dev_docs": len(dev), "dev_positive": int(sum(y))})
        if 0 < sum(y) < len(y):
            info.update({"dev_roc_auc": float(roc_auc_score(y, p)), "dev_average_precision": float(average_precision_score(y, p))})
    model.info = info
    build_pipeline(model, threshold=threshold).to_disk(args.output)
    print(json.dumps(info, indent=2))
    print(f"wrote {args.output}")
    if args.metrics:
        write_json(args.metrics, info)
    return 0


def _cmd_readme_results(args) -> int:
    from tokner.scoring.report import insert_results

    try:
        print(insert_results(Path(args.readme), Path(args.summary), args.run,
                             Path(args.timings) if args.timings else None))
    except (OSError, ValueError) as e:
        raise SystemExit(str(e)) from None
    return 0


def _cmd_annotate(args) -> int:
    """Run a pipeline over texts and write its entities (see docs/annotate.md)."""
    from tokner.annotate import InputError, OutputError, RayOptions, TextChangedError, annotate

    ray_options = RayOptions(
        address=args.ray_address, actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
        gpus_per_actor=args.ray_gpus_per_actor, num_cpus=args.ray_num_cpus, block_size=args.ray_block_size,
        object_store_memory=args.ray_object_store_mb * 1024**2 if args.ray_object_store_mb else None,
    )
    try:
        summary = annotate(
            args.model, args.input, args.output, output_format=args.format, input_format=args.input_format,
            text_field=args.text_field, id_field=args.id_field, on_error=args.on_error, batch_size=args.batch_size,
            n_process=args.n_process, gpu_id=args.gpu_id, resume=args.resume, overwrite=args.overwrite,
            html_limit=args.html_limit, progress=not args.no_progress, engine=args.engine, ray_options=ray_options,
        )
    except (InputError, OutputError, TextChangedError, ImportError, ValueError) as e:
        raise SystemExit(f"tokner annotate: {e}") from None
    print(summary.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokner", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Token-level clinical NER (RareDis) as spaCy components: build the corpus, "
                    "score any pipeline with the paper's metric, compare methods, and annotate your own notes.",
        epilog="examples:\n"
               "  python -m tokner convert ../shared/raredis corpus\n"
               "  python -m tokner evaluate training/cnn/model-best corpus/dev.spacy --output metrics/cnn-dev.json\n"
               "  python -m tokner annotate MODEL notes/ out.jsonl --resume\n"
               "\nother entry points: python -m tokner.lora train|tune-bias (LoRA pipe), "
               "python -m tokner.workflow all (the project's workflow, timed), python -m tokner.offline "
               "(offline models), python -m tokner.reference (docs/reference.md).\n"
               "The README is the manual; docs/ has one page per topic.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="RareDis folder (BRAT and/or IOB CSV) -> corpus/{train,dev,test}.spacy")
    c.add_argument("raredis_dir")
    c.add_argument("output_dir")
    c.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="bad .ann lines / unpaired files: raise (default) or log, count and skip")
    c.add_argument("--stats", help="write per-split policy counts as JSON here")
    c.set_defaults(func=_cmd_convert)

    u = sub.add_parser("unpack-assets", help="unzip the downloaded RareDis BRAT zips (+ test CSV) into RAREDIS_DIR")
    u.add_argument("download_dir")
    u.add_argument("raredis_dir")
    u.add_argument("--no-verify", action="store_true", help="skip the content fingerprint check")
    u.set_defaults(func=_cmd_unpack)

    x = sub.add_parser("export-texts", help="write each Doc's text of a DocBin as NAME.txt (RAG knowledge folder)")
    x.add_argument("docbin")
    x.add_argument("output_dir")
    x.set_defaults(func=_cmd_export_texts)

    v = sub.add_parser("static-vectors", help="distil static word vectors from an encoder (for the CNN's StaticVectors)")
    v.add_argument("encoder", help="hub name or local folder of a transformers encoder")
    v.add_argument("output", help="folder for a blank pipeline holding the vectors ([initialize] vectors)")
    v.add_argument("--words", nargs="+", required=True, help="DocBin(s) whose words get vectors (the train split)")
    v.add_argument("--no-encoder-vocab", action="store_true", help="only the DocBins' words, not the encoder's vocab")
    v.add_argument("--min-count", type=int, default=1)
    v.add_argument("--batch-size", type=int, default=512)
    v.add_argument("--context-weight", type=float, default=0.0,
                   help="mix in each --words word's mean in-context output with this weight (0: isolated words only)")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=_cmd_static_vectors)

    s = sub.add_parser("stats", help="entity counts per type of DocBins")
    s.add_argument("docbins", nargs="+")
    s.add_argument("--output")
    s.set_defaults(func=_cmd_stats)

    e = sub.add_parser("evaluate", help="score any spaCy pipeline with the paper's metric")
    e.add_argument("model")
    e.add_argument("data", help="DocBin, BRAT folder or IOB CSV")
    e.add_argument("--output", help="metrics JSON")
    e.add_argument("--gpu-id", type=int, default=-1)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--limit", type=int, default=0, help="only the first N documents")
    e.add_argument("--docs", default=":", help="only these documents, as a Python slice START:END (before --limit)")
    e.add_argument("--set", action="append", help="config override for the loaded pipeline, e.g. components.tokner_lora_ner.decoding=free")
    e.add_argument("--test", help="also evaluate on this test split when it exists (skipped with a note otherwise)")
    e.add_argument("--test-output", help="metrics JSON for --test")
    e.add_argument("--save-docs", help="also write the predicted Docs as a DocBin (for `compare`'s displaCy pages)")
    e.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser("score-docs", help="score saved predicted Docs (evaluate --save-docs) against gold")
    d.add_argument("gold", help="gold DocBin, BRAT folder or IOB CSV")
    d.add_argument("predicted", nargs="+", help="predicted DocBins, concatenated in order")
    d.add_argument("--docs", default=":", help="the gold documents they cover, as START:END (default all)")
    d.add_argument("--subset", action="store_true",
                   help="the predictions cover all the gold documents; score only those of --docs")
    d.add_argument("--output", help="metrics JSON")
    d.set_defaults(func=_cmd_score_docs)

    en = sub.add_parser("ensemble-search", help="choose span-voting weights over saved predictions by cross-fitting; "
                                                 "score each member, with document consistency, and the vote")
    en.add_argument("gold", help="gold DocBin, BRAT folder or IOB CSV")
    en.add_argument("--members", nargs="+", required=True, metavar="NAME=DOCBIN",
                    help="each member's predictions on the gold texts (tokner evaluate --save-docs)")
    en.add_argument("--folds", type=int, default=2, help="documents split in this many contiguous folds (default 2)")
    en.add_argument("--repeats", type=int, default=0, metavar="N",
                    help="also cross-fit the vote over N shuffled fold assignments (seeds 0..N-1, stratified by the gold "
                         "document type) and report the mean, sd and range of its scores: how much the figure owes "
                         "to one split")
    en.add_argument("--no-consistency", action="store_true", help="do not try document consistency after the vote")
    en.add_argument("--weight-grid", type=float, nargs="+", metavar="W",
                    help="member weights the search tries (the first member's fixed at 1; default "
                         "tokner.ensemble.WEIGHT_GRID, 0.5 1 1.5 2); '--weight-grid 1' votes with equal weights, so "
                         "only the threshold, span mode, consistency and document-type relabelling are chosen")
    en.add_argument("--doc-type", metavar="PIPELINE",
                    help="a tokner train-doc-type pipeline: also try relabelling RAREDISEASE/SKINRAREDISEASE by its "
                         "document probability after the vote (each fold chooses relabelling or not with the weights)")
    en.add_argument("--doc-type-threshold", choices=["pipeline", "search"], default="pipeline",
                    help="with --doc-type: relabel at the pipeline's own threshold (default; tokner train-doc-type "
                         "chooses it on train) or search 0.4-0.9 with the weights on the other folds")
    en.add_argument("--output", help="metrics JSON (rows, settings per fold, setting chosen on all documents)")
    en.add_argument("--save-docs", help="the cross-fitted vote's predictions as a DocBin (for tokner compare)")
    en.add_argument("--metrics-output", help="the cross-fitted vote's scores in tokner evaluate's format (for tokner compare)")
    en.set_defaults(func=_cmd_ensemble_search)

    o = sub.add_parser("score-outputs", help="score a ######-separated 'token : label' file against an IOB CSV")
    o.add_argument("answers")
    o.add_argument("gold_csv")
    o.add_argument("--align", choices=["position", "tokens"], default="position",
                   help="position: the paper's line-by-line reading; tokens: tokner's aligner")
    o.add_argument("--grouping", choices=["auto", "paper", "file"], default="auto")
    o.add_argument("--output")
    o.set_defaults(func=_cmd_score_outputs)

    w = sub.add_parser("write-outputs", help="write gold or predicted entities in the paper's answer format")
    w.add_argument("data", help="DocBin, BRAT folder or IOB CSV")
    w.add_argument("output")
    w.add_argument("--model", help="pipeline to run (default: write the gold entities)")
    w.set_defaults(func=_cmd_write_outputs)
    r = sub.add_parser("compare", help="comparison table (Markdown), F1 bar chart (PNG) and displaCy error pages")
    r.add_argument("output_dir")
    r.add_argument("--metrics", nargs="+", required=True, help="NAME=metrics.json (from `tokner evaluate`)")
    r.add_argument("--docs", nargs="*", default=[], help="NAME=predicted.spacy (from `tokner evaluate --save-docs`)")
    r.add_argument("--gold", help="gold DocBin for the displaCy pages")
    r.add_argument("--n-docs", type=int, default=5)
    r.add_argument("--split", default="dev")
    r.set_defaults(func=_cmd_compare)

    eb = sub.add_parser("ensemble-build", help="save a pipeline that votes over member pipelines with the setting "
                                               "ensemble-search chose on all documents (members copied inside)")
    eb.add_argument("search", help="the JSON written by tokner ensemble-search --output")
    eb.add_argument("output", help="pipeline folder to write")
    eb.add_argument("--members", nargs="+", required=True, metavar="NAME=PIPELINE",
                    help="each member's pipeline folder, named as in the search")
    eb.add_argument("--doc-type", metavar="PIPELINE",
                    help="the tokner train-doc-type pipeline (default: the one the search was run with)")
    eb.set_defaults(func=_cmd_ensemble_build)

    dt = sub.add_parser("train-doc-type", help="train the document-type model (skin rare disease or not) that "
                                               "tokner_doc_type uses, on gold documents; save it as a pipeline")
    dt.add_argument("train", help="gold DocBin, BRAT folder or IOB CSV (positive: more SKINRAREDISEASE than RAREDISEASE mentions)")
    dt.add_argument("output", help="pipeline folder to write (the paper's tokenizer + tokner_doc_type)")
    dt.add_argument("--dev", help="gold documents to report ROC AUC and average precision on")
    dt.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression (default 1)")
    dt.add_argument("--cv-folds", type=int, default=5, help="cross-validation folds on train for the report (0: none)")
    dt.add_argument("--threshold", default="train",
                    help="the saved component's relabelling threshold: a probability, or 'train' (default): the one "
                         "whose relabelling of train's own gold mentions by out-of-fold probabilities (--cv-folds "
                         "folds, --threshold-seeds shufflings) scores best")
    dt.add_argument("--threshold-seeds", type=int, default=3, help="cross-validation shufflings for --threshold train (default 3)")
    dt.add_argument("--metrics", help="write the report as JSON")
    dt.set_defaults(func=_cmd_train_doc_type)

    rr = sub.add_parser("readme-results", help="put compare's summary table (reports/summary.md), the run's description "
                                               "and its step times between README.md's results markers")
    rr.add_argument("summary", help="reports/summary.md from tokner compare")
    rr.add_argument("readme", help="the README (must hold the results markers)")
    rr.add_argument("--run", required=True, help="what produced it: command, commit, machine")
    rr.add_argument("--timings", help="metrics/timings-all.json of that run")
    rr.set_defaults(func=_cmd_readme_results)

    a = sub.add_parser(
        "annotate", help="run any spaCy pipeline over texts (.txt folder, JSONL, CSV, Parquet) and write its entities",
        description="Annotate documents with a spaCy pipeline; entity offsets point into the input texts as given. "
                    "See docs/annotate.md.")
    a.add_argument("model", help="pipeline folder or installed package name (spacy.load)")
    a.add_argument("input", help="folder of .txt files (recursive; id = relative path), .jsonl ({\"id\", \"text\"} "
                                 "per line; no id: its line number), or .csv/.parquet table (no id column: line/row number)")
    a.add_argument("output", help="output file (jsonl, docbin, html, parquet) or folder (brat)")
    a.add_argument("--format", choices=["jsonl", "brat", "docbin", "html", "parquet"], default=None,
                   help="output format (default: from OUTPUT's suffix: .spacy docbin, .html html, .parquet parquet, else jsonl)")
    a.add_argument("--input-format", choices=["txt", "jsonl", "csv", "parquet"], default=None,
                   help="input form (default: a folder is txt, a file goes by its suffix)")
    a.add_argument("--text-field", default="text", help="JSONL field / CSV or Parquet column of the text (default: text)")
    a.add_argument("--id-field", default="id", help="JSONL field / CSV or Parquet column of the id (default: id)")
    a.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="bad input documents: raise (default; the error names file and line) or log, count and skip")
    a.add_argument("--batch-size", type=int, default=64, help="documents per nlp.pipe batch and per write+fsync (64)")
    a.add_argument("--n-process", type=int, default=1, help="spaCy worker processes (local engine, CPU pipelines)")
    a.add_argument("--gpu-id", type=int, default=-1, help="run the local engine on this GPU (default -1: CPU)")
    a.add_argument("--resume", action="store_true",
                   help="skip the ids already in OUTPUT and append (jsonl, brat); a truncated last line is removed first")
    a.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUTPUT")
    a.add_argument("--html-limit", type=int, default=100, help="html format: render the first N documents (100)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (this process) or ray (an actor pool; pip install spacy-tokner[ray])")
    a.add_argument("--ray-address", help="join this Ray cluster (HOST:6379, or auto on a cluster node); "
                                         "default: start a local cluster and stop it at the end")
    a.add_argument("--ray-actors", type=int, default=2, help="actor pool size; each actor loads the pipeline once (2)")
    a.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves (1)")
    a.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPUs each actor reserves and runs spaCy on (0)")
    a.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    a.add_argument("--ray-object-store-mb", type=int, default=None, help="object store of the local cluster, in MiB")
    a.add_argument("--ray-block-size", type=int, default=256,
                   help="documents per Ray block, the unit one actor takes (256); keep it well under docs/actors")
    a.set_defaults(func=_cmd_annotate)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
