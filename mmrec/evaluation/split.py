"""Global-time split and the full-ranking task of one evaluation period.

Split: the events of the whole log in time order; the cut at quantile q is the time of event number
round(q * E) (0-based), so the first round(q * E) events fall before it (events sharing the cut's
timestamp go after). train = before the validation cut, validation = between the cuts, test = from
the test cut on. Every user and item keeps its index in all three parts.

Task of a period P (validation or test), fitted on the history H of everything before P:
    candidates  items first seen in the whole log before P ends (all items for the test period)
    cold        candidates first seen inside P (no event of any user before P starts)
    relevant    per user, the items they engaged with (an event with label >= 0.5) in P, except
                those they had engaged with in H
    excluded    per user, the items they engaged with in H: left out of their ranking
    users       those with at least one relevant item
Cold-start ranking: for each user with a relevant cold item, the cold items ranked among themselves
(the warm items are left out), relevant = their relevant cold items.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrec.interaction_log import InteractionLog


@dataclass(frozen=True)
class TemporalSplit:
    validation_start: float  # unix seconds: first instant of the validation period
    test_start: float  # first instant of the test period

    @classmethod
    def at_quantiles(cls, log: InteractionLog, validation: float = 0.7, test: float = 0.8) -> TemporalSplit:
        """Cuts at event-time quantiles (module docstring). Raises ValueError when a part would be empty."""
        if not 0 < validation < test < 1:
            raise ValueError(f"need 0 < validation < test < 1, got {validation}, {test}")
        n = len(log)
        cuts = [round(q * n) for q in (validation, test)]
        split = cls(float(log.time[min(cuts[0], n - 1)]), float(log.time[min(cuts[1], n - 1)]))
        sizes = [len(p) for p in split.parts(log)]
        if min(sizes) == 0:
            raise ValueError(f"split at {validation}, {test} leaves an empty part (train, validation, test = {sizes})")
        return split

    def parts(self, log: InteractionLog) -> tuple[InteractionLog, InteractionLog, InteractionLog]:
        """(train, validation, test) logs."""
        return (
            log.select(log.time < self.validation_start),
            log.select((log.time >= self.validation_start) & (log.time < self.test_start)),
            log.select(log.time >= self.test_start),
        )


@dataclass(frozen=True)
class RankingTask:
    """Who is ranked over which items in one period (module docstring).

    users     (U,) int64   evaluated users (log indices), ascending
    items     (C,) int64   candidate items (log indices); scores come as (U, C) in this order
    cold      (C,) bool    candidates first seen in the period
    relevant  (rows, cols) int64 pairs: user row in `users`, candidate column in `items`
    excluded  (rows, cols) the same for the items left out of each user's ranking
    """

    users: np.ndarray
    items: np.ndarray
    cold: np.ndarray
    relevant: tuple[np.ndarray, np.ndarray]
    excluded: tuple[np.ndarray, np.ndarray]

    @classmethod
    def build(cls, history: InteractionLog, period: InteractionLog, first_seen: np.ndarray, start: float, end: float) -> RankingTask:
        """first_seen (I,): each item's first event time in the whole log; the period is [start, end)."""
        n_items = history.num_items
        items = np.flatnonzero(first_seen < end)
        column = np.full(n_items, -1, dtype=np.int64)
        column[items] = np.arange(items.size)
        before = np.unique(history.user[history.positive] * n_items + history.item[history.positive])
        during = np.unique(period.user[period.positive] * n_items + period.item[period.positive])
        relevant = during[~np.isin(during, before)]
        users = np.unique(relevant // n_items)
        row = np.full(history.num_users, -1, dtype=np.int64)
        row[users] = np.arange(users.size)
        excluded = before[np.isin(before // n_items, users)]
        return cls(
            users=users,
            items=items,
            cold=first_seen[items] >= start,
            relevant=(row[relevant // n_items], column[relevant % n_items]),
            excluded=(row[excluded // n_items], column[excluded % n_items]),
        )

    def dense(self, pairs: tuple[np.ndarray, np.ndarray], rows: slice) -> np.ndarray:
        """(rows, C) bool matrix of the pairs whose user row is in `rows`."""
        start, stop, _ = rows.indices(self.users.size)
        out = np.zeros((stop - start, self.items.size), dtype=bool)
        keep = (pairs[0] >= start) & (pairs[0] < stop)
        out[pairs[0][keep] - start, pairs[1][keep]] = True
        return out
