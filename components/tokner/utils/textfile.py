"""Reading the project's text inputs (BRAT, IOB CSV, recorded responses) as UTF-8, with the
line of the first bad byte when a file is not UTF-8; writing its JSON outputs (metrics,
benchmark results)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union


class NotUTF8(ValueError):
    """A file that is not UTF-8: ``path``, the 1-based ``line`` of the first bad byte, ``reason``."""

    def __init__(self, path: Union[str, Path], line: int, reason: str):
        self.path, self.line, self.reason = Path(path), line, reason
        super().__init__(f"{path}:{line}: not UTF-8 ({reason})")


def read_utf8(path: Union[str, Path], keep_newlines: bool = False) -> str:
    """The file's text. ``keep_newlines``: ``"\\r\\n"`` and ``"\\r"`` stay as they are (BRAT
    offsets count them); otherwise they become ``"\\n"``, as ``open()`` reads text."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUTF8(path, data[: e.start].count(b"\n") + 1, e.reason) from None
    return text if keep_newlines else text.replace("\r\n", "\n").replace("\r", "\n")


def write_json(path: Union[str, Path], data: Any, **dumps_kwargs: Any) -> Path:
    """``data`` as indented JSON and a final newline, the folders above created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, **dumps_kwargs) + "\n")
    return path
