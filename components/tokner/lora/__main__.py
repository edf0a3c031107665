"""``python -m tokner.lora train CONFIG OUTPUT [--resume] [--lora.max_minutes 25] [--paths.train ...]``

Extra ``--section.key value`` arguments override the config, as in ``spacy train``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    from spacy.cli._util import parse_config_overrides

    p = argparse.ArgumentParser(prog="python -m tokner.lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="LoRA-tune the pipeline's base model; writes OUTPUT/model-best")
    t.add_argument("config")
    t.add_argument("output")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("-v", "--verbose", action="store_true")
    args, extra = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    overrides = parse_config_overrides(extra)
    from .train import train

    summary = train(args.config, args.output, overrides, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
