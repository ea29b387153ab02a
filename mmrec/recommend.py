"""Exact top-K recommendations over a catalogue, for a batch of users, scored in item chunks."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmrec.catalogue import Catalogue
from mmrec.model import ModelConfig, ParamLayout, SharedParams, score
from mmrec.user_state import id_hash

# Intermediate maps of one chunk are (chunk, U, H, W) float32; keep them near this many bytes.
_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Ranked:
    media_id: str
    score: float


class Recommender:
    """Scores users against every catalogue item and keeps each user's best K."""

    def __init__(self, cfg: ModelConfig, shared: SharedParams) -> None:
        self.cfg = cfg
        self.shared = shared
        self.layout = ParamLayout(cfg)
        self._row_of_hash: dict[int, int] = {}
        self._hashed_rows = 0

    @torch.inference_mode()
    def scores(self, offsets: Tensor, catalogue: Catalogue) -> Tensor:
        """offsets (U, P) -> scores (U, I) over every catalogue item."""
        params = self.layout.split(self.shared.prior + offsets)
        shapes = catalogue.layer_shapes or ()
        cells = max((h * w for _, h, w in shapes), default=1)
        chunk = max(1, _CHUNK_BYTES // (4 * cells * offsets.shape[0]))
        parts = []
        for start in range(0, len(catalogue), chunk):
            rows = slice(start, min(start + chunk, len(catalogue)))
            parts.append(score(params, catalogue.float_maps(rows), catalogue.item_bias[rows], self.shared, self.cfg))
        return torch.cat(parts, dim=1) if parts else torch.zeros(offsets.shape[0], 0)

    @torch.inference_mode()
    def scores_for_rows(self, offsets: Tensor, catalogue: Catalogue, rows: Tensor) -> Tensor:
        """offsets (U, P), rows (R,) long -> scores (U, R) of those catalogue rows only."""
        params = self.layout.split(self.shared.prior + offsets)
        return score(params, catalogue.float_maps(rows), catalogue.item_bias[rows], self.shared, self.cfg)

    @torch.inference_mode()
    def top_k(self, offsets: Tensor, catalogue: Catalogue, k: int, seen: Sequence[Sequence[int]] = ()) -> list[list[Ranked]]:
        """Each user's best k items, best first, leaving out the media whose id hashes are in seen[u]."""
        all_scores = self.scores(offsets, catalogue)
        for user, hashes in enumerate(seen):
            rows = self._rows_of(hashes, catalogue)
            if rows:
                all_scores[user, rows] = float("-inf")
        best = all_scores.topk(min(k, all_scores.shape[1]), dim=1)
        ids = catalogue.ids
        return [
            [Ranked(ids[r], s) for r, s in zip(rows, values) if s != float("-inf")]
            for rows, values in zip(best.indices.tolist(), best.values.tolist())
        ]

    def _rows_of(self, hashes: Sequence[int], catalogue: Catalogue) -> list[int]:
        """Catalogue rows of media id hashes (rows are stable, so the index only grows)."""
        ids = catalogue.ids
        for row in range(self._hashed_rows, len(ids)):
            self._row_of_hash[id_hash(ids[row])] = row
        self._hashed_rows = len(ids)
        return [self._row_of_hash[h] for h in hashes if h in self._row_of_hash]
