"""Wire and disk encoding of one item's features: a safetensors record.

The same bytes go into the feature store and onto the Kafka topic between extractor and scorer
workers, so a record describes itself. Layout (safetensors): an 8-byte little-endian header length,
a JSON header, then the raw tensors.

    tensors   "layer0" .. "layer{N-1}"   float16 (d, H_j, W_j), one per tapped layer
    metadata  format       FORMAT, bumped on any incompatible change
              media_id, media_type, backbone, projection
              created_at   repr of a float (unix seconds), exact round trip
              frames       decimal integer >= 1
              extra        JSON object of string -> string
              crc32        8 hex digits: CRC-32 of the maps' bytes chained in layer order
                           (SQLite keeps no checksum of row contents; this one travels with the record)

At the default configuration (d = 8, grids 14x14, 14x14, 7x7) a record is 7056 bytes of fp16 maps
plus a header of about 400 bytes. No pickle is involved on either side.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from mmrec.features import FeatureVersion, ItemFeatures

FORMAT = "mmrec.item/1"
MEDIA_TYPES = ("image", "video")
_META_KEYS = frozenset(
    {"format", "media_id", "media_type", "backbone", "projection", "created_at", "frames", "extra", "crc32"}
)
_MAX_HEADER = 1 << 20  # a record header is a few hundred bytes; refuse absurd lengths early


class CorruptRecord(ValueError):
    """The bytes are not a valid mmrec item record (truncated, foreign or inconsistent)."""


def encode_item(item: ItemFeatures) -> bytes:
    """ItemFeatures -> self-describing record bytes. Raises ValueError on an invalid item."""
    problem = _problem(item)
    if problem:
        raise ValueError(f"cannot encode item {item.media_id!r}: {problem}")
    # safetensors' numpy path writes the same bytes as its torch path, three times faster.
    arrays = {f"layer{j}": m.detach().cpu().contiguous().numpy() for j, m in enumerate(item.maps)}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise ValueError(f"cannot encode item {item.media_id!r}: maps hold NaN or infinite values")
    metadata = {
        "format": FORMAT,
        "media_id": item.media_id,
        "media_type": item.media_type,
        "backbone": item.version.backbone,
        "projection": item.version.projection,
        "created_at": repr(float(item.created_at)),
        "frames": str(item.frames),
        "extra": json.dumps(item.extra, sort_keys=True, separators=(",", ":")),
        "crc32": f"{_crc32(arrays.values()):08x}",
    }
    return st_save(arrays, metadata)


def decode_item(data: bytes) -> ItemFeatures:
    """Record bytes -> ItemFeatures (maps float16, contiguous, owning their memory).

    Raises CorruptRecord on anything but a complete, consistent record of FORMAT.
    """
    meta, payload_start = _metadata(data)
    try:
        arrays = st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError, KeyError) as e:
        raise CorruptRecord(f"unreadable tensor section: {e}") from e
    names = [f"layer{j}" for j in range(len(arrays))]
    if sorted(arrays) != sorted(names) or not names:
        raise CorruptRecord(f"expected tensors layer0..layerN-1, got {sorted(arrays)}")
    if f"{_crc32(arrays[name] for name in names):08x}" != meta["crc32"]:
        raise CorruptRecord(f"record of {meta['media_id']!r}: maps fail their CRC-32 check")
    try:
        created_at = float(meta["created_at"])
        frames = int(meta["frames"])
        extra = json.loads(meta["extra"])
    except (ValueError, RecursionError) as e:
        raise CorruptRecord(f"bad metadata value: {e}") from e
    item = ItemFeatures(
        media_id=meta["media_id"],
        media_type=meta["media_type"],  # type: ignore[arg-type]  # checked by _problem
        maps=tuple(torch.from_numpy(arrays[name]) for name in names),
        version=FeatureVersion(backbone=meta["backbone"], projection=meta["projection"]),
        created_at=created_at,
        frames=frames,
        extra=extra,
    )
    problem = _problem(item)
    if problem:
        raise CorruptRecord(f"record of {item.media_id!r}: {problem}")
    # Every tensor is float16 and safetensors checked they tile the payload: one pass covers all.
    if not np.isfinite(np.frombuffer(data, np.float16, offset=payload_start)).all():
        raise CorruptRecord(f"record of {item.media_id!r}: maps hold NaN or infinite values")
    return item


def _metadata(data: bytes) -> tuple[dict[str, str], int]:
    """The header's checked metadata block and where the tensor payload starts."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptRecord(f"expected bytes, got {type(data).__name__}")
    if len(data) < 8:
        raise CorruptRecord(f"record of {len(data)} bytes is shorter than its 8-byte length prefix")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > _MAX_HEADER or 8 + n > len(data):
        raise CorruptRecord(f"header length {n} does not fit a record of {len(data)} bytes")
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise CorruptRecord(f"header is not JSON: {e}") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CorruptRecord(f"not an {FORMAT} record (format tag {found!r})")
    if set(meta) != _META_KEYS:
        raise CorruptRecord(
            f"metadata keys differ: missing {sorted(_META_KEYS - set(meta))}, "
            f"unexpected {sorted(set(meta) - _META_KEYS)}"
        )
    return meta, 8 + n


def _crc32(arrays: Iterable[np.ndarray]) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(a, crc)
    return crc


def _problem(item: ItemFeatures) -> str | None:
    """What makes an item's structure unstorable, or None. Shared by encode and decode."""
    if not isinstance(item.media_id, str) or not item.media_id:
        return "media_id must be a non-empty string"
    if item.media_type not in MEDIA_TYPES:
        return f"media_type must be one of {MEDIA_TYPES}, got {item.media_type!r}"
    if not item.version.backbone or not item.version.projection:
        return f"feature version fields must be non-empty, got {item.version!r}"
    if not isinstance(item.created_at, (int, float)) or not math.isfinite(item.created_at):
        return f"created_at must be finite unix seconds, got {item.created_at!r}"
    if not isinstance(item.frames, int) or item.frames < 1:
        return f"frames must be an integer >= 1, got {item.frames!r}"
    if not isinstance(item.extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in item.extra.items()
    ):
        return "extra must map strings to strings"
    if not item.maps:
        return "no feature maps"
    channels = item.maps[0].shape[0] if item.maps[0].dim() == 3 else None
    for j, m in enumerate(item.maps):
        if m.dtype != torch.float16:
            return f"layer {j} maps must be float16, got {m.dtype}"
        if m.dim() != 3 or min(m.shape) < 1:
            return f"layer {j} maps must be (d, H, W) with every side >= 1, got {tuple(m.shape)}"
        if m.shape[0] != channels:
            return f"layer {j} has {m.shape[0]} channels, layer 0 has {channels}"
    return None
