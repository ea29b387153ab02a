"""Fitting the channel projection (mmrec.projection) on images: each image becomes a few views, the
views go through every stage end of the frozen backbone in batches, and PCAFitter takes the maps.

`mmrec fit-projection` fits the shipped default on the bundled sample images (12 views each, `views`)
or one on a catalogue's own media (whole and mirrored, `mirrored`); `mmrec evaluate --own-projection`
fits one on the media of the items seen before the validation period.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmrec.backbone import STAGE_ENDS, WEIGHTS_NAME, load_backbone
from mmrec.media import MediaError, MediaLimits, UnsupportedMedia, fit_square, open_image, sniff
from mmrec.projection import PCAFitter, Projection

CROP = 0.6

Views = Callable[[Image.Image, int], np.ndarray]  # (image, size) -> (V, size, size, 3) uint8
Source = tuple[str, Callable[[], bytes]]  # (name, reader of its bytes)


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
    return np.stack([square, square[:, ::-1]])


@dataclass
class ViewStream:
    """The views (size, size, 3) of every decodable image among the sources, in order; counts the
    images it took and names the sources it skipped (videos, other files, undecodable or unreadable)."""

    sources: Sequence[Source]
    view_maker: Views
    size: int
    images: int = 0
    skipped: list[str] = field(default_factory=list)  # "name (reason)"

    def __iter__(self) -> Iterator[np.ndarray]:
        for name, read in tqdm(self.sources, desc="fitting the projection", unit="image", leave=False):
            try:
                data = read()
                kind, fmt = sniff(data)
                if kind != "image":
                    raise UnsupportedMedia("not_an_image", f"{name} is a {kind}")
                image, _, _ = open_image(data, fmt, 2 * self.size, MediaLimits())
            except MediaError as exc:
                self.skipped.append(f"{name} ({exc.reason})")
                continue
            except OSError as exc:
                self.skipped.append(f"{name} (unreadable: {exc})")
                continue
            self.images += 1
            yield from self.view_maker(image, self.size)


def batches(frames: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive stacks of `size` views (the last one may be smaller): (B, S, S, 3) uint8."""
    pending: list[np.ndarray] = []
    for frame in frames:
        pending.append(frame)
        if len(pending) == size:
            yield np.stack(pending)
            pending = []
    if pending:
        yield np.stack(pending)


@dataclass(frozen=True)
class FittedProjection:
    projection: Projection | None  # None: no source was a decodable image
    views: int
    images: int
    skipped: list[str]


def describe_skipped(skipped: Sequence[str], shown: int = 5) -> str:
    """'N: a (reason), b (reason), ...' naming the first `shown` skipped sources."""
    more = " ..." if len(skipped) > shown else ""
    return f"{len(skipped)}: {', '.join(skipped[:shown])}{more}"


def fit_projection(sources: Sequence[Source], view_maker: Views, input_size: int, batch_size: int, meta: dict[str, str]) -> FittedProjection:
    """A projection fitted on the sources' images (meta is recorded with weights and input_size)."""
    backbone = load_backbone(STAGE_ENDS).to(memory_format=torch.channels_last)
    fitter = PCAFitter()
    stream = ViewStream(sources, view_maker, input_size)
    seen = 0
    with torch.inference_mode():
        for batch in batches(stream, batch_size):
            seen += batch.shape[0]
            for block, maps in zip(STAGE_ENDS, backbone(torch.from_numpy(batch).permute(0, 3, 1, 2))):
                fitter.update(block, maps)
    if not stream.images:
        return FittedProjection(None, 0, 0, stream.skipped)
    projection = fitter.finish({"weights": WEIGHTS_NAME, "input_size": str(input_size), **meta})
    return FittedProjection(projection, seen, stream.images, stream.skipped)
