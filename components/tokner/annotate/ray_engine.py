"""The Ray engine: the pipeline runs in a pool of Ray actors (``ray.data`` ``map_batches``).

How a run goes:

1. The driver reads and validates the input with the local engine's reader
   (:class:`~tokner.annotate.inputs.InputReader`: same rules, same errors, with their
   file and line), drops the ids a resumed output already has, and puts the
   documents into Ray's object store in blocks of ``block_size`` documents
   (``ordinal``, ``id`` as JSON text so that int ids stay ints, ``text``). The blocks
   become one dataset (``ray.data.from_arrow_refs``); Ray spills them to disk when
   they exceed the object store. Ray's file readers are not used: they would need
   CPUs that the actor pool may hold all of (a 2-CPU cluster with 2 actors waits
   for ever) and would apply their own parsing rules (type inference turns the CSV
   id ``007`` into ``7``).
2. ``map_batches`` with :class:`SpacyActor`, a class that loads the pipeline once
   per actor, in an actor pool of ``actors`` actors with ``cpus_per_actor`` CPUs and
   ``gpus_per_actor`` GPUs each. An actor returns, per document, its ordinal and the
   same output line the local engine writes (plus ``doc.to_bytes()`` for the
   docbin/html formats, the text for brat).
3. The driver iterates the result in input order (``preserve_order``; the ordinals
   are checked) and writes it with the local engine's writers, batch by batch, so
   the output, resuming and fsync-per-batch are the same as there.

Without ``address`` a local cluster is started (``ray.init(num_cpus=...)``, no
dashboard) and shut down at the end; with one (``HOST:6379`` or ``auto``) the driver
joins that cluster and leaves it running. If Ray is already initialised in this
process it is used as it is.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

from tokner.annotate.inputs import InputError, Record
from tokner.annotate.outputs import Annotated, Writer
from tokner.annotate.pipeline import TextChangedError, annotate_records

logger = logging.getLogger(__name__)

RAY_MISSING = "the ray engine needs Ray Data, which is not installed: pip install spacy-tokner[ray]"


@dataclass
class RayOptions:
    """Settings of the Ray engine (the ``--ray-*`` options of ``tokner annotate``).

    address: an existing cluster to join (``HOST:6379``, ``auto``); None starts a local one.
    actors: size of the actor pool (each actor loads the pipeline once).
    cpus_per_actor / gpus_per_actor: Ray resources each actor reserves; with
        gpus_per_actor > 0 the actor runs spaCy on its GPU (``spacy.require_gpu``).
    num_cpus: CPUs of a local cluster (default: all, at least what the actors need).
    object_store_memory: object store size of a local cluster, in bytes (default: Ray's).
    block_size: documents per Ray block; a block is the unit handed to one actor,
        so an input of N documents keeps at most N / block_size actors busy.
    """

    address: Optional[str] = None
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    num_cpus: Optional[int] = None
    object_store_memory: Optional[int] = None
    block_size: int = 256

    def validate(self) -> None:
        if self.actors < 1:
            raise ValueError(f"--ray-actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("--ray-cpus-per-actor and --ray-gpus-per-actor cannot be negative")
        if self.block_size < 1:
            raise ValueError(f"--ray-block-size must be at least 1, got {self.block_size}")
        if self.address and (self.num_cpus is not None or self.object_store_memory is not None):
            raise ValueError("--ray-num-cpus and --ray-object-store-mb size a local cluster; "
                             "they do not apply with --ray-address")


def import_ray():
    """``ray`` with ``ray.data``, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(RAY_MISSING) from e
    return ray


class SpacyActor:
    """The ``map_batches`` callable: one spaCy pipeline per actor, loaded in ``__init__``.

    A batch is a pyarrow Table with the columns ``ordinal``, ``id`` (JSON text) and
    ``text``; the result has ``ordinal`` and ``line`` (the JSONL output line), plus
    ``doc`` (``Doc.to_bytes()``) with keep_doc and ``text`` with keep_text.
    """

    def __init__(self, model: str, use_gpu: bool = False, keep_doc: bool = False, keep_text: bool = False):
        import spacy

        if use_gpu:
            # Ray gives the actor its GPU(s) through CUDA_VISIBLE_DEVICES: the first is 0.
            spacy.require_gpu(0)
        self.nlp = spacy.load(model)
        self.keep_doc = keep_doc
        self.keep_text = keep_text

    def __call__(self, batch):
        import pyarrow as pa

        ordinals = batch.column("ordinal").to_pylist()
        ids = [json.loads(x) for x in batch.column("id").to_pylist()]
        texts = batch.column("text").to_pylist()
        records = [Record(i, t, "<ray block>", None) for i, t in zip(ids, texts)]
        out = list(annotate_records(self.nlp, records, batch_size=max(1, len(records)), keep_doc=self.keep_doc))
        columns = {"ordinal": pa.array(ordinals, pa.int64()), "line": pa.array([a.line for a in out], pa.string())}
        if self.keep_doc:
            columns["doc"] = pa.array([a.doc.to_bytes() for a in out], pa.binary())
        if self.keep_text:
            columns["text"] = pa.array(texts, pa.string())
        return pa.table(columns)


def _blocks(records: Iterable[Record], block_size: int) -> Iterator[List[Record]]:
    """Records in lists of ``block_size``; on an InputError, the records read before it
    come out as a last (short) block, then the error is raised."""
    block: List[Record] = []
    try:
        for record in records:
            block.append(record)
            if len(block) >= block_size:
                yield block
                block = []
    except InputError:
        if block:
            yield block
        raise
    if block:
        yield block


def _find_cause(err: BaseException, kind: type) -> Optional[BaseException]:
    """The first exception of ``kind`` in the chain Ray wraps a worker error in."""
    seen = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return None


def run_ray(
    model: str,
    records: Iterable[Record],
    writer: Writer,
    *,
    options: Optional[RayOptions] = None,
    batch_size: int = 64,
    progress=None,
) -> float:
    """Annotate ``records`` with a pool of Ray actors and write them with ``writer``.

    Returns the seconds spent starting or joining the cluster. A bad input document
    stops the run as in the local engine: the documents before it are annotated and
    written, then the :class:`~tokner.annotate.inputs.InputError` is raised.
    """
    options = options or RayOptions()
    options.validate()
    ray = import_ray()
    import pyarrow as pa
    from spacy.tokens import Doc
    from spacy.vocab import Vocab

    if not isinstance(model, (str, Path)):
        raise TypeError("the ray engine loads the pipeline in each actor: pass a pipeline folder or package name")
    model_arg = str(Path(model).resolve()) if Path(model).exists() else str(model)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    t0 = time.perf_counter()
    if not ray.is_initialized():
        common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if options.address:
            ray.init(address=options.address, **common)
        else:
            need = math.ceil(options.actors * options.cpus_per_actor)
            ray.init(num_cpus=options.num_cpus if options.num_cpus is not None else max(os.cpu_count() or 1, need),
                     object_store_memory=options.object_store_memory, **common)
        started = True
    startup = time.perf_counter() - t0
    # Ray Data logs each execution at INFO; follow the level this program runs at.
    logging.getLogger("ray.data").setLevel(max(logging.getLogger().getEffectiveLevel(), logging.INFO))
    # ... and drop its warning that Ray's own progress bars are off (this engine shows one tqdm bar).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        refs = []
        failure: Optional[InputError] = None
        n = 0
        try:
            for block in _blocks(records, options.block_size):
                refs.append(ray.put(pa.table({
                    "ordinal": pa.array(range(n, n + len(block)), pa.int64()),
                    "id": pa.array([json.dumps(r.id, ensure_ascii=False) for r in block], pa.string()),
                    "text": pa.array([r.text for r in block], pa.string()),
                })))
                n += len(block)
        except InputError as err:
            failure = err
        if refs:
            remote_args = {"num_cpus": options.cpus_per_actor}
            if options.gpus_per_actor:
                remote_args["num_gpus"] = options.gpus_per_actor
            ds = ray.data.from_arrow_refs(refs).map_batches(
                SpacyActor,
                fn_constructor_kwargs={"model": model_arg, "use_gpu": options.gpus_per_actor > 0,
                                       "keep_doc": writer.needs_doc, "keep_text": writer.needs_text},
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=options.actors),
                **remote_args,
            )
            vocab = Vocab()
            expected = 0
            try:
                for table in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
                    ordinals = table.column("ordinal").to_pylist()
                    if ordinals != list(range(expected, expected + len(ordinals))):
                        raise RuntimeError(f"Ray returned documents out of input order (expected ordinal {expected}, "
                                           f"got {ordinals[:1]}); this is a bug")
                    expected += len(ordinals)
                    lines = table.column("line").to_pylist()
                    docs = table.column("doc").to_pylist() if writer.needs_doc else [None] * len(lines)
                    texts = table.column("text").to_pylist() if writer.needs_text else [None] * len(lines)
                    batch = []
                    for line, doc_bytes, text in zip(lines, docs, texts):
                        record = json.loads(line)
                        doc = Doc(vocab).from_bytes(doc_bytes) if doc_bytes is not None else None
                        batch.append(Annotated(record["id"], text, record, line, doc))
                    writer.write(batch)
                    if progress is not None:
                        progress.update(len(batch))
            except Exception as err:
                cause = _find_cause(err, TextChangedError)
                if cause is not None and cause is not err:
                    raise TextChangedError(str(cause)) from None
                raise
            if expected != n:
                raise RuntimeError(f"Ray returned {expected} of {n} documents; this is a bug")
        if failure is not None:
            raise failure
    finally:
        if started:
            ray.shutdown()
    return startup
