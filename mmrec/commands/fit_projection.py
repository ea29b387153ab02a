"""`mmrec fit-projection`: fit the per-layer PCA projection and write it as safetensors.

Run without arguments it rebuilds the shipped default, mmrec/assets/projection-*.safetensors:
every PNG and JPEG bundled in scikit-image (`pip install scikit-image`, no download), each seen as
12 deterministic views (the whole image and 4 corner + 1 centre crops of 60 % per side, each also
mirrored), at 224 px, through all five stage ends of the backbone. Same packages -> same content
hash (safetensors writes the metadata keys in varying order, so not always the same bytes).

With `--media DIR --out FILE` it fits on a catalogue's own images instead (each seen whole and
mirrored; videos and files that do not decode are skipped and named), so the d channels the model
keeps are the directions in which that catalogue's images vary; MMREC_PROJECTION_PATH then names
the file for every role and for `mmrec train` (docs/visual-taste.md measures what it changes).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mmrec.projection import default_projection_path
from mmrec.projection_fit import describe_skipped, fit_projection, mirrored, views
from mmrec.samples import IMAGE_PACKAGE, sample_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="output file (default: the shipped asset; required with --media)")
    parser.add_argument("--media", type=Path, default=None, help="fit on the images in this folder (a catalogue's own media) instead of the bundled samples")
    parser.add_argument("--max-images", type=int, default=5000, help="with --media: at most this many images, evenly spaced over the sorted file names")
    parser.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="views per forward pass (default 32)")


def spaced(paths: list[Path], count: int) -> list[Path]:
    """At most `count` of paths, evenly spaced (all of them when there are no more)."""
    if len(paths) <= count:
        return paths
    return [paths[k * len(paths) // count] for k in range(count)]


def run(args: argparse.Namespace) -> int:
    if args.media is not None and args.out is None:
        print("fit-projection: --media needs --out (the shipped default is fitted on the bundled samples)", file=sys.stderr)
        return 2
    out: Path = args.out or default_projection_path()
    started = time.perf_counter()
    if args.media is None:
        paths, view_maker = sample_images(), views
        meta = {"source": f"{IMAGE_PACKAGE} data: {len(paths)} images x 12 views", "images": ",".join(p.name for p in paths)}
    else:
        paths, view_maker = spaced(sorted(p for p in args.media.iterdir() if p.is_file()), args.max_images), mirrored
        meta = {"source": f"images of {args.media.name} x 2 views", "images": f"{len(paths)} files"}
    fitted = fit_projection([(p.name, p.read_bytes) for p in paths], view_maker, args.input_size, args.batch_size, meta)
    skipped = len(fitted.skipped)
    if skipped:
        print(f"skipped {describe_skipped(fitted.skipped)}", file=sys.stderr)
    if fitted.projection is None:
        print(f"fit-projection: none of the {len(paths)} files is a decodable image", file=sys.stderr)
        return 1
    projection = fitted.projection
    projection.save(out)
    print(f"wrote {out} ({out.stat().st_size} bytes) in {time.perf_counter() - started:.1f} s")
    print(f"version {projection.version(8)} (for d = 8); {fitted.views} views of {fitted.images} images ({skipped} files skipped)")
    for block, pca in projection.layers.items():
        share = (pca.variances.cumsum(0) / pca.variances.sum()).tolist()  # of the K kept components
        print(f"  block {block:2d}: C={pca.channels:4d} K={pca.components.shape[0]:2d} "
              f"first 8 components hold {share[7]:.1%} of the top-K variance")
    return 0
