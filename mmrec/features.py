"""What the extractor produces for one media item and the feature store keeps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

MediaType = Literal["image", "video"]


@dataclass(frozen=True)
class FeatureVersion:
    """Identifies the feature space: items are comparable only under the same version."""

    backbone: str  # e.g. "mobilenet_v2-b0353104@224:6,13,17"
    projection: str  # content hash of the channel projection

    def __str__(self) -> str:
        return f"{self.backbone}+{self.projection}"


@dataclass(frozen=True)
class ItemFeatures:
    """Per-layer projected feature maps of one item.

    maps: N tensors of shape (d, H_j, W_j), float16.
    """

    media_id: str
    media_type: MediaType
    maps: tuple[Tensor, ...]
    version: FeatureVersion
    created_at: float  # unix seconds when extracted
    frames: int = 1  # frames pooled (1 for an image)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored maps (without metadata)."""
        return sum(m.numel() * m.element_size() for m in self.maps)
