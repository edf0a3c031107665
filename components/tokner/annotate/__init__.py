"""``tokner annotate``: run any spaCy pipeline over a folder of texts, a JSONL file or a
CSV/Parquet table and write its entities with character offsets into the input texts.

>>> from tokner.annotate import annotate
>>> summary = annotate("training/cnn/model-best", "notes/", "notes.jsonl")  # doctest: +SKIP
>>> print(summary.describe())  # doctest: +SKIP

Inputs: :mod:`tokner.annotate.inputs`; outputs and resuming: :mod:`tokner.annotate.outputs`;
engines: :mod:`tokner.annotate.local` (this process, or spaCy's ``n_process`` workers)
and :mod:`tokner.annotate.ray_engine` (an actor pool on a Ray cluster). See docs/annotate.md.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Set, Union

from spacy.language import Language

from tokner.annotate.inputs import INPUT_FORMATS, DocId, InputError, InputReader, Record
from tokner.annotate.outputs import OUTPUT_FORMATS, OutputError, Writer, guess_output_format, make_writer
from tokner.annotate.pipeline import TextChangedError, load_pipeline
from tokner.annotate.ray_engine import RAY_MISSING, RayOptions

ENGINES = ("local", "ray")

__all__ = [
    "annotate", "AnnotateSummary", "RayOptions", "InputReader", "Record", "InputError", "OutputError",
    "TextChangedError", "INPUT_FORMATS", "OUTPUT_FORMATS", "ENGINES", "RAY_MISSING",
]


@dataclass
class AnnotateSummary:
    """What one ``annotate`` run did."""

    output: str
    output_format: str
    engine: str
    docs: int
    """documents written by this run"""
    entities: int
    """entities in those documents"""
    errors: int
    """bad input documents skipped (``on_error="skip"``)"""
    resumed: int
    """documents already in the output (``resume``), not processed again"""
    seconds: float
    """wall time of the whole run, loading the pipeline or starting the cluster included"""
    startup_seconds: float
    """loading the pipeline (local) or starting/joining the Ray cluster (ray)"""

    @property
    def docs_per_second(self) -> float:
        return self.docs / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["docs_per_second"] = self.docs_per_second
        return d

    def describe(self) -> str:
        resumed = f" ({self.resumed} already there, kept)" if self.resumed else ""
        return (f"{self.docs} docs written{resumed}, {self.entities} entities, {self.errors} docs skipped for errors, "
                f"{self.docs_per_second:.1f} docs/s ({self.seconds:.1f} s, {self.engine} engine) -> "
                f"{self.output} [{self.output_format}]")


def _skip_done(records: Iterable[Record], done: Set[DocId], counter: Dict[str, int]) -> Iterator[Record]:
    for record in records:
        if record.id in done:
            counter["resumed"] += 1
            continue
        yield record


def annotate(
    model: Union[str, Path, Language],
    input_path: Union[str, Path],
    output_path: Union[str, Path],
    *,
    output_format: Optional[str] = None,
    input_format: Optional[str] = None,
    text_field: str = "text",
    id_field: str = "id",
    on_error: str = "raise",
    batch_size: int = 64,
    n_process: int = 1,
    gpu_id: int = -1,
    resume: bool = False,
    overwrite: bool = False,
    html_limit: int = 100,
    progress: bool = True,
    engine: str = "local",
    ray_options: Optional[RayOptions] = None,
) -> AnnotateSummary:
    """Annotate every document of ``input_path`` with ``model`` and write ``output_path``.

    model: a pipeline folder or installed package name (``spacy.load``); the local
        engine also takes a loaded ``Language``.
    output_format: one of :data:`OUTPUT_FORMATS`; None: from the output's suffix
        (``.spacy`` docbin, ``.html`` html, ``.parquet`` parquet, else jsonl).
    input_format: one of :data:`INPUT_FORMATS`; None: a folder is ``txt``, a file
        goes by its suffix.
    text_field / id_field: JSONL fields, CSV/Parquet columns.
    on_error: "raise" or "skip" (log and count bad input documents).
    batch_size: documents per ``nlp.pipe`` batch and per write (and fsync).
    n_process: spaCy worker processes (local engine, CPU pipelines).
    gpu_id: run the local engine on this GPU (-1: CPU).
    resume: skip the ids already in the output and append (jsonl, brat).
    overwrite: replace an existing non-empty output.
    html_limit: the html format renders the first this many documents.
    progress: show a tqdm bar (documents/s).
    engine: "local" or "ray" (then ``ray_options``).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if engine == "ray":
        if n_process != 1 or gpu_id >= 0:
            raise ValueError("--n-process and --gpu-id are local-engine options; with --engine ray use "
                             "--ray-actors, --ray-cpus-per-actor and --ray-gpus-per-actor")
        (ray_options or RayOptions()).validate()
        from tokner.annotate.ray_engine import import_ray

        import_ray()
    t0 = time.perf_counter()
    output_format = output_format or guess_output_format(output_path)
    reader = InputReader(input_path, input_format=input_format, text_field=text_field, id_field=id_field,
                         on_error=on_error)
    writer: Writer = make_writer(output_format, output_path, overwrite=overwrite, resume=resume,
                                 html_limit=html_limit)
    counter = {"resumed": 0}
    from tqdm import tqdm

    bar = tqdm(desc="annotate", unit="doc", disable=not progress, dynamic_ncols=True)
    done = writer.open()
    try:
        records: Iterable[Record] = _skip_done(reader, done, counter)
        if output_format == "html":
            records = itertools.islice(records, html_limit)
        if engine == "local":
            from tokner.annotate.local import run_local

            t_load = time.perf_counter()
            nlp = load_pipeline(model, gpu_id=gpu_id)
            startup = time.perf_counter() - t_load
            run_local(nlp, records, writer, batch_size=batch_size, n_process=n_process, progress=bar)
        else:
            from tokner.annotate.ray_engine import run_ray

            startup = run_ray(model, records, writer, options=ray_options, batch_size=batch_size, progress=bar)
    finally:
        writer.close()
        bar.close()
    return AnnotateSummary(
        output=str(output_path), output_format=output_format, engine=engine, docs=writer.docs, entities=writer.entities,
        errors=reader.errors, resumed=counter["resumed"], seconds=time.perf_counter() - t0, startup_seconds=startup,
    )
