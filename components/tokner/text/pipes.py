"""What the package's stateless pipeline components share: ``pipe`` over ``__call__`` and
serialisation with nothing to save (their settings live in the pipeline's config)."""
from __future__ import annotations


class StatelessComponent:
    def pipe(self, stream, batch_size: int = 128):
        for doc in stream:
            yield self(doc)

    def to_bytes(self, *, exclude=tuple()):
        return b""

    def from_bytes(self, data, *, exclude=tuple()):
        return self

    def to_disk(self, path, *, exclude=tuple()):
        return None

    def from_disk(self, path, *, exclude=tuple()):
        return self
