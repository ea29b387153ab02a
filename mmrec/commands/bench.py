"""`mmrec bench NAME [--json]`: one benchmark (scoring, update, extract, stream, retrieval, soak), printed as
one JSON object per run; `mmrec bench all --out DIR`: every benchmark, each in its own process, then
DIR/results.jsonl, DIR/report.md (the table) and DIR/report.png (`make bench`).

Benchmarks are named here by module path, like the CLI's commands: the stream benchmark drives a
real worker and lives under worker/ (so does the soak), which the rest of mmrec never imports.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCHMARKS: dict[str, tuple[str, str]] = {
    "scoring": ("mmrec.bench.scoring", "pairs/s of the batched scorer vs the naive reference and the matmul peak"),
    "update": ("mmrec.bench.update", "online steps/s and p50/p99 latency of one step"),
    "extract": ("mmrec.bench.extract", "images/s of feature extraction by batch size (CPU, and CUDA when present)"),
    "stream": ("worker.stream_bench", "one worker on the embedded broker: interactions/s and interaction-to-recommendation latency vs the broker's round trip"),
    "retrieval": ("mmrec.bench.retrieval", "shortlist recall against exact top-K and refresh latency at 10k, 100k and 1M items"),
    "soak": ("worker.soak_bench", "one worker on the embedded broker under a steady load for --minutes: throughput, latency and memory over time"),
}
# What `mmrec bench all` (make bench) runs, in order, with extra arguments (not the soak: 30 minutes).
PLAN: list[tuple[str, list[str]]] = [
    ("scoring", ["--threads", "1"]),
    ("scoring", []),
    ("update", ["--threads", "1"]),  # as the stream benchmark runs its worker (MMREC_TORCH_THREADS=1)
    ("extract", []),
    ("retrieval", []),
    ("stream", []),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="NAME")
    for name, (module_name, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object (default: readable lines)")
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
        importlib.import_module(module_name).add_arguments(p)
    every = sub.add_parser("all", help="every benchmark, then a report (make bench)")
    every.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for results.jsonl, report.md, report.png")
    every.add_argument("--only", nargs="*", default=None, help="run only these benchmarks of the plan")


def run(args: argparse.Namespace) -> int:
    if args.bench == "all":
        return run_all(args.out, args.only)
    if args.threads:
        torch.set_num_threads(args.threads)
    module = importlib.import_module(BENCHMARKS[args.bench][0])
    module.run(args)
    return 0


def run_all(out: Path, only: list[str] | None) -> int:
    from mmrec.bench.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    started = time.monotonic()
    for name, extra in PLAN:
        if only and name not in only:
            continue
        command = [sys.executable, "-m", "mmrec.cli", "bench", name, "--json", *extra]
        print(f"$ mmrec bench {name} --json {' '.join(extra)}".rstrip(), flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            failed.append(name)
            print(proc.stdout[-2000:] + proc.stderr[-4000:], file=sys.stderr)
            continue
        for line in lines:
            result = json.loads(line)
            result["command"] = f"mmrec bench {name} --json {' '.join(extra)}".rstrip()
            result["seconds"] = round(time.monotonic() - t0, 1)
            results.append(result)
        print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)
    with open(out / "results.jsonl", "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    table = write_report(results, out, total_seconds=time.monotonic() - started)
    print(table)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
