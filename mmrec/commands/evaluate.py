"""`mmrec evaluate`: every registered ranker (and baseline) on one data set, same split, same metrics.

    mmrec evaluate DIR                          a folder with interactions.csv|.parquet and media/
                                                (a visual-taste benchmark folder adds the references)
    mmrec evaluate --interactions FILE [--media DIR]   your own log; without --media, its uri column

Prints the results table (overall, cold-start and, with --prequential, the replay), writes --json and
--plot when given. Features are extracted once per data set under --cache (default
<data_dir>/evaluation) and reused. Protocol: mmrec/evaluation/runner.py and docs/visual-taste.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.features import MediaFailures
from mmrec.evaluation.registry import DEFAULT, RANKERS, load_spec
from mmrec.evaluation.report import format_paired, format_table, plot, write_json
from mmrec.evaluation.runner import Evaluation, evaluate_ranker, split_counts
from mmrec.evaluation.split import TemporalSplit
from mmrec.interaction_log import InteractionLogError
from mmrec.projection_fit import describe_skipped
from mmrec.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", nargs="?", type=Path, help="data folder: interactions.csv|.parquet and media/")
    parser.add_argument("--interactions", type=Path, help="interaction log (.csv or .parquet) instead of a folder")
    parser.add_argument("--media", type=Path, help="media folder (<media_id>.<ext>) for --interactions; default: its uri column")
    parser.add_argument("--rankers", help=f"comma-separated subset of: {', '.join(RANKERS)} (default: {', '.join(DEFAULT)}, those the data supports)")
    parser.add_argument("--validation", type=float, default=0.7, help="event-time quantile where validation starts")
    parser.add_argument("--test", type=float, default=0.8, help="event-time quantile where the test period starts")
    parser.add_argument("--prequential", action="store_true", help="also replay the test events: score each, then learn from it")
    parser.add_argument("--prequential-users", type=int, help="score the replayed engagements of this many sampled users only")
    parser.add_argument("--k-max", type=int, default=50, help="longest cut-off of the curves")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--plot", type=Path, help="write the Recall@K / NDCG@K curves here (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--own-projection", action="store_true",
                        help="fit the channel projection on the media of the items seen before the validation period (as `mmrec fit-projection --media` does) instead of using the settings' one")
    parser.add_argument("--cache", type=Path, help="feature cache root (default <data_dir>/evaluation)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the models are small, and on shared cores extra threads stall at barriers)")


def run(args: argparse.Namespace) -> int:
    if (args.folder is None) == (args.interactions is None):
        print("mmrec evaluate: give a data folder or --interactions FILE", file=sys.stderr)
        return 2
    if args.k_max < 20:
        print("mmrec evaluate: --k-max must be at least 20", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    settings = Settings()
    cache = args.cache or settings.data_dir / "evaluation"
    try:
        if args.folder is not None:
            data = EvaluationData.from_folder(args.folder, settings, cache, args.seed)
        else:
            data = EvaluationData.from_files(args.interactions, args.media, settings, cache, args.seed)
        split = TemporalSplit.at_quantiles(data.log, args.validation, args.test)
        names = args.rankers.split(",") if args.rankers else list(DEFAULT)
        specs = [load_spec(name.strip()) for name in names]
        features = Evaluation.features
        if args.own_projection:
            earlier = np.flatnonzero(data.log.first_seen() < split.validation_start)
            skipped = data.fit_own_projection(earlier)
            features = f"maps through a channel projection fitted on {len(earlier) - len(skipped)} items seen before the validation period"
            print(f"mmrec evaluate: {features}" + (f"; skipped {describe_skipped(skipped)}" if skipped else ""), file=sys.stderr)
    except (InteractionLogError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"mmrec evaluate: {exc}", file=sys.stderr)
        return 2
    have = data.available()
    if args.rankers:
        missing = {s.name: sorted(s.requires - have) for s in specs if not s.requires <= have}
        if missing:
            print(f"mmrec evaluate: the data lacks what these rankers need: {missing}", file=sys.stderr)
            return 2
    else:
        specs = [s for s in specs if s.requires <= have]
    evaluation = Evaluation(data.name, split, split_counts(data, split), args.k_max, features=features)
    for spec in specs:
        try:
            evaluation.results.append(
                evaluate_ranker(spec, data, split, args.k_max, args.prequential, args.prequential_users,
                                log=lambda line: print(line, file=sys.stderr, flush=True))
            )
        except MediaFailures as exc:
            print(f"mmrec evaluate: {exc}", file=sys.stderr)
            return 1
    print(format_table(evaluation))
    for section in ("overall", "cold"):
        print("\n" + format_paired(evaluation, section))
    if args.json:
        write_json(evaluation, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(evaluation, args.plot)
        print(f"wrote {args.plot}")
    return 0
