"""The comparison report: a Markdown table, an F1-per-type bar chart and displaCy pages.

Inputs are the metrics JSON files written by ``python -m tokner evaluate`` (and the
optional predicted DocBins from ``--save-docs``). The paper's published test figures
are shown beside ours, marked as theirs: they are on the *test* split, ours on *dev*.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tokner.scoring.scorer import PAPER_LABELS

# Lu et al. (2024), test split, mean F1 over the five types (the only figures quoted here).
PUBLISHED = [
    ("GPT-4 5-shot (Lu et al. 2024, test)", 0.321),
    ("GPT-4 zero-shot (Lu et al. 2024, test)", 0.277),
    ("Llama2-MedTuned-7B 5-shot (Lu et al. 2024, test)", 0.251),
]
HUMAN_AGREEMENT_F1 = 0.835


def load_metrics(pairs: Sequence[Tuple[str, Path]]) -> Dict[str, Dict]:
    """{method name: metrics dict}; missing files are reported, not silently skipped."""
    out = {}
    for name, path in pairs:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"metrics for {name!r} not found: {path}")
        out[name] = json.loads(path.read_text())
    return out


def coverage(m: Dict) -> str:
    """What a row was scored on: documents (and sentences when the run counted them)."""
    docs, sents = m.get("docs"), m.get("sentences")
    if docs is None:
        return "–"
    return (f"{docs} doc{'s' if docs != 1 else ''}"
            + (f", {sents} sentence{'s' if sents != 1 else ''}" if sents else ""))


def markdown_table(metrics: Dict[str, Dict], split: str = "dev") -> str:
    types = list(PAPER_LABELS)
    head = (["method"] + [f"{t} P/R/F" for t in types]
            + ["Avg-5 F", "micro-5 F", "micro-all F", "words/s", "scored on"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in metrics.items():
        table = m["spans_paper_per_type"]
        cells = [f"{name} ({split})"]
        for t in types:
            v = table.get(t, {"p": 0, "r": 0, "f": 0})
            cells.append(f"{v['p']:.3f}/{v['r']:.3f}/{v['f']:.3f}")
        cells += [f"**{table['AVG-5']['f']:.3f}**", f"{table['MICRO-5']['f']:.3f}", f"{table['MICRO-ALL']['f']:.3f}"]
        wps = m.get("speed_words_per_second")
        cells.append(f"{wps:,.0f}" if wps else "–")
        cells.append(coverage(m))
        lines.append("| " + " | ".join(cells) + " |")
    for name, f in PUBLISHED:
        lines.append("| " + " | ".join([f"*{name}*"] + ["–"] * len(types) + [f"*{f:.3f}*", "–", "–", "–", "test split"]) + " |")
    lines.append("| " + " | ".join(["*human agreement (Martínez-deMiguel et al. 2022)*"] + ["–"] * len(types) + [f"*{HUMAN_AGREEMENT_F1:.3f}*", "–", "–", "–", "–"]) + " |")
    return "\n".join(lines)


def bar_chart(metrics: Dict[str, Dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(PAPER_LABELS) + ["AVG-5"]
    n = max(len(metrics), 1)
    width = 0.8 / n
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(cats)) + 4, 4.5),
                                  gridspec_kw={"width_ratios": [len(cats), 2]})
    for i, (name, m) in enumerate(metrics.items()):
        table = m["spans_paper_per_type"]
        vals = [table.get(c, {"f": 0.0})["f"] for c in cats]
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(cats))]
        ax.bar(xs, vals, width, label=name)
    for label, f in PUBLISHED[:1]:
        ax.axhline(f, color="grey", ls="--", lw=1)
        ax.text(-0.45, f + 0.01, f"GPT-4 5-shot Avg (paper, test) {f:.3f}", ha="left", fontsize=8, color="grey")
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 (strict, dev)")
    ax.set_title("F1 per entity type and method (paper metric, dev split)")
    ax.legend(fontsize=8, ncol=2)
    names = list(metrics)
    speeds = [metrics[n].get("speed_words_per_second") or 0.0 for n in names]
    ax2.barh(names, speeds, color=[f"C{i}" for i in range(len(names))])
    ax2.set_xscale("log")
    ax2.set_xlabel("words / second (this machine, log scale)")
    ax2.set_title("Throughput")
    ax2.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _render(text: str, spans: List[Tuple[int, int, str]], colors: Dict[str, str]) -> str:
    from spacy import displacy

    ents = [{"start": s, "end": e, "label": l} for s, e, l in sorted(spans)]
    return displacy.render({"text": text, "ents": ents, "title": None}, style="ent", manual=True,
                           options={"colors": colors}, page=False, jupyter=False)


def displacy_pages(gold_docs, pred_docs_by_method: Dict[str, list], path: Path, n_docs: int = 5) -> Path:
    """displaCy renderings of gold and each method's entities, side by side, for the
    first ``n_docs`` docs. A prediction that is not in the gold (wrong span or type,
    strict match) is shown red as ``✗ LABEL``; gold entities a method missed are listed
    under its column."""
    labels = sorted({e.label_ for d in gold_docs for e in d.ents} |
                    {e.label_ for docs in pred_docs_by_method.values() for d in docs for e in d.ents})
    colors = {f"✗ {l}": "#ff9a9a" for l in labels}
    parts = ["<html><head><meta charset='utf-8'><title>tokner: gold vs predicted</title></head>",
             "<body style='font-family:sans-serif'>",
             "<h1>Gold vs predicted entities (dev sample)</h1>",
             "<p>Red <b>✗ LABEL</b>: a predicted entity that is not in the gold (wrong span or type). "
             "Missed gold entities are listed under each method.</p>"]
    for i, gold in enumerate(gold_docs[:n_docs]):
        g = {(e.start_char, e.end_char, e.label_) for e in gold.ents}
        cols = [(m, docs[i]) for m, docs in pred_docs_by_method.items() if i < len(docs)]
        name = html.escape(str(gold.user_data.get("source", f"doc {i}")))
        parts.append(f"<h2>{name}</h2><table style='border-collapse:collapse;table-layout:fixed;width:100%'><tr>")
        parts.append("<th style='border:1px solid #ccc'>gold</th>" + "".join(
            f"<th style='border:1px solid #ccc'>{html.escape(m)}</th>" for m, _ in cols) + "</tr><tr>")
        cell = "<td style='vertical-align:top;border:1px solid #ccc;padding:6px'>{}</td>"
        parts.append(cell.format(_render(gold.text, sorted(g), colors)))
        for _, pred in cols:
            p = {(e.start_char, e.end_char, e.label_) for e in pred.ents}
            spans = [(s, e, l if (s, e, l) in g else f"✗ {l}") for s, e, l in p]
            missed = sorted(g - p)
            miss = "".join(f"<li>{html.escape(gold.text[s:e])} <small>{l}</small></li>" for s, e, l in missed)
            parts.append(cell.format(_render(gold.text, spans, colors)
                                     + f"<p><b>missed ({len(missed)}):</b></p><ul>{miss}</ul>"))
        parts.append("</tr></table>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def token_confusion(gold_docs, pred_docs, types: Sequence[str] = PAPER_LABELS) -> Dict[str, Dict[str, int]]:
    """Token-level confusion of entity types: ``matrix[gold][predicted]`` counts the gold
    documents' non-space tokens by the type of the gold entity and of the predicted
    entity covering them (``O``: none, or a type outside ``types``). Predictions are
    matched to the first ``len(pred_docs)`` gold documents and read by character offsets,
    so their tokenization may differ from the gold one."""
    keys = list(types) + ["O"]
    matrix = {g: {p: 0 for p in keys} for g in keys}
    for gold, pred in zip(gold_docs, pred_docs):
        if gold.text != pred.text:
            raise ValueError(f"predicted and gold documents differ (gold starts {gold.text[:40]!r}): "
                             f"compare needs the predictions of the gold documents, in order")
        pred_type = {}
        for ent in pred.ents:
            for c in range(ent.start_char, ent.end_char):
                pred_type[c] = ent.label_ if ent.label_ in types else "O"
        gold_type = {}
        for ent in gold.ents:
            for t in ent:
                gold_type[t.i] = ent.label_ if ent.label_ in types else "O"
        for t in gold:
            if t.is_space:
                continue
            matrix[gold_type.get(t.i, "O")][pred_type.get(t.idx, "O")] += 1
    return matrix


def confusion_markdown(name: str, matrix: Dict[str, Dict[str, int]]) -> str:
    keys = list(matrix)
    lines = [f"**{name}** (tokens; rows gold, columns predicted)", "",
             "| gold \\ predicted | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for g in keys:
        lines.append(f"| {g} | " + " | ".join(f"{matrix[g][p]:,}" for p in keys) + " |")
    return "\n".join(lines) + "\n"


def summary_table(metrics: Dict[str, Dict], split: str = "dev") -> str:
    """The compact table (F1 per type, Avg-5, micro-5, words/s, coverage) with the paper's
    published figures, marked as theirs: ``reports/summary.md``, what the README shows."""
    types = list(PAPER_LABELS)
    head = ["method"] + types + ["Avg-5 F1", "micro-5 F1", "words/s", "scored on"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(types) + 3) + "---|"]
    for name, m in metrics.items():
        table = m["spans_paper_per_type"]
        wps = m.get("speed_words_per_second")
        cells = ([f"{name} ({split})"] + [f"{table.get(t, {'f': 0})['f']:.3f}" for t in types]
                 + [f"**{table['AVG-5']['f']:.3f}**", f"{table['MICRO-5']['f']:.3f}", f"{wps:,.0f}" if wps else "–",
                    coverage(m)])
        lines.append("| " + " | ".join(cells) + " |")
    for name, f in PUBLISHED:
        lines.append("| " + " | ".join([f"*{name}*"] + ["–"] * len(types) + [f"*{f:.3f}*", "–", "–", "*test split*"]) + " |")
    lines.append("| " + " | ".join(["*human agreement (Martínez-deMiguel et al. 2022)*"] + ["–"] * len(types)
                                   + [f"*{HUMAN_AGREEMENT_F1:.3f}*", "–", "–", "–"]) + " |")
    return "\n".join(lines) + "\n"


RESULTS_BEGIN = "<!-- results: begin (tokner readme-results; do not edit by hand) -->"
RESULTS_END = "<!-- results: end -->"


def insert_results(readme: Path, summary: Path, run: str, timings: Optional[Path] = None) -> str:
    """Replace the block between the README's results markers by ``summary`` (the table
    ``compare`` wrote), the run's description and its step times; returns the block."""
    text = Path(readme).read_text(encoding="utf-8")
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        raise ValueError(f"{readme}: no results markers ({RESULTS_BEGIN} ... {RESULTS_END})")
    block = [RESULTS_BEGIN, "", f"Run: {run}", "", Path(summary).read_text(encoding="utf-8").strip(), ""]
    if timings is not None:
        t = json.loads(Path(timings).read_text())
        steps = ", ".join(f"{s['step']} {s['seconds']:,.0f}" for s in t["steps"])
        wall = t.get("wall_seconds", t["total_seconds"])
        block += [f"Seconds per step (`{Path(timings).name}`, {t.get('jobs', 1)} at a time): {steps}; "
                  f"{t['total_seconds']:,.0f} s of steps in {wall:,.0f} s wall.", ""]
    block.append(RESULTS_END)
    head, _, rest = text.partition(RESULTS_BEGIN)
    _, _, tail = rest.partition(RESULTS_END)
    Path(readme).write_text(head + "\n".join(block) + tail, encoding="utf-8")
    return "\n".join(block)


def compare(
    pairs: Sequence[Tuple[str, Path]],
    out_dir: Path,
    gold: Optional[Path] = None,
    docs_pairs: Sequence[Tuple[str, Path]] = (),
    n_docs: int = 5,
    split: str = "dev",
) -> Dict[str, Path]:
    import spacy
    from spacy.tokens import DocBin

    metrics = load_metrics(pairs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "comparison.md"
    png = bar_chart(metrics, out_dir / "f1_by_type.png")
    md.write_text(
        "# Comparison (paper metric, strict span match)\n\n"
        f"Our rows: {split} split, from `python -m tokner evaluate`; \"scored on\" says how much of it "
        "(a row scored on a few documents is a smoke test, not comparable with the full split). "
        "Rows in italics are the published figures of Lu et al. (2024) on the *test* split "
        "(Avg F1 only), not ours.\n\n"
        + markdown_table(metrics, split)
        + f"\n\n![F1 per type]({png.name})\n",
        encoding="utf-8",
    )
    summary = out_dir / "summary.md"
    summary.write_text(summary_table(metrics, split), encoding="utf-8")
    result = {"markdown": md, "chart": png, "summary": summary}
    if gold is not None and docs_pairs:
        vocab = spacy.blank("en").vocab
        gold_docs = list(DocBin().from_disk(gold).get_docs(vocab))
        preds = {name: list(DocBin().from_disk(p).get_docs(vocab)) for name, p in docs_pairs if Path(p).is_file()}
        result["html"] = displacy_pages(gold_docs, preds, out_dir / "errors.html", n_docs=n_docs)
        if preds:
            parts = ["\n## Token confusion per method\n",
                     "Where each method's errors are: non-space tokens of the documents it was scored on, "
                     "by gold type (rows) and predicted type (columns); `O` is outside any of the five types.\n"]
            for name, docs in preds.items():
                parts.append(confusion_markdown(f"{name} ({len(docs)} docs)", token_confusion(gold_docs, docs)))
            with md.open("a", encoding="utf-8") as f:
                f.write("\n".join(parts))
    return result
