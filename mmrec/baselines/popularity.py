"""Most-popular: every user gets the items with the most (recent) engagements.

    score(u, i) = sum over engagements e (label >= 0.5) with item i up to now of 0.5 ** ((now - t_e) / h)

h = half_life * (time span of the training log), or plain counts when half_life is None; the grid
tunes it. In prequential mode every engagement adds 1 after decaying the counts to its time.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.protocol import RankerSpec, grid
from mmrec.interaction_log import Event, InteractionLog


class MostPopular:
    def __init__(self, num_items: int, half_life: float | None) -> None:
        self.half_life_fraction = half_life
        self.counts = torch.zeros(num_items, dtype=torch.float64)
        self.now = 0.0
        self.half_life: float | None = None  # seconds, set by fit

    def fit(self, train: InteractionLog, validation: InteractionLog | None) -> None:
        self.now = float(train.time.max())
        span = max(float(train.time.max() - train.time.min()), 1.0)
        self.half_life = None if self.half_life_fraction is None else self.half_life_fraction * span
        pos = train.positive
        weights = np.ones(int(pos.sum())) if self.half_life is None else 0.5 ** ((self.now - train.time[pos]) / self.half_life)
        self.counts = torch.from_numpy(np.bincount(train.item[pos], weights=weights, minlength=train.num_items).astype(np.float64))

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        return self.counts[items].float().expand(users.shape[0], -1)

    def learn(self, event: Event) -> None:
        if self.half_life is not None and event.time > self.now:
            self.counts *= 0.5 ** ((event.time - self.now) / self.half_life)
        self.now = max(self.now, event.time)
        if event.label >= 0.5:
            self.counts[event.item] += 1.0


def _build(data: EvaluationData, params: Mapping[str, Any]) -> MostPopular:
    return MostPopular(data.log.num_items, **params)


SPEC = RankerSpec(
    name="most-popular",
    build=_build,
    grid=grid(half_life=(None, 0.1, 0.02)),
    description="engagement counts, optionally decayed (half-life as a fraction of the training span)",
)
