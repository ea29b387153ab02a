"""Turn one interaction into the examples of one online step."""
from __future__ import annotations

import numpy as np
import torch

from mmrec.catalogue import Catalogue
from mmrec.feedback import Feedback, FeedbackWeights, is_positive
from mmrec.online import Examples
from mmrec.user_state import id_hash


class NegativeSampler:
    """Uniform negatives that depend only on the event id and the SET of catalogue items.

    Items sit on a ring ordered by the 64-bit hash of their media id; a draw is a point on the ring
    (from a generator seeded by the event id) and picks the item at or after it. Catalogue rows
    follow arrival order, which differs between workers and restarts; the ring does not, so a
    replay of the same events over the same items takes bit-identical steps anywhere.
    """

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._hashes = np.zeros(0, dtype=np.uint64)  # sorted
        self._rows = np.zeros(0, dtype=np.int64)  # row of each hash
        self._synced = 0

    def sample(self, event_id: str, count: int, exclude_row: int) -> list[int]:
        """`count` rows, each drawn independently, never exclude_row (needs >= 2 items)."""
        self._sync()
        gen = torch.Generator().manual_seed(id_hash(event_id) & (2**63 - 1))
        points = torch.randint(-(2**63), 2**63 - 1, (count,), generator=gen, dtype=torch.int64).numpy().view(np.uint64)
        slots = np.searchsorted(self._hashes, points) % len(self._hashes)
        rows = self._rows[slots]
        clash = rows == exclude_row
        rows[clash] = self._rows[(slots[clash] + 1) % len(self._hashes)]  # the next item on the ring
        return rows.tolist()

    def _sync(self) -> None:
        """Add catalogue rows appended since the last call (rows are stable, ids never change)."""
        ids = self.catalogue.ids
        if self._synced == len(ids):
            return
        new_rows = np.arange(self._synced, len(ids), dtype=np.int64)
        new_hashes = np.array([id_hash(ids[r]) for r in new_rows], dtype=np.uint64)
        hashes, rows = np.concatenate([self._hashes, new_hashes]), np.concatenate([self._rows, new_rows])
        order = np.argsort(hashes, kind="stable")
        self._hashes, self._rows, self._synced = hashes[order], rows[order], len(ids)


def event_examples(
    catalogue: Catalogue,
    sampler: NegativeSampler,
    media_id: str,
    feedback: Feedback,
    event_id: str,
    negatives: int,
    weights: FeedbackWeights,
) -> Examples:
    """The event's item with its label and weight, plus, for a positive event, `negatives` other
    catalogue items drawn by the sampler as label-0 examples. Raises KeyError if the media is not
    in the catalogue.
    """
    row = int(catalogue.rows([media_id])[0])
    rows = [row]
    if is_positive(feedback) and negatives > 0 and len(catalogue) > 1:
        rows += sampler.sample(event_id, negatives, exclude_row=row)
    index = torch.tensor(rows, dtype=torch.long)
    labels = torch.zeros(len(rows))
    labels[0] = feedback.label
    example_weights = torch.full((len(rows),), weights.sampled_negative)
    example_weights[0] = feedback.weight
    return Examples(
        maps=catalogue.float_maps(index),
        item_bias=catalogue.item_bias[index],
        labels=labels,
        weights=example_weights,
        item_factors=catalogue.item_factors[index] if catalogue.factor_dim else None,
    )
