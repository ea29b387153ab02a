"""Item features for evaluation, extracted once and cached in feature stores.

Two kinds, both from the production backbone under the current Settings:
    maps         the stored per-layer projected maps our model scores (FeatureExtractor)
    penultimate  the global-average-pooled output of the backbone's last conv, block 18 (1280
                 channels, the classifier's input): the standard VBPR input (He & McAuley used the
                 penultimate layer of their CNN)
Each kind lives in its own SQLite feature store; a record carries the SHA-256 of its media bytes
(extra["sha256"]), and an item whose bytes or feature version changed is extracted again.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mmrec.backbone import backbone_id, load_backbone
from mmrec.extraction import FeatureExtractor
from mmrec.feature_store import FeatureStore
from mmrec.features import FeatureVersion, ItemFeatures
from mmrec.interaction_log import MediaIndex, content_hash
from mmrec.media import DecodedMedia, MediaError

PENULTIMATE_BLOCK = 18
_BATCH = 64  # items read, hashed and looked up per round trip

Extract = Callable[[Sequence[tuple[str, bytes]]], list[ItemFeatures | MediaError]]


class MediaFailures(RuntimeError):
    """Some media could not be read or decoded; every item needs features, so evaluation stops."""


class PenultimateExtractor:
    """Media bytes -> ItemFeatures with one map (1280, 1, 1): the mean over space (and a video's
    frames) of block 18 of the backbone. Decoding and fixed-size batches as in FeatureExtractor."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        self._extractor = extractor
        self.backbone = load_backbone((PENULTIMATE_BLOCK,)).to(extractor.device, memory_format=torch.channels_last)
        self.version = FeatureVersion(backbone_id((PENULTIMATE_BLOCK,), extractor.input_size), "global-average-pool")

    def extract_many(self, items: Sequence[tuple[str, bytes]]) -> list[ItemFeatures | MediaError]:
        """(media_id, bytes) pairs -> features, or the MediaError of each item that failed, in order."""
        results: dict[int, ItemFeatures | MediaError] = {}
        decoded: list[tuple[int, DecodedMedia]] = []
        for i, (_, data) in enumerate(items):
            try:
                decoded.append((i, self._extractor.decode(data)))
            except MediaError as exc:
                results[i] = exc
        if decoded:
            counts = torch.tensor([m.frames.shape[0] for _, m in decoded])
            pooled = self._pool(np.concatenate([m.frames for _, m in decoded]))  # (T, 1280)
            owner = torch.repeat_interleave(torch.arange(len(decoded)), counts)
            means = torch.zeros(len(decoded), pooled.shape[1]).index_add_(0, owner, pooled).div_(counts[:, None]).half()
            now = time.time()
            for k, (i, media) in enumerate(decoded):
                results[i] = ItemFeatures(items[i][0], media.kind, (means[k, :, None, None].clone(),), self.version, now,
                                          media.frames.shape[0])
        return [results[i] for i in range(len(items))]

    def _pool(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (T, S, S, 3) -> (T, 1280) float32, in fixed-size padded batches."""
        size = self._extractor.batch_size
        parts = []
        with torch.inference_mode():
            for start in range(0, frames.shape[0], size):
                chunk = frames[start : start + size]
                n = chunk.shape[0]
                if n < size:  # fixed shape -> batch-invariant bits (see mmrec/extraction.py)
                    chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), np.uint8)])
                x = torch.from_numpy(chunk).to(self._extractor.device).permute(0, 3, 1, 2)
                parts.append(self.backbone(x)[0].mean(dim=(2, 3))[:n].float().cpu())
        return torch.cat(parts)


def cached_features(
    store: FeatureStore, media: MediaIndex, media_ids: Sequence[str], version: FeatureVersion, extract: Extract, desc: str
) -> list[ItemFeatures]:
    """Features of media_ids in order: from the store when its record matches version and bytes,
    otherwise extracted and stored. Raises MediaFailures naming the media that failed."""
    found: list[ItemFeatures] = []
    failed: list[str] = []
    reused = 0
    with tqdm(total=len(media_ids), desc=desc, unit="item", leave=False) as bar:
        for start in range(0, len(media_ids), _BATCH):
            batch = list(media_ids[start : start + _BATCH])
            cached = store.get_many(batch)
            todo: list[tuple[str, bytes]] = []
            digests: dict[str, str] = {}
            ready: dict[str, ItemFeatures] = {}
            for media_id in batch:
                try:
                    data = media.read(media_id)
                except OSError as exc:
                    failed.append(f"{media_id}: unreadable: {exc}")
                    continue
                digests[media_id] = content_hash(data)
                hit = cached.get(media_id)
                if hit is not None and hit.version == version and hit.extra.get("sha256") == digests[media_id]:
                    ready[media_id] = hit
                else:
                    todo.append((media_id, data))
            reused += len(ready)
            fresh = []
            for (media_id, _), result in zip(todo, extract(todo) if todo else []):
                if isinstance(result, MediaError):
                    failed.append(f"{media_id}: {result}")
                else:
                    item = dataclasses.replace(result, extra={**result.extra, "sha256": digests[media_id]})
                    fresh.append(item)
                    ready[media_id] = item
            store.put_many(fresh)
            found.extend(ready[m] for m in batch if m in ready)
            bar.update(len(batch))
            bar.set_postfix(cached=reused)
    if failed:
        raise MediaFailures(f"{len(failed)} of {len(media_ids)} media failed, e.g. " + "; ".join(failed[:5]))
    return found
