"""Media bytes -> ItemFeatures: decode, frozen backbone, per-layer projection, pooling, fp16.

For each item (shapes at the defaults N = 3, d = 8, input 224, max_grid 14):

    frames   (F, S, S, 3) uint8          media.decode; F = 1 for an image, <= frames + keyframes for a video
    F_j      (F, C_j, H_j, W_j)          backbone taps, e.g. C = 32, 96, 320 at H = 28, 14, 7
    P_j      (F, d, H_j, W_j)            whitened PCA projection (a 1x1 conv)
    G_j      (F, d, h_j, w_j)            adaptive average pool to h_j = min(H_j, max_grid): 14, 14, 7
    maps[j]  (d, h_j, w_j) float16       mean of G_j over the item's F frames

Frames of all items in a call share batched forward passes in channels_last layout. Every pass has
exactly extract_batch_size frames (a short chunk is padded with black frames that are dropped after):
oneDNN picks its kernels, and with them the summation order, by tensor shape, so a lone image and
the same image in a batch of two differed by 1 fp16 ulp at 64 px. With the shape fixed, the same
bytes give bit-identical features on the CPU whatever else travels in the batch, and wherever.
The price is latency for a part-filled batch; extract_batch_size = 1 is the low-latency setting.
Everything heavy (Pillow and FFmpeg decoding, torch) releases the GIL, so calling extract_many
from an executor thread leaves an event loop responsive, and a call's items are decoded on
decode_threads threads at once: with the CNN on a GPU, decoding is the limit (measured on an H200
at batch 32: the CNN ~12,300 images/s; decode + CNN 201/s on one decoding thread, 750/s on eight).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.backbone import _SETTINGS as _BLOCK_SETTINGS
from mmrec.backbone import WEIGHTS_NAME, MobileNetV2, backbone_id, default_taps, load_backbone
from mmrec.features import FeatureVersion, ItemFeatures
from mmrec.media import DecodedMedia, MediaError, MediaLimits, decode
from mmrec.projection import Projection, default_projection_path
from mmrec.settings import Settings


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def settings_projection(settings: Settings) -> Projection:
    """The projection the settings name (MMREC_PROJECTION_PATH), or the shipped one."""
    return Projection.load(settings.projection_path or default_projection_path())


def feature_version(settings: Settings, projection: Projection | None = None) -> FeatureVersion:
    """The FeatureVersion an extractor with these settings produces, without loading the CNN."""
    projection = projection or settings_projection(settings)
    return FeatureVersion(backbone_id(default_taps(settings.n_layers), settings.input_size), projection.version(settings.channels))


def feature_shapes(settings: Settings) -> tuple[tuple[int, int, int], ...]:
    """(d, h_j, w_j) of every stored layer at these settings, without the CNN: each stride-2 conv
    (kernel 3, padding 1) halves a side rounding up, and the maps are pooled to at most max_grid.
    Equals FeatureExtractor.shapes; a consumer of the features topic checks records against it."""
    strides = [1] * (1 + sum(n for _, _, n, _ in _BLOCK_SETTINGS) + 1)  # stem, the blocks, the final 1x1 conv
    strides[0], block = 2, 1
    for _, _, repeats, stride in _BLOCK_SETTINGS:
        strides[block] = stride
        block += repeats
    shapes = []
    for tap in default_taps(settings.n_layers):
        side = settings.input_size
        for stride in strides[: tap + 1]:
            side = -(-side // stride)
        shapes.append((settings.channels, min(side, settings.max_grid), min(side, settings.max_grid)))
    return tuple(shapes)


class FeatureExtractor:
    """Turns media bytes into ItemFeatures under one FeatureVersion (see the module docstring)."""

    def __init__(self, settings: Settings, projection: Projection | None = None, backbone: MobileNetV2 | None = None) -> None:
        self.taps = default_taps(settings.n_layers)
        self.channels = settings.channels
        self.input_size = settings.input_size
        self.batch_size = settings.extract_batch_size
        self.video_frames = settings.video_frames
        self.video_keyframes = settings.video_keyframes
        self.limits = MediaLimits(
            max_bytes=settings.max_media_bytes,
            max_pixels=settings.max_pixels,
            max_video_seconds=settings.max_video_seconds,
            max_video_frames=settings.max_video_frames,
        )
        self._decoders = ThreadPoolExecutor(settings.decode_threads, "mmrec-decode") if settings.decode_threads > 1 else None
        self.device = resolve_device(settings.device)
        backbone = backbone or load_backbone(self.taps)
        if backbone.taps != self.taps:
            raise ValueError(f"backbone taps {backbone.taps} != {self.taps} for n_layers={settings.n_layers}")
        self.backbone = backbone.to(self.device, memory_format=torch.channels_last)
        projection = projection or settings_projection(settings)
        if projection.meta.get("weights") != WEIGHTS_NAME:
            raise ValueError(f"projection was fitted on {projection.meta.get('weights')!r}, not {WEIGHTS_NAME}")
        self._projections: list[tuple[Tensor, Tensor]] = []
        for block, c in zip(self.taps, backbone.channels):
            layer = projection.layer(block)
            if layer.channels != c:
                raise ValueError(f"projection of block {block} expects {layer.channels} channels, the backbone gives {c}")
            if self.channels > layer.components.shape[0]:
                raise ValueError(
                    f"channels={self.channels} exceeds the {layer.components.shape[0]} principal components of "
                    f"block {block} ({c} channels), tapped at n_layers={settings.n_layers}"
                )
            weight, bias = layer.affine(self.channels)  # (d, C), (d,)
            self._projections.append((weight[:, :, None, None].to(self.device), bias.to(self.device)))
        self.version = feature_version(settings, projection)
        with torch.inference_mode():
            probe = self.backbone(torch.zeros(1, 3, self.input_size, self.input_size, dtype=torch.uint8, device=self.device))
        self.shapes = tuple(
            (self.channels, min(f.shape[2], settings.max_grid), min(f.shape[3], settings.max_grid)) for f in probe
        )

    def extract(self, media_id: str, data: bytes) -> ItemFeatures:
        """One item; raises the MediaError that decoding raised."""
        result = self.extract_many([(media_id, data)])[0]
        if isinstance(result, MediaError):
            raise result
        return result

    def extract_many(self, items: Sequence[tuple[str, bytes]]) -> list[ItemFeatures | MediaError]:
        """(media_id, bytes) pairs -> features, or the MediaError of each item that failed, in order."""
        results: dict[int, ItemFeatures | MediaError] = {}
        decoded: list[tuple[int, DecodedMedia]] = []
        for i, media in enumerate(self.decode_many([data for _, data in items])):
            if isinstance(media, MediaError):
                results[i] = media
            else:
                decoded.append((i, media))
        if decoded:
            counts = torch.tensor([m.frames.shape[0] for _, m in decoded])
            maps = self.frame_maps(np.concatenate([m.frames for _, m in decoded]))
            owner = torch.repeat_interleave(torch.arange(len(decoded)), counts)  # (T,) item of each frame
            means = [
                torch.zeros(len(decoded), *m.shape[1:]).index_add_(0, owner, m).div_(counts.view(-1, 1, 1, 1)).half()
                for m in maps
            ]  # N x (I, d, h_j, w_j)
            now = time.time()
            for k, (i, media) in enumerate(decoded):
                results[i] = ItemFeatures(
                    media_id=items[i][0],
                    media_type=media.kind,
                    maps=tuple(m[k].clone() for m in means),
                    version=self.version,
                    created_at=now,
                    frames=media.frames.shape[0],
                    extra={"format": media.format, "source": f"{media.width}x{media.height}"},
                )
        return [results[i] for i in range(len(items))]

    def decode(self, data: bytes) -> DecodedMedia:
        """Bytes -> frames (F, S, S, 3) under this extractor's size and limits."""
        return decode(data, self.input_size, self.limits, self.video_frames, self.video_keyframes)

    def decode_many(self, blobs: Sequence[bytes]) -> list[DecodedMedia | MediaError]:
        """Each blob decoded (or its MediaError), in order; on decode_threads threads at once."""

        def attempt(data: bytes) -> DecodedMedia | MediaError:
            try:
                return self.decode(data)
            except MediaError as exc:
                return exc

        if self._decoders is None or len(blobs) < 2:
            return [attempt(data) for data in blobs]
        return list(self._decoders.map(attempt, blobs))

    def frame_maps(self, frames: np.ndarray) -> list[Tensor]:
        """uint8 frames (T, S, S, 3) -> N x float32 (T, d, h_j, w_j) on the CPU, one map per frame."""
        out = [torch.empty(frames.shape[0], *shape) for shape in self.shapes]
        with torch.inference_mode():
            for start in range(0, frames.shape[0], self.batch_size):
                chunk = frames[start : start + self.batch_size]
                n = chunk.shape[0]
                if n < self.batch_size:  # fixed shape -> fixed kernels -> batch-invariant bits
                    chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, *chunk.shape[1:]), np.uint8)])
                x = torch.from_numpy(chunk).to(self.device).permute(0, 3, 1, 2)  # NHWC memory = channels_last
                for j, (f, (weight, bias)) in enumerate(zip(self.backbone(x), self._projections)):
                    grid = self.shapes[j][1:]
                    y = F.conv2d(f, weight, bias)  # (B, d, H_j, W_j); all B rows: shape fixed
                    if y.shape[2:] != grid:
                        y = F.adaptive_avg_pool2d(y, grid)
                    out[j][start : start + n] = y[:n]
        return out
