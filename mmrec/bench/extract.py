"""`mmrec bench extract`: images per second of feature extraction by batch size, on the CPU and on
CUDA when torch sees one.

Figures per batch size: `cnn` (decoded frames -> stored maps: backbone, projection, pooling; the
part a GPU accelerates) and `end_to_end` (image bytes -> ItemFeatures: decoding, resizing, the CNN,
fp16) with the media decoded on `--decode-threads` threads and on one (`decode_speedup` is their
ratio), over the bundled sample images (scikit-image's data, PNG and JPEG).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from mmrec.backbone import MobileNetV2
from mmrec.bench.common import emit, time_calls
from mmrec.extraction import FeatureExtractor
from mmrec.samples import sample_images
from mmrec.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--decode-threads", type=int, default=Settings.model_fields["decode_threads"].default)
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent per measurement (at least)")


def _extractor(device: str, batch: int, decode_threads: int, input_size: int, backbones: dict[str, MobileNetV2]) -> FeatureExtractor:
    """An extractor of these settings; each device's backbone is loaded once and shared."""
    settings = Settings(device=device, input_size=input_size, extract_batch_size=batch, decode_threads=decode_threads, bootstrap_servers=None)
    extractor = FeatureExtractor(settings, backbone=backbones.get(device))
    backbones[device] = extractor.backbone
    return extractor


def run(args: argparse.Namespace) -> dict:
    paths = sample_images()
    blobs = [(p.stem, p.read_bytes()) for p in paths]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    figures: dict[str, dict[str, float]] = {}
    backbones: dict[str, MobileNetV2] = {}
    for device in devices:
        for batch in args.batch_sizes:
            extractor, one_decoder = (_extractor(device, batch, decoders, args.input_size, backbones) for decoders in (args.decode_threads, 1))
            decoded = [extractor.decode(data).frames for _, data in blobs]
            frames = np.concatenate(decoded)
            reps = -(-batch // frames.shape[0])
            frames = np.concatenate([frames] * reps)[:batch]

            def cnn() -> None:
                extractor.frame_maps(frames)
                if device == "cuda":
                    torch.cuda.synchronize()

            cnn_times = time_calls(cnn, min_seconds=args.seconds / 2)
            work = (blobs * (-(-batch // len(blobs))))[: max(batch, len(blobs))]
            e2e = len(work) / min(time_calls(lambda: extractor.extract_many(work), min_seconds=args.seconds / 2))
            e2e_one = len(work) / min(time_calls(lambda: one_decoder.extract_many(work), min_seconds=args.seconds / 2))
            figures[f"{device}_batch{batch}"] = {
                "cnn_images_per_s": batch / min(cnn_times),
                "end_to_end_images_per_s": e2e,
                "end_to_end_one_decoder_images_per_s": e2e_one,
                "decode_speedup": e2e / e2e_one,
            }
    config = {
        "backbone": "MobileNetV2 (torchvision weights), taps at blocks 6, 13, 17", "input_size": args.input_size,
        "N": 3, "d": 8, "max_grid": 14, "devices": devices, "decode_threads": args.decode_threads,
        "images": [p.name for p in paths],
    }
    notes = ["cnn: uint8 frames -> maps (backbone + projection + pooling), best of repeated calls",
             "end_to_end: bytes -> ItemFeatures (decode, crop/resize, cnn, fp16) over the sample images, best of repeated calls",
             "end_to_end_one_decoder: the same with the media decoded one after another; decode_speedup = end_to_end / that"]
    if not torch.cuda.is_available():
        notes.append("no CUDA device here: CPU figures only")
    return emit("extract", config, figures, notes, as_json=args.json)
