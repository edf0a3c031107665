"""The reference of every registered function and factory, from their signatures and docstrings.

    python -m tokner.reference docs/reference.md          # write it
    python -m tokner.reference docs/reference.md --check  # exit 1 if it is out of date

The entries are the package's entry points (``setup.cfg``), so the page lists exactly
what ``spacy.load`` can resolve after ``pip install``.
"""
from __future__ import annotations

import argparse
import configparser
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Callable, List, Tuple

GROUPS = {
    "spacy_factories": "spaCy factories (`[components.NAME] factory = ...`)",
    "spacy_tokenizers": "Tokenizers (`[nlp.tokenizer] @tokenizers = ...`)",
    "spacy_readers": "Corpus readers (`@readers = ...`)",
    "spacy_architectures": "Model architectures (`@architectures = ...`)",
    "spacy_span_getters": "spacy-transformers span getters (`@span_getters = ...`)",
    "spacy_scorers": "Scorers (`@scorers = ...`)",
    "thinc_llm_tasks": "spacy-llm tasks (`@llm_tasks = ...`)",
    "thinc_llm_models": "spacy-llm models (`@llm_models = ...`)",
    "thinc_llm_misc": "spacy-llm parts (`@llm_misc = ...`)",
}
# arguments spaCy passes to every factory itself
IMPLICIT = {"nlp", "name"}


def entry_points(setup_cfg: Path) -> List[Tuple[str, str, str]]:
    """(group, registered name, "module:function") from setup.cfg's entry points."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    out = []
    for group in GROUPS:
        for line in cfg.get("options.entry_points", group, fallback="").strip().splitlines():
            name, _, target = line.partition("=")
            out.append((group, name.strip(), target.strip()))
    return out


def load(target: str) -> Callable:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def documented_args(func: Callable) -> Tuple[List[str], List[str]]:
    """(arguments, those the docstring does not mention by name)."""
    args = [p for p in inspect.signature(func).parameters if p not in IMPLICIT]
    doc = inspect.getdoc(func) or ""
    missing = [a for a in args if not re.search(rf"(?<![\w]){re.escape(a)}(?![\w])", doc)]
    return args, missing


def _default(p: inspect.Parameter, defaults: dict) -> str:
    if p.name in defaults:
        value = defaults[p.name]
    elif p.default is inspect.Parameter.empty:
        return "required"
    else:
        value = p.default
    text = repr(value)
    if len(text) > 90:  # e.g. a packaged prompt template: its first line, the rest in the source
        text = text[:60].split("\\n")[0] + " ..."
    return f"`{text}`".replace("|", "\\|")


def _factory_defaults(group: str, name: str) -> dict:
    """A spaCy factory's defaults live in its ``default_config``, not its signature."""
    if group != "spacy_factories":
        return {}
    from spacy.language import Language

    return dict(Language.get_factory_meta(name).default_config or {})


def render(setup_cfg: Path) -> str:
    lines = ["# Reference: registered functions and factories", "",
             "Generated from the signatures and docstrings by `python -m tokner.reference docs/reference.md`;",
             "a test fails when it is out of date. Every name below is an entry point, so a config can use",
             "it after `pip install spacy-tokner` without importing anything.", ""]
    current = None
    for group, name, target in entry_points(setup_cfg):
        if group != current:
            lines += [f"## {GROUPS[group]}", ""]
            current = group
        func = load(target)
        lines += [f"### `{name}`", "", f"`{target}`", ""]
        doc = inspect.getdoc(func) or ""
        if doc:
            lines += [doc, ""]
        params = [p for p in inspect.signature(func).parameters.values() if p.name not in IMPLICIT]
        if params:
            lines += ["| argument | default |", "|---|---|"]
            defaults = _factory_defaults(group, name)
            lines += [f"| `{p.name}` | {_default(p, defaults)} |" for p in params]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path)
    p.add_argument("--setup-cfg", type=Path, default=Path(__file__).resolve().parents[2] / "setup.cfg")
    p.add_argument("--check", action="store_true", help="exit 1 if OUTPUT differs from what would be written")
    args = p.parse_args(argv)
    text = render(args.setup_cfg)
    if args.check:
        if not args.output.exists() or args.output.read_text(encoding="utf-8") != text:
            print(f"{args.output} is out of date: python -m tokner.reference {args.output}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
