"""`mmrec bench scoring`: user-item pairs per second of the batched scorer, beside the naive per-pair
reference and beside this machine's measured fp32 matmul peak, in the same run.

Useful FLOPs of one (user, item) pair are the patent's arithmetic written directly, per layer j:
    2 d m^2 H W       the first feature matrix: a (d, m, m) kernel at every one of H x W cells
    2 m^2 h w         the second feature matrix on the pooled grid
    4 h w             softmax (exp, normaliser) and the attention-weighted sum
    2                 the fusion weight
Per-item work shared by every user (the channel reduction g . F for attention, its average pool,
the visual bias) and max-pool comparisons are not counted. The dense scorer executes exactly the
counted convolution (a direct channels-last convolution), so `roofline_fraction` is achieved useful
FLOP/s over the measured torch.mm peak. The pairs path (shortlists, few users) uses the separable
form (c . F) (*) K and executes fewer FLOPs than it is credited with; its figure is reported as
effective FLOP/s.
"""
from __future__ import annotations

import argparse
import math

import torch

from mmrec.bench.common import emit, gemm_peak, spread, time_calls
from mmrec.bench.naive import reference_score
from mmrec.bench.synthetic import SHAPES, ArrayCatalogue, concept_items
from mmrec.model import ModelConfig, ParamLayout, SharedParams, pair_scores
from mmrec.recommend import Recommender
from mmrec.retrieval import RetrievalConfig


def useful_flops_per_pair(cfg: ModelConfig, grids: list[tuple[int, int]]) -> int:
    m, p, d = cfg.kernel_size, cfg.pool, cfg.channels
    total = 0
    for h, w in grids:
        hh, ww = math.ceil(h / p), math.ceil(w / p)
        total += 2 * d * m * m * h * w + 2 * m * m * hh * ww + 4 * hh * ww + 2
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=64, help="users scored together (a refresh batch)")
    parser.add_argument("--items", type=int, default=4096, help="catalogue items")
    parser.add_argument("--rounds", type=int, default=3, help="repeated measurements (ranges are reported)")
    parser.add_argument("--readout", choices=["spanning", "per_channel"], default="spanning")


def run(args: argparse.Namespace) -> dict:
    cfg = ModelConfig(readout=args.readout)
    layout = ParamLayout(cfg)
    grids = [(h, w) for _, h, w in SHAPES]
    gen = torch.Generator().manual_seed(0)
    shared = SharedParams.initial(cfg)
    shared.attention_channels = torch.randn(cfg.n_layers, cfg.channels, generator=gen)
    maps, _ = concept_items(args.items, seed=11)
    catalogue = ArrayCatalogue([m.to(torch.float16) for m in maps])
    offsets = 0.3 * torch.randn(args.users, layout.size, generator=gen)
    flops = useful_flops_per_pair(cfg, grids)
    exact = Recommender(cfg, shared, RetrievalConfig(mode="exact"))

    # The naive reference: a few pairs are enough to time it (it is ~1e4 times slower).
    small = layout.split(shared.prior + offsets[:2])
    naive_maps = [m[:2].float() for m in maps]
    naive_times = time_calls(lambda: reference_score(small, naive_maps, torch.zeros(2), shared, cfg), min_seconds=1.0, min_calls=2)
    naive_rate = 4 / min(naive_times)

    dense, fraction, peaks, ratio, shortlist = [], [], [], [], []
    one_user = layout.split(shared.prior + offsets[:1])
    rows = torch.arange(min(2048, args.items))
    short_maps = catalogue.float_maps(rows)
    for _ in range(args.rounds):
        peak = gemm_peak()["peak_flops"]
        seconds = min(time_calls(lambda: exact.scores(offsets, catalogue), min_seconds=1.0, min_calls=2))
        rate = args.users * args.items / seconds
        with torch.inference_mode():
            pair_seconds = min(time_calls(lambda: pair_scores(one_user, short_maps, torch.zeros(len(rows)), shared, cfg), min_seconds=0.5))
        dense.append(rate)
        peaks.append(peak)
        fraction.append(rate * flops / peak)
        ratio.append(rate / naive_rate)
        shortlist.append(len(rows) / pair_seconds)
    figures = {
        "pairs_per_s": spread(dense),
        "naive_pairs_per_s": naive_rate,
        "ratio_vs_naive": spread(ratio),
        "useful_flops_per_pair": flops,
        "achieved_gflops": spread([r * flops / 1e9 for r in dense]),
        "peak_gflops": spread([p / 1e9 for p in peaks]),
        "roofline_fraction": spread(fraction),
        "shortlist_pairs_per_s": spread(shortlist),
        "shortlist_effective_gflops": spread([r * flops / 1e9 for r in shortlist]),
    }
    config = {
        "N": cfg.n_layers, "m": cfg.kernel_size, "d": cfg.channels, "p": cfg.pool, "readout": cfg.readout,
        "grids": grids, "input_size": 224, "users": args.users, "catalogue_items": args.items,
        "shortlist_items": len(rows), "device": "cpu", "rounds": args.rounds,
    }
    notes = [
        "pairs_per_s: Recommender.scores (exact, every item; fp16 catalogue rows converted per chunk, included)",
        "shortlist_pairs_per_s: pair_scores for one user against shortlist rows (the retrieval stage's re-ranking)",
        f"naive: {naive_rate:.3g} pairs/s over {len(naive_times)} calls of 2x2 pairs (mmrec/bench/naive.py)",
    ]
    return emit("scoring", config, figures, notes, as_json=args.json)

