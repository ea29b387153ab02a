"""`mmrec bench retrieval`: recall of the retrieval stage's shortlists against exact top-K, and the
latency of one user's refresh, at 10k, 100k and 1M items.

Items are synthetic "concepts" catalogues (mmrec/bench/synthetic.py), the first n rows of one
deterministic 1M-item file of fp16 maps (6.9 GB, written once under --cache and reused), held in
memory up to 100k items and read through a memory map at 1M. Users are trained by the online step
on simulated tastes. For every user the exact scores of every item give the true top-K; recall@K is
the share of it inside the shortlist the refresh re-ranks (so also inside the list it publishes).
`--kind noise` measures the same on i.i.d. noise items (no structure: the worst case for any index).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mmrec.bench.common import emit, quantile, rss_bytes
from mmrec.bench.synthetic import SHAPES, ArrayCatalogue, MemmapCatalogue, fp16_bytes_per_item, free_disk_bytes, train_users, write_memmap
from mmrec.model import ModelConfig, SharedParams
from mmrec.recommend import Recommender
from mmrec.retrieval import RetrievalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kind", choices=["concepts", "noise"], default="concepts")
    parser.add_argument("--users", type=int, default=16, help="trained users (recall is averaged over them)")
    parser.add_argument("--k", type=int, nargs="+", default=[20, 100], help="top-K sizes to measure recall at")
    parser.add_argument("--cache", type=Path, default=Path("out/bench/cache"), help="where the synthetic catalogue file is kept")
    parser.add_argument("--in-memory-max", type=int, default=100_000, help="larger catalogues are read through a memory map")
    parser.add_argument("--refresh-passes", type=int, default=12, help="timed refreshes of every user per K (p99 over passes x users)")
    parser.add_argument("--exact-refresh-max", type=int, default=100_000, help="time an exact single-user refresh up to this size")


def _catalogue(path: Path, total: int, n: int, in_memory_max: int) -> ArrayCatalogue:
    if n > in_memory_max:
        return MemmapCatalogue(path, total, rows=n)
    arrays = [np.memmap(path / f"layer{j}.f16", dtype=np.float16, mode="r", shape=(total, *s)) for j, s in enumerate(SHAPES)]
    return ArrayCatalogue([torch.from_numpy(np.array(a[:n])) for a in arrays])


def run(args: argparse.Namespace) -> dict:
    cfg = ModelConfig()
    shared = SharedParams.initial(cfg)
    total = max(args.sizes)
    path = args.cache / f"{args.kind}-{total}"
    notes = []
    t0 = time.perf_counter()
    if not (path / "complete").exists():
        args.cache.mkdir(parents=True, exist_ok=True)
        needed = total * fp16_bytes_per_item()
        if free_disk_bytes(args.cache) < needed * 1.2:
            raise SystemExit(f"need {needed / 1e9:.1f} GB free under {args.cache} for the synthetic catalogue")
        write_memmap(path, args.kind, total, seed=3)
        (path / "complete").write_text("ok\n")
        notes.append(f"wrote the {total}-item synthetic catalogue in {time.perf_counter() - t0:.0f} s (reused by later runs)")
    t0 = time.perf_counter()
    users = train_users(args.users, cfg, shared)
    train_s = time.perf_counter() - t0
    defaults = RetrievalConfig()
    exact = Recommender(cfg, shared, RetrievalConfig(mode="exact"))
    figures: dict[str, dict] = {}
    for n in sorted(args.sizes):
        catalogue = _catalogue(path, total, n, args.in_memory_max)
        rss_before = rss_bytes()
        t0 = time.perf_counter()
        truth = exact.scores(users.offsets, catalogue)  # (U, n)
        exact_s = time.perf_counter() - t0
        rec = Recommender(cfg, shared, RetrievalConfig(mode="shortlist"))
        t0 = time.perf_counter()
        rec.retriever.sync(catalogue)
        index_s = time.perf_counter() - t0
        row: dict[str, object] = {
            "exact_all_users_s": exact_s,
            "index_build_s": index_s,
            "partitioned": rec.retriever.partitioned,
            "index_bytes_per_item": rec.retriever.nbytes / n,
            "scan_dtype": rec.retriever.scan_dtype,
        }
        for k in args.k:
            size = defaults.shortlist_size(k)
            rows, _ = rec.retriever.rank(users.offsets, catalogue, size)
            recall = [len(set(rows[u].tolist()) & set(truth[u].topk(k).indices.tolist())) / k for u in range(args.users)]
            row[f"recall@{k}"] = {"mean": sum(recall) / len(recall), "min": min(recall), "shortlist": size}
            latencies = []
            for rep in range(1 + args.refresh_passes):  # the first pass warms up and is not timed
                for u in range(args.users):
                    start = time.perf_counter()
                    rec.top_k(users.offsets[u : u + 1], catalogue, k)
                    if rep:
                        latencies.append(time.perf_counter() - start)
            levels = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
            row[f"refresh@{k}_ms"] = {name: 1e3 * quantile(latencies, level) for name, level in levels.items()}
        if n <= args.exact_refresh_max:
            times = []
            for u in range(min(4, args.users)):
                start = time.perf_counter()
                exact.top_k(users.offsets[u : u + 1], catalogue, max(args.k))
                times.append(time.perf_counter() - start)
            row["exact_refresh_ms_p50"] = 1e3 * quantile(times, 0.5)
        row["rss_growth_mb"] = (rss_bytes() - rss_before) / 2**20
        figures[str(n)] = row
        del catalogue, truth, rec
    config = {
        "items": args.kind, "sizes": sorted(args.sizes), "users": args.users, "refresh_passes": args.refresh_passes, "trained_events_per_user": 80, "train_users_s": train_s,
        "shortlist": {k: defaults.shortlist_size(k) for k in args.k}, "partition_min_items": defaults.partition_min_items,
        "partition_probe": defaults.partition_probe, "refine_rounds": defaults.refine_rounds,
        "candidate_factor": defaults.candidate_factor, "projection_min_items": defaults.projection_min_items,
        "projection_energy": defaults.projection_energy, "fp16_map_bytes_per_item": fp16_bytes_per_item(),
        "N": cfg.n_layers, "m": cfg.kernel_size, "d": cfg.channels, "grids": [s[1:] for s in SHAPES], "input_size": 224, "device": "cpu",
        "in_memory_max": args.in_memory_max,
    }
    notes.append("refresh: Recommender.top_k for one user (surrogate scan, projected scan or probed lists, rounds of exact re-ranking, top-K)")
    notes.append("recall@K: share of the exact top-K inside the shortlist re-ranked exactly (mean and worst user)")
    return emit("retrieval", config, figures, notes, as_json=args.json)
