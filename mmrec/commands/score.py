"""`mmrec score`: a trained model's scores as CSV `user_id,media_id,score`, for any outside evaluation.

    mmrec score --model M.safetensors --media DIR --out scores.csv [--users FILE] [--items FILE] [--top-k K]

Candidates are the media in DIR (`<media_id>.<ext>`), or only those listed in --items (one id per
line); users are the model's trained users, or those listed in --users (a user the model never saw
is scored with the cold-start prior). Without --top-k every user gets a row per candidate; with it,
each user's best K, best first.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from mmrec.artifact import ArtifactError, load_artifact
from mmrec.catalogue import Catalogue
from mmrec.evaluation.features import MediaFailures, cached_features
from mmrec.extraction import FeatureExtractor
from mmrec.feature_store import SqliteFeatureStore
from mmrec.interaction_log import MEDIA_EXTENSIONS, MediaIndex
from mmrec.model import ParamLayout, score
from mmrec.settings import Settings

_USERS_PER_CHUNK = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="artifact written by `mmrec train`")
    parser.add_argument("--media", type=Path, required=True, help="folder of candidate media (<media_id>.<ext>)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--users", type=Path, help="user ids, one per line (default: every trained user)")
    parser.add_argument("--items", type=Path, help="candidate media ids, one per line (default: every file in --media)")
    parser.add_argument("--top-k", type=int, help="write each user's best K instead of every pair")
    parser.add_argument("--cache", type=Path, help="feature store to reuse (default <data_dir>/score-features.sqlite3)")


def _ids(path: Path) -> list[str]:
    return list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        artifact = load_artifact(args.model, settings.model_sha256)
        if args.items:
            items = _ids(args.items)
        else:
            items = sorted(p.stem for p in args.media.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
        users = _ids(args.users) if args.users else list(artifact.user_ids)
        if not items or not users:
            raise ValueError(f"nothing to score: {len(users)} users, {len(items)} candidate media")
        media = MediaIndex.from_folder(args.media, items)
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"mmrec score: {exc}", file=sys.stderr)
        return 2
    extractor = FeatureExtractor(settings)
    if extractor.version != artifact.feature_version:
        print(f"mmrec score: the model was trained on {artifact.feature_version}, these settings extract {extractor.version}", file=sys.stderr)
        return 2
    cache = args.cache or settings.data_dir / "score-features.sqlite3"
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        with SqliteFeatureStore(cache) as store:
            features = cached_features(store, media, items, extractor.version, extractor.extract_many, "features")
    except MediaFailures as exc:
        print(f"mmrec score: {exc}", file=sys.stderr)
        return 1
    catalogue = Catalogue(extractor.version, capacity=len(features), factor_dim=artifact.cfg.collab_dim)
    catalogue.add(features)
    artifact.apply_items(catalogue, catalogue.ids)
    layout, rows = ParamLayout(artifact.cfg), {u: r for r, u in enumerate(artifact.user_ids)}
    written = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle, torch.inference_mode():
        out = csv.writer(handle)
        out.writerow(["user_id", "media_id", "score"])
        maps = catalogue.float_maps()
        for start in range(0, len(users), _USERS_PER_CHUNK):
            chunk = users[start : start + _USERS_PER_CHUNK]
            offsets = torch.stack([artifact.user_offsets[rows[u]] if u in rows else torch.zeros(layout.size) for u in chunk])
            params = layout.split(artifact.shared.prior + offsets)
            scores = score(params, maps, catalogue.item_bias, artifact.shared, artifact.cfg, catalogue.item_factors)
            for user, row in zip(chunk, scores):
                order = row.argsort(descending=True)[: args.top_k] if args.top_k else range(len(row))
                for i in order:
                    out.writerow([user, catalogue.ids[int(i)], f"{float(row[int(i)]):.6f}"])
                    written += 1
    print(f"wrote {written} rows ({len(users)} users x {min(args.top_k or len(items), len(items))} items) to {args.out}")
    return 0
