"""Synthetic ItemFeatures for storage tests (no CNN): seeded random fp16 maps."""
from __future__ import annotations

import torch

from mmrec.features import FeatureVersion, ItemFeatures

VERSION = FeatureVersion(backbone="mobilenet_v2-b0353104@224:6,13,17", projection="3f2a9c1d0b7e")
OTHER_VERSION = FeatureVersion(backbone="efficientnet_lite0@224:3,5,7", projection="9d8c7b6a5f4e")
DEFAULT_SHAPES = ((8, 14, 14), (8, 14, 14), (8, 7, 7))  # d = 8, N = 3, the default grids


def make_item(
    media_id: str,
    seed: int = 0,
    version: FeatureVersion = VERSION,
    shapes: tuple[tuple[int, int, int], ...] = DEFAULT_SHAPES,
    media_type: str = "image",
) -> ItemFeatures:
    g = torch.Generator().manual_seed(seed)
    return ItemFeatures(
        media_id=media_id,
        media_type=media_type,  # type: ignore[arg-type]
        maps=tuple(torch.randn(s, generator=g).to(torch.float16) for s in shapes),
        version=version,
        created_at=1_700_000_000.0 + seed + 0.123456789,
        frames=1 if media_type == "image" else 8,
        extra={"source": "synthetic", "seed": str(seed)},
    )


def make_items(n: int, start: int = 0, **kwargs: object) -> list[ItemFeatures]:
    return [make_item(f"m{i:07d}", seed=i, **kwargs) for i in range(start, start + n)]  # type: ignore[arg-type]


def same_item(a: ItemFeatures, b: ItemFeatures) -> bool:
    """Bit-exact equality of every field (ItemFeatures' own == cannot compare tensors)."""
    return (
        (a.media_id, a.media_type, a.version, a.created_at, a.frames, a.extra)
        == (b.media_id, b.media_type, b.version, b.created_at, b.frames, b.extra)
        and len(a.maps) == len(b.maps)
        and all(
            x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(torch.int16), y.view(torch.int16))
            for x, y in zip(a.maps, b.maps)
        )
    )
