"""`mmrec compare RESULT.json ...`: rankers across several data sets, from their `mmrec evaluate --json`.

    mmrec compare a.json b.json c.json [--json pooled.json] [--plot differences.png --reference NAME --against A,B]
    mmrec compare a.json+a-other-features.json b.json+b-other-features.json ...

Files joined by "+" are runs on one data set: their rankers are paired over the same users (a name
an earlier run already holds comes back as "name@file-stem"). Prints each ranker's test NDCG@10 per
data set and pooled, and every paired difference per data set and pooled with its standard error
and z (mmrec/evaluation/pooling.py says how). The plot draws the reference ranker minus each other
one, per data set and pooled, +- 2 standard errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmrec.evaluation.pooling import compare, format_comparison, merge, plot, to_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="`mmrec evaluate --json` files, one per data set; several runs on one data set joined by +")
    parser.add_argument("--names", help="comma-separated data set names (default: the files' stems)")
    parser.add_argument("--json", type=Path, help="write the pooled numbers here")
    parser.add_argument("--plot", type=Path, help="write the reference's differences here (PNG)")
    parser.add_argument("--reference", default="mmrec-hybrid", help="the ranker the plot subtracts the others from")
    parser.add_argument("--against", help="comma-separated rankers the plot subtracts (default: every other one)")


def _read(group: list[Path]) -> dict[str, Any]:
    """One data set's result: a file, or several runs on it merged."""
    documents = [json.loads(p.read_text()) for p in group]
    return documents[0] if len(documents) == 1 else merge(documents, [p.stem for p in group])


def run(args: argparse.Namespace) -> int:
    groups = [[Path(part) for part in result.split("+")] for result in args.results]
    names = args.names.split(",") if args.names else ["+".join(p.stem for p in group) for group in groups]
    if len(names) != len(groups):
        print(f"mmrec compare: {len(names)} names for {len(groups)} results", file=sys.stderr)
        return 2
    try:
        documents = [_read(group) for group in groups]
        comparison = compare(documents, names)
    except (OSError, ValueError, KeyError) as exc:
        print(f"mmrec compare: {exc}", file=sys.stderr)
        return 2
    against = args.against.split(",") if args.against else None
    if args.plot:
        missing = [r for r in [args.reference, *(against or [])] if r not in comparison.rankers]
        if missing:
            print(f"mmrec compare: {', '.join(missing)} not in every result ({', '.join(comparison.rankers)})", file=sys.stderr)
            return 2
    print(format_comparison(comparison))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(comparison), indent=2, allow_nan=True) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(comparison, args.reference, args.plot, against)
        print(f"wrote {args.plot}")
    return 0
