"""`mmrec train`: fit the shared parts and every user's parameters from an interaction log.

    mmrec train DIR --out model.safetensors                 interactions.csv|.parquet and media/
    mmrec train --interactions FILE [--media DIR] --out M   your own log (default: its uri column)

The model's shape and objective come from the settings (MMREC_CHANNELS, MMREC_COLLAB_DIM,
MMREC_OBJECTIVE, ...), which the worker that loads the artifact must share. Features are extracted
once and cached under <data_dir>/evaluation. Writes a versioned model artifact
(mmrec/artifact.py) that `mmrec worker` loads with MMREC_MODEL_PATH, and `mmrec score` reads.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mmrec.artifact import ModelArtifact, save_artifact
from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.features import MediaFailures
from mmrec.interaction_log import InteractionLogError
from mmrec.settings import Settings
from mmrec.training import PatentModel, TrainConfig, fit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("folder", nargs="?", type=Path, help="data folder: interactions.csv|.parquet and media/")
    parser.add_argument("--interactions", type=Path, help="interaction log (.csv or .parquet) instead of a folder")
    parser.add_argument("--media", type=Path, help="media folder (<media_id>.<ext>) for --interactions; default: its uri column")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model artifact (.safetensors)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--user-l2", type=float, default=defaults.user_l2, help="pull of each user's offsets toward the prior")
    parser.add_argument("--negatives", type=int, default=defaults.negatives, help="items sampled against each engagement")
    parser.add_argument("--collab-l2", type=float, default=defaults.collab_l2, help="L2 on the users' collaborative factors (MMREC_COLLAB_DIM > 0)")
    parser.add_argument("--factor-l2", type=float, default=defaults.factor_l2, help="L2 on the items' collaborative factors (MMREC_COLLAB_DIM > 0)")
    parser.add_argument(
        "--memory-epochs", type=int, default=defaults.memory_epochs,
        help="epochs that fit the item memory (biases, collaborative factors) alone first (MMREC_COLLAB_DIM > 0; docs/design.md)",
    )
    parser.add_argument(
        "--modality-dropout", type=float, default=defaults.modality_dropout,
        help="fraction of examples that leave out the item memory, and of those that leave out the visual part, in [0, 0.5] (MMREC_COLLAB_DIM > 0)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cache", type=Path, help="feature cache root (default <data_dir>/evaluation)")


def load_data(args: argparse.Namespace, settings: Settings) -> EvaluationData:
    """The data named by a folder or --interactions/--media (shared with `mmrec score`)."""
    if (args.folder is None) == (args.interactions is None):
        raise ValueError("give a data folder or --interactions FILE")
    cache = args.cache or settings.data_dir / "evaluation"
    if args.folder is not None:
        return EvaluationData.from_folder(args.folder, settings, cache, args.seed)
    return EvaluationData.from_files(args.interactions, args.media, settings, cache, args.seed)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    cfg = settings.scorer_config()
    try:
        config = TrainConfig(
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            user_l2=args.user_l2,
            collab_l2=args.collab_l2,
            factor_l2=args.factor_l2,
            negatives=args.negatives,
            memory_epochs=args.memory_epochs,
            modality_dropout=args.modality_dropout,
            seed=args.seed,
        )
        config.check_model(cfg)  # before any data is read
        data = load_data(args, settings)
        catalogue = data.catalogue()
    except (InteractionLogError, FileNotFoundError, ValueError, MediaFailures) as exc:
        print(f"mmrec train: {exc}", file=sys.stderr)
        return 2
    log = data.log
    print(f"training on {len(log)} events of {log.num_users} users over {log.num_items} items ({cfg})")
    started = time.perf_counter()
    model = PatentModel(cfg, log.num_users, log.num_items)
    history = fit(model, log, catalogue, config)
    with torch.no_grad():
        offsets = model.users(torch.arange(log.num_users))
    artifact = ModelArtifact(
        cfg=cfg,
        feature_version=catalogue.version,
        shared=model.shared(),
        item_ids=log.item_ids,
        item_bias=model.item_bias.detach(),
        item_factors=model.item_factors.detach(),
        user_ids=log.user_ids,
        user_offsets=offsets,
        notes={
            "data": data.name,
            "events": str(len(log)),
            "epochs": str(config.epochs),
            "memory_epochs": str(config.memory_epochs),
            "modality_dropout": str(config.modality_dropout),
            "final_loss": f"{history[-1]:.5f}",
            "trained_at": datetime.now(timezone.utc).isoformat(),
        },
    )
    digest = save_artifact(artifact, args.out)
    print(f"loss by epoch: {', '.join(f'{h:.4f}' for h in history)} ({time.perf_counter() - started:.0f} s)")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), model version {digest[:12]} (sha256 {digest})")
    return 0
