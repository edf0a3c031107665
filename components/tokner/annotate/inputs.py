"""Input documents for ``tokner annotate``: readers and validation.

Four input forms, told apart by :func:`detect_input_format`:

* a **folder** of ``.txt`` files, read recursively in sorted order; a document's id
  is its path relative to the folder, POSIX style (``sub/case 1.txt``);
* a **JSONL** file, one ``{"id": ..., "text": ...}`` object per line (other field
  names with ``text_field``/``id_field``); a record without an id (or with a null
  one) gets its line number (an int, counted from 1) as its id; blank lines are
  not documents;
* a **CSV** file with a header row (columns ``text_field`` and, optionally,
  ``id_field``; without an id column a row's id is the number of the line it
  starts on);
* a **Parquet** table (same columns; without an id column, or for a null id, the
  row number counted from 1).

Texts are kept exactly as stored (``"\\r\\n"``, tabs, a leading BOM of a ``.txt``
file: nothing is normalised), since entity offsets point into them. Only a BOM at
the very start of a JSONL or CSV file is dropped: it belongs to the file, not to
a document.

Every bad input is an :class:`InputError` that names the file and the line (or
row): a file that cannot be read, bytes that are not UTF-8, a JSONL line that is
not a JSON object or lacks the text field, a text that is not a string, an id that
is not a string or an integer, a duplicate id. With ``on_error="skip"`` a bad
document is logged, counted in :attr:`InputReader.errors` and left out instead; a
missing or unreadable input file itself always raises.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Set, Union

logger = logging.getLogger(__name__)

DocId = Union[str, int]
INPUT_FORMATS = ("txt", "jsonl", "csv", "parquet")
ON_ERROR = ("raise", "skip")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
# csv's default cap (131,072 characters per field) is too small for long clinical notes.
_CSV_FIELD_LIMIT = 2**31 - 1


class InputError(ValueError):
    """A bad input file or document; the message starts with ``FILE:LINE:`` (or
    ``FILE: row N:`` for Parquet, or just ``FILE:`` when no line applies)."""

    def __init__(self, path: Union[str, Path], line: Optional[int], message: str, unit: str = "line"):
        self.path = Path(path)
        self.line = line
        self.unit = unit
        self.reason = message
        if line is None:
            where = f"{path}"
        elif unit == "line":
            where = f"{path}:{line}"
        else:
            where = f"{path}: {unit} {line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Record:
    """One input document: its id, its text exactly as given, and where it came from."""

    id: DocId
    text: str
    source: str
    line: Optional[int] = None


def detect_input_format(path: Union[str, Path]) -> str:
    """``txt`` for a folder, else by suffix: ``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``."""
    path = Path(path)
    if path.is_dir():
        return "txt"
    if not path.exists() and not path.is_symlink():
        raise InputError(path, None, "input not found")
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputError(
        path, None,
        f"cannot tell the input form from the suffix {suffix!r}: give a folder of .txt files, "
        "a .jsonl, a .csv or a .parquet file (or name the form with --input-format)",
    )


def check_id(value, path: Path, line: Optional[int], unit: str = "line") -> DocId:
    """A document id must be a non-empty string or an integer (not a bool or a float)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(path, line, f"id must be a string or an integer, got {type(value).__name__} {value!r}", unit)
    if isinstance(value, str) and not value:
        raise InputError(path, line, "empty id", unit)
    return value


class InputReader:
    """Iterate the validated :class:`Record` s of one input, in input order.

    The reader streams: it holds one record (plus the set of ids seen so far, to
    reject duplicates) at a time, whatever the size of the input.

    path: the input folder or file.
    input_format: one of :data:`INPUT_FORMATS`; None detects it from ``path``.
    text_field / id_field: the JSONL field names or CSV/Parquet column names.
    on_error: "raise" (default) or "skip": log, count (:attr:`errors`) and leave out
        a bad document.
    """

    def __init__(
        self,
        path: Union[str, Path],
        *,
        input_format: Optional[str] = None,
        text_field: str = "text",
        id_field: str = "id",
        on_error: str = "raise",
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.path = Path(path)
        self.input_format = input_format or detect_input_format(self.path)
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        if not self.path.exists():
            raise InputError(self.path, None, "input not found")
        if self.input_format == "txt" and not self.path.is_dir():
            raise InputError(self.path, None, "a .txt input must be a folder")
        if self.input_format != "txt" and self.path.is_dir():
            raise InputError(self.path, None, f"is a folder, not a {self.input_format} file")
        self.text_field = text_field
        self.id_field = id_field
        self.on_error = on_error
        self.errors = 0

    def __iter__(self) -> Iterator[Record]:
        seen: Set[DocId] = set()
        raw = {"txt": self._iter_txt, "jsonl": self._iter_jsonl, "csv": self._iter_csv,
               "parquet": self._iter_parquet}[self.input_format]()
        for item in raw:
            if isinstance(item, InputError):
                self._fail(item)
                continue
            if item.id in seen:
                unit = "row" if self.input_format == "parquet" else "line"
                self._fail(InputError(item.source, item.line, f"duplicate id {item.id!r}", unit))
                continue
            seen.add(item.id)
            yield item

    def _fail(self, err: InputError) -> None:
        if self.on_error == "raise":
            raise err
        self.errors += 1
        logger.warning("Skipping %s", err)

    # -- a folder of .txt files ---------------------------------------------------------
    def _iter_txt(self) -> Iterator[Union[Record, InputError]]:
        root = self.path
        files = sorted(
            (p for p in root.rglob("*.txt") if p.is_file() or p.is_symlink()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise InputError(root, None, "no .txt files in the input folder")
        for p in files:
            try:
                data = p.read_bytes()
            except OSError as e:
                yield InputError(p, None, f"cannot read the file ({e.strerror or e})")
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                yield InputError(p, data[: e.start].count(b"\n") + 1, f"not valid UTF-8 ({e.reason}, byte offset {e.start})")
                continue
            yield Record(p.relative_to(root).as_posix(), text, str(p), None)

    # -- JSONL ----------------------------------------------------------------------------
    def _iter_jsonl(self) -> Iterator[Union[Record, InputError]]:
        path = self.path
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    yield InputError(path, lineno, f"not valid UTF-8 ({e.reason}, byte {e.start + 1} of the line)")
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield InputError(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(obj, dict):
                    yield InputError(path, lineno, f"expected a JSON object, got {_json_type(obj)}")
                    continue
                if self.text_field not in obj:
                    yield InputError(
                        path, lineno,
                        f"no {self.text_field!r} field (fields: {', '.join(map(repr, obj)) or 'none'}; "
                        "name the text field with --text-field)",
                    )
                    continue
                text = obj[self.text_field]
                if not isinstance(text, str):
                    yield InputError(path, lineno, f"{self.text_field!r} must be a string, got {_json_type(text)}")
                    continue
                raw_id = obj.get(self.id_field)
                try:
                    doc_id = lineno if raw_id is None else check_id(raw_id, path, lineno)
                except InputError as e:
                    yield e
                    continue
                yield Record(doc_id, text, str(path), lineno)

    # -- CSV ------------------------------------------------------------------------------
    def _iter_csv(self) -> Iterator[Union[Record, InputError]]:
        path = self.path
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        bad_lines: Dict[int, str] = {}
        with _open_binary(path) as f:
            reader = csv.reader(_decoded_lines(f, bad_lines))
            try:
                header = next(reader)
            except StopIteration:
                raise InputError(path, None, "empty CSV file (no header row)") from None
            except csv.Error as e:
                raise InputError(path, 1, f"bad CSV header ({e})") from None
            if 1 in bad_lines:
                raise InputError(path, 1, f"not valid UTF-8 ({bad_lines[1]})")
            if self.text_field not in header:
                raise InputError(
                    path, 1,
                    f"no {self.text_field!r} column (columns: {', '.join(map(repr, header))}; "
                    "name the text column with --text-field)",
                )
            text_col = header.index(self.text_field)
            id_col = header.index(self.id_field) if self.id_field in header else None
            last = reader.line_num
            while True:
                start = last + 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    last = reader.line_num
                    yield InputError(path, start, f"bad CSV ({e})")
                    continue
                last = reader.line_num
                bad = [n for n in range(start, last + 1) if n in bad_lines]
                if bad:
                    yield InputError(path, bad[0], f"not valid UTF-8 ({bad_lines[bad[0]]})")
                    continue
                if not row:
                    continue
                if len(row) != len(header):
                    yield InputError(path, start, f"the row has {len(row)} fields, the header {len(header)}")
                    continue
                if id_col is None:
                    doc_id: DocId = start
                else:
                    try:
                        doc_id = check_id(row[id_col], path, start)
                    except InputError as e:
                        yield e
                        continue
                yield Record(doc_id, row[text_col], str(path), start)

    # -- Parquet --------------------------------------------------------------------------
    def _iter_parquet(self) -> Iterator[Union[Record, InputError]]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from None
        path = self.path
        try:
            pf = pq.ParquetFile(path)
        except OSError as e:
            raise InputError(path, None, f"cannot read the file ({e})") from None
        except pa.ArrowException as e:
            raise InputError(path, None, f"not a Parquet file ({e})") from None
        schema = pf.schema_arrow
        if self.text_field not in schema.names:
            raise InputError(path, None, f"no {self.text_field!r} column (columns: {', '.join(map(repr, schema.names))}; "
                             "name the text column with --text-field)")
        text_type = schema.field(self.text_field).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise InputError(path, None, f"column {self.text_field!r} must hold strings, not {text_type}")
        columns = [self.text_field]
        if self.id_field in schema.names:
            id_type = schema.field(self.id_field).type
            if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type) or pa.types.is_integer(id_type)):
                raise InputError(path, None, f"id column {self.id_field!r} must hold strings or integers, not {id_type}")
            columns.append(self.id_field)
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) == 2 else [None] * len(texts)
            for text, raw_id in zip(texts, ids):
                row += 1
                if text is None:
                    yield InputError(path, row, f"{self.text_field!r} is null", "row")
                    continue
                try:
                    doc_id = row if raw_id is None else check_id(raw_id, path, row, "row")
                except InputError as e:
                    yield e
                    continue
                yield Record(doc_id, text, str(path), row)


def _open_binary(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise InputError(path, None, f"cannot read the file ({e.strerror or e})") from None


def _decoded_lines(f, bad_lines: Dict[int, str]) -> Iterator[str]:
    """Physical lines (``\\n``-terminated, ``\\r`` kept) decoded one by one, so that a
    decoding error can name its line; a bad line is decoded with replacement
    characters and noted in ``bad_lines`` (its record is then rejected)."""
    for lineno, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            bad_lines[lineno] = f"{e.reason}, byte {e.start + 1} of the line"
            yield raw.decode("utf-8", errors="replace")


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)
