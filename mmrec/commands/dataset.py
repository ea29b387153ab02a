"""`mmrec dataset make visual-taste --out DIR`: write the seeded visual-taste benchmark.

Sizes: `--size default` (1000 users, 3000 items, 100 days, 200 events per user: evaluates in
minutes on a CPU) or `--size tiny` (40 users, 120 items: tests); single fields override either.
Needs Fashion-MNIST from the Debian package dataset-fashion-mnist (`make fashion-mnist`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from mmrec.datasets.fashion_mnist import DEFAULT_DIR
from mmrec.datasets.visual_taste import TINY, VisualTasteConfig, generate

SIZES = {"default": VisualTasteConfig(), "tiny": TINY}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = actions.add_parser("make", help="generate a benchmark data set")
    names = make.add_subparsers(dest="name", required=True, metavar="NAME")
    taste = names.add_parser("visual-taste", help="simulated users whose taste depends on local visual patterns")
    taste.add_argument("--out", type=Path, required=True, help="output folder (must be empty or absent)")
    taste.add_argument("--size", choices=sorted(SIZES), default="default")
    taste.add_argument("--users", type=int)
    taste.add_argument("--items", type=int)
    taste.add_argument("--days", type=int)
    taste.add_argument("--events-per-user", type=int)
    taste.add_argument("--seed", type=int)
    taste.add_argument("--fashion-mnist", type=Path, default=DEFAULT_DIR, help="folder of the Fashion-MNIST IDX files")


def run(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("users", "items", "days", "events_per_user", "seed") if getattr(args, k) is not None}
    try:
        config = dataclasses.replace(SIZES[args.size], **overrides)
    except ValueError as exc:
        print(f"mmrec dataset: {exc}", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"mmrec dataset: {args.out} is not empty", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        generate(args.out, config, args.fashion_mnist)
    except FileNotFoundError as exc:
        print(f"mmrec dataset: {exc}", file=sys.stderr)
        return 1
    print(f"visual-taste: {config.users} users, {config.items} items, {config.days} days (seed {config.seed}) "
          f"-> {args.out} in {time.perf_counter() - started:.1f} s")
    return 0
