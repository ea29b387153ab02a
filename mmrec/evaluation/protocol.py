"""What a model must offer to be evaluated (Ranker) and how it is registered (RankerSpec).

A ranker is built from the evaluation data and one point of its hyper-parameter grid, fitted on a
training log, then asked for scores. Users and items are indices into the log's vocabularies
(log.user_ids, log.item_ids), which every part of a split shares, so a ranker can size its tables
once from data.log and meet items in evaluation that it never saw in training (cold-start items).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

from mmrec.interaction_log import Event, InteractionLog

if TYPE_CHECKING:
    from mmrec.evaluation.data import EvaluationData


@runtime_checkable
class Ranker(Protocol):
    def fit(self, train: InteractionLog, validation: InteractionLog | None) -> None:
        """Learn from `train`. `validation` is the validation period while the grid is searched (for
        early stopping or monitoring) and None on the final fit, whose `train` is train + validation."""

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """users (U,) long, items (I,) long -> (U, I) float scores, higher = recommend first; finite."""


@runtime_checkable
class OnlineRanker(Ranker, Protocol):
    """A ranker that also learns from single events (the prequential mode replays them in time order)."""

    def learn(self, event: Event) -> None:
        """Update from one event after it has been scored (label >= 0.5 is an engagement)."""


# What a spec may need from EvaluationData: "media" (item features from the CNN), "attributes" (the
# benchmark's true item attributes), "truth" (the benchmark's simulation parameters).
Requirement = str


@dataclass(frozen=True)
class RankerSpec:
    """How to build one model, and the grid its hyper-parameters are tuned over on validation."""

    name: str
    build: Callable[[EvaluationData, Mapping[str, Any]], Ranker]
    grid: tuple[Mapping[str, Any], ...] = ({},)
    requires: frozenset[Requirement] = frozenset()
    description: str = ""


def grid(**axes: tuple[Any, ...]) -> tuple[dict[str, Any], ...]:
    """Cartesian product of named value tuples, e.g. grid(dim=(32, 64), reg=(1e-3,)) -> 2 points."""
    points: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        points = [{**p, name: v} for p in points for v in values]
    return tuple(points)
