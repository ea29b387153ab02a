"""`mmrec fit-projection`: fit the per-layer PCA projection and write it as safetensors.

Run without arguments it rebuilds the shipped default, mmrec/assets/projection-*.safetensors:
every PNG and JPEG bundled in scikit-image (`pip install scikit-image`, no download), each seen as
12 deterministic views (the whole image and 4 corner + 1 centre crops of 60 % per side, each also
mirrored), at 224 px, through all five stage ends of the backbone. Same packages -> same content
hash (safetensors writes the metadata keys in varying order, so not always the same bytes).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmrec.backbone import STAGE_ENDS, WEIGHTS_NAME, load_backbone
from mmrec.media import MediaLimits, fit_square, open_image, sniff
from mmrec.projection import PCAFitter, default_projection_path
from mmrec.samples import IMAGE_PACKAGE, sample_images

CROP = 0.6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="output file (default: the shipped asset)")
    parser.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="views per forward pass (default 32)")


def views(image: Image.Image, size: int) -> np.ndarray:
    """(12, size, size, 3) uint8: whole image and 5 crops of 60 % per side, each plain and mirrored."""
    w, h = image.size
    cw, ch = round(w * CROP), round(h * CROP)
    corners = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch), ((w - cw) // 2, (h - ch) // 2)]
    crops = [image] + [image.crop((x, y, x + cw, y + ch)) for x, y in corners]
    return np.stack([fit_square(c, size) for crop in crops for c in (crop, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])


def run(args: argparse.Namespace) -> int:
    out: Path = args.out or default_projection_path()
    started = time.perf_counter()
    paths = sample_images()
    frames = []
    for path in paths:
        data = path.read_bytes()
        image, _, _ = open_image(data, sniff(data)[1], 2 * args.input_size, MediaLimits())
        frames.append(views(image, args.input_size))
    batch = np.concatenate(frames)  # (V, S, S, 3)
    backbone = load_backbone(STAGE_ENDS).to(memory_format=torch.channels_last)
    fitter = PCAFitter()
    with torch.inference_mode():
        for start in range(0, batch.shape[0], args.batch_size):
            chunk = torch.from_numpy(batch[start : start + args.batch_size]).permute(0, 3, 1, 2)
            for block, maps in zip(STAGE_ENDS, backbone(chunk)):
                fitter.update(block, maps)
    projection = fitter.finish(
        {
            "weights": WEIGHTS_NAME,
            "input_size": str(args.input_size),
            "source": f"{IMAGE_PACKAGE} data: {len(paths)} images x 12 views",
            "images": ",".join(p.name for p in paths),
        }
    )
    projection.save(out)
    print(f"wrote {out} ({out.stat().st_size} bytes) in {time.perf_counter() - started:.1f} s")
    print(f"version {projection.version(8)} (for d = 8); {batch.shape[0]} views of {len(paths)} images")
    for block, pca in projection.layers.items():
        share = (pca.variances.cumsum(0) / pca.variances.sum()).tolist()  # of the K kept components
        print(f"  block {block:2d}: C={pca.channels:4d} K={pca.components.shape[0]:2d} "
              f"first 8 components hold {share[7]:.1%} of the top-K variance")
    return 0
