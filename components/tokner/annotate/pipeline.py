"""Running a spaCy pipeline over input records (shared by the local and the Ray engine)."""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Deque, Iterable, Iterator, List, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc

from tokner.annotate.inputs import DocId, InputError, Record
from tokner.annotate.outputs import Annotated, doc_record, record_line


class TextChangedError(RuntimeError):
    """The pipeline's ``doc.text`` is not the input text, so offsets would not point into it."""


def load_pipeline(model: Union[str, Path, Language], gpu_id: int = -1) -> Language:
    """``spacy.load`` a pipeline folder or installed package (a Language is used as is).

    gpu_id >= 0 runs it on that GPU (``spacy.require_gpu``; an error where there is none).
    """
    import spacy

    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    if isinstance(model, Language):
        return model
    return spacy.load(model)


def check_text(doc: Doc, text: str, doc_id: DocId) -> None:
    """Raise :class:`TextChangedError` unless ``doc.text == text``."""
    if doc.text == text:
        return
    got = doc.text
    i = next((k for k, (a, b) in enumerate(zip(text, got)) if a != b), min(len(text), len(got)))
    raise TextChangedError(
        f"document {doc_id!r}: the pipeline's doc.text differs from the input text from character {i} on "
        f"(input {text[i:i + 30]!r}, doc.text {got[i:i + 30]!r}; lengths {len(text)} and {len(got)}), so "
        "entity offsets would not point into the input. Use a pipeline whose tokenizer keeps doc.text == text "
        "(tokner.PaperTokenizer.v1 and spaCy's default tokenizer do)."
    )


def annotated(doc: Doc, record: Record, keep_doc: bool = False, keep_text: bool = False) -> Annotated:
    """Check one processed Doc against its input and build its output record."""
    check_text(doc, record.text, record.id)
    rec = doc_record(doc, record.id)
    return Annotated(record.id, record.text if keep_text else None, rec, record_line(rec), doc if keep_doc else None)


def annotate_records(
    nlp: Language,
    records: Iterable[Record],
    *,
    batch_size: int = 64,
    n_process: int = 1,
    keep_doc: bool = False,
    keep_text: bool = False,
) -> Iterator[Annotated]:
    """Yield one :class:`Annotated` per record, in input order.

    Texts go through ``nlp.pipe`` (``batch_size``, ``n_process``). An empty or
    whitespace-only text is only tokenized (``nlp.make_doc``), never given to the
    pipeline's components: its entity list is empty by definition.

    An :class:`~tokner.annotate.inputs.InputError` raised by ``records`` stops the
    feeding, but the documents read before it are still yielded; the error is raised
    after them, so that a writer can keep everything before the bad document.
    """
    pending: Deque[Tuple[int, Record]] = deque()
    failure: List[InputError] = []

    def feed():
        try:
            for seq, record in enumerate(records):
                pending.append((seq, record))
                if record.text.strip():
                    yield record.text, seq
        except InputError as err:
            failure.append(err)

    def blank(record: Record) -> Annotated:
        return annotated(nlp.make_doc(record.text), record, keep_doc, keep_text)

    for doc, seq in nlp.pipe(feed(), as_tuples=True, batch_size=batch_size, n_process=n_process):
        while pending[0][0] != seq:
            yield blank(pending.popleft()[1])
        yield annotated(doc, pending.popleft()[1], keep_doc, keep_text)
    while pending:
        yield blank(pending.popleft()[1])
    if failure:
        raise failure[0]
