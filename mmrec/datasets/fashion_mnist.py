"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (IDX files, gzip; MIT licence).

70,000 grayscale 28x28 product photos (white garment on black) in 10 classes; train and test files
are read together. Nothing is downloaded: install the package (`apt-get install
dataset-fashion-mnist`, or `make fashion-mnist`).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
_PARTS = ("train", "t10k")


def load_fashion_mnist(folder: Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """-> images (70000, 28, 28) uint8, labels (70000,) uint8 (index into CLASSES)."""
    images, labels = [], []
    for part in _PARTS:
        image_path = folder / f"{part}-images-idx3-ubyte.gz"
        label_path = folder / f"{part}-labels-idx1-ubyte.gz"
        if not image_path.is_file() or not label_path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {folder}: install the Debian package dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist, or `make fashion-mnist`)"
            )
        images.append(_read_idx(image_path, 3))
        labels.append(_read_idx(label_path, 1))
    return np.concatenate(images), np.concatenate(labels)


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic 0x0000 08 <dims>, <dims> big-endian int32 sizes, data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    if magic != 0x0800 + dims:
        raise ValueError(f"{path}: not an IDX file of {dims}-d unsigned bytes (magic {magic:#x})")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {array.size} bytes of data for shape {shape}")
    return array.reshape(shape)
