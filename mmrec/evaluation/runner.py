"""Tune, fit and evaluate rankers on one split: full ranking per period and the prequential replay.

For each ranker: every grid point is built, fitted on train (validation passed for monitoring) and
ranked on the validation period; the point with the best validation NDCG@10 (overall) wins (a
one-point grid skips this). The winner is built again, fitted on train + validation, and ranked on
the test period (overall and cold-start, mmrec.evaluation.split). In prequential mode the same
fitted ranker then replays the test events in time order:

    for each event e = (u, i, t) of the test period:
        if e is an engagement (label >= 0.5) and u had not engaged with i before:
            rank i among the items first seen (in the whole log) at or before t, leaving out the
            items u engaged with before t   -> Recall@K (= hit rate), NDCG@K, AUC of this event
            if i is a cold-start item (first seen in the test period): also rank i among the cold
            items first seen at or before t, leaving out u's earlier engagements
        learn(e) if the ranker is an OnlineRanker (frozen otherwise)
Metrics are averaged over scored events. Scoring runs under torch.no_grad; learn runs outside it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.metrics import UserRankings, rank_users
from mmrec.evaluation.protocol import OnlineRanker, Ranker, RankerSpec
from mmrec.evaluation.split import RankingTask, TemporalSplit
from mmrec.interaction_log import InteractionLog

SELECTION_METRIC = "ndcg@10"
_USER_CHUNK = 256


@dataclass(frozen=True)
class Rankings:
    """Full-ranking outcome of one period: overall and among cold-start items."""

    overall: UserRankings
    cold: UserRankings


@dataclass(frozen=True)
class PrequentialRankings(Rankings):
    online: bool = False  # whether the ranker learned from the replayed events
    events: int = 0  # events replayed


@dataclass
class RankerResult:
    name: str
    description: str
    params: Mapping[str, Any]  # the chosen grid point
    tuning: list[dict[str, Any]]  # per grid point: params, validation metrics, fit seconds
    test: Rankings
    fit_seconds: float  # final fit on train + validation
    score_seconds: float  # test ranking
    prequential: PrequentialRankings | None = None
    prequential_seconds: float = 0.0


@dataclass
class Evaluation:
    data_name: str
    split: TemporalSplit
    counts: dict[str, int]  # events, users, items, per part, test users and cold items
    k_max: int
    results: list[RankerResult] = field(default_factory=list)
    features: str = "maps through the settings' channel projection"  # what our model and VBPR (maps) see


def priority(num_items: int, seed: int) -> torch.Tensor:
    """(I,) seeded random rank of each item, used to break score ties (lower first)."""
    return torch.argsort(torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)))


def rank_task(ranker: Ranker, task: RankingTask, priorities: torch.Tensor, k_max: int, desc: str = "ranking") -> Rankings:
    """Scores of every task user for every candidate, in user chunks -> overall and cold rankings."""
    items = torch.from_numpy(task.items)
    order = torch.argsort(priorities[items])  # tie-break among all candidates
    cold_cols = torch.from_numpy(np.flatnonzero(task.cold))
    cold_order = torch.argsort(priorities[items[cold_cols]])
    overall, cold = [], []
    for start in tqdm(range(0, task.users.size, _USER_CHUNK), desc=desc, unit="chunk", leave=False):
        rows = slice(start, start + _USER_CHUNK)
        users = torch.from_numpy(task.users[rows])
        with torch.no_grad():
            scores = _checked(ranker.scores(users, items), users, items)
        relevant = torch.from_numpy(task.dense(task.relevant, rows))
        candidates = ~torch.from_numpy(task.dense(task.excluded, rows))
        overall.append(rank_users(scores, candidates, relevant, order, k_max))
        if cold_cols.numel():
            relevant_cold = relevant[:, cold_cols]
            has = relevant_cold.any(dim=1)
            if bool(has.any()):
                cold.append(rank_users(scores[has][:, cold_cols], candidates[has][:, cold_cols], relevant_cold[has], cold_order, k_max))
    return Rankings(UserRankings.concat(overall, k_max), UserRankings.concat(cold, k_max))


def prequential(
    ranker: Ranker,
    history: InteractionLog,
    period: InteractionLog,
    start: float,
    first_seen: np.ndarray,
    priorities: torch.Tensor,
    k_max: int,
    scored_users: np.ndarray | None = None,
) -> PrequentialRankings:
    """Replay the period's events in time order (module docstring); scored_users limits whose
    engagements are scored (every event is still learned); the period starts at `start`."""
    by_first = np.argsort(first_seen, kind="stable")
    sorted_first = first_seen[by_first]
    engaged: dict[int, set[int]] = {}
    for u, i in zip(history.user[history.positive], history.item[history.positive]):
        engaged.setdefault(int(u), set()).add(int(i))
    scored = None if scored_users is None else set(scored_users.tolist())
    online = isinstance(ranker, OnlineRanker)
    overall, cold = [], []
    for event in tqdm(period.events(), total=len(period), desc="prequential", unit="event", leave=False):
        seen = engaged.setdefault(event.user, set())
        if event.label >= 0.5 and event.item not in seen and (scored is None or event.user in scored):
            items = torch.from_numpy(by_first[: np.searchsorted(sorted_first, event.time, side="right")])
            user = torch.tensor([event.user])
            with torch.no_grad():
                scores = _checked(ranker.scores(user, items), user, items)
            candidates = ~torch.from_numpy(np.isin(items.numpy(), list(seen)))[None, :]
            relevant = (items == event.item)[None, :]
            overall.append(rank_users(scores, candidates, relevant, torch.argsort(priorities[items]), k_max))
            if first_seen[event.item] >= start:
                cols = torch.from_numpy(np.flatnonzero(first_seen[items.numpy()] >= start))
                cold.append(rank_users(scores[:, cols], candidates[:, cols], relevant[:, cols],
                                       torch.argsort(priorities[items[cols]]), k_max))
        if online:
            ranker.learn(event)
        if event.label >= 0.5:
            seen.add(event.item)
    return PrequentialRankings(UserRankings.concat(overall, k_max), UserRankings.concat(cold, k_max), online, len(period))


def evaluate_ranker(
    spec: RankerSpec,
    data: EvaluationData,
    split: TemporalSplit,
    k_max: int = 50,
    with_prequential: bool = False,
    prequential_users: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> RankerResult:
    """Tune on validation, refit on train + validation, rank the test period (module docstring)."""
    train, validation, test = split.parts(data.log)
    first_seen = data.log.first_seen()
    priorities = priority(data.log.num_items, data.seed)
    tuning: list[dict[str, Any]] = []
    best = spec.grid[0]
    if len(spec.grid) > 1:
        task = RankingTask.build(train, validation, first_seen, split.validation_start, split.test_start)
        for point in spec.grid:
            started = time.perf_counter()
            ranker = spec.build(data, point)
            ranker.fit(train, validation)
            fit_s = time.perf_counter() - started
            summary = rank_task(ranker, task, priorities, k_max, desc="validation").overall.summary()
            tuning.append({"params": dict(point), "validation": summary, "fit_seconds": fit_s})
            log(f"  {spec.name} {_fmt(point)}: validation NDCG@10 {summary['ndcg@10']:.4f} (fit {fit_s:.1f} s)")
        best = max(zip(spec.grid, tuning), key=lambda pair: pair[1]["validation"][SELECTION_METRIC])[0]
    history = data.log.select(data.log.time < split.test_start)
    started = time.perf_counter()
    ranker = spec.build(data, best)
    ranker.fit(history, None)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    task = RankingTask.build(history, test, first_seen, split.test_start, float("inf"))
    result = RankerResult(spec.name, spec.description, dict(best), tuning, rank_task(ranker, task, priorities, k_max, desc="test"),
                          fit_s, time.perf_counter() - started)
    log(f"{spec.name}: {_fmt(best)} test NDCG@10 {result.test.overall.summary()['ndcg@10']:.4f} (fit {fit_s:.1f} s)")
    if with_prequential:
        sample = None
        if prequential_users is not None and prequential_users < data.log.num_users:
            rng = np.random.default_rng(data.seed)
            sample = rng.choice(data.log.num_users, prequential_users, replace=False)
        started = time.perf_counter()
        result.prequential = prequential(ranker, history, test, split.test_start, first_seen, priorities, k_max, sample)
        result.prequential_seconds = time.perf_counter() - started
    return result


def split_counts(data: EvaluationData, split: TemporalSplit) -> dict[str, int]:
    """Sizes that describe a split: events per part, users, items, test users and cold items."""
    parts = dict(zip(("train", "validation", "test"), split.parts(data.log)))
    history = data.log.select(data.log.time < split.test_start)
    task = RankingTask.build(history, parts["test"], data.log.first_seen(), split.test_start, float("inf"))
    counts = {"events": len(data.log), "users": data.log.num_users, "items": data.log.num_items}
    counts.update({f"{name}_events": len(part) for name, part in parts.items()})
    counts.update({"test_users": int(task.users.size), "cold_items": int(task.cold.sum())})
    return counts


def _checked(scores: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """A ranker's scores, refused unless they are (U, I)."""
    if scores.shape != (users.numel(), items.numel()):
        raise ValueError(f"a ranker returned scores of shape {tuple(scores.shape)} for {users.numel()} users x {items.numel()} items")
    return scores


def _fmt(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "(no parameters)"
