"""Small shared utilities: ``hardware`` (native bf16 detection, thread counts) and
``textfile`` (UTF-8 reading with file-and-line errors, one JSON writer)."""
