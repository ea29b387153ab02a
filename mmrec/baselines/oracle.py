"""The benchmark's ceiling: ranks by the simulator's true expected engagement.

It knows every parameter of the simulation (tastes, popularity, the idiosyncratic noise, the
exposure process), so it ranks user u's items by the expected number of u's engagements with i
in the evaluated period, up to a factor that is the same for all of u's items:

    score(u, i) = log X_ui + log sigmoid(z_ui)

X_ui = expected exposures of item i to user u (mmrec.datasets.visual_taste.Simulation.expected_exposures)
from the end of the training log to the end of the simulation; in prequential mode, on the day of
the latest event it was shown, i.e. the chance that u's next exposure shows i. It learns nothing.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.datasets.visual_taste import DAY, EPOCH, Simulation
from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.protocol import RankerSpec
from mmrec.interaction_log import Event, InteractionLog


class Oracle:
    def __init__(self, sim: Simulation, users: np.ndarray, items: np.ndarray) -> None:
        """users (U,), items (I,): positions of the log's ids in the simulation's id lists."""
        self.sim, self.users, self.items = sim, users, items
        self.window = (EPOCH, sim.config.end_time)

    def fit(self, train: InteractionLog, validation: InteractionLog | None) -> None:
        self.window = (float(train.time.max()), self.sim.config.end_time)

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        u, i = self.users[users.numpy()], self.items[items.numpy()]
        exposures = self.sim.expected_exposures(u, i, *self.window)
        z = torch.from_numpy(self.sim.logits(u, i))
        return (F.logsigmoid(z.double()) + torch.from_numpy(np.log(np.maximum(exposures, 1e-300)))).float()

    def learn(self, event: Event) -> None:
        day = EPOCH + DAY * np.floor((event.time - EPOCH) / DAY)
        self.window = (float(day), float(day + DAY))


def _build(data: EvaluationData, params: Mapping[str, Any]) -> Oracle:
    if data.truth is None:
        raise ValueError("the oracle needs the benchmark's ground truth")
    users, items = data.positions_in_truth()
    return Oracle(data.truth, users, items)


SPEC = RankerSpec(
    name="oracle",
    build=_build,
    requires=frozenset({"truth"}),
    description="the simulator's true expected engagement (tastes, popularity, noise, exposure): the ceiling",
)
