"""``tokner.BatchCache.v1``: spacy-llm's batch cache, keyed by the model as well.

spacy-llm's ``spacy.BatchCache.v1`` finds a Doc by the sum of its tokens' ``ORTH``
hashes and checks only the task's prompt template against the folder: a cache
folder filled by one model is served, silently, to any other model (another
``name``, server, constraint, decoding config or system prompt), since the model
is never asked. This cache is spacy-llm's own (same files, same batching) but
keeps each model's answers in a subfolder of ``path`` named by a hash of the
model's fingerprint::

    path/model-<sha256 of the fingerprint, 16 hex digits>/
        model.json           the fingerprint (for people: which model wrote this)
        prompt_template.txt  as spacy-llm writes it
        index.jsonl, *.spacy as spacy-llm writes them

so switching models over one folder asks the new model, and switching back finds the
old answers again. A model's fingerprint is ``model.fingerprint()`` (a JSON-able dict
of everything that changes its answers, never a secret), which tokner's models have;
for other models, their class and the usual settings (``name``, spacy-llm's ``_name``,
``_endpoint``, ``_config``, ``_config_init``, ``_config_run``) stand in, with a warning.

spacy-llm's ``llm`` component hands its cache the vocab and the task only
(``cache.initialize(vocab, task)``, called from ``LLMWrapper.__init__`` once the
component has its model): the cache reads the model from the component that calls
``initialize``. A cache used outside the ``llm`` component is given its model with
:meth:`ModelBatchCache.bind_model`. The subfolder is chosen, and the task's prompt
template checked, on first use, so both reflect the pipeline as it runs (after
``nlp.initialize``, which may change the task's labels or demonstrations).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import srsly
from spacy.tokens import Doc
from spacy.vocab import Vocab

from spacy_llm.cache import BatchCache
from spacy_llm.registry import registry
from spacy_llm.ty import PromptTemplateProvider

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "model.json"
_FALLBACK_ATTRS = ("name", "_name", "_endpoint", "_config", "_config_init", "_config_run")


def model_fingerprint(model: Any) -> Dict[str, Any]:
    """The model's fingerprint (see the module docstring), with its class under ``"class"``."""
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    method = getattr(model, "fingerprint", None)
    if callable(method):
        fp = dict(method())
        fp.setdefault("class", cls)
        return fp
    fp = {"class": cls}
    for attr in _FALLBACK_ATTRS:
        value = getattr(model, attr, None)
        if value is None:
            continue
        try:
            json.dumps(value, sort_keys=True)
        except (TypeError, ValueError):
            value = str(value) if isinstance(value, (str, Path)) else None
        if value is not None:
            fp[attr] = value
    warnings.warn(f"tokner.BatchCache.v1: {cls} has no fingerprint(); its cache folder is keyed by "
                  f"{sorted(fp)} only: settings outside these do not change the folder")
    return fp


def fingerprint_digest(fingerprint: Dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the fingerprint's canonical JSON."""
    text = json.dumps(fingerprint, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _calling_llm_component() -> Optional[Any]:
    """The spacy-llm ``llm`` component whose ``__init__`` is calling ``initialize``, if any."""
    from spacy_llm.pipeline.llm import LLMWrapper

    frame = inspect.currentframe()
    try:
        # this function <- ModelBatchCache.initialize <- LLMWrapper.__init__ (or a subclass's)
        caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        for _ in range(3):
            if caller is None:
                return None
            owner = caller.f_locals.get("self")
            if isinstance(owner, LLMWrapper):
                return owner
            caller = caller.f_back
        return None
    finally:
        del frame


class ModelBatchCache(BatchCache):
    """spacy-llm's :class:`~spacy_llm.cache.BatchCache` with one subfolder per model
    (see the module docstring). ``path`` None: no caching, as with spacy-llm's."""

    def __init__(self, path: Optional[Union[str, Path]], batch_size: int, max_batches_in_mem: int):
        super().__init__(path=None, batch_size=batch_size, max_batches_in_mem=max_batches_in_mem)
        self._root: Optional[Path] = Path(path) if path else None
        if self._root is not None and self._root.exists() and not self._root.is_dir():
            raise ValueError(f"tokner.BatchCache.v1: {self._root} exists and is not a directory")
        self._model: Any = None
        self._task: Any = None
        self._fingerprint: Optional[Dict[str, Any]] = None

    # --- binding to the model ------------------------------------------------------------

    def initialize(self, vocab: Vocab, task: Any) -> None:
        """Remember the vocab and the task, and take the model from the calling ``llm`` component."""
        self._vocab = vocab
        self._task = task
        owner = _calling_llm_component()
        if owner is not None:
            self.bind_model(owner._model)

    def bind_model(self, model: Any) -> None:
        """Key the cache by ``model`` (done for you inside spacy-llm's ``llm`` component)."""
        self._model = model
        self._unbind()

    def _unbind(self) -> None:
        self._path = None
        self._fingerprint = None
        self._doc2batch = {}
        self._batch_hashes = []
        self._loaded_docs = {}
        self._cache_queue = []
        self._prompt_template = None

    @property
    def root(self) -> Optional[Path]:
        """The folder given as ``path`` (None: no caching)."""
        return self._root

    @property
    def model_path(self) -> Optional[Path]:
        """This model's subfolder (chosen on first use; None before, or without ``path``)."""
        return self._path

    @property
    def fingerprint(self) -> Optional[Dict[str, Any]]:
        """The fingerprint the subfolder was chosen by (None before first use)."""
        return self._fingerprint

    def _ensure_bound(self) -> None:
        if self._root is None or self._path is not None:
            return
        if self._model is None:
            raise ValueError(
                "tokner.BatchCache.v1: the cache does not know its model, so it cannot tell one model's "
                "answers from another's: use it as the cache of spacy-llm's llm component "
                "([components.llm.cache]), or call cache.bind_model(model) first")
        fp = model_fingerprint(self._model)
        path = self._root / f"model-{fingerprint_digest(fp)}"
        path.mkdir(parents=True, exist_ok=True)
        fp_file = path / FINGERPRINT_FILE
        if not fp_file.exists():
            srsly.write_json(fp_file, fp)
        self._fingerprint = fp
        self._path = path
        self._init_cache_dir()
        if isinstance(self._task, PromptTemplateProvider):
            self.prompt_template = self._task.prompt_template  # raises if the folder has another template
        else:
            self.prompt_template = ""
            warnings.warn("tokner.BatchCache.v1: the task does not provide its prompt template, so the "
                          "cache cannot check that cached docs were made with the same prompt")
        logger.debug("tokner.BatchCache.v1: model cache folder %s", path)

    # --- spacy-llm's cache protocol, on the model's subfolder --------------------------------

    def add(self, doc: Doc) -> None:
        self._ensure_bound()
        super().add(doc)

    def __contains__(self, doc: Doc) -> bool:
        self._ensure_bound()
        return super().__contains__(doc)

    def __getitem__(self, doc: Doc) -> Optional[Doc]:
        self._ensure_bound()
        return super().__getitem__(doc)


@registry.llm_misc("tokner.BatchCache.v1")
def make_model_batch_cache(
    path: Optional[Union[str, Path]] = None,
    batch_size: int = 64,
    max_batches_in_mem: int = 4,
) -> ModelBatchCache:
    """spacy-llm's batch cache with one subfolder of `path` per model fingerprint, so
    one model's answers are never served for another (a drop-in for
    ``spacy.BatchCache.v1``, same arguments).

    path: cache folder (None: no caching).
    batch_size: docs per cache file.
    max_batches_in_mem: cache files kept in memory.
    """
    return ModelBatchCache(path=path, batch_size=batch_size, max_batches_in_mem=max_batches_in_mem)
