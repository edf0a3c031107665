"""The package's layers (tokner/__init__.py): a module imports tokner code only from its own
layer, the layers listed before it, and ``utils``. Command-line modules (``__main__``) may
also use the ``tokner`` CLI's helpers."""
import ast
from pathlib import Path

import tokner

LAYERS = [
    {"utils", "testing"},
    {"text"},
    {"answers"},
    {"corpus"},
    {"scoring"},
    {"decoding"},
    {"llm", "lora", "ensemble", "doctype", "encoders"},
    {"annotate", "cli", "workflow", "offline", "reference", "__main__", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ROOT = Path(tokner.__file__).parent


def _tokner_imports(path: Path):
    """(line, first component below ``tokner``) for every import of tokner code, lazy ones too."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "tokner":
            parts = node.module.split(".")
            targets = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("tokner.")]
        else:
            continue
        for target in targets:
            yield node.lineno, target


def _layer_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0][:-3] if len(parts) == 1 else parts[0]


def test_every_module_belongs_to_a_layer():
    names = {_layer_of(p) for p in ROOT.rglob("*.py")}
    assert names - set(RANK) == set()
    assert {"text", "answers", "corpus", "scoring", "utils"} <= names


def test_no_module_imports_from_a_later_layer():
    offences = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _layer_of(path)
        for line, target in _tokner_imports(path):
            if target in {src, "utils"} or RANK[target] <= RANK[src]:
                continue
            if path.name == "__main__.py" and target == "cli":
                continue
            offences.append(f"{path.relative_to(ROOT)}:{line} imports tokner.{target}")
    assert offences == []


def test_no_relative_or_old_flat_imports_remain():
    flat = {"tokenizer", "sentencizer", "brat", "iob", "readers", "tags", "align", "scorer", "tiny", "hardware"}
    found = [f"{p.relative_to(ROOT)}:{line}" for p in ROOT.rglob("*.py")
             for line, target in _tokner_imports(p) if target in flat]
    assert found == []
