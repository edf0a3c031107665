"""Output of ``tokner annotate``: the per-document record, the writers, resuming.

The record of a document (:func:`doc_record`) is what every format is built from::

    {"id": "sub/case.txt",
     "entities": [{"start": 10, "end": 23, "label": "RAREDISEASE", "text": "Fabry disease", "score": null}],
     "cats": {"SKIN": 0.31},                   # only when the pipeline sets doc.cats
     "alignment": {...}}                       # only for tokner's LLM pipes

``start``/``end`` are character offsets (Python ``str`` indices, i.e. Unicode code
points) into the input text exactly as given, so ``text[start:end] == entity["text"]``.
``score`` comes from a span group that keeps scores (``doc.spans["lora"]`` or
``doc.spans["llm"]`` with ``group.attrs["scores"]``, a list parallel to the spans),
else it is null. ``cats`` is ``doc.cats`` where a component set it (``tokner_doc_type``:
the probability that the document is about a skin disease). ``alignment`` is
``doc._.tokner_llm`` where that extension exists and is set (the prompted-LLM pipe's
per-document alignment statistics).

Writers (:data:`WRITERS`) take batches of :class:`Annotated` documents:

* ``jsonl``: one line per document, each batch written with flush + ``os.fsync``;
  ``resume`` reads the ids of the complete lines and drops a truncated last line;
* ``brat``: ``NAME.txt`` + ``NAME.ann`` per document (ids with ``/`` become
  subfolders) and ``index.jsonl`` (id -> NAME, written after the files), which is
  what ``resume`` reads;
* ``docbin``: one ``.spacy`` file, the id in ``doc.user_data["id"]``;
* ``html``: one displaCy ``ent`` page;
* ``parquet``: one table with the columns ``id`` (string), ``entities``, ``cats`` and
  ``alignment`` (both JSON text or null).

docbin, html and parquet files are written when the run ends (also when it stops on
an error: then they hold the documents before the failing one); they cannot be resumed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from spacy.tokens import Doc

from tokner.annotate.inputs import DocId

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("jsonl", "brat", "docbin", "html", "parquet")
RESUMABLE_FORMATS = ("jsonl", "brat")
# Span groups whose attrs["scores"] give entity scores, in order of preference.
SCORE_SPAN_KEYS = ("lora", "llm")
# The Doc extension tokner's spacy-llm task fills with alignment statistics.
ALIGNMENT_EXTENSION = "tokner_llm"
BRAT_INDEX = "index.jsonl"
# Characters that end a line for str.splitlines(), which the BRAT reader uses on .ann files.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_BRAT_LABEL = re.compile(r"^[^\s;]+$")
_UNSAFE_NAME_CHARS = re.compile(r"[^\w.\-]", re.ASCII)
_MAX_NAME = 150


class OutputError(ValueError):
    """The output cannot be written or resumed (an existing file, a bad line in it)."""


@dataclass
class Annotated:
    """One processed document on its way to a writer."""

    id: DocId
    text: Optional[str]
    record: Dict[str, Any]
    line: str
    doc: Optional[Doc] = None


# -- the record -------------------------------------------------------------------------
def _jsonable(value):
    """Plain JSON values: numpy scalars unwrapped, non-finite floats as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _span_scores(doc: Doc) -> Dict[Tuple[int, int, str], Optional[float]]:
    scores: Dict[Tuple[int, int, str], Optional[float]] = {}
    for key in SCORE_SPAN_KEYS:
        if key not in doc.spans:
            continue
        group = doc.spans[key]
        values = group.attrs.get("scores")
        if values is None or len(values) != len(group):
            continue
        for span, value in zip(group, values):
            score = None if value is None else _jsonable(float(value))
            scores.setdefault((span.start_char, span.end_char, span.label_), score)
    return scores


def doc_record(doc: Doc, doc_id: DocId) -> Dict[str, Any]:
    """The output record of one document (see the module docstring)."""
    scores = _span_scores(doc)
    text = doc.text
    entities = [
        {"start": ent.start_char, "end": ent.end_char, "label": ent.label_,
         "text": text[ent.start_char:ent.end_char],
         "score": scores.get((ent.start_char, ent.end_char, ent.label_))}
        for ent in doc.ents
    ]
    record: Dict[str, Any] = {"id": doc_id, "entities": entities}
    if doc.cats:
        record["cats"] = {str(k): _jsonable(float(v)) for k, v in doc.cats.items()}
    if Doc.has_extension(ALIGNMENT_EXTENSION):
        alignment = doc._.get(ALIGNMENT_EXTENSION)
        if alignment is not None:
            record["alignment"] = _jsonable(dict(alignment))
    return record


def record_line(record: Dict[str, Any]) -> str:
    """The JSONL line of a record (UTF-8 text, not ASCII escapes; always valid JSON)."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


# -- resuming ---------------------------------------------------------------------------
def read_complete_lines(path: Path, truncate: bool = True) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yield (line number, object) for each complete line of a JSONL output.

    A last line without its newline (what a kill during a write leaves) is not
    complete: with ``truncate`` it is cut off the file (and logged). A complete line
    that is not a JSON object with an "id" is an :class:`OutputError`.
    """
    with open(path, "r+b") as f:
        good_end = 0
        lineno = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            lineno += 1
            good_end += len(raw)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise OutputError(f"{path}:{lineno}: not a complete output line ({e}); cannot resume") from None
            if not isinstance(obj, dict) or "id" not in obj:
                raise OutputError(f"{path}:{lineno}: not an output line of tokner annotate (no \"id\"); cannot resume")
            yield lineno, obj
        size = f.seek(0, os.SEEK_END)
        if truncate and size > good_end:
            logger.warning("%s: removing a truncated last line (%d bytes) before resuming", path, size - good_end)
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())


def _fsync_write(f, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


# -- writers ----------------------------------------------------------------------------
class Writer:
    """Base class: checks the output path, collects ids to skip on resume, writes batches."""

    format = ""
    needs_doc = False
    needs_text = False
    resumable = False

    def __init__(self, path: Union[str, Path], *, overwrite: bool = False, resume: bool = False):
        if overwrite and resume:
            raise OutputError("--resume and --overwrite exclude each other")
        if resume and not self.resumable:
            raise OutputError(f"--resume works for the {' and '.join(RESUMABLE_FORMATS)} formats, not {self.format}")
        self.path = Path(path)
        self.overwrite = overwrite
        self.resume = resume
        self.docs = 0
        self.entities = 0

    def open(self) -> Set[DocId]:
        """Prepare the output; returns the ids already written (only with ``resume``)."""
        raise NotImplementedError

    def write(self, batch: Sequence[Annotated]) -> None:
        self._write(batch)
        self.docs += len(batch)
        self.entities += sum(len(a.record["entities"]) for a in batch)

    def _write(self, batch: Sequence[Annotated]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (also called after an error: what was written stays)."""

    def _refuse_existing(self, what: str) -> None:
        raise OutputError(f"{self.path} {what}: pass --resume to continue it or --overwrite to replace it"
                          if self.resumable else f"{self.path} {what}: pass --overwrite to replace it")

    def _check_file_target(self) -> None:
        if self.path.is_dir():
            raise OutputError(f"{self.path} is a folder; the {self.format} format writes one file")
        if self.path.exists() and self.path.stat().st_size > 0 and not self.overwrite:
            self._refuse_existing("exists and is not empty")
        self.path.parent.mkdir(parents=True, exist_ok=True)


class JsonlWriter(Writer):
    """One line per document, appended batch by batch with flush + fsync."""

    format = "jsonl"
    resumable = True

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        self._f = None

    def open(self) -> Set[DocId]:
        done: Set[DocId] = set()
        if self.path.is_dir():
            raise OutputError(f"{self.path} is a folder; the jsonl format writes one file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and self.resume:
            done = {obj["id"] for _, obj in read_complete_lines(self.path)}
        elif exists and not self.overwrite:
            self._refuse_existing("exists and is not empty")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab" if self.resume else "wb")
        return done

    def _write(self, batch: Sequence[Annotated]) -> None:
        _fsync_write(self._f, "".join(a.line for a in batch).encode("utf-8"))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def brat_name(doc_id: DocId) -> str:
    """A filesystem-safe relative name (no suffix) for a document id.

    ``/`` separates subfolders; in each part, characters other than ASCII letters,
    digits, ``_``, ``.`` and ``-`` become ``_``, a leading dot becomes ``_``; a final
    ``.txt`` is dropped (``sub/case 1.txt`` -> ``sub/case_1``). Folder parts that end
    in ``.txt``/``.ann`` get a ``_`` so that the BRAT reader's glob does not take them
    for documents.
    """
    parts = [p for p in str(doc_id).split("/") if p not in ("", ".")] or ["_"]
    safe = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if last and part.lower().endswith(".txt") and len(part) > 4:
            part = part[:-4]
        part = _UNSAFE_NAME_CHARS.sub("_", part)
        if part.startswith("."):
            part = "_" + part[1:]
        part = part[:_MAX_NAME]
        if not last and part.lower().endswith((".txt", ".ann")):
            part += "_"
        safe.append(part)
    return "/".join(safe)


def brat_fragments(text: str, start: int, end: int) -> List[Tuple[int, int]]:
    """An entity's BRAT fragments: ``[start, end)`` cut at line breaks (as brat itself
    does), since an ``.ann`` line cannot hold one."""
    frags: List[Tuple[int, int]] = []
    s: Optional[int] = None
    for i in range(start, end):
        if text[i] in _LINE_BREAKS:
            if s is not None:
                frags.append((s, i))
                s = None
        elif s is None:
            s = i
    if s is not None:
        frags.append((s, end))
    return frags


def brat_ann(text: str, entities: Sequence[Dict[str, Any]], doc_id: DocId = None) -> str:
    """The ``.ann`` text (``T1<TAB>LABEL START END<TAB>TEXT`` lines) of a document's entities."""
    lines = []
    n = 0
    for ent in entities:
        label = ent["label"]
        if not _BRAT_LABEL.match(label):
            raise OutputError(f"document {doc_id!r}: label {label!r} cannot be written as BRAT (no whitespace or ';')")
        frags = brat_fragments(text, ent["start"], ent["end"])
        if not frags:
            logger.warning("document %r: entity %d-%d %r holds only line breaks; left out of the .ann",
                           doc_id, ent["start"], ent["end"], ent["text"])
            continue
        n += 1
        offsets = ";".join(f"{s} {e}" for s, e in frags)
        surface = " ".join(text[s:e] for s, e in frags)
        lines.append(f"T{n}\t{label} {offsets}\t{surface}\n")
    return "".join(lines)


class BratWriter(Writer):
    """``NAME.txt`` + ``NAME.ann`` per document under the output folder, plus ``index.jsonl``.

    Two ids that map to the same name (ignoring case) get ``~2``, ``~3``, ... appended,
    in input order. ``--overwrite`` deletes the files the folder's index lists (and the
    index), nothing else.
    """

    format = "brat"
    needs_text = True
    resumable = True

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        self._index = None
        self._used: Set[str] = set()

    def open(self) -> Set[DocId]:
        done: Set[DocId] = set()
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{self.path} is a file; the brat format writes a folder")
        index = self.path / BRAT_INDEX
        non_empty = self.path.is_dir() and any(self.path.iterdir())
        if non_empty and self.resume:
            if not index.is_file():
                raise OutputError(f"{self.path} has no {BRAT_INDEX}: not a folder tokner annotate wrote; cannot resume")
            for lineno, obj in read_complete_lines(index):
                if "name" not in obj:
                    raise OutputError(f"{index}:{lineno}: no \"name\"; cannot resume")
                done.add(obj["id"])
                self._used.add(obj["name"].lower())
        elif non_empty and not self.overwrite:
            self._refuse_existing("exists and is not empty")
        elif non_empty and self.overwrite and index.is_file():
            for _, obj in read_complete_lines(index, truncate=False):
                for suffix in (".txt", ".ann"):
                    (self.path / f"{obj.get('name', '')}{suffix}").unlink(missing_ok=True)
            index.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        self._index = open(index, "ab")
        return done

    def _name(self, doc_id: DocId) -> str:
        base = brat_name(doc_id)
        name, n = base, 1
        while name.lower() in self._used:
            n += 1
            name = f"{base}~{n}"
        self._used.add(name.lower())
        return name

    def _write(self, batch: Sequence[Annotated]) -> None:
        index_lines = []
        for a in batch:
            name = self._name(a.id)
            stem = self.path / name
            stem.parent.mkdir(parents=True, exist_ok=True)
            for suffix, content in ((".txt", a.text), (".ann", brat_ann(a.text, a.record["entities"], a.id))):
                with open(stem.parent / (stem.name + suffix), "wb") as f:
                    _fsync_write(f, content.encode("utf-8"))
            index_lines.append(json.dumps({"id": a.id, "name": name}, ensure_ascii=False) + "\n")
        _fsync_write(self._index, "".join(index_lines).encode("utf-8"))

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None


class DocBinWriter(Writer):
    """All documents in one ``.spacy`` DocBin (user data kept; the id in ``doc.user_data["id"]``)."""

    format = "docbin"
    needs_doc = True

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        from spacy.tokens import DocBin

        self._docbin = DocBin(store_user_data=True)

    def open(self) -> Set[DocId]:
        self._check_file_target()
        return set()

    def _write(self, batch: Sequence[Annotated]) -> None:
        for a in batch:
            a.doc.user_data["id"] = a.id
            self._docbin.add(a.doc)

    def close(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        self._docbin.to_disk(tmp)
        os.replace(tmp, self.path)


class HtmlWriter(Writer):
    """A displaCy ``ent`` page of the first ``limit`` documents, each titled with its id."""

    format = "html"
    needs_doc = True

    def __init__(self, path, *, limit: int = 100, **kwargs):
        super().__init__(path, **kwargs)
        if limit < 1:
            raise OutputError(f"--html-limit must be at least 1, got {limit}")
        self.limit = limit
        self._docs: List[Doc] = []

    def open(self) -> Set[DocId]:
        self._check_file_target()
        return set()

    def _write(self, batch: Sequence[Annotated]) -> None:
        for a in batch[: max(0, self.limit - len(self._docs))]:
            a.doc.user_data["title"] = str(a.id)
            self._docs.append(a.doc)

    def close(self) -> None:
        from spacy import displacy

        with warnings.catch_warnings():
            # W006 "No entities to visualize": a document without entities is a valid page.
            warnings.filterwarnings("ignore", message=r"\[W006\]")
            html = displacy.render(self._docs, style="ent", page=True, jupyter=False) if self._docs else "<html></html>"
        self.path.write_text(html, encoding="utf-8")


class ParquetWriter(Writer):
    """One Parquet table: ``id`` (string), ``entities`` (list of structs), ``alignment`` (JSON text)."""

    format = "parquet"

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("writing Parquet needs pyarrow: pip install pyarrow") from None
        self._pa, self._pq = pa, pq
        entity = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.string()),
                            ("text", pa.string()), ("score", pa.float64())])
        self.schema = pa.schema([("id", pa.string()), ("entities", pa.list_(entity)), ("cats", pa.string()),
                                 ("alignment", pa.string())])
        self._writer = None

    def open(self) -> Set[DocId]:
        self._check_file_target()
        self._writer = self._pq.ParquetWriter(str(self.path), self.schema)
        return set()

    def _write(self, batch: Sequence[Annotated]) -> None:
        table = self._pa.Table.from_pydict({
            "id": [str(a.id) for a in batch],
            "entities": [a.record["entities"] for a in batch],
            "cats": [json.dumps(a.record["cats"], ensure_ascii=False) if "cats" in a.record else None for a in batch],
            "alignment": [json.dumps(a.record["alignment"], ensure_ascii=False) if "alignment" in a.record else None
                          for a in batch],
        }, schema=self.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


WRITERS = {"jsonl": JsonlWriter, "brat": BratWriter, "docbin": DocBinWriter, "html": HtmlWriter,
           "parquet": ParquetWriter}


def make_writer(output_format: str, path: Union[str, Path], *, overwrite: bool = False, resume: bool = False,
                html_limit: int = 100) -> Writer:
    """The writer of one of :data:`OUTPUT_FORMATS`."""
    if output_format not in WRITERS:
        raise OutputError(f"unknown output format {output_format!r} (one of {', '.join(OUTPUT_FORMATS)})")
    kwargs: Dict[str, Any] = {"overwrite": overwrite, "resume": resume}
    if output_format == "html":
        kwargs["limit"] = html_limit
    return WRITERS[output_format](path, **kwargs)


def guess_output_format(path: Union[str, Path]) -> str:
    """The format an output name implies: ``.spacy`` docbin, ``.html`` html,
    ``.parquet`` parquet, anything else jsonl."""
    return {".spacy": "docbin", ".html": "html", ".htm": "html", ".parquet": "parquet"}.get(
        Path(path).suffix.lower(), "jsonl")
