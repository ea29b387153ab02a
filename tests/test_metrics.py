"""Full-ranking metrics against values computed by hand (the arithmetic is in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmrec.evaluation.metrics import UserRankings, rank_users

L3, L5 = math.log2(3), math.log2(5)


def test_one_user_recall_ndcg_auc_by_hand() -> None:
    # Items 0..4 scored .9 .8 .7 .6 .5 -> ranks 1..5. Relevant: items 1 and 3 (ranks 2 and 4).
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    relevant = torch.tensor([[False, True, False, True, False]])
    r = rank_users(scores, torch.ones(1, 5, dtype=torch.bool), relevant, torch.arange(5), k_max=5)
    assert r.hits.tolist() == [[False, True, False, True, False]]
    # Recall@1 = 0/2, Recall@2 = 1/2, Recall@4 = 2/2.
    assert r.recall(1)[0] == 0 and r.recall(2)[0] == 0.5 and r.recall(4)[0] == 1
    # NDCG@2 = (1/log2 3) / (1 + 1/log2 3) = 0.6309 / 1.6309 = 0.38685
    assert r.ndcg(2)[0] == pytest.approx((1 / L3) / (1 + 1 / L3))
    assert r.ndcg(2)[0] == pytest.approx(0.38685, abs=1e-5)
    # NDCG@5 = (1/log2 3 + 1/log2 5) / (1 + 1/log2 3) = (0.63093 + 0.43068) / 1.63093 = 0.65092
    assert r.ndcg(5)[0] == pytest.approx(0.65092, abs=1e-5)
    # AUC: negatives score .9 .7 .5; item 1 (.8) beats 2 of 3, item 3 (.6) beats 1 of 3 -> (2/3 + 1/3) / 2
    assert r.auc[0] == pytest.approx(0.5)


def test_ties_follow_the_tiebreak_and_count_half_in_auc_excluded_items_do_not_count() -> None:
    # Items 0, 1, 2 tie at 1.0, item 3 is not a candidate. Tie-break order: 2, 0, 1 -> item 0 ranks 2nd.
    scores = torch.tensor([[1.0, 1.0, 1.0, 5.0]])
    candidates = torch.tensor([[True, True, True, False]])
    relevant = torch.tensor([[True, False, False, False]])
    r = rank_users(scores, candidates, relevant, torch.tensor([2, 0, 1, 3]), k_max=3)
    assert r.hits.tolist() == [[False, True, False]]
    assert r.ndcg(1)[0] == 0 and r.ndcg(2)[0] == pytest.approx(1 / L3)  # IDCG@2 = 1 (one relevant item)
    # AUC: negatives are items 1 and 2 (item 3 is excluded), both tied with item 0: (0 + 0.5 * 2) / 2
    assert r.auc[0] == pytest.approx(0.5)


def test_several_users_average_and_standard_error() -> None:
    # User 0: relevant item ranked 1st -> Recall@1 = 1, NDCG@1 = 1, AUC = 1.
    # User 1: relevant item ranked 3rd of 3 -> Recall@1 = 0, NDCG@3 = 1/log2(4) = 0.5, AUC = 0.
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    relevant = torch.tensor([[True, False, False], [False, False, True]])
    r = rank_users(scores, torch.ones(2, 3, dtype=torch.bool), relevant, torch.arange(3), k_max=3)
    assert r.recall(1).tolist() == [1, 0]
    assert r.ndcg(3).tolist() == pytest.approx([1.0, 0.5])
    assert r.auc.tolist() == [1.0, 0.0]
    s = r.summary(ks=(1, 3))
    # mean of (1, 0) = 0.5; sample sd = sqrt(((1-.5)^2 + (0-.5)^2) / 1) = 0.7071; se = 0.7071 / sqrt(2) = 0.5
    assert s["recall@1"] == 0.5 and s["recall@1_se"] == pytest.approx(0.5)
    assert s["ndcg@3"] == pytest.approx(0.75) and s["auc"] == 0.5 and s["users"] == 2
    curves = r.curves()
    assert curves["recall"] == pytest.approx([0.5, 0.5, 1.0])  # K = 1, 2, 3
    assert curves["ndcg"][0] == pytest.approx(0.5)


def test_fewer_items_than_k_and_a_user_without_negatives() -> None:
    # Two candidates, both relevant, k_max = 4: hits beyond rank 2 are empty; no negatives -> no AUC.
    r = rank_users(torch.tensor([[0.2, 0.1]]), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool),
                   torch.arange(2), k_max=4)
    assert r.hits.tolist() == [[True, True, False, False]]
    assert r.recall(4)[0] == 1 and r.ndcg(4)[0] == pytest.approx(1.0)
    assert np.isnan(r.auc[0]) and np.isnan(r.summary(ks=(1,))["auc"])


def test_invalid_inputs_are_refused() -> None:
    ones = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="candidates"):
        rank_users(torch.zeros(1, 2), torch.tensor([[True, False]]), ones, torch.arange(2), 2)
    with pytest.raises(ValueError, match="at least one relevant"):
        rank_users(torch.zeros(1, 2), ones, ~ones, torch.arange(2), 2)
    with pytest.raises(ValueError, match="finite"):
        rank_users(torch.tensor([[float("nan"), 0.0]]), ones, ones, torch.arange(2), 2)
    with pytest.raises(ValueError, match="exceeds"):
        UserRankings(np.zeros((1, 2), bool), np.ones(1, np.int64), np.zeros(1)).ndcg(3)
