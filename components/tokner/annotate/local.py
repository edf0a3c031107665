"""The local engine: ``nlp.pipe`` in this process (``n_process`` > 1: spaCy's worker processes)."""
from __future__ import annotations

from typing import Iterable, List

from spacy.language import Language

from tokner.annotate.inputs import Record
from tokner.annotate.outputs import Annotated, Writer
from tokner.annotate.pipeline import annotate_records


def run_local(
    nlp: Language,
    records: Iterable[Record],
    writer: Writer,
    *,
    batch_size: int = 64,
    n_process: int = 1,
    progress=None,
) -> None:
    """Annotate ``records`` with ``nlp`` and hand them to ``writer`` in batches of ``batch_size``.

    Whatever stops the run (a bad input document, Ctrl-C), the documents annotated
    before it are written first; only then does the error propagate.

    progress: a tqdm bar (or None) advanced by one per document written.
    """
    if n_process < 1:
        raise ValueError(f"n_process must be at least 1, got {n_process}")
    batch: List[Annotated] = []
    writer_failed = False

    def flush() -> None:
        nonlocal batch, writer_failed
        if not batch:
            return
        try:
            writer.write(batch)
        except BaseException:
            writer_failed = True
            raise
        if progress is not None:
            progress.update(len(batch))
        batch = []

    stream = annotate_records(nlp, records, batch_size=batch_size, n_process=n_process,
                              keep_doc=writer.needs_doc, keep_text=writer.needs_text)
    try:
        for item in stream:
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
    finally:
        if not writer_failed:
            flush()
