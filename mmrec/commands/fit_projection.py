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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmrec.backbone import STAGE_ENDS, WEIGHTS_NAME, load_backbone
from mmrec.media import MediaError, MediaLimits, UnsupportedMedia, fit_square, open_image, sniff
from mmrec.projection import PCAFitter, default_projection_path
from mmrec.samples import IMAGE_PACKAGE, sample_images

CROP = 0.6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="output file (default: the shipped asset; required with --media)")
    parser.add_argument("--media", type=Path, default=None, help="fit on the images in this folder (a catalogue's own media) instead of the bundled samples")
    parser.add_argument("--max-images", type=int, default=5000, help="with --media: at most this many images, evenly spaced over the sorted file names")
    parser.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="views per forward pass (default 32)")


def views(image: Image.Image, size: int) -> np.ndarray:
    """(12, size, size, 3) uint8: whole image and 5 crops of 60 % per side, each plain and mirrored."""
    w, h = image.size
    cw, ch = round(w * CROP), round(h * CROP)
    corners = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch), ((w - cw) // 2, (h - ch) // 2)]
    crops = [image] + [image.crop((x, y, x + cw, y + ch)) for x, y in corners]
    return np.stack([fit_square(c, size) for crop in crops for c in (crop, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])


def mirrored(image: Image.Image, size: int) -> np.ndarray:
    """(2, size, size, 3) uint8: the whole image, plain and mirrored."""
    square = fit_square(image, size)
    return np.stack([square, np.ascontiguousarray(square[:, ::-1])])


def spaced(paths: list[Path], count: int) -> list[Path]:
    """At most `count` of paths, evenly spaced (all of them when there are no more)."""
    if len(paths) <= count:
        return paths
    return [paths[k * len(paths) // count] for k in range(count)]


@dataclass
class ViewStream:
    """The fitting views (size, size, 3) of every decodable image among paths, in order; counts the
    images it took and names the files it skipped (videos, other files, undecodable images)."""

    paths: list[Path]
    per_image: Callable[[Image.Image], np.ndarray]
    size: int
    images: int = 0
    skipped: list[str] = field(default_factory=list)  # "name (reason)"

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in tqdm(self.paths, desc="fitting", unit="file", leave=False):
            data = path.read_bytes()
            try:
                kind, fmt = sniff(data)
                if kind != "image":
                    raise UnsupportedMedia("not_an_image", f"{path.name} is a {kind}")
                image, _, _ = open_image(data, fmt, 2 * self.size, MediaLimits())
            except MediaError as exc:
                self.skipped.append(f"{path.name} ({exc.reason})")
                continue
            self.images += 1
            yield from self.per_image(image)


def batches(views: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive stacks of `size` views (the last one may be smaller): (B, S, S, 3) uint8."""
    pending: list[np.ndarray] = []
    for view in views:
        pending.append(view)
        if len(pending) == size:
            yield np.stack(pending)
            pending = []
    if pending:
        yield np.stack(pending)


def run(args: argparse.Namespace) -> int:
    if args.media is not None and args.out is None:
        print("fit-projection: --media needs --out (the shipped default is fitted on the bundled samples)", file=sys.stderr)
        return 2
    out: Path = args.out or default_projection_path()
    started = time.perf_counter()
    if args.media is None:
        paths, view_maker = sample_images(), views
    else:
        paths, view_maker = spaced(sorted(p for p in args.media.iterdir() if p.is_file()), args.max_images), mirrored
    backbone = load_backbone(STAGE_ENDS).to(memory_format=torch.channels_last)
    fitter = PCAFitter()
    stream = ViewStream(paths, lambda image: view_maker(image, args.input_size), args.input_size)
    seen = 0
    with torch.inference_mode():
        for batch in batches(stream, args.batch_size):
            seen += batch.shape[0]
            for block, maps in zip(STAGE_ENDS, backbone(torch.from_numpy(batch).permute(0, 3, 1, 2))):
                fitter.update(block, maps)
    fitted, skipped = stream.images, len(stream.skipped)
    if skipped:
        print(f"skipped {skipped} files: {', '.join(stream.skipped[:5])}{' ...' if skipped > 5 else ''}", file=sys.stderr)
    if not fitted:
        print(f"fit-projection: none of the {len(paths)} files is a decodable image", file=sys.stderr)
        return 1
    source = f"{IMAGE_PACKAGE} data: {fitted} images x 12 views" if args.media is None else f"{fitted} images of {args.media.name} x 2 views"
    projection = fitter.finish(
        {
            "weights": WEIGHTS_NAME,
            "input_size": str(args.input_size),
            "source": source,
            "images": ",".join(p.name for p in paths) if args.media is None else f"{fitted} of {len(paths)} files ({skipped} skipped)",
        }
    )
    projection.save(out)
    print(f"wrote {out} ({out.stat().st_size} bytes) in {time.perf_counter() - started:.1f} s")
    print(f"version {projection.version(8)} (for d = 8); {seen} views of {fitted} images ({skipped} files skipped)")
    for block, pca in projection.layers.items():
        share = (pca.variances.cumsum(0) / pca.variances.sum()).tolist()  # of the K kept components
        print(f"  block {block:2d}: C={pca.channels:4d} K={pca.components.shape[0]:2d} "
              f"first 8 components hold {share[7]:.1%} of the top-K variance")
    return 0
