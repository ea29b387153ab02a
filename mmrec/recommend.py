"""Top-K recommendations over a catalogue for a batch of users: exact (every item scored, in item
chunks) or through the retrieval stage (a surrogate shortlist re-ranked exactly, mmrec.retrieval),
chosen by catalogue size (RetrievalConfig)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmrec.catalogue import Catalogue
from mmrec.model import ModelConfig, ParamLayout, SharedParams, score
from mmrec.retrieval import RetrievalConfig, Retriever
from mmrec.user_state import id_hash

# Exact scoring works through the catalogue in chunks whose widest intermediate, (chunk, U, H, W)
# float32, is about this many bytes: within the shared L3 cache, large enough to amortise each op's
# fixed cost and thread start (2026-11-26, 2 EPYC cores, 64 users: 16 MB ran 10-20 % faster than
# 4 MB at 2 threads and the same at 1; 32 MB and more fell off).
_CHUNK_BYTES = 16 * 2**20
# With few users the scorer goes pair by pair (model._FEW_USERS) and per-item memory dominates.
_MAX_CHUNK_ITEMS = 4096


@dataclass(frozen=True)
class Ranked:
    media_id: str
    score: float


class Recommender:
    """Each user's best K items of a catalogue, leaving out media they engaged with."""

    def __init__(self, cfg: ModelConfig, shared: SharedParams, retrieval: RetrievalConfig | None = None) -> None:
        self.cfg = cfg
        self.shared = shared
        self.layout = ParamLayout(cfg)
        self.retrieval = retrieval or RetrievalConfig()
        self.retriever = Retriever(cfg, shared, self.retrieval)
        self._row_of_hash: dict[int, int] = {}
        self._hashed_rows = 0

    @torch.inference_mode()
    def scores(self, offsets: Tensor, catalogue: Catalogue) -> Tensor:
        """offsets (U, P) -> exact scores (U, I) over every catalogue item."""
        params = self.layout.split(self.shared.prior + offsets)
        shapes = catalogue.layer_shapes or ()
        cells = max((h * w for _, h, w in shapes), default=1)
        chunk = min(_MAX_CHUNK_ITEMS, max(1, _CHUNK_BYTES // (4 * cells * offsets.shape[0])))
        parts = []
        for start in range(0, len(catalogue), chunk):
            rows = slice(start, min(start + chunk, len(catalogue)))
            parts.append(score(params, catalogue.float_maps(rows), catalogue.item_bias[rows], self.shared, self.cfg, catalogue.item_factors[rows]))
        return torch.cat(parts, dim=1) if parts else torch.zeros(offsets.shape[0], 0)

    @torch.inference_mode()
    def scores_for_rows(self, offsets: Tensor, catalogue: Catalogue, rows: Tensor) -> Tensor:
        """offsets (U, P), rows (R,) long -> scores (U, R) of those catalogue rows only."""
        params = self.layout.split(self.shared.prior + offsets)
        return score(params, catalogue.float_maps(rows), catalogue.item_bias[rows], self.shared, self.cfg, catalogue.item_factors[rows])

    @torch.inference_mode()
    def top_k(self, offsets: Tensor, catalogue: Catalogue, k: int, seen: Sequence[Sequence[int]] = ()) -> list[list[Ranked]]:
        """Each user's best k items, best first, leaving out the media whose id hashes are in seen[u].

        Exact below the retrieval stage's threshold; above it, the best of each user's shortlist.
        """
        rows, values = self.top_k_rows(offsets, catalogue, k, seen)
        ids = catalogue.ids
        return [
            [Ranked(ids[r], s) for r, s in zip(user_rows, user_scores) if s != float("-inf")]
            for user_rows, user_scores in zip(rows.tolist(), values.tolist())
        ]

    @torch.inference_mode()
    def top_k_rows(self, offsets: Tensor, catalogue: Catalogue, k: int, seen: Sequence[Sequence[int]] = ()) -> tuple[Tensor, Tensor]:
        """top_k as catalogue rows (U, k') long and scores (U, k'), best first; k' = min(k, items),
        and a score of -inf marks a slot left empty (the user has seen almost everything)."""
        if not self.retrieval.uses_shortlist(len(catalogue)):
            candidates, values = None, self.scores(offsets, catalogue)
        else:
            size = self.retrieval.shortlist_size(k) + max((len(s) for s in seen), default=0)
            candidates, values = self.retriever.rank(offsets, catalogue, size)  # (U, S) rows, exact scores
        for user, hashes in enumerate(seen):
            rows = self._rows_of(hashes, catalogue)
            if not rows:
                continue
            if candidates is None:
                values[user, rows] = float("-inf")
            else:
                values[user, torch.isin(candidates[user], torch.tensor(rows))] = float("-inf")
        best = values.topk(min(k, values.shape[1]), dim=1)
        chosen = best.indices if candidates is None else candidates.gather(1, best.indices)
        return chosen, best.values

    def pairs_per_user(self, items: int, k: int) -> int:
        """(user, item) pairs one user's top_k scores exactly: the shortlist, or every item."""
        return min(items, self.retrieval.shortlist_size(k)) if self.retrieval.uses_shortlist(items) else items

    def _rows_of(self, hashes: Sequence[int], catalogue: Catalogue) -> list[int]:
        """Catalogue rows of media id hashes (rows are stable, so the index only grows)."""
        ids = catalogue.ids
        for row in range(self._hashed_rows, len(ids)):
            self._row_of_hash[id_hash(ids[row])] = row
        self._hashed_rows = len(ids)
        return [self._row_of_hash[h] for h in hashes if h in self._row_of_hash]
