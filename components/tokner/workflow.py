"""Run a workflow of ``project.yml`` step by step and print how long each step took.

``python -m tokner.workflow all [--vars-file FILE.yml] [--vars.NAME VALUE ...]`` runs every command of the
workflow with ``spacy project run`` (so unchanged steps are skipped as usual, from
their deps/outputs), stops at the first failure, prints a timing table and writes it
to ``<metrics var>/timings-<workflow>.json``. ``--vars-file`` reads overrides of project.yml's
``vars`` from a YAML mapping (e.g. ``configs/paper.vars.yml``); ``--vars.NAME VALUE``
given after it win.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import srsly


def run_workflow(name: str, extra: List[str], project_dir: Path = Path(".")) -> int:
    config = srsly.read_yaml(project_dir / "project.yml")
    workflows = config.get("workflows", {})
    if name not in workflows:
        raise SystemExit(f"workflow {name!r} not in project.yml (have: {', '.join(workflows)})")
    timings = []
    rc = 0
    for step in workflows[name]:
        cmd = [sys.executable, "-m", "spacy", "project", "run", step, str(project_dir), *extra]
        print(f"\n=== {step} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        secs = time.perf_counter() - t0
        timings.append({"step": step, "seconds": round(secs, 1), "returncode": rc})
        print(f"=== {step}: {secs:.1f} s (exit {rc}) ===", flush=True)
        if rc != 0:
            break
    total = sum(t["seconds"] for t in timings)
    print(f"\n{'step':<24}{'seconds':>10}")
    for t in timings:
        print(f"{t['step']:<24}{t['seconds']:>10.1f}{'' if t['returncode'] == 0 else '  FAILED'}")
    print(f"{'total':<24}{total:>10.1f}")
    metrics = config.get("vars", {}).get("metrics", "metrics")
    for i, arg in enumerate(extra[:-1]):
        if arg == "--vars.metrics":
            metrics = extra[i + 1]
    out = project_dir / str(metrics) / f"timings-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workflow": name, "steps": timings, "total_seconds": round(total, 1)}, indent=2) + "\n")
    return rc


def expand_vars_file(args: List[str], project_dir: Path = Path(".")) -> List[str]:
    """Replace ``--vars-file FILE`` by ``--vars.NAME VALUE`` pairs, checking every name
    exists in project.yml's vars (a typo must not be ignored silently)."""
    out: List[str] = []
    i = 0
    known = set(srsly.read_yaml(project_dir / "project.yml").get("vars", {}))
    while i < len(args):
        if args[i] == "--vars-file":
            if i + 1 >= len(args):
                raise SystemExit("--vars-file needs a path")
            data = srsly.read_yaml(args[i + 1]) or {}
            unknown = sorted(set(data) - known)
            if unknown:
                raise SystemExit(f"{args[i + 1]}: unknown project vars {unknown}")
            for k, v in data.items():
                out += [f"--vars.{k}", str(v)]
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    return run_workflow(argv[0], expand_vars_file(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
