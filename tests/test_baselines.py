"""The baselines on tiny data: most-popular exactly, BPR-MF and VBPR on planted structure, online
steps, and the oracle against the simulation it reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec.baselines.factor import FactorRanker
from mmrec.baselines.oracle import Oracle
from mmrec.baselines.popularity import MostPopular
from mmrec.datasets.visual_taste import DAY, EPOCH, TINY, Simulation, generate
from mmrec.evaluation.metrics import rank_users
from mmrec.feedback import EventKind
from mmrec.interaction_log import EVENT_KINDS, Event, InteractionLog


def log_of(rows: list[tuple[int, int, str, float]], users: int, items: int) -> InteractionLog:
    """Events (user, item, kind, time) over `users` users and `items` items; label 1 for click."""
    rows = sorted(rows, key=lambda r: r[3])
    return InteractionLog(
        user=np.array([r[0] for r in rows], dtype=np.int64),
        item=np.array([r[1] for r in rows], dtype=np.int64),
        kind=np.array([EVENT_KINDS.index(EventKind(r[2])) for r in rows], dtype=np.int8),
        label=np.array([float(r[2] == "click") for r in rows], dtype=np.float32),
        weight=np.ones(len(rows), dtype=np.float32),
        time=np.array([r[3] for r in rows], dtype=np.float64),
        user_ids=tuple(f"u{u:03d}" for u in range(users)),
        item_ids=tuple(f"i{i:03d}" for i in range(items)),
    )


def test_most_popular_counts_engagements_exactly_and_decays() -> None:
    # Item 0: clicks at t = 0, 10; item 1: click at t = 10 and a skip; item 2: impression only.
    log = log_of([(0, 0, "click", 0.0), (1, 0, "click", 10.0), (0, 1, "click", 10.0), (1, 1, "skip", 5.0), (0, 2, "impression", 1.0)], 2, 3)
    plain = MostPopular(3, half_life=None)
    plain.fit(log, None)
    assert plain.scores(torch.tensor([0, 1]), torch.tensor([0, 1, 2])).tolist() == [[2, 1, 0], [2, 1, 0]]
    # half-life 0.5 of the span 10 s = 5 s: item 0 = 0.5 ** (10 / 5) + 1 = 1.25, item 1 = 1.
    decayed = MostPopular(3, half_life=0.5)
    decayed.fit(log, None)
    assert decayed.scores(torch.tensor([0]), torch.tensor([0, 1, 2])).tolist() == [[1.25, 1.0, 0.0]]
    # An engagement 5 s later: counts halve first, then item 2 gains 1 -> 0.625, 0.5, 1.
    decayed.learn(Event(user=1, item=2, kind=EventKind.LIKE, label=1.0, weight=2.0, time=15.0))
    assert decayed.scores(torch.tensor([0]), torch.tensor([0, 1, 2])).tolist() == [[0.625, 0.5, 1.0]]


def planted(seed: int = 0, users: int = 40, items: int = 40, cold: int = 10) -> tuple[InteractionLog, np.ndarray, np.ndarray]:
    """Two taste groups: even users click even items, odd users odd items. Items >= items - cold
    have no events (cold). Returns (log, group of each user, group of each item)."""
    rng = np.random.default_rng(seed)
    warm = items - cold
    rows = []
    for u in range(users):
        own = [i for i in range(warm) if i % 2 == u % 2]
        for i in rng.choice(own, 6, replace=False):
            rows.append((u, int(i), "click", float(rng.uniform(0, 100))))
    return log_of(rows, users, items), np.arange(users) % 2, np.arange(items) % 2


def group_auc(scores: torch.Tensor, user_group: np.ndarray, item_group: np.ndarray, items: np.ndarray) -> float:
    """Mean AUC of ranking each user's group's items above the other group's, among `items`."""
    relevant = torch.from_numpy(user_group[:, None] == item_group[None, items])
    result = rank_users(scores[:, items], torch.ones_like(relevant), relevant, torch.arange(items.size), k_max=5)
    return float(result.auc.mean())


def test_bpr_mf_learns_planted_groups_and_ties_cold_items() -> None:
    log, user_group, item_group = planted()
    model = FactorRanker(log.num_users, log.num_items, None, dim=8, reg=1e-3, lr=0.05, epochs=30, batch_size=64, seed=0)
    model.fit(log, None)
    scores = model.scores(torch.arange(log.num_users), torch.arange(log.num_items))
    assert group_auc(scores, user_group, item_group, np.arange(30)) > 0.9  # random would be 0.5
    assert torch.all(scores[:, 30:] == 0)  # never-trained items: zero factors and bias


def test_vbpr_ranks_cold_items_by_their_features() -> None:
    log, user_group, item_group = planted()
    features = torch.from_numpy(np.stack([item_group, 1 - item_group], axis=1).astype(np.float32))
    features = features + 0.1 * torch.randn(features.shape, generator=torch.Generator().manual_seed(1))
    model = FactorRanker(log.num_users, log.num_items, features, dim=8, reg=1e-3, lr=0.05, epochs=30, batch_size=64, seed=0)
    model.fit(log, None)
    scores = model.scores(torch.arange(log.num_users), torch.arange(log.num_items))
    assert group_auc(scores, user_group, item_group, np.arange(30, 40)) > 0.9


def test_online_step_raises_the_engaged_items_score() -> None:
    log, _, _ = planted()
    model = FactorRanker(log.num_users, log.num_items, None, dim=8, epochs=5, batch_size=64, online_lr=0.5, seed=0)
    model.fit(log, None)
    before = model.scores(torch.tensor([0]), torch.tensor([35]))
    for k in range(5):
        model.learn(Event(user=0, item=35, kind=EventKind.CLICK, label=1.0, weight=1.0, time=200.0 + k))
    assert model.scores(torch.tensor([0]), torch.tensor([35])) > before
    assert bool((model.known == 35).any())  # a new item joins the pool of negatives
    model.learn(Event(user=0, item=36, kind=EventKind.SKIP, label=0.0, weight=1.0, time=300.0))  # no step, only remembered
    assert bool((model.known == 36).any())


@pytest.mark.usefixtures("fashion_mnist")
def test_oracle_scores_are_the_simulations_expected_engagement(tmp_path: Path) -> None:
    sim = generate(tmp_path, TINY)
    users, items = np.arange(5), np.arange(TINY.items)
    oracle = Oracle(sim, users, items)
    train_end = EPOCH + 10 * DAY
    oracle.fit(log_of([(0, 0, "click", train_end)], 5, TINY.items), None)
    got = oracle.scores(torch.from_numpy(users), torch.from_numpy(items)).double().numpy()
    z = sim.logits(users, items)
    exposures = sim.expected_exposures(users, items, train_end, TINY.end_time)
    assert got == pytest.approx(-np.log1p(np.exp(-z)) + np.log(exposures), abs=1e-5)
    oracle.learn(Event(user=0, item=0, kind=EventKind.CLICK, label=1.0, weight=1.0, time=EPOCH + 12.5 * DAY))
    assert oracle.window == (EPOCH + 12 * DAY, EPOCH + 13 * DAY)
