"""Full-ranking metrics: Recall@K, NDCG@K and AUC per user, over every candidate item.

For one user with candidate items C (everything rankable for them), relevant items R in C and
negatives N = C - R:
    rank(i)   1-based position of i when C is sorted by score, highest first; ties are broken by
              one seeded random permutation of the items shared by all users and models
    Recall@K  |{i in R : rank(i) <= K}| / |R|
    DCG@K     sum over i in R with rank(i) <= K of 1 / log2(rank(i) + 1)
    NDCG@K    DCG@K / IDCG@K,  IDCG@K = sum_{r=1}^{min(|R|, K)} 1 / log2(r + 1)
    AUC       mean over i in R of (|{j in N : s_j < s_i}| + 0.5 |{j in N : s_j = s_i}|) / |N|
              (exact ties count one half; a user without negatives has no AUC)
Each metric is averaged over users (macro average), with its standard error over users.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class UserRankings:
    """Outcome of ranking for U users.

    hits     (U, K) bool     whether the item at rank r = column + 1 is relevant (K = k_max)
    relevant (U,)   int64    |R| of each user (>= 1)
    auc      (U,)   float64  NaN for a user without negatives
    """

    hits: np.ndarray
    relevant: np.ndarray
    auc: np.ndarray

    def __len__(self) -> int:
        return int(self.relevant.shape[0])

    @staticmethod
    def concat(parts: list[UserRankings], k_max: int) -> UserRankings:
        if not parts:
            return UserRankings(np.zeros((0, k_max), bool), np.zeros(0, np.int64), np.zeros(0))
        return UserRankings(
            np.concatenate([p.hits for p in parts]),
            np.concatenate([p.relevant for p in parts]),
            np.concatenate([p.auc for p in parts]),
        )

    def recall(self, k: int) -> np.ndarray:
        """(U,) Recall@k."""
        return self.hits[:, :k].sum(axis=1) / self.relevant

    def ndcg(self, k: int) -> np.ndarray:
        """(U,) NDCG@k."""
        if k > self.hits.shape[1]:
            raise ValueError(f"k = {k} exceeds the {self.hits.shape[1]} ranks kept")
        discount = 1.0 / np.log2(np.arange(2, k + 2))  # rank r -> 1 / log2(r + 1)
        dcg = (self.hits[:, :k] * discount).sum(axis=1)
        ideal = np.cumsum(discount)[np.minimum(self.relevant, k) - 1]
        return dcg / ideal

    def summary(self, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
        """{"users", "recall@k", "ndcg@k", "auc", and "<metric>_se" standard errors}; NaN when empty."""
        out: dict[str, float] = {"users": float(len(self))}
        values = {f"{name}@{k}": fn(k) for k in ks for name, fn in (("recall", self.recall), ("ndcg", self.ndcg))}
        values["auc"] = self.auc[~np.isnan(self.auc)]
        for name, v in values.items():
            out[name] = float(v.mean()) if v.size else float("nan")
            out[f"{name}_se"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
        return out

    def curves(self) -> dict[str, list[float]]:
        """Recall@K and NDCG@K for K = 1 .. k_max, averaged over users."""
        k_max = self.hits.shape[1]
        if not len(self):
            return {"recall": [float("nan")] * k_max, "ndcg": [float("nan")] * k_max}
        return {
            "recall": [float(self.recall(k).mean()) for k in range(1, k_max + 1)],
            "ndcg": [float(self.ndcg(k).mean()) for k in range(1, k_max + 1)],
        }


def rank_users(scores: Tensor, candidates: Tensor, relevant: Tensor, tiebreak: Tensor, k_max: int) -> UserRankings:
    """Rank every candidate item for each user.

    scores (U, I) float, finite on candidates; candidates, relevant (U, I) bool with relevant a subset
    of candidates and >= 1 relevant item per user; tiebreak (I,) a permutation of 0..I-1: among equal
    scores the item earlier in it ranks higher.
    """
    if not bool((relevant <= candidates).all()):
        raise ValueError("relevant items must be candidates")
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every ranked user needs at least one relevant item")
    if not bool(torch.isfinite(scores[candidates]).all()):
        raise ValueError("scores must be finite on candidate items")
    scores = scores.double()
    masked = scores.masked_fill(~candidates, float("-inf"))
    order = torch.sort(masked[:, tiebreak], dim=1, descending=True, stable=True).indices[:, :k_max]
    top = tiebreak[order]  # (U, k) item at each rank
    hits = relevant.gather(1, top) & candidates.gather(1, top)
    if hits.shape[1] < k_max:  # fewer items than k_max: the missing ranks hold nothing
        hits = torch.cat([hits, torch.zeros(hits.shape[0], k_max - hits.shape[1], dtype=torch.bool)], dim=1)
    negatives = candidates & ~relevant
    sorted_neg = torch.sort(scores.masked_fill(~negatives, float("inf")), dim=1).values
    below = torch.searchsorted(sorted_neg, scores.contiguous(), right=False)  # negatives strictly below
    tied = torch.searchsorted(sorted_neg, scores.contiguous(), right=True) - below
    credit = ((below.double() + 0.5 * tied.double()) * relevant).sum(dim=1)
    n_rel = relevant.sum(dim=1)
    n_neg = negatives.sum(dim=1)
    auc = torch.where(n_neg > 0, credit / (n_rel * n_neg).clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
    return UserRankings(hits.numpy(), n_rel.numpy().astype(np.int64), auc.numpy())
