"""`mmrec extract PATH [PATH ...]`: extract feature maps of media files into the feature store.

Each file becomes one item whose media id is its file name (re-extracting a name replaces it).
Settings come from MMREC_* variables (mmrec/settings.py); the store is <data_dir>/features.sqlite3.
Prints, per item, the per-layer map shapes and the bytes of its stored record; a file that cannot
be read or decoded is reported with its error reason and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrec.extraction import FeatureExtractor
from mmrec.feature_store import open_feature_store
from mmrec.features import ItemFeatures
from mmrec.item_codec import encode_item
from mmrec.media import MediaError
from mmrec.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image (JPEG, PNG, WebP) or video (MP4, WebM) files")


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    extractor = FeatureExtractor(settings)
    failed = 0
    with open_feature_store(settings) as store:
        print(f"feature version {extractor.version}; store {store.path}")
        step = settings.extract_batch_size
        for start in range(0, len(args.paths), step):
            batch: list[tuple[str, bytes]] = []
            for path in args.paths[start : start + step]:
                try:
                    batch.append((path.name, path.read_bytes()))
                except OSError as exc:
                    print(f"{path}: error unreadable: {exc}", file=sys.stderr)
                    failed += 1
            results = extractor.extract_many(batch)
            store.put_many([r for r in results if isinstance(r, ItemFeatures)])
            for (media_id, _), result in zip(batch, results):
                if isinstance(result, MediaError):
                    print(f"{media_id}: error {result.reason}: {result.message}", file=sys.stderr)
                    failed += 1
                else:
                    _report(result, extractor.taps)
    return 1 if failed else 0


def _report(item: ItemFeatures, taps: tuple[int, ...]) -> None:
    frames = f"{item.frames} frame{'s' if item.frames > 1 else ''}"
    print(f"{item.media_id}: {item.media_type} {item.extra['format']} {item.extra['source']}, {frames}")
    for j, (block, m) in enumerate(zip(taps, item.maps), start=1):
        print(f"  layer {j} (block {block:2d}): {tuple(m.shape)} {m.dtype}".replace("torch.", ""))
    print(f"  stored: {len(encode_item(item))} bytes ({item.nbytes} bytes of maps)")
