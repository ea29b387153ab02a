"""`mmrec schemas`: write (or check) the JSON Schemas of the topic messages under schemas/."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrec.messages import SCHEMAS, json_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("schemas"), help="where the schema files live")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs instead of writing")


def run(args: argparse.Namespace) -> int:
    stale = []
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, model in SCHEMAS.items():
        path, text = args.dir / name, json_schema(model)
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale schema files (run `mmrec schemas`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0
